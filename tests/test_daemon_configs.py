"""Every config we generate is checked by the real daemons — Debian's haproxy 2.6 / varnish 7.1
and HAProxy 3.4 / Varnish 8.0 (the default images) — for a matrix of annotation values (each
option at its edges) and for every corpus workload. A warning is a failure unless named below.

Varnish is checked with the container's own arguments (`varnishd -C` validates `-p`), and
`haproxy -c` runs on the exact haproxy.cfg the pod would mount.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests import daemons
from tests.conftest import CORPUS, ROOT, make_pod, policy_from
from webhook.engine import names
from webhook.engine.builder import varnish_args
from webhook.engine.inject import inject_pod
from webhook.engine.policy import Policy, default_policy
from webhook.engine.render import load_templates
from webhook.engine.workloads import find_workloads, split_documents

P = "cache-injector.io/"

# (case id, extra annotations, policy data)
MATRIX: list[tuple[str, dict[str, str], dict[str, object]]] = [
    ("defaults", {}, {}),
    ("max-backends-1", {P + "max-backends": "1"}, {}),
    ("max-backends-256", {P + "max-backends": "256"}, {"limits": {"maxBackends": 256}}),
    ("health-path", {P + "health-path": "/healthz"}, {}),
    ("health-path-query", {P + "health-path": "/ready?full=1&x=%2F"}, {}),
    ("cache-size-16Mi", {P + "cache-size": "16Mi"}, {}),
    ("cache-size-4Gi", {P + "cache-size": "4Gi"}, {}),
    ("cache-size-decimal", {P + "cache-size": "1500M"}, {}),
    ("ttl-0s", {P + "default-ttl": "0s"}, {}),
    ("ttl-365d", {P + "default-ttl": "365d", P + "grace": "365d"}, {}),
    ("grace-0s", {P + "grace": "0s"}, {}),
    ("listen-port-1025", {P + "listen-port": "1025"}, {}),
    ("listen-port-65535", {P + "listen-port": "65535"}, {}),
    ("sticky", {P + "sticky-sessions": "true"}, {}),
    ("sticky-secret", {P + "sticky-sessions": "true"}, {"stickySessionSecret": "s3cr3t"}),
    ("dns-srv", {P + "backend": "app:http", P + "discovery": "dns-srv"}, {}),
    ("max-object-size-1pct", {P + "max-object-size": "1%"}, {}),
    ("max-object-size-1Ki", {P + "max-object-size": "1Ki"}, {}),
    ("max-object-size-4Gi", {P + "max-object-size": "4Gi", P + "cache-size": "4Gi"}, {}),
    ("tunnel-timeout-1s", {P + "tunnel-timeout": "1s"}, {}),
    ("tunnel-timeout-24d", {P + "tunnel-timeout": "24d"}, {}),
    ("ignore-cookies-one", {P + "ignore-cookies": "_ga"}, {}),
    (
        "ignore-cookies-sticky",
        {P + "ignore-cookies": "_ga,_ga_*,_gid,a.b,x-y*", P + "sticky-sessions": "true"},
        {},
    ),
    ("ignore-query-one", {P + "ignore-query-params": "gclid"}, {}),
    ("sort-query", {P + "sort-query": "true"}, {}),
    (
        "ignore-query-trackers-sorted",
        {P + "ignore-query-params": "trackers,ref,a.b,x-y*", P + "sort-query": "true"},
        {},
    ),
    ("ip-family-ipv4", {P + "ip-family": "ipv4"}, {}),
    (
        "ip-family-ipv6",
        {P + "ip-family": "ipv6", P + "discovery": "dns-srv", P + "backend": "app:http"},
        {},
    ),
    (
        "everything",
        {
            P + "backend": "api.catalog:http-api",
            P + "discovery": "dns-srv",
            P + "sticky-sessions": "true",
            P + "health-path": "/health",
            P + "max-backends": "64",
            P + "cache-size": "1Gi",
        },
        {"namespaces": {"shop": {"allowedBackendNamespaces": ["catalog"]}}},
    ),
    ("drain-0", {P + "drain-seconds": "0"}, {}),
    ("cluster-domain", {}, {"clusterDomain": "k8s.example.internal"}),
    ("transient", {}, {"transientSize": "1Gi"}),
    ("vcl-configmap", {P + "vcl-configmap": "my-vcl"}, {}),
    ("access-log-metrics", {P + "access-log": "true", P + "metrics": "true"}, {}),
    ("backend-tls-ca-configmap", {P + "backend-tls": "on", P + "backend-tls-ca": "app-ca"}, {}),
    (
        "backend-tls-system-ca-srv-name",
        {
            P + "backend": "app:https",
            P + "discovery": "dns-srv",
            P + "backend-tls": "on",
            P + "backend-tls-ca": "system",
            P + "backend-tls-server-name": "api.example.internal",
            P + "health-path": "/healthz",
        },
        {},
    ),
    (
        "backend-tls-mtls",
        {
            P + "backend-tls": "on",
            P + "backend-tls-ca": "app-ca:bundle.pem",
            P + "backend-tls-client-secret": "web-client",
            P + "sticky-sessions": "true",
        },
        {},
    ),
    (
        "backend-tls-insecure-mtls",
        {P + "backend-tls": "insecure-skip-verify", P + "backend-tls-client-secret": "web-client"},
        {"namespaces": {"shop": {"allowInsecureBackendTls": True}}},
    ),
    ("tag-header-surrogate", {P + "tag-header": "Surrogate-Key"}, {}),
    ("tag-header-exposed", {P + "tag-header": "X-Tags", P + "expose-tag-header": "true"}, {}),
    (
        "access-log-sticky",
        {P + "access-log": "true", P + "sticky-sessions": "true", P + "health-path": "/h"},
        {},
    ),
]

# Messages that are not warnings about our config.
ACCEPTABLE = [
    # varnishd -C on a workdir that is not tmpfs; in the pod it is a Memory emptyDir.
    re.compile(r"^Info: Working directory not mounted on tmpfs partition$"),
    # haproxy 2.6 prints this on success.
    re.compile(r"^Configuration file is valid$"),
]


@dataclass(frozen=True)
class Rendered:
    case: str
    vcl: str | None
    haproxy_cfg: str
    varnish_args: tuple[str, ...]
    vcl_old: str | None  # for an image tagged 7.1 (no transit_buffer)
    varnish_args_old: tuple[str, ...]
    varnish_cli: str | None  # the start-up CLI file (-I): its inline VCL imports xkey


def _render(case: str, pod: Mapping[str, object], policy: Policy, namespace: str) -> Rendered:
    outcome = inject_pod(
        pod, namespace=namespace, operation="CREATE", policy=policy, templates=load_templates()
    )
    assert outcome.injected, (case, outcome.decision, outcome.error)
    assert outcome.configs is not None and outcome.options is not None
    args = varnish_args(outcome.options, policy)
    # The same pod with an image tagged 7.1: no transit_buffer, large passes piped instead.
    old_images = policy.model.images.model_copy(update={"varnish": "varnish:7.1"})
    old = dataclasses.replace(
        policy,
        model=policy.model.model_copy(update={"images": old_images}),
        varnish_transit_buffer=False,  # as load_policy derives it for that image
    )
    old_outcome = inject_pod(
        pod, namespace=namespace, operation="CREATE", policy=old, templates=load_templates()
    )
    assert old_outcome.configs is not None
    return Rendered(
        case,
        outcome.configs.vcl,
        outcome.configs.haproxy_cfg,
        tuple(args),
        old_outcome.configs.vcl,
        tuple(varnish_args(outcome.options, old)),
        outcome.configs.varnish_cli,
    )


def _corpus_cases() -> Iterator[Rendered]:
    policy = policy_from({"defaults": {"backend": "app:8080"}})
    for path in sorted(CORPUS.glob("*.yaml")):
        for workload in find_workloads(split_documents(path.read_text())):
            outcome = inject_pod(
                workload.template,
                namespace=workload.namespace or "default",
                operation="CREATE",
                policy=policy,
                templates=load_templates(),
                namespace_labels={"cache-injector.io/inject": "enabled"},
                owner_kind=workload.kind,
            )
            if outcome.injected:
                yield _render(
                    f"{path.stem}:{workload.title}",
                    workload.template,
                    policy,
                    workload.namespace or "default",
                )


def _all_cases() -> list[Rendered]:
    cases = []
    for case, extra, policy_data in MATRIX:
        policy = policy_from(policy_data) if policy_data else default_policy()
        cases.append(_render(case, make_pod(annotations=extra), policy, "shop"))
    return cases + list(_corpus_cases())


CASES = _all_cases()


def _unique(kind: str) -> list[tuple[str, str]]:
    """(ids, text) of each distinct config, so identical configs are checked once."""
    seen: dict[str, list[str]] = {}
    texts: dict[str, str] = {}
    for rendered in CASES:
        if kind == "vcl":
            if rendered.vcl is None:
                continue
            text = "\0".join(
                (
                    rendered.vcl,
                    " ".join(rendered.varnish_args),
                    rendered.vcl_old or "",
                    " ".join(rendered.varnish_args_old),
                    rendered.varnish_cli or "",
                )
            )
        else:
            text = rendered.haproxy_cfg
        digest = hashlib.sha256(text.encode()).hexdigest()
        seen.setdefault(digest, []).append(rendered.case)
        texts[digest] = text
    return [(names_[0] + (f"+{len(names_) - 1}" if len(names_) > 1 else ""), texts[d])
            for d, names_ in seen.items()]  # fmt: skip


def _problems(output: str) -> list[str]:
    return [
        line
        for line in output.splitlines()
        if line.strip() and not any(pattern.match(line.strip()) for pattern in ACCEPTABLE)
    ]


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: as root, varnishd -C cannot read a VCL in a 0700 directory.
    with tempfile.TemporaryDirectory(prefix="cache-injector-check-") as directory:
        Path(directory).chmod(0o755)
        yield Path(directory)


@pytest.mark.parametrize("label", daemons.HAPROXY_LABELS)
@pytest.mark.parametrize(("case", "cfg"), [pytest.param(*c, id=c[0]) for c in _unique("cfg")])
def test_haproxy_accepts_config(label: str, case: str, cfg: str, workdir: Path) -> None:
    daemon = daemons.require(label)
    cfg = _with_tls_files(cfg, workdir)
    path = workdir / f"{label}-{hashlib.sha256(cfg.encode()).hexdigest()[:12]}.cfg"
    path.write_text(cfg)
    path.chmod(0o644)
    result = subprocess.run(
        [daemon.path, "-c", "-f", str(path)], capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{label} rejected {case}:\n{output}"
    assert not _problems(output), f"{label} warns on {case}:\n{output}"


def _with_tls_files(cfg: str, workdir: Path) -> str:
    """backend-tls: HAProxy reads the CA bundle and the client certificate (with its key
    beside it, as the Secret is mounted) while checking, so the mount paths point at real
    PEM files here."""
    ca_dir, client_dir = workdir / "backend-ca", workdir / "backend-client"
    if not ca_dir.is_dir():
        ca = trustme.CA()
        client = ca.issue_cert("web.shop.svc.cluster.local")
        for directory in (ca_dir, client_dir):
            directory.mkdir(mode=0o755)
        ca.cert_pem.write_to_path(str(ca_dir / names.BACKEND_CA_FILE))
        client_pem = client_dir / names.BACKEND_CLIENT_CERT_FILE
        client.cert_chain_pems[0].write_to_path(str(client_pem))
        client.private_key_pem.write_to_path(f"{client_pem}.key")
    return cfg.replace(names.BACKEND_CA_DIR, str(ca_dir)).replace(
        names.BACKEND_CLIENT_CERT_DIR, str(client_dir)
    )


@pytest.mark.parametrize("label", daemons.VARNISH_LABELS)
@pytest.mark.parametrize(
    ("case", "vcl_and_args"), [pytest.param(*c, id=c[0]) for c in _unique("vcl")]
)
def test_varnishd_accepts_vcl_and_arguments(
    label: str, case: str, vcl_and_args: str, workdir: Path
) -> None:
    daemon = daemons.require(label)
    vcl, args_text, old_vcl, old_args_text, cli = vcl_and_args.split("\0")
    if label == "varnish-7.1":  # as run from an image tagged 7.1
        vcl, args_text = old_vcl, old_args_text
    stem = f"{label}-{hashlib.sha256(vcl_and_args.encode()).hexdigest()[:12]}"
    path = workdir / f"{stem}.vcl"
    path.write_text(vcl)
    path.chmod(0o644)
    args = _check_arguments(args_text.split(" "), workdir / stem, path)
    checked = [("the VCL", path)]
    if cli:
        # What the start-up CLI file loads first: the VCL behind the inline one that imports
        # xkey (both images have varnish-modules; without it the VCL alone is loaded).
        if not _has_xkey(daemon.path):
            daemons.missing(f"{label} has no xkey VMOD: apt-get install varnish-modules")
        wrapper = workdir / f"{stem}-xkey.vcl"
        wrapper.write_text(inline_vcl(cli, path))
        wrapper.chmod(0o644)
        checked.append(("the xkey VCL", wrapper))
    for what, vcl_path in checked:
        argv = [str(vcl_path) if a == str(path) else a for a in args]
        result = subprocess.run([daemon.path, *argv], capture_output=True, text=True, timeout=60)
        head = result.stderr.split("/* ---===###", 1)[0]  # -C prints the generated C after this
        assert result.returncode == 0, (
            f"{label} rejected {what} of {case}:\n{head}\n{result.stdout[:2000]}"
        )
        assert not _problems(head), f"{label} warns on {what} of {case}:\n{head}"


def inline_vcl(cli: str, vcl_path: Path) -> str:
    """The VCL the start-up CLI file loads inline, including the VCL at `vcl_path`."""
    match = re.search(r"^-vcl\.inline boot << (\w+)\n(.*?)^\1$", cli, re.M | re.S)
    assert match, cli
    mounted = f"{names.VARNISH_CONFIG_DIR}/{names.VARNISH_CONFIG_FILE}"
    assert f'include "{mounted}";' in match[2]
    return match[2].replace(f'include "{mounted}";', f'include "{vcl_path}";')


def _has_xkey(varnishd: str) -> bool:
    prefix = Path(varnishd).resolve().parent.parent
    return any(prefix.glob("lib/**/varnish/vmods/libvmod_xkey.so"))


def _check_arguments(args: list[str], workdir: Path, vcl: Path) -> list[str]:
    """The container's arguments with -C, a scratch workdir and the local VCL path."""
    out = ["-C"]
    skip_next = False
    for index, arg in enumerate(args):
        if skip_next:
            skip_next = False
            continue
        if arg == "-F":
            continue
        if arg == "-I":  # the start-up CLI file: its VCLs are checked one by one
            skip_next = True
            continue
        if arg in ("-n", "-f"):
            out += [arg, str(workdir if arg == "-n" else vcl)]
            skip_next = True
            continue
        out.append(arg)
        assert index < len(args)
    return out


def test_matrix_covers_every_option() -> None:
    """Each annotation appears in the matrix, so a new option cannot skip the daemon check."""
    used = {key for _, annotations, _ in MATRIX for key in annotations} | {P + "backend"}
    assert {spec.key for spec in names.OPTIONS} <= used


def test_corpus_is_covered() -> None:
    files = {rendered.case.split(":")[0] for rendered in CASES if ":" in rendered.case}
    assert len(files) >= 25, files


def test_rendered_configs_carry_one_comment_line_pointing_at_the_docs() -> None:
    """Explanations are Jinja comments in the templates, not text in every pod object: a
    rendered config has one comment line, its header, and it names the page that explains it."""
    for rendered in CASES:
        for text in (rendered.vcl, rendered.haproxy_cfg, rendered.varnish_cli):
            if text is None:
                continue
            comments = [line for line in text.splitlines() if line.lstrip().startswith("#")]
            assert len(comments) == 1, (rendered.case, comments)
            assert "docs/sidecar-configs.md" in comments[0], (rendered.case, comments)
            assert "{#" not in text and "#}" not in text, rendered.case
    assert (ROOT / "docs" / "sidecar-configs.md").is_file()
