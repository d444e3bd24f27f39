"""A pretend Kubernetes API server on 127.0.0.1, speaking the real wire format: kept only for
what a real API server cannot be made to do on demand. Everything a real one can do is proven
on one in tests/kube (etcd, kube-apiserver, controller-manager and scheduler of a real
release; tests/kube/README.md).

Who still uses it, and why:
- tests/cluster/test_purge.py: injected failures — a pod proxy that errors, refuses, times out
  or hangs per pod (retries, per-pod timeouts, partial results), RBAC 403 on single verbs, the
  exact headers purge sends; a real server answers these only when broken.
  (The working flow through the real pod proxy: tests/kube/test_failure.py, test_datapath.py.)
- tests/cluster/test_audit.py: a sample cluster of pods injected by other policies and older
  injector versions, `continue` pagination past 500 pods, and `--restart` batches against a
  controlled rollout timing — cheap here, slow or impossible to stage for real. (Findings on
  real pods, exit codes and RBAC as the chart grants it: tests/kube/test_failure.py.)
- tests/chart/test_certs.py, test_fleet.py: Helm's `lookup` fed a chosen Secret (incomplete,
  foreign, rotated) in a unit test's time. (Upgrades keeping the CA and sticky secret on a real
  server: tests/kube/test_chart.py.)
- tests/e2e/test_purge.py: the pod proxy in front of the e2e pods (127.x addresses, which a
  real API server refuses as pod IPs), with failure modes as above.

It serves: discovery of the core group; GET of Secrets, Services, Deployments, Namespaces,
ReplicaSets, StatefulSets, DaemonSets; LIST of Pods (labelSelector, `limit` + `continue`
pagination as the API server pages), Namespaces, ReplicaSets; PATCH of Deployments,
StatefulSets and DaemonSets (strategic merge of the pod template's annotations, as `kubectl
rollout restart` sends, with a configurable rollout); POST/GET through the pod proxy
(`pods/NAME:PORT/proxy/PATH`, forwarded to a callable, Authorization stripped as the real
one does after authenticating); and RBAC-style 403 Status objects for any (verb, resource)
listed in `forbidden`. Plain HTTP on loopback.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[a-z0-9.]+)/v1)"
    r"(?:/namespaces/(?P<namespace>[^/]+))?/(?P<resource>[a-z]+)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>proxy)(?P<rest>/.*)?)?$"
)
_NAMESPACE_ONLY = re.compile(r"^/api/v1/namespaces/(?P<name>[^/]+)$")

_CORE_RESOURCES = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": "v1",
    "resources": [
        {
            "name": "secrets",
            "singularName": "secret",
            "namespaced": True,
            "kind": "Secret",
            "verbs": ["get", "list"],
        }
    ],
}

KINDS = {
    "secrets": "Secret",
    "services": "Service",
    "deployments": "Deployment",
    "replicasets": "ReplicaSet",
    "statefulsets": "StatefulSet",
    "daemonsets": "DaemonSet",
    "pods": "Pod",
    "namespaces": "Namespace",
    "mutatingwebhookconfigurations": "MutatingWebhookConfiguration",
}

# (namespace, pod name, port, method, path, headers) -> (status, reason, body)
ProxyHandler = Callable[[str, str, int, str, str, Mapping[str, str]], tuple[int, str, bytes]]


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A metav1.Status, as every API error is answered."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


Requirement = Callable[[Mapping[str, str]], bool]


def _value_in(key: str, values: set[str], *, negate: bool) -> Requirement:
    """`key in (...)` / `key notin (...)`: a label that is absent is never "in"."""
    return lambda labels: (labels.get(key) in values) != negate


def _value_is(key: str, value: str, *, negate: bool) -> Requirement:
    """`key=value` / `key!=value`: a label that is absent is never equal."""
    return lambda labels: (labels.get(key) == value) != negate


def _exists(key: str, *, negate: bool) -> Requirement:
    """`key` / `!key`."""
    return lambda labels: (key in labels) != negate


def _requirements(selector: str) -> list[Requirement]:
    """A label selector string (=, ==, !=, in, notin, exists, !exists) as predicates."""
    tests: list[Requirement] = []
    for raw in re.findall(r"[^,(]+(?:\([^)]*\))?", selector):
        part = raw.strip()
        if not part:
            continue
        match = re.match(r"^(\S+)\s+(in|notin)\s+\((.*)\)$", part)
        if match:
            values = {v.strip() for v in match[3].split(",")}
            tests.append(_value_in(match[1], values, negate=match[2] == "notin"))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            tests.append(_value_is(key, value, negate=True))
        elif "=" in part:
            key, value = re.split(r"==?", part, maxsplit=1)
            tests.append(_value_is(key, value, negate=False))
        elif part.startswith("!"):
            tests.append(_exists(part[1:], negate=True))
        else:
            tests.append(_exists(part, negate=False))
    return tests


def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    return all(test(labels) for test in _requirements(selector))


class FakeApiServer:
    """Objects by (kind, namespace, name); pods per namespace, in list order."""

    def __init__(self, *, page_size: int | None = None) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.pods: dict[str, list[dict[str, Any]]] = {}
        self.forbidden: set[tuple[str, str]] = set()  # (verb, resource) answered 403
        self.proxy: ProxyHandler | None = None
        self.proxied: list[dict[str, Any]] = []  # what reached the proxy: method, path, headers
        self.patches: list[tuple[str, str, str, Any]] = []  # (kind, namespace, name, body)
        self.on_patch: Callable[[str, str, str], None] | None = None  # rolls the owner out
        self.page_size = page_size  # the server's own cap on `limit`, to force pagination
        self.requests: list[str] = []
        self.calls: list[tuple[str, str]] = []  # (method, path with query)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, obj: dict[str, Any]) -> None:
        """Store a namespaced object (a Pod is appended to its namespace's list)."""
        metadata = obj["metadata"]
        if obj["kind"] == "Pod":
            self.pods.setdefault(metadata["namespace"], []).append(obj)
        elif obj["kind"] == "Secret":
            self.secrets[(metadata["namespace"], metadata["name"])] = obj
        else:
            self.objects[(obj["kind"], metadata.get("namespace", ""), metadata["name"])] = obj

    def kubeconfig(self, path: Any, namespace: str = "default") -> str:
        """A kubeconfig file for the official client (and kubectl) pointing here."""
        text = json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                "users": [{"name": "me", "user": {"token": "user-token"}}],
                "contexts": [
                    {
                        "name": "fake",
                        "context": {"cluster": "fake", "user": "me", "namespace": namespace},
                    }
                ],
                "current-context": "fake",
            }
        )
        path.write_text(text)
        return str(path)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PATCH(self) -> None:
                self._serve("PATCH")

            def _serve(self, method: str) -> None:
                api.requests.append(self.path)
                api.calls.append((method, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                path = unquote(parts.path)
                if path == "/api/v1" and method == "GET":
                    return self._answer(200, _CORE_RESOURCES)
                match = _PATH.match(path)
                if not match:
                    return self._answer(404, status(404, "NotFound", f"{path} not found"))
                resource, name, namespace = match["resource"], match["name"], match["namespace"]
                if match["sub"] == "proxy":
                    return self._proxy(method, namespace or "", name or "", match["rest"] or "/")
                verb = {"GET": "get" if name else "list", "PATCH": "patch"}.get(method, "create")
                if (verb, resource) in api.forbidden:
                    return self._forbidden(verb, resource, namespace)
                if resource == "namespaces" and name is None and match["namespace"]:
                    resource, name, namespace = "namespaces", match["namespace"], None
                if verb == "list":
                    return self._list(resource, namespace, query)
                kind = KINDS.get(resource)
                if kind is None:
                    return self._answer(404, status(404, "NotFound", f"{resource} unknown"))
                obj = (
                    api.secrets.get((namespace or "", name or ""))
                    if kind == "Secret"
                    else api.objects.get((kind, namespace or "", name or ""))
                )
                if obj is None:
                    return self._answer(
                        404, status(404, "NotFound", f'{resource} "{name}" not found')
                    )
                if verb == "patch":
                    return self._patch(kind, obj, body)
                return self._answer(200, obj)

            def _forbidden(self, verb: str, resource: str, namespace: str | None) -> None:
                where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
                message = (
                    f'{resource} is forbidden: User "me" cannot {verb} resource "{resource}" '
                    f'in API group ""{where}'
                )
                self._answer(403, status(403, "Forbidden", message))

            def _list(self, resource: str, namespace: str | None, query: dict[str, str]) -> None:
                kind = KINDS.get(resource, "")
                if kind == "Pod":
                    items = list(api.pods.get(namespace or "", []))
                    if namespace is None:
                        items = [p for pods in api.pods.values() for p in pods]
                else:
                    items = [
                        o
                        for (k, ns, _), o in api.objects.items()
                        if k == kind and (namespace is None or ns == namespace)
                    ]
                selector = query.get("labelSelector", "")
                items = [
                    i
                    for i in items
                    if selector_matches(selector, i["metadata"].get("labels") or {})
                ]
                start = int(query.get("continue") or 0)
                limit = int(query.get("limit") or 0) or len(items)
                if api.page_size:
                    limit = min(limit, api.page_size)
                page = items[start : start + limit]
                metadata: dict[str, Any] = {"resourceVersion": "1000"}
                if start + limit < len(items):
                    metadata["continue"] = str(start + limit)
                    metadata["remainingItemCount"] = len(items) - start - limit
                self._answer(
                    200,
                    {
                        "kind": f"{kind}List",
                        "apiVersion": "v1",
                        "metadata": metadata,
                        "items": page,
                    },
                )

            def _patch(self, kind: str, obj: dict[str, Any], body: bytes) -> None:
                patch = json.loads(body or b"{}")
                with api._lock:
                    template = obj["spec"]["template"].setdefault("metadata", {})
                    annotations = (((patch.get("spec") or {}).get("template") or {}).get(
                        "metadata") or {}).get("annotations") or {}  # fmt: skip
                    template.setdefault("annotations", {}).update(annotations)
                    obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
                    api.patches.append((kind, obj["metadata"].get("namespace", ""),
                                        obj["metadata"]["name"], patch))  # fmt: skip
                if api.on_patch:
                    api.on_patch(
                        kind, obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
                    )
                self._answer(200, obj)

            def _proxy(self, method: str, namespace: str, target: str, rest: str) -> None:
                if ("create" if method == "POST" else "get", "pods/proxy") in api.forbidden:
                    return self._forbidden("create", "pods/proxy", namespace)
                name, _, port = target.partition(":")
                headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
                api.proxied.append(
                    {"method": method, "pod": name, "path": rest, "headers": headers}
                )
                pods = {p["metadata"]["name"]: p for p in api.pods.get(namespace, [])}
                if name not in pods or api.proxy is None:
                    return self._answer(404, status(404, "NotFound", f'pods "{name}" not found'))
                try:
                    code, reason, data = api.proxy(
                        namespace, name, int(port or 80), method, rest, headers
                    )
                except OSError as err:
                    message = f"error trying to reach service: {err}"
                    return self._answer(503, status(503, "ServiceUnavailable", message))
                self.send_response(code, reason)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    @contextmanager
    def running(self) -> Iterator[FakeApiServer]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(timeout=10)
