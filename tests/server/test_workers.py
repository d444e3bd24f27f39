"""Several workers share the load: each listens on its own SO_REUSEPORT socket, so the kernel
spreads connections over them. (With one socket shared by all workers, the first to wake
accepted every pending connection: under 8 keep-alive connections, one worker did all the
work and a second added nothing.)"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.server.support import SERVICE_DNS, Pki, client_context, serve_pki

CONNECTIONS = 16  # all on one of 2 workers by chance: 2 * 0.5**16, about 3 in 100,000


def _pid_behind(sock: socket.socket, pki: Pki) -> int:
    with client_context(pki.ca).wrap_socket(sock, server_hostname=SERVICE_DNS) as tls:
        tls.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    pid: int = json.loads(data.split(b"\r\n\r\n", 1)[1])["pid"]
    return pid


def test_connections_opened_together_reach_every_worker(tmp_path: Path, pki: Pki) -> None:
    server = serve_pki(tmp_path, pki, workers=2)
    # Connect all at once, as a client ramping up does: the kernel completes each connection
    # before any worker accepts, so they are all pending together.
    sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=30)
               for _ in range(CONNECTIONS)]  # fmt: skip
    try:
        pids = {_pid_behind(sock, pki) for sock in sockets}
        assert len(pids) == 2, f"all {CONNECTIONS} connections went to worker {pids}"
    finally:
        for sock in sockets:
            sock.close()
        assert server.stop() == 0
