"""Soak: the default injected pod under unique small objects plus a working set, for an hour.

    python -m bench.soak [--generation newest|oldest] [--minutes 60] [--share 0.85]
    python -m bench.soak --from bench/results/soak-....json    # judge and plot a run again

Needs root, the daemons and wrk. The pod and the unique-object stream are bench.churn's (the
default injected pod with its memory limits, bench/churn/unique.lua: ~350-byte objects no one
asked for before). First the highest rate the machine sustains is measured: --calibrate
seconds of that stream unpaced; then it runs paced at --share of it for --minutes. Beside it,
from before the calibration to the end, bench/soak/working.lua asks for --working-set URLs in
turn at --working-rate a second (each URL every few seconds, well inside the VCL's 10 s grace,
so expiry alone never makes a MISS): they must keep hitting while the unique objects evict
everything else. Every --sample seconds: cache-varnish's footprint (bench.churn.sample) and the
working set's running HIT/MISS totals.

Verdict (bench/soak/verdict.py): PASS when the footprint levels off below 60 % of
cache-varnish's memory limit (slope over the last 20 minutes within noise), every minute's
working-set hit ratio is >= 99 %, and neither wrk saw a non-2xx answer or a socket error.
Writes bench/results/soak-<generation>-<UTC stamp>.json and, with matplotlib, a .png beside it.
Exits 1 when the verdict is FAIL. Everything started is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from bench.churn.__main__ import (
    CONNECTIONS,
    MIB,
    Sample,
    rps,
    sample,
    sample_line,
    start_pod,
    start_wrk,
    wrk_figures,
)
from bench.common import ROOT, pod_bench, stop_group, write_results
from bench.soak.verdict import (
    HIT_RATIO,
    LIMIT_SHARE,
    WINDOW_MINUTES,
    Verdict,
    hit_windows,
    slope,
    verdict,
)
from tests.e2e.harness import PodEnv
from webhook.engine.values import parse_size

HERE = Path(__file__).resolve().parent
UNIQUE = HERE.parent / "churn" / "unique.lua"
WORKING_CONNECTIONS = 2
# The paced stream's connections: each waits BENCH_DELAY_MS after an answer, so the rate is
# connections / (delay + latency); with more connections the whole-millisecond delay steps
# finer (bench.churn uses 16, at rates where latency is small beside the delay).
PACED_CONNECTIONS = 32
TRIAL_SECONDS = 10
GRACE_SECONDS = 10  # the default VCL's grace while backends are up: expired objects still HIT


@dataclass
class Soak:
    generation: str
    minutes: float
    limit_mib: float
    calibration: dict[str, Any]  # the unpaced stream's wrk figures
    max_rate: float  # requests/s the unpaced stream reached
    rate: int  # the pace asked for: share x max_rate
    pacing: dict[str, float]  # the trial that measured the latency the delay allows for
    working_set: int
    working_rate: int
    samples: list[Sample] = field(default_factory=list)
    working: list[tuple[float, int, int, int]] = field(default_factory=list)  # s, HIT, MISS, other
    wrk: dict[str, Any] = field(default_factory=dict)  # the paced unique stream
    working_wrk: dict[str, Any] = field(default_factory=dict)
    windows: list[dict[str, Any]] = field(default_factory=list)
    verdict: dict[str, Any] = field(default_factory=dict)
    cgroup_slope: dict[str, Any] = field(default_factory=dict)


def working_totals(out: Path) -> tuple[int, int, int]:
    """The working set's last running totals (HIT, MISS, other) working.lua wrote."""
    for line in reversed(out.read_text().splitlines()):
        if line.startswith("ws {"):
            data = json.loads(line[3:])
            return int(data["hit"]), int(data["miss"]), int(data["other"])
    return 0, 0, 0


def interrupt(process: subprocess.Popen[bytes]) -> None:
    """Stop wrk as Ctrl-C does, so that it still prints its summary (SIGTERM would not)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            stop_group(process)


def paced(env: PodEnv, rate: int, tag: str, scratch: Path) -> dict[str, float]:
    """The delay that paces PACED_CONNECTIONS to `rate`: a TRIAL_SECONDS run at the delay the
    rate alone gives measures what each request adds (the latency), which the delay then
    leaves out."""
    first = max(1, round(PACED_CONNECTIONS * 1000 / rate))
    out = scratch / "trial-wrk.out"
    trial = start_wrk(env, str(UNIQUE), PACED_CONNECTIONS, TRIAL_SECONDS, out,
                      {"BENCH_DELAY_MS": str(first), "BENCH_TAG": f"{tag}t"})  # fmt: skip
    try:
        trial.wait(TRIAL_SECONDS + 60)
    finally:
        stop_group(trial)
    reached = rps(wrk_figures(out))
    latency = max(0.0, PACED_CONNECTIONS * 1000 / reached - first)
    delay = max(1, round(PACED_CONNECTIONS * 1000 / rate - latency))
    return {
        "connections": PACED_CONNECTIONS,
        "trial_delay_ms": first,
        "trial_rate": round(reached),
        "latency_ms": round(latency, 2),
        "delay_ms": delay,
    }


def errors(*figures: dict[str, Any]) -> int:
    return sum(int(f.get("socket_errors", 0)) + int(f.get("non_2xx", 0)) for f in figures)


def run(gen_name: str, minutes: float, share: float, calibrate: int, working_set: int,
        working_rate: int, every: float, scratch: Path) -> Soak:  # fmt: skip
    with contextlib.ExitStack() as stack:
        env: PodEnv = start_pod(gen_name, "soak", {}, scratch, stack)
        varnish = next(
            c for c in env.manifest["spec"]["initContainers"] if c["name"] == "cache-varnish"
        )
        limit = parse_size(varnish["resources"]["limits"]["memory"]) / MIB
        seconds = int(minutes * 60)
        tag = str(os.getpid())
        ws_out = scratch / "working-wrk.out"
        ws_pace = {"BENCH_DELAY_MS": str(round(WORKING_CONNECTIONS * 1000 / working_rate)),
                   "SOAK_WORKING_SET": str(working_set)}  # fmt: skip
        ws_load = start_wrk(env, str(HERE / "working.lua"), WORKING_CONNECTIONS,
                            calibrate + seconds + 30, ws_out, ws_pace)  # fmt: skip
        stack.callback(lambda: interrupt(ws_load))
        time.sleep(5)  # the working set's first round, its only MISSes

        out = scratch / "calibrate-wrk.out"
        print(f"calibrating: {calibrate} s unpaced", file=sys.stderr, flush=True)
        probe = start_wrk(env, str(UNIQUE), CONNECTIONS, calibrate, out,
                          {"BENCH_DELAY_MS": "0", "BENCH_TAG": f"{tag}c"})  # fmt: skip
        stack.callback(lambda: stop_group(probe))
        probe.wait(calibrate + 60)
        figures = wrk_figures(out)
        max_rate = rps(figures)
        rate = max(1, int(share * max_rate))
        pacing = paced(env, rate, tag, scratch)
        seen = Soak(env.gen.label, minutes, limit, figures, round(max_rate), rate, pacing,
                    working_set, working_rate)  # fmt: skip
        print(f"unpaced {max_rate:.0f}/s: soak paced at {rate}/s ({pacing})", file=sys.stderr,
              flush=True)  # fmt: skip

        out = scratch / "soak-wrk.out"
        pace = {"BENCH_DELAY_MS": str(pacing["delay_ms"]), "BENCH_TAG": tag}
        began = time.monotonic()
        seen.samples.append(sample(env, began))
        seen.working.append((seen.samples[0].seconds, *working_totals(ws_out)))
        load = start_wrk(env, str(UNIQUE), PACED_CONNECTIONS, seconds, out, pace)
        stack.callback(lambda: stop_group(load))
        while load.poll() is None and time.monotonic() - began < seconds + 60:
            time.sleep(max(0.0, every - (time.monotonic() - began) % every))
            now = sample(env, began)
            seen.samples.append(now)
            seen.working.append((now.seconds, *working_totals(ws_out)))
            print(f"{sample_line(now)} | working set {seen.working[-1][1:]}", file=sys.stderr,
                  flush=True)  # fmt: skip
        load.wait(60)
        seen.wrk = wrk_figures(out)
        interrupt(ws_load)  # it would run 30 s past the soak: stopped here, not timed out
        seen.working_wrk = wrk_figures(ws_out)
    judge(seen)
    return seen


def judge(seen: Soak) -> Verdict:
    """The verdict and the per-minute windows (unique rate achieved, working-set hits)."""
    footprint = [(s.seconds / 60, s.footprint_mib) for s in seen.samples]
    window = min(WINDOW_MINUTES, footprint[-1][0] / 2)  # short trial runs: their second half
    result = verdict(
        footprint,
        seen.limit_mib,
        seen.working,
        errors(seen.calibration, seen.wrk, seen.working_wrk),
        window=window,
    )
    seen.verdict = asdict(result)
    seen.cgroup_slope = asdict(slope([(s.seconds / 60, s.cgroup_mib) for s in seen.samples],
                                     window))  # fmt: skip
    by_time = {s.seconds: s for s in seen.samples}
    seen.windows = []
    for w in hit_windows(seen.working):
        end = by_time.get(w.end)
        start = by_time.get(w.start)
        done = end.requests - start.requests if end and start else 0
        seen.windows.append({
            "start_s": w.start, "end_s": w.end, "unique_per_s": round(done / (w.end - w.start)),
            "hits": w.hits, "misses": w.misses, "other": w.other,
            "hit_ratio": round(w.ratio, 5), "footprint_mib": end.footprint_mib if end else None,
        })  # fmt: skip
    return result


def achieved(seen: Soak) -> float:
    """Unique objects a second over the soak (the calibration's and trial's left out)."""
    first, last = seen.samples[0], seen.samples[-1]
    return (last.requests - first.requests) / (last.seconds - first.seconds)


def table(seen: Soak) -> str:
    v = seen.verdict
    fit = v["slope"]
    last = seen.samples[-1]
    lines = [
        f"== soak {seen.generation}: {last.seconds / 60:.1f} min, default pod, cache-varnish "
        f"limit {seen.limit_mib:.0f} MiB",
        f"unique objects: unpaced {seen.max_rate}/s, paced at {seen.rate}/s, achieved "
        f"{achieved(seen):.0f}/s over the soak; working set {seen.working_set} URLs "
        f"at {seen.working_rate}/s",
        "minute  footprint MiB  cgroup MiB  unique/s  ws hits  ws misses  ws hit %",
    ]
    for w in seen.windows:
        lines.append(f"{w['end_s'] / 60:6.1f} {w['footprint_mib'] or 0:14.1f} "
                     f"{next(s.cgroup_mib for s in seen.samples if s.seconds == w['end_s']):11.1f} "
                     f"{w['unique_per_s']:9} {w['hits']:8} {w['misses']:10} "
                     f"{100 * w['hit_ratio']:9.2f}")  # fmt: skip
    lines += [
        f"final {v['final_mib']:.1f} MiB ({100 * v['final_mib'] / seen.limit_mib:.1f} % of the "
        f"limit), peak over the last {fit['minutes']} min {v['peak_mib']:.1f} MiB",
        f"slope over the last {fit['minutes']} min {fit['slope']:+.3f} MiB/min (95 % CI "
        f"{fit['low']:+.3f}..{fit['high']:+.3f}; noise {fit['noise']:.2f} MiB, threshold "
        f"{fit['threshold']:.3f} MiB/min); cgroup {seen.cgroup_slope['slope']:+.3f} MiB/min",
        f"working set: {100 * v['hit_ratio']:.3f} % hits, lowest minute "
        f"{100 * v['lowest_window']:.2f} %; errors {v['errors']}",
        "PASS" if v["passed"] else "FAIL: " + "; ".join(v["reasons"]),
    ]
    return "\n".join(lines)


def plot(seen: Soak, out: Path) -> Path:
    """The curves as a PNG beside the results."""
    minutes = [s.seconds / 60 for s in seen.samples]
    figure = Figure(figsize=(9, 6.5))
    memory, load = figure.subplots(2, 1, sharex=True,
                                          height_ratios=[3, 2])  # fmt: skip
    memory.plot(
        minutes, [s.footprint_mib for s in seen.samples], label="footprint (PSS + emptyDirs)"
    )
    memory.plot(minutes, [s.cgroup_mib for s in seen.samples], label="memory cgroup", alpha=0.6)
    memory.plot(minutes, [s.stored_mib for s in seen.samples], label="-s malloc bytes stored")
    memory.axhline(
        LIMIT_SHARE * seen.limit_mib,
        color="red",
        linestyle="--",
        label=f"{100 * LIMIT_SHARE:.0f} % of the {seen.limit_mib:.0f} MiB limit",
    )
    fit = seen.verdict["slope"]
    end = minutes[-1]
    memory.axvspan(end - fit["minutes"], end, color="grey", alpha=0.12,
                   label=f"slope {fit['slope']:+.3f} MiB/min")  # fmt: skip
    memory.set_ylabel("cache-varnish MiB")
    memory.set_ylim(0, seen.limit_mib * 0.7)
    memory.legend(loc="lower right", fontsize=8)
    verdict_text = "PASS" if seen.verdict["passed"] else "FAIL"
    memory.set_title(f"soak {seen.generation}: {verdict_text}")
    ends = [w["end_s"] / 60 for w in seen.windows]
    load.plot(ends, [w["unique_per_s"] for w in seen.windows], label="unique objects/s")
    load.set_ylabel("unique objects/s")
    load.set_ylim(bottom=0)
    load.set_xlabel("minutes")
    ratio = load.twinx()
    ratio.plot(ends, [100 * w["hit_ratio"] for w in seen.windows], color="green",
               label="working-set hit %")  # fmt: skip
    ratio.axhline(100 * HIT_RATIO, color="green", linestyle=":")
    ratio.set_ylim(98, 100.2)
    ratio.set_ylabel("working-set hit %")
    load.legend(loc="lower left", fontsize=8)
    ratio.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=90)
    return out


def load(path: Path) -> Soak:
    data = json.loads(path.read_text())["soak"]
    data["samples"] = [Sample(**s) for s in data["samples"]]
    data["working"] = [(float(w[0]), int(w[1]), int(w[2]), int(w[3])) for w in data["working"]]
    return Soak(**data)


def again(path: Path) -> Soak:
    """Judge a results file again with this verdict, rewrite its verdict and its plot."""
    seen = load(path)
    judge(seen)
    record = json.loads(path.read_text())
    record["soak"] = asdict(seen)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(table(seen))
    print(f"rewrote {path}, {plot(seen, path.with_suffix('.png'))}")
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generation", default="newest", choices=("newest", "oldest"))
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--share", type=float, default=0.85, help="of the unpaced rate")
    parser.add_argument("--calibrate", type=int, default=25, help="seconds unpaced")
    parser.add_argument("--working-set", type=int, default=300, help="URLs")
    parser.add_argument("--working-rate", type=int, default=100, help="requests/s")
    parser.add_argument("--sample", type=float, default=10, help="seconds between samples")
    parser.add_argument("--from", dest="source", type=Path, help="a results file to judge again")
    args = parser.parse_args()
    if args.source:
        sys.exit(0 if again(args.source).verdict["passed"] else 1)
    if args.working_set / args.working_rate > GRACE_SECONDS / 2:
        parser.error(f"--working-set {args.working_set} at --working-rate {args.working_rate}: "
                     f"each URL must come back within {GRACE_SECONDS / 2:.0f} s (half the VCL's "
                     f"{GRACE_SECONDS} s grace), so that expiry never makes a MISS")  # fmt: skip
    if not 0 < args.share <= 1:
        parser.error(f"--share {args.share}: a fraction in (0, 1]")
    with pod_bench("soak") as scratch:
        load_before = os.getloadavg()
        seen = run(args.generation, args.minutes, args.share, args.calibrate,
                   args.working_set, args.working_rate, args.sample, scratch)  # fmt: skip
    print(f"{os.cpu_count()} CPUs; load average before {load_before[0]:.2f}, "
          f"after {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(table(seen))
    kind = "soak-" + seen.generation.replace("/", "-")
    out = write_results(
        kind,
        {
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "soak": asdict(seen),
        },
    )
    print(f"wrote {plot(seen, out.with_suffix('.png')).relative_to(ROOT)}")
    sys.exit(0 if seen.verdict["passed"] else 1)


if __name__ == "__main__":
    main()
