"""`cache-injector purge`: invalidate URLs in every injected pod of a workload, per-pod results.

Owns: finding the pods (selector, Deployment or Service), what each pod is sent (a PURGE per
URL and Host, a BAN by URL regex, a purge by tag), fanning out with bounded concurrency, a
per-attempt timeout and retries, and one result per pod: ok (with the objects a tag purge
removed), failed (with why), unreachable, unsupported (tags, where the pod's Varnish image has
no xkey VMOD), skipped.
Pods are reached directly (pod IP, from inside the cluster network) or through the API
server's pod proxy (from anywhere kubectl works), always with the token of the namespace's
Secret, never by address.
"""

from __future__ import annotations

import base64
import http.client
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from ..engine import names
from ..engine.patch import read_status
from . import kube

RETRY_PAUSE = 0.25  # seconds before the 2nd attempt; doubled for each later one
PERMANENT = frozenset({400, 401, 403, 404, 405, 501})  # the same request, the same answer
TAGS_NOT_SUPPORTED = 501  # what the generated VCL answers a tag purge without xkey
_PURGED = re.compile(r"^purged (\d+)$", re.M)  # the xkey VCL's body: the objects purged
MAX_TAG_LENGTH = 256


@dataclass(frozen=True)
class Target:
    name: str
    ip: str
    port: int
    ready: bool


@dataclass(frozen=True)
class Invalidation:
    """One request to a pod: PURGE of url at host, BAN of the URLs matching regex, or a purge
    of every object carrying one of tags (soft: expired, still served within grace)."""

    kind: str  # "purge", "ban" or "tag"
    url: str = ""
    host: str = ""
    regex: str = ""
    tags: tuple[str, ...] = ()
    soft: bool = False

    @property
    def path(self) -> str:
        return {"purge": names.PURGE_PATH, "tag": names.TAG_PATH}.get(self.kind, names.BAN_PATH)

    def headers(self) -> dict[str, str]:
        if self.kind == "purge":
            return {"X-Cache-Purge-Url": self.url, "X-Cache-Purge-Host": self.host}
        if self.kind == "tag":
            found = {names.TAG_PURGE_HEADER: " ".join(self.tags)}
            if self.soft:
                found[names.TAG_SOFT_HEADER] = "true"
            return found
        found = {"X-Cache-Ban-Url": self.regex}
        if self.host:
            found["X-Cache-Ban-Host"] = self.host
        return found

    def __str__(self) -> str:
        if self.kind == "purge":
            return f"purge {self.host}{self.url}"
        if self.kind == "tag":
            return ("soft purge" if self.soft else "purge") + " tags " + " ".join(self.tags)
        return f"ban {self.regex}" + (f" at {self.host}" if self.host else "")


@dataclass
class PodResult:
    pod: str
    ip: str
    result: str  # ok, failed, unreachable, unsupported, skipped
    detail: str
    attempts: int = 0
    seconds: float = 0.0
    done: list[str] = field(default_factory=list)
    purged: int | None = None  # objects a tag purge removed (None: no tag purge answered)


class Unreachable(Exception):
    """No HTTP answer from the pod (connection refused, timeout, proxy could not connect)."""


class Sender(Protocol):
    """(status, reason, the start of the body) of one request to one pod."""

    def __call__(
        self, target: Target, action: Invalidation, token: str, timeout: float
    ) -> tuple[int, str, str]: ...


def invalidations(
    urls: Sequence[str],
    hosts: Sequence[str],
    bans: Sequence[str],
    tags: Sequence[str] = (),
    *,
    soft: bool = False,
) -> list[Invalidation]:
    """A PURGE per URL and Host; without --host a URL becomes a ban of exactly that URL at
    every Host (the cache key is URL + Host, and the Hosts clients used are not known). All
    tags go in one request, last: one xkey call per pod, and a pod that cannot purge by tag
    has done the rest."""
    found: list[Invalidation] = []
    for url in urls:
        if hosts:
            found += [Invalidation("purge", url=url, host=host) for host in hosts]
        else:
            found.append(Invalidation("ban", regex="^" + re.escape(url) + "$"))
    found += [
        Invalidation("ban", regex=regex, host=host) for regex in bans for host in hosts or [""]
    ]
    if tags:
        found.append(Invalidation("tag", tags=tuple(dict.fromkeys(tags)), soft=soft))
    return found


def check_inputs(
    urls: Sequence[str],
    hosts: Sequence[str],
    bans: Sequence[str],
    tags: Sequence[str] = (),
    *,
    soft: bool = False,
) -> list[str]:
    """What is wrong with the command's inputs, each naming the option and what it accepts."""
    problems = []
    for url in urls:
        if not url.startswith("/") or any(c.isspace() for c in url):
            problems.append(f"--url: {url} is invalid: a path starting with / (no spaces)")
    for host in hosts:
        if not host or any(c.isspace() or c in '"/' for c in host):
            problems.append(f"--host: {host} is invalid: a Host header value such as shop.example")
    for regex in bans:
        try:
            re.compile(regex)
        except re.error as err:
            problems.append(f"--ban: {regex} is invalid: a regular expression ({err})")
        if '"' in regex or any(c.isspace() for c in regex):
            problems.append(f"--ban: {regex} is invalid: no quotes or spaces (use \\s, \\x22)")
    for tag in tags:
        if not re.fullmatch(rf"[!-~]{{1,{MAX_TAG_LENGTH}}}", tag) or "," in tag:
            problems.append(
                f"--tag: {tag} is invalid: a tag as the backend sends it in the tag header "
                f"(printable ASCII without spaces or commas, at most {MAX_TAG_LENGTH} "
                "characters; repeat --tag for several)"
            )
    if soft and not tags:
        problems.append("--soft: only with --tag (a soft purge is by tag)")
    if hosts and not urls and not bans:
        problems.append("--host: only with --url or --ban (tags name objects at every Host)")
    if not urls and not bans and not tags:
        problems.append("nothing to invalidate: give --url PATH, --ban REGEX or --tag TAG")
    return problems


def cache_port(pod: Mapping[str, Any]) -> int | None:
    spec = pod.get("spec") or {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if container.get("name") == names.CONTAINER_VARNISH:
            for port in container.get("ports") or []:
                if port.get("name") == names.PORT_NAME_HTTP:
                    return int(port["containerPort"])
    return None


def classify(
    pods: Sequence[Mapping[str, Any]], only: Sequence[str]
) -> tuple[list[Target], list[PodResult]]:
    """The pods to send to, and the ones skipped with why (not injected, not started...)."""
    targets, skipped = [], []
    for pod in pods:
        metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
        name = str(metadata.get("name"))
        if only and name not in only:
            continue
        ip = str(status.get("podIP") or "")
        try:
            injected = read_status(pod) is not None
        except ValueError:
            injected = False
        port = cache_port(pod)
        if not injected or port is None:
            skipped.append(PodResult(name, ip, "skipped", "not injected: no cache"))
        elif status.get("phase") != "Running" or not ip:
            skipped.append(
                PodResult(
                    name,
                    ip,
                    "skipped",
                    f"phase {status.get('phase')}, no cache running yet (a cache starts empty)",
                )
            )
        else:
            targets.append(Target(name, ip, port, kube.pod_ready(pod)))
    missing = [
        name for name in only if name not in {p.get("metadata", {}).get("name") for p in pods}
    ]
    skipped += [PodResult(name, "", "failed", "no such pod matches") for name in missing]
    return targets, skipped


def purge_one(
    target: Target,
    actions: Sequence[Invalidation],
    *,
    send: Sender,
    token: str,
    timeout: float,
    retries: int,
    sleep: Callable[[float], None] = time.sleep,
) -> PodResult:
    """Every action on one pod, each retried on a transient failure; stops at the first
    action that fails for good (the rest would fail the same way)."""
    began = time.monotonic()
    result = PodResult(target.name, target.ip, "ok", "", 0)
    for action in actions:
        for attempt in range(retries + 1):
            if attempt:
                sleep(RETRY_PAUSE * 2 ** (attempt - 1))
            result.attempts += 1
            try:
                status, text, body = send(target, action, token, timeout)
            except Unreachable as err:
                result.result, result.detail = "unreachable", f"{action}: {err}"
                continue
            if 200 <= status < 300:
                result.result, result.detail = "ok", ""
                result.done.append(_done(action, body, result))
                break
            if action.kind == "tag" and status == TAGS_NOT_SUPPORTED:
                result.result = "unsupported"
                result.detail = f"{action}: tags not supported ({status} {text or body})".strip()
                break
            result.result, result.detail = "failed", f"{action}: {status} {text}".strip()
            if status in PERMANENT:
                break
        if result.result != "ok":
            break
    if result.result == "ok":
        result.detail = "; ".join(result.done)
    elif result.done:
        result.detail = "; ".join([*result.done, result.detail])
    result.seconds = round(time.monotonic() - began, 3)
    return result


def _done(action: Invalidation, body: str, result: PodResult) -> str:
    """What one action did; a tag purge adds its count of objects to the pod's."""
    if action.kind != "tag":
        return str(action)
    found = _PURGED.search(body)
    if not found:  # a VCL of the user's own (vcl-configmap) may answer without one
        return f"{action}: done (no count in the answer)"
    result.purged = (result.purged or 0) + int(found[1])
    return f"{action}: {found[1]} objects"


def fan_out(
    targets: Sequence[Target],
    actions: Sequence[Invalidation],
    *,
    send: Sender,
    token: str,
    timeout: float,
    retries: int,
    concurrency: int,
) -> list[PodResult]:
    """purge_one for each pod, at most `concurrency` at once; results in pod order."""
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(targets)))) as pool:
        futures = [
            pool.submit(
                purge_one, t, actions, send=send, token=token, timeout=timeout, retries=retries
            )
            for t in targets
        ]
        return [f.result() for f in futures]


# -- how a pod is reached ----------------------------------------------------------------------
def _reason(text: str) -> str:
    """The status line's reason, or the first line of a body, kept short."""
    return text.strip().splitlines()[0][:160] if text.strip() else ""


BODY_BYTES = 4096  # of an answer: enough for a count or an error page's first line


def send_direct(
    target: Target, action: Invalidation, token: str, timeout: float
) -> tuple[int, str, str]:
    """POST to the pod IP: from inside the cluster network (a Job, a pod, a VPN)."""
    connection = http.client.HTTPConnection(target.ip, target.port, timeout=timeout)
    headers = {names.PURGE_TOKEN_HEADER: token, "Connection": "close", **action.headers()}
    try:
        connection.request("POST", action.path, headers=headers)
        response = connection.getresponse()
        body = response.read(BODY_BYTES).decode(errors="replace")
        return response.status, response.reason, body
    except (OSError, http.client.HTTPException) as err:
        raise Unreachable(f"{type(err).__name__}: {err}") from None
    finally:
        connection.close()


def proxy_sender(cluster: kube.Cluster, namespace: str) -> Sender:
    """POST through the API server's pod proxy (pods/proxy create): from wherever kubectl
    works. The proxy passes the pod's status and body through (not its reason phrase); an
    error of its own is a Status."""

    def send(
        target: Target, action: Invalidation, token: str, timeout: float
    ) -> tuple[int, str, str]:
        headers = {names.PURGE_TOKEN_HEADER: token, **action.headers()}
        try:
            response: Any = cluster.core.connect_post_namespaced_pod_proxy_with_path(
                f"{target.name}:{target.port}",
                namespace,
                action.path.lstrip("/"),
                _headers=headers,
                _preload_content=False,
                _request_timeout=timeout,
            )
            try:
                body = response.read(BODY_BYTES).decode(errors="replace")
            finally:
                response.release_conn()
            return int(response.status), str(response.reason or ""), body
        except ApiException as err:
            if kube.is_status(err):
                text = kube.describe(err, "API server")
                if err.status in (502, 503, 504):  # the proxy could not reach the pod
                    raise Unreachable(text) from None
                return int(err.status or 0), text, ""
            body = str(err.body or "")
            return int(err.status or 0), str(err.reason or _reason(body)), body
        except Exception as err:  # urllib3 timeouts and connection errors
            raise Unreachable(f"{type(err).__name__}: {err}") from None

    return send


def token_from_secret(cluster: kube.Cluster, namespace: str) -> str:
    """The token of the namespace's Secret (get on that one Secret: resourceNames in RBAC)."""
    secret = kube.read(cluster, "Secret", namespace, names.PURGE_SECRET)
    raw = (secret.get("data") or {}).get(names.PURGE_SECRET_KEY)
    if not raw:
        raise kube.ClusterError(
            f"Secret {namespace}/{names.PURGE_SECRET} has no key {names.PURGE_SECRET_KEY}"
        )
    token = base64.b64decode(raw).decode(errors="replace").strip("\n")
    if len(token) < names.PURGE_TOKEN_MIN_LENGTH:
        raise kube.ClusterError(
            f"Secret {namespace}/{names.PURGE_SECRET} key {names.PURGE_SECRET_KEY}: shorter "
            f"than {names.PURGE_TOKEN_MIN_LENGTH} characters, which the caches refuse"
        )
    return token


def as_json(results: Sequence[PodResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
