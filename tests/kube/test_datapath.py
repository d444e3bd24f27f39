"""The data path through real objects: a headless Service's EndpointSlices, the cluster DNS
built from them, the injected HAProxy and Varnish of a Deployment's pods, the API server's pod
proxy. Models of these (tests/e2e) assumed what the real ones do; here they are asserted.

One setup for the module (a namespace, the purge token, a backend Deployment of 3 behind a
headless Service, a client Deployment of 2 injected pods); the tests run in file order and
each asserts against the state it finds (scaling leaves 5 backend pods, deletion a new pod).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.e2e.client import Client, Reply, Traffic, errors
from tests.kube.cluster import Cluster
from tests.kube.conftest import RUNNING_NAMESPACES, Kubectl, wait_for

BACKEND_SOURCE = Path(__file__).with_name("datapath_backend.py").read_text()
CLI = str(Path(sys.executable).with_name("cache-injector"))
CACHE_PORT = 6081  # cache-http
TOKEN = "datapath-" + uuid.uuid4().hex  # the namespace's purge token (16+ printable)
HOST = "shop.example"  # the Host clients use, so one PURGE with --host fits every pod

RESTRICTED: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
BACKEND_TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"app": "backend", "cache-injector.io/inject": "disabled"}},
    "spec": {
        "terminationGracePeriodSeconds": 10,
        "containers": [
            {
                "name": "app",
                "image": "python:3.13",
                "command": ["python3", "-c", BACKEND_SOURCE],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                ],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {
                    "httpGet": {"path": "/healthz", "port": "http"},
                    "periodSeconds": 1,
                },
                "securityContext": RESTRICTED,
            }
        ],
    },
}
# The client pod as submitted: what `uninject` must give back (test_uninject_gives_back...).
CLIENT_TEMPLATE: dict[str, Any] = {
    "metadata": {
        "labels": {"app": "client"},
        "annotations": {"cache-injector.io/backend": "backend:8080"},
    },
    "spec": {
        "containers": [
            {
                "name": "app",
                "image": "python:3.13",
                "command": [
                    "python3",
                    "-c",
                    "import signal, time\n"
                    "signal.signal(signal.SIGTERM, lambda *_: exit(0))\n"
                    "time.sleep(1e9)",
                ],
                "securityContext": RESTRICTED,
            }
        ]
    },
}


def deployment(name: str, replicas: int, template: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": template,
        },
    }


@dataclass
class Setup:
    cluster: Cluster
    kubectl: Kubectl
    namespace: str
    http: Client  # requests from the node's namespace (pod IPs are routable there)

    def pods(self, app: str) -> list[dict[str, Any]]:
        """The app's pods that run and are Ready, not terminating."""
        listing = self.kubectl.json("-n", self.namespace, "get", "pods", "-l", f"app={app}")
        return [
            pod
            for pod in listing["items"]
            if not pod["metadata"].get("deletionTimestamp")
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod.get("status", {}).get("conditions") or []
            )
        ]

    def get(self, ip: str, path: str, host: str | None = None) -> Reply:
        return self.http.get(path, host=ip, headers={"Host": host} if host else None)

    def rollout(self, name: str, timeout: int = 180) -> None:
        self.kubectl(
            "-n",
            self.namespace,
            "rollout",
            "status",
            f"deployment/{name}",
            f"--timeout={timeout}s",
            timeout=timeout + 10,
        )


@pytest.fixture(scope="module")
def setup(cluster: Cluster, kubectl: Kubectl) -> Iterator[Setup]:
    """The namespace with the purge Secret first (cache-varnish reads the token at start),
    then the backend and its headless Service, then the injected clients."""
    name = f"datapath-{uuid.uuid4().hex[:6]}"
    RUNNING_NAMESPACES.add(name)
    labels = {
        "cache-injector.io/inject": "enabled",
        "pod-security.kubernetes.io/enforce": "restricted",
    }
    meta = client.V1ObjectMeta(name=name, labels=labels)
    cluster.core.create_namespace(client.V1Namespace(metadata=meta))
    assert cluster.network is not None
    http = Client(cluster.network.node, "::1", CACHE_PORT, workers=16)
    try:
        cluster.wait_service_account(name)
        objects = [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "cache-injector-purge"},
                "stringData": {"token": TOKEN},
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "backend"},
                "spec": {
                    "clusterIP": "None",
                    "selector": {"app": "backend"},
                    "ports": [{"name": "http", "port": 8080, "targetPort": "http"}],
                },
            },
            deployment("backend", 3, BACKEND_TEMPLATE),
            deployment("client", 2, CLIENT_TEMPLATE),
        ]
        kubectl("-n", name, "apply", "-f", "-", input=yaml.safe_dump_all(objects))
        found = Setup(cluster, kubectl, name, http)
        found.rollout("backend")
        found.rollout("client")
        yield found
    finally:
        http.pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(client.exceptions.ApiException):
            cluster.core.delete_namespace(name)
        RUNNING_NAMESPACES.discard(name)


def pod_ip(pod: Mapping[str, Any]) -> str:
    return str(pod["status"]["podIP"])


def pod_names(pods: list[dict[str, Any]]) -> set[str]:
    return {str(p["metadata"]["name"]) for p in pods}


def answered_by(setup: Setup, ip: str, count: int, *, strict: bool = True) -> Counter[str]:
    """Which backend pod answered each of `count` uncacheable requests through one cache
    (strict: every one must be a 200; else the others count under their status)."""
    replies = [setup.get(ip, f"/nocache/{uuid.uuid4().hex}") for _ in range(count)]
    bad = [r.describe() for r in replies if r.status != 200]
    assert not (strict and bad), bad
    return Counter(r.pod if r.status == 200 else str(r.status) for r in replies)


def wait_all_answer(setup: Setup, ip: str, want: set[str], timeout: float) -> float:
    """Seconds until uncacheable requests through the cache at ip reached every pod of want:
    HAProxy learns pods from DNS answers built from the EndpointSlices."""
    began = time.monotonic()
    seen: Counter[str] = Counter()

    def check() -> bool:
        seen.update(answered_by(setup, ip, 2 * len(want), strict=False))
        return want <= set(seen)

    wait_for(f"traffic reaches {sorted(want)} (seen {dict(seen)})", check, timeout, 0.5)
    took = time.monotonic() - began
    print(f"\nall of {len(want)} pods answered through {ip} after {took:.1f} s: {dict(seen)}")
    return took


# -- 1. HIT, MISS, balance -------------------------------------------------------------------
def test_hit_miss_and_balance_over_headless_service(setup: Setup) -> None:
    """A miss goes to a backend pod found through DNS, the repeat is a HIT from the same
    object, and uncacheable requests are spread evenly over the 3 pods (round robin)."""
    backends = pod_names(setup.pods("backend"))
    assert len(backends) == 3
    client_ip = pod_ip(setup.pods("client")[0])
    wait_all_answer(setup, client_ip, backends, timeout=60)

    paths = [f"/static/{uuid.uuid4().hex}" for _ in range(6)]
    first = [setup.get(client_ip, p) for p in paths]
    second = [setup.get(client_ip, p) for p in paths]
    assert [r.status for r in first + second] == [200] * 12, [r.describe() for r in first]
    assert [r.cache for r in first] == ["MISS"] * 6
    assert [r.cache for r in second] == ["HIT"] * 6
    assert [r.body for r in second] == [r.body for r in first]  # the stored object
    assert Counter(r.pod for r in first) == Counter(dict.fromkeys(backends, 2))

    balance = answered_by(setup, client_ip, 30)
    print(f"\nmisses by pod: {dict(Counter(r.pod for r in first))}; 30 passes: {dict(balance)}")
    assert set(balance) == backends
    assert max(balance.values()) - min(balance.values()) <= 2, balance


# -- 2. scaling and rolling ------------------------------------------------------------------
def test_scale_up_then_rollout_restart_without_errors(setup: Setup) -> None:
    """New pods get traffic within HAProxy's DNS hold times; a rolling restart of the
    backend under steady traffic through the cache costs no request and no request waits
    on a gone pod twice. The backend exits at SIGTERM after a 5 s preStop sleep, as the
    Kubernetes docs advise: its address leaves DNS (ready=false) while it still serves.
    Without the preStop, a deleted pod's address times out at once (its network namespace
    is gone, it does not refuse, as the e2e model's stopped pods did), and on this machine a
    rollout of 5 pods in 2-4 s, faster than HAProxy learns the new pods (it re-resolves
    every second), cost 2-13 % of requests an instant 503 (no server left): measured
    (2026-12-06), not asserted; see docs/design.md."""
    client_ip = pod_ip(setup.pods("client")[0])
    setup.kubectl("-n", setup.namespace, "scale", "deployment/backend", "--replicas=5")
    setup.rollout("backend")
    five = pod_names(setup.pods("backend"))
    assert len(five) == 5
    seconds = wait_all_answer(setup, client_ip, five, timeout=60)
    print(f"\nscaled 3 -> 5: every pod answered {seconds:.1f} s after all 5 were Ready")
    pre_stop = {"preStop": {"sleep": {"seconds": 5}}}
    patch = [{"op": "add", "path": "/spec/template/spec/containers/0/lifecycle", "value": pre_stop}]
    setup.kubectl("-n", setup.namespace, "patch", "deployment/backend", "--type=json",
                  "-p", json.dumps(patch))  # fmt: skip
    setup.rollout("backend")
    # That rollout's old pods had no preStop: start once the cache reaches every new pod.
    wait_all_answer(setup, client_ip, pod_names(setup.pods("backend")), timeout=60)

    assert setup.cluster.network is not None
    sender = Client(setup.cluster.network.node, client_ip, CACHE_PORT, workers=32)
    traffic = Traffic(sender, lambda i: f"/nocache/roll-{i}", rate=20, timeout=15)
    traffic.start()
    try:
        time.sleep(2)
        began = time.monotonic()
        setup.kubectl("-n", setup.namespace, "rollout", "restart", "deployment/backend")
        setup.rollout("backend")
        rolled = time.monotonic() - began
        new = pod_names(setup.pods("backend"))
        time.sleep(3)
    finally:
        replies = traffic.stop()
        sender.pool.shutdown(wait=False)
    failed = errors(replies)
    slow = sorted(r.elapsed for r in replies)
    print(
        f"rollout {rolled:.1f} s: {len(replies)} requests, {len(failed)} errors, "
        f"p50 {slow[len(slow) // 2]:.3f} s, p99 {slow[int(len(slow) * 0.99)]:.3f} s, "
        f"max {slow[-1]:.3f} s, {sum(1 for s in slow if s > 1)} over 1 s; by pod "
        f"{dict(Counter(r.pod for r in replies))}"
    )
    assert len(replies) >= 20 * (rolled + 5) * 0.8  # the generator kept its rate
    client_name = next(
        p["metadata"]["name"] for p in setup.pods("client") if pod_ip(p) == client_ip
    )
    assert setup.cluster.node is not None
    runner = setup.cluster.node.runner(setup.namespace, client_name)
    log = runner.log_tail("cache-haproxy", 60) if runner else ""
    assert not failed, ([r.describe() for r in failed[:10]], log)
    # Two 2 s connect timeouts on pods that were gone (as before observe layer4): 4-8 s.
    assert slow[-1] < 2.5, [r.describe() for r in replies if r.elapsed >= 2.5][:10]
    assert not new & five and len(new) == 5
    wait_all_answer(setup, client_ip, new, timeout=60)


# -- 3. purge --------------------------------------------------------------------------------
def fill(setup: Setup, ips: list[str], path: str) -> None:
    """Store path in every cache: a MISS then a HIT on each."""
    for ip in ips:
        for want in ("MISS", "HIT"):
            reply = setup.get(ip, path, HOST)
            assert (reply.status, reply.cache) == (200, want), reply.describe()


def purge(setup: Setup, *args: str, node: bool = False) -> list[dict[str, Any]]:
    """`cache-injector purge -o json` for the client Deployment: from the host (the pod
    proxy), or inside the node's namespace with the node's kubeconfig (--via direct)."""
    assert setup.cluster.control is not None and setup.cluster.network is not None
    kubeconfig = setup.cluster.control.node_kubeconfig if node else setup.cluster.kubeconfig
    argv = [CLI, "purge", f"--kubeconfig={kubeconfig}", "-n", setup.namespace]
    argv += ["--deployment", "client", "-o", "json", *args]
    if node:
        argv = [*setup.cluster.network.node.exec_prefix(), *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    results: list[dict[str, Any]] = json.loads(done.stdout)["pods"]
    return results


@pytest.mark.parametrize("via", ["proxy", "direct"])
def test_purge_reaches_every_client_pod(setup: Setup, via: str) -> None:
    """After `purge` (a PURGE at one Host, and a ban of an exact URL at every Host) the next
    request for those URLs is a MISS on every client pod; another URL stays a HIT."""
    clients = setup.pods("client")
    assert len(clients) == 2
    ips = [pod_ip(p) for p in clients]
    backends = pod_names(setup.pods("backend"))
    for ip in ips:  # each cache's HAProxy knows the backend's current pods
        wait_all_answer(setup, ip, backends, timeout=60)
    tag = uuid.uuid4().hex[:8]
    purged, banned, kept = f"/static/{tag}/p", f"/static/{tag}/b", f"/static/{tag}/k"
    for path in (purged, banned, kept):
        fill(setup, ips, path)

    direct = via == "direct"
    extra = ["--via", "direct"] if direct else []
    results = purge(setup, "--url", purged, "--host", HOST, *extra, node=direct)
    results += purge(setup, "--url", banned, *extra, node=direct)
    print(f"\npurge --via {via}: " + "; ".join(f"{r['pod']} {r['result']}" for r in results))
    assert sorted(r["pod"] for r in results) == sorted([*pod_names(clients)] * 2)
    assert {r["result"] for r in results} == {"ok"}, results

    for ip in ips:
        after = {p: setup.get(ip, p, HOST) for p in (purged, banned, kept)}
        assert {p: (r.status, r.cache) for p, r in after.items()} == {
            purged: (200, "MISS"),
            banned: (200, "MISS"),
            kept: (200, "HIT"),
        }, [r.describe() for r in after.values()]


def test_purge_by_tag_reaches_every_client_pod(setup: Setup) -> None:
    """`purge --tag` (xkey, the backend's `xkey` header) removes exactly the tag's objects from
    every client pod, each pod counting them; an object under another tag stays a HIT."""
    clients = setup.pods("client")
    ips = [pod_ip(p) for p in clients]
    backends = pod_names(setup.pods("backend"))
    for ip in ips:
        wait_all_answer(setup, ip, backends, timeout=60)
    tag, other = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    tagged = [f"/static/{tag}/a", f"/static/{tag}/b"]
    kept = f"/static/{other}/c"
    for path in (*tagged, kept):
        fill(setup, ips, path)

    results = purge(setup, "--tag", f"t-{tag}")
    print("\npurge --tag: " + "; ".join(f"{r['pod']} {r['purged']}" for r in results))
    assert sorted(r["pod"] for r in results) == sorted(pod_names(clients))
    assert [(r["result"], r["purged"]) for r in results] == [("ok", 2)] * len(clients), results

    for ip in ips:
        after = {p: setup.get(ip, p, HOST) for p in (*tagged, kept)}
        assert {p: (r.status, r.cache) for p, r in after.items()} == {
            tagged[0]: (200, "MISS"),
            tagged[1]: (200, "MISS"),
            kept: (200, "HIT"),
        }, [r.describe() for r in after.values()]


# -- 4. uninject -----------------------------------------------------------------------------
def differences(a: Any, b: Any, path: str = "") -> set[str]:
    """Paths where b differs from a: keys only in one, or unequal values (lists of named
    items matched by name, other lists by position)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in a.keys() | b.keys():
            if key not in a or key not in b:
                out.add(f"{path}.{key}")
            else:
                out |= differences(a[key], b[key], f"{path}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        named = all(isinstance(x, dict) and "name" in x for x in a + b)
        if named:
            by_a = {x["name"]: x for x in a}
            by_b = {x["name"]: x for x in b}
            return differences(by_a, by_b, path)
        if len(a) == len(b):
            out = set()
            for index, (x, y) in enumerate(zip(a, b, strict=True)):
                out |= differences(x, y, f"{path}[{index}]")
            return out
    return set() if a == b else {path}


# What the stored pod has that the template as submitted has not, and who put it there.
SERVER_ADDED = {
    # The ReplicaSet controller: which template revision made the pod.
    ".metadata.labels.pod-template-hash",
    # API defaulting (pkg/apis/core/v1/defaults.go).
    ".spec.containers.app.imagePullPolicy",
    ".spec.containers.app.resources",
    ".spec.containers.app.terminationMessagePath",
    ".spec.containers.app.terminationMessagePolicy",
    ".spec.dnsPolicy",
    ".spec.enableServiceLinks",
    ".spec.restartPolicy",
    ".spec.schedulerName",
    ".spec.securityContext",
    ".spec.terminationGracePeriodSeconds",
    # The Priority admission plugin.
    ".spec.preemptionPolicy",
    ".spec.priority",
    # The ServiceAccount admission plugin: the account, its token volume and mount.
    ".spec.serviceAccount",
    ".spec.serviceAccountName",
    ".spec.volumes",
    ".spec.containers.app.volumeMounts",
    # The DefaultTolerationSeconds admission plugin.
    ".spec.tolerations",
    # The scheduler's binding.
    ".spec.nodeName",
}


def test_uninject_gives_back_the_pod_as_submitted(setup: Setup) -> None:
    """`uninject` of a stored injected pod equals the template as submitted, except for
    exactly what the API server and controllers add to any pod (SERVER_ADDED)."""
    name = setup.pods("client")[0]["metadata"]["name"]
    stored = setup.kubectl("-n", setup.namespace, "get", "pod", name, "-o", "yaml").stdout
    done = subprocess.run(
        [CLI, "uninject", "-f", "-"],
        input=stored,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    pod = yaml.safe_load(done.stdout)
    injected = yaml.safe_load(stored)
    assert [c["name"] for c in injected["spec"]["initContainers"]] == [
        "cache-haproxy",
        "cache-varnish",
    ]
    got = {
        "metadata": {k: pod["metadata"].get(k) for k in ("labels", "annotations")},
        "spec": pod["spec"],
    }
    diff = differences(CLIENT_TEMPLATE, got)
    assert "initContainers" not in pod["spec"]
    assert diff == SERVER_ADDED, (sorted(diff - SERVER_ADDED), sorted(SERVER_ADDED - diff))
    # The only volume left is the ServiceAccount token's, which the pod had before the
    # webhook ran (ours, cache-no-api-token included, are gone); only the app mounted it: the
    # plugin, run again after the webhook, skips our sidecars (they mount that path already).
    assert [v["name"].rsplit("-", 1)[0] for v in pod["spec"]["volumes"]] == ["kube-api-access"]
    token_mounts = {
        c["name"]
        for c in injected["spec"]["initContainers"] + injected["spec"]["containers"]
        if any(m["name"] == pod["spec"]["volumes"][0]["name"] for m in c["volumeMounts"])
    }
    assert token_mounts == {"app"}
    print(
        f"\nuninject: differs from the template at {len(diff)} server-added paths; "
        f"token mounted in {sorted(token_mounts)}"
    )


# -- 5. deletion -----------------------------------------------------------------------------
def test_delete_client_pod_drains_within_grace(setup: Setup) -> None:
    """A deleted client pod keeps serving through cache-varnish's preStop drain, then stops
    app, cache-varnish, cache-haproxy in that order, and is gone within its grace."""
    assert setup.cluster.node is not None
    pod = setup.pods("client")[0]
    name, ip = pod["metadata"]["name"], pod_ip(pod)
    grace = int(pod["spec"]["terminationGracePeriodSeconds"])
    runner = setup.cluster.node.runner(setup.namespace, name)
    assert runner is not None
    path = f"/static/{uuid.uuid4().hex}"
    fill(setup, [ip], path)

    began = time.monotonic()
    setup.kubectl("-n", setup.namespace, "delete", "pod", name, "--wait=false")
    time.sleep(1)
    during = setup.get(ip, path, HOST)  # within the 5 s preStop sleep: still serving

    def gone() -> bool:
        try:
            setup.cluster.core.read_namespaced_pod(name, setup.namespace)
        except client.exceptions.ApiException as err:
            return bool(err.status == 404)
        return False

    wait_for(f"pod {name} gone", gone, timeout=grace + 30, interval=0.1)
    took = time.monotonic() - began
    termination = runner.wait_terminated(timeout=10)
    assert termination is not None
    stops = termination.stops
    summary = {
        n: (
            round(s.sigterm_at - began, 2) if s.sigterm_at else None,
            round(s.exit_seconds, 2) if s.exit_seconds is not None else None,
            s.killed,
        )
        for n, s in stops.items()
    }
    print(
        f"\ndelete -> gone {took:.1f} s (grace {grace}); SIGTERM at, exit after, killed: {summary}"
    )
    assert (during.status, during.cache) == (200, "HIT"), during.describe()
    assert took <= grace + 5
    assert termination.order() == ["app", "cache-varnish", "cache-haproxy"]
    assert termination.exit_order() == ["app", "cache-varnish", "cache-haproxy"]
    assert not any(s.killed for s in stops.values()), summary
    pre_stop = stops["cache-varnish"].pre_stop
    assert pre_stop is not None and pre_stop[1] - pre_stop[0] >= 4.5  # the drain ran
    assert took >= 4.5
