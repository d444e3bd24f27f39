"""What both benchmarks share: stopping a process group, and the results file they write.
(A process tree's PIDs: tests.e2e.footprint.process_tree, which the e2e scenarios use too.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


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
