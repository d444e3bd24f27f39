"""Long scenarios run side by side, each in its own network namespace and pod.

Owns: starting the scenarios marked `background(function, *args)` when the e2e session begins
and handing each test its scenario's outcome. A scenario function runs the pod, applies the
fault, measures, and returns what it saw; the test then asserts on that. Scenarios share
nothing (own namespace, DNS, backends, pod), so running them at once changes no result, only
the wall time: the 75 s steady-traffic runs, the 40 s DNS outages and the negative control
overlap instead of adding up. CACHE_INJECTOR_E2E_SERIAL=1 runs each only when its test does.

Also owns the measured figures: record() them, the session prints them at the end.
"""

from __future__ import annotations

import os
import statistics
import threading
from collections.abc import Callable
from typing import Any

import pytest

Scenario = Callable[..., Any]
STOP = threading.Event()  # set at the end of the session: scenarios still running give up


class Cancelled(Exception):
    """The session ended (or was interrupted) while a scenario was still running."""


def sleep(seconds: float) -> None:
    """time.sleep for scenarios: ends early, raising Cancelled, when the session stops."""
    if STOP.wait(max(0.0, seconds)):
        raise Cancelled


def background(function: Scenario, *args: Any) -> pytest.MarkDecorator:
    """Mark a test whose outcome comes from function(*args), started with the session."""
    return pytest.mark.background.with_args(function, *args)


class _Job:
    def __init__(self, function: Scenario, args: tuple[Any, ...]) -> None:
        self.function, self.args = function, args
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, name=f"scenario-{function.__name__}", daemon=True
        )

    def _run(self) -> None:
        try:
            self.result = self.function(*self.args)
        except BaseException as err:  # handed to the test
            self.error = err


class Scenarios:
    def __init__(self) -> None:
        self._jobs: dict[tuple[Any, ...], _Job] = {}
        self._lock = threading.Lock()

    def start(self, function: Scenario, *args: Any) -> None:
        with self._lock:
            key = (function, *args)
            if key not in self._jobs:
                job = _Job(function, args)
                self._jobs[key] = job
                job.thread.start()

    def start_marked(self, items: list[pytest.Item]) -> None:
        if os.environ.get("CACHE_INJECTOR_E2E_SERIAL") == "1":
            return
        for item in items:
            for mark in item.iter_markers("background"):
                self.start(*mark.args)

    def outcome(self, node: pytest.Item, timeout: float = 600) -> Any:
        """The outcome of the node's background scenario (started now if it was not)."""
        mark = node.get_closest_marker("background")
        assert mark is not None, f"{node.nodeid} has no background mark"
        self.start(*mark.args)
        job = self._jobs[(*mark.args,)]
        job.thread.join(timeout=timeout)
        if job.thread.is_alive():
            raise TimeoutError(f"{job.function.__name__}{job.args} still running")
        if job.error is not None:
            raise job.error
        return job.result

    def stop_all(self, timeout: float = 60) -> None:
        """Ask the scenarios still running to stop, and wait for them to clean up."""
        STOP.set()
        for job in list(self._jobs.values()):
            job.thread.join(timeout=timeout)


# -- measured figures -------------------------------------------------------------------------
FIGURES: list[tuple[str, str, str, Any]] = []
_figures_lock = threading.Lock()


def record(scenario: str, generation: str, name: str, value: Any) -> None:
    """One measured figure, printed in the session's summary (and quotable from there)."""
    with _figures_lock:
        FIGURES.append((scenario, generation, name, value))


def recorder(scenario: str, generation: str) -> Callable[[str, Any], None]:
    """record() for one scenario and generation: note(name, value)."""
    return lambda name, value: record(scenario, generation, name, value)


def figures_table() -> list[str]:
    """One line per figure; a figure recorded several times (the sidecars' time to ready,
    once per pod) as its median, range and count."""
    grouped: dict[tuple[str, str, str], list[Any]] = {}
    with _figures_lock:
        for scenario, generation, name, value in FIGURES:
            grouped.setdefault((scenario, generation, name), []).append(value)
    lines = []
    for (scenario, generation, name), values in sorted(grouped.items()):
        if len(values) > 1 and all(isinstance(v, float | int) for v in values):
            ordered = sorted(values)
            shown = (
                f"median {statistics.median(ordered):.2f} "
                f"(min {ordered[0]:.2f}, max {ordered[-1]:.2f}, n={len(ordered)})"
            )
        else:
            shown = ", ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in values)
        lines.append(f"{scenario:<24} {generation:<24} {name:<36} {shown}")
    return lines
