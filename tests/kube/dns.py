"""Cluster DNS from the real objects: the e2e ClusterDNS server, its records taken from the
API server's Services and EndpointSlices (what CoreDNS's `kubernetes` plugin watches), every
POLL seconds. Served on the kube-dns Service's ClusterIP inside the node's namespace."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import defaultdict
from typing import Any

from kubernetes import client

from tests.e2e.clusterdns import ClusterDNS, PodRecord, Service
from tests.kube.network import DNS_IP, NodeNetwork
from tests.kube.node import plain

LOG = logging.getLogger(__name__)
POLL = 0.5  # seconds; CoreDNS's watch is faster, the record TTL (5 s) is the same


def slices_by_service(slices: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """EndpointSlices by (namespace, Service name), from their kubernetes.io/service-name label
    (a dual-stack Service has one slice per family, a large one several)."""
    by_service: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for item in slices:
        meta = item["metadata"]
        owner = (meta.get("labels") or {}).get("kubernetes.io/service-name")
        if owner:
            by_service[(meta["namespace"], owner)].append(item)
    return by_service


def services_from(services: list[dict[str, Any]], slices: list[dict[str, Any]]) -> list[Service]:
    """What the DNS answers: each Service with its ready endpoints' addresses and its slices'
    named ports."""
    by_service = slices_by_service(slices)
    out = []
    for svc in services:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        key = (meta["namespace"], meta["name"])
        cluster_ip = spec.get("clusterIP")
        ports: dict[str, int] = {}
        pods: dict[str, list[str]] = defaultdict(list)
        for item in by_service.get(key, []):
            for port in item.get("ports") or []:
                if port.get("name"):
                    ports[port["name"]] = int(port["port"])
            for endpoint in item.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready") is False:
                    continue
                ref = endpoint.get("targetRef") or {}
                name = ref.get("name") or endpoint.get("hostname") or endpoint["addresses"][0]
                pods[name].extend(endpoint.get("addresses") or [])
        records = [
            PodRecord(name, ips[0], ips[1] if len(ips) > 1 else None) for name, ips in pods.items()
        ]
        out.append(
            Service(
                namespace=key[0],
                name=key[1],
                ports=ports,
                pods=records,
                cluster_ip=None if cluster_ip in (None, "", "None") else cluster_ip,
            )
        )
    return out


class ApiClusterDNS:
    """The DNS server and the thread that keeps it in step with the API."""

    def __init__(self, api: client.ApiClient, network: NodeNetwork) -> None:
        self.api = api
        self.dns = ClusterDNS(network.node, DNS_IP)
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cluster-dns", daemon=True)

    def start(self) -> None:
        self.dns.start()
        self._thread.start()
        self._synced.wait(timeout=10)

    def sync(self) -> None:
        core = client.CoreV1Api(self.api)
        discovery = client.DiscoveryV1Api(self.api)
        services = plain(self.api, core.list_service_for_all_namespaces())
        slices = plain(self.api, discovery.list_endpoint_slice_for_all_namespaces())
        self.dns.replace_services(services_from(services["items"], slices["items"]))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
                self._synced.set()
            except Exception as err:
                LOG.debug("cluster DNS sync: %s", err)
            self._stop.wait(POLL)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self.dns.stop()
