"""The `cache-injector` command: inject, uninject, explain, policy check, purge, serve, certs.

Owns: reading files and stdin, printing, exit codes (0 ok, 1 explain found denials, 2 bad
input or denied injection). Calls inject.py exactly as the webhook does, so what `explain`
says is what the webhook does.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click
import jsonpatch

from . import __version__
from .engine import backend_tls, names
from .engine.errors import CacheInjectorError, InvalidOptions, InvalidPolicy
from .engine.inject import Outcome, inject_pod
from .engine.patch import uninject as unpatch
from .engine.policy import Policy, default_policy, load_policy_text
from .engine.render import Templates, load_templates
from .engine.selection import decide
from .engine.workloads import Document, Workload, dump_document, find_workloads, split_documents


def fail(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(2)


def read_input(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        fail(f"{path}: cannot read: {err}")


def read_policy(path: str | None) -> Policy:
    if path is None:
        return default_policy()
    try:
        return load_policy_text(read_input(path), path)
    except InvalidPolicy as err:
        fail("\n".join(f"{path}: {problem}" for problem in err.problems))


def check_revision(revision: str) -> str:
    """A revision is a label value: a DNS label, so it can name a namespace's choice."""
    from .engine.values import DNS_LABEL  # noqa: PLC0415

    if not DNS_LABEL.match(revision) or len(revision) > 63:
        fail(f"--revision: {revision} is invalid: a DNS label (lowercase letters, digits, -)")
    return revision


def parse_labels(text: str | None) -> dict[str, str]:
    """`k=v,k2=v2`, as kubectl writes label selectors."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--namespace-labels: {item} is invalid: KEY=VALUE[,KEY=VALUE...]")
        labels[key] = value
    return labels


@dataclass
class Result:
    workload: Workload
    namespace: str
    outcome: Outcome
    cluster_domain: str = "cluster.local"


def evaluate(
    documents: list[Document],
    *,
    policy: Policy,
    templates: Templates,
    namespace: str | None,
    namespace_labels: Mapping[str, str],
    revision: str = names.DEFAULT_REVISION,
) -> Iterator[Result]:
    """Run the engine on every workload's pod template, as the webhook would on its pods."""
    for workload in find_workloads(documents):
        where = workload.namespace or namespace or "default"
        outcome = inject_pod(
            workload.template,
            namespace=where,
            operation="CREATE",
            policy=policy,
            templates=templates,
            namespace_labels=namespace_labels,
            owner_kind=workload.kind,
            revision=revision,
        )
        if (
            outcome.decision.reason == "not_selected"
            and workload.kind != "Pod"
            and workload.labels.get(names.LABEL_INJECT) == names.LABEL_ENABLED
        ):
            outcome = Outcome(
                allowed=True,
                decision=decide(False, "label_on_workload_only", kind=workload.kind),
            )
        yield Result(workload, where, outcome, policy.model.cluster_domain)


def evaluate_file(
    path: str,
    *,
    policy_path: str | None,
    namespace: str | None,
    namespace_labels: str | None,
    revision: str,
) -> tuple[list[Document], Iterator[Result]]:
    """What inject and explain both start with: read the manifests and the context to judge
    them in (exit 2 on bad input), and evaluate them; the documents are for writing back."""
    text = read_input(path)
    policy, templates, labels = (
        read_policy(policy_path),
        load_templates(),
        parse_labels(namespace_labels),
    )
    try:
        documents = split_documents(text)
    except CacheInjectorError as err:
        fail(f"{path}: {err}")
    results = evaluate(
        documents,
        policy=policy,
        templates=templates,
        namespace=namespace,
        namespace_labels=labels,
        revision=check_revision(revision),
    )
    return documents, results


def error_lines(error: CacheInjectorError) -> list[str]:
    if isinstance(error, InvalidOptions):
        return [str(problem) for problem in error.problems]
    return [str(error)]


def prefix(path: str, workload: Workload) -> str:
    return f"{path}: doc {workload.document.number} ({workload.title})"


Decorator = Callable[[Any], Any]


def option_set(*options: Decorator) -> Decorator:
    """Several click options as one decorator (listed by --help in the order given), so
    commands that take the same options declare them once."""

    def apply(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def seconds_option(flag: str, default: float, low: float, high: float, help: str) -> Decorator:
    """A duration in seconds: a float in [low, high], its default shown by --help."""
    return click.option(
        flag, default=default, show_default=True, type=click.FloatRange(low, high), help=help
    )


output_option = click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")

# What inject and explain read: the manifest, and the context the webhook would judge it in.
shared_options = option_set(
    click.option("-f", "--filename", "path", required=True, help="Manifest file, or - for stdin."),
    click.option(
        "--policy", "policy_path", help="Cluster policy file (default: the embedded one)."
    ),
    click.option(
        "--namespace",
        help="Namespace of objects that name none (the webhook uses the request's).",
    ),
    click.option(
        "--namespace-labels",
        help="Labels of that namespace, to simulate a labelled one: "
        f"{names.LABEL_INJECT}={names.LABEL_ENABLED}",
    ),
    click.option(
        "--revision",
        default=names.DEFAULT_REVISION,
        show_default=True,
        help=f"Act as the injector of this revision (namespaces pick one with {names.LABEL_REV}).",
    ),
)

# How purge and audit reach the API server.
cluster_options = option_set(
    click.option(
        "--kubeconfig",
        help="Kubeconfig file (default: KUBECONFIG, ~/.kube/config, "
        "else the in-cluster ServiceAccount).",
    ),
    click.option("--context", help="Kubeconfig context."),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cache-injector")
def main() -> None:
    """Give Kubernetes pods a Varnish cache and an HAProxy balancer as sidecars."""


@main.command()
@shared_options
def inject(
    path: str,
    policy_path: str | None,
    namespace: str | None,
    namespace_labels: str | None,
    revision: str,
) -> None:
    """Write the manifests with the cache injected into every selected pod template."""
    documents, results = evaluate_file(
        path,
        policy_path=policy_path,
        namespace=namespace,
        namespace_labels=namespace_labels,
        revision=revision,
    )
    errors: list[str] = []
    for result in results:
        where = prefix(path, result.workload)
        for warning in result.outcome.warnings:
            click.echo(f"{where}: warning: {warning}", err=True)
        if not result.outcome.allowed and result.outcome.error is not None:
            errors += [f"{where}: {line}" for line in error_lines(result.outcome.error)]
        elif result.outcome.injected:
            # The patch shares built sidecars with the engine's memo: apply a copy.
            patch = copy.deepcopy(result.outcome.patch)
            jsonpatch.apply_patch(result.workload.template, patch, in_place=True)
            result.workload.document.changed = True
    if errors:
        fail("\n".join(errors))
    sys.stdout.write("".join(dump_document(document) for document in documents))


@main.command()
@click.option("-f", "--filename", "path", required=True, help="Manifest file, or - for stdin.")
@click.option("-q", "--quiet", is_flag=True, help="Do not list what was removed on stderr.")
def uninject(path: str, quiet: bool) -> None:
    """Write the manifests with the cache taken out again: the inverse of `inject`.

    Removes exactly what each pod template's status annotation lists and restores what
    injection replaced; documents without an injected template are written back unchanged.
    """
    text = read_input(path)
    try:
        documents = split_documents(text)
    except CacheInjectorError as err:
        fail(f"{path}: {err}")
    errors: list[str] = []
    for workload in find_workloads(documents):
        try:
            removed = unpatch(workload.template)
        except ValueError as err:
            errors.append(f"{prefix(path, workload)}: {err}")
            continue
        if removed:
            workload.document.changed = True
            if not quiet:
                click.echo(f"{prefix(path, workload)}: removed {'; '.join(removed)}", err=True)
    if errors:
        fail("\n".join(errors))
    sys.stdout.write("".join(dump_document(document) for document in documents))


def injected_images(outcome: Outcome) -> dict[str, Any]:
    """The sidecar images a pod would get (with imagePullPolicy) and its imagePullSecrets after
    injection, read from the patch itself: what the kubelet would pull."""
    containers: list[Mapping[str, Any]] = []
    secrets: list[str] = []
    for op in outcome.patch:
        value, where = op.get("value"), str(op.get("path", ""))
        items = value if isinstance(value, list) else [value]
        if where.startswith(("/spec/initContainers", "/spec/containers")):
            containers += [item for item in items if isinstance(item, dict)]
        elif where.startswith("/spec/imagePullSecrets"):
            secrets += [str(item["name"]) for item in items if isinstance(item, dict)]
    return {
        "containers": [
            {
                "name": container["name"],
                "image": container.get("image"),
                "imagePullPolicy": container.get("imagePullPolicy", "(Kubernetes default)"),
            }
            for container in containers
            if container.get("name") in names.CONTAINERS
        ],
        "addedImagePullSecrets": secrets,
    }


def explain_record(path: str, result: Result) -> dict[str, Any]:
    outcome = result.outcome
    record: dict[str, Any] = {
        "file": path,
        "doc": result.workload.document.number,
        "workload": result.workload.title,
        "namespace": result.namespace,
        "result": "injected"
        if outcome.injected
        else "denied"
        if not outcome.allowed
        else "skipped",
        "reason": outcome.decision.reason,
        "message": outcome.decision.message,
        "revision": revision_of(result),
        "warnings": outcome.warnings,
        "errors": error_lines(outcome.error) if outcome.error else [],
        "options": {},
    }
    if outcome.injected:
        record["images"] = injected_images(outcome)
    if outcome.options is not None:
        for spec in names.OPTIONS:
            record["options"][spec.suffix] = {
                "value": outcome.options.texts[spec.name],
                "source": outcome.options.sources[spec.name],
            }
        # `trackers` stands for a list: show the names the cache key leaves out.
        if outcome.options.ignore_query_params:
            record["options"]["ignore-query-params"]["names"] = list(
                outcome.options.ignore_query_params
            )
        # A percentage means nothing without the cache it is of: show the bytes too.
        limit = outcome.options.max_object_size.bytes_for(outcome.options.cache_size)
        record["options"]["max-object-size"]["bytes"] = limit
        if outcome.options.max_object_size.percent is not None:
            record["options"]["max-object-size"]["value"] += (
                f" of cache-size {outcome.options.texts['cache_size']} = {limit} bytes"
            )
        backend = outcome.options.backend
        if backend is not None:
            fqdn = backend.fqdn(result.namespace, result.cluster_domain)
            record["backendTls"] = backend_tls.describe(outcome.options, fqdn)
    return record


def revision_of(result: Result) -> str | None:
    """The revision that injects (or injected) the workload, from the patch's status."""
    for op in result.outcome.patch:
        if op["path"].endswith(names.ANNOTATION_STATUS.replace("/", "~1")):
            return str(json.loads(op["value"]).get("revision"))
        if op["path"] == "/metadata/annotations":
            return str(json.loads(op["value"][names.ANNOTATION_STATUS]).get("revision"))
    return None


def explain_line(record: Mapping[str, Any]) -> str:
    # The default revision goes unsaid in text (JSON always has it).
    named = record.get("revision") not in (None, names.DEFAULT_REVISION)
    revision = f" by revision {record['revision']}" if named else ""
    head = (
        f"{record['file']}: doc {record['doc']} ({record['workload']}, namespace "
        f"{record['namespace']}): {record['result']}{revision} [{record['reason']}] "
        f"{record['message']}"
    )
    if record["errors"]:
        head += ": " + "; ".join(record["errors"])
    if record["options"]:
        head += " | " + ", ".join(
            f"{key}={item['value'] if item['value'] is not None else 'unset'} ({item['source']})"
            for key, item in record["options"].items()
        )
    return head


def images_line(images: Mapping[str, Any]) -> str:
    line = "images: " + ", ".join(
        f"{item['name']}={item['image']} (pull {item['imagePullPolicy']})"
        for item in images["containers"]
    )
    if images["addedImagePullSecrets"]:
        line += "; imagePullSecrets added: " + ", ".join(images["addedImagePullSecrets"])
    return line


@main.command()
@shared_options
@output_option
def explain(
    path: str,
    policy_path: str | None,
    namespace: str | None,
    namespace_labels: str | None,
    revision: str,
    output: str,
) -> None:
    """Say, per workload, whether it would be injected, why, and each option's value and source.

    Exits 1 when a workload would be denied, so CI can run it on manifests.
    """
    _, results = evaluate_file(
        path,
        policy_path=policy_path,
        namespace=namespace,
        namespace_labels=namespace_labels,
        revision=revision,
    )
    records = [explain_record(path, result) for result in results]
    if output == "json":
        click.echo(json.dumps(records, indent=2))
    else:
        for record in records:
            click.echo(explain_line(record))
            if "images" in record:
                click.echo(f"    {images_line(record['images'])}")
            if record.get("backendTls"):
                click.echo(f"    backend TLS: {record['backendTls']}")
            for warning in record["warnings"]:
                click.echo(f"    warning: {warning}")
        if not records:
            click.echo(f"{path}: no workloads with a pod template")
    if any(record["result"] == "denied" for record in records):
        sys.exit(1)


@main.group()
def policy() -> None:
    """Work with the cluster policy file."""


@policy.command("check")
@click.argument("path")
def policy_check(path: str) -> None:
    """Validate a policy file: exit 0 with a summary, or 2 listing every problem."""
    try:
        checked = load_policy_text(read_input(path), path)
    except InvalidPolicy as err:
        fail("\n".join(f"{path}: {problem}" for problem in err.problems))
    click.echo(f"{path}: valid policy")
    click.echo(policy_summary(checked))


def policy_summary(checked: Policy) -> str:
    model = checked.model
    pinned = "may be overridden by pods" if model.allow_image_override else "pinned"
    defaults = (
        ", ".join(f"{k.replace('_', '-')}={v}" for k, v in checked.defaults.items()) or "none"
    )
    sidecars = (
        "native (initContainers)"
        if model.native_sidecars
        else "regular containers; Job pods skipped"
    )
    limits = model.limits
    return "\n".join(
        [
            f"  clusterDomain: {model.cluster_domain}",
            f"  sidecars: {sidecars}",
            f"  images: {model.images.haproxy}, {model.images.varnish} ({pinned}; "
            f"imagePullPolicy {model.images.pull_policy or 'Kubernetes default'}; "
            f"imagePullSecrets added: {', '.join(model.images.pull_secrets) or 'none'})",
            f"  defaults: {defaults}",
            f"  limits: cache-size <= {limits.max_cache_size}, "
            f"max-backends <= {limits.max_backends}",
            f"  excluded namespaces: {', '.join(sorted(checked.excluded_namespaces))}",
            f"  namespace entries: {', '.join(sorted(model.namespaces)) or 'none'}",
            f"  onMissingBackend: {model.on_missing_backend}, onInvalid: {model.on_invalid}",
        ]
    )


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", default=8443, show_default=True, type=click.IntRange(0, 65535))
@click.option("--tls-cert", required=True, help="Serving certificate (PEM); re-read on change.")
@click.option("--tls-key", required=True, help="Its private key (PEM); re-read on change.")
@click.option(
    "--policy", "policy_path", help="Cluster policy file, re-read on change (default: embedded)."
)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@seconds_option(
    "--watch-interval", 1.0, 0.05, 60, "Seconds between looks at the certificate and policy files."
)
@click.option(
    "--shutdown-timeout",
    default=20,
    show_default=True,
    type=click.IntRange(1, 600),
    help="Seconds in-flight reviews get to finish after SIGTERM.",
)
@seconds_option("--drain-seconds", 5.0, 0, 300,
                "After SIGTERM: seconds to keep serving, not ready, closing each connection "
                "after its next answer, before the graceful shutdown (0: none; SIGINT never "
                "drains).")  # fmt: skip
@seconds_option("--header-timeout", 5.0, 0.1, 60,
                "Seconds a client gets, from connecting or a request's first byte, to send all "
                "its request headers; then the connection is closed.")  # fmt: skip
@seconds_option(
    "--handshake-timeout", 5.0, 0.1, 60, "Seconds a client gets to complete its TLS handshake."
)
@click.option(
    "--max-connections",
    default=1024,
    show_default=True,
    type=click.IntRange(16, 1_000_000),
    help="Connections per worker; beyond it the longest-waiting idle one is closed.",
)
@seconds_option(
    "--body-timeout", 10.0, 0.1, 60, "Seconds a client gets to send a request body before a 408."
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--revision",
    default=names.DEFAULT_REVISION,
    show_default=True,
    help=f"This injector's revision, recorded in every status (namespaces pick one with "
    f"{names.LABEL_REV}).",
)
def serve(
    *,
    host: str,
    port: int,
    tls_cert: str,
    tls_key: str,
    policy_path: str | None,
    workers: int,
    watch_interval: float,
    shutdown_timeout: int,
    drain_seconds: float,
    header_timeout: float,
    handshake_timeout: float,
    max_connections: int,
    body_timeout: float,
    log_level: str,
    revision: str,
) -> None:
    """Serve the admission webhook over HTTPS (TLS 1.2+): POST /mutate, GET /healthz,
    /readyz, /metrics. Certificate and policy files are re-read when they change."""
    # Imported here: uvicorn, FastAPI and prometheus would add ~0.25 s to every `inject`.
    from .serve import runner  # noqa: PLC0415
    from .serve.guard import Guard  # noqa: PLC0415
    from .serve.server import Settings  # noqa: PLC0415

    settings = Settings(
        tls_cert=Path(tls_cert),
        tls_key=Path(tls_key),
        policy=Path(policy_path) if policy_path else None,
        watch_interval=watch_interval,
        body_timeout=body_timeout,
        revision=check_revision(revision),
    )
    try:
        runner.check(settings)
    except InvalidPolicy as err:
        fail("\n".join(f"{err.source}: {problem}" for problem in err.problems))
    except CacheInjectorError as err:
        fail(str(err))
    sys.exit(
        runner.run(
            settings,
            host=host,
            port=port,
            workers=workers,
            shutdown_timeout=shutdown_timeout,
            log_level=log_level.upper(),
            limits=Guard(
                handshake_timeout=handshake_timeout,
                header_timeout=header_timeout,
                max_connections=max_connections,
                drain_seconds=drain_seconds,
            ),
        )
    )


@main.command()
@cluster_options
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-l", "--selector", help="Label selector of the pods (as kubectl -l).")
@click.option("--deployment", help="The pods of this Deployment (its spec.selector).")
@click.option("--service", help="The pods behind this Service (its spec.selector).")
@click.option("--pod", "pods", multiple=True, help="Only this pod (repeatable): to repeat a purge.")
@click.option(
    "--url", "urls", multiple=True, help="Path to invalidate, such as /a?b=1 (repeatable)."
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="Host the URL was requested with (repeatable); without it, the URL at every Host.",
)
@click.option("--ban", "bans", multiple=True, help="Regex of URLs to ban (repeatable).")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    help="Purge every object the backend tagged with TAG in the tag-header (repeatable).",
)
@click.option(
    "--soft", is_flag=True, help="With --tag: expire instead of remove (served stale in grace)."
)
@click.option(
    "--via",
    type=click.Choice(["proxy", "direct"]),
    default="proxy",
    show_default=True,
    help="proxy: through the API server (pods/proxy); direct: to the pod IPs (in-cluster).",
)
@click.option(
    "--token-file",
    help=f"File holding the token (default: Secret {names.PURGE_SECRET}, key "
    f"{names.PURGE_SECRET_KEY}, of the namespace).",
)
@seconds_option("--timeout", 5.0, 0.1, 120, "Seconds per attempt.")
@click.option("--retries", default=2, show_default=True, type=click.IntRange(0, 10))
@click.option("--concurrency", default=10, show_default=True, type=click.IntRange(1, 200))
@output_option
def purge(
    *,
    kubeconfig: str | None,
    context: str | None,
    namespace: str,
    selector: str | None,
    deployment: str | None,
    service: str | None,
    pods: tuple[str, ...],
    urls: tuple[str, ...],
    hosts: tuple[str, ...],
    bans: tuple[str, ...],
    tags: tuple[str, ...],
    soft: bool,
    via: str,
    token_file: str | None,
    timeout: float,
    retries: int,
    concurrency: int,
    output: str,
) -> None:
    """Invalidate URLs or tags in the cache of every injected pod of a workload, one result
    per pod.

    Each pod gets a PURGE per --url and --host (or, without --host, a ban of exactly that URL
    at every Host), a BAN per --ban and one purge of every --tag (the xkey VMOD: it reports
    the objects purged; a pod whose Varnish image has none is "unsupported"), authenticated by
    the namespace's token. Exits 1 when any pod failed, was unreachable or cannot purge by
    tag, and prints how to repeat for the pods that can.
    """
    from .cluster import kube  # noqa: PLC0415 (kubernetes loads slowly)
    from .cluster import purge as purging  # noqa: PLC0415

    chosen = [o for o, v in (("--selector", selector), ("--deployment", deployment),
                             ("--service", service)) if v]  # fmt: skip
    problems = purging.check_inputs(urls, hosts, bans, tags, soft=soft)
    if len(chosen) != 1:
        problems.append("give exactly one of --selector, --deployment, --service")
    if problems:
        fail("\n".join(problems))
    try:
        cluster = kube.connect(kubeconfig, context, pool_size=concurrency)
        if deployment:
            obj = kube.read(cluster, "Deployment", namespace, deployment)
            labels = kube.selector_text((obj.get("spec") or {}).get("selector") or {})
        elif service:
            obj = kube.read(cluster, "Service", namespace, service)
            labels = kube.selector_text({"matchLabels": (obj.get("spec") or {}).get("selector")})
        else:
            labels = selector or ""
        if not labels:
            fail(f"{chosen[0]}: selects every pod of namespace {namespace}; refusing")
        found = list(kube.list_pods(cluster, namespace, labels))
        if token_file:
            token = read_input(token_file).strip("\n")
        else:
            token = purging.token_from_secret(cluster, namespace)
    except kube.ClusterError as err:
        fail(str(err))
    targets, skipped = purging.classify(found, pods)
    send = purging.send_direct if via == "direct" else purging.proxy_sender(cluster, namespace)
    actions = purging.invalidations(urls, hosts, bans, tags, soft=soft)
    results = (
        purging.fan_out(
            targets,
            actions,
            send=send,
            token=token,
            timeout=timeout,
            retries=retries,
            concurrency=concurrency,
        )
        + skipped
    )
    bad = [r.pod for r in results if r.result in ("failed", "unreachable")]
    unsupported = [r.pod for r in results if r.result == "unsupported"]
    if output == "json":
        click.echo(json.dumps({"selector": labels, "pods": purging.as_json(results)}, indent=2))
    else:
        click.echo(purge_table(results))
        counts = {k: sum(r.result == k for r in results) for k in
                  ("ok", "failed", "unreachable", "skipped")}  # fmt: skip
        if tags:
            counts["tags not supported"] = len(unsupported)
        click.echo(
            f"{len(results)} pods ({labels}): " + ", ".join(f"{v} {k}" for k, v in counts.items())
        )
        purged = [r for r in results if r.purged is not None]
        if purged:
            click.echo(
                f"objects purged by tag: {sum(r.purged or 0 for r in purged)} ("
                + ", ".join(f"{r.pod} {r.purged}" for r in purged)
                + ")"
            )
        if unsupported:
            click.echo(
                f"tags not supported in {len(unsupported)} pods ({', '.join(unsupported)}): "
                "their Varnish image has no xkey VMOD (varnish-modules), so their tagged "
                "objects stay until they expire; purge those with --url or --ban, or run an "
                "image with varnish-modules"
            )
        if bad:
            again = " ".join(f"--pod {p}" for p in bad)
            what = " ".join([*(f"--url {u}" for u in urls), *(f"--host {h}" for h in hosts),
                             *(f"--ban '{b}'" for b in bans), *(f"--tag '{t}'" for t in tags),
                             *(["--soft"] if soft else [])])  # fmt: skip
            click.echo(
                f"repeat for those pods: cache-injector purge -n {namespace} -l '{labels}' "
                f"{again} {what}\n"
                "(a pod whose cache-varnish restarted meanwhile has an empty cache and needs "
                "nothing; one that was only unreachable still holds the objects)"
            )
    if not results:
        click.echo(f"no pods match {labels} in namespace {namespace}", err=True)
    sys.exit(1 if bad or unsupported or not targets else 0)


def purge_table(results: Any) -> str:
    rows = [("POD", "IP", "RESULT", "TRIES", "SECONDS", "DETAIL")]
    rows += [(r.pod, r.ip or "-", r.result, str(r.attempts), f"{r.seconds:.3f}", r.detail)
             for r in results]  # fmt: skip
    return table(rows)


@main.command()
@cluster_options
@click.option("-n", "--namespace", help="Only this namespace (default: every namespace).")
@click.option(
    "--policy", "policy_path", help="The cluster policy the injector runs (default: embedded)."
)
@click.option(
    "--revision",
    default=names.DEFAULT_REVISION,
    show_default=True,
    help="The injector revision the policy belongs to; other revisions' pods are left to "
    "their own audit (but a pod of a revision no longer installed is reported).",
)
@output_option
@click.option("--restart", is_flag=True, help="Roll the owners of the pods found (restartedAt).")
@click.option("--max-restarts", default=1, show_default=True, type=click.IntRange(1, 50),
              help="Owners rolled at once; the next ones wait for their rollouts.")  # fmt: skip
@seconds_option("--rollout-timeout", 600.0, 1, 7200, "Seconds to wait for each rollout.")
def audit(
    *,
    kubeconfig: str | None,
    context: str | None,
    namespace: str | None,
    policy_path: str | None,
    revision: str,
    output: str,
    restart: bool,
    max_restarts: int,
    rollout_timeout: float,
) -> None:
    """Find pods that need attention: selected but not injected (missing), injected by
    another injector version, policy or image (stale), injected but no longer selected.

    Exits 1 when there are findings (a CI or cron gate), 2 on errors. Compares with what
    this version of cache-injector and the given policy would inject: run the injector's
    own version (the chart's CronJob does).
    """
    from .cluster import audit as auditing  # noqa: PLC0415 (kubernetes loads slowly)
    from .cluster import kube  # noqa: PLC0415

    checked_policy, templates = read_policy(policy_path), load_templates()
    try:
        cluster = kube.connect(kubeconfig, context)
        labels = auditing.namespace_labels(cluster, namespace)
        installed: frozenset[str] | None = None
        try:
            installed = auditing.installed_revisions(cluster) or None
            if installed is None:
                click.echo(f"warning: no MutatingWebhookConfiguration labelled {names.LABEL_REV}"
                           "; pods of removed revisions are not looked for", err=True)  # fmt: skip
        except kube.ClusterError as err:
            click.echo(f"warning: {err}; pods of removed revisions are not looked for", err=True)
        findings, seen = auditing.audit(
            kube.list_pods(cluster, namespace, None),
            namespaces=labels,
            policy=checked_policy,
            templates=templates,
            revision=check_revision(revision),
            revisions=installed,
        )
    except kube.ClusterError as err:
        fail(str(err))
    restarts = (
        auditing.restart_owners(cluster, findings, at_once=max_restarts, timeout=rollout_timeout)
        if restart
        else []
    )
    if output == "json":
        click.echo(json.dumps({"pods": seen, "findings": auditing.as_json(findings),
                               "restarts": auditing.as_json(restarts)}, indent=2))  # fmt: skip
    else:
        rows = [("NAMESPACE", "OWNER", "POD", "REVISION", "FINDING", "REASON")]
        rows += [(f.namespace, f.owner, f.pod, f.revision, f.kind, f.reason) for f in findings]
        click.echo(table(rows))
        kinds = sorted({f.kind for f in findings})
        counts = ", ".join(f"{sum(f.kind == k for f in findings)} {k}" for k in kinds)
        click.echo(
            f"{seen} pods audited, {len(findings)} findings" + (f" ({counts})" if counts else "")
        )
        if restarts:
            click.echo("")
            click.echo(table([("NAMESPACE", "OWNER", "RESULT", "SECONDS", "DETAIL")]
                             + [(r.namespace, r.owner, r.result, f"{r.seconds:.1f}", r.detail)
                                for r in restarts]))  # fmt: skip
    sys.exit(1 if findings else 0)


def table(rows: Sequence[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell; the last column as is."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])), row[-1]])
        for row in rows
    )


@main.group()
def certs() -> None:
    """Certificates for the webhook's TLS."""


@certs.command("generate")
@click.option("--service", required=True, help="The webhook's Service name.")
@click.option("--namespace", required=True, help="The Service's namespace.")
@click.option("--out", required=True, help="Directory for ca.crt, ca.key, tls.crt, tls.key.")
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="Another DNS name or IP address for the serving certificate (repeatable).",
)
@click.option("--days", default=365, show_default=True, type=click.IntRange(1, 3650))
@click.option("--ca-days", default=3650, show_default=True, type=click.IntRange(1, 36500))
@click.option("--new-ca", is_flag=True, help="Replace a CA already in --out instead of reusing it.")
def certs_generate(
    *,
    service: str,
    namespace: str,
    out: str,
    hosts: tuple[str, ...],
    days: int,
    ca_days: int,
    new_ca: bool,
) -> None:
    """Write a CA and a serving certificate whose SANs are the Service's in-cluster names
    (NAME, NAME.NS, NAME.NS.svc, NAME.NS.svc.cluster.local) plus every --host. A CA already
    in --out signs the new certificate, so rotating keeps clients' caBundle valid."""
    from .engine.values import DNS_LABEL  # noqa: PLC0415
    from .serve import certs as tls  # noqa: PLC0415 (cryptography only where it is needed)

    for option, value in (("--service", service), ("--namespace", namespace)):
        if not DNS_LABEL.match(value):
            fail(f"{option}: {value} is invalid: a DNS label (lowercase letters, digits, -)")
    try:
        generated = tls.generate(
            Path(out),
            service=service,
            namespace=namespace,
            hosts=hosts,
            days=days,
            ca_days=ca_days,
            new_ca=new_ca,
        )
    except (OSError, ValueError) as err:
        fail(f"{out}: cannot write certificates: {err}")
    ca = "new CA" if generated.new_ca else "existing CA"
    click.echo(
        f"{out}: wrote {tls.TLS_CERT} and {tls.TLS_KEY} (signed by the {ca} in {tls.CA_CERT})"
    )
    click.echo(f"  names: {', '.join(generated.names)}")
    click.echo(f"  serial: {generated.serial:x}, valid until {generated.not_after.isoformat()}")


if __name__ == "__main__":  # pragma: no cover
    main()
