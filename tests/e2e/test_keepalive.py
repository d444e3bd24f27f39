"""Scenario 17: idle connections between Varnish and HAProxy are closed by the side that
reuses them.

Varnish keeps an idle backend connection for `backend_idle_timeout` and reuses it for the
next miss; HAProxy's local frontend closes an idle keep-alive connection after `timeout
http-keep-alive`. When HAProxy's timeout is the shorter one (it was: 10 s against Varnish's
default 60 s), every miss after more than 10 s of quiet finds its pooled connection closed
by HAProxy, and one sent while HAProxy is closing it can fail. Now Varnish gives up an idle
connection after 30 s and HAProxy keeps it 60 s.

One client sends misses spaced around the old boundary (10 s, with jitter, before and after
it) and once across Varnish's own idle timeout (30 s), for more than 60 s. Varnish's counters
tell what happened to its pooled connections: `backend_reuse` counts misses sent on a pooled
connection, `backend_conn` new connections (the pooled one was gone), `backend_retry` requests
that went out on a dead one and were retried. The negative variant runs the old settings.
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any

import pytest

from tests.e2e.client import error_summary, errors
from tests.e2e.harness import Observed, PodEnv, generation, observe
from tests.e2e.scenarios import Scenarios, background, lasts, recorder, sleep
from webhook.engine import names

pytestmark = pytest.mark.e2e

# Gaps between misses, s: around HAProxy's old 10 s keep-alive (below, at, above it), then
# one across Varnish's 30 s idle timeout; each with up to 0.1 s of jitter. 81 s in all.
GAPS = (9.8, 9.9, 10.0, 10.1, 10.2, 30.5)
COUNTERS = ("backend_conn", "backend_reuse", "backend_toolate", "backend_retry", "fetch_failed")
ABOVE_OLD_BOUNDARY = 2  # gaps surely above 10 s even with the jitter: 10.1, 10.2 (and 30.5)


def old_haproxy(cfg: str) -> str:
    """haproxy.cfg as it was: the local frontend's keep-alive back to the defaults (10 s)."""
    lines = [f"    timeout http-keep-alive {names.HAPROXY_LOCAL_KEEPALIVE_SECONDS}s"]
    lines.append(f"    timeout client {names.HAPROXY_LOCAL_KEEPALIVE_SECONDS}s")
    for line in lines:
        assert line in cfg, line
        cfg = cfg.replace(line + "\n", "", 1)
    return cfg


def old_varnish(manifest: dict[str, Any]) -> None:
    """varnishd as it was: no backend_idle_timeout (Varnish's default, 60 s)."""
    for container in manifest["spec"]["initContainers"]:
        if container["name"] == "cache-varnish":
            args = container["args"]
            at = args.index(f"backend_idle_timeout={names.VARNISH_BACKEND_IDLE_SECONDS}")
            del args[at - 1 : at + 1]
            return
    raise AssertionError("no cache-varnish")


def varnish_counters(env: PodEnv) -> dict[str, int]:
    """The COUNTERS of the pod's varnishd (MAIN.*), 0 for one it does not have."""
    values = env.varnishstat("MAIN.*")
    return {name: values.get(f"MAIN.{name}", 0) for name in COUNTERS}


@lasts(95)
def idle_reuse(gen_name: str, fixed: bool) -> Observed:
    jitter = random.Random(f"{gen_name}-{fixed}")  # the same schedule every run
    with PodEnv(
        generation(gen_name),
        backends=2,
        label="keepalive" if fixed else "keepalive-old",
        edit_haproxy_cfg=None if fixed else old_haproxy,
        edit_pod=None if fixed else old_varnish,
    ) as env:
        began = time.monotonic()
        replies = [env.http.get("/nocache/first")]
        for index, gap in enumerate(GAPS):
            due = replies[-1].at + gap + jitter.uniform(-0.1, 0.1)
            sleep(due - time.monotonic())
            replies.append(env.http.get(f"/nocache/{index}"))
        counters = varnish_counters(env)
        return observe(
            env,
            replies,
            {"start": began},
            counters=counters,
            seconds=time.monotonic() - began,
            gaps=[round(b.at - a.at, 2) for a, b in itertools.pairwise(replies)],
        )


@pytest.mark.parametrize(
    ("gen_name", "fixed"),
    [
        pytest.param(g, f, marks=background(idle_reuse, g, f), id=f"{g}-{'now' if f else 'old'}")
        for g, f in (("newest", True), ("oldest", True), ("newest", False), ("oldest", False))
    ],
)
def test_varnish_closes_idle_connections_before_haproxy_does(
    gen_name: str, fixed: bool, scenarios: Scenarios, request: pytest.FixtureRequest
) -> None:
    seen: Observed = scenarios.outcome(request.node)
    counters = seen.extra["counters"]
    note = recorder(f"17 idle keep-alive {'now' if fixed else 'old settings'}", seen.label)
    note("requests/errors", f"{len(seen.replies)}/{len(errors(seen.replies))}")
    note("seconds", round(seen.extra["seconds"], 1))
    note("varnish counters", counters)
    assert seen.extra["seconds"] >= 60
    if not fixed:
        # The negative control: HAProxy closed the pooled connection after 10 s of quiet, so
        # the misses after the longer gaps needed new connections.
        assert counters["backend_conn"] >= 2 + ABOVE_OLD_BOUNDARY, counters
        return
    assert not errors(seen.replies), error_summary(seen.replies, seen.marks["start"])
    assert counters["backend_retry"] == 0, counters
    assert counters["fetch_failed"] == 0, counters
    # Every ~10 s gap reused the pooled connection; only the 30.5 s one found it closed (by
    # Varnish itself): two connections in all.
    assert counters["backend_reuse"] == len(GAPS) - 1, counters
    assert counters["backend_conn"] == 2, counters
    assert not seen.exited and not seen.unready, seen.diagnostics
