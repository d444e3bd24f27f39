"""Long scenarios run side by side, each in its own network namespace and pod.

Owns: starting the scenarios marked `background(function, *args)` when the e2e session begins
and handing each test its scenario's outcome. A scenario function runs the pod, applies the
fault, measures, and returns what it saw; the test then asserts on that. Scenarios share
nothing (own namespace, DNS, backends, pod), so running them at once changes no result, only
the wall time: the 75 s steady-traffic runs, the 40 s DNS outages and the negative control
overlap instead of adding up. CACHE_INJECTOR_E2E_SERIAL=1 runs each only when its test does.

At most CACHE_INJECTOR_E2E_PARALLEL (default 10) run at once, the longest first (a scenario
function's `seconds` attribute, set with @lasts). Unbounded, all 54 (then) started together on a
2-core machine: every varnishd compiled its VCL at the same moment (23-25 s to ready instead
of 0.5 s) and the one Python process serving backends and clients for all of them was so
starved that traffic generators sent 6 requests where 240 were due. Those failures were the
machine's, not the pod's; a bound keeps each scenario's clock honest.

Also owns the measured figures: record() them, the session prints them at the end.
"""

from __future__ import annotations

import itertools
import os
import queue
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

Scenario = Callable[..., Any]
STOP = threading.Event()  # set at the end of the session: scenarios still running give up
PARALLEL = max(1, int(os.environ.get("CACHE_INJECTOR_E2E_PARALLEL", "10")))
DEFAULT_SECONDS = 30.0  # a scenario's expected wall time when it does not say
_SECONDS: dict[Scenario, float] = {}  # what @lasts declared, by scenario


class Cancelled(Exception):
    """The session ended (or was interrupted) while a scenario was still running."""


def sleep(seconds: float) -> None:
    """time.sleep for scenarios: ends early, raising Cancelled, when the session stops."""
    if STOP.wait(max(0.0, seconds)):
        raise Cancelled


def background(function: Scenario, *args: Any) -> pytest.MarkDecorator:
    """Mark a test whose outcome comes from function(*args), started with the session."""
    return pytest.mark.background.with_args(function, *args)


def lasts(seconds: float) -> Callable[[Scenario], Scenario]:
    """Declare a scenario's usual wall time, so the longest are started first."""

    def mark(function: Scenario) -> Scenario:
        _SECONDS[function] = seconds
        return function

    return mark


class _Job:
    def __init__(self, function: Scenario, args: tuple[Any, ...]) -> None:
        self.function, self.args = function, args
        self.result: Any = None
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self.finished = threading.Event()

    @property
    def name(self) -> str:
        return f"{self.function.__name__}{self.args}"

    def run(self) -> None:
        self.started_at = time.monotonic()
        try:
            if STOP.is_set():
                raise Cancelled
            self.result = self.function(*self.args)
        except BaseException as err:  # handed to the test
            self.error = err
        finally:
            WALL_TIMES.append((self.name, time.monotonic() - self.started_at))
            self.finished.set()


WALL_TIMES: list[tuple[str, float]] = []  # (scenario, seconds), printed with the figures


class Scenarios:
    """A pool of PARALLEL runner threads over a queue of scenarios, longest first."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[Any, ...], _Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.PriorityQueue[tuple[float, int, _Job | None]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._runners = [
            threading.Thread(target=self._runner, name=f"scenario-runner-{n}", daemon=True)
            for n in range(PARALLEL)
        ]
        for runner in self._runners:
            runner.start()

    def _runner(self) -> None:
        while True:
            job = self._queue.get()[2]
            if job is None:  # stop_all()
                return
            job.run()

    def start(self, function: Scenario, *args: Any) -> None:
        """Queue function(*args) unless it already is, the longest first."""
        with self._lock:
            key = (function, *args)
            if key not in self._jobs:
                job = _Job(function, args)
                self._jobs[key] = job
                priority = -_SECONDS.get(function, DEFAULT_SECONDS)
                self._queue.put((priority, next(self._order), job))

    def start_marked(self, items: list[pytest.Item]) -> None:
        if os.environ.get("CACHE_INJECTOR_E2E_SERIAL") == "1":
            return
        for item in items:
            for mark in item.iter_markers("background"):
                self.start(*mark.args)

    def outcome(self, node: pytest.Item, timeout: float = 600) -> Any:
        """The outcome of the node's background scenario (started now if it was not).

        `timeout` counts from the scenario's start, not from its time in the queue; the
        queue itself is bounded by the session's scenarios ahead of it."""
        mark = node.get_closest_marker("background")
        assert mark is not None, f"{node.nodeid} has no background mark"
        self.start(*mark.args)
        job = self._jobs[(*mark.args,)]
        queued = time.monotonic()
        while job.started_at is None and not job.finished.is_set():
            if time.monotonic() - queued > 3600:
                raise TimeoutError(f"{job.name} never started")
            job.finished.wait(timeout=1)
        if not job.finished.wait(timeout=timeout):
            raise TimeoutError(f"{job.name} still running")
        if job.error is not None:
            raise job.error
        return job.result

    def stop_all(self, timeout: float = 60) -> None:
        """Ask the scenarios still running to stop, and wait for them to clean up."""
        STOP.set()
        for _ in self._runners:
            self._queue.put((float("inf"), next(self._order), None))
        deadline = time.monotonic() + timeout
        for runner in self._runners:
            runner.join(timeout=max(0.1, deadline - time.monotonic()))


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


def wall_times_table() -> list[str]:
    """Each scenario's wall time, longest first: what to give @lasts."""
    return [
        f"{seconds:7.1f} s  {name}" for name, seconds in sorted(WALL_TIMES, key=lambda w: -w[1])
    ]
