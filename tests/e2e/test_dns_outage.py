"""Scenario 6: a 40 s cluster-DNS outage costs nothing, cached or uncached.

HAProxy keeps each server's last address while DNS fails (`hold timeout`, `hold refused`,
`hold other`: 300 s), so uncached requests keep reaching every backend pod. Four kinds:
- timeout: the DNS server answers nothing (CoreDNS overloaded, packets lost);
- refused: it answers REFUSED (e.g. CoreDNS's forward plugin over max_concurrent);
- servfail: it answers SERVFAIL (CoreDNS that cannot reach the API server, or its upstream);
- down: its port is closed, the kernel answers ICMP port unreachable (kube-proxy's REJECT
  for the kube-dns Service while no CoreDNS pod is ready).
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.client import Traffic, between, error_summary, errors, pods
from tests.e2e.harness import Observed, PodEnv, generation, mixed_path, observe
from tests.e2e.scenarios import Scenarios, background, lasts, recorder, sleep

pytestmark = pytest.mark.e2e

OUTAGE = 40
RATE = 20
MODES = ("timeout", "refused", "servfail", "down")


@lasts(60)
def dns_outage(gen_name: str, mode: str, family: str = "ipv4") -> Observed:
    gen = generation(gen_name)
    with PodEnv(gen, label=f"dns-{mode}", family=family) as env:
        assert env.dns
        traffic = Traffic(env.http, mixed_path, rate=RATE).start()
        sleep(5)
        began = time.monotonic()
        env.dns.set_mode(mode)
        sleep(OUTAGE)
        ended = time.monotonic()
        env.dns.set_mode("serve")
        sleep(10)
        replies = traffic.stop()
        queries = [q for q in env.dns.queries if began <= q.at < ended]
        return observe(
            env,
            replies,
            {"start": traffic.started_at, "outage": began, "back": ended},
            queries_during_outage=len(queries),
        )


# Every kind on IPv4; on IPv6-only pods the closed port (ICMPv6 port unreachable: the DNS
# Service has an IPv6 address there), on dual-stack ones SERVFAIL (both kinds on both
# families passed too; one each keeps the session's load down).
OUTAGES = [(g, m, "ipv4") for g in ("newest", "oldest") for m in MODES] + [
    (g, m, f) for f, m in (("ipv6", "down"), ("dual", "servfail")) for g in ("newest", "oldest")
]


@pytest.mark.parametrize(
    ("gen_name", "mode", "family"),
    [
        pytest.param(
            g, m, f, marks=background(dns_outage, g, m, f),
            id=f"{g}-{m}" if f == "ipv4" else f"{g}-{m}-{f}",
        )
        for g, m, f in OUTAGES
    ],
)  # fmt: skip
def test_dns_outage_of_40_seconds_without_an_error(
    gen_name: str, mode: str, family: str, scenarios: Scenarios, request: pytest.FixtureRequest
) -> None:
    seen: Observed = scenarios.outcome(request.node)
    outage = between(seen.replies, seen.marks["outage"], seen.marks["back"])
    cached = [r for r in outage if not r.path.startswith("/nocache/")]
    uncached = [r for r in outage if r.path.startswith("/nocache/")]
    note = recorder(f"6 dns outage {mode} {family}", seen.label)
    note("errors cached/uncached", f"{len(errors(cached))}/{len(errors(uncached))}")
    note("errors overall", len(errors(seen.replies)))
    note("dns queries during outage", seen.extra["queries_during_outage"])
    assert cached and uncached
    assert not errors(seen.replies), (
        error_summary(seen.replies, seen.marks["outage"]) + "\n" + seen.diagnostics
    )
    last = between(uncached, seen.marks["back"] - 10)
    assert set(pods(last)) == set(seen.backend_requests), "every pod kept its address"
    assert not seen.exited and not seen.unready, seen.diagnostics
