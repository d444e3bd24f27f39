"""Run the real server and talk to it as the API server would: over TLS, verifying the
certificate against the generated CA under the Service's DNS name."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cryptography import x509

from webhook.serve import certs

CLI = str(Path(sys.executable).parent / "cache-injector")
SERVICE, NAMESPACE = "cache-injector", "cache-injector"
# The name the API server dials (service.namespace.svc); tests connect to 127.0.0.1 and
# verify the certificate under this name, as the API server does.
SERVICE_DNS = f"{SERVICE}.{NAMESPACE}.svc"
START_DEADLINE = 60.0

T = TypeVar("T")


@dataclass(frozen=True)
class Pki:
    """Where `certs generate` wrote the CA and the serving pair."""

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


def wait_for(condition: Callable[[], T | None], *, deadline: float, what: str) -> T:
    """Poll `condition` until it returns a truthy value or `deadline` seconds pass."""
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:g} s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def client_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def handshake(port: int, ca: Path, server_name: str = SERVICE_DNS) -> x509.Certificate:
    """A fresh TLS handshake; the certificate the server presented (verified)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client_context(ca).wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)


class Client:
    """One keep-alive HTTPS client, verifying the server as SERVICE_DNS."""

    def __init__(self, port: int, ca: Path, server_name: str = SERVICE_DNS) -> None:
        self.http = httpx.Client(
            base_url=f"https://127.0.0.1:{port}", verify=client_context(ca), timeout=60
        )
        self.extensions = {"sni_hostname": server_name}

    def post(self, body: bytes | Iterator[bytes], **headers: str) -> httpx.Response:
        return self.http.post(
            "/mutate",
            content=body,
            headers={"content-type": "application/json", **headers},
            extensions=self.extensions,
        )

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path, extensions=self.extensions)

    def review(self, review: dict[str, Any]) -> dict[str, Any]:
        """POST a review that must be answered with a review; its `response`."""
        answer = self.post(json.dumps(review).encode())
        assert answer.status_code == 200, answer.text
        response: dict[str, Any] = answer.json()["response"]
        return response

    def metric(self, name: str, **labels: str) -> float:
        """A sample's value from /metrics (0 when absent)."""
        return sample(self.get("/metrics").text, name, **labels)

    def close(self) -> None:
        self.http.close()


def sample(text: str, name: str, **labels: str) -> float:
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        metric, _, value = line.rpartition(" ")
        base, _, label_text = metric.partition("{")
        if base != name:
            continue
        present = set(label_text.rstrip("}").split(",")) if label_text else set()
        if wanted <= present:
            total += float(value)
    return total


@dataclass
class Server:
    """A `cache-injector serve` process on 127.0.0.1."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path
    ca: Path
    clients: list[Client] = field(default_factory=list)

    def client(self, server_name: str = SERVICE_DNS) -> Client:
        made = Client(self.port, self.ca, server_name)
        self.clients.append(made)
        return made

    def lines(self) -> list[dict[str, Any]]:
        """Every log line, each parsed as JSON (a line that is not JSON fails the test)."""
        text = self.log.read_text(encoding="utf-8", errors="replace")
        # Only whole lines: the server may be writing the last one right now.
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.split("\n") if line.strip()]

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == event]

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, deadline: float = 30) -> int:
        for made in self.clients:
            made.close()
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(deadline)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # workers a killed supervisor left
        return self.process.returncode


def start_server(
    workdir: Path,
    *,
    cert: Path,
    key: Path,
    ca: Path,
    policy: Path | None = None,
    workers: int = 1,
    extra: tuple[str, ...] = (),
) -> Server:
    """Start `cache-injector serve` and wait until /readyz answers 200 over verified TLS."""
    port = free_port()
    log = workdir / f"server-{port}.log"
    command = [
        CLI,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--workers",
        str(workers),
        "--watch-interval",
        "0.2",
        *(["--policy", str(policy)] if policy else []),
        *extra,
    ]
    with log.open("wb") as out:
        # Its own process group: stop() ends the workers too, even after a SIGKILL that
        # leaves them orphaned (uvicorn's workers outlive a killed supervisor).
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return started(Server(port, process, log, ca), workers)


def serve_pki(
    workdir: Path,
    pki: Pki,
    *,
    policy: Path | None = None,
    workers: int = 1,
    extra: tuple[str, ...] = (),
) -> Server:
    """start_server with the tests' PKI: its serving pair, and its CA for the clients."""
    return start_server(
        workdir,
        cert=pki.cert,
        key=pki.key,
        ca=pki.ca,
        policy=policy,
        workers=workers,
        extra=extra,
    )


def _ready(server: Server) -> bool:
    if server.process.poll() is not None:
        raise AssertionError(
            f"server exited with {server.process.returncode}:\n{server.log.read_text()}"
        )
    return answers_ready(server)


def answers_ready(server: Server) -> bool:
    """/readyz answers 200 over verified TLS; False when it cannot be reached (a stopping
    server, as the endpoints controller sees it)."""
    try:
        probe = Client(server.port, server.ca)
        try:
            return probe.get("/readyz").status_code == 200
        finally:
            probe.close()
    except httpx.TransportError:
        return False


def started(server: Server, workers: int) -> Server:
    """Ready when /readyz answers and every worker has logged its start (under load a second
    worker may still be importing when the first already answers)."""
    try:
        wait_for(lambda: _ready(server), deadline=START_DEADLINE, what="/readyz")
        wait_for(
            lambda: len(server.events("started")) >= workers,
            deadline=START_DEADLINE,
            what=f"{workers} workers started",
        )
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server
