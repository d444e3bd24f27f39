"""SIGTERM: the server stops accepting connections, and a review already in flight finishes."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest

from .reviews import make_pod, pod_review
from .support import SERVICE_DNS, Pki, Server, client_context, serve_pki, wait_for


def read_until(tls: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        chunk = tls.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def shutting_down(server: Server) -> int:
    return sum(line["message"] == "Shutting down" for line in server.lines())


@pytest.mark.parametrize(
    "workers", [pytest.param(1, id="one-process"), pytest.param(2, id="workers")]
)
def test_sigterm_lets_an_in_flight_review_finish(
    workers: int, tmp_path: Path, pki: Pki, test_policy: Path
) -> None:
    # No drain: this test is about the shutdown that follows it (test_rollout.py drains).
    server = serve_pki(
        tmp_path,
        pki,
        policy=test_policy,
        workers=workers,
        extra=("--drain-seconds", "0"),
    )
    review = pod_review(make_pod(annotations={"cache-injector.io/backend": "web:8080"}))
    body = json.dumps(review).encode()
    head = (
        f"POST /mutate HTTP/1.1\r\nHost: {SERVICE_DNS}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    try:
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw,
            client_context(pki.ca).wrap_socket(raw, server_hostname=SERVICE_DNS) as tls,
        ):
            tls.sendall(head)
            # uvicorn sends 100 Continue when the handler starts reading the body: from here
            # on the review is in flight.
            assert read_until(tls, b"\r\n\r\n").startswith(b"HTTP/1.1 100 Continue")
            os.kill(server.process.pid, signal.SIGTERM)
            # Every worker has begun its graceful shutdown (stopped accepting connections).
            wait_for(lambda: shutting_down(server) == workers, deadline=30, what="shutdown begun")
            if workers == 1:
                assert refuses_connections(server.port)
            tls.sendall(body)
            answer = read_until(tls, b"\x00")  # until the server closes the connection
        header, _, content = answer.partition(b"\r\n\r\n")
        assert header.startswith(b"HTTP/1.1 200"), answer[:300]
        response = json.loads(content)["response"]
        assert response["uid"] == review["request"]["uid"]
        assert response["allowed"] is True
        assert response["patchType"] == "JSONPatch"
        # uvicorn re-raises the captured SIGTERM once shut down; the supervisor exits 0.
        assert server.process.wait(30) in (0, -signal.SIGTERM)
    finally:
        server.stop(signal.SIGKILL)
    logged = [line for line in server.events("review") if line["uid"] == review["request"]["uid"]]
    assert [line["result"] for line in logged] == ["injected"]


def test_a_body_that_stalls_gets_408(tmp_path: Path, pki: Pki) -> None:
    server = serve_pki(tmp_path, pki, extra=("--body-timeout", "0.5"))
    try:
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw,
            client_context(pki.ca).wrap_socket(raw, server_hostname=SERVICE_DNS) as tls,
        ):
            head = f"POST /mutate HTTP/1.1\r\nHost: {SERVICE_DNS}\r\nContent-Length: 100\r\n\r\n"
            tls.sendall(head.encode() + b"{")  # and never the rest
            answer = read_until(tls, b"\x00")  # the server answers, then closes
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert server.alive()
    finally:
        server.stop()
