"""/mutate has two ways through the server (webhook/serve/protocol.py): a body that arrives with
its headers is answered inline by the HTTP protocol; one that comes later (a slow client,
`Expect: 100-continue`) goes through ASGI with the body deadline. Whichever way a review
takes, its answer is the same, byte for byte but the Date header, and it is logged once."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from webhook.serve.protocol import InlineHttpToolsProtocol

from .reviews import make_pod, pod_review
from .support import SERVICE_DNS, Server, client_context, wait_for

BACKEND = {"cache-injector.io/backend": "catalog-api:8080"}


def request_bytes(body: bytes, *extra: bytes) -> tuple[bytes, bytes]:
    """A /mutate request for the body, as its head and its body."""
    request = post("/mutate", body, b"content-type: application/json", *extra)
    return request[: -len(body)], body


class Connection:
    """One kept-alive TLS connection, reading answers whole (head, then Content-Length)."""

    def __init__(self, server: Server) -> None:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.tls: ssl.SSLSocket = client_context(server.ca).wrap_socket(
            raw, server_hostname=SERVICE_DNS
        )
        self.buffer = b""

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.tls.recv(65536)
            assert chunk, f"connection closed; have {self.buffer[:200]!r}"
            self.buffer += chunk
        found, _, self.buffer = self.buffer.partition(marker)
        return found

    def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.tls.recv(65536)
            assert chunk, "connection closed mid-body"
            self.buffer += chunk
        found, self.buffer = self.buffer[:size], self.buffer[size:]
        return found

    def answer(self) -> tuple[list[str], bytes]:
        """The next answer: its status line and headers but Date, and its body."""
        head = self.read_until(b"\r\n\r\n")
        status, *lines = head.decode().split("\r\n")
        headers = sorted(line.lower() for line in lines if not line.lower().startswith("date:"))
        return [status, *headers], self.read_exactly(content_length(head))

    def close(self) -> None:
        self.tls.close()


@pytest.fixture
def connection(server: Server) -> Iterator[Connection]:
    made = Connection(server)
    yield made
    made.close()


def review(uid: str, injected: bool) -> bytes:
    labels = {} if injected else {"cache-injector.io/inject": "disabled"}
    data: dict[str, Any] = pod_review(make_pod(labels=labels, annotations=BACKEND), uid=uid)
    return json.dumps(data).encode()


def reviews_logged(server: Server, uid: str) -> int:
    return sum(1 for line in server.events("review") if line.get("uid") == uid)


TLS_RECORD = 16384  # the most plaintext one TLS record carries


def content_length(head: bytes) -> int:
    """The Content-Length of an answer's head (-1 when it has none)."""
    lines = head.split(b"\r\n")
    found = (
        int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:")
    )
    return next(found, -1)


@pytest.mark.parametrize("injected", [True, False], ids=["inject", "noop"])
def test_a_response_is_one_tls_record(connection: Connection, injected: bool) -> None:
    """Status line, headers and body leave in one write (webhook/serve/protocol.py): a TLS
    read returns one record, so the first read after the answer arrived holds all of it - or,
    for an answer larger than a record (an injected pod's patch is over 16 KiB), a full
    record: head and body never leave apart."""
    head, body = request_bytes(review(f"one-record-{injected}", injected))
    for _ in range(3):  # the same on a kept-alive connection
        connection.tls.sendall(head + body)
        first = connection.tls.recv(65536)
        top, _, answer = first.partition(b"\r\n\r\n")
        assert top.startswith(b"HTTP/1.1 200"), first[:200]
        whole = len(top) + 4 + content_length(top)
        assert len(first) == min(whole, TLS_RECORD), (len(first), whole)
        for _ in range(whole // TLS_RECORD):  # the records that follow a full one
            if len(answer) == content_length(top):
                break
            answer += connection.tls.recv(65536)
        assert len(answer) == content_length(top), (len(answer), content_length(top))
        assert ("patch" in json.loads(answer)["response"]) is injected


@pytest.mark.parametrize("injected", [True, False], ids=["inject", "noop"])
def test_a_late_body_gets_the_answer_a_whole_one_gets(
    server: Server, connection: Connection, injected: bool
) -> None:
    """Whole (inline), then the body 0.3 s after the headers (ASGI), then with
    `Expect: 100-continue` (ASGI, after the interim answer), on one kept-alive connection."""
    uid = f"lanes-{injected}"
    head, body = request_bytes(review(uid, injected))
    connection.tls.sendall(head + body)
    whole = connection.answer()
    assert whole[0][0] == "HTTP/1.1 200 OK", whole
    assert ("patch" in json.loads(whole[1])["response"]) is injected

    connection.tls.sendall(head)
    time.sleep(0.3)
    connection.tls.sendall(body)
    assert connection.answer() == whole

    head, body = request_bytes(review(uid, injected), b"expect: 100-continue")
    connection.tls.sendall(head)
    assert connection.read_until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue"
    connection.tls.sendall(body)
    assert connection.answer() == whole
    wait_for(lambda: reviews_logged(server, uid) == 3 or None, deadline=10, what="3 review lines")


def test_pipelined_reviews_are_answered_in_order(server: Server, connection: Connection) -> None:
    """Three reviews in one write (a noop between two injections): three answers, in order."""
    uids = ["pipelined-1", "pipelined-2", "pipelined-3"]
    kinds = [True, False, True]
    connection.tls.sendall(
        b"".join(b"".join(request_bytes(review(u, k))) for u, k in zip(uids, kinds, strict=True))
    )
    for uid, injected in zip(uids, kinds, strict=True):
        status, body = connection.answer()
        assert status[0] == "HTTP/1.1 200 OK"
        response = json.loads(body)["response"]
        assert response["uid"] == uid
        assert ("patch" in response) is injected


def test_a_review_and_a_metrics_scrape_share_a_connection(
    server: Server, connection: Connection
) -> None:
    """The inline lane hands the connection back to uvicorn in the state ASGI leaves it."""
    head, body = request_bytes(review("shared-1", True))
    for _ in range(2):
        connection.tls.sendall(head + body)
        assert connection.answer()[0][0] == "HTTP/1.1 200 OK"
        connection.tls.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        status, text = connection.answer()
        assert status[0] == "HTTP/1.1 200 OK"
        assert b"cache_injector_admissions_total" in text


class Inline:
    """An app's inline side: answers "inline", and has a bug on /bug."""

    max_body = 1024
    headers = b"content-type: text/plain\r\n"

    def wants(self, scope: Any) -> bool:
        return bool(scope["method"] == "POST" and scope["path"] in ("/inline", "/bug"))

    def answer(self, body: bytes, started: float) -> tuple[int, bytes]:
        if body == b"bug":
            raise KeyError("a bug")
        return 200, b"inline:" + body


class App:
    """Everything else, and what the inline side hands back, is answered "asgi" by ASGI."""

    inline = Inline()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", b"%d" % (len(body) + 5)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"asgi:" + body})  # fmt: skip


@pytest.fixture(scope="module")
def plain_port() -> Iterator[int]:
    """A real uvicorn in a thread, plain HTTP, serving App through InlineHttpToolsProtocol
    (uvicorn's default proxy-headers middleware wraps App: the lane finds it underneath)."""
    config = uvicorn.Config(
        App(), host="127.0.0.1", port=0, loop="uvloop", http=InlineHttpToolsProtocol,
        lifespan="off", log_config=None,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or None, deadline=10, what="uvicorn started")
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(15)


def exchange(port: int, *parts: bytes, pause: float = 0.0) -> list[bytes]:
    """Send the parts (pausing between them), then read until the server has answered
    every request sent (a body per answer, by Content-Length) or closed."""
    bodies: list[bytes] = []
    expected = b"".join(parts).count(b"HTTP/1.1\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for index, part in enumerate(parts):
            if index:
                time.sleep(pause)
            sock.sendall(part)
        data = b""
        while sum(not b.startswith(b"HTTP/1.1 100 ") for b in bodies) < expected:
            head, found, rest = data.partition(b"\r\n\r\n")
            if found and head.startswith(b"HTTP/1.1 100 "):  # interim: listed, not counted
                bodies.append(head)
                data = rest
                continue
            length = content_length(head)
            if found and 0 <= length <= len(rest):
                bodies.append(head.split(b"\r\n", 1)[0] + b" " + rest[:length])
                data = rest[length:]
                continue
            chunk = sock.recv(65536)
            if not chunk:
                bodies.append(data)
                break
            data += chunk
    return bodies


def post(path: str, body: bytes, *extra: bytes) -> bytes:
    lines = [b"POST %s HTTP/1.1" % path.encode(), b"host: x", b"content-length: %d" % len(body)]
    return b"\r\n".join([*lines, *extra, b"", b""]) + body


def test_a_whole_body_is_answered_inline(plain_port: int) -> None:
    assert exchange(plain_port, post("/inline", b"{}")) == [b"HTTP/1.1 200 OK inline:{}"]


def test_pipelined_requests_are_answered_in_order(plain_port: int) -> None:
    """Inline while nothing is in progress; once an ASGI answer is, uvicorn queues what
    follows and starts it through ASGI when that answer is done."""
    requests = b"".join(post(path, b"%d" % n) for n, path in enumerate(
        ["/inline", "/inline", "/other", "/inline"], start=1))  # fmt: skip
    assert exchange(plain_port, requests) == [
        b"HTTP/1.1 200 OK inline:1",
        b"HTTP/1.1 200 OK inline:2",
        b"HTTP/1.1 200 OK asgi:3",
        b"HTTP/1.1 200 OK asgi:4",
    ]


def test_a_body_after_its_headers_goes_through_asgi(plain_port: int) -> None:
    request = post("/inline", b"late")
    head, body = request[: -len(b"late")], b"late"
    assert exchange(plain_port, head, body, pause=0.2) == [b"HTTP/1.1 200 OK asgi:late"]
    # Half of the body with the headers, the rest later: the same.
    assert exchange(plain_port, request[:-2], request[-2:], pause=0.2) == [
        b"HTTP/1.1 200 OK asgi:late"
    ]


def test_expect_100_continue_goes_through_asgi(plain_port: int) -> None:
    request = post("/inline", b"wait", b"expect: 100-continue")
    head = request[: -len(b"wait")]
    answers = exchange(plain_port, head, b"wait", pause=0.2)
    assert answers == [b"HTTP/1.1 100 Continue", b"HTTP/1.1 200 OK asgi:wait"]


def test_a_body_over_the_inline_cap_goes_through_asgi(plain_port: int) -> None:
    big = b"x" * (Inline.max_body + 1)
    assert exchange(plain_port, post("/inline", big)) == [b"HTTP/1.1 200 OK asgi:" + big]


def test_a_bug_in_an_inline_answer_is_a_500_and_the_connection_closes(
    plain_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """As uvicorn does for an ASGI app that raises: logged with its traceback, a 500 that
    says nothing more, and the connection closed (the request after it is not answered)."""
    with caplog.at_level(logging.ERROR, logger="uvicorn.error"):
        answers = exchange(plain_port, post("/bug", b"bug") + post("/inline", b"after"))
    assert answers == [b"HTTP/1.1 500 Internal Server Error Internal Server Error", b""]
    failure = next(r for r in caplog.records if r.getMessage() == "Exception in inline answer")
    assert failure.exc_info is not None and failure.exc_info[0] is KeyError
