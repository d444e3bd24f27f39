"""Scenarios 1 and 2: the injected pod caches, and balances misses over every backend pod —
on IPv4, IPv6-only and dual-stack pods (and one with IPv6 switched off)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import missing
from tests.e2e.client import Client, errors, pods
from tests.e2e.harness import METRICS_PORT, PodEnv, generation, wait_for
from tests.e2e.scenarios import record, recorder
from webhook.engine import names

pytestmark = pytest.mark.e2e

FAMILIES = ("ipv4", "ipv6", "dual", "no-ipv6")
LOOPBACK = {
    # What every pod's lo has; IPv6 pod addresses are on eth0.
    "ipv4": ["127.0.0.1/8", "::1/128"],
    "ipv6": ["127.0.0.1/8", "::1/128"],
    "dual": ["127.0.0.1/8", "::1/128"],
    "no-ipv6": ["127.0.0.1/8"],
}


def up_servers(env: PodEnv) -> int:
    """haproxy_backend_active_servers of backend_pods (from cache-metrics)."""
    body = Client(env.runner.netns, env.family.pod_ip, METRICS_PORT).get("/metrics").body
    for line in body.splitlines():
        if line.startswith('haproxy_backend_active_servers{proxy="backend_pods"}'):
            return int(float(line.split()[-1]))
    return 0


def stats_page(env: PodEnv, host: str, port: int) -> str:
    """What GET /stats on host:port answers inside the pod: status and whether it was the
    stats page, or the connection error."""
    reply = Client(env.runner.netns, host, port).get(names.HAPROXY_STATS_PATH, timeout=5)
    if reply.error:
        return "refused" if "Refused" in reply.error else reply.error
    return f"{reply.status} {'stats page' if 'Statistics Report' in reply.body else 'other'}"


@pytest.mark.parametrize(
    ("gen_name", "family"),
    [pytest.param(g, f, id=f"{g}-{f}") for f in FAMILIES for g in ("newest", "oldest")],
)
def test_second_get_is_a_hit_and_the_backend_saw_one_request(gen_name: str, family: str) -> None:
    gen = generation(gen_name)
    with PodEnv(gen, label="cache", family=family) as env:
        # Both pod IPs of a dual-stack pod: the first GET on one, the HIT on the other (one
        # Host, as a Service name would give; the address is not part of the cache key).
        clients = [env.http, env.client6 or env.http]
        host = {"Host": "web.shop.svc.cluster.local"}
        for path in ("/static/page", "/plain/page"):  # max-age=300; no headers: default TTL
            first = clients[0].get(path, headers=host)
            second = clients[1].get(path, headers=host)
            assert (first.status, first.cache) == (200, "MISS"), first.describe()
            assert (second.status, second.cache) == (200, "HIT"), second.describe()
            assert second.pod == first.pod, "a HIT is the stored response"
            seen = sum(backend.requests[path] for backend in env.backends.values())
            assert seen == 1, f"{path}: the backend saw {seen} requests"
        record(f"1 cache {family}", gen.label, "backend requests for 2 GETs", 1)
        # Varnish reaches HAProxy over lo, which has only what a pod's has.
        assert env.runner.netns.addresses("lo") == LOOPBACK[family]
        # cache-metrics answers on every pod IP (the kubelet's probes used the first).
        for address in filter(None, (env.family.pod_ip, env.family.pod_ip6)):
            health = Client(env.runner.netns, address, METRICS_PORT).get(names.HAPROXY_HEALTH_PATH)
            assert health.status == 200, (address, health.describe())
        # The stats page: not on the pod IP (neither its own port nor cache-metrics), on
        # 127.0.0.1 only, without HAProxy's version.
        seen_stats = {
            "pod IP, stats port": stats_page(env, env.family.pod_ip, names.HAPROXY_STATS_PORT),
            "pod IP, cache-metrics": stats_page(env, env.family.pod_ip, METRICS_PORT),
            "localhost": stats_page(env, "127.0.0.1", names.HAPROXY_STATS_PORT),
        }
        assert seen_stats == {
            "pod IP, stats port": "refused",
            "pod IP, cache-metrics": "503 other",
            "localhost": "200 stats page",
        }, seen_stats
        page = Client(env.runner.netns, "127.0.0.1", names.HAPROXY_STATS_PORT).get("/stats")
        assert "version" not in page.body.lower(), "stats hide-version"
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


# Which family the backend pods are reached on: dual-stack Services have both; A/AAAA
# discovery uses one (ip-family auto: IPv4; ipv6: IPv6), the same in every replica. An SRV
# answer on dual-stack names each pod once per family: auto uses both (each pod twice, still
# evenly), ipv4/ipv6 one (HAProxy 3.3+'s dns-accept-family; 2.6 cannot filter SRV targets).
BALANCE = [
    ("newest", "dns-a", "ipv4", "auto", {"ipv4"}),
    ("oldest", "dns-a", "ipv4", "auto", {"ipv4"}),
    ("newest", "dns-srv", "ipv4", "auto", {"ipv4"}),
    ("newest", "dns-a", "ipv6", "auto", {"ipv6"}),
    ("oldest", "dns-a", "ipv6", "auto", {"ipv6"}),
    ("newest", "dns-srv", "ipv6", "auto", {"ipv6"}),
    ("oldest", "dns-srv", "ipv6", "auto", {"ipv6"}),
    ("newest", "dns-a", "dual", "auto", {"ipv4"}),
    ("oldest", "dns-a", "dual", "auto", {"ipv4"}),
    ("newest", "dns-a", "dual", "ipv6", {"ipv6"}),
    ("oldest", "dns-a", "dual", "ipv6", {"ipv6"}),
    ("newest", "dns-srv", "dual", "auto", {"ipv4", "ipv6"}),
    ("newest", "dns-srv", "dual", "ipv4", {"ipv4"}),
    ("newest", "dns-srv", "dual", "ipv6", {"ipv6"}),
]


@pytest.mark.parametrize(
    ("gen_name", "discovery", "family", "ip_family", "used"),
    [pytest.param(*case, id="-".join(case[:4])) for case in BALANCE],
)
def test_uncached_requests_reach_every_backend_pod(
    gen_name: str, discovery: str, family: str, ip_family: str, used: set[str]
) -> None:
    gen = generation(gen_name)
    annotations = {"cache-injector.io/ip-family": ip_family}
    if discovery == "dns-srv":
        annotations |= {
            "cache-injector.io/backend": "app:http",
            "cache-injector.io/discovery": "dns-srv",
        }
    with PodEnv(gen, annotations=annotations, backends=3, label="balance", family=family) as env:
        # Every pod's slot UP first (SRV targets resolve one by one; slow on a loaded machine).
        up = wait_for(lambda: up_servers(env) >= 3, timeout=30)
        assert up is not None, env.diagnostics()
        replies = [env.http.get(f"/nocache/{i}") for i in range(30)]
        assert not errors(replies), [r.describe() for r in errors(replies)]
        assert all(r.cache == "MISS" for r in replies)
        spread = pods(replies)
        assert set(spread) == set(env.backends), f"{spread} vs {sorted(env.backends)}\n" + (
            env.diagnostics()
        )
        assert set(env.families()) == used, env.families()
        note = recorder(f"2 balance {discovery} {family} ip-family {ip_family}", gen.label)
        note("requests per pod (30)", dict(sorted(spread.items())))
        note("requests per family", env.families())


# A kernel booted with ipv6.disable=1 has no AF_INET6 at all: socket() fails with
# EAFNOSUPPORT. A namespace cannot take that away, so the daemons get a preload that makes
# socket(AF_INET6, ...) fail exactly so.
NO_IPV6_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/socket.h>
int socket(int domain, int type, int protocol) {
    static int (*real)(int, int, int);
    if (domain == AF_INET6) { errno = EAFNOSUPPORT; return -1; }
    if (!real) real = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
    return real(domain, type, protocol);
}
"""


def build_no_ipv6_shim(directory: Path) -> Path:
    """The preload, built with the host's C compiler, readable by the sidecars' users."""
    cc = shutil.which("cc")
    if cc is None:
        missing("no C compiler for the no-IPv6 preload (Varnish needs one too: `make daemons`)")
    directory.chmod(0o755)
    source, shim = directory / "noipv6.c", directory / "noipv6.so"
    source.write_text(NO_IPV6_SHIM)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(shim), str(source), "-ldl"], check=True)
    shim.chmod(0o755)
    return shim


def preload(shim: Path) -> Callable[[dict[str, Any]], None]:
    def edit(manifest: dict[str, Any]) -> None:
        for container in manifest["spec"]["initContainers"]:
            container.setdefault("env", []).append({"name": "LD_PRELOAD", "value": str(shim)})

    return edit


@pytest.mark.parametrize("gen_name", ["newest", "oldest"])
def test_a_node_without_ipv6_runs_the_sidecars_with_ip_family_ipv4(gen_name: str) -> None:
    """ip-family ipv4: HAProxy binds 0.0.0.0 (with the default [::] it exits: "cannot create
    receiving socket"); varnishd's `-a :PORT` skips [::] by itself."""
    annotations = {"cache-injector.io/ip-family": "ipv4"}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as directory:
        shim = build_no_ipv6_shim(Path(directory))
        with PodEnv(
            generation(gen_name),
            annotations=annotations,
            edit_pod=preload(shim),
            family="no-ipv6",
            label="no-ipv6-kernel",
        ) as env:
            varnish = env.runner.states["cache-varnish"].main_pid
            maps = Path(f"/proc/{varnish}/maps").read_text()
            assert str(shim) in maps, "the preload is in varnishd"
            first, second = env.http.get("/static/k"), env.http.get("/static/k")
            assert (first.status, second.cache) == (200, "HIT"), (
                first.describe(),
                second.describe(),
            )
            health = Client(env.runner.netns, env.family.pod_ip, METRICS_PORT).get("/healthz")
            assert health.status == 200, health.describe()
            record("1 cache no-ipv6 kernel", env.gen.label, "backend requests for 2 GETs", 1)
