"""`cache-injector audit`: which pods need attention, and rolling their owners.

Owns: the findings, per pod, grouped by namespace and owner -
- missing: selected for injection but without a cache (created while the webhook was down
  and `failurePolicy: Ignore` let it through, or before its namespace was labelled);
- stale: injected, but the current injector and policy would inject something else: the
  injector version, the config digest (policy or annotations changed), or a sidecar image;
- unselected: injected, but no longer selected (a restart takes the cache away);
- unreadable: a status annotation that is not ours to read;
- revisions: a pod injected by another revision than its namespace now picks (stale: a
  restart moves it), by a revision whose webhook configuration is gone (orphaned), or
  selected for a revision that does not exist (missing). Pods of another existing revision
  are that revision's audit's business.
The expected injection is computed by the same engine the webhook runs, on the pod with our
injection taken out again (engine.patch.uninject), so audit and webhook never disagree.
And `--restart`: what `kubectl rollout restart` does (the pod template's restartedAt
annotation), a few owners at a time, waiting for each rollout.
"""

from __future__ import annotations

import copy
import datetime
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from ..engine import names
from ..engine.inject import inject_pod
from ..engine.patch import read_status, uninject
from ..engine.policy import Policy
from ..engine.render import Templates
from ..engine.selection import namespace_revision, select_pod
from . import kube

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
RESTARTABLE = ("Deployment", "StatefulSet", "DaemonSet")


@dataclass(frozen=True)
class Finding:
    namespace: str
    owner: str  # Kind/name of the controller to restart, or Pod/name
    pod: str
    kind: str  # missing, stale, unselected, unreadable, orphaned
    reason: str
    revision: str = ""  # the pod's injector revision (recorded), or the one it should get


def owner_of(pod: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, name) of what a restart acts on: a ReplicaSet's Deployment is found by the
    pod-template-hash label (no extra API call), else the controller, else the pod."""
    metadata = pod.get("metadata") or {}
    for ref in metadata.get("ownerReferences") or []:
        if not ref.get("controller"):
            continue
        kind, name = str(ref.get("kind")), str(ref.get("name"))
        template_hash = (metadata.get("labels") or {}).get("pod-template-hash")
        if kind == "ReplicaSet" and template_hash and name.endswith("-" + template_hash):
            return "Deployment", name[: -len(template_hash) - 1]
        return kind, name
    return "Pod", str(metadata.get("name"))


def _expected_status(outcome_patch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    for op in outcome_patch:
        if op["path"] == "/metadata/annotations/" + names.ANNOTATION_STATUS.replace("/", "~1"):
            return dict(
                read_status({"metadata": {"annotations": {names.ANNOTATION_STATUS: op["value"]}}})
                or {}
            )
        if op["path"] == "/metadata/annotations":
            return dict(read_status({"metadata": {"annotations": op["value"]}}) or {})
    return {}


def _images(pod: Mapping[str, Any]) -> dict[str, str]:
    spec = pod.get("spec") or {}
    return {
        str(c.get("name")): str(c.get("image"))
        for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
        if isinstance(c, dict) and c.get("name") in names.CONTAINERS
    }


def _images_in_patch(patch: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for op in patch:
        values = op.get("value")
        for value in values if isinstance(values, list) else [values]:
            if (
                isinstance(value, dict)
                and value.get("name") in names.CONTAINERS
                and "image" in value
            ):
                found[str(value["name"])] = str(value["image"])
    return found


def audit_pod(
    pod: Mapping[str, Any],
    *,
    namespace_labels: Mapping[str, str],
    policy: Policy,
    templates: Templates,
    revision: str = names.DEFAULT_REVISION,
    revisions: frozenset[str] | None = None,
) -> Finding | None:
    """The finding for one pod, or None when it is as the injector of `revision` would make
    it now. `revisions`: those installed (None: unknown, not checked)."""
    metadata = pod.get("metadata") or {}
    namespace = str(metadata.get("namespace") or "default")
    kind, name = owner_of(pod)
    where = (namespace, f"{kind}/{name}", str(metadata.get("name")))
    try:
        status = read_status(pod)
    except ValueError as err:
        return Finding(*where, "unreadable", str(err))
    wanted = namespace_revision(namespace_labels)
    pristine = copy.deepcopy(dict(pod))
    pristine.pop("status", None)
    if status is not None:
        uninject(pristine)

    def selected_for(rev: str) -> bool:
        return select_pod(
            pristine,
            namespace=namespace,
            operation="CREATE",
            policy=policy,
            namespace_labels=namespace_labels,
            owner_kind=kind,
            revision=rev,
        ).inject

    have = str((status or {}).get("revision") or names.DEFAULT_REVISION)
    if status is not None:
        if revisions is not None and have not in revisions:
            reason = f"injected by revision {have}, which no longer exists: restart"
            return Finding(*where, "orphaned", reason, have)
        if have != wanted and selected_for(wanted):
            reason = f"restart needed: revision changed ({have} -> {wanted})"
            return Finding(*where, "stale", reason, have)
    if wanted != revision:
        missing = revisions is not None and wanted not in revisions
        if status is None and missing and selected_for(wanted):
            reason = f"namespace {namespace} picks revision {wanted}, which is not installed"
            return Finding(*where, "missing", reason, wanted)
        if status is None or have == wanted:
            return None  # another revision's pod: its own audit looks at it
    outcome = inject_pod(
        pristine,
        namespace=namespace,
        operation="CREATE",
        policy=policy,
        templates=templates,
        namespace_labels=namespace_labels,
        owner_kind=kind,
        revision=revision,
    )
    if status is None:
        if outcome.injected:
            return Finding(
                *where,
                "missing",
                f"selected ({outcome.decision.message}) but has no cache: created while the "
                "webhook was unreachable or before the label; restart to inject",
                revision,
            )
        return None
    if not outcome.injected:
        return Finding(
            *where,
            "unselected",
            f"injected, but would not be now: {outcome.decision.message}; a restart "
            "removes its cache",
            have,
        )
    expected = _expected_status(outcome.patch)
    reasons = []
    if status.get("version") != expected.get("version"):
        reasons.append(f"injector upgraded ({status.get('version')} -> {expected.get('version')})")
    if status.get("configHash") != expected.get("configHash"):
        reasons.append(
            f"config changed (digest {status.get('configHash')} -> {expected.get('configHash')}: "
            "policy or the pod's annotations)"
        )
    running, want = _images(pod), _images_in_patch(outcome.patch)
    for container in sorted(want):
        if running.get(container) != want[container]:
            reasons.append(
                f"image changed ({container}: {running.get(container)} -> {want[container]})"
            )
    if reasons:
        return Finding(*where, "stale", "restart needed: " + "; ".join(reasons), have)
    return None


def audit(
    pods: Iterable[Mapping[str, Any]],
    *,
    namespaces: Mapping[str, Mapping[str, str]],
    policy: Policy,
    templates: Templates,
    revision: str = names.DEFAULT_REVISION,
    revisions: frozenset[str] | None = None,
) -> tuple[list[Finding], int]:
    """Findings over every running or pending pod, and how many pods were looked at."""
    findings, seen = [], 0
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        seen += 1
        namespace = str((pod.get("metadata") or {}).get("namespace") or "default")
        finding = audit_pod(
            pod,
            namespace_labels=namespaces.get(namespace, {}),
            policy=policy,
            templates=templates,
            revision=revision,
            revisions=revisions,
        )
        if finding is not None:
            findings.append(finding)
    return findings, seen


def namespace_labels(cluster: kube.Cluster, only: str | None) -> dict[str, dict[str, str]]:
    """Labels by namespace: one get with -n, else every namespace (get / list namespaces)."""
    items = [kube.read(cluster, "Namespace", "", only)] if only else kube.list_namespaces(cluster)
    return {
        str(item["metadata"]["name"]): dict(item["metadata"].get("labels") or {}) for item in items
    }


def installed_revisions(cluster: kube.Cluster) -> frozenset[str]:
    """The revisions whose webhook configuration exists (the chart labels each one)."""
    return frozenset(
        str(mwc["metadata"]["labels"][names.LABEL_REV])
        for mwc in kube.list_webhook_configurations(cluster, names.LABEL_REV)
    )


# -- restarts ----------------------------------------------------------------------------------
@dataclass
class Restart:
    namespace: str
    owner: str
    result: str  # restarted, timeout, failed, skipped
    detail: str
    seconds: float = 0.0


def _rolled_out(obj: Mapping[str, Any]) -> bool:
    """kubectl rollout status: the new template observed, every replica updated and ready."""
    metadata, spec, status = (
        obj.get("metadata") or {},
        obj.get("spec") or {},
        obj.get("status") or {},
    )
    if status.get("observedGeneration", 0) < metadata.get("generation", 0):
        return False
    if obj.get("kind") == "DaemonSet":
        want = status.get("desiredNumberScheduled", 0)
        return bool(
            status.get("updatedNumberScheduled", 0) >= want
            and status.get("numberAvailable", 0) >= want
        )
    want = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    ready = status.get("availableReplicas", status.get("readyReplicas", 0))
    return bool(updated >= want and ready >= want and status.get("replicas", want) <= want)


def restart_owner(
    cluster: kube.Cluster,
    namespace: str,
    owner: str,
    *,
    timeout: float,
    poll: float = 1.0,
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
) -> Restart:
    """Patch the pod template's restartedAt (as kubectl rollout restart) and wait for it."""
    kind, _, name = owner.partition("/")
    if kind not in RESTARTABLE:
        return Restart(namespace, owner, "skipped", f"a {kind} cannot be rolled; recreate it")
    calls = {
        "Deployment": (
            cluster.apps.patch_namespaced_deployment,
            cluster.apps.read_namespaced_deployment,
        ),
        "StatefulSet": (
            cluster.apps.patch_namespaced_stateful_set,
            cluster.apps.read_namespaced_stateful_set,
        ),
        "DaemonSet": (
            cluster.apps.patch_namespaced_daemon_set,
            cluster.apps.read_namespaced_daemon_set,
        ),
    }
    patch, read = calls[kind]
    body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now().isoformat()}}}}}
    began = time.monotonic()
    try:
        patch(name, namespace, body, _content_type="application/strategic-merge-patch+json",
              _preload_content=False)  # fmt: skip
    except ApiException as err:
        return Restart(namespace, owner, "failed", kube.describe(err, f"patch {owner}"))
    deadline = began + timeout
    while time.monotonic() < deadline:
        try:
            obj = kube.as_dict(read(name, namespace, _preload_content=False))
        except ApiException as err:
            return Restart(namespace, owner, "failed", kube.describe(err, f"get {owner}"))
        if _rolled_out(obj):
            seconds = round(time.monotonic() - began, 2)
            return Restart(namespace, owner, "restarted", "rolled out", seconds)
        time.sleep(poll)
    return Restart(namespace, owner, "timeout", f"not rolled out within {timeout:g} s",
                   round(time.monotonic() - began, 2))  # fmt: skip


def restart_owners(
    cluster: kube.Cluster,
    findings: Sequence[Finding],
    *,
    at_once: int,
    timeout: float,
    poll: float = 1.0,
) -> list[Restart]:
    """Each owner with a missing or stale pod, `at_once` at a time: every restart empties
    caches, so a batch's rollouts finish before the next batch starts."""
    owners: list[tuple[str, str]] = []
    for finding in findings:
        key = (finding.namespace, finding.owner)
        if finding.kind in ("missing", "stale", "unselected", "orphaned") and key not in owners:
            owners.append(key)
    results: list[Restart] = []
    for start in range(0, len(owners), at_once):
        batch = owners[start : start + at_once]
        with ThreadPoolExecutor(max_workers=len(batch)) as pool:
            futures = [
                pool.submit(restart_owner, cluster, ns, owner, timeout=timeout, poll=poll)
                for ns, owner in batch
            ]
            results += [f.result() for f in futures]
        if any(r.result in ("failed", "timeout") for r in results[-len(batch) :]):
            break  # stop rolling while something is wrong
    return results


def as_json(items: Iterable[Finding | Restart]) -> list[dict[str, Any]]:
    return [asdict(item) for item in items]
