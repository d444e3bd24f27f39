"""A service-mesh-like mutating webhook, standard library only (it runs as a pod's command
under the host's python3): every pod gets a native sidecar `mesh-proxy` first among its init
containers and MESH_ENABLED=1 in every container that lacks it, as Istio's injector does.
Idempotent, as a reinvoked webhook must be; the patch replaces whole lists, as injectors that
diff the object do.

    python3 mesh_webhook.py PORT CERT KEY
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PROXY = "mesh-proxy"
ENV = {"name": "MESH_ENABLED", "value": "1"}


def proxy_container() -> dict[str, Any]:
    return {
        "name": PROXY,
        "image": "registry.k8s.io/pause:3.10",
        "restartPolicy": "Always",
        "env": [dict(ENV)],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "runAsUser": 1337,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def with_env(containers: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    changed = False
    out = []
    for container in containers:
        env = list(container.get("env") or [])
        if any(e.get("name") == ENV["name"] for e in env):
            out.append(container)
        else:
            out.append({**container, "env": [*env, dict(ENV)]})
            changed = True
    return out, changed


def patch_for(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod.get("spec") or {}
    ops: list[dict[str, Any]] = []
    init = list(spec.get("initContainers") or [])
    added = not any(c.get("name") == PROXY for c in init)
    if added:
        init.insert(0, proxy_container())
    init, init_changed = with_env(init)
    if added or init_changed:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": init})
    containers, changed = with_env(list(spec.get("containers") or []))
    if changed:
        ops.append({"op": "replace", "path": "/spec/containers", "value": containers})
    return ops


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        review = json.loads(self.rfile.read(length))
        request = review["request"]
        response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
        ops = patch_for(request.get("object") or {})
        if ops:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
        body = json.dumps(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        print(f"review {request.get('name') or '-'} ops={len(ops)}", flush=True)

    def log_message(self, format: str, *args: Any) -> None:
        return


class Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True


def main(argv: list[str]) -> None:
    port, cert, key = int(argv[0]), argv[1], argv[2]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = Server(("::", port), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"mesh webhook on :{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
