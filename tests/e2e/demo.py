"""`make demo`: one injected pod with 3 backend pods, in a few lines of output.

Runs the same pod runner as the e2e tests (root needed): the pod `cache-injector inject`
writes for a Deployment `web` whose cache fronts Service `app`, its sidecars started for
real in a network namespace with cluster DNS, then a few requests to show HIT/MISS and
which backend pod answered.
"""

from __future__ import annotations

import sys

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


def pick_generation() -> str:
    """The default images' daemons when installed, else Debian's."""
    for name in GENERATIONS:
        try:
            generation(name)
        except pytest.skip.Exception:
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
        with PodEnv(gen, backends=3, label="demo") as env:
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
    finally:
        remove_mount_points()
        root_cleanup()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
