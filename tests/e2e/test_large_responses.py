"""Scenario 20: responses larger than the cache arrive whole, and do not flush it.

A small cache (16Mi, the policy minimum) keeps the large objects at a few tens of MB. A
working set of 20 cacheable 256 KiB objects is stored first; then objects of 0.5x, 1.5x and
3x the cache size, with Content-Length and chunked, are each downloaded twice, the 3x
ones by 4 clients at once, and one of 6x (larger than Transient) by a slow client: twice,
then with a cookie (a pass).
Every download must be the full body (same SHA-256 as the backend's), the working set must
still be served as HITs afterwards, and cache-varnish must stay under 90 % of its memory
limit, measured in a memory cgroup of that limit throughout.
An object under max-object-size (10 % of the cache by default) is still cached.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from tests.e2e.backends import big_checksum
from tests.e2e.client import Download, download
from tests.e2e.harness import LISTEN_PORT, POD_IP, PodEnv, generation
from tests.e2e.scenarios import Scenarios, background, lasts, recorder

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
CACHE = 16 * MIB
WORKING_SET = [f"/big/{256 * 1024}/length/ws{i}" for i in range(20)]
SMALL = f"/big/{MIB}/length/small"  # under max-object-size (1.6 MiB): cached
CONCURRENT = 4


@dataclass
class Seen:
    label: str
    downloads: list[tuple[str, Download]] = field(default_factory=list)  # (what, download)
    working_set_before: list[str] = field(default_factory=list)  # X-Cache of the second GETs
    working_set_after: list[str] = field(default_factory=list)
    small: list[str] = field(default_factory=list)
    peak: int = 0  # bytes, the cgroup's max usage
    limit: int = 0
    samples: int = 0
    diagnostics: str = ""


@lasts(25)
def large_responses(gen_name: str) -> Seen:
    gen = generation(gen_name)
    annotations = {"cache-injector.io/cache-size": "16Mi"}
    with PodEnv(gen, annotations=annotations, backends=2, memory_limits=True, label="large") as env:
        netns = env.netns
        assert netns is not None  # PodEnv.start() made it
        seen = Seen(gen.label)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                figures = env.runner.memory("cache-varnish")
                if figures:
                    seen.peak = max(seen.peak, figures[0])
                    seen.samples += 1

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def get(path: str) -> Download:
            return download(netns, POD_IP, LISTEN_PORT, path)

        try:
            for path in WORKING_SET:  # stored by the first pass, found by the second
                get(path)
            seen.working_set_before = [get(p).cache for p in WORKING_SET]
            seen.small = [get(SMALL).cache for _ in range(2)]
            for factor in (0.5, 1.5, 3):
                for framing in ("length", "chunked"):
                    path = f"/big/{int(CACHE * factor)}/{framing}/x{factor}"
                    for attempt in (1, 2):
                        seen.downloads.append((f"{factor}x {framing} #{attempt}", get(path)))
            with ThreadPoolExecutor(CONCURRENT) as pool:
                for framing in ("length", "chunked"):
                    path = f"/big/{CACHE * 3}/{framing}/together"
                    for reply in pool.map(get, [path] * CONCURRENT):
                        seen.downloads.append((f"3x {framing} concurrent", reply))
            # Larger than Transient (64Mi), to a client slower than the backend (~40 MB/s).
            slow = f"/big/{CACHE * 6}/length/slow"
            for attempt in (1, 2):
                reply = download(netns, POD_IP, LISTEN_PORT, slow, pace=0.0015)
                seen.downloads.append((f"6x length slow client #{attempt}", reply))
            # The same with a cookie: passed from vcl_recv (uncacheable whatever its size).
            reply = download(
                netns, POD_IP, LISTEN_PORT, slow, pace=0.0015, headers={"Cookie": "s=1"}
            )
            seen.downloads.append(("6x length slow client, passed (cookie)", reply))
            seen.working_set_after = [get(p).cache for p in WORKING_SET]
        finally:
            done.set()
            sampler.join(timeout=5)
        figures = env.runner.memory("cache-varnish")
        if figures:
            seen.peak, seen.limit = max(seen.peak, figures[1]), figures[2]
        seen.diagnostics = env.diagnostics()
    return seen


@pytest.mark.parametrize(
    "gen_name",
    [pytest.param(g, marks=background(large_responses, g)) for g in ("newest", "oldest")],
)
def test_large_responses_arrive_whole_and_keep_the_working_set(
    gen_name: str, scenarios: Scenarios, request: pytest.FixtureRequest
) -> None:
    seen: Seen = scenarios.outcome(request.node)
    note = recorder("20 large responses", seen.label)
    bad = []
    for what, reply in seen.downloads:
        size = int(reply.path.split("/")[2])
        whole = (
            reply.status == 200
            and reply.complete
            and reply.length == size
            and reply.sha256 == big_checksum(reply.path, size)
        )
        if not whole:
            bad.append(f"{what}: {reply.status} {reply.length}/{size} bytes {reply.error}")
        note(
            f"{what}",
            f"{reply.status} {reply.length}/{size} B sha256 {reply.sha256[:12]} "
            f"{'whole' if whole else 'BAD'} X-Cache={reply.cache or '-'}",
        )
    note("downloads whole", f"{len(seen.downloads) - len(bad)}/{len(seen.downloads)}")
    note("working set HITs after", f"{seen.working_set_after.count('HIT')}/{len(WORKING_SET)}")
    note("peak memory MiB (limit)", f"{seen.peak / MIB:.0f} ({seen.limit / MIB:.0f})")
    assert not bad, "\n".join(bad) + "\n" + seen.diagnostics
    assert seen.working_set_before == ["HIT"] * len(WORKING_SET), seen.working_set_before
    assert seen.small == ["MISS", "HIT"], "an object under max-object-size is cached"
    assert seen.working_set_after == ["HIT"] * len(WORKING_SET), seen.working_set_after
    assert seen.samples > 0 and seen.limit > 0, "memory was measured"
    assert seen.peak < 0.9 * seen.limit, f"peak {seen.peak} of limit {seen.limit}"
    # The large ones were passed (or, on 7.1, piped: no X-Cache), never stored.
    note("downloads piped (no X-Cache)", sum(1 for _, r in seen.downloads if not r.cache))
    assert all(reply.cache in ("MISS", "") for _, reply in seen.downloads)
