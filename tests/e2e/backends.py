"""Backend "pods": small HTTP servers, one per address, that say which pod answered.

Owns: what a backend sends and what it counted. Every response carries `X-Pod: <name>`; the
path prefix decides its caching headers:
- `/static/...`  `Cache-Control: public, max-age=300`
- `/short/...`   `Cache-Control: public, max-age=2` (expires quickly: grace is what serves it)
- `/plain/...`   no caching headers (Varnish's default TTL applies)
- `/nocache/...` `Cache-Control: no-store` (every request goes to a backend pod)
- `/session/...` no caching headers, but `Set-Cookie: session=<pod>` (the app's own cookie)
- `/healthz`     200, or 503 after set_healthy(False)
anything else is a 404. After set_failing(seconds) every other path answers 503 (no-store)
after that delay: a broken application whose pods still accept connections.
Requests are counted per path, with the cookies they carried, and (health checks aside) by
the address family they arrived on.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.e2e.netns import Netns

CACHE_CONTROL = {
    "/static/": "public, max-age=300",
    "/short/": "public, max-age=2",
    "/plain/": None,
    "/nocache/": "no-store",
    "/session/": None,
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, pod: BackendPod, address: str) -> None:
        self.pod = pod
        self.connections: dict[socket.socket, bool] = {}  # socket -> busy
        self.connections_lock = threading.Lock()
        if ":" in address:
            self.address_family = socket.AF_INET6
        super().__init__((address, pod.port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections[request] = False
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a peer closing a kept-alive connection is normal here, not worth a traceback

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.pop(request, None)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _busy(self, busy: bool) -> None:
        with self.server.connections_lock:
            if self.connection in self.server.connections:
                self.server.connections[self.connection] = busy

    def do_GET(self) -> None:
        pod = self.server.pod
        self._busy(True)
        try:
            path = self.path.split("?", 1)[0]
            family = "ipv6" if self.server.address_family == socket.AF_INET6 else "ipv4"
            pod.count(path, self.headers.get("Cookie"), family)
            headers: dict[str, str] = {"X-Pod": pod.name, "Content-Type": "text/plain"}
            if path == "/healthz":
                status = 200 if pod.healthy else 503
                headers["Cache-Control"] = "no-store"
            elif pod.failing is not None:
                time.sleep(pod.failing)
                status = 503
                headers["Cache-Control"] = "no-store"
            else:
                prefix = next((p for p in CACHE_CONTROL if path.startswith(p)), None)
                status = 404 if prefix is None else 200
                cache_control = "no-store" if prefix is None else CACHE_CONTROL[prefix]
                if cache_control:
                    headers["Cache-Control"] = cache_control
            if path.startswith("/session/"):
                headers["Set-Cookie"] = f"session={pod.name}; Path=/"
            body = f"{pod.name} {path}\n".encode()
            if pod.stopping:
                headers["Connection"] = "close"
                self.close_connection = True
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        finally:
            self._busy(False)

    do_HEAD = do_GET  # noqa: N815 - the stdlib's handler name


class BackendPod:
    """One backend pod: an HTTP server on ip:port inside the namespace (and on ip6:port too,
    for a dual-stack pod)."""

    def __init__(
        self, netns: Netns, name: str, ip: str, port: int = 8080, *, ip6: str | None = None
    ) -> None:
        self.netns, self.name, self.ip, self.port, self.ip6 = netns, name, ip, port, ip6
        self.healthy = True
        self.failing: float | None = None  # seconds before a 503, once set_failing()
        self.stopping = False
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.families: Counter[str] = Counter()  # requests by the address they came to
        self.cookies: list[str] = []
        self.last_request_at = 0.0
        self._servers: list[_Server] = []

    def count(self, path: str, cookie: str | None, family: str = "ipv4") -> None:
        with self._lock:
            self.requests[path] += 1
            if path != "/healthz":
                self.families[family] += 1
            self.last_request_at = time.monotonic()
            if cookie:
                self.cookies.append(cookie)

    def total(self, prefix: str = "") -> int:
        with self._lock:
            return sum(n for path, n in self.requests.items() if path.startswith(prefix))

    def set_healthy(self, healthy: bool) -> None:
        self.healthy = healthy

    def set_failing(self, seconds: float | None) -> None:
        self.failing = seconds

    @property
    def running(self) -> bool:
        return bool(self._servers)

    def start(self) -> None:
        self.stopping = False
        for address in [self.ip] + ([self.ip6] if self.ip6 else []):
            server = self.netns.call(lambda address=address: _Server(self, address))  # type: ignore[misc]
            threading.Thread(
                target=server.serve_forever, name=f"backend-{self.name}", daemon=True
            ).start()
            self._servers.append(server)

    def stop(self, *, graceful: bool = True) -> None:
        """Stop like a pod: no new connections; graceful finishes requests in progress first."""
        servers, self._servers = self._servers, []
        if not servers:
            return
        self.stopping = True
        for server in servers:
            server.shutdown()
            server.server_close()
        deadline = time.monotonic() + (5 if graceful else 0)
        while True:
            idle, busy_left = [], 0
            for server in servers:
                with server.connections_lock:
                    for sock, busy in server.connections.items():
                        if busy and graceful:
                            busy_left += 1
                        else:
                            idle.append(sock)
            for sock in idle:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            if not busy_left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
