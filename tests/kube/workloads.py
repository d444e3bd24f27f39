"""Shared by the admission, corpus and mesh tests: restricted-compliant workloads of every
kind, creating objects through the API as kubectl would, finding the pods the real
controllers made, and judging a stored pod (injected once, in which sidecar mode)."""

from __future__ import annotations

import contextlib
import copy
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client, dynamic

from tests.kube.cluster import RELEASE_NAMESPACE, Cluster
from webhook.engine import names

# The namespaces whose pods the node runs (with the release namespace); elsewhere pods are
# stored, scheduled and left Pending: the admission tests need only what was stored.
RUNNING_NAMESPACES: set[str] = set()


def runs_pod(pod: Mapping[str, Any]) -> bool:
    namespace = pod["metadata"]["namespace"]
    return namespace == RELEASE_NAMESPACE or namespace in RUNNING_NAMESPACES


BACKEND = {names.PREFIX + "backend": "app:8080"}
# The pause image is never pulled here: pods of namespaces made with run=False stay Pending.
IMAGE = "registry.k8s.io/pause:3.10"
# Pod Security `restricted`: what a compliant pod template must say (pod and container).
RESTRICTED_POD: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}
KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet", "Pod")
API_VERSIONS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "ReplicaSet": "apps/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
    "Pod": "v1",
}


def restricted_template(
    app: str, *, labels: Mapping[str, str] | None = None, restart: str | None = None
) -> dict[str, Any]:
    """A pod template the restricted level admits, with a backend so injection happens."""
    spec: dict[str, Any] = {
        "securityContext": copy.deepcopy(RESTRICTED_POD),
        "containers": [
            {
                "name": "app",
                "image": IMAGE,
                "ports": [{"containerPort": 8080}],
                "securityContext": copy.deepcopy(RESTRICTED_CONTAINER),
            }
        ],
    }
    if restart:
        spec["restartPolicy"] = restart
    return {
        "metadata": {"labels": {"app": app, **(labels or {})}, "annotations": dict(BACKEND)},
        "spec": spec,
    }


def workload(kind: str, name: str, **template_args: Any) -> dict[str, Any]:
    """One object of `kind` whose pods are `restricted_template(name)` (bare Pod: itself)."""
    batch = kind in ("Job", "CronJob")
    template = restricted_template(name, restart="Never" if batch else None, **template_args)
    selector = {"matchLabels": {"app": name}}
    meta = {"name": name}
    spec: dict[str, Any]
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {**meta, **template["metadata"]},
                "spec": template["spec"]}  # fmt: skip
    if kind in ("Deployment", "ReplicaSet"):
        spec = {"replicas": 1, "selector": selector, "template": template}
    elif kind == "StatefulSet":
        spec = {"replicas": 1, "serviceName": name, "selector": selector, "template": template}
    elif kind == "DaemonSet":
        spec = {"selector": selector, "template": template}
    elif kind == "Job":
        spec = {"backoffLimit": 0, "template": template}
    elif kind == "CronJob":
        # Never due on its own (31 February): the test makes its Job as kubectl does.
        spec = {"schedule": "0 0 31 2 *", "jobTemplate": {"spec": {"template": template}}}
    else:
        raise ValueError(kind)
    return {"apiVersion": API_VERSIONS[kind], "kind": kind, "metadata": meta, "spec": spec}


def raw(cluster: Cluster, obj: Any) -> Any:
    """A client model as the API's JSON (camelCase keys), what the tests compare."""
    assert cluster.api is not None
    return cluster.api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]


def create(
    cluster: Cluster, namespace: str, body: Mapping[str, Any], *, dry_run: bool = False
) -> dict[str, Any]:
    """Create any object through the discovered API (as `kubectl create`): the stored one
    (with dry_run, the one the server would store)."""
    api = dynamic.DynamicClient(cluster.api)  # type: ignore[no-untyped-call]
    resource = api.resources.get(api_version=body["apiVersion"], kind=body["kind"])
    extra = {"dry_run": "All"} if dry_run else {}
    if resource.namespaced:
        created = resource.create(body=dict(body), namespace=namespace, **extra)
    else:
        created = resource.create(body=dict(body), **extra)
    out: dict[str, Any] = created.to_dict()
    return out


def job_from_cronjob(cluster: Cluster, namespace: str, cronjob: str, name: str) -> None:
    """`kubectl create job --from=cronjob/NAME`: a Job of the CronJob's template, owned by it."""
    batch = client.BatchV1Api(cluster.api)
    owner = raw(cluster, batch.read_namespaced_cron_job(cronjob, namespace))
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": cronjob,
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": owner["spec"]["jobTemplate"]["spec"],
    }
    create(cluster, namespace, job)


def pods(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = raw(cluster, cluster.core.list_namespaced_pod(namespace))["items"]
    return out


def controllers(cluster: Cluster, namespace: str) -> dict[tuple[str, str], tuple[str, str]]:
    """The controller of each ReplicaSet and Job: (kind, name) -> (kind, name)."""
    apps = client.AppsV1Api(cluster.api)
    batch = client.BatchV1Api(cluster.api)
    parents: dict[tuple[str, str], tuple[str, str]] = {}
    for kind, listing in (
        ("ReplicaSet", apps.list_namespaced_replica_set(namespace)),
        ("Job", batch.list_namespaced_job(namespace)),
    ):
        for item in raw(cluster, listing)["items"]:
            for ref in item["metadata"].get("ownerReferences") or []:
                if ref.get("controller"):
                    parents[(kind, item["metadata"]["name"])] = (ref["kind"], ref["name"])
    return parents


def top(
    parents: Mapping[tuple[str, str], tuple[str, str]], obj: tuple[str, str]
) -> tuple[str, str]:
    """The workload at the top of an owner chain (ReplicaSet -> Deployment, Job -> CronJob)."""
    for _ in range(4):
        if obj not in parents:
            break
        obj = parents[obj]
    return obj


def top_owners(cluster: Cluster, namespace: str) -> dict[str, tuple[str, str]]:
    """Each pod's workload (kind, name), following the owner references the controllers
    set; a bare pod owns itself."""
    parents = controllers(cluster, namespace)
    out = {}
    for pod in pods(cluster, namespace):
        meta = pod["metadata"]
        owner = ("Pod", meta["name"])
        for ref in meta.get("ownerReferences") or []:
            if ref.get("controller"):
                owner = (ref["kind"], ref["name"])
        out[meta["name"]] = top(parents, owner)
    return out


def failed_creates(cluster: Cluster, namespace: str) -> dict[tuple[str, str], str]:
    """The controllers' FailedCreate events by the object that failed to make a pod: the
    API server's refusal, as the workload's owner reads it in `kubectl describe`."""
    out: dict[tuple[str, str], str] = {}
    for event in raw(cluster, cluster.core.list_namespaced_event(namespace))["items"]:
        if event.get("reason") == "FailedCreate":
            obj = event["involvedObject"]
            out[(obj["kind"], obj["name"])] = event.get("message") or ""
    return out


@dataclass(frozen=True)
class Sidecars:
    """Where a stored pod holds our containers, by name."""

    init: tuple[str, ...]
    regular: tuple[str, ...]
    native: tuple[bool, ...]  # restartPolicy Always, per init container of ours

    @staticmethod
    def of(pod: Mapping[str, Any]) -> Sidecars:
        spec = pod["spec"]
        ours = set(names.CONTAINERS)
        init = [c for c in spec.get("initContainers") or [] if c["name"] in ours]
        regular = [c["name"] for c in spec.get("containers") or [] if c["name"] in ours]
        return Sidecars(
            init=tuple(c["name"] for c in init),
            regular=tuple(regular),
            native=tuple(c.get("restartPolicy") == "Always" for c in init),
        )


PAIR = (names.CONTAINER_HAPROXY, names.CONTAINER_VARNISH)


def injection_problem(pod: Mapping[str, Any], native: bool) -> str | None:
    """None when the stored pod has both sidecars exactly once, in the given mode, and the
    status annotation; else what is wrong (for an assertion message)."""
    meta = pod["metadata"]
    where = f"{meta.get('namespace', '-')}/{meta.get('name') or meta.get('generateName')}"
    if names.ANNOTATION_STATUS not in (meta.get("annotations") or {}):
        return f"{where}: no {names.ANNOTATION_STATUS} annotation"
    found = Sidecars.of(pod)
    if native:
        if found.init != PAIR or not all(found.native) or found.regular:
            return f"{where}: native sidecars expected, got {found}"
    elif found.regular != PAIR or found.init:
        return f"{where}: appended sidecars expected, got {found}"
    return None


def untouched_problem(pod: Mapping[str, Any]) -> str | None:
    meta = pod["metadata"]
    found = Sidecars.of(pod)
    if names.ANNOTATION_STATUS in (meta.get("annotations") or {}) or found.init or found.regular:
        return f"{meta['namespace']}/{meta['name']}: injected ({found})"
    return None


def wait_pods(
    cluster: Cluster, namespace: str, count: int, timeout: float = 60
) -> list[dict[str, Any]]:
    """The namespace's pods once at least `count` are stored (the controllers are quick, but
    asynchronous); FailedCreate events in the message when they do not come."""
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = pods(cluster, namespace)
        if len(found) >= count:
            return found
        time.sleep(0.3)
    raise AssertionError(
        f"{namespace}: {len(found)} of {count} pods stored after {timeout:.0f} s; "
        f"FailedCreate: {failed_creates(cluster, namespace)}"
    )


@contextlib.contextmanager
def chart_release(cluster: Cluster, release: str, values: Mapping[str, Any]) -> Iterator[str]:
    """Another release of the chart, in a namespace of its own named like it, whose webhook
    pods run on the node; uninstalled (and its namespace deleted) afterwards."""
    RUNNING_NAMESPACES.add(release)
    try:
        cluster.install_chart(values, release=release, namespace=release)
        yield release
    finally:
        with contextlib.suppress(Exception):
            cluster.helm(release).uninstall(release, wait="watcher", timeout=60)
        with contextlib.suppress(client.exceptions.ApiException):
            cluster.core.delete_namespace(release)
        RUNNING_NAMESPACES.discard(release)


class Namespaces:
    """Like conftest's `namespace` factory, for any cluster (the old release's too); labels
    are given in full (the injection label is the caller's choice: a revision, or none)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.made: list[str] = []

    def make(
        self,
        prefix: str,
        labels: Mapping[str, str] | None = None,
        *,
        run: bool = False,
        enforce: str | None = "restricted",
    ) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        all_labels = dict(labels or {})
        if enforce:
            all_labels["pod-security.kubernetes.io/enforce"] = enforce
        if run:
            RUNNING_NAMESPACES.add(name)
        body = {"metadata": {"name": name, "labels": all_labels}}
        create(self.cluster, "", {"apiVersion": "v1", "kind": "Namespace", **body})
        self.made.append(name)
        self.cluster.wait_service_account(name)
        return name

    def close(self) -> None:
        for name in self.made:
            with contextlib.suppress(client.exceptions.ApiException):
                self.cluster.core.delete_namespace(name)
            RUNNING_NAMESPACES.discard(name)
        self.made.clear()
