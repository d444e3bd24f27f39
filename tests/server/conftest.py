"""Fixtures for the server tests: a PKI like `certs generate` makes, a test policy, and a
real `cache-injector serve` process per test module (stopped by PID when the module ends)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from webhook.serve import certs

from .support import NAMESPACE, SERVICE, Client, Server, start_server

# A default backend for every namespace, so corpus workloads without our annotation are
# injected too; `shop` may also use Services in `catalog`.
TEST_POLICY = """\
defaults:
  backend: app:8080
namespaces:
  shop:
    allowedBackendNamespaces: [catalog]
"""


@dataclass(frozen=True)
class Pki:
    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / certs.CA_CERT

    @property
    def cert(self) -> Path:
        return self.directory / certs.TLS_CERT

    @property
    def key(self) -> Path:
        return self.directory / certs.TLS_KEY


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
    running = start_server(
        tmp_path_factory.mktemp("server"),
        cert=pki.cert,
        key=pki.key,
        ca=pki.ca,
        policy=test_policy,
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Client:
    return server.client()
