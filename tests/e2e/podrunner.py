"""Run an injected pod's containers for real: a tiny kubelet, no Kubernetes.

Owns: reading the pod `cache-injector inject` wrote, and running its containers the way a
kubelet would, as far as one machine without a container runtime allows:
- the `cache-*` containers, and any other regular container the test gave a `command` (the
  application: a Python one-liner, curl...); a container without one is not run (there is no
  image to take an entrypoint from). Each runs its `command`/`args`/`env` as written; the
  program is found on PATH (a directory of `haproxy`/`varnishd` symlinks comes first, which
  picks the daemon version);
- volumes materialised under a world-readable pod directory: downwardAPI files from the pod's
  metadata, emptyDirs shared by the containers (medium Memory: a tmpfs of `sizeLimit`, as the
  kubelet mounts it); each container gets them at its `mountPath` in a private mount
  namespace, with `readOnly`, the kubelet's resolv.conf over /etc/resolv.conf and, for
  `readOnlyRootFilesystem`, the root remounted read-only;
- each container has its own PID namespace, as under a container runtime: its main process
  is PID 1, receives the stop signal alone, and takes every other process of the container
  with it when it dies. The pod's network namespace is the test's; a "pause" process holds
  the pod's mount namespace (its tmpfs volumes vanish with it);
- securityContext: runAsUser/runAsGroup, no_new_privs, every capability dropped (setpriv);
- start: native sidecars (init containers with restartPolicy Always) in order, each after the
  previous one's startupProbe succeeded, then the regular containers; readinessProbes run at
  their period and every transition is recorded;
- restarts: a native sidecar that exits (and a regular container, per the pod's
  restartPolicy) is started again with the kubelet's crash back-off, then probed again
  (startupProbe, readinessProbe);
- termination (terminate()): the kubelet's, with termination ordering for native sidecars;
  also when every regular container of a Job-like pod (restartPolicy Never/OnFailure) is done.
See tests/e2e/README.md ("Kubelet behaviour") for the semantics and their sources.
Every process is started in its own process group and stopped by its id.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.netns import Netns
from webhook.engine.values import parse_size

BASE_DIR = Path(os.environ.get("CACHE_INJECTOR_E2E_DIR", "/var/tmp/cache-injector-e2e"))
PID1 = Path(__file__).with_name("pid1.py")  # forks the container's PID 1, reports its exit
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The kubelet's numbers (pkg/kubelet/kubelet.go, kuberuntime_container.go).
DEFAULT_GRACE_SECONDS = 30  # terminationGracePeriodSeconds when the pod sets none
MINIMUM_GRACE_SECONDS = 2  # minimumGracePeriodInSeconds: never less to stop a container
BACKOFF_INITIAL_SECONDS = 10.0  # backOffPeriod
BACKOFF_MAX_SECONDS = 300.0  # MaxContainerBackOff
TEARDOWN_GRACE_SECONDS = 10  # close(): the test's own clean-up, not a kubelet behaviour


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_UNVERIFIED = _unverified()  # HTTPS probes, as the kubelet's: no certificate check


def memory_cgroup_root() -> Path | None:
    """This process's cgroup v1 memory directory, when the host has one we may write to."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                root = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
                if (root / "memory.limit_in_bytes").exists() and os.access(root, os.W_OK):
                    return root
    return None


def inject(
    pod: Mapping[str, Any], namespace: str, *, workdir: Path, policy: str | None = None
) -> dict[str, Any]:
    """The pod as `cache-injector inject` writes it (the CLI, as a user runs it)."""
    source = workdir / "pod.yaml"
    source.write_text(yaml.safe_dump(dict(pod), sort_keys=False))
    cli = Path(sys.executable).with_name("cache-injector")
    argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "webhook.cli"]
    argv += ["inject", "-f", str(source), "--namespace", namespace]
    if policy is not None:
        (workdir / "policy.yaml").write_text(policy)
        argv += ["--policy", str(workdir / "policy.yaml")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"cache-injector inject failed: {done.stderr.strip()}")
    (workdir / "injected.yaml").write_text(done.stdout)
    injected = yaml.safe_load(done.stdout)
    assert isinstance(injected, dict), done.stdout
    return injected


# -- the pod as written ---------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    kind: str  # "http" or "tcp"
    port: int
    path: str | None
    period: float
    failures: int
    timeout: float
    initial_delay: float
    https: bool = False  # httpGet.scheme HTTPS: the kubelet does not verify the certificate

    @classmethod
    def parse(cls, spec: Mapping[str, Any], ports: Mapping[str, int]) -> Probe:
        if "httpGet" in spec:
            kind, action = "http", spec["httpGet"]
        elif "tcpSocket" in spec:
            kind, action = "tcp", spec["tcpSocket"]
        else:
            raise NotImplementedError(f"probe {spec}: only httpGet and tcpSocket are emulated")
        port = action["port"]
        return cls(
            kind=kind,
            port=ports[port] if isinstance(port, str) else int(port),
            path=action.get("path"),
            period=float(spec.get("periodSeconds", 10)),
            failures=int(spec.get("failureThreshold", 3)),
            timeout=float(spec.get("timeoutSeconds", 1)),
            initial_delay=float(spec.get("initialDelaySeconds", 0)),
            https=str(action.get("scheme", "HTTP")).upper() == "HTTPS",
        )


@dataclass(frozen=True)
class Hook:
    """A lifecycle handler: the kubelet's `sleep` action, or `exec` in the container."""

    kind: str  # "sleep" or "exec"
    seconds: int = 0
    command: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> Hook:
        if "sleep" in spec:
            return cls("sleep", seconds=int(spec["sleep"]["seconds"]))
        if "exec" in spec:
            return cls("exec", command=tuple(str(c) for c in spec["exec"]["command"]))
        raise NotImplementedError(f"lifecycle handler {spec}: only sleep and exec are emulated")


@dataclass(frozen=True)
class Mount:
    volume: str
    path: str
    read_only: bool


@dataclass(frozen=True)
class Container:
    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    mounts: tuple[Mount, ...]
    startup: Probe | None
    readiness: Probe | None
    uid: int | None
    gid: int | None
    read_only_root: bool
    native_sidecar: bool
    pre_stop: Hook | None = None
    memory_limit: int | None = None  # resources.limits.memory, bytes


def _env(
    items: list[Mapping[str, Any]],
    metadata: Mapping[str, Any],
    pod_ip: str,
    secrets: Mapping[str, Mapping[str, str]],
) -> list[tuple[str, str]]:
    """(name, value) of the env entries that set a value, in order."""
    out: list[tuple[str, str]] = []
    for item in items:
        if "value" in item:
            out.append((item["name"], str(item["value"])))
            continue
        secret = item.get("valueFrom", {}).get("secretKeyRef")
        if secret is not None:
            # As the kubelet: an optional reference to a missing Secret or key sets nothing.
            value = (secrets.get(secret["name"]) or {}).get(secret["key"])
            if value is None and not secret.get("optional"):
                raise NotImplementedError(f"env {item}: a required Secret that is missing")
            if value is not None:
                out.append((item["name"], value))
            continue
        path = item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        known = {
            "metadata.name": metadata.get("name", ""),
            "metadata.namespace": metadata.get("namespace", ""),
            "status.podIP": pod_ip,
        }
        if path not in known:
            raise NotImplementedError(f"env {item}: not emulated")
        out.append((item["name"], known[path]))
    return out


@dataclass
class PodSpec:
    """The parts of an injected pod the runner uses: the containers it runs, in start order
    (native sidecars, then regular containers), volumes, grace period and restart policy."""

    name: str
    namespace: str
    metadata: dict[str, Any]
    containers: list[Container]
    volumes: dict[str, dict[str, Any]]
    grace: int = DEFAULT_GRACE_SECONDS
    restart_policy: str = "Always"
    service_account: str = "default"

    @classmethod
    def parse(
        cls,
        manifest: Mapping[str, Any],
        *,
        pod_ip: str,
        prefix: str = "cache-",
        secrets: Mapping[str, Mapping[str, str]] | None = None,
    ) -> PodSpec:
        metadata = dict(manifest.get("metadata") or {})
        spec = manifest.get("spec") or {}
        containers = []
        entries = [(c, True) for c in spec.get("initContainers") or []]
        entries += [(c, False) for c in spec.get("containers") or []]
        for raw, in_init in entries:
            ours = str(raw.get("name", "")).startswith(prefix)
            if not ours and (in_init or not raw.get("command")):
                continue  # nothing to run: the image's entrypoint is not available here
            native = in_init and raw.get("restartPolicy") == "Always"
            if in_init and not native:
                raise NotImplementedError(f"{raw['name']}: plain init containers not emulated")
            ports = {p["name"]: p["containerPort"] for p in raw.get("ports") or [] if "name" in p}
            security = raw.get("securityContext") or {}
            probes = {
                key: Probe.parse(raw[key], ports) if raw.get(key) else None
                for key in ("startupProbe", "readinessProbe")
            }
            pre_stop = (raw.get("lifecycle") or {}).get("preStop")
            memory = ((raw.get("resources") or {}).get("limits") or {}).get("memory")
            containers.append(
                Container(
                    name=raw["name"],
                    argv=tuple(str(a) for a in [*(raw.get("command") or []), *raw.get("args", [])]),
                    env=tuple(_env(raw.get("env") or [], metadata, pod_ip, secrets or {})),
                    mounts=tuple(
                        Mount(m["name"], m["mountPath"], bool(m.get("readOnly")))
                        for m in raw.get("volumeMounts") or []
                    ),
                    startup=probes["startupProbe"],
                    readiness=probes["readinessProbe"],
                    uid=security.get("runAsUser"),
                    gid=security.get("runAsGroup", security.get("runAsUser")),
                    read_only_root=bool(security.get("readOnlyRootFilesystem")),
                    native_sidecar=native,
                    pre_stop=Hook.parse(pre_stop) if pre_stop else None,
                    memory_limit=parse_size(str(memory)) if memory else None,
                )
            )
        # Native sidecars start first, in order; then the regular containers.
        containers.sort(key=lambda c: not c.native_sidecar)
        grace = spec.get("terminationGracePeriodSeconds")
        return cls(
            name=str(metadata.get("name", "pod")),
            namespace=str(metadata.get("namespace", "default")),
            metadata=metadata,
            containers=containers,
            volumes={v["name"]: v for v in spec.get("volumes") or []},
            grace=DEFAULT_GRACE_SECONDS if grace is None else int(grace),
            restart_policy=str(spec.get("restartPolicy") or "Always"),
            service_account=str(spec.get("serviceAccountName") or "default"),
        )


def field_value(metadata: Mapping[str, Any], field_path: str) -> str:
    """A downward API fieldRef on the pod's metadata."""
    for kind in ("annotations", "labels"):
        head = f"metadata.{kind}['"
        if field_path.startswith(head) and field_path.endswith("']"):
            return str((metadata.get(kind) or {}).get(field_path[len(head) : -2], ""))
    if field_path in ("metadata.name", "metadata.namespace"):
        return str(metadata.get(field_path.split(".")[1], ""))
    raise NotImplementedError(f"fieldRef {field_path}: not emulated")


# -- what happened ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Exit:
    at: float
    code: int | None  # the runtime's exit status; negative: killed by that signal
    terminating: bool  # during the pod's termination (not a crash)


@dataclass
class Stop:
    """One container's part in a kubelet-style termination (times: time.monotonic())."""

    began: float
    pre_stop: tuple[float, float] | None = None  # the hook ran from .. to
    sigterm_at: float | None = None
    grace: int | None = None  # seconds the runtime gave it after SIGTERM
    exited_at: float | None = None
    killed: bool = False  # SIGKILL when its grace ran out

    @property
    def exit_seconds(self) -> float | None:
        """SIGTERM -> exit."""
        if self.sigterm_at is None or self.exited_at is None:
            return None
        return self.exited_at - self.sigterm_at


@dataclass
class PodTermination:
    reason: str  # "deleted" or "completed" (every regular container of a Job-like pod done)
    began: float
    grace: int
    finished: float | None = None
    stops: dict[str, Stop] = field(default_factory=dict)

    def order(self) -> list[str]:
        """Containers in the order they received SIGTERM."""
        timed = [(s.sigterm_at, name) for name, s in self.stops.items() if s.sigterm_at]
        return [name for _, name in sorted(timed)]

    def exit_order(self) -> list[str]:
        timed = [(s.exited_at, name) for name, s in self.stops.items() if s.exited_at]
        return [name for _, name in sorted(timed)]


@dataclass
class ContainerState:
    spec: Container
    process: subprocess.Popen[bytes] | None = None  # pid1.py, the parent of the PID 1
    main_pid: int | None = None  # the container's PID 1, as the host sees it
    log: Path | None = None
    spawned_at: float = 0.0
    started_at: float | None = None  # startupProbe success (this incarnation)
    ready: bool = False
    transitions: list[tuple[float, bool]] = field(default_factory=list)
    exit_code: int | None = None  # this incarnation's, once it exited
    exited_at: float | None = None
    exits: list[Exit] = field(default_factory=list)
    restarts: list[float] = field(default_factory=list)  # when each restart was spawned
    started: list[tuple[float, float]] = field(default_factory=list)  # (spawned, ready to serve)
    restart_due: float | None = None  # a restart waits for its back-off until then
    errors: list[str] = field(default_factory=list)
    stop_seconds: float | None = None  # SIGTERM -> exit, at close() (the test's teardown)

    @property
    def time_to_start(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.spawned_at

    @property
    def running(self) -> bool:
        return self.process is not None and self.exit_code is None


class Backoff:
    """The kubelet's crash back-off (client-go flowcontrol.Backoff as kuberuntime uses it):
    a container's first restart is immediate; each later one waits, from the moment the
    container exited, 10 s, then 20, 40 ... at most 300 s. The count starts over once the
    container exits more than 600 s (2 x the maximum) after its last restart."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, float]] = {}  # key -> (back-off, last update)

    def restart_at(self, key: str, finished_at: float) -> float:
        entry = self._entries.get(key)
        if entry is None or finished_at - entry[1] > 2 * BACKOFF_MAX_SECONDS:
            return finished_at
        return finished_at + entry[0]

    def restarted(self, key: str, finished_at: float, now: float) -> None:
        entry = self._entries.get(key)
        if entry is None or finished_at - entry[1] > 2 * BACKOFF_MAX_SECONDS:
            delay = BACKOFF_INITIAL_SECONDS
        else:
            delay = min(entry[0] * 2, BACKOFF_MAX_SECONDS)
        self._entries[key] = (delay, now)

    def current(self, key: str) -> float:
        entry = self._entries.get(key)
        return 0.0 if entry is None else entry[0]


# -- running it -----------------------------------------------------------------------------
class PodRunner:
    """One pod: start() runs it; terminate() deletes it as a kubelet does; close() stops
    everything it started (the test's teardown)."""

    def __init__(
        self,
        manifest: Mapping[str, Any],
        *,
        netns: Netns,
        pod_ip: str,
        nameserver: str,
        daemons: Mapping[str, str],
        workdir: Path,
        cluster_domain: str = "cluster.local",
        config_maps: Mapping[str, Mapping[str, str]] | None = None,
        secrets: Mapping[str, Mapping[str, str]] | None = None,
        tokens: Mapping[str, str] | None = None,
        memory_limits: bool = False,
    ) -> None:
        self.netns = netns
        self.pod_ip = pod_ip
        self.spec = PodSpec.parse(manifest, pod_ip=pod_ip, secrets=secrets)
        self.workdir = workdir
        self.daemons = dict(daemons)  # program name on PATH -> binary
        self.config_maps = dict(config_maps or {})
        self.secrets = dict(secrets or {})
        self.tokens = dict(tokens or {})  # ServiceAccount name -> token (projected volumes)
        self.states = {c.name: ContainerState(c) for c in self.spec.containers}
        self.pause: subprocess.Popen[bytes] | None = None
        self.backoff = Backoff()
        self.termination: PodTermination | None = None
        self.completed_at: float | None = None  # every regular container done (Job-like pod)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._closing = False
        self._monitor: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._terminated = threading.Event()
        self._probe_pool = netns.executor(2)
        # memory_limits: each container with resources.limits.memory runs in a memory cgroup
        # of that limit, as under a runtime (tmpfs emptyDirs are charged to whoever writes
        # them): over the limit the kernel OOM-kills it, and usage and peak can be read.
        self.cgroups: dict[str, Path] = {}
        root = memory_cgroup_root() if memory_limits else None
        for container in self.spec.containers:
            if root is not None and container.memory_limit:
                group = root / f"{workdir.name}-{container.name}"
                group.mkdir(exist_ok=True)
                (group / "memory.limit_in_bytes").write_text(str(container.memory_limit))
                self.cgroups[container.name] = group
        ns = self.spec.namespace
        self.resolv_conf = (
            f"search {ns}.svc.{cluster_domain} svc.{cluster_domain} {cluster_domain}\n"
            f"nameserver {nameserver}\n"
            "options ndots:5\n"
        )

    # -- files -------------------------------------------------------------------------------
    def _prepare(self) -> None:
        for directory in (BASE_DIR, self.workdir):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o755)  # the daemons run as other users and must read their configs
        for sub in ("volumes", "logs", "bin"):
            (self.workdir / sub).mkdir(mode=0o755, exist_ok=True)
        (self.workdir / "resolv.conf").write_text(self.resolv_conf)
        (self.workdir / "resolv.conf").chmod(0o644)
        for program, binary in self.daemons.items():
            link = self.workdir / "bin" / program
            link.unlink(missing_ok=True)
            link.symlink_to(binary)
        for name, volume in self.spec.volumes.items():
            self._materialise(name, volume)
        for container in self.spec.containers:
            for mount in container.mounts:
                ensure_mount_point(mount.path)
        ensure_mount_point("/etc/resolv.conf")

    def _materialise(self, name: str, volume: Mapping[str, Any]) -> None:
        target = self.workdir / "volumes" / name
        target.mkdir(exist_ok=True)
        if "emptyDir" in volume:
            target.chmod(0o777)  # an emptyDir is world-writable
            return  # Memory ones are mounted as tmpfs once the pause process runs
        target.chmod(0o755)
        files: dict[str, str] = {}
        if "downwardAPI" in volume:
            for item in volume["downwardAPI"]["items"]:
                files[item["path"]] = field_value(self.spec.metadata, item["fieldRef"]["fieldPath"])
        elif "configMap" in volume or "secret" in volume:
            files = self._source_files(volume)
        elif "projected" in volume:
            for source in volume["projected"].get("sources") or []:
                if "serviceAccountToken" in source:
                    token = source["serviceAccountToken"]
                    account = str(self.spec.service_account)
                    if account not in self.tokens:
                        raise NotImplementedError(f"volume {name}: no token for {account}")
                    files[token["path"]] = self.tokens[account]
                else:
                    files.update(self._source_files(source))
        else:
            raise NotImplementedError(
                f"volume {name}: only downwardAPI, configMap, secret, projected, emptyDir"
            )
        for path, text in files.items():
            file = target / path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(text)
            file.chmod(0o644)

    def _source_files(self, source: Mapping[str, Any]) -> dict[str, str]:
        """The files of a configMap, secret or downwardAPI volume (or projected source)."""
        if "downwardAPI" in source:
            return {
                item["path"]: field_value(self.spec.metadata, item["fieldRef"]["fieldPath"])
                for item in source["downwardAPI"]["items"]
            }
        kind = "configMap" if "configMap" in source else "secret"
        ref = source[kind]
        name = str(ref.get("secretName") or ref.get("name"))  # a volume's, or a projection's
        store = self.config_maps if kind == "configMap" else self.secrets
        data = store.get(name)
        if data is None:
            if ref.get("optional"):
                return {}
            raise NotImplementedError(f"{kind} {name}: missing (the kubelet would wait for it)")
        items = ref.get("items") or [{"key": k, "path": k} for k in data]
        return {item["path"]: data[item["key"]] for item in items if item["key"] in data}

    # -- processes ---------------------------------------------------------------------------
    def _spawn(self, argv: list[str], log: Path | None) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped by that id
            )
        finally:
            if not isinstance(out, int):  # a log file, not DEVNULL
                out.close()
        with open(self.workdir / "pids", "a") as pids:
            pids.write(f"{process.pid}\n")
        return process

    def _start_pause(self) -> None:
        self.pause = self._spawn(
            [
                *self.netns.exec_prefix(),
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sleep",
                "86400",
            ],
            None,
        )
        deadline = time.monotonic() + 10
        own = os.readlink("/proc/self/ns/mnt")
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if (
                    Path(f"/proc/{self.pause.pid}/comm").read_text().strip() == "sleep"
                    and os.readlink(f"/proc/{self.pause.pid}/ns/mnt") != own
                ):
                    break
            time.sleep(0.02)
        else:
            raise RuntimeError("the pod's pause process did not start")
        for name, volume in self.spec.volumes.items():
            empty_dir = volume.get("emptyDir")
            if empty_dir is not None and empty_dir.get("medium") == "Memory":
                options = "mode=0777"
                if empty_dir.get("sizeLimit"):
                    options += f",size={parse_size(str(empty_dir['sizeLimit']))}"
                self._nsenter_mount(["-t", "tmpfs", "-o", options, "tmpfs"], name)

    def _nsenter_mount(self, args: list[str], volume: str) -> None:
        assert self.pause is not None
        target = str(self.workdir / "volumes" / volume)
        subprocess.run(
            ["nsenter", f"--target={self.pause.pid}", "--mount", "--", "mount", *args, target],
            check=True,
            capture_output=True,
            timeout=10,
        )

    def _privileges(self, container: Container) -> list[str]:
        privileges = ["setpriv", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
        if container.uid is not None:
            privileges += [f"--reuid={container.uid}", f"--regid={container.gid}"]
            privileges += ["--clear-groups"]
        return privileges

    def _environment(self, container: Container) -> list[str]:
        environment = ["env", "-i", f"PATH={self.workdir / 'bin'}:{SYSTEM_PATH}", "HOME=/"]
        return environment + [f"{key}={value}" for key, value in container.env]

    def container_argv(self, container: Container) -> list[str]:
        """How one container is started: pod namespaces, its own mounts and PID namespace (its
        program is PID 1), its user."""
        assert self.pause is not None
        script = ["set -e", "mount -t proc proc /proc"]  # this PID namespace's
        for mount in container.mounts:
            source = shlex.quote(str(self.workdir / "volumes" / mount.volume))
            target = shlex.quote(mount.path)
            script.append(f"mount --bind {source} {target}")
            if mount.read_only:
                script.append(f"mount -o remount,bind,ro {target}")
        resolv = shlex.quote(str(self.workdir / "resolv.conf"))
        script.append(f"mount --bind {resolv} /etc/resolv.conf")
        if container.read_only_root:
            script.append("mount -o remount,bind,ro /")
        script.append("cd /")
        script.append('exec "$@"')
        # In its memory cgroup before anything of the container runs (pid1.py, the runner's
        # shim, is charged too: a few MiB the real runtime would not count).
        enter_cgroup: list[str] = []
        if container.name in self.cgroups:
            tasks = shlex.quote(str(self.cgroups[container.name] / "tasks"))
            enter_cgroup = ["sh", "-c", f'echo $$ > {tasks} && exec "$@"', "cgroup"]
        return [
            *enter_cgroup,
            "nsenter",
            f"--target={self.pause.pid}",
            "--mount",
            "--net",
            "--",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--",
            sys.executable,
            str(PID1),
            "sh",
            "-c",
            "\n".join(script),
            container.name,
            *self._privileges(container),
            *self._environment(container),
            *container.argv,
        ]

    def _exec_argv(self, state: ContainerState, command: tuple[str, ...]) -> list[str]:
        """An exec handler: the command in the container's namespaces, as its user."""
        assert state.main_pid is not None
        return [
            "nsenter",
            f"--target={state.main_pid}",
            "--mount",
            "--net",
            "--pid",
            "--",
            *self._privileges(state.spec),
            *self._environment(state.spec),
            *command,
        ]

    def _start_container(self, state: ContainerState) -> None:
        """Spawn one incarnation of a container (not waiting for its probes)."""
        state.log = self.workdir / "logs" / f"{state.spec.name}.log"
        state.spawned_at = time.monotonic()
        state.started_at = None
        state.exit_code = state.exited_at = None
        state.process = self._spawn(self.container_argv(state.spec), state.log)
        state.main_pid = child_pid(state.process.pid)

    # -- probes ------------------------------------------------------------------------------
    def _probe_once(self, probe: Probe) -> bool:
        def attempt() -> bool:
            if probe.kind == "tcp":
                with socket.create_connection((self.pod_ip, probe.port), timeout=probe.timeout):
                    return True
            connection: http.client.HTTPConnection
            if probe.https:
                connection = http.client.HTTPSConnection(
                    self.pod_ip, probe.port, timeout=probe.timeout, context=_UNVERIFIED
                )
            else:
                connection = http.client.HTTPConnection(
                    self.pod_ip, probe.port, timeout=probe.timeout
                )
            try:
                connection.request(
                    "GET",
                    probe.path or "/",
                    headers={"User-Agent": "kube-probe/1.30", "Accept": "*/*"},
                )
                status = connection.getresponse().status
            finally:
                connection.close()
            return 200 <= status < 400

        try:
            return self._probe_pool.submit(attempt).result(timeout=probe.timeout + 5)
        except Exception:
            return False

    def _wait_started(self, state: ContainerState) -> None:
        """The startupProbe, polled every 0.05 s (for the figure) within the kubelet's deadline:
        initialDelaySeconds + periodSeconds x failureThreshold."""
        probe = state.spec.startup
        if probe is None:
            state.started_at = time.monotonic()
            state.started.append((state.spawned_at, state.started_at))
            return
        deadline = state.spawned_at + probe.initial_delay + probe.period * probe.failures
        time.sleep(probe.initial_delay)
        while time.monotonic() < deadline:
            assert state.process is not None
            if state.process.poll() is not None:
                break
            if self._probe_once(probe):
                state.started_at = time.monotonic()
                state.started.append((state.spawned_at, state.started_at))
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"{state.spec.name}: startupProbe did not succeed "
            f"(exit code {state.process.poll() if state.process else None})\n"
            + self.log_tail(state.spec.name)
        )

    def _monitor_loop(self) -> None:
        """Every 0.1 s: exits (restart or pod completion), due restarts, and readiness probes
        at their period (failureThreshold failures: unready; one success: ready)."""
        failures = dict.fromkeys(self.states, 0)
        next_probe = dict.fromkeys(self.states, 0.0)
        while not self._stop.wait(0.1):
            now = time.monotonic()
            for name, state in self.states.items():
                with self._lock:
                    if state.running and state.process and state.process.poll() is not None:
                        self._exited(state, now)
                    due = state.restart_due
                    if (
                        due is not None
                        and now >= due
                        and not self._closing
                        and not (self.termination)
                    ):
                        state.restart_due = None
                        failures[name], next_probe[name] = 0, 0.0
                        self._background(self._restart, state)
                probe = state.spec.readiness
                if (
                    probe is None
                    or not state.running
                    or state.started_at is None
                    or now < next_probe[name]
                ):
                    continue
                next_probe[name] = now + probe.period
                if self._probe_once(probe):
                    failures[name] = 0
                    self._set_ready(state, True)
                else:
                    failures[name] += 1
                    if failures[name] >= probe.failures:
                        self._set_ready(state, False)
            self._check_completed(now)

    def _exited(self, state: ContainerState, now: float) -> None:
        """Record an exit; schedule the restart the kubelet would make (with its back-off)."""
        assert state.process is not None
        state.exit_code, state.exited_at = state.process.returncode, now
        terminating = self.termination is not None or self._closing
        state.exits.append(Exit(now, state.exit_code, terminating))
        self._set_ready(state, False)
        if terminating:
            return
        policy = self.spec.restart_policy
        if (
            state.spec.native_sidecar
            or policy == "Always"
            or (policy == "OnFailure" and state.exit_code != 0)
        ):
            state.restart_due = self.backoff.restart_at(state.spec.name, now)

    def _restart(self, state: ContainerState) -> None:
        with self._lock:
            if self._closing or self.termination is not None:
                return
            finished = state.exited_at or time.monotonic()
            self.backoff.restarted(state.spec.name, finished, time.monotonic())
            assert state.log is not None
            with open(state.log, "a") as log:
                log.write(f"--- podrunner: restart {len(state.restarts) + 1} ---\n")
            self._start_container(state)
            state.restarts.append(state.spawned_at)
        try:
            self._wait_started(state)
        except RuntimeError as err:
            # The kubelet kills a container whose startupProbe fails, and restarts it.
            state.errors.append(str(err).splitlines()[0])
            self._kill(state)
            return
        if state.spec.readiness is None:
            self._set_ready(state, True)

    def _check_completed(self, now: float) -> None:
        """A pod whose regular containers are all done and will not restart (restartPolicy
        Never, or OnFailure after success) is stopped as a whole, sidecars included."""
        regular = [s for s in self.states.values() if not s.spec.native_sidecar]
        if not regular or self.spec.restart_policy == "Always" or self.completed_at is not None:
            return
        with self._lock:
            if self.termination is not None or self._closing:
                return
            if all(not s.running and s.restart_due is None for s in regular):
                self.completed_at = now
                self._background(self.terminate, None, "completed")

    def _background(self, function: Any, *args: Any) -> None:
        thread = threading.Thread(target=function, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    @staticmethod
    def _set_ready(state: ContainerState, ready: bool) -> None:
        if state.ready != ready:
            state.ready = ready
            state.transitions.append((time.monotonic(), ready))

    # -- signals -------------------------------------------------------------------------------
    def signal(self, container: str, signum: int) -> None:
        """Send a signal to a container's main process (its PID 1), as `kill` in it would."""
        state = self.states[container]
        if state.running and state.main_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.main_pid, signum)

    def catches(self, container: str, signum: int) -> bool:
        """Whether the container's PID 1 has a handler for signum (SigCgt): as PID 1 of its
        namespace, a process without one never sees that signal."""
        pid = self.states[container].main_pid
        with contextlib.suppress(OSError, StopIteration, ValueError):
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            caught = int(next(x for x in status if x.startswith("SigCgt:")).split()[1], 16)
            return bool(caught & (1 << (signum - 1)))
        return False

    def _kill(self, state: ContainerState) -> None:
        """SIGKILL: the PID 1 and with it every process of the container."""
        if state.main_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.main_pid, signal.SIGKILL)
        if state.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(state.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                state.process.wait(timeout=5)

    def _stop_container(self, state: ContainerState, grace: float) -> tuple[float, bool]:
        """The runtime's StopContainer: SIGTERM to PID 1, SIGKILL after `grace` seconds.
        Returns when it exited and whether it had to be killed."""
        assert state.process is not None
        if state.process.poll() is None:
            self.signal(state.spec.name, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                state.process.wait(timeout=grace)
        killed = state.process.poll() is None
        exited = time.monotonic()
        self._kill(state)
        return exited, killed

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._prepare()
        self._start_pause()
        for state in self.states.values():
            self._start_container(state)
            if state.spec.native_sidecar:
                self._wait_started(state)
        for state in self.states.values():
            if not state.spec.native_sidecar:
                self._wait_started(state)
            if state.spec.readiness is None:
                self._set_ready(state, True)
        self._monitor = threading.Thread(target=self._monitor_loop, daemon=True)
        self._monitor.start()
        if self.spec.restart_policy == "Always":
            self.wait_ready(timeout=30)

    def terminate(self, grace: int | None = None, reason: str = "deleted") -> PodTermination:
        """Stop the pod as the kubelet does (kuberuntime killContainersWithSyncResult): every
        running container at once runs its preStop hook (bounded by the grace period), then
        gets SIGTERM; a native sidecar first waits (within what is left of its grace) until
        every regular container and every sidecar defined after it has exited; at SIGTERM the
        runtime gets the grace left, at least 2 s, before SIGKILL. No restarts from then on.
        Returns when every container is gone; a second call waits for the first."""
        with self._lock:
            if self.termination is not None:
                ongoing = self.termination
            else:
                ongoing = None
                seconds = self.spec.grace if grace is None else grace
                self.termination = PodTermination(reason, time.monotonic(), seconds)
                for state in self.states.values():
                    state.restart_due = None
        if ongoing is not None:
            self._terminated.wait(timeout=ongoing.grace + 30)
            return ongoing
        termination = self.termination
        assert termination is not None
        done = {name: threading.Event() for name in self.states}
        for name, state in self.states.items():
            if not state.running:
                done[name].set()
        # The termination ordering (kuberuntime_termination_order.go): a sidecar waits for
        # every regular container, and for the next sidecar in definition order.
        prereqs: dict[str, list[threading.Event]] = {}
        regular = [done[n] for n, s in self.states.items() if not s.spec.native_sidecar]
        later: threading.Event | None = None
        for name, state in reversed(list(self.states.items())):
            if state.spec.native_sidecar:
                prereqs[name] = regular + ([later] if later else [])
                later = done[name]
        workers = []
        for name, state in self.states.items():
            if not state.running:
                continue
            stop = termination.stops[name] = Stop(began=termination.began)
            worker = threading.Thread(
                target=self._terminate_container,
                args=(state, stop, termination.grace, prereqs.get(name, []), done[name]),
                daemon=True,
            )
            workers.append(worker)
            worker.start()
        for worker in workers:
            worker.join(timeout=termination.grace + MINIMUM_GRACE_SECONDS + 30)
        termination.finished = time.monotonic()
        self._terminated.set()
        return termination

    def _terminate_container(
        self,
        state: ContainerState,
        stop: Stop,
        grace: int,
        prereqs: list[threading.Event],
        done: threading.Event,
    ) -> None:
        try:
            hook = state.spec.pre_stop
            if hook is not None and grace > 0:
                began = time.monotonic()
                self._run_hook(state, hook, grace)
                stop.pre_stop = (began, time.monotonic())
                grace -= int(stop.pre_stop[1] - began)  # whole seconds, as the kubelet counts
            if prereqs and grace > 0:
                began = time.monotonic()
                for event in prereqs:
                    if not event.wait(timeout=max(0.0, began + grace - time.monotonic())):
                        break
                grace -= int(time.monotonic() - began)
            stop.grace = max(grace, MINIMUM_GRACE_SECONDS)
            stop.sigterm_at = time.monotonic()
            stop.exited_at, stop.killed = self._stop_container(state, stop.grace)
            with self._lock:
                if state.exit_code is None and state.process is not None:
                    state.exit_code, state.exited_at = state.process.returncode, stop.exited_at
                    state.exits.append(Exit(stop.exited_at, state.exit_code, True))
                    self._set_ready(state, False)
        finally:
            done.set()

    def _run_hook(self, state: ContainerState, hook: Hook, grace: int) -> None:
        """A preStop handler; the kubelet waits for it at most the grace period."""
        if hook.kind == "sleep":
            time.sleep(min(hook.seconds, grace))
            return
        process = self._spawn(self._exec_argv(state, hook.command), state.log)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass  # the kubelet stops waiting; the command dies with the container
        finally:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)

    def delete(self, grace: int | None = None) -> float:
        """Start terminate() in the background (`kubectl delete pod`, optionally with
        --grace-period); returns when it began. wait_terminated() gives the outcome."""
        began = time.monotonic()
        self._background(self.terminate, grace)
        return began

    def wait_terminated(self, timeout: float) -> PodTermination | None:
        """The termination (a Job-like pod's completion, or a deletion) once it finished."""
        if self._terminated.wait(timeout=timeout):
            return self.termination
        return None

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready:
                return
            time.sleep(0.1)
        raise RuntimeError(f"pod not ready after {timeout} s: {self.describe()}")

    @property
    def ready(self) -> bool:
        return all(state.ready for state in self.states.values())

    def exited(self) -> list[str]:
        """Containers that stopped on their own (not by the pod's termination), with codes."""
        return [
            f"{s.spec.name} exited with {e.code}"
            for s in self.states.values()
            for e in s.exits
            if not e.terminating
        ]

    def unready_periods(self) -> list[str]:
        out = []
        for state in self.states.values():
            for at, ready in state.transitions[1:]:
                out.append(f"{state.spec.name} {'ready' if ready else 'NOT ready'} at {at:.1f}")
        return out

    def describe(self) -> str:
        parts = []
        for state in self.states.values():
            parts.append(
                f"{state.spec.name}: ready={state.ready} exit={state.exit_code} "
                f"start={state.time_to_start} restarts={len(state.restarts)}"
                + (f" errors={state.errors}" if state.errors else "")
            )
        return "; ".join(parts)

    def identity(self, container: str) -> dict[str, str]:
        """Who the container's main process runs as, read back from /proc: uid, gid,
        effective capabilities, no_new_privs, whether its root filesystem is read-only, and
        its PID in the container (1)."""
        pid = self.states[container].main_pid
        assert pid is not None
        status = dict(
            line.split(":\t", 1)
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if ":\t" in line
        )
        root = [
            line.split()
            for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
            if line.split()[4] == "/"
        ]
        return {
            "uid": status["Uid"].split()[0],
            "gid": status["Gid"].split()[0],
            "cap_eff": status["CapEff"].strip(),
            "no_new_privs": status["NoNewPrivs"].strip(),
            "root": root[-1][5].split(",")[0] if root else "?",
            "pid": status["NSpid"].split()[-1],  # as the container sees it
        }

    def memory(self, container: str) -> tuple[int, int, int] | None:
        """(usage, peak, limit) in bytes of the container's memory cgroup, if it has one."""
        group = self.cgroups.get(container)
        if group is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            return (
                int((group / "memory.usage_in_bytes").read_text()),
                int((group / "memory.max_usage_in_bytes").read_text()),
                int((group / "memory.limit_in_bytes").read_text()),
            )
        return None

    def exec(self, container: str, command: list[str], *, timeout: float = 20) -> str:
        """Run a command in a running container (as `kubectl exec`): its stdout."""
        argv = self._exec_argv(self.states[container], tuple(command))
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"exec {command} in {container}: {done.stderr.strip()}")
        return done.stdout

    def log(self, container: str) -> str:
        log = self.states[container].log
        return log.read_text(errors="replace") if log and log.exists() else ""

    def log_tail(self, container: str, lines: int = 30) -> str:
        text = self.log(container).splitlines()[-lines:]
        return f"--- {container} log (last {len(text)} lines) ---\n" + "\n".join(text)

    def close(self) -> None:
        """The test's teardown, not a kubelet behaviour: no hooks; the containers still running
        are stopped in reverse order (SIGTERM to PID 1, SIGKILL after 10 s), then the pause
        process. The time each took to exit is kept (stop_seconds)."""
        with self._lock:
            self._closing = True
        self._stop.set()
        if self._monitor:
            self._monitor.join(timeout=10)
        for thread in self._threads:
            thread.join(timeout=1)
        for state in reversed(list(self.states.values())):
            if state.process is None:
                continue
            if state.running and state.process.poll() is None:
                began = time.monotonic()
                exited, _ = self._stop_container(state, TEARDOWN_GRACE_SECONDS)
                state.stop_seconds = exited - began
            self._kill(state)
        for thread in self._threads:  # a termination or restart still under way
            thread.join(timeout=TEARDOWN_GRACE_SECONDS + 5)
        if self.pause is not None:
            stop_group(self.pause, grace=2)
        self._probe_pool.shutdown(wait=False, cancel_futures=True)
        for group in self.cgroups.values():  # empty now; charges move to the parent
            with contextlib.suppress(OSError):
                group.rmdir()


def child_pid(pid: int, timeout: float = 10) -> int:
    """The PID 1 of a container: the only child of its pid1.py."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.005)
    raise RuntimeError(f"process {pid} started no container process")


def stop_group(process: subprocess.Popen[bytes], *, grace: float) -> None:
    """SIGTERM the process group we started (its id is the process's), SIGKILL it after grace."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


_created_mount_points: list[Path] = []
_mount_points_lock = threading.Lock()


def ensure_mount_point(path: str) -> None:
    """A bind mount needs its target to exist on the host: create a missing one (an empty
    directory, or file for /etc/resolv.conf), remembered for remove_mount_points()."""
    target = Path(path)
    with _mount_points_lock:
        if target.exists():
            return
        missing = [target]
        while not missing[-1].parent.exists():
            missing.append(missing[-1].parent)
        target.mkdir(parents=True, exist_ok=True)
        _created_mount_points.extend(missing)


def process_alive(pid: int) -> bool:
    """Whether pid runs (a zombie, killed but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def other_runs_alive() -> bool:
    """Whether another e2e run (another process) still has pods on this machine."""
    if not BASE_DIR.is_dir():
        return False
    for directory in BASE_DIR.iterdir():
        parts = directory.name.split("-")
        if (
            len(parts) == 3
            and parts[0] == "cie2e"
            and parts[1].isdigit()
            and int(parts[1]) != os.getpid()
            and process_alive(int(parts[1]))
        ):
            return True
    return False


def remove_mount_points() -> None:
    """Remove the empty directories ensure_mount_point created, once no pod runs. Not while
    another run's pods use them: removing a directory detaches the mounts on it in every
    mount namespace."""
    with _mount_points_lock:
        if other_runs_alive():
            return
        for path in sorted(_created_mount_points, key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                path.rmdir()
        _created_mount_points.clear()
