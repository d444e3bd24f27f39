"""Scenario 16: an idle injected pod's memory, and HAProxy's tables under a large open-files
limit.

Counted as a memory cgroup charges it (PSS of each container's processes plus the pages of
its Memory emptyDirs), the default pod cost ~105 MiB idle, 80 MiB of it Varnish's
shared-memory log; the bound here is generous (the figures are bench/datapath's job) and
only catches that kind of regression. HAProxy left alone sizes its fd tables from
RLIMIT_NOFILE (containerd gives ~1M; it was OOM-killed at start): the pod runs with this
machine's highest limit (20000 here), and HAProxy's own `show info` must report the
configured fd-hard-limit as its fd limit and a maxconn derived from it, not the runtime's.
"""

from __future__ import annotations

import resource
import time

import pytest

from tests.e2e.footprint import footprints, haproxy_info
from tests.e2e.harness import PodEnv, generation
from tests.e2e.scenarios import record

pytestmark = pytest.mark.e2e

FD_HARD_LIMIT = 8192  # haproxy.cfg.j2
IDLE_CEILING_MIB = 64  # 26.5-31.7 as a first pod (bench/footprint); was ~105


@pytest.mark.parametrize("gen_name", ["newest", "oldest"])
def test_idle_pod_is_small_and_haproxy_bounds_its_tables(gen_name: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # the containers inherit it: give them the highest available
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gen = generation(gen_name)
    with PodEnv(gen, backends=1, label="footprint") as env:
        for path in ("/static/a", "/static/a", "/nocache/b"):
            assert env.http.get(path).status == 200
        time.sleep(2)  # idle
        sizes = footprints(env.runner)
        info = haproxy_info(env.runner)
    for name, value in sizes.items():
        record("16 idle footprint", gen.label, f"{name} MiB", value)
    for key in ("RLIMIT_NOFILE at start", "Maxconn", "Maxsock", "Ulimit-n"):
        record("16 idle footprint", gen.label, f"haproxy {key}", info[key])
    nofile = int(info["RLIMIT_NOFILE at start"].split()[0])
    assert nofile > FD_HARD_LIMIT, f"the runtime's limit must be above the cap: {info}"
    assert int(info["Ulimit-n"]) == int(info["Maxsock"]) == FD_HARD_LIMIT, info
    # Two fds per proxied connection, less listeners, checks and the resolvers' sockets.
    assert FD_HARD_LIMIT // 2 - 200 < int(info["Maxconn"]) < FD_HARD_LIMIT // 2, info
    assert sizes["total"] < IDLE_CEILING_MIB, sizes
