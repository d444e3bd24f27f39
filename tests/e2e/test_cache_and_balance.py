"""Scenarios 1 and 2: the injected pod caches, and balances misses over every backend pod."""

from __future__ import annotations

import pytest

from tests.e2e.client import errors, pods
from tests.e2e.harness import PodEnv, generation
from tests.e2e.scenarios import record, recorder

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("gen_name", ["newest", "oldest"])
def test_second_get_is_a_hit_and_the_backend_saw_one_request(gen_name: str) -> None:
    gen = generation(gen_name)
    with PodEnv(gen, label="cache") as env:
        for path in ("/static/page", "/plain/page"):  # max-age=300; no headers: default TTL
            first, second = env.http.get(path), env.http.get(path)
            assert (first.status, first.cache) == (200, "MISS"), first.describe()
            assert (second.status, second.cache) == (200, "HIT"), second.describe()
            assert second.pod == first.pod, "a HIT is the stored response"
            seen = sum(backend.requests[path] for backend in env.backends.values())
            assert seen == 1, f"{path}: the backend saw {seen} requests"
        record("1 cache", gen.label, "backend requests for 2 GETs", 1)
        # The securityContext as run: its uid/gid, no capabilities, no_new_privs, root ro;
        # the daemon is its container's PID 1.
        for container in env.manifest["spec"]["initContainers"]:
            context = container["securityContext"]
            who = env.runner.identity(container["name"])
            assert who == {
                "uid": str(context["runAsUser"]),
                "gid": str(context["runAsGroup"]),
                "cap_eff": "0000000000000000",
                "no_new_privs": "1",
                "root": "ro",
                "pid": "1",
            }, (container["name"], who)


@pytest.mark.parametrize(
    ("gen_name", "discovery"),
    [
        pytest.param("newest", "dns-a", id="newest-dns-a"),
        pytest.param("oldest", "dns-a", id="oldest-dns-a"),
        pytest.param("newest", "dns-srv", id="newest-dns-srv"),
    ],
)
def test_uncached_requests_reach_every_backend_pod(gen_name: str, discovery: str) -> None:
    gen = generation(gen_name)
    annotations = {}
    if discovery == "dns-srv":
        annotations = {
            "cache-injector.io/backend": "app:http",
            "cache-injector.io/discovery": "dns-srv",
        }
    with PodEnv(gen, annotations=annotations, backends=3, label="balance") as env:
        replies = [env.http.get(f"/nocache/{i}") for i in range(30)]
        assert not errors(replies), [r.describe() for r in errors(replies)]
        assert all(r.cache == "MISS" for r in replies)
        spread = pods(replies)
        assert set(spread) == set(env.backends), f"{spread} vs {sorted(env.backends)}\n" + (
            env.diagnostics()
        )
        note = recorder(f"2 balance {discovery}", gen.label)
        note("requests per pod (30)", dict(sorted(spread.items())))
