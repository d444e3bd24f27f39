"""`make demo`: one injected pod with 3 backend pods, in a few lines of output.

Runs the same pod runner as the e2e tests (root needed): the pod `cache-injector inject`
writes for a Deployment `web` whose cache fronts Service `app`, its sidecars started for
real in a network namespace with cluster DNS, then a few requests to show HIT/MISS and
which backend pod answered; then the hit ratio from the pod's own metrics (its
cache-varnish-exporter) and the access log lines of those requests (cache-access-log).
"""

from __future__ import annotations

import sys
import time

import pytest

from tests.e2e.conftest import host_problem, sweep_stale_runs
from tests.e2e.harness import (
    DNS_IP,
    FQDN,
    GENERATIONS,
    LISTEN_PORT,
    POD_IP,
    PodEnv,
    generation,
    root_cleanup,
)
from tests.e2e.podrunner import remove_mount_points
from tests.e2e.test_observe import EXPORTER_PORT, access_lines, samples, scrape

OBSERVE = {"cache-injector.io/access-log": "true", "cache-injector.io/metrics": "true"}


def pick_generation() -> str:
    """The default images' daemons when installed, else Debian's."""
    for name in GENERATIONS:
        try:
            generation(name)
        except (pytest.skip.Exception, pytest.fail.Exception):  # not installed (fails under CI)
            continue
        return name
    raise SystemExit("demo: neither HAProxy/Varnish generation is installed (make daemons)")


def main() -> None:
    problem = host_problem()
    if problem:
        raise SystemExit(f"demo: {problem}")
    sweep_stale_runs()
    gen = generation(pick_generation())
    try:
        with PodEnv(gen, annotations=OBSERVE, backends=3, label="demo") as env:
            ready = env.sidecar_start_seconds()
            print(
                f"pod web-0 (namespace shop, IP {POD_IP}) with cache-haproxy + cache-varnish "
                f"({gen.label}), network namespace {env.name}"
            )
            print(
                f"Service {FQDN} (cluster DNS {DNS_IP}): "
                + ", ".join(f"{b.name} {b.ip}" for b in env.backends.values())
            )
            print("sidecars ready after: " + ", ".join(f"{n} {s:.2f} s" for n, s in ready.items()))
            path = "/static/hello"
            for attempt in range(2):
                reply = env.http.get(path)
                line = f"GET :{LISTEN_PORT}{path}  -> {reply.status} X-Cache: {reply.cache:<4}"
                line += f" from {reply.pod}"
                if attempt:
                    seen = sum(b.requests[path] for b in env.backends.values())
                    line += f"   (the backend pods saw {seen} request)"
                print(line)
            replies = [env.http.get(f"/nocache/{i}") for i in range(6)]
            statuses = {f"{r.status} {r.cache}" for r in replies}
            print(
                f"GET :{LISTEN_PORT}/nocache/0..5 -> {', '.join(sorted(statuses))} from "
                + ", ".join(r.pod for r in replies)
                + "   (no-store: balanced over every pod)"
            )
            for _ in range(50):  # the log reader follows within milliseconds; bounded
                if len(access_lines(env)) >= 8:
                    break
                time.sleep(0.1)
            varnish = samples(scrape(env, EXPORTER_PORT))
            hits, misses = varnish["varnish_main_cache_hit"], varnish["varnish_main_cache_miss"]
            ratio = hits / (hits + misses) if hits + misses else 0.0
            print(
                f"hit ratio from the pod's metrics (:{EXPORTER_PORT}/metrics): "
                f"varnish_main_cache_hit {hits:.0f} / (hit + varnish_main_cache_miss "
                f"{misses:.0f}) = {ratio:.2f}"
            )
            print("access log (container cache-access-log, one JSON line per request):")
            for line in env.runner.log("cache-access-log").splitlines():
                if line.startswith("{"):
                    print("  " + line)
    finally:
        remove_mount_points()
        root_cleanup()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
