"""Smoke: a bare Pod in a labelled namespace enforcing Pod Security `restricted` is admitted
with both sidecars, and runs on the node."""

from __future__ import annotations

from typing import Any, cast

from tests.kube.cluster import Cluster
from tests.kube.conftest import NamespaceFactory, wait_for
from tests.kube.node import plain

RESTRICTED_CONTAINER: dict[str, Any] = {
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
}


def test_bare_pod_restricted(cluster: Cluster, namespace: NamespaceFactory) -> None:
    ns = namespace("smoke", run=True)
    pod = {
        "metadata": {"name": "web", "annotations": {"cache-injector.io/backend": "app:8080"}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "python:3.11",
                    "command": ["python3", "-m", "http.server", "8080"],
                    **RESTRICTED_CONTAINER,
                }
            ]
        },
    }
    cluster.core.create_namespaced_pod(ns, cast(Any, pod))

    def stored() -> dict[str, Any]:
        return plain(cluster.api, cluster.core.read_namespaced_pod("web", ns))

    names = [c["name"] for c in stored()["spec"].get("initContainers") or []]
    assert names == ["cache-haproxy", "cache-varnish"]
    ready = wait_for(
        "pod ready",
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in stored()["status"].get("conditions") or []
        ),
        timeout=60,
    )
    assert ready
