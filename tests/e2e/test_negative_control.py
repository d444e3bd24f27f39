"""Scenario 10, the negative control: the field report's outage, reproduced by this runner.

The same pod, with HAProxy pointed at the bare Service name `app` and the default
`init-addr` (as the field report's config had): libc resolves `app` at start through the
resolv.conf search list, so traffic flows; HAProxy's own resolver sends `app.` as it is, gets
NXDOMAIN, and once `hold nx` (30 s) has passed the servers go DOWN with "DNS NX status". If
this test passed with the harness blind to that failure, the other scenarios would prove
nothing.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.client import Traffic, between, errors
from tests.e2e.harness import (
    BACKEND_PORT,
    FQDN,
    SERVICE,
    Observed,
    PodEnv,
    generation,
    observe,
    wait_for,
)
from tests.e2e.scenarios import Scenarios, background, lasts, recorder, sleep

pytestmark = pytest.mark.e2e


def short_name(cfg: str) -> str:
    """The injected haproxy.cfg as the field report had it: short name, libc at start."""
    edited = cfg.replace(f" {FQDN}:{BACKEND_PORT}", f" {SERVICE}:{BACKEND_PORT}")
    edited = edited.replace("init-addr none", "init-addr last,libc,none")
    servers = [line for line in edited.splitlines() if line.strip().startswith("server-template")]
    assert servers and servers[0].endswith(f" {SERVICE}:{BACKEND_PORT}"), servers
    assert "init-addr last,libc,none" in edited, edited
    return edited


@lasts(40)
def field_report() -> Observed:
    # 8 slots: each (and each of pods_seen's) resolves through libc at start, one after the
    # other; 128 + 129 of them outlasted the startupProbe on a loaded machine.
    slots = {"cache-injector.io/max-backends": "8"}
    with PodEnv(
        generation("newest"), annotations=slots, edit_haproxy_cfg=short_name, label="negative"
    ) as env:
        traffic = Traffic(env.http, lambda i: f"/nocache/{i}", rate=5).start()
        down = wait_for(lambda: "DNS NX status" in env.haproxy_log(), timeout=90, interval=0.5)
        at = time.monotonic()
        sleep(5)
        replies = traffic.stop()
        return observe(env, replies, {"start": traffic.started_at, "down": at}, down_after=down)


@background(field_report)
def test_the_short_name_goes_down_with_dns_nx_status(
    scenarios: Scenarios, request: pytest.FixtureRequest
) -> None:
    seen: Observed = scenarios.outcome(request.node)
    down_after = seen.extra["down_after"]
    # Up to the DOWN report (at most 10 s): libc resolved the short name through the search list.
    end = min(seen.marks["start"] + 10, seen.marks["down"] or seen.marks["start"] + 10) - 1.0
    before = between(seen.replies, seen.marks["start"], end)
    after = between(seen.replies, seen.marks["down"] + 3)
    note = recorder("10 negative control", seen.label)
    note("seconds to 'DNS NX status'", down_after)
    note("errors first 10 s / after DOWN", f"{len(errors(before))}/{len(errors(after))}")
    assert before and not errors(before), "libc found the pods through the search list at start"
    assert down_after is not None, "HAProxy never reported DNS NX status\n" + seen.diagnostics
    nx_lines = [line for line in seen.haproxy_log.splitlines() if "DNS NX status" in line]
    assert nx_lines and "DOWN" in nx_lines[0], nx_lines
    assert after and all(r.status >= 500 for r in after), [r.describe() for r in after[:5]]
