"""Hot reload against a running server: certificates rotated under a client loop, broken
pairs rejected, the policy re-read (and a broken one refused), in one worker and in two."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from cryptography import x509

from webhook.serve import certs

from .reviews import decoded_patch, make_pod, pod_review
from .support import (
    CLI,
    NAMESPACE,
    SERVICE,
    SERVICE_DNS,
    Pki,
    Server,
    client_context,
    serve_pki,
    start_server,
    wait_for,
)
from .volume import AtomicVolume

RELOAD_DEADLINE = 30.0
POLICY_A = "defaults:\n  backend: app:8080\n"
POLICY_B = "defaults:\n  backend: other:9090\n"


# --- a client that makes a new connection (so a new handshake) for every request ---------


@dataclass
class Exchange:
    status: int
    serial: int
    body: bytes


def exchange(
    port: int, context: ssl.SSLContext, method: str, path: str, body: bytes = b""
) -> Exchange:
    """One HTTP/1.1 request on a new verified TLS connection (Connection: close)."""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {SERVICE_DNS}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=SERVICE_DNS) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(head + body)
        received = b""
        while chunk := tls.recv(65536):
            received += chunk
    header, _, content = received.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    return Exchange(status, x509.load_der_x509_certificate(der).serial_number, content)


def review_body() -> bytes:
    return json.dumps(
        pod_review(make_pod(annotations={"cache-injector.io/backend": "a:80"}))
    ).encode()


@dataclass
class ClientLoop:
    """Reviews on new connections in a thread, bounded in count and time."""

    port: int
    context: ssl.SSLContext
    serials: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def run(self) -> None:
        end = time.monotonic() + 120
        for _ in range(5000):
            if self.stop.is_set() or time.monotonic() > end:
                return
            try:
                result = exchange(self.port, self.context, "POST", "/mutate", review_body())
                answer = json.loads(result.body)
                if result.status != 200 or answer["response"]["allowed"] is not True:
                    self.failures.append(f"{result.status}: {result.body[:200]!r}")
                self.serials.append(result.serial)
            except Exception as err:
                self.failures.append(repr(err))

    def __enter__(self) -> ClientLoop:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(30)

    def seen(self, serial: int, times: int = 1) -> bool:
        return self.serials.count(serial) >= times


# --- certificates -------------------------------------------------------------------------


class Issuer:
    """One CA; a new serving pair from it on each issue() (as `certs generate` rotates)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def issue(self) -> tuple[bytes, bytes, int]:
        made = certs.generate(self.directory, service=SERVICE, namespace=NAMESPACE)
        return (
            (self.directory / "tls.crt").read_bytes(),
            (self.directory / "tls.key").read_bytes(),
            made.serial,
        )


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path / "ca")


def metric(server: Server, name: str, **labels: str) -> float:
    client = server.client()
    try:
        return client.metric(name, **labels)
    finally:
        client.close()


def wait_for_rejections(server: Server, kind: str, count: int, what: str) -> None:
    """Until the server has counted `count` rejected reloads of its `kind` file (policy or
    certificate)."""
    name = f"cache_injector_{kind}_reloads_total"
    wait_for(
        lambda: metric(server, name, result="error") >= count, deadline=RELOAD_DEADLINE, what=what
    )


@pytest.fixture
def secret_server(tmp_path: Path, issuer: Issuer) -> Iterator[tuple[Server, AtomicVolume, int]]:
    """A server whose pair comes from a Secret-like volume; its first serial."""
    cert, key, serial = issuer.issue()
    volume = AtomicVolume(tmp_path / "secret")
    volume.write({"tls.crt": cert, "tls.key": key})
    server = start_server(
        tmp_path,
        cert=volume.path("tls.crt"),
        key=volume.path("tls.key"),
        ca=issuer.directory / "ca.crt",
    )
    yield server, volume, serial
    server.stop()


def test_rotation_by_secret_symlink_swap_under_a_client_loop(
    secret_server: tuple[Server, AtomicVolume, int], issuer: Issuer
) -> None:
    server, volume, old = secret_server
    with ClientLoop(server.port, client_context(server.ca)) as loop:
        wait_for(
            lambda: loop.seen(old, 5), deadline=RELOAD_DEADLINE, what="requests on the old pair"
        )
        cert, key, new = issuer.issue()
        volume.write({"tls.crt": cert, "tls.key": key})
        wait_for(lambda: loop.seen(new, 5), deadline=RELOAD_DEADLINE, what="the new serial")
    assert loop.failures == []
    switched = loop.serials.index(new)
    assert set(loop.serials[:switched]) == {old}
    assert set(loop.serials[switched:]) == {new}, "an old handshake after the new one"
    reloads = server.events("certificate_reload")
    assert [line["result"] for line in reloads] == ["success"]
    assert reloads[0]["serial"] == format(new, "x")


def test_rotation_by_certs_generate_into_the_served_directory(tmp_path: Path) -> None:
    """`certs generate` renames the key, then the certificate, over the served files: a look
    between the two may see a mismatched pair, which is rejected until the second lands."""
    directory = tmp_path / "certs"
    first = certs.generate(directory, service=SERVICE, namespace=NAMESPACE)
    server = start_server(
        tmp_path,
        cert=directory / "tls.crt",
        key=directory / "tls.key",
        ca=directory / "ca.crt",
    )
    try:
        with ClientLoop(server.port, client_context(server.ca)) as loop:
            wait_for(lambda: loop.seen(first.serial, 5), deadline=RELOAD_DEADLINE, what="old")
            run = subprocess.run(
                [
                    CLI,
                    "certs",
                    "generate",
                    "--service",
                    SERVICE,
                    "--namespace",
                    NAMESPACE,
                    "--out",
                    str(directory),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            new = x509.load_pem_x509_certificate((directory / "tls.crt").read_bytes())
            assert "existing CA" in run.stdout
            wait_for(lambda: loop.seen(new.serial_number, 5), deadline=RELOAD_DEADLINE, what="new")
        assert loop.failures == []
        assert server.events("certificate_reload")[-1]["result"] == "success"
    finally:
        server.stop()


def broken_pairs(issuer: Issuer, served_key: bytes) -> dict[str, dict[str, bytes]]:
    """New files that must not be served: each with what the error says."""
    other_cert, other_key, _ = issuer.issue()
    return {
        "key-of-another-certificate": {"tls.crt": other_cert, "tls.key": served_key},
        "truncated-certificate": {"tls.crt": other_cert[:100], "tls.key": other_key},
        "empty-key": {"tls.crt": other_cert, "tls.key": b""},
    }


def test_broken_pairs_are_rejected_while_the_old_one_keeps_serving(
    secret_server: tuple[Server, AtomicVolume, int], issuer: Issuer, tmp_path: Path
) -> None:
    server, volume, old = secret_server
    served_key = volume.path("tls.key").read_bytes()
    context = client_context(server.ca)
    for count, (case, files) in enumerate(broken_pairs(issuer, served_key).items(), 1):
        volume.write(files)
        wait_for_rejections(server, "certificate", count, f"the reload error for {case}")
        served = exchange(server.port, context, "POST", "/mutate", review_body())
        assert (served.status, served.serial) == (200, old), case
    errors = [line for line in server.events("certificate_reload") if line["result"] == "error"]
    assert len(errors) == 3
    assert all(line["level"] == "error" and line["serial"] == format(old, "x") for line in errors)
    assert "does not belong" in errors[0]["error"]
    # A good pair after the broken ones is taken.
    cert, key, new = issuer.issue()
    volume.write({"tls.crt": cert, "tls.key": key})
    wait_for(
        lambda: exchange(server.port, context, "GET", "/healthz").serial == new,
        deadline=RELOAD_DEADLINE,
        what="the good pair",
    )


# --- policy -------------------------------------------------------------------------------


def backend_in_patch(server: Server, context: ssl.SSLContext) -> str:
    """The backend FQDN:port the server puts in haproxy.cfg for a pod without annotation."""
    pod = make_pod()
    result = exchange(server.port, context, "POST", "/mutate", json.dumps(pod_review(pod)).encode())
    patched = jsonpatch.apply_patch(pod, decoded_patch(json.loads(result.body)["response"]))
    haproxy_cfg = patched["metadata"]["annotations"]["cache-injector.io/haproxy-cfg"]
    line = next(line for line in haproxy_cfg.splitlines() if "server-template" in line)
    return str(line.split()[-1])


class PolicyFile:
    """The --policy file, in a ConfigMap-like volume or as a plain file rewritten in place."""

    def __init__(self, root: Path, kind: str) -> None:
        self.kind = kind
        self.volume = AtomicVolume(root / "config")
        self.plain = root / "policy.yaml"

    @property
    def path(self) -> Path:
        return self.volume.path("policy.yaml") if self.kind == "configmap" else self.plain

    def write(self, text: str) -> None:
        if self.kind == "configmap":
            self.volume.write({"policy.yaml": text.encode()})
        else:
            self.plain.write_text(text)


BROKEN_POLICIES = [
    "defaults:\n  cache-size: lots\n",
    "onMissingBakend: skip\n",
    "defaults: [\n",
    "",
]


@pytest.mark.parametrize(
    "kind", [pytest.param("configmap", id="configmap-symlink-swap"), "plain-file"]
)
def test_policy_reload_and_broken_policy_refused(kind: str, tmp_path: Path, pki: Pki) -> None:
    policy = PolicyFile(tmp_path, kind)
    policy.write(POLICY_A)
    server = serve_pki(tmp_path, pki, policy=policy.path)
    context = client_context(pki.ca)
    try:
        assert backend_in_patch(server, context) == "app.shop.svc.cluster.local:8080"
        policy.write(POLICY_B)
        wait_for(
            lambda: backend_in_patch(server, context) == "other.shop.svc.cluster.local:9090",
            deadline=RELOAD_DEADLINE,
            what="the new policy in force",
        )
        assert metric(server, "cache_injector_policy_reloads_total", result="success") >= 1
        for count, broken in enumerate(BROKEN_POLICIES, 1):
            policy.write(broken)
            wait_for_rejections(server, "policy", count, f"the reload error for {broken!r}")
            assert backend_in_patch(server, context) == "other.shop.svc.cluster.local:9090"
        errors = [line for line in server.events("policy_reload") if line["result"] == "error"]
        assert len(errors) == len(BROKEN_POLICIES)
        assert "defaults.cache-size" in errors[0]["problems"][0]
        assert "onMissingBakend" in errors[1]["problems"][0]
        assert all(line["level"] == "error" for line in errors)
    finally:
        server.stop()


# --- several workers ----------------------------------------------------------------------


def test_every_worker_picks_up_rotation_and_policy(tmp_path: Path, issuer: Issuer) -> None:
    cert, key, old_serial = issuer.issue()
    secret = AtomicVolume(tmp_path / "secret")
    secret.write({"tls.crt": cert, "tls.key": key})
    policy = PolicyFile(tmp_path, "configmap")
    policy.write(POLICY_A)
    server = start_server(
        tmp_path,
        cert=secret.path("tls.crt"),
        key=secret.path("tls.key"),
        ca=issuer.directory / "ca.crt",
        policy=policy.path,
        workers=2,
    )
    context = client_context(server.ca)
    try:
        # Both workers answer (connections are spread over them by the kernel).
        def ready_by_worker() -> dict[int, dict[str, Any]]:
            seen: dict[int, dict[str, Any]] = {}
            for _ in range(200):
                result = exchange(server.port, context, "GET", "/readyz")
                state = json.loads(result.body)
                assert state["certificate"]["serial"] == format(result.serial, "x")
                seen[state["pid"]] = state
                if len(seen) == 2:
                    break
            return seen

        before = wait_for(ready_by_worker, deadline=RELOAD_DEADLINE, what="two workers")
        assert len(before) == 2
        old_digest = next(iter(before.values()))["policy"]["digest"]

        # Metrics from either worker add up both workers' reviews.
        start = metric(server, "cache_injector_admissions_total")
        for _ in range(20):
            assert exchange(server.port, context, "POST", "/mutate", review_body()).status == 200
        assert metric(server, "cache_injector_admissions_total") - start == 20

        cert, key, new_serial = issuer.issue()
        secret.write({"tls.crt": cert, "tls.key": key})
        policy.write(POLICY_B)
        latest: dict[int, dict[str, Any]] = {}

        def all_workers_updated() -> bool:
            result = exchange(server.port, context, "GET", "/readyz")
            state = json.loads(result.body)
            # Mid-rotation the handshake may still use the old certificate while /readyz,
            # answered a moment later, already reports the new one: only a settled worker
            # (both agree on the new serial) counts.
            state["handshake_serial"] = format(result.serial, "x")
            latest[state["pid"]] = state
            return len(latest) == 2 and all(
                s["certificate"]["serial"] == s["handshake_serial"] == format(new_serial, "x")
                and s["policy"]["digest"] != old_digest
                for s in latest.values()
            )

        wait_for(all_workers_updated, deadline=RELOAD_DEADLINE * 2, what="both workers updated")
        assert set(latest) == set(before)
        assert old_serial != new_serial
    finally:
        assert server.stop() == 0
