"""What the benchmarks share: the set-up and clean-up around pods run with tests/e2e's
harness, stopping a process group, and the results file they write. (A process tree's PIDs:
tests.e2e.footprint.process_tree, which the e2e scenarios use too.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.e2e.conftest import host_problem, sweep_stale_runs
from tests.e2e.harness import root_cleanup
from tests.e2e.podrunner import remove_mount_points

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@contextlib.contextmanager
def pod_bench(name: str) -> Iterator[Path]:
    """Around a benchmark that runs pods: stops on a host that cannot run them, clears what
    an earlier run left, yields a scratch directory the daemons (uids 99/1000) can read, and
    unmounts and cleans up whatever the pods left, however the benchmark ends."""
    problem = host_problem()
    if problem:
        raise SystemExit(f"bench.{name}: {problem}")
    sweep_stale_runs()
    try:
        with tempfile.TemporaryDirectory(prefix=f"cache-injector-{name}-", dir="/var/tmp") as tmp:
            scratch = Path(tmp)
            scratch.chmod(0o755)
            yield scratch
    finally:
        remove_mount_points()
        root_cleanup()


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started with start_new_session=True, and all it started: SIGTERM to
    its process group, SIGKILL after 10 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def write_results(kind: str, data: dict[str, Any]) -> Path:
    """bench/results/<kind>-<UTC stamp>.json, with the date and the machine's CPU count."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = RESULTS / f"{kind}-{stamp}.json"
    record = {"date": stamp, "cpus": os.cpu_count(), **data}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return out
