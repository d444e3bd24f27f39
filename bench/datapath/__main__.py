"""Data-path benchmark: the injected pod's sidecars, run for real by the e2e pod runner.

    python -m bench.datapath [--duration 5] [--rounds 2] [--generations newest,oldest]

Needs root (network and mount namespaces), the daemons (`make daemons`) and wrk. For each
daemon generation (HAProxy 3.4 + Varnish 8.0, Debian's 2.6 + 7.1), in a network namespace
with cluster DNS and one backend pod (varnishd answering synth responses: a few µs, the same
for every variant), it measures:
- start: from spawning the first sidecar to Varnish answering its /.cache/ready (the
  startupProbe) and to the first request proxied to the backend pod answering 200;
- idle memory with an empty cache: VmRSS of every process of each container (its PID
  namespace), split into anonymous, file and shared-memory pages, and what the Memory
  emptyDirs hold (tmpfs pages count toward a container's memory in Kubernetes, not RSS);
  the footprint per container and in total, as a memory cgroup charges it: PSS of its
  processes plus its Memory emptyDirs (tests/e2e/footprint.py), idle and after the load;
- HAProxy's own report (`show info`) of the maxconn and fd limit it chose, and the
  RLIMIT_NOFILE it started with (the highest this machine allows);
- cache HITs (one object) with wrk: first 64 connections at once on each idle pod (threads
  started on demand must not show as errors or a latency cliff), then, after a warm-up, at
  1 and 8 connections, keep-alive: requests/s, p50, p99 - through the injected pod and
  through a plain varnishd: the same rendered VCL and arguments less the injector's hasher,
  thread and log settings (stock varnishd), with the backend pointed straight at the backend
  pod, and no HAProxy container.
  Both pods run side by side and are measured in turn (the order alternates by round),
  after a warm-up: measured one after the other, the first pod started came out up to 15 %
  slower at 8 connections, and the same pod varied that much in its first runs;
- varnishncsa and varnishlog attached to each pod during a HIT load at 8 connections: the
  requests Varnish counted against the records the reader got (lost = overrun log);
- MISS latency (an uncacheable URL, every request fetched) at 1 connection: Varnish ->
  HAProxy -> backend against Varnish -> backend; the difference is what HAProxy adds. Also
  the backend pod alone (wrk straight at it);
- the cost of `-p debug=+vclrel` (the termination remedy) on HITs: toggled on the running
  injected pod with varnishadm, on and off in turn, twice, at 1 and 8 connections.
Prints a table and writes bench/results/datapath-<UTC stamp>.json. Asserts nothing. wrk
runs inside the pod's network namespace (loopback only); everything started is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import pod_bench, stop_group, write_results
from tests.e2e.clusterdns import PodRecord
from tests.e2e.footprint import footprints, haproxy_info, process_tree
from tests.e2e.harness import (
    BACKEND_PORT,
    LISTEN_PORT,
    NAMESPACE,
    POD_IP,
    SERVICE,
    PodEnv,
    generation,
)
from tests.e2e.podrunner import ContainerState

HERE = Path(__file__).resolve().parent
BACKEND_IP = "127.0.1.1"
HIT_PATH = "/static/hit"
MISS_PATH = "/nocache/miss"
BACKEND_VARNISHD = "/usr/sbin/varnishd"  # the backend pod; any varnishd would do


# -- the backend pod --------------------------------------------------------------------------
class SynthBackend:
    """varnishd answering every request itself (bench/datapath/backend.vcl) at BACKEND_IP."""

    def __init__(self, env: PodEnv, scratch: Path) -> None:
        self.env, self.workdir = env, scratch / f"backend-{env.name}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.env.netns
        self.workdir.mkdir(parents=True)
        self.process = subprocess.Popen(
            [*self.env.netns.exec_prefix(), BACKEND_VARNISHD, "-F", "-n", str(self.workdir),
             "-a", f"{BACKEND_IP}:{BACKEND_PORT}", "-f", str(HERE / "backend.vcl"),
             "-s", "malloc,16M"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"backend varnishd exited with {self.process.returncode}")
            if get(self.env, BACKEND_IP, BACKEND_PORT, "/healthz")[0] == 200:
                return
            time.sleep(0.1)
        raise SystemExit("the backend varnishd did not answer in 30 s")

    def stop(self) -> None:
        if self.process:
            stop_group(self.process)


def get(env: PodEnv, host: str, port: int, path: str) -> tuple[int, str]:
    """One GET from inside the pod's namespace: (status, X-Cache), status 0 when refused."""
    assert env.netns

    def attempt() -> tuple[int, str]:
        connection = http.client.HTTPConnection(host, port, timeout=5)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            return response.status, response.getheader("X-Cache") or ""
        except OSError:
            return 0, ""
        finally:
            connection.close()

    return env.netns.call(attempt)


# -- the pods ---------------------------------------------------------------------------------
def plain_varnish(manifest: dict[str, Any]) -> None:
    """Only cache-varnish: the HAProxy container goes, the VCL's backend is the pod itself,
    and Varnish runs with its stock hasher, thread pools and log size (what the injector's
    memory settings are measured against), in a workdir the stock log fits in."""
    spec = manifest["spec"]
    spec["initContainers"] = [c for c in spec["initContainers"] if c["name"] != "cache-haproxy"]
    for container in spec["initContainers"]:
        if container["name"] == "cache-varnish":
            container["args"] = stock_args(container["args"])
    for volume in spec["volumes"]:
        if volume["name"] == "cache-varnish-workdir":
            volume["emptyDir"]["sizeLimit"] = "128Mi"
    notes = manifest["metadata"]["annotations"]
    vcl = notes["cache-injector.io/vcl"]
    for old, new in (
        ('.host = "127.0.0.1";', f'.host = "{BACKEND_IP}";'),
        ('.port = "6090";', f'.port = "{BACKEND_PORT}";'),
        ('.url = "/.cache/backends-up";', '.url = "/healthz";'),
    ):
        assert vcl.count(old) == 1, old
        vcl = vcl.replace(old, new)
    notes["cache-injector.io/vcl"] = vcl


MEMORY_PARAMETERS = ("vsl_space", "thread_pool_min")


def stock_args(args: list[str]) -> list[str]:
    """varnishd arguments without the injector's hasher and memory parameters."""
    out: list[str] = []
    pairs = iter(args)
    for flag in pairs:
        if flag in ("-h", "-p"):
            value = next(pairs)
            if flag == "-h" or value.split("=")[0] in MEMORY_PARAMETERS:
                continue
            out += [flag, value]
        else:
            out.append(flag)
    return out


@dataclass
class Load:
    variant: str
    what: str  # "HIT" / "MISS" / "backend"
    connections: int
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int


@dataclass
class Run:
    generation: str
    round: int
    start: dict[str, float] = field(default_factory=dict)
    idle_memory: dict[str, dict[str, float]] = field(default_factory=dict)
    footprint: dict[str, dict[str, float]] = field(default_factory=dict)  # variant -> MiB
    haproxy_info: dict[str, str] = field(default_factory=dict)
    log_readers: list[dict[str, Any]] = field(default_factory=list)
    memory_after_load: dict[str, dict[str, float]] = field(default_factory=dict)
    loads: list[Load] = field(default_factory=list)  # injected / plain varnishd / backend
    remedy: list[Load] = field(default_factory=list)  # "vclrel on" / "vclrel off", in turn


def wrk(env: PodEnv, url: str, connections: int, seconds: int) -> dict[str, Any]:
    assert env.netns
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    done = subprocess.run(
        [*env.netns.exec_prefix(), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
         "-s", str(HERE.parent / "report.lua"), url],
        capture_output=True, text=True, timeout=seconds + 60, check=False,
    )  # fmt: skip
    line = next((x for x in done.stdout.splitlines() if x.startswith("{")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {done.stdout}\n{done.stderr}")
    return dict(json.loads(line))


def load(env: PodEnv, variant: str, what: str, url: str, connections: int, seconds: int) -> Load:
    data = wrk(env, url, connections, seconds)
    return Load(
        variant=variant,
        what=what,
        connections=connections,
        requests_per_second=round(data["requests"] / (data["duration_us"] / 1e6), 1),
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors=data["socket_errors"] + data["non_2xx"],
    )


# -- memory -----------------------------------------------------------------------------------
def container_memory(state: ContainerState) -> dict[str, float]:
    """MiB: VmRSS of every process of the container, its anon/file/shmem parts, and Pss (a
    page shared by N processes counted 1/N: the sum of VmRSS counts the libraries the
    master and the worker share twice, the container's cgroup once)."""
    assert state.main_pid is not None
    total: dict[str, float] = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "RssShmem": 0, "Pss": 0}
    processes = 0
    for pid in process_tree(state.main_pid):
        with contextlib.suppress(OSError):
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            lines += Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            for line in lines:
                key = line.split(":")[0]
                if key in total:
                    total[key] += int(line.split()[1]) / 1024
            processes += 1
    out = {key: round(value, 1) for key, value in total.items()}
    out["processes"] = processes
    return out


def memory_volumes(env: PodEnv) -> dict[str, float]:
    """MiB held by each Memory emptyDir (tmpfs), seen through the pause process's root."""
    runner = env.runner
    assert runner.pause is not None
    out = {}
    for name, volume in runner.spec.volumes.items():
        if (volume.get("emptyDir") or {}).get("medium") != "Memory":
            continue
        path = f"/proc/{runner.pause.pid}/root{runner.workdir}/volumes/{name}"
        stat = os.statvfs(path)
        out[name] = round((stat.f_blocks - stat.f_bfree) * stat.f_frsize / 2**20, 1)
    return out


def memory(env: PodEnv) -> dict[str, dict[str, float]]:
    out = {name: container_memory(state) for name, state in env.runner.states.items()}
    out["emptyDir Memory (tmpfs)"] = memory_volumes(env)
    return out


# -- one generation, one round ----------------------------------------------------------------
WARM_UP = 5  # seconds of HITs at 8 connections on each pod before measuring


def synth_pod(
    gen_name: str,
    scratch: Path,
    stack: contextlib.ExitStack,
    *,
    label: str,
    edit_pod: Callable[[dict[str, Any]], None] | None = None,
    memory_limits: bool = False,
    on_start: Callable[[PodEnv], None] | None = None,
) -> PodEnv:
    """A started pod with its own namespace, DNS and one synth backend pod, all stopped by
    the stack; `on_start` runs once the backend answers, before the sidecars start."""
    backends: list[SynthBackend] = []

    def before_start(env: PodEnv) -> None:
        assert env.dns
        backend = SynthBackend(env, scratch)
        backends.append(backend)
        backend.start()
        env.dns.add_pod(NAMESPACE, SERVICE, PodRecord("bench-0", BACKEND_IP))
        if on_start is not None:
            on_start(env)

    def stop_backends() -> None:
        for backend in backends:
            backend.stop()

    env = PodEnv(
        generation(gen_name),
        backends=0,
        edit_pod=edit_pod,
        before_start=before_start,
        label=label,
        memory_limits=memory_limits,
    )
    stack.callback(stop_backends)
    stack.callback(env.close)
    env.start()
    return env


def start_pod(
    gen_name: str, variant: str, scratch: Path, stack: contextlib.ExitStack
) -> tuple[PodEnv, dict[str, float]]:
    """synth_pod for a variant. For the injected one, a poller times the first proxied 200
    from before the sidecars start."""
    first_answer: dict[str, float] = {}

    def poll(env: PodEnv) -> None:
        assert env.netns
        env.netns.executor(1).submit(poll_first_answer, env, first_answer)

    env = synth_pod(
        gen_name,
        scratch,
        stack,
        label=f"datapath {variant}",
        edit_pod=plain_varnish if variant == "plain varnishd" else None,
        on_start=poll if variant == "injected" else None,
    )
    for path, expect in ((HIT_PATH, "HIT"), (MISS_PATH, "MISS")):
        answers = [get(env, POD_IP, LISTEN_PORT, path) for _ in range(2)]
        if answers[-1] != (200, expect):
            raise SystemExit(f"{variant}: {path} answered {answers}, not 200 {expect}")
    return env, first_answer


def varnishadm(env: PodEnv, *args: str) -> str:
    """varnishadm of the pod's generation, in the Varnish container's namespaces."""
    state = env.runner.states["cache-varnish"]
    program = Path(env.gen.varnish.path).parents[1] / "bin" / "varnishadm"
    done = subprocess.run(
        ["nsenter", f"--target={state.main_pid}", "--mount", "--net", "--",
         str(program), "-n", "/var/lib/varnish", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"varnishadm {' '.join(args)}: {done.stdout}{done.stderr}")
    return done.stdout


BURST = 64  # clients arriving at once at an idle pod


def measure(gen_name: str, round_number: int, seconds: int, scratch: Path) -> Run:
    run = Run(generation=generation(gen_name).label, round=round_number)
    url = f"http://{POD_IP}:{LISTEN_PORT}"
    with contextlib.ExitStack() as stack:
        injected, first_answer = start_pod(gen_name, "injected", scratch, stack)
        states = injected.runner.states
        began = states["cache-haproxy"].spawned_at
        varnish = states["cache-varnish"]
        deadline = time.monotonic() + 30
        while "at" not in first_answer and time.monotonic() < deadline:
            time.sleep(0.05)
        run.start = {
            "to Varnish /.cache/ready s": round((varnish.started_at or 0) - began, 3),
            "to first proxied 200 s": round(first_answer.get("at", 0) - began, 3),
            "haproxy startupProbe s": round(states["cache-haproxy"].time_to_start or 0, 3),
            "varnish startupProbe s": round(varnish.time_to_start or 0, 3),
        }
        run.haproxy_info = haproxy_info(injected.runner)
        plain, _ = start_pod(gen_name, "plain varnishd", scratch, stack)
        pods = {"injected": injected, "plain varnishd": plain}
        time.sleep(2)  # idle; each cache holds the two objects just checked
        run.idle_memory = memory(injected)
        run.footprint = {variant: footprints(env.runner) for variant, env in pods.items()}
        order = list(pods.items())
        if round_number % 2 == 0:
            order.reverse()
        # Before any warm-up: the idle pods' thread pools meet 64 clients at once.
        for variant, env in order:
            run.loads.append(load(env, variant, "HIT burst", url + HIT_PATH, BURST, seconds))
        for env in pods.values():
            wrk(env, url + HIT_PATH, 8, WARM_UP)  # not counted
        for what, path, connections in (("HIT", HIT_PATH, 1), ("HIT", HIT_PATH, 8),
                                         ("MISS", MISS_PATH, 1)):  # fmt: skip
            for variant, env in order:
                run.loads.append(load(env, variant, what, url + path, connections, seconds))
        backend_url = f"http://{BACKEND_IP}:{BACKEND_PORT}{MISS_PATH}"
        run.loads.append(load(injected, "backend pod alone", "backend", backend_url, 1, seconds))
        for program in ("varnishncsa", "varnishlog"):
            for variant, env in order:
                run.log_readers.append(
                    log_reader(env, variant, program, url + HIT_PATH, seconds, scratch)
                )
        for pair in range(2):
            flags = ["+vclrel", "-vclrel"] if pair == 0 else ["-vclrel", "+vclrel"]
            for flag in flags:
                varnishadm(injected, "param.set", "debug", flag)
                variant = "vclrel on" if flag == "+vclrel" else "vclrel off"
                for connections in (1, 8):
                    run.remedy.append(
                        load(injected, variant, "HIT", url + HIT_PATH, connections, seconds)
                    )
        varnishadm(injected, "param.set", "debug", "+vclrel")
        run.memory_after_load = memory(injected)
        run.footprint["injected after load"] = footprints(injected.runner)
        run.footprint["plain varnishd after load"] = footprints(plain.runner)
    for figure in run.loads + run.remedy:
        print(f"{run.generation} round {round_number}: {figure}", file=sys.stderr)
    return run


def client_requests(env: PodEnv) -> int:
    """Varnish's own count of client requests (MAIN.client_req)."""
    return env.varnishstat("MAIN.client_req")["MAIN.client_req"]


def log_reader(
    env: PodEnv, variant: str, program: str, url: str, seconds: int, scratch: Path
) -> dict[str, Any]:
    """varnishncsa or varnishlog attached to the pod's Varnish (in its mount and PID
    namespaces, as `kubectl exec` would) during a HIT load at 8 connections: how many of the
    requests Varnish counted (MAIN.client_req, probes included) it logged, and what it said
    on stderr (an overrun: the writer lapped it in the shared-memory log)."""
    state = env.runner.states["cache-varnish"]
    binary = Path(env.gen.varnish.path).parents[1] / "bin" / program
    options = ["-F", "%U"] if program == "varnishncsa" else ["-g", "raw", "-i", "ReqURL"]
    out, err = scratch / f"{env.name}-{program}.out", scratch / f"{env.name}-{program}.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        reader = subprocess.Popen(
            ["nsenter", f"--target={state.main_pid}", "--mount", "--pid", "--",
             str(binary), "-n", "/var/lib/varnish", *options],
            stdout=stdout, stderr=stderr, start_new_session=True,
        )  # fmt: skip
    try:
        time.sleep(1)  # attached before the load starts
        before = client_requests(env)
        data = wrk(env, url, 8, seconds)
        # The reader catches up with the last records, and the worker threads flush their
        # counters (read at once, MAIN.client_req came out below wrk's own count).
        time.sleep(2)
        served = max(client_requests(env) - before, data["requests"])
    finally:
        stop_group(reader)
    # Every request between the two counter reads is logged after `before`: the first
    # lines may precede it (the reader was attached earlier), so count only the HIT URL
    # and the readiness probes varnishstat saw (there are no others).
    lines = out.read_bytes().splitlines()
    logged = sum(1 for line in lines if HIT_PATH.encode() in line)
    probes = sum(1 for line in lines if b"/.cache/ready" in line)
    complaints = err.read_text(errors="replace").strip()
    return {
        "variant": variant,
        "reader": program,
        "served": served,
        "wrk_requests": data["requests"],
        "logged": logged,
        "probes_logged": probes,
        "lost": max(0, served - logged - probes),
        "requests_per_second": round(data["requests"] / (data["duration_us"] / 1e6), 1),
        "stderr": complaints[-300:],
    }


def poll_first_answer(env: PodEnv, found: dict[str, float]) -> None:
    """Inside the namespace from before the sidecars start: GET every 10 ms until a 200
    comes back through Varnish and HAProxy from the backend pod."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection(POD_IP, LISTEN_PORT, timeout=2)
        try:
            connection.request("GET", "/nocache/first")
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                found["at"] = time.monotonic()
                return
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.01)


# -- output -----------------------------------------------------------------------------------
def pick(loads: list[Load], variant: str, what: str, connections: int = 1) -> Load | None:
    for figure in loads:
        if (figure.variant, figure.what, figure.connections) == (variant, what, connections):
            return figure
    return None


def table(runs: list[Run]) -> str:
    lines = []
    for gen in dict.fromkeys(r.generation for r in runs):
        mine = [r for r in runs if r.generation == gen]
        lines.append(f"== {gen}: {len(mine)} rounds, figures per round separated by /")
        for key in mine[0].start:
            lines.append(f"start {key:29} " + " / ".join(f"{r.start[key]:.2f}" for r in mine))
        for container in ("cache-haproxy", "cache-varnish"):
            parts = [r.idle_memory[container] for r in mine]
            shown = [
                f"{p['VmRSS']:.1f} (anon {p['RssAnon']:.1f}, file {p['RssFile']:.1f}, "
                f"shmem {p['RssShmem']:.1f}; Pss {p['Pss']:.1f}; {p['processes']:.0f} proc)"
                for p in parts
            ]
            lines.append(f"idle {container:14} VmRSS MiB     " + " / ".join(shown))
        sums = [
            r.idle_memory["cache-haproxy"]["VmRSS"] + r.idle_memory["cache-varnish"]["VmRSS"]
            for r in mine
        ]
        lines.append("idle both sidecars VmRSS MiB     " + " / ".join(f"{x:.1f}" for x in sums))
        tmpfs = [str(r.idle_memory["emptyDir Memory (tmpfs)"]) for r in mine]
        lines.append("idle Memory emptyDirs MiB        " + " / ".join(tmpfs))
        lines.append("footprint MiB (PSS of each container's processes + its Memory emptyDirs):")
        for variant in mine[0].footprint:
            for container in mine[0].footprint[variant]:
                shown = [f"{r.footprint[variant][container]:.1f}" for r in mine]
                lines.append(f"  {variant:26} {container:14} " + " / ".join(shown))
        for key in mine[0].haproxy_info:
            shown = [r.haproxy_info.get(key, "?") for r in mine]
            lines.append(f"haproxy {key:24} " + " / ".join(shown))
        for reader in mine[0].log_readers:
            shown = [
                f"{x['logged']} of {x['served']} logged ({x['requests_per_second']:.0f}/s), "
                f"lost {x['lost']}" + (f" ({x['stderr'][:60]!r})" if x["stderr"] else "")
                for r in mine
                for x in r.log_readers
                if (x["variant"], x["reader"]) == (reader["variant"], reader["reader"])
            ]
            lines.append(
                f"{reader['reader']:11} at c8 on {reader['variant']:15} " + " / ".join(shown)
            )
        lines.append(
            f"{'variant':18} {'load':7} {'c':>2} {'req/s':>8} {'p50 ms':>7} {'p90 ms':>7} "
            f"{'p99 ms':>7} {'max ms':>7} err  req/s x p50 x p99 x (x: vs plain varnishd)"
        )
        keys = dict.fromkeys((f.variant, f.what, f.connections) for r in mine for f in r.loads)
        for variant, what, connections in keys:
            for r in mine:
                f = pick(r.loads, variant, what, connections)
                plain = pick(r.loads, "plain varnishd", what, connections)
                if f is None:
                    continue
                ratio = ""
                if plain and what.startswith("HIT"):
                    ratio = (
                        f"{f.requests_per_second / plain.requests_per_second:7.2f} "
                        f"{f.p50_ms / plain.p50_ms:5.2f} {f.p99_ms / plain.p99_ms:5.2f}"
                    )
                lines.append(
                    f"{variant:18} {what:7} {connections:>2} {f.requests_per_second:8.0f} "
                    f"{f.p50_ms:7.3f} {f.p90_ms:7.3f} {f.p99_ms:7.3f} {f.max_ms:7.2f} "
                    f"{f.errors:3}  {ratio}"
                )
        added = []
        for r in mine:
            through, direct = (
                pick(r.loads, "injected", "MISS"),
                pick(r.loads, "plain varnishd", "MISS"),
            )
            if through and direct:
                p50 = through.p50_ms - direct.p50_ms
                p99 = through.p99_ms - direct.p99_ms
                added.append(f"p50 {p50:+.3f} ms, p99 {p99:+.3f} ms")
        lines.append("HAProxy added on a MISS (injected - plain varnishd): " + " / ".join(added))
        for connections in (1, 8):
            shown = []
            for r in mine:
                on = [
                    f for f in r.remedy if f.variant == "vclrel on" and f.connections == connections
                ]
                off = [
                    f
                    for f in r.remedy
                    if f.variant == "vclrel off" and f.connections == connections
                ]
                if on and off:
                    rps = [
                        a.requests_per_second / b.requests_per_second
                        for a, b in zip(on, off, strict=True)
                    ]
                    p50s = [1000 * (a.p50_ms - b.p50_ms) for a, b in zip(on, off, strict=True)]
                    shown.append(
                        "req/s "
                        + ", ".join(f"{x:.2f}x" for x in rps)
                        + "; p50 "
                        + ", ".join(f"{x:+.0f} us" for x in p50s)
                    )
            lines.append(
                f"-p debug=+vclrel on a HIT, c{connections} (on vs off, pairs): "
                + " / ".join(shown)
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="repeat everything (noise)")
    parser.add_argument("--generations", default="newest,oldest")
    args = parser.parse_args()
    runs: list[Run] = []
    with pod_bench("datapath") as scratch:
        load_before = os.getloadavg()
        for round_number in range(1, args.rounds + 1):
            for gen_name in args.generations.split(","):
                runs.append(measure(gen_name, round_number, args.duration, scratch))
    print(
        f"{os.cpu_count()} CPUs; load average before {load_before[0]:.2f}, "
        f"after {os.getloadavg()[0]:.2f}; wrk -t1, {args.duration} s per run"
    )
    print(table(runs))
    write_results(
        "datapath",
        {
            "load_average_before": load_before,
            "duration": args.duration,
            "runs": [asdict(r) for r in runs],
        },
    )


if __name__ == "__main__":
    main()
