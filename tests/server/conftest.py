"""Fixtures for the server tests: a PKI like `certs generate` makes, a test policy, and a
real `cache-injector serve` process per test module (stopped by PID when the module ends)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from webhook.serve import certs

from .support import NAMESPACE, SERVICE, Client, Pki, Server, serve_pki

# A default backend for every namespace, so corpus workloads without our annotation are
# injected too; `shop` may also use Services in `catalog`.
TEST_POLICY = """\
defaults:
  backend: app:8080
namespaces:
  shop:
    allowedBackendNamespaces: [catalog]
"""


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """CA + serving certificate with only the in-cluster names: clients must verify the
    Service's DNS name, not 127.0.0.1."""
    directory = tmp_path_factory.mktemp("pki")
    certs.generate(directory, service=SERVICE, namespace=NAMESPACE)
    return Pki(directory)


@pytest.fixture(scope="session")
def test_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(TEST_POLICY)
    return path


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, test_policy: Path
) -> Iterator[Server]:
    running = serve_pki(tmp_path_factory.mktemp("server"), pki, policy=test_policy)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Client:
    return server.client()
