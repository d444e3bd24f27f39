"""A DNS server that answers like a cluster's (CoreDNS `kubernetes` plugin), built on dnslib.

Owns: the Services and their ready pods (data the test changes while it runs, under a lock),
the answers, and the outage modes. Answers, with a short TTL:
- `SERVICE.NS.svc.cluster.local` A / AAAA: one record per ready pod's IPv4 / IPv6 address
  (headless Service), or the Service's virtual IP; a headless Service with no ready pod is
  NXDOMAIN (what CoreDNS and kube-dns answer, and the Kubernetes DNS spec since
  kubernetes/dns#245). A name whose pods have no address of the asked family (A on an
  IPv6-only cluster, AAAA on an IPv4-only one): NOERROR, no data.
- `_PORTNAME._tcp.SERVICE.NS.svc.cluster.local` SRV: one per ready pod address (a
  dual-stack pod has two: CoreDNS lists the endpoints of both EndpointSlices), target
  `10-0-0-1.SERVICE...` / `fd00-1--1.SERVICE...` (the address, dashed, as CoreDNS names
  an endpoint without hostname) with its A / AAAA record in the additional section.
- `10-0-0-1.SERVICE.NS.svc.cluster.local` A (or AAAA) for a ready pod's address.
- anything else, including a bare short name such as `app.` (HAProxy's resolver sends those
  as they are): NXDOMAIN, with the zone's SOA as the authority.
Outage modes: `timeout` (no answer at all), `refused`, `servfail`, and `down` (the port is
closed: the kernel answers ICMP port unreachable, as kube-proxy's REJECT rule does for the
DNS Service when no CoreDNS pod is ready).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, SOA, SRV, A, DNSLabel, DNSRecord
from dnslib.server import DNSHandler, DNSLogger, DNSServer

from tests.e2e.netns import Netns

MODES = ("serve", "timeout", "refused", "servfail", "down")


@dataclass(frozen=True)
class PodRecord:
    """One pod behind a Service: its name (for the test) and its IP (IPv4 or IPv6); a
    dual-stack pod has its IPv6 address as ip6 too."""

    name: str
    ip: str
    ip6: str | None = None

    @property
    def addresses(self) -> list[str]:
        return [self.ip] + ([self.ip6] if self.ip6 else [])


def dashed(address: str) -> str:
    """The label CoreDNS gives an endpoint without hostname: its address, dashed."""
    return address.replace(".", "-").replace(":", "-")


def address_record(name: str, address: str, ttl: int) -> RR:
    """The A or AAAA record of one address."""
    if ":" in address:
        return RR(name, QTYPE.AAAA, ttl=ttl, rdata=AAAA(address))
    return RR(name, QTYPE.A, ttl=ttl, rdata=A(address))


@dataclass
class Service:
    namespace: str
    name: str
    ports: dict[str, int]  # port name -> port
    pods: list[PodRecord] = field(default_factory=list)
    cluster_ip: str | None = None  # None: headless


@dataclass(frozen=True)
class Query:
    at: float  # time.monotonic()
    name: str
    qtype: str
    outcome: str  # an RCODE name, or "dropped"


class _Resolver:
    def __init__(self, dns: ClusterDNS) -> None:
        self.dns = dns

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        return self.dns.answer(request)


class _Handler(DNSHandler):  # type: ignore[misc]  # dnslib is untyped: a subclass of Any
    """dnslib's handler, plus the `timeout` mode: read the query and send nothing."""

    def handle(self) -> None:
        dns: ClusterDNS = self.server.resolver.dns
        if dns.mode == "timeout":
            dns.note_dropped(self.request)
            return
        super().handle()


class _Quiet(DNSLogger):  # type: ignore[misc]  # dnslib is untyped: a subclass of Any
    def __init__(self) -> None:
        super().__init__(log="-request,-reply,-truncated,-error", logf=lambda _text: None)


class ClusterDNS:
    """Cluster DNS on one address inside a network namespace (UDP and TCP port 53)."""

    def __init__(
        self, netns: Netns | None, address: str, *, domain: str = "cluster.local", ttl: int = 5
    ) -> None:
        """netns None: answers only (answer()), never served (bench.slots sizes answers)."""
        self.netns = netns
        self.address = address
        self.domain = domain.strip(".")
        self.ttl = ttl
        self._lock = threading.Lock()
        self._services: dict[tuple[str, str], Service] = {}
        self._mode = "serve"
        self._servers: list[DNSServer] = []
        self.queries: deque[Query] = deque(maxlen=20000)

    # -- data the test changes ---------------------------------------------------------------
    def set_service(self, service: Service) -> None:
        with self._lock:
            self._services[(service.namespace, service.name)] = service

    def replace_services(self, services: list[Service]) -> None:
        """Every Service at once (tests/kube/dns.py: what the API holds now)."""
        with self._lock:
            self._services = {(s.namespace, s.name): s for s in services}

    def add_pod(self, namespace: str, service: str, pod: PodRecord) -> None:
        with self._lock:
            self._services[(namespace, service)].pods.append(pod)

    def remove_pod(self, namespace: str, service: str, pod_name: str) -> None:
        with self._lock:
            entry = self._services[(namespace, service)]
            entry.pods = [pod for pod in entry.pods if pod.name != pod_name]

    def set_pods(self, namespace: str, service: str, pods: list[PodRecord]) -> None:
        with self._lock:
            self._services[(namespace, service)].pods = list(pods)

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        """Switch outage modes; `down` closes the port, any other mode reopens it."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: one of {MODES}")
        with self._lock:
            self._mode = mode
        if mode == "down":
            self._close()
        elif not self._servers:
            self._open()

    # -- server ----------------------------------------------------------------------------
    def start(self) -> None:
        self._open()

    def stop(self) -> None:
        self._close()

    def _open(self) -> None:
        def build() -> list[DNSServer]:
            return [
                DNSServer(
                    _Resolver(self),
                    address=self.address,
                    port=53,
                    tcp=tcp,
                    logger=_Quiet(),
                    handler=_Handler,
                )
                for tcp in (False, True)
            ]

        assert self.netns is not None, "a ClusterDNS without a namespace only answers"
        servers = self.netns.call(build)
        for server in servers:
            server.start_thread()
        self._servers = servers

    def _close(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.server.shutdown()
            server.server.server_close()

    # -- answers ----------------------------------------------------------------------------
    def note_dropped(self, request: Any) -> None:
        data = request[0] if isinstance(request, tuple) else b""
        try:
            parsed = DNSRecord.parse(data)
            name, qtype = str(parsed.q.qname), QTYPE[parsed.q.qtype]
        except Exception:
            name, qtype = "?", "?"
        self.queries.append(Query(time.monotonic(), name, qtype, "dropped"))

    def _soa(self) -> RR:
        zone = self.domain + "."
        return RR(
            zone,
            QTYPE.SOA,
            ttl=self.ttl,
            rdata=SOA(f"ns.dns.{zone}", f"hostmaster.{zone}", (1, 7200, 1800, 86400, self.ttl)),
        )

    def answer(self, request: DNSRecord) -> DNSRecord:
        reply = request.reply()  # aa=1, ra=1
        name = str(request.q.qname).lower()
        qtype = QTYPE[request.q.qtype]
        with self._lock:
            mode = self._mode
            if mode == "refused":
                reply.header.rcode = RCODE.REFUSED
            elif mode == "servfail":
                reply.header.rcode = RCODE.SERVFAIL
            else:
                self._fill(reply, name, qtype)
        self.queries.append(Query(time.monotonic(), name, qtype, RCODE[reply.header.rcode]))
        return reply

    def _fill(self, reply: DNSRecord, name: str, qtype: str) -> None:
        zone = "." + self.domain + "."
        found = self._lookup(name[: -len(zone)].split(".")) if name.endswith(zone) else None
        if found is None:
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(self._soa())
            return
        answers, additional = found
        wanted = [rr for rr in answers if QTYPE[rr.rtype] == qtype]
        for rr in wanted:
            reply.add_answer(rr)
        if wanted:
            for rr in additional:
                reply.add_ar(rr)
        else:  # the name exists, not with this type: NOERROR, no data
            reply.add_auth(self._soa())

    def _lookup(self, labels: list[str]) -> tuple[list[RR], list[RR]] | None:
        """Records that exist for a name (labels before the zone), or None: NXDOMAIN."""
        ttl = self.ttl
        if len(labels) == 5 and labels[0].startswith("_") and labels[4] == "svc":
            port_name, proto, service, namespace = labels[0][1:], labels[1], labels[2], labels[3]
            entry = self._services.get((namespace, service))
            if entry is None or proto != "_tcp" or port_name not in entry.ports:
                return None
            if not entry.pods:
                return None
            port = entry.ports[port_name]
            base = f"{service}.{namespace}.svc.{self.domain}."
            addresses = [address for pod in entry.pods for address in pod.addresses]
            weight = max(1, 100 // len(addresses))
            srv = [
                RR(
                    f"_{port_name}._tcp.{base}",
                    QTYPE.SRV,
                    ttl=ttl,
                    rdata=SRV(0, weight, port, DNSLabel(f"{dashed(address)}.{base}")),
                )
                for address in addresses
            ]
            extra = [address_record(f"{dashed(a)}.{base}", a, ttl) for a in addresses]
            return srv, extra
        if len(labels) == 4 and labels[3] == "svc":
            pod_label, service, namespace = labels[0], labels[1], labels[2]
            entry = self._services.get((namespace, service))
            if entry is None:
                return None
            base = f"{pod_label}.{service}.{namespace}.svc.{self.domain}."
            for pod in entry.pods:
                for address in pod.addresses:
                    if dashed(address) == pod_label:
                        return [address_record(base, address, ttl)], []
            return None
        if len(labels) == 3 and labels[2] == "svc":
            service, namespace = labels[0], labels[1]
            entry = self._services.get((namespace, service))
            if entry is None:
                return None
            base = f"{service}.{namespace}.svc.{self.domain}."
            if entry.cluster_ip:
                return [address_record(base, entry.cluster_ip, ttl)], []
            if not entry.pods:
                return None
            return [address_record(base, a, ttl) for pod in entry.pods for a in pod.addresses], []
        return None
