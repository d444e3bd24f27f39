"""Operating the installed release as an administrator would, for the failure and rollout
tests: scale the webhook, wait for its endpoints, upgrade the chart, and run `cache-injector
audit` as the chart's own audit ServiceAccount (a TokenRequest token, the chart's RBAC).

Each test module starts its own Cluster (these tests change the release); pods of namespaces
in `running` run on the node, the others are only stored."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client

from tests.daemons import missing
from tests.e2e.conftest import host_problem
from tests.kube.cluster import CHART, LOCAL_VALUES, RELEASE, RELEASE_NAMESPACE, Cluster, merge
from tests.kube.conftest import wait_for
from webhook.engine import names

DEPLOYMENT = RELEASE  # the chart's fullname: release "cache-injector" of chart cache-injector
SERVICE = RELEASE
AUDIT_ACCOUNT = f"{RELEASE}-audit"
CLI = Path(sys.executable).with_name("cache-injector")
# The audit ServiceAccount and its RBAC exist only with audit.enabled; a schedule that does
# not come round during a test, so the CronJob never rolls the tests' workloads by itself.
AUDIT_VALUES: dict[str, Any] = {
    "audit": {"enabled": True, "restart": True, "schedule": "0 0 1 1 *"}
}
SIDECARS = (names.CONTAINER_HAPROXY, names.CONTAINER_VARNISH)


@contextlib.contextmanager
def release_cluster(values: Mapping[str, Any], running: set[str]) -> Iterator[Cluster]:
    """A cluster of its own with the chart installed with `values` (+ AUDIT_VALUES)."""
    problem = host_problem()
    if problem:
        missing(problem)
    running.add(RELEASE_NAMESPACE)
    with Cluster(runs=lambda pod: pod["metadata"]["namespace"] in running) as cluster:
        cluster.install_chart(merge(AUDIT_VALUES, dict(values)))
        yield cluster


def upgrade(cluster: Cluster, values: Mapping[str, Any]) -> None:
    """`helm upgrade --wait` with the same base values as the install."""
    merged = merge(merge(LOCAL_VALUES, AUDIT_VALUES), dict(values))
    cluster.helm().upgrade(
        str(CHART), RELEASE, merged, namespace=RELEASE_NAMESPACE, wait="watcher", timeout=180
    )


def make_namespace(
    cluster: Cluster,
    prefix: str,
    *,
    labels: Mapping[str, str] | None = None,
    inject: bool = True,
    running: set[str] | None = None,
) -> str:
    """A new namespace (labelled for injection unless inject=False), ready for pods; added
    to `running` when given. Deleted with the cluster."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    all_labels = dict(labels or {})
    if inject:
        all_labels[names.LABEL_INJECT] = "enabled"
    if running is not None:
        running.add(name)
    cluster.core.create_namespace(cast(Any, {"metadata": {"name": name, "labels": all_labels}}))
    cluster.wait_service_account(name)
    return name


# -- the webhook's Deployment and endpoints ---------------------------------------------------
def apps(cluster: Cluster) -> client.AppsV1Api:
    return client.AppsV1Api(cluster.api)


def ready_endpoints(cluster: Cluster) -> list[str]:
    """Addresses of the webhook Service's ready endpoints, from its EndpointSlices: what the
    API server (aggregator routing) calls."""
    slices = client.DiscoveryV1Api(cluster.api).list_namespaced_endpoint_slice(
        RELEASE_NAMESPACE, label_selector=f"kubernetes.io/service-name={SERVICE}"
    )
    return [
        address
        for piece in slices.items
        for endpoint in piece.endpoints or []
        if endpoint.conditions is None or endpoint.conditions.ready is not False
        for address in endpoint.addresses
    ]


def webhook_pods(cluster: Cluster) -> list[client.V1Pod]:
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=webhook"
    return list(cluster.core.list_namespaced_pod(RELEASE_NAMESPACE, label_selector=selector).items)


def scale_webhook(cluster: Cluster, replicas: int, timeout: float = 120) -> None:
    """Scale the chart's Deployment; return once exactly `replicas` endpoints are ready and,
    at 0, every webhook pod is gone."""
    apps(cluster).patch_namespaced_deployment_scale(
        DEPLOYMENT, RELEASE_NAMESPACE, {"spec": {"replicas": replicas}}
    )
    wait_for(
        f"{replicas} ready webhook endpoints",
        lambda: (
            len(ready_endpoints(cluster)) == replicas
            and (replicas > 0 or not webhook_pods(cluster))
        ),
        timeout=timeout,
    )


# -- pods -------------------------------------------------------------------------------------
def name_of(obj: Any) -> str:
    """metadata.name of an object the API server returned (the client types it optional)."""
    return str(obj.metadata.name)


def leaving(pod: client.V1Pod) -> bool:
    """Marked for deletion (a deletionTimestamp)."""
    return pod.metadata is not None and pod.metadata.deletion_timestamp is not None


def injected(pod: client.V1Pod) -> bool:
    """Both sidecars and our status annotation: what the webhook gives a selected pod."""
    spec = pod.spec or client.V1PodSpec(containers=[])
    containers = [c.name for c in [*(spec.init_containers or []), *spec.containers]]
    annotations = (pod.metadata.annotations if pod.metadata else None) or {}
    return all(s in containers for s in SIDECARS) and names.ANNOTATION_STATUS in annotations


def app_template(app: str, *, node: bool = True) -> dict[str, Any]:
    """A pod template the policy selects (it names a backend); node=False: a nodeSelector no
    node matches, so the pod is stored and never scheduled (no work for the node)."""
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "app",
                "image": "python:3.11",
                "command": ["python3", "-m", "http.server", "8080"],
                "ports": [{"containerPort": 8080}],
            }
        ],
        "terminationGracePeriodSeconds": 2,
    }
    if not node:
        spec["nodeSelector"] = {"cache-injector.io/test-never": "true"}
    return {
        "metadata": {
            "labels": {"app": app},
            "annotations": {"cache-injector.io/backend": "app:8080"},
        },
        "spec": spec,
    }


def deployment(app: str, replicas: int, *, node: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": app},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": app_template(app, node=node),
        },
    }


# -- audit as the chart's ServiceAccount ------------------------------------------------------
def account_kubeconfig(cluster: Cluster, account: str, path: Path) -> Path:
    """A kubeconfig for `account` in the release namespace: the admin's server and CA, a
    bearer token from the TokenRequest API (what a pod of that account is given)."""
    request = cast(Any, {"spec": {"expirationSeconds": 3600}})
    answer = cluster.core.create_namespaced_service_account_token(
        account, RELEASE_NAMESPACE, request
    )
    assert answer.status is not None
    token = answer.status.token
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    admin["users"] = [{"name": account, "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = account
    path.write_text(yaml.safe_dump(admin))
    path.chmod(0o600)
    return path


def chart_policy(
    cluster: Cluster, path: Path, fullname: str = RELEASE, namespace: str = RELEASE_NAMESPACE
) -> Path:
    """The policy the webhook runs, from the chart's ConfigMap (what the CronJob mounts)."""
    data = cluster.core.read_namespaced_config_map(f"{fullname}-policy", namespace).data
    path.write_text((data or {})["policy.yaml"])
    return path


def audit_identity(cluster: Cluster, folder: Path) -> tuple[Path, Path]:
    """(kubeconfig of the chart's audit ServiceAccount, the chart's policy file): what the
    audit CronJob runs with."""
    return (
        account_kubeconfig(cluster, AUDIT_ACCOUNT, folder / "kubeconfig"),
        chart_policy(cluster, folder / "policy.yaml"),
    )


@dataclass
class Audit:
    code: int
    report: dict[str, Any]
    stderr: str

    def findings(self) -> list[tuple[str, str, str, str]]:
        """(namespace, pod, kind, reason) of every finding: what an assertion shows."""
        return [
            (f["namespace"], f["pod"], f["kind"], f["reason"])
            for f in self.report.get("findings", [])
        ]

    def kinds(self, namespace: str | None = None) -> dict[str, str]:
        """Pod name -> finding kind (in `namespace`, else all)."""
        return {
            f["pod"]: f["kind"]
            for f in self.report.get("findings", [])
            if namespace is None or f["namespace"] == namespace
        }


def run_audit(kubeconfig: Path, policy: Path, *args: str, timeout: float = 300) -> Audit:
    """`cache-injector audit -o json` in a process of its own, as the CronJob runs it."""
    done = subprocess.run(
        [str(CLI), "audit", f"--kubeconfig={kubeconfig}", f"--policy={policy}", "-o", "json",
         *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )  # fmt: skip
    report: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        report = json.loads(done.stdout)
    return Audit(done.returncode, report, done.stderr)


def pods_of(cluster: Cluster, namespace: str, app: str) -> list[client.V1Pod]:
    """The live pods of `app` (not being deleted)."""
    listing = cluster.core.list_namespaced_pod(namespace, label_selector=f"app={app}")
    return [p for p in listing.items if not leaving(p)]


def events(cluster: Cluster, namespace: str, reason: str) -> list[client.CoreV1Event]:
    listing = cluster.core.list_namespaced_event(namespace)
    return [e for e in listing.items if e.reason == reason]
