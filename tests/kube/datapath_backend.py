"""A backend pod's program for tests/kube/test_datapath.py, run as `python3 -c <this source>`
by the node (standard library only; the container's user need not read this checkout).

Every answer names the pod (`X-Pod`, from POD_NAME, the downward API) so a client behind the
cache can tell which pod served a miss; the path decides the caching headers, as
tests/e2e/backends.py does: /static/ cacheable for 300 s, /nocache/ `no-store`, /healthz for
the readiness probe. A /static/SEGMENT/... answer carries the tag `xkey: t-SEGMENT` (purge
--tag). On SIGTERM it stops listening, finishes requests in flight and exits, as a
well-behaved application does within its grace period.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

POD = os.environ.get("POD_NAME", socket.gethostname())
PORT = int(os.environ.get("PORT", "8080"))
STOPPING = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 15  # an idle kept-alive connection is closed after this

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            status, cache_control = 200, "no-store"
        elif path.startswith("/static/"):
            status, cache_control = 200, "public, max-age=300"
        elif path.startswith("/nocache/"):
            status, cache_control = 200, "no-store"
        else:
            status, cache_control = 404, "no-store"
        body = f"{POD} {path}\n".encode()
        self.send_response(status)
        self.send_header("X-Pod", POD)
        self.send_header("Cache-Control", cache_control)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if path.startswith("/static/"):  # tagged by its first segment, for purge --tag
            self.send_header("xkey", "t-" + path.split("/")[2])
        if STOPPING.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET  # noqa: N815 - the standard library's handler name


class Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True


def main() -> None:
    server = Server(("::", PORT), Handler)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        STOPPING.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever(poll_interval=0.1)
    server.server_close()  # no new connections; answers in flight finish within a second
    threading.Event().wait(1.0)
    sys.exit(0)


if __name__ == "__main__":
    main()
