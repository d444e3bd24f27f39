"""Every label, annotation, container, volume and port name — and the annotation table.

Owns: the public contract (keys users type, names users see). The annotation reference
(docs/annotations.md) and the policy schema's option list are generated from `OPTIONS`.
Does not: parse or validate values (options.py does, by each spec's `kind`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PREFIX = "cache-injector.io/"

LABEL_INJECT = PREFIX + "inject"
LABEL_ENABLED = "enabled"
LABEL_DISABLED = "disabled"
# A namespace label naming the injector revision that injects its pods (Istio's istio.io/rev);
# `inject=enabled` on the namespace means the default revision and wins over it.
LABEL_REV = PREFIX + "rev"
DEFAULT_REVISION = "default"

# Written by the injector.
ANNOTATION_STATUS = PREFIX + "status"
ANNOTATION_VCL = PREFIX + "vcl"
ANNOTATION_HAPROXY_CFG = PREFIX + "haproxy-cfg"
# varnishd's start-up CLI file (-I): loads the VCL with tag invalidation (xkey) when the image
# has the VMOD, else the generated VCL alone (builder.varnish_args says why).
ANNOTATION_VARNISH_CLI = PREFIX + "varnish-cli"
WRITTEN_ANNOTATIONS = frozenset(
    {ANNOTATION_STATUS, ANNOTATION_VCL, ANNOTATION_HAPROXY_CFG, ANNOTATION_VARNISH_CLI}
)

# Merged (never overwritten) so the cluster autoscaler may still evict injected pods.
ANNOTATION_SAFE_TO_EVICT_LOCAL_VOLUMES = (
    "cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes"
)

# Set on every injected pod, so one PodMonitor (charts/cache-injector) finds them all.
LABEL_INJECTED = PREFIX + "injected"
LABEL_INJECTED_VALUE = "true"
# The conventional scrape annotations (policy prometheusAnnotations: true).
ANNOTATION_PROMETHEUS_SCRAPE = "prometheus.io/scrape"
ANNOTATION_PROMETHEUS_PORT = "prometheus.io/port"
ANNOTATION_PROMETHEUS_PATH = "prometheus.io/path"

CONTAINER_HAPROXY = "cache-haproxy"
CONTAINER_VARNISH = "cache-varnish"
# Optional (access-log, metrics): readers of cache-varnish's shared memory log and counters.
CONTAINER_ACCESS_LOG = "cache-access-log"
CONTAINER_EXPORTER = "cache-varnish-exporter"
CONTAINERS = (CONTAINER_HAPROXY, CONTAINER_VARNISH, CONTAINER_ACCESS_LOG, CONTAINER_EXPORTER)

VOLUME_HAPROXY_CONFIG = "cache-haproxy-config"
VOLUME_HAPROXY_RUN = "cache-haproxy-run"
VOLUME_VARNISH_CONFIG = "cache-varnish-config"
VOLUME_VARNISH_WORKDIR = "cache-varnish-workdir"
VOLUME_VARNISH_TMP = "cache-varnish-tmp"
# Empty, mounted read-only at SERVICE_ACCOUNT_DIR in every container we add, so the API
# server's ServiceAccount admission plugin (run again after the webhooks) mounts no API token
# there: it skips a container that already mounts that path (builder.no_api_token).
VOLUME_NO_API_TOKEN = "cache-no-api-token"
# Option backend-tls: the CA bundle (a ConfigMap key) and the client certificate (a Secret)
# cache-haproxy uses towards the backend pods, mounted read-only into it only.
VOLUME_BACKEND_CA = "cache-backend-ca"
VOLUME_BACKEND_CLIENT_CERT = "cache-backend-client-cert"
VOLUMES = (
    VOLUME_HAPROXY_CONFIG,
    VOLUME_HAPROXY_RUN,
    VOLUME_VARNISH_CONFIG,
    VOLUME_VARNISH_WORKDIR,
    VOLUME_VARNISH_TMP,
    VOLUME_NO_API_TOKEN,
    VOLUME_BACKEND_CA,
    VOLUME_BACKEND_CLIENT_CERT,
)

PORT_NAME_HTTP = "cache-http"
PORT_NAME_METRICS = "cache-metrics"
# Varnish's counters in Prometheus format (cache-varnish-exporter): a second named port, as
# HAProxy cannot merge another process's metrics into its own /metrics.
PORT_NAME_VARNISH_METRICS = "cache-vmetrics"
HAPROXY_LOCAL_PORT = 6090
HAPROXY_METRICS_PORT = 6091
EXPORTER_PORT = 9131  # prometheus_varnish_exporter's default
METRICS_PATH = "/metrics"
# Set by HAProxy on every backend response: the pod (IP:port) that served a miss. Varnish
# stores it with the object and strips it before delivery; the access log reads it from the
# shared memory log (VSL), so the client never sees pod addresses.
HEADER_CACHE_BACKEND = "X-Cache-Backend"
# HAProxy's stats page (backend pods' addresses and health): 127.0.0.1 only, reached with
# `kubectl port-forward`, never from another pod.
HAPROXY_STATS_PORT = 6092
HAPROXY_STATS_PATH = "/stats"
# Idle keep-alive between Varnish and HAProxy's local frontend: the side that reuses a
# connection (Varnish) must give it up first.
VARNISH_BACKEND_IDLE_SECONDS = 30
HAPROXY_LOCAL_KEEPALIVE_SECONDS = 60
# HAProxy's fd-hard-limit: bounds its fd tables (and maxconn, ~half of it) whatever
# RLIMIT_NOFILE the runtime gives.
HAPROXY_FD_HARD_LIMIT = 8192

# Paths inside the sidecars.
HAPROXY_CONFIG_DIR = "/etc/cache-injector/haproxy"
HAPROXY_CONFIG_FILE = "haproxy.cfg"
HAPROXY_RUN_DIR = "/var/run/cache-haproxy"
VARNISH_CONFIG_DIR = "/etc/cache-injector/varnish"
# Option backend-tls. The client certificate's key goes beside it as client.pem.key: HAProxy
# (2.2+, ssl-load-extra-files) loads <crt>.key when the crt file holds no key, so a
# kubernetes.io/tls Secret (tls.crt, tls.key) is mounted as it is, never concatenated.
BACKEND_CA_DIR = "/etc/cache-injector/backend-tls/ca"
BACKEND_CA_FILE = "ca.pem"
BACKEND_CLIENT_CERT_DIR = "/etc/cache-injector/backend-tls/client"
BACKEND_CLIENT_CERT_FILE = "client.pem"
BACKEND_CA_DEFAULT_KEY = "ca.crt"  # cert-manager's and trust-manager's key for a CA
BACKEND_CA_SYSTEM = "system"  # backend-tls-ca: the HAProxy image's CA bundle (@system-ca)
VARNISH_CONFIG_FILE = "default.vcl"
VARNISH_CLI_FILE = "start.cli"
VARNISH_WORKDIR = "/var/lib/varnish"
# Where the ServiceAccount admission plugin mounts the pod's API token.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# varnishncsa's format: one JSON object per client request (-j escapes values for JSON).
# Fields: time (request start, with its UTC offset), method, url (path and query), status,
# bytes (body bytes sent), duration_us (request start to end, microseconds: %D, the one
# duration every kind of request has), ttfb_s (seconds to the first byte), handling (hit,
# miss, pass, pipe or synth), backend (IP:port of the pod that filled the object: on a hit,
# the one whose miss stored it; empty when no backend answered), client (the peer's address).
ACCESS_LOG_FORMAT = (
    '{"time":"%{%Y-%m-%dT%H:%M:%S%z}t","method":"%m","url":"%U%q","status":%s,'
    '"bytes":%b,"duration_us":%D,"ttfb_s":%{Varnish:time_firstbyte}x,'
    '"handling":"%{Varnish:handling}x","backend":"%{VSL:RespHeader:'
    + HEADER_CACHE_BACKEND
    + '}x","client":"%h"}'
)
VARNISH_READY_PATH = "/.cache/ready"
HAPROXY_HEALTH_PATH = "/healthz"
# Answered by HAProxy's local frontend: 200 while at least one backend pod is up. Varnish
# probes it, so it knows when to serve stale objects from grace instead of fetching.
HAPROXY_BACKENDS_UP_PATH = "/.cache/backends-up"
# Answered by HAProxy's local frontend: 503 while the backend Service has more ready pods
# than max-backends (HAProxy's own check of it logs the warning and sets the metric).
HAPROXY_MAX_BACKENDS_PATH = "/.cache/max-backends"
STICKY_COOKIE = "CACHESRV"
# Invalidation from outside the pod: a token from a Secret the user creates (the injector
# makes no API calls; the env var is optional), sent in a header the API server's pod proxy
# passes on (it strips Authorization), to paths that work through that proxy too.
PURGE_SECRET = "cache-injector-purge"
PURGE_SECRET_KEY = "token"
PURGE_TOKEN_ENV = "CACHE_INJECTOR_PURGE_TOKEN"
PURGE_TOKEN_HEADER = "X-Cache-Token"
PURGE_PATH = "/.cache/purge"
BAN_PATH = "/.cache/ban"
PURGE_TOKEN_MIN_LENGTH = 16
# Invalidation by tag (surrogate key): POST here with the tags, space-separated, in
# TAG_PURGE_HEADER (and TAG_SOFT_HEADER: true for a soft purge). Answered with the count of
# objects purged (TAG_COUNT_HEADER and the body), or 501 where the image has no xkey VMOD.
TAG_PATH = "/.cache/xkey"
TAG_PURGE_HEADER = "X-Cache-Purge-Tag"
TAG_SOFT_HEADER = "X-Cache-Purge-Soft"
TAG_COUNT_HEADER = "X-Cache-Purged"
# The response header the xkey VMOD reads an object's tags from.
XKEY_HEADER = "xkey"
# jemalloc's tunables for varnishd (builder.VARNISH_JEMALLOC_CONF says why).
MALLOC_CONF_ENV = "MALLOC_CONF"

# Namespaces never injected, whatever the policy says.
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")


@dataclass(frozen=True)
class OptionSpec:
    """One row of the annotation table: the key users type and what it accepts."""

    name: str  # option name: the annotation suffix with "-" -> "_"
    kind: str  # parser in options.py
    default: str | None  # built-in default, as an annotation string; None = unset
    accepted: str  # what is accepted, in the words of an error message
    doc: str  # one line: what it does
    low: int | None = None  # bounds for int kinds (durations: seconds)
    high: int | None = None
    # Derived once: read on every review.
    suffix: str = field(init=False)
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "suffix", self.name.replace("_", "-"))
        object.__setattr__(self, "key", PREFIX + self.suffix)


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "backend",
        "backend",
        None,
        "SERVICE[.NAMESPACE]:PORT, PORT a number (1-65535) or, with discovery dns-srv, "
        "a Service port name",
        "The Service whose pods HAProxy balances over, found by DNS as "
        "SERVICE.NAMESPACE.svc.<clusterDomain>. Unset and no policy default: not injected.",
    ),
    OptionSpec(
        "discovery",
        "enum:dns-a,dns-srv",
        "dns-a",
        "dns-a or dns-srv",
        "dns-a: server-template over the A records of the Service FQDN (a headless Service "
        "gives one per ready pod); dns-srv: over the SRV records _PORTNAME._tcp.FQDN.",
    ),
    OptionSpec(
        "max_backends",
        "int",
        "128",
        "an integer from 1 to {high}",
        "HAProxy server-template slots: the most backend pods balanced over. A Service with "
        'more ready pods is reported (HAProxy logs "Server max_backends/enough-slots is '
        'DOWN"; haproxy_backend_active_servers{proxy="max_backends"} is 0).',
        low=1,
        high=256,
    ),
    OptionSpec(
        "ip_family",
        "enum:auto,ipv4,ipv6",
        "auto",
        "auto, ipv4 or ipv6",
        "Address family of the backend pods and of cache-haproxy's listener. auto: listen on "
        "IPv4 and IPv6, use a Service's IPv4 addresses when it has both (dual-stack), its IPv6 "
        "ones when it has no other (IPv6-only); ipv6: the same, preferring IPv6 on "
        "dual-stack; ipv4: IPv4 only, for nodes booted without IPv6 (ipv6.disable=1), where "
        "an IPv6 listener cannot be created.",
    ),
    OptionSpec(
        "health_path",
        "path",
        None,
        "an absolute HTTP path such as /healthz (letters, digits and -._~/%?=&+,:@ only, "
        "at most 256 characters)",
        "HTTP path HAProxy checks on each backend pod; unset: a TCP connect check.",
    ),
    OptionSpec(
        "backend_tls",
        "enum:off,on,insecure-skip-verify",
        "off",
        "off, on or insecure-skip-verify",
        "TLS from cache-haproxy to the backend pods, for Services that only speak HTTPS "
        "(Varnish to HAProxy stays plain HTTP on localhost). on: each pod's certificate must "
        "chain to backend-tls-ca and name backend-tls-server-name (also sent as SNI); health "
        "checks use the same TLS. insecure-skip-verify: encrypted but not verified (an "
        "admission warning); only in namespaces the cluster policy allows "
        "(namespaces.<ns>.allowInsecureBackendTls).",
    ),
    OptionSpec(
        "backend_tls_ca",
        "tls_ca",
        None,
        "CONFIGMAP[:KEY], a ConfigMap in the pod's namespace and its key holding PEM "
        "certificates (KEY: letters, digits, '-', '_' and '.'; default ca.crt), such as "
        "app-ca or app-ca:ca.crt; or system, the HAProxy image's CA bundle",
        "The CAs backend certificates must chain to, mounted read-only into cache-haproxy "
        "(read when HAProxy starts). Needed with backend-tls: on. system (HAProxy's "
        "@system-ca: OpenSSL's default CA directory, which the image must ship) suits "
        "public CAs only: Service names (*.svc.<clusterDomain>) get private-CA certificates.",
    ),
    OptionSpec(
        "backend_tls_server_name",
        "dns_name",
        None,
        "a DNS name: lowercase letters, digits, '-' and '.', at most 253 characters",
        "The name sent as SNI and required in each backend pod's certificate (backend-tls: "
        "on). Unset: the Service FQDN, SERVICE.NAMESPACE.svc.<clusterDomain>.",
    ),
    OptionSpec(
        "backend_tls_client_secret",
        "dns_subdomain",
        None,
        "a Secret name in the pod's namespace (lowercase letters, digits, '-' and '.', at "
        "most 253 characters) of type kubernetes.io/tls: keys tls.crt and tls.key",
        "Client certificate cache-haproxy presents to the backend pods (mutual TLS), mounted "
        "read-only into cache-haproxy only.",
    ),
    OptionSpec(
        "cache_size",
        "quantity",
        "128Mi",
        "a Kubernetes memory quantity from 16Mi to {limit} such as 256Mi or 1Gi",
        "Varnish malloc storage for cached objects (allocated as it fills: the idle pod's "
        "~35 MiB does not change); cache-varnish's memory limit grows with it "
        "(docs/policy.md, resources.varnish).",
    ),
    OptionSpec(
        "default_ttl",
        "duration",
        "120s",
        "a duration from 0s to 365d: an integer with unit s, m, h or d, such as 120s or 5m",
        "How long a response is cached when the backend sends no caching headers.",
    ),
    OptionSpec(
        "grace",
        "duration",
        "6h",
        "a duration from 0s to 365d: an integer with unit s, m, h or d, such as 30m or 6h",
        "How long expired objects may still be served while the backend is down.",
    ),
    OptionSpec(
        "listen_port",
        "int",
        "6081",
        "an integer from 1025 to 65535, not used by another container of the pod, "
        "not 6090, 6091 or 6092 (cache-haproxy)",
        "Port Varnish listens on, named cache-http.",
        low=1025,
        high=65535,
    ),
    OptionSpec(
        "sticky_sessions",
        "bool",
        "false",
        "true or false",
        "true: HAProxy sets a dynamic cookie naming the backend pod, so a returning client "
        "stays on it (the same in every replica).",
    ),
    OptionSpec(
        "drain_seconds",
        "int",
        "5",
        "an integer from 0 to 300 (0: no preStop sleep)",
        "preStop sleep of cache-varnish on pod deletion: it keeps serving while the "
        "Service stops routing to the pod (with nativeSidecars: false, cache-haproxy sleeps "
        "1 s longer, as it would otherwise stop at once).",
        low=0,
        high=300,
    ),
    OptionSpec(
        "max_object_size",
        "object_size",
        "10%",
        "a percentage of cache-size from 1% to 100% such as 10%, or a Kubernetes memory "
        "quantity of at least 1Ki such as 4Mi",
        "Largest response that is cached; a larger one (by its Content-Length) is passed: "
        "streamed to the client whole, never stored, so one big download cannot evict the "
        "working set. Responses without Content-Length (chunked) are passed too.",
    ),
    OptionSpec(
        "tunnel_timeout",
        "duration",
        "1h",
        "a duration from 1s to 24d (HAProxy's largest timeout): an integer with unit s, m, "
        "h or d, such as 1h or 30m",
        "How long an idle WebSocket (or other upgraded) connection stays open: HAProxy's "
        "timeout tunnel and varnishd's pipe_timeout.",
        low=1,
        high=24 * 86400,
    ),
    OptionSpec(
        "ignore_cookies",
        "cookie_names",
        None,
        "comma-separated cookie names (letters, digits, '_', '.', '-'; at most 32), each "
        "optionally ending in * to name every cookie that starts with it, such as "
        "_ga,_ga_*,_gid",
        "Cookies that do not change a response (analytics, consent banners): removed from "
        "requests before the cache lookup, so a request carrying only these is served from "
        "cache. Unset: any cookie passes the request to the backend.",
    ),
    OptionSpec(
        "ignore_query_params",
        "query_names",
        None,
        "comma-separated query parameter names (letters, digits, '_', '.', '-'; at most 64 "
        "in all), each optionally ending in * to name every parameter that starts with it, "
        "and trackers for the common tracking parameters, such as trackers or "
        "utm_*,gclid,fbclid",
        "Query parameters that do not change a response (campaign and click tracking): left "
        "out of the cache key, so every click on a tagged link is served the one cached copy; "
        "the backend still gets the URL as requested (its first click's on a miss). trackers: "
        "utm_*, gclid, fbclid, msclkid, mc_cid, mc_eid and the rest of the list in "
        "docs/annotations.md. Unset: every parameter is part of the key (opt in: an app "
        "that renders a listed parameter would serve one visitor's page to all).",
    ),
    OptionSpec(
        "sort_query",
        "bool",
        "false",
        "true or false",
        "true: the query string is sorted for the cache key (std.querysort), so ?a=1&b=2 and "
        "?b=2&a=1 are one object; the backend still gets the parameters in their order.",
    ),
    OptionSpec(
        "vcl_configmap",
        "dns_subdomain",
        None,
        "a ConfigMap name in the pod's namespace (lowercase letters, digits, '-' and '.', "
        "at most 253 characters); its key default.vcl is used",
        "ConfigMap whose default.vcl replaces the generated VCL (it must define the backend "
        "127.0.0.1:6090).",
    ),
    OptionSpec(
        "access_log",
        "bool",
        "false",
        "true or false",
        "true: container cache-access-log runs varnishncsa and writes one JSON line per "
        "client request to its stdout (docs/observability.md).",
    ),
    OptionSpec(
        "metrics",
        "bool",
        "false",
        "true or false",
        "true: container cache-varnish-exporter serves Varnish's counters in Prometheus "
        "format (prometheus_varnish_exporter's names) on port cache-vmetrics (9131).",
    ),
)

OPTIONS += (
    OptionSpec(
        "tag_header",
        "header_name",
        "xkey",
        "an HTTP header name (letters, digits and '-', at most 64 characters) such as xkey or "
        "Surrogate-Key; not one Varnish or HTTP caching relies on (Cache-Control, Vary...) "
        "nor X-Cache-*",
        "Response header carrying the tags (surrogate keys) of an object, space- or "
        "comma-separated, for `cache-injector purge --tag` (xkey VMOD; a pod whose Varnish "
        "image has none answers that purge 501 and is reported as tags not supported).",
    ),
    OptionSpec(
        "expose_tag_header",
        "bool",
        "false",
        "true or false",
        "true: clients receive the tag-header as the backend sent it; false: it is removed "
        "from responses (it is kept with the stored object).",
    ),
)

OPTIONS_BY_NAME = {spec.name: spec for spec in OPTIONS}
OPTIONS_BY_KEY = {spec.key: spec for spec in OPTIONS}
