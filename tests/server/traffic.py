"""Review traffic as the API server makes it: several clients, each sending review after review
on a keep-alive TLS connection that it dials through a "Service" (the current endpoints), and
re-dials when the server asks it to close. Every review is checked and counted, none retried
(the API server does not retry a POST: under failurePolicy Ignore the pod starts uncached)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .reviews import make_pod, pod_review
from .support import SERVICE_DNS, client_context


class Endpoints:
    """The Service's ready endpoints (ports on 127.0.0.1), as an endpoints controller keeps
    them; clients pick one in turn each time they dial."""

    def __init__(self, ports: list[int]) -> None:
        self.lock = threading.Lock()
        self.ports = list(ports)
        self.turn = 0

    def pick(self) -> int:
        with self.lock:
            if not self.ports:
                raise ConnectionError("no ready endpoints")
            self.turn += 1
            return self.ports[self.turn % len(self.ports)]

    def remove(self, port: int) -> None:
        with self.lock:
            if port in self.ports:
                self.ports.remove(port)


@dataclass
class Tally:
    """What the clients saw: answers (HTTP 200 with the right uid), failures, latencies."""

    answered: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    by_port: dict[int, int] = field(default_factory=dict)
    closed_by_server: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self) -> str:
        if not self.latencies:
            return f"answered 0, failed {len(self.failures)}"
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"answered {self.answered}, failed {len(self.failures)}, latency p50 "
            f"{statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max "
            f"{ordered[-1] * 1000:.1f} ms, by port {self.by_port}, "
            f"closed by server {self.closed_by_server}"
        )


def review_body() -> tuple[bytes, str]:
    review = pod_review(make_pod(annotations={"cache-injector.io/backend": "web:8080"}))
    return json.dumps(review).encode(), str(review["request"]["uid"])


class ReviewClient(threading.Thread):
    """One API-server-like client, until `stop` is set (at most `limit` reviews)."""

    def __init__(
        self,
        endpoints: Endpoints,
        ca: Path,
        tally: Tally,
        stop: threading.Event,
        *,
        timeout: float,
        redial_every: int = 0,
        limit: int = 100_000,
        first_port: int | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.endpoints, self.tally, self.stop = endpoints, tally, stop
        self.context: ssl.SSLContext = client_context(ca)
        self.timeout, self.redial_every, self.limit = timeout, redial_every, limit
        self.connection: http.client.HTTPConnection | None = None
        self.port = 0
        self.first_port = first_port  # the first dial goes there (a connection made earlier)

    def dial(self) -> http.client.HTTPConnection:
        self.port, self.first_port = self.first_port or self.endpoints.pick(), None
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        try:
            tls = self.context.wrap_socket(raw, server_hostname=SERVICE_DNS)
        except BaseException:
            raw.close()
            raise
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        connection.sock = tls
        return connection

    def hang_up(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def one(self, sent: int) -> None:
        body, uid = review_body()
        started = time.monotonic()
        try:
            if self.connection is None or (self.redial_every and sent % self.redial_every == 0):
                self.hang_up()
                self.connection = self.dial()
            self.connection.request(
                "POST", "/mutate", body, {"Host": SERVICE_DNS, "Content-Type": "application/json"}
            )
            answer = self.connection.getresponse()
            content = answer.read()
            elapsed = time.monotonic() - started
            closing = answer.will_close
        except (OSError, http.client.HTTPException) as err:
            self.hang_up()
            with self.tally.lock:
                self.tally.failures.append(f"port {self.port}: {type(err).__name__}: {err}")
            return
        if closing:
            self.hang_up()
        response: dict[str, Any] = {}
        if answer.status == 200:
            response = json.loads(content).get("response") or {}
        with self.tally.lock:
            if answer.status == 200 and response.get("uid") == uid and response.get("allowed"):
                self.tally.answered += 1
                self.tally.latencies.append(elapsed)
                self.tally.by_port[self.port] = self.tally.by_port.get(self.port, 0) + 1
                self.tally.closed_by_server += closing
            else:
                self.tally.failures.append(
                    f"port {self.port}: HTTP {answer.status}: {content[:200]!r}"
                )

    def run(self) -> None:
        sent = 0
        try:
            while not self.stop.is_set() and sent < self.limit:
                self.one(sent)
                sent += 1
        finally:
            self.hang_up()
