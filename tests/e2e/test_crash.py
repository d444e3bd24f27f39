"""Scenario 14: a crashed sidecar is restarted by the kubelet, and the pod recovers.

Traffic (20 req/s from the app: half to objects cached before, half uncached) runs while the
main process of each sidecar is killed with SIGKILL in turn; the runner restarts it as the
kubelet does (first restart at once, the next after the 10 s back-off), startupProbe again.
- HAProxy killed (twice: the second restart waits out the back-off): cached URLs answer 200
  throughout (Varnish serves them), uncached ones succeed again within 10 s of the restart.
- Varnish killed: its listener and its cache are gone until the restart (requests are
  refused; a formerly cached object is a MISS after it); the pod answers again within 10 s.
Both restarts reuse the emptyDir state (Varnish's workdir, HAProxy's admin socket directory):
no "address in use", no refusal of a leftover workdir, and the new admin socket answers.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.client import Reply, Traffic, between, error_summary
from tests.e2e.harness import LISTEN_PORT, POD_IP, Observed, PodEnv, generation, observe
from tests.e2e.podrunner import BACKOFF_INITIAL_SECONDS
from tests.e2e.scenarios import Scenarios, background, lasts, recorder, sleep

pytestmark = pytest.mark.e2e

CACHED = 5  # objects cached before the crashes
RATE = 20
RECOVERY = 10  # the bound: answering again within 10 s of the restart
WATCH = 6  # seconds of traffic after each recovery
IN_FLIGHT = 0.5  # a request sent this long before a crash may still be cut by it
ADMIN_SOCKET = "/var/run/cache-haproxy/admin.sock"
BAD_LOG_LINES = ("Address already in use", "already running", "Could not", "Cannot bind")


def crash_path(index: int) -> str:
    return f"/static/{index % CACHED}" if index % 2 else f"/nocache/crash-{index}"


def admin_socket_answers(env: PodEnv) -> str:
    """`show info` on HAProxy's stats socket, reached through the container's root."""
    pid = env.runner.states["cache-haproxy"].main_pid
    # /var/run is a symlink to /run: resolved here, as it would be against /proc/PID/root's
    # caller's root otherwise.
    path = Path(f"/proc/{pid}/root") / os.path.realpath(ADMIN_SOCKET).lstrip("/")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(b"show info\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    text = b"".join(chunks).decode(errors="replace")
    return next((line for line in text.splitlines() if line.startswith("Name:")), text[:80])


def port_open(env: PodEnv) -> bool:
    """Whether anything accepts a connection on the pod's cache port."""
    assert env.netns

    def attempt() -> bool:
        try:
            socket.create_connection((POD_IP, LISTEN_PORT), timeout=0.5).close()
        except OSError:
            return False
        return True

    return env.netns.call(attempt)


def crash_and_restart(env: PodEnv, container: str) -> dict[str, Any]:
    """SIGKILL the container's PID 1; return when it was restarted and ready again. For
    Varnish, the pod's port is probed every 20 ms meanwhile: (time, open) pairs."""
    state = env.runner.states[container]
    restarts = len(state.restarts)
    killed = time.monotonic()
    env.runner.signal(container, signal.SIGKILL)
    probes: list[tuple[float, bool]] = []
    deadline = killed + BACKOFF_INITIAL_SECONDS * 2 + 30
    while time.monotonic() < deadline:
        if container == "cache-varnish":
            probes.append((time.monotonic(), port_open(env)))
        if len(state.restarts) > restarts and state.ready:
            break
        time.sleep(0.02)
    assert len(state.restarts) > restarts and state.ready, (
        f"{container} not restarted and ready\n{env.diagnostics()}"
    )
    exited = next(e.at for e in reversed(state.exits))
    return {
        "killed": killed,
        "exited": exited,
        "restarted": state.restarts[-1],
        "started": state.started_at or 0.0,
        "ready": time.monotonic(),
        "probes": probes,
    }


@lasts(40)
def crashes(gen_name: str) -> Observed:
    gen = generation(gen_name)
    with PodEnv(gen, label="crash") as env:
        for i in range(CACHED):
            env.http.get(f"/static/{i}")
        traffic = Traffic(env.http, crash_path, rate=RATE, timeout=5).start()
        sleep(2)
        events: dict[str, dict[str, Any]] = {}
        previous: dict[str, Any] | None = None
        for name, container in (
            ("haproxy", "cache-haproxy"),
            ("haproxy again", "cache-haproxy"),
            ("varnish", "cache-varnish"),
        ):
            events[name] = crash_and_restart(env, container)
            if previous is not None:
                previous["next"] = events[name]["killed"]
            previous = events[name]
            sleep(WATCH)
        replies = traffic.stop()
        assert previous is not None
        previous["next"] = time.monotonic()
        seen = observe(env, replies, {"start": traffic.started_at}, events=events)
        seen.extra["admin"] = admin_socket_answers(env)
        seen.extra["logs"] = {c: env.runner.log(c) for c in ("cache-haproxy", "cache-varnish")}
        seen.extra["ready"] = env.runner.ready
        seen.extra["restarts"] = {n: len(s.restarts) for n, s in env.runner.states.items()}
        seen.extra["exits"] = {n: list(s.exits) for n, s in env.runner.states.items()}
    return seen


def first_ok_after(replies: list[Reply], moment: float) -> float | None:
    """Seconds from `moment` to the first request (by when it was sent) that succeeded."""
    ok = [r.at for r in replies if r.at >= moment and r.ok]
    return min(ok) - moment if ok else None


def recovered_after(replies: list[Reply], moment: float, until: float) -> float | None:
    """Seconds from `moment` until every request sent before `until` succeeds (the first can
    succeed before Varnish's probe has marked HAProxy sick: the last failure counts), or
    None when nothing succeeds after the last failure."""
    window = between(replies, moment, until)
    failed = [r.at for r in window if not r.ok]
    last = max(failed, default=moment)
    if not any(r.ok for r in window if r.at > last):
        return None
    return last - moment


@pytest.mark.parametrize(
    "gen_name", [pytest.param(g, marks=background(crashes, g)) for g in ("newest", "oldest")]
)
def test_a_killed_sidecar_is_restarted_and_the_pod_recovers(
    gen_name: str, scenarios: Scenarios, request: pytest.FixtureRequest
) -> None:
    seen: Observed = scenarios.outcome(request.node)
    events: dict[str, dict[str, Any]] = seen.extra["events"]
    cached = [r for r in seen.replies if r.path.startswith("/static/")]
    uncached = [r for r in seen.replies if r.path.startswith("/nocache/")]
    start = seen.marks["start"]
    note = recorder("14 crash restarts", seen.label)
    for name, event in events.items():
        note(f"{name}: exit to restart s", round(event["restarted"] - event["exited"], 2))
        note(f"{name}: restart to ready s", round(event["ready"] - event["restarted"], 2))
    note("restarts", seen.extra["restarts"])
    note("admin socket after restart", seen.extra["admin"])
    diagnostics = error_summary(seen.replies, start) + "\n" + seen.diagnostics

    # The kubelet's back-off: the first restart at once, the second after 10 s.
    assert events["haproxy"]["restarted"] - events["haproxy"]["exited"] < 2
    assert events["haproxy again"]["restarted"] - events["haproxy again"]["exited"] >= (
        BACKOFF_INITIAL_SECONDS - 0.5
    )
    assert events["varnish"]["restarted"] - events["varnish"]["exited"] < 2
    assert seen.extra["restarts"] == {"cache-haproxy": 2, "cache-varnish": 1}

    # HAProxy down: Varnish still answers every cached URL; misses come back soon.
    varnish_down = events["varnish"]["killed"]
    assert all(r.ok for r in between(cached, start, varnish_down - IN_FLIGHT)), diagnostics
    for name in ("haproxy", "haproxy again"):
        event = events[name]
        outage = between(uncached, event["killed"], event["restarted"])
        note(
            f"{name}: uncached failed while down", f"{sum(not r.ok for r in outage)}/{len(outage)}"
        )
        first = first_ok_after(uncached, event["restarted"])
        note(f"{name}: restart to first uncached 200 s", first and round(first, 2))
        # Until just before the next crash: a request sent then may be cut by it.
        back = recovered_after(uncached, event["restarted"], event["next"] - IN_FLIGHT)
        note(f"{name}: restart to uncached all 200 s", back and round(back, 2))
        assert back is not None and back <= RECOVERY, f"{name}: {back}\n{diagnostics}"

    # Varnish down: refused until the restart, an empty cache after it, answering within 10 s.
    event = events["varnish"]
    down = between(seen.replies, event["killed"] + 0.05, event["restarted"])
    note("varnish: requests failed while down", f"{sum(not r.ok for r in down)}/{len(down)}")
    assert all(not r.ok for r in down), "nothing answers on the pod's port while Varnish is down"
    # The port closes as the container's processes die (within milliseconds of the kill)
    # and opens again only with the restarted Varnish.
    probes = event["probes"]
    closed = next((at for at, is_open in probes if not is_open), None)
    assert closed is not None and closed - event["killed"] < 1, f"never refused: {probes[:5]}"
    opened = next((at for at, is_open in probes if is_open and at > closed), None)
    note("varnish: port refused for s", opened and round(opened - closed, 2))
    assert opened is not None and opened > event["restarted"], "it opens with the new Varnish"
    first = first_ok_after(seen.replies, event["restarted"])
    note("varnish: restart to first 200 s", first and round(first, 2))
    back = recovered_after(seen.replies, event["restarted"], event["next"] - IN_FLIGHT)
    note("varnish: restart to all 200 s", back and round(back, 2))
    assert back is not None and back <= RECOVERY, diagnostics
    after = [r for r in cached if r.at >= event["restarted"] and r.ok]
    assert after and after[0].cache == "MISS", "the cache did not survive the restart"
    note("exit codes", {n: [e.code for e in exits] for n, exits in seen.extra["exits"].items()})
    for name, exits in seen.extra["exits"].items():
        assert [e.code for e in exits] == [-signal.SIGKILL] * len(exits), (name, exits)

    # The emptyDir state was reused cleanly.
    for container, log in seen.extra["logs"].items():
        bad = [line for line in log.splitlines() if any(b in line for b in BAD_LOG_LINES)]
        assert not bad, f"{container}: {bad}"
    assert seen.extra["admin"].startswith("Name: HAProxy"), seen.extra["admin"]
    assert seen.extra["ready"], seen.diagnostics
