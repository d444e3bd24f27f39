"""Decide whether a pod gets the cache, and say why in a stable reason code.

Owns: the selection rules and the reason table (code -> sentence), used verbatim as metric
label, log field and `explain` output. Does not: parse option values or build anything.

Pod label vs namespace label (the pod's label wins):

    pod label \\ namespace   enabled or rev=R   neither
    enabled                 inject             inject
    disabled                label_disabled     label_disabled
    absent                  inject             not_selected

Revisions: a namespace labelled `rev=R` (and not `inject=enabled`, which means the default
revision and wins) has its pods injected by revision R only; every other pod belongs to the
default revision. An injector of another revision leaves the pod alone (other_revision).

The webhook is only called for pods the MutatingWebhookConfiguration matched, so there a pod
without the label was matched through its namespace (`namespace_labels=None`), and by the
entry of its revision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import names
from .policy import Policy

REASONS: dict[str, str] = {
    # injected
    "pod_label": "the pod is labelled {label}=enabled",
    "namespace_label": "namespace {namespace} is labelled {label}=enabled",
    "namespace_revision": "namespace {namespace} is labelled {rev}={revision}",
    # not injected, allowed
    "not_create": "only CREATE is injected; this is {operation}",
    "not_pod": "only Pods are injected; this is {kind}",
    "namespace_excluded": "namespace {namespace} is excluded (system namespace or the "
    "policy's excludeNamespaces)",
    "label_disabled": "the pod is labelled {label}=disabled",
    "other_revision": 'namespace {namespace} picks injector revision "{wanted}"; this is '
    "revision {revision}",
    "not_selected": "neither the pod template nor namespace {namespace} is labelled "
    "{label}=enabled",
    "label_on_workload_only": "the {kind} is labelled {label}=enabled but its pod template "
    "is not; only pod (template) and namespace labels select",
    "mirror_pod": "the pod is a mirror of a static pod, which the API server cannot change",
    "host_network": "the pod uses hostNetwork: the sidecars' ports would be the node's",
    "windows_pod": "the pod is for Windows nodes (spec.os.name windows): the cache daemons are "
    "Linux programs, and the API server refuses their Linux security settings in such a pod",
    "already_injected": "the pod is already injected ({status} is set)",
    "job_without_native_sidecars": "the pod belongs to a Job and the policy sets "
    "nativeSidecars: false: a regular sidecar would keep the Job from completing",
    "no_backend": "no {backend} annotation and no policy default backend for namespace {namespace}",
    "invalid_skipped": "its options are invalid and the policy sets onInvalid: skip",
    "internal_error": "the injector failed unexpectedly; the pod was let through uninjected",
    # denied
    "invalid": "its options are invalid",
}


@dataclass(frozen=True)
class Decision:
    """Inject or not, with a reason code from REASONS and the sentence for humans."""

    inject: bool
    reason: str
    message: str


def decide(inject: bool, reason: str, **context: str) -> Decision:
    """A Decision whose sentence is filled from the reason table."""
    fields = {
        "label": names.LABEL_INJECT,
        "status": names.ANNOTATION_STATUS,
        "backend": names.OPTIONS_BY_NAME["backend"].key,
        "rev": names.LABEL_REV,
        **context,
    }
    return Decision(inject, reason, REASONS[reason].format_map(_Blank(fields)))


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "?"


def is_injected(pod: Mapping[str, Any]) -> bool:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return names.ANNOTATION_STATUS in annotations


def namespace_revision(namespace_labels: Mapping[str, str] | None) -> str:
    """The revision a namespace's pods belong to: inject=enabled means the default one; a rev
    label, even empty (then no injector's), names it, as the webhook configurations do."""
    labels = namespace_labels or {}
    if labels.get(names.LABEL_INJECT) == names.LABEL_ENABLED:
        return names.DEFAULT_REVISION
    return labels.get(names.LABEL_REV, names.DEFAULT_REVISION)


def has_host_network(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("spec") or {}).get("hostNetwork"))


def is_windows_pod(pod: Mapping[str, Any]) -> bool:
    os_ = (pod.get("spec") or {}).get("os")
    return isinstance(os_, Mapping) and os_.get("name") == "windows"


def is_job_pod(pod: Mapping[str, Any], owner_kind: str | None) -> bool:
    """Owned by a Job (the webhook sees ownerReferences; the CLI passes the workload kind)."""
    if owner_kind in ("Job", "CronJob"):
        return True
    metadata = pod.get("metadata") or {}
    owners = metadata.get("ownerReferences") or []
    if any(isinstance(o, dict) and o.get("kind") == "Job" for o in owners):
        return True
    labels = metadata.get("labels") or {}
    return "batch.kubernetes.io/job-name" in labels or "job-name" in labels


def select_pod(
    pod: Mapping[str, Any],
    *,
    namespace: str,
    operation: str,
    policy: Policy,
    namespace_labels: Mapping[str, str] | None = None,
    owner_kind: str | None = None,
    revision: str = names.DEFAULT_REVISION,
) -> Decision:
    """Should this pod be injected, by this revision? Options are not looked at here."""
    if operation != "CREATE":
        return decide(False, "not_create", operation=operation)
    if namespace in policy.excluded_namespaces:
        return decide(False, "namespace_excluded", namespace=namespace)
    metadata = pod.get("metadata") or {}
    pod_label = (metadata.get("labels") or {}).get(names.LABEL_INJECT)
    if pod_label == names.LABEL_DISABLED:
        return decide(False, "label_disabled")
    if pod_label == names.LABEL_ENABLED:
        selected = decide(True, "pod_label")
    elif (
        namespace_labels is None
        or namespace_labels.get(names.LABEL_INJECT) == names.LABEL_ENABLED
        or names.LABEL_REV in namespace_labels
    ):
        if namespace_labels is not None and namespace_revision(namespace_labels) != (
            names.DEFAULT_REVISION
        ):
            selected = decide(True, "namespace_revision", namespace=namespace, revision=revision)
        else:
            selected = decide(True, "namespace_label", namespace=namespace)
    else:
        return decide(False, "not_selected", namespace=namespace)
    wanted = namespace_revision(namespace_labels)
    if namespace_labels is not None and wanted != revision:
        return decide(
            False, "other_revision", namespace=namespace, wanted=wanted, revision=revision
        )
    if "kubernetes.io/config.mirror" in (metadata.get("annotations") or {}):
        return decide(False, "mirror_pod")
    if has_host_network(pod):
        return decide(False, "host_network")
    if is_windows_pod(pod):
        return decide(False, "windows_pod")
    if is_injected(pod):
        return decide(False, "already_injected")
    if not policy.model.native_sidecars and is_job_pod(pod, owner_kind):
        return decide(False, "job_without_native_sidecars")
    return selected
