"""HTTP clients inside the pod's network namespace: single requests and steady traffic.

Owns: what a request saw (status, X-Cache, X-Pod, timing, transport error) and counting
errors. A new connection per request, as a client pod behind a Service would mostly make.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import itertools
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass

from tests.e2e.backends import read_websocket_frame, websocket_frame
from tests.e2e.netns import Netns


@dataclass(frozen=True)
class Reply:
    at: float  # time.monotonic() when sent
    path: str
    status: int  # 0: no HTTP response (the error says why)
    headers: Mapping[str, str]  # lower-case names; Set-Cookie values joined by "\n"
    body: str
    elapsed: float
    error: str | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400

    @property
    def cache(self) -> str:
        return self.headers.get("x-cache", "")

    @property
    def pod(self) -> str:
        return self.headers.get("x-pod", "")

    def describe(self) -> str:
        what = self.error or f"{self.status} X-Cache={self.cache} X-Pod={self.pod}"
        return f"{self.path}: {what} ({self.elapsed:.2f} s)"


class Client:
    """Requests to host:port from inside the namespace."""

    def __init__(self, netns: Netns, host: str, port: int, *, workers: int = 8) -> None:
        self.host, self.port = host, port
        self.pool = netns.executor(workers)

    def _send(
        self,
        path: str,
        method: str,
        headers: Mapping[str, str],
        source: str | None,
        timeout: float,
        host: str | None,
    ) -> Reply:
        began = time.monotonic()
        connection = http.client.HTTPConnection(
            host or self.host,
            self.port,
            timeout=timeout,
            source_address=(source, 0) if source else None,
        )
        try:
            connection.request(method, path, headers={"Connection": "close", **headers})
            response = connection.getresponse()
            body = response.read().decode(errors="replace")
            collected: dict[str, str] = {}
            for name, value in response.getheaders():
                key = name.lower()
                collected[key] = f"{collected[key]}\n{value}" if key in collected else value
            return Reply(
                began,
                path,
                response.status,
                collected,
                body,
                time.monotonic() - began,
                reason=response.reason,
            )
        except (OSError, http.client.HTTPException) as err:
            error = f"{type(err).__name__}: {err}"
            return Reply(began, path, 0, {}, "", time.monotonic() - began, error)
        finally:
            connection.close()

    def submit(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        source: str | None = None,
        timeout: float = 10,
        host: str | None = None,
    ) -> Future[Reply]:
        return self.pool.submit(
            self._send, path, method, dict(headers or {}), source, timeout, host
        )

    def get(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        source: str | None = None,
        timeout: float = 10,
        host: str | None = None,
    ) -> Reply:
        """One request, waited for; the options are submit()'s."""
        return self.submit(
            path, method=method, headers=headers, source=source, timeout=timeout, host=host
        ).result(timeout=60)


class Traffic:
    """Steady open-loop traffic: `rate` requests a second, path from paths(i), until stop()."""

    def __init__(
        self,
        client: Client,
        paths: Callable[[int], str],
        *,
        rate: float,
        headers: Mapping[str, str] | None = None,
        limit_seconds: float = 300,
        source: str | None = None,
        timeout: float = 10,
    ) -> None:
        self.client, self.paths, self.rate = client, paths, rate
        self.headers = dict(headers or {})
        self.source, self.timeout = source, timeout
        self.limit_seconds = limit_seconds
        self._futures: list[Future[Reply]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self.started_at = 0.0

    def start(self) -> Traffic:
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            due = self.started_at + index / self.rate
            if due - self.started_at > self.limit_seconds:
                break
            if self._stop.wait(max(0.0, due - time.monotonic())):
                break
            path = self.paths(index)
            self._futures.append(
                self.client.submit(
                    path, headers=self.headers, timeout=self.timeout, source=self.source
                )
            )
            index += 1

    def stop(self) -> list[Reply]:
        """Stop sending, wait for the answers, return every reply in the order sent."""
        self._stop.set()
        self._thread.join(timeout=10)
        return [future.result(timeout=30) for future in list(self._futures)]

    def replies_so_far(self) -> list[Reply]:
        return [future.result() for future in list(self._futures) if future.done()]


def errors(replies: Iterable[Reply]) -> list[Reply]:
    return [reply for reply in replies if not reply.ok]


def between(replies: Iterable[Reply], start: float, end: float = float("inf")) -> list[Reply]:
    return [reply for reply in replies if start <= reply.at < end]


def pods(replies: Iterable[Reply]) -> Counter[str]:
    return Counter(reply.pod for reply in replies if reply.ok)


def largest_gap(replies: Iterable[Reply], start: float, end: float) -> float:
    """The longest stretch of [start, end] in which no request was sent (edges included).

    Traffic tests assert this, not a request count: on a loaded machine the generator sends
    fewer requests than its nominal rate, which says nothing about the pod; a long silence
    would mean part of the window went unchecked.
    """
    times = sorted(reply.at for reply in replies if start <= reply.at <= end)
    points = [start, *times, end]
    return max(later - earlier for earlier, later in itertools.pairwise(points))


def error_summary(replies: Iterable[Reply], origin: float, limit: int = 8) -> str:
    """The first few failures, with their time relative to origin."""
    bad = errors(replies)
    lines = [f"t={reply.at - origin:+.1f}s {reply.describe()}" for reply in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"... and {len(bad) - limit} more")
    return "\n".join(lines)


@dataclass(frozen=True)
class Load:
    """What concurrent_load() saw."""

    clients: int
    requests: int
    errors: int
    seconds: float
    first_error: str | None


def concurrent_load(
    netns: Netns,
    host: str,
    port: int,
    *,
    clients: int,
    seconds: float,
    paths: Callable[[int, int], str],
) -> Load:
    """`clients` keep-alive connections at once, each sending GET paths(client, n) back to
    back for `seconds` (a new connection after an error)."""
    pool = netns.executor(clients)
    start = threading.Barrier(clients)

    def worker(index: int) -> tuple[int, int, str | None]:
        start.wait(timeout=30)
        end = time.monotonic() + seconds
        sent = failed = 0
        first: str | None = None
        connection: http.client.HTTPConnection | None = None
        while time.monotonic() < end:
            connection = connection or http.client.HTTPConnection(host, port, timeout=10)
            try:
                connection.request("GET", paths(index, sent))
                response = connection.getresponse()
                response.read()
                ok = 200 <= response.status < 400
                error = None if ok else f"{response.status}"
            except (OSError, http.client.HTTPException) as err:
                error = f"{type(err).__name__}: {err}"
                connection.close()
                connection = None
            sent += 1
            if error:
                failed += 1
                first = first or error
        if connection:
            connection.close()
        return sent, failed, first

    began = time.monotonic()
    try:
        results = [
            f.result(timeout=seconds + 60) for f in [pool.submit(worker, i) for i in range(clients)]
        ]
    finally:
        pool.shutdown(wait=False)
    firsts = [first for _, _, first in results if first]
    return Load(
        clients=clients,
        requests=sum(sent for sent, _, _ in results),
        errors=sum(failed for _, failed, _ in results),
        seconds=time.monotonic() - began,
        first_error=firsts[0] if firsts else None,
    )


# -- large bodies, WebSockets, event streams ---------------------------------------------------
@dataclass(frozen=True)
class Download:
    """What one download of a large body saw: its length and checksum, never the body."""

    path: str
    status: int
    length: int
    sha256: str
    cache: str
    complete: bool  # the framing said the body ended (Content-Length reached, last chunk)
    error: str | None
    seconds: float


def download(
    netns: Netns,
    host: str,
    port: int,
    path: str,
    *,
    timeout: float = 120,
    pace: float = 0,
    headers: Mapping[str, str] | None = None,
) -> Download:
    """GET path, hashing the body as it arrives (a new connection, read in 64 KiB pieces).
    pace: seconds to pause after each piece - a client slower than the backend."""

    def run() -> Download:
        began = time.monotonic()
        digest, length, status, cache = hashlib.sha256(), 0, 0, ""
        connection = http.client.HTTPConnection(host, port, timeout=timeout)

        def seen(complete: bool, error: str | None) -> Download:
            return Download(
                path, status, length, digest.hexdigest(), cache, complete, error,
                time.monotonic() - began,
            )  # fmt: skip

        try:
            connection.request("GET", path, headers={"Connection": "close", **(headers or {})})
            response = connection.getresponse()
            status, cache = response.status, response.getheader("X-Cache", "")
            while piece := response.read(65536):
                digest.update(piece)
                length += len(piece)
                if pace:
                    time.sleep(pace)
            # A chunked body without its last chunk raises IncompleteRead; a short
            # Content-Length body just ends (read(n) does not raise): compare.
            declared = response.getheader("Content-Length")
            complete = declared is None or int(declared) == length
            error = None if complete else f"{length} of Content-Length {declared} bytes"
            return seen(complete, error)
        except (OSError, http.client.HTTPException) as err:
            return seen(False, f"{type(err).__name__}: {err}"[:200])
        finally:
            connection.close()

    return netns.call(run, timeout=timeout + 30)


class WebSocket:
    """A minimal RFC 6455 client: handshake through the cache port, masked text frames."""

    def __init__(
        self,
        netns: Netns,
        host: str,
        port: int,
        path: str = "/ws",
        headers: Mapping[str, str] | None = None,
        timeout: float = 10,
    ) -> None:
        self.sock: socket.socket = netns.call(
            lambda: socket.create_connection((host, port), timeout=timeout)
        )
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
            ).encode()
        )
        self.stream = self.sock.makefile("rb")
        status_line = self.stream.readline().decode(errors="replace").strip()
        self.status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
        self.headers: dict[str, str] = {}
        while line := self.stream.readline().decode(errors="replace").strip():
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def echo(self, text: str, timeout: float = 10) -> str:
        """Send one text frame; the backend's answer (`<pod> <text>`)."""
        self.sock.settimeout(timeout)
        self.sock.sendall(websocket_frame(text.encode(), mask=True))
        opcode, payload = read_websocket_frame(self.stream)
        if opcode != 1:
            raise ConnectionError(f"opcode {opcode} instead of a text frame")
        return payload.decode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass(frozen=True)
class Event:
    number: int
    sent: float  # time.time() at the backend
    received: float  # time.time() at the client


def read_events(
    netns: Netns, host: str, port: int, path: str, *, idle_timeout: float = 90
) -> tuple[int, dict[str, str], list[Event], int, str | None]:
    """Read a server-sent event stream to its end: (status, headers, events, heartbeats,
    error). idle_timeout: the longest silence tolerated before giving up."""

    def run() -> tuple[int, dict[str, str], list[Event], int, str | None]:
        events: list[Event] = []
        heartbeats = 0
        status, headers = 0, {}
        connection = http.client.HTTPConnection(host, port, timeout=idle_timeout)
        try:
            connection.request("GET", path, headers={"Accept": "text/event-stream"})
            response = connection.getresponse()
            status = response.status
            headers = {k.lower(): v for k, v in response.getheaders()}
            while line := response.readline():
                text = line.decode(errors="replace").strip()
                if text.startswith("data: "):
                    number, sent = text[6:].split()
                    events.append(Event(int(number), float(sent), time.time()))
                elif text.startswith(":"):
                    heartbeats += 1
            return status, headers, events, heartbeats, None
        except (OSError, http.client.HTTPException, ValueError) as err:
            return status, headers, events, heartbeats, f"{type(err).__name__}: {err}"
        finally:
            connection.close()

    return netns.call(run, timeout=600)
