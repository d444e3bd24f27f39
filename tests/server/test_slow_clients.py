"""A slow client cannot take the webhook down: thousands of TLS connections that send half a
header and then nothing, a stream of new ones, and bare TCP connections that never handshake,
while several clients send real reviews. Every review is answered 200 in time, every slow
connection is closed within the bound, and the server's memory stays bounded."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

from .support import SERVICE_DNS, Pki, Server, client_context, serve_pki, wait_for
from .traffic import Endpoints, ReviewClient, Tally

HEADER_TIMEOUT = 2.0
# The handshake gets longer: on a loaded machine a real client's handshake must not miss it.
HANDSHAKE_TIMEOUT = 4.0
MAX_CONNECTIONS = 1024
SLOW, RATE, FLOOD_SECONDS, BARE = 2000, 100, 8, 200
# The chart's webhook.timeoutSeconds: the API server gives up on a review after this.
WEBHOOK_TIMEOUT = 5.0
# Slack for a loaded 2-core machine on top of each deadline (the event loop of the server,
# and of the flood measuring it, lags while thousands of handshakes run).
SLACK = 5.0
CLIENTS = 4


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its children (the uvicorn workers)."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(child) for child in children.read_text().split()]
    for each in pids:
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


class Sampler(threading.Thread):
    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server, self.peak, self.stop = server, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.25):
            self.peak = max(self.peak, tree_rss(self.server.process.pid))


def test_flood_of_slow_clients(tmp_path: Path, pki: Pki, test_policy: Path) -> None:
    server = serve_pki(
        tmp_path,
        pki,
        policy=test_policy,
        workers=2,
        extra=(
            "--header-timeout",
            str(HEADER_TIMEOUT),
            "--handshake-timeout",
            str(HANDSHAKE_TIMEOUT),
            "--max-connections",
            str(MAX_CONNECTIONS),
        ),
    )
    tally, stop = Tally(), threading.Event()
    endpoints = Endpoints([server.port])
    clients = [
        ReviewClient(endpoints, pki.ca, tally, stop, timeout=WEBHOOK_TIMEOUT, redial_every=5)
        for _ in range(CLIENTS)
    ]
    sampler = Sampler(server)
    deadline = FLOOD_SECONDS + 40  # the flood ends by then, whatever the machine's load
    try:
        wait_for(lambda: len(server.events("started")) == 2, deadline=30, what="workers")
        baseline = tree_rss(server.process.pid)
        sampler.start()
        flood = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.server.flood",
                str(server.port),
                str(SLOW),
                str(RATE),
                str(FLOOD_SECONDS),
                str(BARE),
                str(deadline),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1)  # the first slow connections are open
        for client in clients:
            client.start()
        try:
            out, err = flood.communicate(timeout=deadline + 30)
        finally:
            if flood.poll() is None:
                flood.kill()
                flood.wait(10)
        stop.set()
        for client in clients:
            client.join(WEBHOOK_TIMEOUT + 5)
    finally:
        stop.set()
        sampler.stop.set()
        server.stop(signal.SIGKILL)
    assert flood.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    print(
        f"\nflood: {report}\nreviews: {tally.summary()}\n"
        f"memory: baseline {baseline / 2**20:.0f} MiB, peak {sampler.peak / 2**20:.0f} MiB"
    )
    assert tally.failures == [], tally.failures[:5]
    assert tally.answered >= 50, tally.summary()
    assert max(tally.latencies) < WEBHOOK_TIMEOUT, tally.summary()
    # Every slow connection was closed by the server, within its deadline.
    assert report["opened"] == SLOW + RATE * FLOOD_SECONDS, report
    assert report["failed"] < report["opened"] // 10, report  # most of the flood got through
    assert report["closed"] == report["opened"] - report["failed"], report
    assert report["max_close"] < HEADER_TIMEOUT + SLACK, report
    assert report["bare_closed"] == BARE, report
    assert report["bare_max_close"] < HANDSHAKE_TIMEOUT + SLACK, report
    # Bounded: the connection cap and the deadlines keep the growth to a few MiB per
    # hundred connections (measured ~40 KiB each), far from the chart's 384Mi limit.
    growth = sampler.peak - baseline
    assert growth < 2 * MAX_CONNECTIONS * 100 * 1024, f"{growth / 2**20:.0f} MiB"


def test_idle_keep_alive_connections_cannot_crowd_out_reviews(
    tmp_path: Path, pki: Pki, test_policy: Path
) -> None:
    """Connections that made one request and then idle (kept alive for 120 s) beyond the cap:
    the longest-idle ones are closed to admit new connections, and reviews are answered."""
    cap, idle_count = 32, 100
    server = serve_pki(
        tmp_path,
        pki,
        policy=test_policy,
        extra=("--max-connections", str(cap)),
    )
    context = client_context(pki.ca)
    idle: list[ssl.SSLSocket] = []
    tally, stop = Tally(), threading.Event()
    try:
        for _ in range(idle_count):
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            tls = context.wrap_socket(raw, server_hostname=SERVICE_DNS)
            tls.sendall(f"GET /healthz HTTP/1.1\r\nHost: {SERVICE_DNS}\r\n\r\n".encode())
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):  # the whole response: idle after it
                chunk = tls.recv(4096)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
            idle.append(tls)
        client = ReviewClient(
            Endpoints([server.port]), pki.ca, tally, stop, timeout=WEBHOOK_TIMEOUT, limit=20
        )
        client.start()
        client.join(60)

        def still_open(tls: ssl.SSLSocket) -> bool:
            tls.settimeout(0.05)
            try:
                return tls.recv(1) != b""
            except TimeoutError:
                return True
            except OSError:
                return False

        open_now = sum(still_open(tls) for tls in idle)
    finally:
        stop.set()
        for tls in idle:
            tls.close()
        server.stop(signal.SIGKILL)
    print(f"\nidle: {open_now} of {idle_count} still open (cap {cap}); {tally.summary()}")
    assert tally.failures == [] and tally.answered == 20
    assert open_now <= cap
    # The oldest went first: the most recent idle connection survived.
    assert open_now > 0
