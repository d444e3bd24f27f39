"""Small-object churn: cache-varnish's memory over time under a stream of unique tiny objects.

    python -m bench.churn [--minutes 8] [--rate 3000] [--generation newest] [--env K=V ...]
    python -m bench.churn --hits [--env K=V ...] [--pairs 4] [--duration 10]

Needs root, the daemons and wrk. The default injected pod (128Mi cache) runs with the real
daemons in its memory cgroups (bench.datapath's synth backend pod behind it); wrk sends
requests for URLs no one asked for before (bench/churn/unique.lua: ~350-byte objects, paced
to about --rate a second), so the cache fills and then evicts without end. Every --sample
seconds it records what cache-varnish is charged (PSS of its processes + its Memory emptyDirs,
tests/e2e/footprint.py; and the memory cgroup's usage), the objects cached, evicted and
stored bytes. It prints the curve, the MiB at 1, 2, 5, 10 ... minutes and the slope of the last
third (MiB/min) - whether the footprint levels off - and how long the limit would last at that
slope.

`--env K=V` sets an environment variable of cache-varnish in the pod the injector wrote (say,
the allocator's tunables: MALLOC_CONF=narenas:2 for jemalloc, MALLOC_ARENA_MAX=2 for a
varnishd built with glibc malloc) - the variant measured; `--env K=` removes one.

`--hits` measures the cost of a variant on cache HITs instead (with `--misses`: on MISSes
that store, unique URLs unpaced - where malloc is called): two pods side by side, the
pod as injected and the variant, after a warm-up, wrk at 8 connections on one then the other
(the order alternates) --pairs times; prints each pair's req/s ratio (variant / injected)
and the p50/p99. Writes bench/results/churn-<UTC stamp>.json. Asserts nothing; everything
started is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import pod_bench, stop_group, write_results
from bench.datapath.__main__ import get, synth_pod
from tests.e2e.footprint import footprints
from tests.e2e.harness import (
    LISTEN_PORT,
    POD_IP,
    PodEnv,
    generation,
)
from webhook.engine.values import parse_size

HERE = Path(__file__).resolve().parent
CONNECTIONS = 16
COUNTERS = ("MAIN.n_object", "MAIN.n_objecthead", "MAIN.n_lru_nuked", "SMA.s0.g_bytes",
            "MAIN.threads")  # fmt: skip
MIB = 2**20


def set_env(variant: dict[str, str | None]) -> Any:
    """An edit_pod hook: cache-varnish's env with the variant's variables (None: removed)."""

    def edit(manifest: dict[str, Any]) -> None:
        for container in manifest["spec"]["initContainers"]:
            if container["name"] != "cache-varnish":
                continue
            env = [e for e in container.get("env", []) if e["name"] not in variant]
            env += [{"name": k, "value": v} for k, v in variant.items() if v is not None]
            container["env"] = env

    return edit


def start_pod(gen_name: str, label: str, variant: dict[str, str | None], scratch: Path,
              stack: contextlib.ExitStack) -> PodEnv:  # fmt: skip
    """The default injected pod (with the variant), its DNS and a synth backend pod."""
    env = synth_pod(gen_name, scratch, stack, label=f"churn {label}", edit_pod=set_env(variant),
                    memory_limits=True)  # fmt: skip
    for _ in range(2):
        status, cache = get(env, POD_IP, LISTEN_PORT, "/static/warm")
    if (status, cache) != (200, "HIT"):
        raise SystemExit(f"{label}: /static/warm answered {status} {cache}, not 200 HIT")
    return env


def start_wrk(env: PodEnv, script: str, connections: int, seconds: int, out: Path,
              extra_env: dict[str, str]) -> subprocess.Popen[bytes]:  # fmt: skip
    assert env.netns
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    with open(out, "wb") as stdout:
        return subprocess.Popen(
            [*env.netns.exec_prefix(), "env", *[f"{k}={v}" for k, v in extra_env.items()],
             "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script,
             f"http://{POD_IP}:{LISTEN_PORT}/"],
            stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def wrk_figures(out: Path) -> dict[str, Any]:
    line = next((x for x in out.read_text().splitlines() if x.startswith("{")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {out.read_text()}")
    return dict(json.loads(line))


@dataclass
class Sample:
    seconds: float
    footprint_mib: float  # PSS of cache-varnish's processes + its Memory emptyDirs
    cgroup_mib: float  # the container's memory cgroup usage (page cache included)
    objects: int
    objheads: int
    evicted: int
    requests: int  # objects stored so far (each request stores one)
    stored_mib: float  # -s malloc's bytes in use
    threads: int  # worker threads (each holds a stack and workspaces)


def sample(env: PodEnv, began: float) -> Sample:
    """What cache-varnish is charged now, and its cache's counters (`began`: monotonic 0 s)."""
    values = env.varnishstat(*COUNTERS)
    usage = env.runner.memory("cache-varnish")
    return Sample(
        seconds=round(time.monotonic() - began, 1),
        footprint_mib=footprints(env.runner, ("cache-varnish",))["cache-varnish"],
        cgroup_mib=round(usage[0] / MIB, 1) if usage else 0.0,
        objects=values.get("MAIN.n_object", 0),
        objheads=values.get("MAIN.n_objecthead", 0),
        evicted=values.get("MAIN.n_lru_nuked", 0),
        # client_req lags in the workers' unflushed counters: every request
        # stored an object, so objects + evicted is the count that is current
        requests=values.get("MAIN.n_object", 0) + values.get("MAIN.n_lru_nuked", 0),
        stored_mib=round(values.get("SMA.s0.g_bytes", 0) / MIB, 1),
        threads=values.get("MAIN.threads", 0),
    )


def sample_line(s: Sample) -> str:
    return (
        f"{s.seconds:6.0f} s {s.footprint_mib:6.1f} MiB (cgroup {s.cgroup_mib:6.1f}) "
        f"{s.objects} objects {s.evicted} evicted {s.requests} req {s.threads} threads"
    )


@dataclass
class Churn:
    generation: str
    variant: dict[str, str | None]
    env: list[dict[str, Any]]
    limit_mib: float
    rate: int
    samples: list[Sample] = field(default_factory=list)
    wrk: dict[str, Any] = field(default_factory=dict)


def churn(gen_name: str, variant: dict[str, str | None], minutes: float, rate: int,
          every: float, scratch: Path) -> Churn:  # fmt: skip
    with contextlib.ExitStack() as stack:
        env = start_pod(gen_name, "churn", variant, scratch, stack)
        varnish = next(
            c for c in env.manifest["spec"]["initContainers"] if c["name"] == "cache-varnish"
        )
        limit = parse_size(varnish["resources"]["limits"]["memory"]) / MIB
        seen = Churn(env.gen.label, variant, varnish.get("env", []), limit, rate)
        seconds = int(minutes * 60)
        out = scratch / "churn-wrk.out"
        pace = {"BENCH_DELAY_MS": str(max(0, round(CONNECTIONS * 1000 / rate))) if rate else "0",
                "BENCH_TAG": str(os.getpid())}  # fmt: skip
        load = start_wrk(env, str(HERE / "unique.lua"), CONNECTIONS, seconds, out, pace)
        stack.callback(lambda: stop_group(load))
        began = time.monotonic()
        while load.poll() is None and time.monotonic() - began < seconds + 60:
            time.sleep(max(0.0, every - (time.monotonic() - began) % every))
            seen.samples.append(sample(env, began))
            print(sample_line(seen.samples[-1]), file=sys.stderr, flush=True)
        load.wait(60)
        seen.wrk = wrk_figures(out)
    return seen


def slope(samples: list[Sample], since: float) -> float:
    """MiB per minute, least squares over the samples at or after `since` seconds."""
    points = [(s.seconds / 60, s.footprint_mib) for s in samples if s.seconds >= since]
    if len(points) < 3:
        return float("nan")
    minutes, mib = zip(*points, strict=True)
    return float(statistics.linear_regression(minutes, mib).slope)


def churn_table(seen: Churn) -> str:
    variant = ", ".join(f"{k}={v}" for k, v in seen.variant.items()) or "as injected"
    env = ", ".join(f"{e['name']}={e['value']}" for e in seen.env if "value" in e) or "-"
    lines = [f"== {seen.generation}, {variant} (cache-varnish env: {env}), "
             f"limit {seen.limit_mib:.0f} MiB, paced at {seen.rate}/s"]  # fmt: skip
    last = seen.samples[-1]
    full = next((s for s in seen.samples if s.evicted), None)
    lines.append(
        f"{last.requests} requests in {last.seconds:.0f} s "
        f"({last.requests / last.seconds:.0f}/s), "
        f"wrk errors {seen.wrk.get('socket_errors', 0) + seen.wrk.get('non_2xx', 0)}; "
        + (f"full at {full.seconds:.0f} s with {full.objects} objects; " if full else "never full")
        + (f"{last.evicted / full.objects:.1f} turnovers" if full and full.objects else "")
    )
    lines.append("minute  footprint MiB  cgroup MiB  objects  stored MiB  evicted  threads")
    for minute in (0.5, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 30):
        s = min(seen.samples, key=lambda x: abs(x.seconds - minute * 60))
        if abs(s.seconds - minute * 60) <= 10:
            lines.append(
                f"{minute:6} {s.footprint_mib:14.1f} {s.cgroup_mib:11.1f} "
                f"{s.objects:8} {s.stored_mib:11.1f} {s.evicted:8} {s.threads:8}"
            )
    peak = max(s.footprint_mib for s in seen.samples)
    tail = slope(seen.samples, last.seconds * 2 / 3)
    lines.append(f"peak {peak:.1f} MiB ({100 * peak / seen.limit_mib:.0f} % of the limit); "
                 f"slope over the last third {tail:+.2f} MiB/min")  # fmt: skip
    if tail > 0.05:
        hours = (seen.limit_mib - last.footprint_mib) / tail / 60
        lines.append(f"at that slope the limit is reached in {hours:.1f} h")
    return "\n".join(lines)


@dataclass
class Hits:
    generation: str
    variant: dict[str, str | None]
    what: str  # HIT (one object) or MISS (unique URLs, each stored)
    connections: int
    pairs: list[dict[str, dict[str, Any]]] = field(default_factory=list)


def hits(gen_name: str, variant: dict[str, str | None], pairs: int, seconds: int,
         scratch: Path, misses: bool, base: dict[str, str | None], connections: int,
         ) -> Hits:  # fmt: skip
    seen = Hits(generation(gen_name).label, variant, "MISS" if misses else "HIT", connections)
    report = str(HERE.parent / "report.lua")
    with contextlib.ExitStack() as stack:
        pods = {"injected": start_pod(gen_name, "injected", base, scratch, stack),
                "variant": start_pod(gen_name, "variant", variant, scratch, stack)}  # fmt: skip

        def run(env: PodEnv, duration: int) -> dict[str, Any]:
            out = scratch / "hits-wrk.out"
            url = f"http://{POD_IP}:{LISTEN_PORT}/static/warm"
            script = report
            if misses:  # unique URLs, unpaced: every request a MISS storing an object
                script, url = str(HERE / "unique.lua"), f"http://{POD_IP}:{LISTEN_PORT}/"
            assert env.netns
            done = subprocess.run(
                [*env.netns.exec_prefix(), "env", f"BENCH_TAG={time.monotonic_ns()}",
                 "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", script, url],
                capture_output=True, timeout=duration + 60, check=False,
            )  # fmt: skip
            out.write_bytes(done.stdout)
            return wrk_figures(out)

        for env in pods.values():
            run(env, 5)  # warm-up, not counted
        for number in range(pairs):
            order = list(pods.items()) if number % 2 == 0 else list(pods.items())[::-1]
            pair = {name: run(env, seconds) for name, env in order}
            seen.pairs.append(pair)
            ratio = rps(pair["variant"]) / rps(pair["injected"])
            print(f"pair {number + 1}: variant/injected {ratio:.3f}", file=sys.stderr, flush=True)
    return seen


def rps(figures: dict[str, Any]) -> float:
    return float(figures["requests"]) / (float(figures["duration_us"]) / 1e6)


def hits_table(seen: Hits) -> str:
    variant = ", ".join(f"{k}={v}" for k, v in seen.variant.items())
    lines = [f"== {seen.generation}: {seen.what}s at c={seen.connections}, injected vs {variant}, "
             f"{len(seen.pairs)} pairs",
             "pair  injected req/s p50/p99 ms     variant req/s p50/p99 ms      ratio"]  # fmt: skip
    ratios = []
    for number, pair in enumerate(seen.pairs, 1):
        a, b = pair["injected"], pair["variant"]
        ratios.append(rps(b) / rps(a))
        lines.append(
            f"{number:4} {rps(a):9.0f} {a['p50_us'] / 1000:6.3f}/{a['p99_us'] / 1000:6.3f} "
            f"{rps(b):13.0f} {b['p50_us'] / 1000:6.3f}/{b['p99_us'] / 1000:6.3f} "
            f"{ratios[-1]:10.3f}"
        )
    lines.append(f"median ratio {statistics.median(ratios):.3f} (min {min(ratios):.3f}, "
                 f"max {max(ratios):.3f})")  # fmt: skip
    return "\n".join(lines)


def env_items(items: list[str]) -> dict[str, str | None]:
    """K=V -> {K: V}; K= -> {K: None} (removed from what the injector set)."""
    out: dict[str, str | None] = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = value or None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generation", default="newest")
    parser.add_argument("--env", action="append", default=[], help="K=V or K= (unset)")
    parser.add_argument("--minutes", type=float, default=8)
    parser.add_argument("--rate", type=int, default=3000, help="requests/s at most")
    parser.add_argument("--sample", type=float, default=10, help="seconds between samples")
    parser.add_argument("--hits", action="store_true", help="HIT throughput pairs instead")
    parser.add_argument(
        "--base-env",
        action="append",
        default=[],
        help="--hits: K=V or K= (unset) in the pod compared against",
    )
    parser.add_argument("--misses", action="store_true", help="--hits: MISSes that store")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--connections", type=int, default=8, help="--hits: wrk's -c")
    parser.add_argument("--duration", type=int, default=10, help="seconds per HIT run")
    args = parser.parse_args()
    variant, base = env_items(args.env), env_items(args.base_env)
    with pod_bench("churn") as scratch:
        load_before = os.getloadavg()
        if args.hits:
            hit_run = hits(args.generation, variant, args.pairs, args.duration, scratch,
                           args.misses, base, args.connections)  # fmt: skip
            text, data = hits_table(hit_run), {"hits": asdict(hit_run)}
        else:
            run = churn(args.generation, variant, args.minutes, args.rate, args.sample,
                        scratch)  # fmt: skip
            text, data = churn_table(run), {"churn": asdict(run)}
    print(f"{os.cpu_count()} CPUs; load average before {load_before[0]:.2f}, "
          f"after {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(text)
    write_results("churn", {"load_average_before": load_before, **data})


if __name__ == "__main__":
    main()
