"""What a server slot costs: cache-haproxy's memory for each max-backends, and DNS answer sizes.

    python -m bench.slots [--slots 1,32,128,256] [--generations newest,oldest]

Needs root and the daemons, like the e2e runner it uses. For each HAProxy generation and
each slot count N, an injected pod with `max-backends: N` runs next to N backend pods (every
slot filled and health-checked, as for a Service of N ready pods) and one with 3 pods (N-3
slots empty); after the first checks have run, cache-haproxy's memory is read (VmRSS and Pss
of master and worker, MiB). The slope between slot counts is the cost of one slot.

It also prints the size of the cluster DNS's answer for N pods: A, AAAA, and SRV (with the
targets' A/AAAA records in the additional section, as CoreDNS sends them), to set against
HAProxy's `accepted_payload_size` (8192). Prints a table and writes
bench/results/slots-<UTC stamp>.json; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from dnslib import DNSRecord

from bench.common import write_results
from bench.datapath.__main__ import container_memory
from tests.e2e.clusterdns import ClusterDNS, PodRecord, Service
from tests.e2e.conftest import host_problem, sweep_stale_runs
from tests.e2e.harness import PodEnv, generation, root_cleanup, wait_for
from tests.e2e.podrunner import remove_mount_points

POLICY = "limits: {maxBackends: 256}\n"
SETTLE = 6.0  # s after every filled slot is UP: a few health checks (inter 2s) have run


def haproxy_memory(gen_name: str, slots: int, pods: int) -> dict[str, Any]:
    annotations = {
        "cache-injector.io/max-backends": str(slots),
        "cache-injector.io/health-path": "/healthz",  # HTTP checks, as most Services have
    }
    with PodEnv(
        generation(gen_name), annotations=annotations, backends=pods, policy=POLICY, label="slots"
    ) as env:
        up = wait_for(lambda: all(b.total("/healthz") for b in env.backends.values()), timeout=60)
        time.sleep(SETTLE)
        memory = container_memory(env.runner.states["cache-haproxy"])
        return {"slots": slots, "pods": pods, "all_checked_s": up, **memory}


def answer_sizes(pods: int) -> dict[str, int]:
    """Bytes of the DNS answer (UDP payload) for a Service of `pods` ready pods."""
    sizes = {}
    for family in ("ipv4", "ipv6"):
        records = [
            PodRecord(f"p{i}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
            if family == "ipv4"
            else PodRecord(f"p{i}", f"fd00:10:244:{i // 256:x}::{i % 256 + 1:x}")
            for i in range(pods)
        ]
        dns = ClusterDNS(None, "", ttl=30)
        dns.set_service(Service("shop", "app", {"http": 8080}, records))
        qtype = "A" if family == "ipv4" else "AAAA"
        srv = "_http._tcp.app.shop.svc.cluster.local"
        for name, kind in (("app.shop.svc.cluster.local", qtype), (srv, "SRV")):
            reply = dns.answer(DNSRecord.question(name, kind))
            sizes[f"{kind} {family}" if kind == "SRV" else kind] = len(reply.pack())
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", default="1,32,128,256")
    parser.add_argument("--generations", default="newest,oldest")
    args = parser.parse_args()
    problem = host_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    sweep_stale_runs()
    slot_counts = [int(n) for n in args.slots.split(",")]
    results: dict[str, Any] = {"memory": {}, "dns": {}}
    try:
        for gen_name in args.generations.split(","):
            label = generation(gen_name).haproxy.label
            rows = []
            for slots in slot_counts:
                for pods in sorted({slots, min(3, slots)}):
                    row = haproxy_memory(gen_name, slots, pods)
                    rows.append(row)
                    print(
                        f"{label} slots {slots:4} pods {pods:4}: VmRSS {row['VmRSS']:6.1f} MiB"
                        f"  Pss {row['Pss']:6.1f} MiB  (anon {row['RssAnon']:.1f})",
                        flush=True,
                    )
            results["memory"][label] = rows
            full = [r for r in rows if r["pods"] == r["slots"]]
            if len(full) >= 2:
                low, high = full[0], full[-1]
                for key in ("VmRSS", "RssAnon", "Pss"):
                    per_slot = (high[key] - low[key]) * 1024 / (high["slots"] - low["slots"])
                    results["memory"][f"{label} KiB per filled slot ({key})"] = round(per_slot, 1)
                    print(f"{label}: {per_slot:.1f} KiB per filled slot ({key})")
    finally:
        remove_mount_points()
        root_cleanup()
    for pods in (32, 64, 100, 128, 200, 256):
        results["dns"][pods] = answer_sizes(pods)
        print(f"DNS answer bytes for {pods:3} pods: {results['dns'][pods]}")
    write_results("slots", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
