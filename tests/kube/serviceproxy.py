"""ClusterIP Services made reachable from pods, as kube-proxy's former userspace mode did: each
Service's ClusterIP is put on the node's `lo` and a listener per TCP port, inside the node's
network namespace, forwards every connection to one of the Service's ready endpoints (from
its EndpointSlices, re-read every POLL seconds).

The cluster has no kube-proxy (tests/kube/network.py: its data path uses headless Services,
and the API server reaches webhooks by their endpoints). Clients that call a Service by its
ClusterIP, such as the chart's `helm test` Pod, need this; start it only where they run.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from tests.e2e.netns import run
from tests.kube.dns import slices_by_service
from tests.kube.network import DNS_IP, NodeNetwork
from tests.kube.node import plain

LOG = logging.getLogger(__name__)
POLL = 0.5
CONNECT_TIMEOUT = 5.0


@dataclass
class Listener:
    """One ClusterIP:port, its socket in the node's namespace and the endpoints it uses."""

    ip: str
    port: int
    sock: socket.socket
    endpoints: list[tuple[str, int]] = field(default_factory=list)
    turn: itertools.count[int] = field(default_factory=itertools.count)
    closed: threading.Event = field(default_factory=threading.Event)

    def pick(self) -> tuple[str, int] | None:
        current = list(self.endpoints)
        return current[next(self.turn) % len(current)] if current else None


def wanted(services: list[dict[str, Any]], slices: list[dict[str, Any]]) -> dict[Any, Any]:
    """(ClusterIP, port) -> [(endpoint IP, target port)] for every TCP port of every Service
    with a ClusterIP, its ready endpoints only (the kube-dns Service is served already)."""
    by_service = slices_by_service(slices)
    out: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for svc in services:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        ip = spec.get("clusterIP")
        if ip in (None, "", "None", DNS_IP):
            continue
        for port in spec.get("ports") or []:
            if port.get("protocol", "TCP") != "TCP":
                continue
            targets: list[tuple[str, int]] = []
            for item in by_service.get((meta["namespace"], meta["name"]), []):
                numbers = [
                    p["port"] for p in item.get("ports") or [] if p.get("name") == port.get("name")
                ]
                if not numbers:
                    continue
                for endpoint in item.get("endpoints") or []:
                    if (endpoint.get("conditions") or {}).get("ready") is False:
                        continue
                    targets += [(address, int(numbers[0])) for address in endpoint["addresses"]]
            out[(ip, int(port["port"]))] = targets
    return out


class ServiceProxy:
    """start() serves every ClusterIP until close()."""

    def __init__(self, api: client.ApiClient, network: NodeNetwork) -> None:
        self.api = api
        self.network = network
        self.listeners: dict[tuple[str, int], Listener] = {}
        self.addresses: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="service-proxy", daemon=True)

    def start(self) -> ServiceProxy:
        self.sync()
        self._thread.start()
        return self

    def sync(self) -> None:
        core = client.CoreV1Api(self.api)
        discovery = client.DiscoveryV1Api(self.api)
        services = plain(self.api, core.list_service_for_all_namespaces())["items"]
        slices = plain(self.api, discovery.list_endpoint_slice_for_all_namespaces())["items"]
        desired = wanted(services, slices)
        for key in set(self.listeners) - set(desired):
            self._close(self.listeners.pop(key))
        for key, endpoints in desired.items():
            if key not in self.listeners:
                self.listeners[key] = self._listen(*key)
            self.listeners[key].endpoints = endpoints

    def _listen(self, ip: str, port: int) -> Listener:
        if ip not in self.addresses:
            node = self.network.node.name
            run(["ip", "-n", node, "addr", "add", f"{ip}/128", "dev", "lo", "nodad"])
            self.addresses.add(ip)

        def bound() -> socket.socket:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip, port))
            sock.listen(64)
            sock.settimeout(0.5)
            return sock

        listener = Listener(ip, port, self.network.node.call(bound))
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return listener

    def _accept(self, listener: Listener) -> None:
        while not listener.closed.is_set():
            try:
                conn, _ = listener.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._forward, args=(listener, conn), daemon=True).start()

    def _forward(self, listener: Listener, conn: socket.socket) -> None:
        target = listener.pick()
        if target is None:  # no ready endpoint: refused, as kube-proxy's REJECT rule does
            conn.close()
            return
        try:
            upstream = self.network.node.call(
                lambda: socket.create_connection(target, timeout=CONNECT_TIMEOUT)
            )
        except OSError as err:
            LOG.debug("service proxy %s:%d -> %s: %s", listener.ip, listener.port, target, err)
            conn.close()
            return
        conn.settimeout(None)
        upstream.settimeout(None)
        back = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
        back.start()
        pump(conn, upstream)
        back.join(timeout=60)
        for sock in (conn, upstream):
            sock.close()

    def _close(self, listener: Listener) -> None:
        listener.closed.set()
        with contextlib.suppress(OSError):
            listener.sock.close()

    def _loop(self) -> None:
        while not self._stop.wait(POLL):
            try:
                self.sync()
            except Exception as err:
                LOG.debug("service proxy sync: %s", err)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for listener in self.listeners.values():
            self._close(listener)
        self.listeners.clear()


def pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy until source closes, then half-close sink (TLS's close_notify gets through)."""
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
