"""Run an injected pod's sidecars for real: a tiny kubelet, no Kubernetes.

Owns: reading the pod `cache-injector inject` wrote, and running its `cache-*` containers the
way a kubelet would, as far as one machine without a container runtime allows:
- each container's `command`/`args`/`env` as written; the program is found on PATH (a
  directory of `haproxy`/`varnishd` symlinks comes first, which picks the daemon version);
  the image is ignored;
- volumes materialised under a world-readable pod directory: downwardAPI files from the pod's
  metadata, emptyDirs shared by the containers (medium Memory: a tmpfs of `sizeLimit`, as the
  kubelet mounts it); each container gets them at its `mountPath` in a private mount
  namespace, with `readOnly`, the kubelet's resolv.conf over /etc/resolv.conf and, for
  `readOnlyRootFilesystem`, the root remounted read-only;
- the pod's network namespace is the test's; a "pause" process holds the pod's mount
  namespace (its tmpfs volumes vanish with it);
- securityContext: runAsUser/runAsGroup, no_new_privs, every capability dropped (setpriv);
- native sidecars (init containers with restartPolicy Always) start in order, each after the
  previous one's startupProbe succeeded; readinessProbes are then run at their period and
  every transition is recorded; a container that exits is recorded (not restarted).
Every process is started in its own process group and stopped by that id.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import signal
import socket
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

BASE_DIR = Path(os.environ.get("CACHE_INJECTOR_E2E_DIR", "/var/tmp/cache-injector-e2e"))
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
QUANTITY = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "k": 1000, "M": 1000**2, "G": 1000**3}


def parse_quantity(text: str) -> int:
    for suffix, factor in QUANTITY.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def inject(pod: Mapping[str, Any], namespace: str, *, workdir: Path) -> dict[str, Any]:
    """The pod as `cache-injector inject` writes it (the CLI, as a user runs it)."""
    source = workdir / "pod.yaml"
    source.write_text(yaml.safe_dump(dict(pod), sort_keys=False))
    cli = Path(sys.executable).with_name("cache-injector")
    argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "webhook.cli"]
    done = subprocess.run(
        [*argv, "inject", "-f", str(source), "--namespace", namespace],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
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
        )


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


def _env(items: list[Mapping[str, Any]], metadata: Mapping[str, Any], pod_ip: str) -> list:
    out = []
    for item in items:
        if "value" in item:
            out.append((item["name"], str(item["value"])))
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
    """The parts of an injected pod the runner uses: our containers in start order, volumes."""

    name: str
    namespace: str
    metadata: dict[str, Any]
    containers: list[Container]
    volumes: dict[str, dict[str, Any]]

    @classmethod
    def parse(cls, manifest: Mapping[str, Any], *, pod_ip: str, prefix: str = "cache-") -> PodSpec:
        metadata = dict(manifest.get("metadata") or {})
        spec = manifest.get("spec") or {}
        containers = []
        entries = [(c, True) for c in spec.get("initContainers") or []]
        entries += [(c, False) for c in spec.get("containers") or []]
        for raw, in_init in entries:
            if not str(raw.get("name", "")).startswith(prefix):
                continue
            native = in_init and raw.get("restartPolicy") == "Always"
            if in_init and not native:
                raise NotImplementedError(f"{raw['name']}: plain init containers not emulated")
            ports = {p["name"]: p["containerPort"] for p in raw.get("ports") or [] if "name" in p}
            security = raw.get("securityContext") or {}
            probes = {
                key: Probe.parse(raw[key], ports) if raw.get(key) else None
                for key in ("startupProbe", "readinessProbe")
            }
            containers.append(
                Container(
                    name=raw["name"],
                    argv=tuple(str(a) for a in [*(raw.get("command") or []), *raw.get("args", [])]),
                    env=tuple(_env(raw.get("env") or [], metadata, pod_ip)),
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
                )
            )
        # Native sidecars start first, in order; then the regular containers.
        containers.sort(key=lambda c: not c.native_sidecar)
        return cls(
            name=str(metadata.get("name", "pod")),
            namespace=str(metadata.get("namespace", "default")),
            metadata=metadata,
            containers=containers,
            volumes={v["name"]: v for v in spec.get("volumes") or []},
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


# -- running it -----------------------------------------------------------------------------
@dataclass
class ContainerState:
    spec: Container
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    spawned_at: float = 0.0
    started_at: float | None = None  # startupProbe success
    ready: bool = False
    transitions: list[tuple[float, bool]] = field(default_factory=list)
    exit_code: int | None = None
    exited_at: float | None = None
    stop_seconds: float | None = None  # SIGTERM -> exit, at teardown

    @property
    def time_to_start(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.spawned_at


class PodRunner:
    """One pod: start() runs the sidecars; close() stops everything it started."""

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
    ) -> None:
        self.netns = netns
        self.pod_ip = pod_ip
        self.spec = PodSpec.parse(manifest, pod_ip=pod_ip)
        self.workdir = workdir
        self.daemons = dict(daemons)  # program name on PATH -> binary
        self.config_maps = dict(config_maps or {})
        self.states = {c.name: ContainerState(c) for c in self.spec.containers}
        self.pause: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._probe_pool = netns.executor(2)
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
        elif "configMap" in volume:
            data = self.config_maps[volume["configMap"]["name"]]
            items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in data]
            files = {item["path"]: data[item["key"]] for item in items}
        else:
            raise NotImplementedError(f"volume {name}: only downwardAPI, configMap, emptyDir")
        for path, text in files.items():
            file = target / path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(text)
            file.chmod(0o644)

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
            if log:
                out.close()  # type: ignore[union-attr]
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
                    options += f",size={parse_quantity(str(empty_dir['sizeLimit']))}"
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

    def container_argv(self, container: Container) -> list[str]:
        """How one container is started: pod namespaces, its own mounts, its user."""
        assert self.pause is not None
        script = ["set -e"]
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
        privileges = ["setpriv", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
        if container.uid is not None:
            privileges += [f"--reuid={container.uid}", f"--regid={container.gid}"]
            privileges += ["--clear-groups"]
        environment = ["env", "-i", f"PATH={self.workdir / 'bin'}:{SYSTEM_PATH}", "HOME=/"]
        environment += [f"{key}={value}" for key, value in container.env]
        script.append('exec "$@"')
        return [
            "nsenter",
            f"--target={self.pause.pid}",
            "--mount",
            "--net",
            "--",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            "\n".join(script),
            container.name,
            *privileges,
            *environment,
            *container.argv,
        ]

    # -- probes ------------------------------------------------------------------------------
    def _probe_once(self, probe: Probe) -> bool:
        def attempt() -> bool:
            if probe.kind == "tcp":
                with socket.create_connection((self.pod_ip, probe.port), timeout=probe.timeout):
                    return True
            connection = http.client.HTTPConnection(self.pod_ip, probe.port, timeout=probe.timeout)
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
            return
        deadline = state.spawned_at + probe.initial_delay + probe.period * probe.failures
        time.sleep(probe.initial_delay)
        while time.monotonic() < deadline:
            assert state.process is not None
            if state.process.poll() is not None:
                break
            if self._probe_once(probe):
                state.started_at = time.monotonic()
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"{state.spec.name}: startupProbe did not succeed "
            f"(exit code {state.process.poll() if state.process else None})\n"
            + self.log_tail(state.spec.name)
        )

    def _monitor_loop(self) -> None:
        """Readiness probes at their period (failureThreshold failures: unready; one success:
        ready), and exits."""
        failures = dict.fromkeys(self.states, 0)
        next_probe = dict.fromkeys(self.states, 0.0)
        while not self._stop.wait(0.2):
            now = time.monotonic()
            for name, state in self.states.items():
                if state.process is None:
                    continue
                if state.exit_code is None and state.process.poll() is not None:
                    state.exit_code, state.exited_at = state.process.returncode, now
                    self._set_ready(state, False)
                probe = state.spec.readiness
                if probe is None or state.exit_code is not None or now < next_probe[name]:
                    continue
                next_probe[name] = now + probe.period
                if self._probe_once(probe):
                    failures[name] = 0
                    self._set_ready(state, True)
                else:
                    failures[name] += 1
                    if failures[name] >= probe.failures:
                        self._set_ready(state, False)

    @staticmethod
    def _set_ready(state: ContainerState, ready: bool) -> None:
        if state.ready != ready:
            state.ready = ready
            state.transitions.append((time.monotonic(), ready))

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._prepare()
        self._start_pause()
        for state in self.states.values():
            state.log = self.workdir / "logs" / f"{state.spec.name}.log"
            state.spawned_at = time.monotonic()
            state.process = self._spawn(self.container_argv(state.spec), state.log)
            if state.spec.native_sidecar:
                self._wait_started(state)
        for state in self.states.values():
            if not state.spec.native_sidecar:
                self._wait_started(state)
            if state.spec.readiness is None:
                self._set_ready(state, True)
        self._monitor = threading.Thread(target=self._monitor_loop, daemon=True)
        self._monitor.start()
        self.wait_ready(timeout=30)

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
        """Containers that stopped on their own, with their exit codes."""
        return [
            f"{s.spec.name} exited with {s.exit_code}"
            for s in self.states.values()
            if s.exit_code is not None
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
                f"start={state.time_to_start}"
            )
        return "; ".join(parts)

    def identity(self, container: str) -> dict[str, str]:
        """Who the container's main process runs as, read back from /proc: uid, gid,
        effective capabilities, no_new_privs, and whether its root filesystem is read-only."""
        process = self.states[container].process
        assert process is not None
        status = dict(
            line.split(":\t", 1)
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
            if ":\t" in line
        )
        root = [
            line.split()
            for line in Path(f"/proc/{process.pid}/mountinfo").read_text().splitlines()
            if line.split()[4] == "/"
        ]
        return {
            "uid": status["Uid"].split()[0],
            "gid": status["Gid"].split()[0],
            "cap_eff": status["CapEff"].strip(),
            "no_new_privs": status["NoNewPrivs"].strip(),
            "root": root[-1][5].split(",")[0] if root else "?",
        }

    def log(self, container: str) -> str:
        log = self.states[container].log
        return log.read_text(errors="replace") if log and log.exists() else ""

    def log_tail(self, container: str, lines: int = 30) -> str:
        text = self.log(container).splitlines()[-lines:]
        return f"--- {container} log (last {len(text)} lines) ---\n" + "\n".join(text)

    def close(self) -> None:
        """Stop the containers in reverse order (SIGTERM, then SIGKILL after 10 s), then the
        pause process; the time each took to exit is kept."""
        self._stop.set()
        if self._monitor:
            self._monitor.join(timeout=5)
        for state in reversed(list(self.states.values())):
            if state.process is None:
                continue
            began = time.monotonic()
            stop_group(state.process, grace=10)
            if state.exit_code is None:
                state.stop_seconds = time.monotonic() - began
        if self.pause is not None:
            stop_group(self.pause, grace=2)
        self._probe_pool.shutdown(wait=False, cancel_futures=True)


def stop_group(process: subprocess.Popen[bytes], *, grace: float) -> None:
    """SIGTERM the process group we started (its id is the process's), SIGKILL it after grace."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    # Children left in the group (varnishd's worker, cc) go too.
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
