"""Scenarios 4 and 5: the backend Service scales while traffic flows.

Scale up: a new pod that becomes ready (started, then published in DNS) gets traffic within
20 s — HAProxy re-resolves once `hold valid` (1 s) has passed. Scale down: a pod that leaves
DNS and stops at the same moment (as a terminated pod does) causes no error after 15 s at the
latest; before that its health checks fail and `retries`/`redispatch` move refused
connections to the other pods. (Here the stopped pod's address still refuses; a real deleted
pod's address is gone and times out: tests/kube/test_datapath.py plays that rollout.)
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.client import Traffic, between, error_summary, errors, pods
from tests.e2e.harness import Observed, PodEnv, generation, observe, wait_for
from tests.e2e.scenarios import Scenarios, background, lasts, recorder, sleep

pytestmark = pytest.mark.e2e

RATE = 20


def uncached(index: int) -> str:
    return f"/nocache/{index}"


def scale_up(gen_name: str = "newest", family: str = "ipv4") -> Observed:
    with PodEnv(generation(gen_name), backends=3, label="scale-up", family=family) as env:
        traffic = Traffic(env.http, uncached, rate=RATE).start()
        sleep(3)
        added = time.monotonic()
        new = env.add_backend()
        picked = wait_for(lambda: new.total() > 0, timeout=40)
        sleep(3)
        replies = traffic.stop()
        return observe(
            env, replies, {"start": traffic.started_at, "added": added}, new=new.name,
            pickup=picked,
        )  # fmt: skip


@lasts(30)
def scale_down() -> Observed:
    with PodEnv(generation("newest"), backends=4, label="scale-down") as env:
        traffic = Traffic(env.http, uncached, rate=RATE).start()
        sleep(3)
        removed = time.monotonic()
        gone = env.backends["app-3"]
        env.remove_backend(gone.name)
        sleep(25)
        replies = traffic.stop()
        return observe(
            env, replies, {"start": traffic.started_at, "removed": removed}, gone=gone.name,
            last_served=gone.last_request_at - removed,
        )  # fmt: skip


# IPv4 on the newest generation; IPv6-only and dual-stack pods on both.
SCALE_UP = [("newest", "ipv4")] + [(g, f) for f in ("ipv6", "dual") for g in ("newest", "oldest")]


@pytest.mark.parametrize(
    ("gen_name", "family"),
    [pytest.param(g, f, marks=background(scale_up, g, f), id=f"{g}-{f}") for g, f in SCALE_UP],
)
def test_a_new_backend_pod_gets_traffic_within_20_seconds(
    gen_name: str, family: str, scenarios: Scenarios, request: pytest.FixtureRequest
) -> None:
    seen: Observed = scenarios.outcome(request.node)
    pickup = seen.extra["pickup"]
    note = recorder(f"4 scale up {family}", seen.label)
    note("seconds to first request on new pod", pickup)
    note("errors", len(errors(seen.replies)))
    assert pickup is not None and pickup <= 20, f"picked up after {pickup} s\n{seen.diagnostics}"
    assert not errors(seen.replies), error_summary(seen.replies, seen.marks["added"])
    after = between(seen.replies, seen.marks["added"] + pickup + 2)
    assert seen.extra["new"] in pods(after), "the new pod stays in the rotation"
    assert not seen.exited and not seen.unready, seen.diagnostics
    assert set(seen.extra["families"]) == {"ipv6" if family == "ipv6" else "ipv4"}


@background(scale_down)
def test_a_removed_stopped_pod_causes_no_errors_after_15_seconds(
    scenarios: Scenarios, request: pytest.FixtureRequest
) -> None:
    seen: Observed = scenarios.outcome(request.node)
    removed = seen.marks["removed"]
    early, late = between(seen.replies, removed, removed + 15), between(seen.replies, removed + 15)
    note = recorder("5 scale down", seen.label)
    note("errors in first 15 s / after", f"{len(errors(early))}/{len(errors(late))}")
    note("removed pod last served at s", round(seen.extra["last_served"], 2))
    assert late, "traffic went on after 15 s"
    assert not errors(late), error_summary(seen.replies, removed) + "\n" + seen.diagnostics
    assert seen.extra["gone"] not in pods(late)
    assert not seen.exited and not seen.unready, seen.diagnostics
