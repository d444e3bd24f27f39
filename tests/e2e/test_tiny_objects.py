"""Scenario 15: a stream of unique tiny objects (cache-busting query strings) fills the cache
and keeps evicting; cache-varnish must stay under 90 % of its memory limit and level off.

Each object costs ~1 KB outside `-s malloc`, and with the critbit hasher evicted objects'
objheads waited critbit_cooloff (180 s): the default pod fed unique ~1 KiB objects reached
117 % of its limit in 120 s, still growing. The pod now uses the classic hasher (no
cool-off: objheads go with their objects) and a limit whose headroom follows what the cache
can hold. The stream (~1 KiB objects, as in that report: the body repeats the path) runs
until the cache has been replaced TURNOVERS times over (evictions counted by Varnish), which
with no cool-off to wait for is what "long enough" means; the memory is sampled all along.
A 16Mi cache (the smallest allowed) keeps that short. jemalloc's arenas (4 per CPU of the
node) fragmented under such a stream (bench/churn); every process of cache-varnish must run
with eight (MALLOC_CONF=narenas:8, builder.VARNISH_JEMALLOC_CONF). The smallest objects (a
few bytes of body, ~350 bytes stored: the worst case the limit is computed for) would need
~4x the requests; docs/policy.md ("Memory per pod") gives their measured figures.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.footprint import footprints, process_tree
from tests.e2e.harness import LISTEN_PORT, POD_IP, PodEnv, generation
from tests.e2e.scenarios import Scenarios, background, lasts, recorder, sleep
from webhook.engine.builder import VARNISH_JEMALLOC_CONF
from webhook.engine.values import parse_size

pytestmark = pytest.mark.e2e

CACHE_SIZE = "16Mi"
CLIENTS = 4
TURNOVERS = 2  # the cache replaced this many times over after it first filled
DEADLINE = 300  # seconds of streaming at most (a loaded machine streams slowly)
SAMPLE_EVERY = 2.0
# The backend's body is "<pod> <path>": a long path makes a ~1 KiB object; the query string
# makes each URL unique (the backend counts requests per path, without the query).
PATH = "/static/" + "x" * 960


@dataclass
class Sample:
    at: float  # seconds since the stream started
    varnish_mib: float
    objects: int
    nuked: int


@dataclass
class TinyObjects:
    label: str
    limit_mib: float
    samples: list[Sample] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    first_error: str | None = None
    full_at_objects: int = 0  # objects in the cache when evictions began
    # n_object / n_objecthead 2 s after the stream stopped (during it, the objhead gauge
    # lags in the worker threads' unflushed counters and reads 0)
    after: dict[str, int] = field(default_factory=dict)
    diagnostics: str = ""
    # MALLOC_CONF as each process of cache-varnish has it ("" when unset)
    malloc_conf: list[str] = field(default_factory=list)


def environ_values(pid: int, name: str) -> list[str]:
    """`name`'s value in the environment of `pid` and each of its descendants."""
    values = []
    for process in process_tree(pid):
        with contextlib.suppress(OSError):
            env = Path(f"/proc/{process}/environ").read_bytes().split(b"\0")
            found = [e.split(b"=", 1)[1] for e in env if e.startswith(name.encode() + b"=")]
            values.append(found[0].decode() if found else "")
    return values


def varnish_counters(env: PodEnv) -> dict[str, int]:
    """MAIN.n_object, n_objecthead and n_lru_nuked, by their short names."""
    counters = env.varnishstat("MAIN.n_object", "MAIN.n_objecthead", "MAIN.n_lru_nuked")
    return {name.removeprefix("MAIN."): value for name, value in counters.items()}


@lasts(25)
def tiny_objects(gen_name: str) -> TinyObjects:
    gen = generation(gen_name)
    annotations = {"cache-injector.io/cache-size": CACHE_SIZE}
    with PodEnv(gen, annotations=annotations, backends=1, label="tiny-objects") as env:
        varnish = next(
            c for c in env.manifest["spec"]["initContainers"] if c["name"] == "cache-varnish"
        )
        limit = parse_size(varnish["resources"]["limits"]["memory"]) / 2**20
        seen = TinyObjects(gen.label, limit)
        stop = threading.Event()
        lock = threading.Lock()

        def stream(client: int) -> None:
            connection: http.client.HTTPConnection | None = None
            sent = 0
            while not stop.is_set():
                if connection is None:
                    connection = http.client.HTTPConnection(POD_IP, LISTEN_PORT, timeout=10)
                try:
                    connection.request("GET", f"{PATH}?{client}-{sent}")
                    response = connection.getresponse()
                    response.read()
                    error = None if response.status == 200 else str(response.status)
                except (OSError, http.client.HTTPException) as err:
                    error = f"{type(err).__name__}: {err}"
                    connection.close()
                    connection = None
                sent += 1
                with lock:
                    seen.requests += 1
                    if error:
                        seen.errors += 1
                        seen.first_error = seen.first_error or error
            if connection:
                connection.close()

        assert env.netns
        pool = env.netns.executor(CLIENTS)
        began = time.monotonic()
        futures = [pool.submit(stream, i) for i in range(CLIENTS)]
        try:
            while time.monotonic() - began < DEADLINE:
                sleep(SAMPLE_EVERY)
                counters = varnish_counters(env)
                objects, nuked = counters.get("n_object", 0), counters.get("n_lru_nuked", 0)
                mib = footprints(env.runner, ("cache-varnish",))["cache-varnish"]
                seen.samples.append(Sample(time.monotonic() - began, mib, objects, nuked))
                if nuked and not seen.full_at_objects:
                    seen.full_at_objects = objects
                if seen.full_at_objects and nuked >= TURNOVERS * seen.full_at_objects:
                    break
        finally:
            stop.set()
            for future in futures:
                future.result(timeout=30)
        sleep(2)
        seen.after = varnish_counters(env)
        main_pid = env.runner.states["cache-varnish"].main_pid
        assert main_pid is not None
        seen.malloc_conf = environ_values(main_pid, "MALLOC_CONF")
        seen.diagnostics = env.diagnostics()
    return seen


def turnover_peaks(seen: TinyObjects) -> list[float]:
    """The highest footprint during each replacement of the cache (0: while it filled).

    The sample that ends the stream is past the last replacement (on a loaded machine, with
    samples 2 s apart or more, by a good part of another one): it counts towards the last
    replacement only when no sample fell inside it."""
    size = max(1, seen.full_at_objects)
    peaks: dict[int, float] = {}
    overshoot: float | None = None
    for sample in seen.samples:
        turn = -(-sample.nuked // size)  # 0 while filling
        if turn > TURNOVERS:
            overshoot = max(overshoot or 0.0, sample.varnish_mib)
            continue
        peaks[turn] = max(peaks.get(turn, 0.0), sample.varnish_mib)
    if overshoot is not None and TURNOVERS not in peaks:
        peaks[TURNOVERS] = overshoot
    return [peaks[turn] for turn in sorted(peaks)]


@pytest.mark.parametrize(
    "gen_name",
    [pytest.param(g, marks=background(tiny_objects, g), id=g) for g in ("newest", "oldest")],
)
def test_unique_tiny_objects_level_off_under_the_limit(
    gen_name: str, scenarios: Scenarios, request: pytest.FixtureRequest
) -> None:
    seen: TinyObjects = scenarios.outcome(request.node)
    peaks = turnover_peaks(seen)
    peak = max((s.varnish_mib for s in seen.samples), default=0.0)
    last = seen.samples[-1] if seen.samples else None
    note = recorder("15 tiny objects", seen.label)
    note("requests", seen.requests)
    note("errors", seen.errors)
    note("seconds", round(last.at, 1) if last else None)
    note("objects when full", seen.full_at_objects)
    note("evicted", last.nuked if last else None)
    note("cache-varnish peak MiB / limit MiB", f"{peak:.1f} / {seen.limit_mib:.0f}")
    note("peak per turnover MiB", [round(p, 1) for p in peaks])
    objects, objheads = seen.after.get("n_object", 0), seen.after.get("n_objecthead", 0)
    note("objheads / objects after the stream", f"{objheads} / {objects}")
    note("MALLOC_CONF of cache-varnish's processes", seen.malloc_conf)
    described = f"{seen.label}: {len(seen.samples)} samples, peaks per turnover {peaks}"
    # varnishd's manager, its child (the cache) and anything they run: eight jemalloc arenas.
    assert len(seen.malloc_conf) >= 2, seen.malloc_conf
    assert set(seen.malloc_conf) == {VARNISH_JEMALLOC_CONF}, seen.malloc_conf
    assert seen.errors == 0, f"{seen.errors} errors, first: {seen.first_error}"
    assert last and last.nuked >= TURNOVERS * seen.full_at_objects > 0, (
        f"the cache was not replaced {TURNOVERS} times in {DEADLINE} s: {described}"
    )
    assert peak < 0.9 * seen.limit_mib, described
    # Evicted objects' objheads are freed with them (critbit kept them critbit_cooloff,
    # 180 s: all those evicted during the stream were still there after it).
    assert objects > 0 and objheads <= 1.1 * objects + 100, (
        f"{objheads} objheads for {objects} objects: {described}"
    )
    # Levelled off: the last replacement of the cache grew the footprint by less than a
    # tenth over the one before (critbit grew without bound: objheads piled up for 180 s).
    assert peaks[-1] <= peaks[-2] * 1.10, described
