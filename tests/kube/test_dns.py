"""Cluster DNS from the real objects: the records HAProxy resolves follow the EndpointSlices
the controller-manager builds from pod readiness, not a list the test keeps.

Asked from inside the node's network namespace, as a pod's resolver would: a headless
Service's AAAA records are its ready pods' IPs (A: no data, the cluster is IPv6-only), its
SRV records carry the named port, scaling adds a record, a ClusterIP Service answers its
virtual IP, and a short name is NXDOMAIN (what HAProxy's resolver sends without `search`).
"""

from __future__ import annotations

from typing import Any, cast

from dnslib import QTYPE, RCODE, DNSRecord
from kubernetes import client

from tests.kube.cluster import Cluster
from tests.kube.conftest import Kubectl, NamespaceFactory, wait_for
from tests.kube.network import DNS_IP
from tests.kube.node import plain

RESTRICTED: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 65534,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
SERVER = (
    "import http.server, socket\n"
    "class S(http.server.ThreadingHTTPServer):\n"
    "    address_family = socket.AF_INET6\n"
    "S(('::', 8080), http.server.SimpleHTTPRequestHandler).serve_forever()\n"
)


def deployment(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "python:3.11",
                            "command": ["python3", "-c", SERVER],
                            "workingDir": "/",
                            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                            "securityContext": RESTRICTED,
                        }
                    ]
                },
            },
        },
    }


def ask(cluster: Cluster, name: str, qtype: str) -> DNSRecord:
    assert cluster.network is not None
    query = DNSRecord.question(name, qtype)
    raw = cluster.network.node.call(lambda: query.send(DNS_IP, 53, timeout=3, ipv6=True))
    return DNSRecord.parse(raw)


def answers(reply: DNSRecord, qtype: str) -> list[str]:
    return sorted(str(rr.rdata) for rr in reply.rr if QTYPE[rr.rtype] == qtype)


def ready_ips(cluster: Cluster, namespace: str) -> list[str]:
    pods = plain(cluster.api, cluster.core.list_namespaced_pod(namespace, label_selector="app=web"))
    return sorted(
        p["status"]["podIP"]
        for p in pods["items"]
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions") or []
        )
    )


def test_records_follow_endpoint_slices(
    cluster: Cluster, namespace: NamespaceFactory, kubectl: Kubectl
) -> None:
    ns = namespace("dns", inject=False, run=True)
    client.AppsV1Api(cluster.api).create_namespaced_deployment(ns, cast(Any, deployment(2)))
    headless = {
        "metadata": {"name": "web"},
        "spec": {
            "clusterIP": "None",
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 8080}],
        },
    }
    cluster.core.create_namespaced_service(ns, cast(Any, headless))
    fqdn = f"web.{ns}.svc.cluster.local"

    def two_ready() -> list[str] | None:
        ips = ready_ips(cluster, ns)
        return ips if len(ips) == 2 else None

    ips = wait_for("2 ready web pods", two_ready, timeout=60)
    aaaa = wait_for(
        "AAAA records of the 2 pods",
        lambda: (r := answers(ask(cluster, fqdn, "AAAA"), "AAAA")) == ips and r,
        timeout=15,
    )
    assert aaaa == ips
    a = ask(cluster, fqdn, "A")
    assert a.header.rcode == RCODE.NOERROR and not a.rr  # IPv6-only: the name, no A data
    srv = ask(cluster, f"_http._tcp.{fqdn}", "SRV")
    ports = {rr.rdata.port for rr in srv.rr if QTYPE[rr.rtype] == "SRV"}
    assert len([rr for rr in srv.rr if QTYPE[rr.rtype] == "SRV"]) == 2 and ports == {8080}
    assert ask(cluster, "web.", "AAAA").header.rcode == RCODE.NXDOMAIN

    kubectl("-n", ns, "scale", "deployment/web", "--replicas=3")
    three = wait_for(
        "3 ready web pods", lambda: (i := ready_ips(cluster, ns)) and len(i) == 3 and i
    )
    wait_for(
        "AAAA records of the 3 pods",
        lambda: answers(ask(cluster, fqdn, "AAAA"), "AAAA") == three,
        timeout=15,
    )

    virtual = {
        "metadata": {"name": "virtual"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]},
    }
    cluster.core.create_namespaced_service(ns, cast(Any, virtual))
    cluster_ip = plain(cluster.api, cluster.core.read_namespaced_service("virtual", ns))["spec"][
        "clusterIP"
    ]
    wait_for(
        "the ClusterIP Service's AAAA",
        lambda: (
            answers(ask(cluster, f"virtual.{ns}.svc.cluster.local", "AAAA"), "AAAA") == [cluster_ip]
        ),
        timeout=15,
    )
