"""Backend "pods": small HTTP servers, one per address, that say which pod answered.

Owns: what a backend sends and what it counted. Every response carries `X-Pod: <name>`; the
path prefix decides its caching headers:
- `/static/...`  `Cache-Control: public, max-age=300`
- `/short/...`   `Cache-Control: public, max-age=2` (expires quickly: grace is what serves it)
- `/plain/...`   no caching headers (Varnish's default TTL applies)
- `/nocache/...` `Cache-Control: no-store` (every request goes to a backend pod)
- `/session/...` no caching headers, but `Set-Cookie: session=<pod>` (the app's own cookie)
- `/tagged/<tags>/...`  `public, max-age=300` and the comma-separated <tags>, space-separated,
                 in the pod's `tag_header` (xkey, or Surrogate-Key as Fastly-style apps send
                 it); the body ends with how many times this path was fetched (fresh or stale)
- `/healthz`     200, or 503 after set_healthy(False)
- `/big/<bytes>/<framing>/<name>`  a cacheable (`public, max-age=300`) body of <bytes> that
                 big_body() can recompute, with Content-Length (framing `length`) or chunked
- `/events/<seconds>`  server-sent events (`text/event-stream`, no caching headers, chunked):
                 `data: <n> <time.time()>` at the moments of EVENT_PLAN, `: heartbeat`
                 comments every 20 s in between, for <seconds>
- `/ws`          a WebSocket (101, then every text frame echoed as `<pod> <text>`)
anything else is a 404. After set_failing(seconds) every other path answers 503 (no-store)
after that delay: a broken application whose pods still accept connections.
Requests are counted per path, with the cookies they carried, and (health checks aside) by
the address family they arrived on and with their query as received.

A pod given an ssl.SSLContext (`tls=`) speaks HTTPS only, as a Service that terminates TLS
itself. set_tls() swaps the certificate as a server reload would: new connections get the
new one, a connection made before answers its request in progress with `Connection: close`.
TLS handshakes are counted per certificate generation (failed ones under None), with the
client certificate's common name when the peer sent one (mutual TLS).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.e2e.netns import Netns

CACHE_CONTROL = {
    "/static/": "public, max-age=300",
    "/short/": "public, max-age=2",
    "/plain/": None,
    "/nocache/": "no-store",
    "/session/": None,
    "/tagged/": "public, max-age=300",
}


BLOCK = 64 * 1024
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC11B40"
HEARTBEAT_SECONDS = 20.0


def big_body(path: str, size: int) -> Iterator[bytes]:
    """The body of a /big/ response, in BLOCK pieces: each block carries its number and the
    path, so a truncated, reordered or mixed-up body never has the right checksum."""
    seed = hashlib.sha256(path.encode()).digest() * (BLOCK // 32)
    sent, index = 0, 0
    while sent < size:
        block = (f"{index:012d}".encode() + seed)[: min(BLOCK, size - sent)]
        yield block
        sent += len(block)
        index += 1


@functools.cache  # the path fixes the body; a test checks each of ~9 bodies several times
def big_checksum(path: str, size: int) -> str:
    digest = hashlib.sha256()
    for block in big_body(path, size):
        digest.update(block)
    return digest.hexdigest()


def event_plan(seconds: float) -> list[float]:
    """When /events/ sends an event: every 5 s, except a silent 75 s gap from 20 s to 95 s
    (heartbeats only), longer than HAProxy's and Varnish's 60 s idle timeouts."""
    return [float(t) for t in range(0, int(seconds) + 1, 5) if not 20 < t < 95]


def websocket_frame(payload: bytes, opcode: int = 1, mask: bool = False) -> bytes:
    """One unfragmented frame (clients mask, servers do not)."""
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    if len(payload) < 126:
        head += bytes([bit | len(payload)])
    elif len(payload) < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", len(payload))
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", len(payload))
    if not mask:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_exact(stream: Any, count: int) -> bytes:
    data = b""
    while len(data) < count:
        piece = stream.read(count - len(data))
        if not piece:
            raise ConnectionError("closed mid-frame")
        data += piece
    return data


def read_websocket_frame(stream: Any) -> tuple[int, bytes]:
    """(opcode, payload) of the next frame on a file-like stream."""
    first, second = read_exact(stream, 2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", read_exact(stream, 2))[0]
    elif length == 127:
        length = struct.unpack("!Q", read_exact(stream, 8))[0]
    key = read_exact(stream, 4) if second & 0x80 else None
    payload = read_exact(stream, length)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, payload


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, pod: BackendPod, address: str) -> None:
        self.pod = pod
        self.connections: dict[socket.socket, bool] = {}  # socket -> busy
        self.connections_lock = threading.Lock()
        self.generations: dict[socket.socket, int] = {}  # TLS socket -> certificate generation
        if ":" in address:
            self.address_family = socket.AF_INET6
        super().__init__((address, pod.port), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept; with TLS, wrap the socket in the current certificate's context (the
        handshake runs in the request's thread: a slow peer never blocks accepting)."""
        sock, address = super().get_request()
        context, generation = self.pod.tls, self.pod.tls_generation
        if context is None:
            return sock, address
        wrapped = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self.connections_lock:
            self.generations[wrapped] = generation
        return wrapped, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(10)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ssl.SSLError):
                self.pod.count_handshake(None, None)
                return
            peer: dict[str, Any] = dict(request.getpeercert() or {})
            names = [value for rdn in peer.get("subject", ()) for key, value in rdn]
            fields = [key for rdn in peer.get("subject", ()) for key, value in rdn]
            common = dict(zip(fields, names, strict=True)).get("commonName")
            self.pod.count_handshake(self.generations.get(request), common)
        super().finish_request(request, client_address)

    def generation_of(self, request: Any) -> int | None:
        with self.connections_lock:
            return self.generations.get(request)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections[request] = False
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a peer closing a kept-alive connection is normal here, not worth a traceback

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.pop(request, None)
            self.generations.pop(request, None)
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
            pod.count(path, self.headers.get("Cookie"), family, self.path)
            if path.startswith("/big/"):
                return self._big(path)
            if path.startswith("/events/"):
                return self._events(float(path.split("/")[2]))
            if path == "/ws":
                return self._websocket()
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
            if path.startswith("/tagged/") and status == 200:
                headers[pod.tag_header] = path.split("/")[2].replace(",", " ")
                body = f"{pod.name} {path} {pod.requests[path]}\n".encode()
            generation = self.server.generation_of(self.connection)
            if pod.stopping or generation not in (None, pod.tls_generation):
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

    def _big(self, path: str) -> None:
        size, framing = int(path.split("/")[2]), path.split("/")[3]
        self.send_response(200)
        self.send_header("X-Pod", self.server.pod.name)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Cache-Control", "public, max-age=300")
        if framing == "length":
            self.send_header("Content-Length", str(size))
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command == "HEAD":
            return
        for block in big_body(path, size):
            if framing == "length":
                self.wfile.write(block)
            else:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
        if framing != "length":
            self.wfile.write(b"0\r\n\r\n")

    def _events(self, seconds: float) -> None:
        """Server-sent events as EVENT_PLAN says, each chunk flushed as it is written."""
        self.send_response(200)
        self.send_header("X-Pod", self.server.pod.name)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        began = time.monotonic()
        plan = event_plan(seconds)
        last_write = began
        sent = 0

        def chunk(data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        while sent < len(plan):
            now = time.monotonic()
            due = began + plan[sent]
            if now >= due:
                chunk(f"data: {sent} {time.time():.6f}\n\n".encode())
                sent, last_write = sent + 1, now
            elif now - last_write >= HEARTBEAT_SECONDS:
                chunk(b": heartbeat\n\n")
                last_write = now
            else:
                time.sleep(min(0.05, due - now))
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    def _websocket(self) -> None:
        """The RFC 6455 handshake, then echo text frames until the client closes."""
        key = self.headers.get("Sec-WebSocket-Key", "")
        if "websocket" not in self.headers.get("Upgrade", "").lower() or not key:
            self.send_response(426)  # Upgrade Required: what a WebSocket server says to a GET
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        accept = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            try:
                opcode, payload = read_websocket_frame(self.rfile)
            except (OSError, ConnectionError, ValueError):
                return
            if opcode == 8:  # close
                with contextlib.suppress(OSError):
                    self.wfile.write(websocket_frame(payload[:2], opcode=8))
                return
            if opcode == 9:  # ping
                self.wfile.write(websocket_frame(payload, opcode=10))
                continue
            self.wfile.write(websocket_frame(self.server.pod.name.encode() + b" " + payload))
            self.wfile.flush()


class BackendPod:
    """One backend pod: an HTTP server on ip:port inside the namespace (and on ip6:port too,
    for a dual-stack pod)."""

    def __init__(
        self,
        netns: Netns,
        name: str,
        ip: str,
        port: int = 8080,
        *,
        ip6: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.netns, self.name, self.ip, self.port, self.ip6 = netns, name, ip, port, ip6
        self.tls = tls  # HTTPS only, with this context's certificate
        self.tls_generation = 1
        self.handshakes: Counter[int | None] = Counter()  # by generation; None: failed
        self.client_names: Counter[str] = Counter()  # client certificates' common names
        self.healthy = True
        self.tag_header = "xkey"  # the header /tagged/ responses carry their tags in
        self.failing: float | None = None  # seconds before a 503, once set_failing()
        self.stopping = False
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.families: Counter[str] = Counter()  # requests by the address they came to
        self.cookies: list[str] = []
        self.targets: list[str] = []  # request targets (path and query) as received, in order
        self.last_request_at = 0.0
        self._servers: list[_Server] = []

    def count(self, path: str, cookie: str | None, family: str = "ipv4", target: str = "") -> None:
        with self._lock:
            self.requests[path] += 1
            if path != "/healthz":
                self.families[family] += 1
                self.targets.append(target or path)
            self.last_request_at = time.monotonic()
            if cookie:
                self.cookies.append(cookie)

    def count_handshake(self, generation: int | None, client_name: str | None) -> None:
        with self._lock:
            self.handshakes[generation] += 1
            if client_name:
                self.client_names[client_name] += 1

    def set_tls(self, context: ssl.SSLContext) -> None:
        """A new certificate: served on every connection from now on."""
        with self._lock:
            self.tls, self.tls_generation = context, self.tls_generation + 1

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
            server = self.netns.call(partial(_Server, self, address))
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
