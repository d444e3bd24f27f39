"""The node's network: one network namespace for the node (control plane, cluster DNS, and a
bridge), and one per pod, joined to the bridge by a veth pair.

Every address is IPv6 unique-local (fd00::/8) inside namespaces made here: the API server
rejects loopback pod and endpoint IPs (ValidateEndpointIP), and nothing here may be routed
off the machine. So the cluster is IPv6 single-stack:
- pods:     fd00:10:244::/64 on the bridge `cni0`; the node (and the API server's
            --advertise-address) is fd00:10:244::1; each pod's eth0 gets the next address and
            a default route through the node;
- Services: fd00:10:96::/112; the cluster DNS Service's ClusterIP is also put on the node's
            `lo` and the DNS server listens there, so pods reach it without a kube-proxy (no
            other ClusterIP is reachable: the data path uses headless Services, as designed).
"""

from __future__ import annotations

import ipaddress
import itertools
import threading

from tests.e2e.netns import Netns, run

POD_PREFIX = "fd00:10:244::"
NODE_IP = "fd00:10:244::1"
SERVICE_CIDR = "fd00:10:96::/112"
DNS_IP = "fd00:10:96::a"  # the kube-dns Service's ClusterIP (the 10th address, as kubeadm's)


class NodeNetwork:
    """The node's namespace and its pods' namespaces; close() removes them all."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # short: interface and namespace names derive from it
        self.node = Netns(f"{prefix}-node")
        self.pods: dict[str, Netns] = {}
        self._lock = threading.Lock()
        self._next = itertools.count(2)  # addresses are not reused, as a CNI avoids doing soon
        try:
            node = self.node.name
            run(["ip", "-n", node, "link", "add", "cni0", "type", "bridge"])
            run(["ip", "-n", node, "addr", "add", f"{NODE_IP}/64", "dev", "cni0", "nodad"])
            run(["ip", "-n", node, "link", "set", "cni0", "up"])
            run(["ip", "-n", node, "addr", "add", f"{DNS_IP}/128", "dev", "lo", "nodad"])
        except Exception:
            self.node.close()
            raise

    def add_pod(self, key: str) -> tuple[Netns, str]:
        """A new namespace for one pod, on the bridge: (namespace, pod IP)."""
        with self._lock:
            ip = str(ipaddress.IPv6Address(POD_PREFIX) + next(self._next))
            index = int(ipaddress.IPv6Address(ip)) & 0xFFFF
        netns = Netns(f"{self.prefix}-p{index:x}")
        host_end = f"veth{index:x}"
        try:
            run(
                [
                    "ip",
                    "-n",
                    self.node.name,
                    "link",
                    "add",
                    host_end,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    netns.name,
                ]
            )
            run(["ip", "-n", self.node.name, "link", "set", host_end, "master", "cni0", "up"])
            run(["ip", "-n", netns.name, "addr", "add", f"{ip}/64", "dev", "eth0", "nodad"])
            run(["ip", "-n", netns.name, "link", "set", "eth0", "up"])
            run(["ip", "-n", netns.name, "-6", "route", "add", "default", "via", NODE_IP])
        except Exception:
            netns.close()
            raise
        with self._lock:
            self.pods[key] = netns
        return netns, ip

    def remove_pod(self, key: str) -> None:
        with self._lock:
            netns = self.pods.pop(key, None)
        if netns is not None:
            netns.close()  # takes its veth pair with it

    def close(self) -> None:
        for key in list(self.pods):
            netns = self.pods.pop(key)
            netns.close()
        self.node.close()
