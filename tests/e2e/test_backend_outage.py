"""Scenario 7: every backend pod fails; cached objects are still served within grace,
uncached requests fail fast, and service comes back with the replacement pods.

The outage is played as a cluster plays it: the pods die at once (connections refused), 5 s
later their readiness has failed and the headless Service has no ready pod (DNS: NXDOMAIN),
and 40 s later replacement pods with new addresses become ready. 40 s passes `hold nx`
(30 s), so HAProxy's server slots are all in maintenance before the pods return: the case
where, on some versions, slots stayed down until a reload (FIELD-NOTES row 23).
Three kinds of cached object are asked for from the first second of the outage: fresh ones,
ones that expired 3 s before it, and ones that expired 11 s before it (older than the 10 s of
grace Varnish allows while it still thinks the backends are up).
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.client import Traffic, between, error_summary, errors, pods
from tests.e2e.harness import NAMESPACE, SERVICE, Observed, PodEnv, generation, observe, wait_for
from tests.e2e.scenarios import Scenarios, background, lasts, recorder, sleep

pytestmark = pytest.mark.e2e

OUTAGE = 40
KINDS = ("/static/fresh", "/short/expired", "/short/long-expired", "/nocache/")


def outage_path(index: int) -> str:
    kind = KINDS[index % len(KINDS)]
    return f"{kind}{index}" if kind == "/nocache/" else f"{kind}-{index // len(KINDS) % 4}"


@lasts(75)
def backend_outage(gen_name: str, family: str = "ipv4") -> Observed:
    with PodEnv(generation(gen_name), backends=3, label="backend-outage", family=family) as env:
        assert env.dns
        objects = [f"{kind}-{n}" for kind in KINDS[:3] for n in range(4)]
        for path in objects:
            if path.startswith("/short/long-expired"):
                assert env.http.get(path).ok
        sleep(10)
        for path in objects:
            if not path.startswith("/short/long-expired"):
                assert env.http.get(path).ok
        sleep(3)  # /short (max-age=2): expired 1 s ago, long-expired 11 s ago
        down = time.monotonic()
        for backend in list(env.backends.values()):
            backend.stop(graceful=False)
        # Several clients at once ask for each long-expired object, so its fetch has a
        # waiting list: the case where Varnish keeps the failed fetch's error for 1 s + 5 s
        # of grace (vbf_stp_error), hiding the stale copy, unless the VCL says not to.
        long_expired = [path for path in objects if path.startswith("/short/long-expired")]
        burst = [env.http.submit(path) for path in long_expired for _ in range(6)]
        traffic = Traffic(env.http, outage_path, rate=16).start()
        sleep(5)
        env.dns.set_pods(NAMESPACE, SERVICE, [])  # no ready pod: NXDOMAIN
        sleep(OUTAGE - 5)
        back = time.monotonic()
        replacements = [env.add_backend() for _ in range(3)]
        recovered = wait_for(lambda: all(b.total("/nocache/") for b in replacements), timeout=45)
        sleep(5)
        replies = traffic.stop() + [future.result(timeout=60) for future in burst]
        return observe(
            env, replies, {"down": down, "back": back}, recovered=recovered,
            replacements=[b.name for b in replacements],
        )  # fmt: skip


@pytest.mark.parametrize(
    ("gen_name", "family"),
    [
        pytest.param(g, f, marks=background(backend_outage, g, f), id=f"{g}-{f}")
        for f in ("ipv4", "ipv6", "dual")
        for g in ("newest", "oldest")
    ],
)
def test_backend_outage_serves_cache_fails_fast_and_recovers(
    gen_name: str, family: str, scenarios: Scenarios, request: pytest.FixtureRequest
) -> None:
    seen: Observed = scenarios.outcome(request.node)
    down, back = seen.marks["down"], seen.marks["back"]
    outage = between(seen.replies, down, back)
    cached = [r for r in outage if not r.path.startswith("/nocache/")]
    uncached = [r for r in outage if r.path.startswith("/nocache/")]
    recovered = seen.extra["recovered"]
    note = recorder(f"7 backend outage {family}", seen.label)
    for kind in KINDS[:3]:
        of_kind = [r for r in cached if r.path.startswith(kind)]
        note(f"errors {kind}", f"{len(errors(of_kind))}/{len(of_kind)}")
    slowest = max((r.elapsed for r in uncached), default=0.0)
    note(
        "uncached: not 5xx / slowest s", f"{sum(r.status < 500 for r in uncached)} / {slowest:.2f}"
    )
    note("seconds to recover (new pods)", recovered)
    assert cached and uncached
    assert not errors(cached), error_summary(cached, down) + "\n" + seen.diagnostics
    assert all(r.status >= 500 for r in uncached), [r.describe() for r in uncached if r.ok][:5]
    assert slowest < 5, [r.describe() for r in uncached if r.elapsed >= 5][:5]
    assert recovered is not None and recovered <= 30, f"{recovered}\n{seen.diagnostics}"
    settled = between(seen.replies, back + recovered + 2)
    assert settled and not errors(settled), error_summary(settled, back)
    assert set(seen.extra["replacements"]) <= set(pods(settled)), pods(settled)
    assert not seen.exited and not seen.unready, "readiness never depends on the backends\n" + (
        seen.diagnostics
    )


# -- 7b: the backends fail slowly --------------------------------------------------------------
# Every pod still accepts connections but answers 503 after 1 s (a broken release): HAProxy
# keeps them in rotation and Varnish's probe stays healthy, so an object 11 s past its TTL is
# beyond the 10 s of grace and fetched. The fetch fails; the second look must find the stale
# copy - also for requests that waited on that fetch, and after the background refreshes the
# stale hits start have failed too. Varnish 7.1 cached those errors (a "503, X-Cache: HIT"
# for ~8 s) until vcl_backend_error made every error object uncacheable.
SLOW_FAILURE = 1.0


@lasts(35)
def slow_failure(gen_name: str) -> Observed:
    with PodEnv(generation(gen_name), backends=2, label="slow-failure") as env:
        paths = [f"/short/slow-{n}" for n in range(2)]
        for path in paths:
            assert env.http.get(path).ok
        sleep(13)  # /short (max-age=2): 11 s past its TTL
        for backend in env.backends.values():
            backend.set_failing(SLOW_FAILURE)
        began = time.monotonic()
        futures = [env.http.submit(paths[0], timeout=30) for _ in range(4)]  # 3 wait on 1
        replies = [f.result(timeout=60) for f in futures]
        for second in range(1, 9):
            sleep(began + second - time.monotonic())
            futures = [env.http.submit(path, timeout=30) for path in paths]
            replies += [f.result(timeout=60) for f in futures]
        return observe(env, replies, {"began": began})


@pytest.mark.parametrize(
    "gen_name", [pytest.param(g, marks=background(slow_failure, g)) for g in ("newest", "oldest")]
)
def test_failing_backends_never_hide_the_stale_copy(
    gen_name: str, scenarios: Scenarios, request: pytest.FixtureRequest
) -> None:
    seen: Observed = scenarios.outcome(request.node)
    note = recorder("7b slow failure", seen.label)
    note("stale served / requests", f"{sum(r.ok for r in seen.replies)}/{len(seen.replies)}")
    note("slowest s", round(max(r.elapsed for r in seen.replies), 2))
    assert len(seen.replies) == 4 + 8 * 2
    assert not errors(seen.replies), error_summary(seen.replies, seen.marks["began"])
    assert {r.pod for r in seen.replies} <= {"app-0", "app-1"}, "the stored copy was served"
