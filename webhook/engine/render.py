"""Render the VCL and haproxy.cfg for one pod from the sidecar-configs/ templates.

Owns: template loading (compiled once; a missing or broken template fails start-up, never an
admission) and the values the templates see. Does not: validate options (they arrive valid:
every value that reaches a template passed a strict parser in values.py).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2

from .. import __version__
from . import backend_tls, names, values
from .memo import BoundedMemo
from .options import Options

TEMPLATE_VCL = "default.vcl.j2"
TEMPLATE_HAPROXY = "haproxy.cfg.j2"
TEMPLATE_VARNISH_CLI = "xkey.cli.j2"


def templates_dir() -> Path:
    """sidecar-configs/ inside the installed wheel, else the source tree's."""
    packaged = Path(str(resources.files("webhook"))) / "sidecar-configs"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sidecar-configs"


@dataclass(frozen=True)
class Templates:
    """The compiled templates; build once with load_templates()."""

    vcl: jinja2.Template
    haproxy_cfg: jinja2.Template
    varnish_cli: jinja2.Template


def load_templates(directory: Path | None = None) -> Templates:
    """Compile the templates now, so a broken one fails start-up, not a review."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory or templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=False,
    )
    return Templates(
        vcl=environment.get_template(TEMPLATE_VCL),
        haproxy_cfg=environment.get_template(TEMPLATE_HAPROXY),
        varnish_cli=environment.get_template(TEMPLATE_VARNISH_CLI),
    )


@dataclass(frozen=True)
class Target:
    """Where the backend is, resolved for one pod: its namespace and the cluster's domain."""

    namespace: str
    cluster_domain: str
    sticky_secret: str
    transit_buffer: bool = True  # the Varnish image has transit_buffer (newer than 7.1)


@dataclass(frozen=True)
class RenderedConfigs:
    vcl: str | None  # None when a vcl-configmap replaces the generated VCL
    haproxy_cfg: str
    varnish_cli: str | None = None  # with vcl: varnishd's -I file (xkey.cli.j2)

    @functools.cached_property
    def digest(self) -> str:
        text = (self.vcl or "") + "\0" + self.haproxy_cfg
        if self.varnish_cli is not None:
            text += "\0" + self.varnish_cli
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def cookie_key(fqdn: str, secret: str) -> str:
    """dynamic-cookie-key: the same in every replica for one backend, not guessable alone."""
    return hashlib.sha256(f"{secret}\0{fqdn}".encode()).hexdigest()[:32]


# Bytes one pod adds to a DNS answer, at most (bench.slots): an A record 16, AAAA 28; an SRV
# record with its target's AAAA in the additional section ~110 (IPv6 target names are long).
DNS_BYTES_PER_POD = {"dns-a": 28, "dns-srv": 112}
DNS_MIN_PAYLOAD = 8192


def dns_payload_size(discovery: str, max_backends: int) -> int:
    """accepted_payload_size: room for one record per slot and the counting slot, as the
    answer for a Service that fills them all; a larger answer comes back truncated and
    HAProxy keeps its last addresses (no pod added or removed is seen)."""
    needed = 512 + DNS_BYTES_PER_POD[discovery] * (max_backends + 1)
    return min(65535, max(DNS_MIN_PAYLOAD, needed))


def _template_values(options: Options, target: Target) -> dict[str, object]:
    backend = options.backend
    assert backend is not None, "render needs a backend; selection skips pods without one"
    fqdn = backend.fqdn(target.namespace, target.cluster_domain)
    return {
        "version": __version__,
        "backend_text": str(backend),
        "fqdn": fqdn,
        "port": backend.port,
        "srv_name": f"_{backend.port}._tcp.{fqdn}",
        "discovery": options.discovery,
        "max_backends": options.max_backends,
        "payload_size": dns_payload_size(options.discovery, options.max_backends),
        "health_path": options.health_path,
        "backend_tls": backend_tls.server_keywords(options, fqdn),
        "sticky_sessions": options.sticky_sessions,
        "sticky_cookie": names.STICKY_COOKIE,
        "cookie_key": cookie_key(fqdn, target.sticky_secret),
        "default_ttl": options.default_ttl,
        "transit_buffer": target.transit_buffer,
        "max_object_bytes": options.max_object_size.bytes_for(options.cache_size),
        "tunnel_timeout": options.tunnel_timeout,
        "ignore_cookies": ",".join(options.ignore_cookies or ()),
        "ignore_cookies_regex": (
            values.cookie_names_regex(options.ignore_cookies) if options.ignore_cookies else ""
        ),
        "ignore_query_params_regex": (
            values.query_names_regex(options.ignore_query_params)
            if options.ignore_query_params
            else ""
        ),
        "sort_query": options.sort_query,
        "grace": options.grace,
        "local_port": names.HAPROXY_LOCAL_PORT,
        "metrics_port": names.HAPROXY_METRICS_PORT,
        "stats_port": names.HAPROXY_STATS_PORT,
        "stats_path": names.HAPROXY_STATS_PATH,
        "local_keepalive": names.HAPROXY_LOCAL_KEEPALIVE_SECONDS,
        "varnish_idle": names.VARNISH_BACKEND_IDLE_SECONDS,
        "ip_family": options.ip_family,
        "resolve_prefer": "ipv6" if options.ip_family == "ipv6" else "ipv4",
        "fd_hard_limit": names.HAPROXY_FD_HARD_LIMIT,
        "run_dir": names.HAPROXY_RUN_DIR,
        "health_uri": names.HAPROXY_HEALTH_PATH,
        "backends_up_path": names.HAPROXY_BACKENDS_UP_PATH,
        "max_backends_path": names.HAPROXY_MAX_BACKENDS_PATH,
        "ready_path": names.VARNISH_READY_PATH,
        "backend_header": names.HEADER_CACHE_BACKEND,
        "access_log": options.access_log,
        "purge_secret": names.PURGE_SECRET,
        "purge_secret_key": names.PURGE_SECRET_KEY,
        "token_env": names.PURGE_TOKEN_ENV,
        "token_header": names.PURGE_TOKEN_HEADER,
        "purge_path": names.PURGE_PATH,
        "ban_path": names.BAN_PATH,
        "tag_path": names.TAG_PATH,
        "tag_purge_header": names.TAG_PURGE_HEADER,
        "tag_soft_header": names.TAG_SOFT_HEADER,
        "count_header": names.TAG_COUNT_HEADER,
        "xkey_header": names.XKEY_HEADER,
        "tag_header": options.tag_header,
        "expose_tag_header": options.expose_tag_header,
        "cli_file": f"{names.VARNISH_CONFIG_DIR}/{names.VARNISH_CLI_FILE}",
        "vcl_file": f"{names.VARNISH_CONFIG_DIR}/{names.VARNISH_CONFIG_FILE}",
    }


_RENDERED: BoundedMemo[tuple[Options, Target, Templates], RenderedConfigs] = BoundedMemo(1024)


def render_configs(options: Options, target: Target, templates: Templates) -> RenderedConfigs:
    """Every config for one pod. Pure and memoized: pods of one workload render once."""
    key = (options, target, templates)
    rendered = _RENDERED.get(key)
    if rendered is None:
        context = _template_values(options, target)
        vcl = cli = None
        if not options.vcl_configmap:
            vcl, cli = templates.vcl.render(context), templates.varnish_cli.render(context)
        rendered = _RENDERED.put(
            key,
            RenderedConfigs(
                vcl=vcl, haproxy_cfg=templates.haproxy_cfg.render(context), varnish_cli=cli
            ),
        )
    return rendered
