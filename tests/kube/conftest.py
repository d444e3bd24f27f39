"""The cluster suite's session: one real control plane and node for every test in
tests/kube, with the chart installed by Helm; and the helpers the tests share."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import pytest
from kubernetes import client

from tests.daemons import missing
from tests.e2e.conftest import host_problem
from tests.kube.cluster import RELEASE_NAMESPACE, Cluster

# Pods in namespaces with this label run on the node (their sidecars for real); the others
# are stored, scheduled and left Pending (the admission tests need only what was stored).
RUN_LABEL = "cluster-suite.cache-injector.io/run"


def runs_pod(pod: Mapping[str, Any]) -> bool:
    namespace = pod["metadata"]["namespace"]
    return namespace == RELEASE_NAMESPACE or namespace in RUNNING_NAMESPACES


RUNNING_NAMESPACES: set[str] = set()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kube/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    problem = host_problem()
    if problem:
        missing(problem)
    with Cluster(runs=runs_pod) as running:
        running.install_chart()
        yield running


class Kubectl:
    """The release's own kubectl, with the cluster's kubeconfig."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.cluster.binaries["kubectl"], f"--kubeconfig={self.cluster.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)


@pytest.fixture(scope="session")
def kubectl(cluster: Cluster) -> Kubectl:
    return Kubectl(cluster)


NamespaceFactory = Callable[..., str]


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[NamespaceFactory]:
    """make(labels=..., run=False, enforce="restricted") -> a new namespace's name, ready for
    pods (its default ServiceAccount exists); deleted after the test."""
    made: list[str] = []

    def make(
        prefix: str = "t",
        *,
        inject: bool = True,
        labels: Mapping[str, str] | None = None,
        run: bool = False,
        enforce: str | None = "restricted",
    ) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        all_labels = dict(labels or {})
        if inject:
            all_labels["cache-injector.io/inject"] = "enabled"
        if enforce:
            all_labels["pod-security.kubernetes.io/enforce"] = enforce
        if run:
            RUNNING_NAMESPACES.add(name)
        body = {"metadata": {"name": name, "labels": all_labels}}
        cluster.core.create_namespace(cast(Any, body))
        made.append(name)
        cluster.wait_service_account(name)
        return name

    yield make
    for name in made:
        with contextlib.suppress(client.exceptions.ApiException):
            cluster.core.delete_namespace(name)
        RUNNING_NAMESPACES.discard(name)


def wait_for(
    what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 0.2
) -> Any:
    """check()'s first truthy result within timeout, else AssertionError naming what."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(client.exceptions.ApiException):
            last = check()
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def is_root() -> bool:
    return os.geteuid() == 0
