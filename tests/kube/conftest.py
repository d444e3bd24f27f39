"""The cluster suite's session: one real control plane and node for every test in
tests/kube, with the chart installed by Helm; and the helpers the tests share."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from kubernetes import client

from tests.daemons import missing
from tests.e2e.conftest import host_problem
from tests.kube.cluster import Cluster
from tests.kube.workloads import RUNNING_NAMESPACES, Namespaces, runs_pod


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
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
__all__ = ["RUNNING_NAMESPACES", "Kubectl", "NamespaceFactory", "runs_pod", "wait_for"]


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[NamespaceFactory]:
    """make(prefix, inject=True, labels=..., run=False, enforce="restricted") -> a new
    namespace's name, ready for pods (its default ServiceAccount exists); deleted after the
    test."""
    spaces = Namespaces(cluster)

    def make(
        prefix: str = "t",
        *,
        inject: bool = True,
        labels: Mapping[str, str] | None = None,
        run: bool = False,
        enforce: str | None = "restricted",
    ) -> str:
        given = {"cache-injector.io/inject": "enabled"} if inject else {}
        return spaces.make(prefix, {**(labels or {}), **given}, run=run, enforce=enforce)

    yield make
    spaces.close()


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
