"""e2e session: host checks, the background scenarios, clean-up of earlier runs, figures."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import missing
from tests.e2e import podrunner
from tests.e2e.harness import root_cleanup
from tests.e2e.scenarios import PARALLEL, Scenarios, figures_table, wall_times_table

TOOLS = ("ip", "nsenter", "unshare", "setpriv", "mount")


def host_problem() -> str | None:
    """Why this machine cannot run the e2e pods, or None."""
    if os.geteuid() != 0:
        return "the e2e runner needs root (network and mount namespaces, other users)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (`make daemons` installs them)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that wait for a background scenario go last: the others run meanwhile."""
    waiting = [item for item in items if item.get_closest_marker("background")]
    if waiting:
        rest = [item for item in items if not item.get_closest_marker("background")]
        items[:] = rest + waiting


def sweep_stale_runs() -> None:
    """Stop what a killed earlier run left: its processes (only those still inside that run's
    network namespace, so a reused PID is never hit), the namespace, the directory."""
    base = podrunner.BASE_DIR
    if not base.is_dir():
        return
    for directory in base.iterdir():
        parts = directory.name.split("-")
        if len(parts) != 3 or parts[0] != "cie2e" or not parts[1].isdigit():
            continue
        if podrunner.process_alive(int(parts[1])):
            continue  # that run is still going
        netns = Path("/run/netns") / directory.name
        if netns.exists():
            inode = netns.stat().st_ino
            pids = directory / "pids"
            for line in pids.read_text().split() if pids.exists() else []:
                with contextlib.suppress(OSError, ValueError):
                    if os.stat(f"/proc/{int(line)}/ns/net").st_ino == inode:
                        os.killpg(int(line), signal.SIGKILL)
            subprocess.run(["ip", "netns", "delete", directory.name], check=False)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def scenarios(request: pytest.FixtureRequest) -> Iterator[Scenarios]:
    """Check the host, clear old runs, start every selected background scenario."""
    problem = host_problem()
    if problem:
        missing(problem)  # skips on a developer's machine, fails under CI
    sweep_stale_runs()
    running = Scenarios()
    running.start_marked(request.session.items)
    yield running
    running.stop_all()
    podrunner.remove_mount_points()
    root_cleanup()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = figures_table()
    if lines:
        terminalreporter.section("e2e measured figures")
        for line in lines:
            terminalreporter.write_line(line)
    times = wall_times_table()
    if times:
        terminalreporter.section(f"e2e scenario wall times (at most {PARALLEL} at once)")
        for line in times:
            terminalreporter.write_line(line)
