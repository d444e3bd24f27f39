"""The one engine: a pod (and where it is created) + the policy -> an Outcome.

Owns: the order of the steps — select, resolve options, check, render, build, patch — and
what a failure at each step means (skip, warn or deny). Both the webhook and the CLI call
`inject_pod`, so `explain` and the webhook always agree. Pure: no I/O, clock or metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from . import backend_tls, builder, names
from .errors import CacheInjectorError, InvalidAnnotation, InvalidOptions
from .options import Options, resolve_options, unknown_annotation_warnings
from .patch import Op, build_patch
from .policy import Policy
from .render import RenderedConfigs, Target, Templates, render_configs
from .selection import Decision, decide, select_pod

# Time a sidecar may take to exit after SIGTERM (measured: < 2 s with our settings).
SHUTDOWN_BUDGET_SECONDS = 5
DEFAULT_TERMINATION_GRACE_SECONDS = 30


@dataclass(frozen=True)
class Outcome:
    """The answer for one pod: allowed or denied, why, and the patch when injected.

    The patch's values share nested objects with the engine's memo: serialize them, or copy
    the patch before applying it to a document that will be changed afterwards.
    """

    allowed: bool
    decision: Decision
    patch: list[Op] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    options: Options | None = None
    configs: RenderedConfigs | None = None
    error: CacheInjectorError | None = None

    @property
    def injected(self) -> bool:
        return self.allowed and bool(self.patch)


def _annotations(pod: Mapping[str, Any]) -> dict[str, str]:
    raw = (pod.get("metadata") or {}).get("annotations") or {}
    return raw if isinstance(raw, dict) else {}


def _refuse(error: CacheInjectorError, policy: Policy, warnings: list[str]) -> Outcome:
    """onInvalid: deny (the default) refuses the pod; skip lets it through uninjected."""
    if policy.model.on_invalid == "skip":
        return Outcome(
            allowed=True,
            decision=decide(False, "invalid_skipped"),
            warnings=[*warnings, f"not injected: {error}"],
            error=error,
        )
    return Outcome(allowed=False, decision=decide(False, "invalid"), warnings=warnings, error=error)


def _label_warnings(pod: Mapping[str, Any]) -> list[str]:
    label = ((pod.get("metadata") or {}).get("labels") or {}).get(names.LABEL_INJECT)
    if label is None or label in (names.LABEL_ENABLED, names.LABEL_DISABLED):
        return []
    return [f"label {names.LABEL_INJECT}: {label} is not enabled or disabled and is ignored"]


def _grace_seconds(pod: Mapping[str, Any]) -> int:
    """terminationGracePeriodSeconds, or the API server's default when the pod sets none."""
    grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
    if not isinstance(grace, int) or isinstance(grace, bool):
        return DEFAULT_TERMINATION_GRACE_SECONDS
    return grace


def _grace_warning(pod: Mapping[str, Any], options: Options) -> list[str]:
    grace = _grace_seconds(pod)
    needed = options.drain_seconds + SHUTDOWN_BUDGET_SECONDS
    if grace >= needed:
        return []
    return [
        f"terminationGracePeriodSeconds {grace} is shorter than {names.CONTAINER_VARNISH}'s "
        f"drain ({options.drain_seconds}s, {names.OPTIONS_BY_NAME['drain_seconds'].key}) plus "
        f"{SHUTDOWN_BUDGET_SECONDS}s to shut down: the cache may be killed while serving"
    ]


def _within_grace(pod: Mapping[str, Any], options: Options, policy: Policy) -> Options:
    """The options the sidecars are built with. A native sidecar's preStop is the kubelet's
    sleep action, and the API server rejects a pod whose sleep outlasts its
    terminationGracePeriodSeconds (defaulted to 30 before admission): the injection would make
    a valid pod invalid, which no failurePolicy lets through. The sleep is cut to the grace
    period (0: none); _grace_warning says so."""
    grace = _grace_seconds(pod)
    if not policy.model.native_sidecars or options.drain_seconds <= grace:
        return options
    return replace(options, drain_seconds=max(grace, 0))


def _scrape_annotations(pod: Mapping[str, Any], options: Options, policy: Policy) -> dict[str, str]:
    """prometheus.io/* (policy prometheusAnnotations), only on a pod that sets none itself:
    one target per pod, the Varnish exporter when it runs (the hit ratio), else HAProxy."""
    if not policy.model.prometheus_annotations:
        return {}
    existing = _annotations(pod)
    keys = (
        names.ANNOTATION_PROMETHEUS_SCRAPE,
        names.ANNOTATION_PROMETHEUS_PORT,
        names.ANNOTATION_PROMETHEUS_PATH,
    )
    if any(key in existing for key in keys):
        return {}
    port = names.EXPORTER_PORT if options.metrics else names.HAPROXY_METRICS_PORT
    return dict(zip(keys, ("true", str(port), names.METRICS_PATH), strict=True))


def inject_pod(
    pod: Mapping[str, Any],
    *,
    namespace: str,
    operation: str,
    policy: Policy,
    templates: Templates,
    namespace_labels: Mapping[str, str] | None = None,
    owner_kind: str | None = None,
    revision: str = names.DEFAULT_REVISION,
) -> Outcome:
    """Decide, validate and build the patch for one pod (or pod template), as the injector
    of `revision` (recorded in the status annotation)."""
    decision = select_pod(
        pod,
        namespace=namespace,
        operation=operation,
        policy=policy,
        namespace_labels=namespace_labels,
        owner_kind=owner_kind,
        revision=revision,
    )
    if not decision.inject:
        return Outcome(allowed=True, decision=decision)
    annotations = _annotations(pod)
    warnings = _label_warnings(pod) + unknown_annotation_warnings(annotations)
    spec: Mapping[str, Any] = pod.get("spec") or {}
    try:
        options = resolve_options(annotations, namespace=namespace, policy=policy)
    except InvalidOptions as err:
        listen_port = err.parsed.get("listen_port")
        metrics = err.parsed.get("metrics") is True
        clashes = (
            builder.check_ports(spec, listen_port, metrics=metrics)
            if isinstance(listen_port, int)
            else []
        )
        return _refuse(InvalidOptions([*err.problems, *clashes]), policy, warnings)
    if options.backend is None:
        backend_key = names.OPTIONS_BY_NAME["backend"].key
        if policy.model.on_missing_backend == "deny":
            error = InvalidAnnotation(
                backend_key,
                "(unset)",
                "SERVICE[.NAMESPACE]:PORT; set the annotation or a policy default for "
                f"namespace {namespace} (the policy sets onMissingBackend: deny)",
            )
            return Outcome(
                allowed=False, decision=decide(False, "invalid"), warnings=warnings, error=error
            )
        return Outcome(
            allowed=True,
            decision=decide(False, "no_backend", namespace=namespace),
            warnings=warnings,
            options=options,
        )

    problems = builder.check_ports(spec, options.listen_port, metrics=options.metrics)
    containers, volumes = builder.build_sidecars(_within_grace(pod, options, policy), policy)
    declared = builder.user_declared(spec)
    merged: list[dict[str, Any]] = []
    for container in containers:
        user = declared.get(container["name"])
        if user is None:
            merged.append(container)
            continue
        try:
            merged.append(builder.merge_user_container(container, user[2], policy))
        except InvalidAnnotation as err:
            problems.append(err)
    if problems:
        return _refuse(InvalidOptions(problems), policy, warnings)
    if names.CONTAINER_VARNISH in declared:  # ours always meets the memory-limit rule
        varnish = next(c for c in merged if c["name"] == names.CONTAINER_VARNISH)
        memory_warning = builder.memory_limit_warning(varnish, options, policy)
        warnings += [memory_warning] if memory_warning else []
    warnings += _grace_warning(pod, options)
    warnings += backend_tls.warnings(options)

    target = Target(
        namespace,
        policy.model.cluster_domain,
        policy.model.sticky_session_secret,
        policy.varnish_transit_buffer,
    )
    configs = render_configs(options, target, templates)
    written = {names.ANNOTATION_HAPROXY_CFG: configs.haproxy_cfg}
    if configs.vcl is not None:
        written[names.ANNOTATION_VCL] = configs.vcl
    if configs.varnish_cli is not None:
        written[names.ANNOTATION_VARNISH_CLI] = configs.varnish_cli
    written.update(_scrape_annotations(pod, options, policy))
    patch = build_patch(
        pod,
        containers=merged,
        volumes=volumes,
        annotations=written,
        # Only the containers we build replace the user's: a cache-access-log declared while
        # access-log is off is the user's own and stays.
        replaced={
            name: (group, index)
            for name, (group, index, _) in declared.items()
            if any(c["name"] == name for c in containers)
        },
        native=policy.model.native_sidecars,
        config_hash=configs.digest,
        revision=revision,
        pull_secrets=policy.model.images.pull_secrets,
    )
    return Outcome(
        allowed=True,
        decision=decision,
        patch=patch,
        warnings=warnings,
        options=options,
        configs=configs,
    )
