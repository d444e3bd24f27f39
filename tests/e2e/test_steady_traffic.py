"""Scenario 3: beyond 30 s — 75 s of steady traffic without an error.

The field report's config died ~30 s after start ("DNS NX status"), once HAProxy's resolver
took over from the addresses libc had found at start; 75 s covers that window twice.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.client import Traffic, error_summary, errors, largest_gap, pods
from tests.e2e.harness import Observed, PodEnv, generation, mixed_path, observe, stop_seconds
from tests.e2e.scenarios import Scenarios, background, lasts, recorder, sleep

pytestmark = pytest.mark.e2e

SECONDS = 75
RATE = 20  # requests a second
# dns-srv too: HAProxy's SRV handling had servers flapping every `hold obsolete` (FIELD-NOTES
# row 23), which only a run longer than that (30 s) can show.
DISCOVERY = {
    "dns-a": {},
    "dns-srv": {"cache-injector.io/backend": "app:http", "cache-injector.io/discovery": "dns-srv"},
}


@lasts(90)
def steady_traffic(gen_name: str, discovery: str) -> Observed:
    gen = generation(gen_name)
    with PodEnv(gen, annotations=DISCOVERY[discovery], label=f"steady-{discovery}") as env:
        traffic = Traffic(env.http, mixed_path, rate=RATE).start()
        sleep(SECONDS)
        replies = traffic.stop()
        seen = observe(env, replies, {"start": traffic.started_at, "end": time.monotonic()})
    seen.extra["stop_seconds"] = stop_seconds(env)  # SIGTERM -> exit, after the traffic
    return seen


@pytest.mark.parametrize(
    ("gen_name", "discovery"),
    [
        pytest.param(g, d, marks=background(steady_traffic, g, d), id=f"{g}-{d}")
        for g, d in (("newest", "dns-a"), ("oldest", "dns-a"), ("newest", "dns-srv"))
    ],
)
def test_75_seconds_of_steady_traffic_without_an_error(
    gen_name: str, discovery: str, scenarios: Scenarios, request: pytest.FixtureRequest
) -> None:
    seen: Observed = scenarios.outcome(request.node)
    bad = errors(seen.replies)
    uncached = [r for r in seen.replies if r.path.startswith("/nocache/")]
    note = recorder(f"3 steady 75s {discovery}", seen.label)
    note("requests", len(seen.replies))
    note("errors", len(bad))
    note("uncached per pod", dict(sorted(pods(uncached).items())))
    note("SIGTERM to exit s", seen.extra["stop_seconds"])
    downs = [line for line in seen.haproxy_log.splitlines() if "DOWN" in line]
    note("HAProxy server DOWN events", len(downs))
    gap = largest_gap(seen.replies, seen.marks["start"], seen.marks["end"])
    note("longest stretch without a request s", round(gap, 2))
    assert gap <= 5, f"{gap:.1f} s of the run went unchecked (the count is a figure, above)"
    assert not bad, error_summary(seen.replies, seen.marks["start"]) + "\n" + seen.diagnostics
    assert set(pods(uncached)) == set(seen.backend_requests), seen.diagnostics
    last = [r for r in uncached if r.at > seen.marks["end"] - 10]
    assert set(pods(last)) == set(seen.backend_requests), "every pod still serves at the end"
    assert not downs, "no server left the rotation (no SRV flapping)\n" + "\n".join(downs[:5])
    assert not seen.exited and not seen.unready, seen.diagnostics
