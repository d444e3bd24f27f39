"""One injected pod in its own little cluster: a network namespace with cluster DNS, backend
pods of the Service `app` in namespace `shop`, and the pod's sidecars, on 127.x addresses,
fd00::/8 ones (an IPv6-only cluster), or both (dual-stack).

Owns: the addresses of each address family, putting the pieces together, and taking all of
them down again (in close(), which runs even when starting failed half-way).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests import daemons
from tests.e2e.backends import BackendPod
from tests.e2e.client import Client
from tests.e2e.clusterdns import ClusterDNS, PodRecord, Service
from tests.e2e.netns import Netns
from tests.e2e.podrunner import BASE_DIR, PodRunner, inject
from tests.e2e.scenarios import record
from webhook.engine.names import VARNISH_WORKDIR

NAMESPACE = "shop"
SERVICE = "app"
SERVICE_PORT_NAME = "http"
BACKEND_PORT = 8080
FQDN = f"{SERVICE}.{NAMESPACE}.svc.cluster.local"
POD_IP = "127.0.2.1"  # the injected pod's IP; 127.0.0.1 is its localhost
DNS_IP = "127.0.3.10"  # the cluster DNS Service
OTHER_CLIENT_IP = "127.0.4.1"  # another pod, calling this one
LISTEN_PORT = 6081
METRICS_PORT = 6091


@dataclass(frozen=True)
class Family:
    """A cluster's address family: where the pod, its DNS, other pods and backends live.

    ipv4: 127.x (the original runner). ipv6: an IPv6-only cluster, fd00::/8 addresses only
    (lo keeps 127.0.0.1 and ::1, as in every pod). dual: dual-stack, IPv4 first (the
    kubelet probes the IPv4 pod IP, the pod and every backend pod also have an IPv6
    address; the Service has A and AAAA records). no-ipv6: IPv4 with IPv6 switched off in
    the pod (sysctl disable_ipv6: no ::1 either).
    """

    name: str
    pod_ip: str  # the pod IP the kubelet probes (status.podIP)
    pod_ip6: str | None  # the second pod IP of a dual-stack pod
    dns_ip: str
    other_client_ip: str
    v4: bool  # backend pods have an IPv4 address
    v6: bool  # backend pods have an IPv6 address

    def backend_addresses(self, index: int) -> tuple[str, str | None]:
        """(ip, ip6) of backend pod number `index` (from 0)."""
        v4 = f"127.0.1.{index + 1}" if index < 254 else f"127.1.{index // 254}.{index % 254 + 1}"
        v6 = f"fd00:1::{index + 1:x}"
        if self.v4:
            return v4, (v6 if self.v6 else None)
        return v6, None


FAMILIES = {
    "ipv4": Family("ipv4", POD_IP, None, DNS_IP, OTHER_CLIENT_IP, v4=True, v6=False),
    "ipv6": Family("ipv6", "fd00:2::1", None, "fd00:3::a", "fd00:4::1", v4=False, v6=True),
    "dual": Family("dual", POD_IP, "fd00:2::1", DNS_IP, OTHER_CLIENT_IP, v4=True, v6=True),
    "no-ipv6": Family("no-ipv6", POD_IP, None, DNS_IP, OTHER_CLIENT_IP, v4=True, v6=False),
}

_counter = itertools.count(1)
_counter_lock = threading.Lock()


@dataclass(frozen=True)
class Generation:
    """The daemon versions a pod runs: `newest` (the default images) or `oldest` (Debian 12)."""

    name: str
    haproxy: daemons.Daemon
    varnish: daemons.Daemon

    @property
    def label(self) -> str:
        return f"{self.haproxy.label}/{self.varnish.label}"


GENERATIONS = {"newest": daemons.NEWEST, "oldest": daemons.OLDEST}


def generation(name: str) -> Generation:
    """The daemons of one generation; skips (fails under CI=true) when one is missing."""
    labels = GENERATIONS[name]
    return Generation(name, daemons.require(labels["haproxy"]), daemons.require(labels["varnish"]))


# An application container that idles until SIGTERM, then exits 0 at once (as PID 1, a
# process without a SIGTERM handler would ignore it until SIGKILL).
APP_IDLE = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "while True:\n"
    "    time.sleep(60)\n"
)
APP_USER = 1001


def app_container(name: str, script: str) -> dict[str, Any]:
    """A regular container the runner runs: python3 -c script, as a non-root user."""
    return {
        "name": name,
        "image": "example/web:1",
        "command": ["python3", "-c", script],
        "securityContext": {"runAsUser": APP_USER, "runAsGroup": APP_USER},
    }


def make_pod(
    annotations: Mapping[str, str],
    *,
    containers: list[dict[str, Any]] | None = None,
    restart_policy: str | None = None,
    grace: int | None = None,
) -> dict[str, Any]:
    """A labelled pod of the Deployment `web` whose cache should front Service `app`. Its
    container `web` has no command (the runner does not run it) unless `containers` says."""
    spec: dict[str, Any] = {"containers": containers or [{"name": "web", "image": "example/web:1"}]}
    if restart_policy is not None:
        spec["restartPolicy"] = restart_policy
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-0",
            "namespace": NAMESPACE,
            "labels": {"app": "web", "cache-injector.io/inject": "enabled"},
            "annotations": dict(annotations),
        },
        "spec": spec,
    }


class PodEnv:
    """Start with `with PodEnv(...) as env:`; everything is stopped on exit."""

    def __init__(
        self,
        gen: Generation,
        *,
        annotations: Mapping[str, str] | None = None,
        backends: int = 3,
        edit_haproxy_cfg: Callable[[str], str] | None = None,
        edit_vcl: Callable[[str], str] | None = None,
        edit_pod: Callable[[dict[str, Any]], None] | None = None,
        pod: Mapping[str, Any] | None = None,
        policy: str | None = None,
        before_start: Callable[[PodEnv], None] | None = None,
        label: str = "pod",
        family: str = "ipv4",
        secrets: Mapping[str, Mapping[str, str]] | None = None,
        config_maps: Mapping[str, Mapping[str, str]] | None = None,
        backend_tls: ssl.SSLContext | None = None,
        pod_name: str = "web-0",
        memory_limits: bool = False,
    ) -> None:
        with _counter_lock:
            number = next(_counter)
        self.gen = gen
        self.name = f"cie2e-{os.getpid()}-{number}"
        self.workdir = BASE_DIR / self.name
        self.annotations = {"cache-injector.io/backend": f"{SERVICE}:{BACKEND_PORT}"}
        self.annotations.update(annotations or {})
        self.initial_backends = backends
        self.edits = {
            "cache-injector.io/haproxy-cfg": edit_haproxy_cfg,
            "cache-injector.io/vcl": edit_vcl,
        }
        self.edit_pod = edit_pod  # changes the injected pod before it runs
        self.pod_manifest = dict(pod) if pod is not None else None  # else make_pod()
        self.policy = policy  # policy YAML for `cache-injector inject --policy`
        self.before_start = before_start  # called just before the pod's containers start
        self.family = FAMILIES[family]
        self.label = label if family == "ipv4" else f"{label}-{family}"
        self.secrets = dict(secrets or {})  # Secrets of namespace shop: name -> key -> value
        self.config_maps = dict(config_maps or {})  # ConfigMaps of namespace shop, the same
        self.backend_tls = backend_tls  # backend pods serve HTTPS only, with this context
        self.pod_name = pod_name
        self.memory_limits = memory_limits  # run containers in memory cgroups of their limit
        self.backends: dict[str, BackendPod] = {}
        self._next_backend = itertools.count(0)
        self.netns: Netns | None = None
        self.dns: ClusterDNS | None = None
        self.pod: PodRunner | None = None
        self.client: Client | None = None
        self.client6: Client | None = None  # to the IPv6 pod IP of a dual-stack pod
        self.manifest: dict[str, Any] = {}

    # -- set-up ------------------------------------------------------------------------------
    def __enter__(self) -> PodEnv:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.netns = Netns(self.name)
        family = self.family
        if family.name == "no-ipv6":
            self.netns.disable_ipv6()
        for address in (family.pod_ip, family.pod_ip6, family.dns_ip, family.other_client_ip):
            if address:
                self.netns.add_address(address)
        self.dns = ClusterDNS(self.netns, family.dns_ip)
        self.dns.set_service(
            Service(NAMESPACE, SERVICE, {SERVICE_PORT_NAME: BACKEND_PORT}, pods=[])
        )
        self.dns.start()
        for _ in range(self.initial_backends):
            self.add_backend()
        pod = self.pod_manifest or make_pod({})
        if not self.pod_manifest:
            pod["metadata"]["name"] = self.pod_name
        pod["metadata"]["annotations"] = {**self.annotations, **pod["metadata"]["annotations"]}
        self.manifest = inject(pod, NAMESPACE, workdir=self.workdir, policy=self.policy_text())
        notes = self.manifest["metadata"]["annotations"]
        for key, edit in self.edits.items():
            if edit:  # a scenario that runs a deliberately different config (negative control)
                notes[key] = edit(notes[key])
        if self.edit_pod:
            self.edit_pod(self.manifest)
        self.pod = PodRunner(
            self.manifest,
            netns=self.netns,
            pod_ip=family.pod_ip,
            nameserver=family.dns_ip,
            daemons=self.programs(),
            workdir=self.workdir,
            secrets=self.secrets,
            config_maps=self.config_maps,
            memory_limits=self.memory_limits,
        )
        self.client = Client(self.netns, family.pod_ip, LISTEN_PORT)
        if family.pod_ip6:
            self.client6 = Client(self.netns, family.pod_ip6, LISTEN_PORT)
        if self.before_start:
            self.before_start(self)
        self.pod.start()
        for container, seconds in self.sidecar_start_seconds().items():
            record("sidecar time to ready", self.gen.label, f"{container} s", seconds)

    def programs(self) -> dict[str, str]:
        """What each container's image would put on PATH, from this generation: the daemons,
        varnishncsa (cache-access-log) and, when the pod runs it, the exporter with the
        generation's varnishstat (cache-varnish-exporter's image)."""
        varnishd = self.gen.varnish.path
        programs = {
            "haproxy": self.gen.haproxy.path,
            "varnishd": varnishd,
            "varnishncsa": daemons.varnish_tool(varnishd, "varnishncsa"),
            "varnishstat": daemons.varnish_tool(varnishd, "varnishstat"),
        }
        wanted = {str(c.get("name")) for c in self.manifest["spec"].get("initContainers") or []} | {
            str(c.get("name")) for c in self.manifest["spec"].get("containers") or []
        }
        if "cache-varnish-exporter" in wanted:
            programs["prometheus_varnish_exporter"] = daemons.require_exporter()
        return programs

    def policy_text(self) -> str | None:
        """The policy given, with the images of this generation unless it names its own: the
        injector tunes varnishd's arguments to the image's version (transit_buffer)."""
        if self.gen.name != "oldest":
            return self.policy
        data = yaml.safe_load(self.policy or "") or {}
        data.setdefault("images", {}).setdefault("varnish", "varnish:7.1")
        data["images"].setdefault("haproxy", "haproxy:2.6")
        return yaml.safe_dump(data)

    def close(self) -> None:
        steps: list[Callable[[], None]] = []
        if self.pod:
            steps.append(self.pod.close)
        steps += [backend.stop for backend in self.backends.values()]
        if self.dns:
            steps.append(self.dns.stop)
        if self.netns:
            steps.append(self.netns.close)
        for step in steps:
            with contextlib.suppress(Exception):
                step()
        if os.environ.get("CACHE_INJECTOR_E2E_KEEP") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- the backend Service -----------------------------------------------------------------
    def add_backend(self, *, in_dns: bool = True) -> BackendPod:
        """A new pod of Service `app`, at the next free address, started and ready."""
        assert self.netns and self.dns
        index = next(self._next_backend)
        ip, ip6 = self.family.backend_addresses(index)
        for address in (ip, ip6):
            if address:
                self.netns.add_address(address)
        backend = BackendPod(
            self.netns, f"app-{index}", ip, BACKEND_PORT, ip6=ip6, tls=self.backend_tls
        )
        backend.start()
        self.backends[backend.name] = backend
        if in_dns:
            self.dns.add_pod(NAMESPACE, SERVICE, self.record(backend))
        return backend

    @staticmethod
    def record(backend: BackendPod) -> PodRecord:
        """The backend pod as the cluster DNS publishes it."""
        return PodRecord(backend.name, backend.ip, backend.ip6)

    def remove_backend(self, name: str, *, stop: bool = True) -> None:
        """Scale down: the pod leaves DNS and (like a terminated pod) stops."""
        assert self.dns
        self.dns.remove_pod(NAMESPACE, SERVICE, name)
        if stop:
            self.backends[name].stop()

    def families(self) -> dict[str, int]:
        """Requests the backend pods got (health checks aside), by address family."""
        total: dict[str, int] = {}
        for backend in self.backends.values():
            for family, count in backend.families.items():
                total[family] = total.get(family, 0) + count
        return dict(sorted(total.items()))

    def running_backends(self) -> list[BackendPod]:
        return [b for b in self.backends.values() if b.running]

    # -- conveniences ------------------------------------------------------------------------
    @property
    def http(self) -> Client:
        assert self.client
        return self.client

    @property
    def http6(self) -> Client:
        assert self.client6
        return self.client6

    @property
    def runner(self) -> PodRunner:
        assert self.pod
        return self.pod

    def haproxy_log(self) -> str:
        return self.runner.log("cache-haproxy")

    def varnishstat(self, *fields: str) -> dict[str, int]:
        """Counters of the pod's varnishd by full name (`MAIN.n_object`; a field may be a glob
        such as `MAIN.*`), read in cache-varnish with the generation's varnishstat, as
        `kubectl exec` would."""
        program = daemons.varnish_tool(self.gen.varnish.path, "varnishstat")
        selected = [part for field in fields for part in ("-f", field)]
        out = self.runner.exec(
            "cache-varnish", [program, "-n", VARNISH_WORKDIR, "-1", *selected], timeout=30
        )
        counters = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                counters[parts[0]] = int(parts[1])
        return counters

    def diagnostics(self) -> str:
        """What to print when a scenario fails: pod state and the sidecars' last log lines."""
        parts = [f"pod {self.label} ({self.gen.label}): {self.runner.describe()}"]
        parts += self.runner.exited() + self.runner.unready_periods()
        parts += [self.runner.log_tail("cache-haproxy"), self.runner.log_tail("cache-varnish")]
        return "\n".join(parts)

    def sidecar_start_seconds(self) -> dict[str, float]:
        return {
            name: round(state.time_to_start, 3)
            for name, state in self.runner.states.items()
            if state.time_to_start is not None and state.spec.native_sidecar
        }


def stop_seconds(env: PodEnv) -> dict[str, float | None]:
    """How long each sidecar took to exit after SIGTERM when the pod was closed."""
    return {
        name: None if state.stop_seconds is None else round(state.stop_seconds, 2)
        for name, state in env.runner.states.items()
    }


def wait_for(
    condition: Callable[[], bool], *, timeout: float, interval: float = 0.2
) -> float | None:
    """Seconds until condition() held, or None when it did not within timeout."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if condition():
            return time.monotonic() - began
        time.sleep(interval)
    return None


def root_cleanup() -> None:
    """Remove the base directory when empty (no pod of any run left)."""
    with contextlib.suppress(OSError):
        Path(BASE_DIR).rmdir()


@dataclass
class Observed:
    """What a background scenario saw, for its test to judge after the pod is gone."""

    label: str  # the daemon generation
    family: str  # the address family
    replies: list[Any]  # client.Reply, in the order sent
    marks: dict[str, float]  # named moments (time.monotonic())
    backend_requests: dict[str, int]
    exited: list[str]
    unready: list[str]
    diagnostics: str
    haproxy_log: str
    extra: dict[str, Any]


def observe(env: PodEnv, replies: list[Any], marks: dict[str, float], **extra: Any) -> Observed:
    return Observed(
        label=env.gen.label,
        family=env.family.name,
        replies=replies,
        marks=marks,
        backend_requests={name: b.total() for name, b in env.backends.items()},
        exited=env.runner.exited(),
        unready=env.runner.unready_periods(),
        diagnostics=env.diagnostics(),
        haproxy_log=env.haproxy_log(),
        extra={"families": env.families(), **extra},
    )


def mixed_path(index: int) -> str:
    """Steady traffic: a third uncached, a third long-lived objects, a third that expire every
    2 s (so misses and background refreshes keep flowing through HAProxy)."""
    kind = index % 3
    if kind == 0:
        return f"/nocache/{index}"
    if kind == 1:
        return f"/static/{index % 20}"
    return f"/short/{index % 10}"
