"""The `cache-injector` command: inject, explain, policy check, serve, certs generate.

Owns: reading files and stdin, printing, exit codes (0 ok, 1 explain found denials, 2 bad
input or denied injection). Calls inject.py exactly as the webhook does, so what `explain`
says is what the webhook does.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click
import jsonpatch

from . import __version__
from .engine import names
from .engine.errors import CacheInjectorError, InvalidOptions, InvalidPolicy
from .engine.inject import Outcome, inject_pod
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


def evaluate(
    documents: list[Document],
    *,
    policy: Policy,
    templates: Templates,
    namespace: str | None,
    namespace_labels: Mapping[str, str],
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
        yield Result(workload, where, outcome)


def error_lines(error: CacheInjectorError) -> list[str]:
    if isinstance(error, InvalidOptions):
        return [str(problem) for problem in error.problems]
    return [str(error)]


def prefix(path: str, workload: Workload) -> str:
    return f"{path}: doc {workload.document.number} ({workload.title})"


def shared_options(command: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "-f", "--filename", "path", required=True, help="Manifest file, or - for stdin."
            ),
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
        ]
    ):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cache-injector")
def main() -> None:
    """Give Kubernetes pods a Varnish cache and an HAProxy balancer as sidecars."""


@main.command()
@shared_options
def inject(
    path: str, policy_path: str | None, namespace: str | None, namespace_labels: str | None
) -> None:
    """Write the manifests with the cache injected into every selected pod template."""
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
    errors: list[str] = []
    for result in evaluate(
        documents, policy=policy, templates=templates, namespace=namespace, namespace_labels=labels
    ):
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
        "warnings": outcome.warnings,
        "errors": error_lines(outcome.error) if outcome.error else [],
        "options": {},
    }
    if outcome.options is not None:
        for spec in names.OPTIONS:
            record["options"][spec.suffix] = {
                "value": outcome.options.texts[spec.name],
                "source": outcome.options.sources[spec.name],
            }
        # A percentage means nothing without the cache it is of: show the bytes too.
        limit = outcome.options.max_object_size.bytes_for(outcome.options.cache_size)
        record["options"]["max-object-size"]["bytes"] = limit
        if outcome.options.max_object_size.percent is not None:
            record["options"]["max-object-size"]["value"] += (
                f" of cache-size {outcome.options.texts['cache_size']} = {limit} bytes"
            )
    return record


def explain_line(record: Mapping[str, Any]) -> str:
    head = (
        f"{record['file']}: doc {record['doc']} ({record['workload']}, namespace "
        f"{record['namespace']}): {record['result']} [{record['reason']}] {record['message']}"
    )
    if record["errors"]:
        head += ": " + "; ".join(record["errors"])
    if record["options"]:
        head += " | " + ", ".join(
            f"{key}={item['value'] if item['value'] is not None else 'unset'} ({item['source']})"
            for key, item in record["options"].items()
        )
    return head


@main.command()
@shared_options
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def explain(
    path: str,
    policy_path: str | None,
    namespace: str | None,
    namespace_labels: str | None,
    output: str,
) -> None:
    """Say, per workload, whether it would be injected, why, and each option's value and source.

    Exits 1 when a workload would be denied, so CI can run it on manifests.
    """
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
    records = [
        explain_record(path, result)
        for result in evaluate(
            documents,
            policy=policy,
            templates=templates,
            namespace=namespace,
            namespace_labels=labels,
        )
    ]
    if output == "json":
        click.echo(json.dumps(records, indent=2))
    else:
        for record in records:
            click.echo(explain_line(record))
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
            f"  images: {model.images.haproxy}, {model.images.varnish} ({pinned})",
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
@click.option(
    "--watch-interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.05, 60),
    help="Seconds between looks at the certificate and policy files.",
)
@click.option(
    "--shutdown-timeout",
    default=20,
    show_default=True,
    type=click.IntRange(1, 600),
    help="Seconds in-flight reviews get to finish after SIGTERM.",
)
@click.option(
    "--body-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1, 60),
    help="Seconds a client gets to send a request body before a 408.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
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
    body_timeout: float,
    log_level: str,
) -> None:
    """Serve the admission webhook over HTTPS (TLS 1.2+): POST /mutate, GET /healthz,
    /readyz, /metrics. Certificate and policy files are re-read when they change."""
    # Imported here: uvicorn, FastAPI and prometheus would add ~0.25 s to every `inject`.
    from .serve import runner  # noqa: PLC0415
    from .serve.server import Settings  # noqa: PLC0415

    settings = Settings(
        tls_cert=Path(tls_cert),
        tls_key=Path(tls_key),
        policy=Path(policy_path) if policy_path else None,
        watch_interval=watch_interval,
        body_timeout=body_timeout,
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
        )
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
