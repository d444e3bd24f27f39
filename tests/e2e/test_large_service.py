"""Scenario 18: a Service with more pods than the old default of max-backends (32).

40 ready pods: with the default every pod gets traffic and nothing warns. With max-backends
32 (the old default) only 32 of them can, and HAProxy says so: the server
max_backends/enough-slots goes DOWN with a WARNING in its log, and the metric
haproxy_backend_active_servers{proxy="max_backends"} drops to 0 while
{proxy="pods_seen"} shows more pods than slots.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.client import Client, Reply, error_summary, errors, pods
from tests.e2e.harness import METRICS_PORT, Observed, PodEnv, generation, observe, wait_for
from tests.e2e.scenarios import Scenarios, background, lasts, recorder
from webhook.engine import names

pytestmark = pytest.mark.e2e

PODS = 40
OLD_DEFAULT = 32
WARNING = "Server max_backends/enough-slots is DOWN"


def active_servers(env: PodEnv) -> dict[str, int]:
    """haproxy_backend_active_servers per backend, from cache-metrics' /metrics."""
    body = Client(env.runner.netns, env.family.pod_ip, METRICS_PORT).get("/metrics").body
    out = {}
    for line in body.splitlines():
        if line.startswith("haproxy_backend_active_servers{"):
            proxy = line.split('proxy="', 1)[1].split('"', 1)[0]
            out[proxy] = int(float(line.split()[-1]))
    return out


def spread_traffic(env: PodEnv, target: int) -> list[Reply]:
    """Uncached requests until `target` pods have answered, then 2 x target more (no further
    pod may show up). A count, not a rate: on a loaded machine a 6 s burst at 40/s once
    sent 6 requests, which said nothing about the pod."""
    replies: list[Reply] = []
    began, until = time.monotonic(), None
    while len(replies) < 20 * target and time.monotonic() - began < 120:
        batch = [env.http.submit(f"/nocache/{len(replies) + i}") for i in range(8)]
        replies += [future.result(timeout=60) for future in batch]
        if until is None and len(pods(replies)) >= target:
            until = len(replies) + 2 * target
        if until is not None and len(replies) >= until:
            break
    return replies


@lasts(30)
def large_service(gen_name: str, max_backends: int | None) -> Observed:
    annotations = {} if max_backends is None else {P_MAX: str(max_backends)}
    with PodEnv(
        generation(gen_name), annotations=annotations, backends=PODS, label="large-service"
    ) as env:
        # Every slot filled and UP (checks every 2 s), or the slots all full.
        slots = max_backends or int(names.OPTIONS_BY_NAME["max_backends"].default or 0)
        filled = wait_for(
            lambda: active_servers(env).get("backend_pods", 0) >= min(PODS, slots), timeout=90
        )
        assert filled is not None, f"slots UP: {active_servers(env)}\n{env.diagnostics()}"
        began = time.monotonic()
        replies = spread_traffic(env, min(PODS, slots))
        # HAProxy checks max_backends/enough-slots every 10 s.
        wait_for(lambda: WARNING in env.haproxy_log(), timeout=25 if max_backends else 12)
        return observe(env, replies, {"start": began}, metrics=active_servers(env))


P_MAX = names.OPTIONS_BY_NAME["max_backends"].key
# The default on both generations; the old default (the warning) on the newest only: 40
# backend pods health-checked every 2 s are a load on the session's one Python process.
CASES = [(g, None) for g in ("newest", "oldest")] + [("newest", OLD_DEFAULT)]


@pytest.mark.parametrize(
    ("gen_name", "max_backends"),
    [
        pytest.param(
            g, m, marks=background(large_service, g, m), id=f"{g}-{'default' if m is None else m}"
        )
        for g, m in CASES
    ],
)
def test_a_service_of_40_pods(
    gen_name: str, max_backends: int | None, scenarios: Scenarios, request: pytest.FixtureRequest
) -> None:
    seen: Observed = scenarios.outcome(request.node)
    spread = pods(seen.replies)
    metrics = seen.extra["metrics"]
    warned = WARNING in seen.haproxy_log
    label = "default" if max_backends is None else f"max-backends {max_backends}"
    note = recorder(f"18 service of {PODS} pods, {label}", seen.label)
    note("requests/errors", f"{len(seen.replies)}/{len(errors(seen.replies))}")
    note("pods serving", len(spread))
    note("active servers", metrics)
    note("warning logged", warned)
    assert not errors(seen.replies), error_summary(seen.replies, seen.marks["start"])
    if max_backends is None:
        assert len(spread) == PODS, f"{sorted(spread)}\n{seen.diagnostics}"
        assert not warned, seen.haproxy_log
        assert metrics["max_backends"] == 1 and metrics["pods_seen"] == PODS, metrics
    else:
        assert len(spread) == max_backends, sorted(spread)
        assert warned, seen.diagnostics
        assert metrics["max_backends"] == 0, metrics
        assert metrics["pods_seen"] == max_backends + 1, metrics
    assert not seen.exited and not seen.unready, seen.diagnostics
