"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler, for real, inside the
node's network namespace; and a loopback port on the host that forwards to the API server, so
`kubectl`, Helm and the `kubernetes` client on the host reach it with an ordinary kubeconfig.

Owns: the cluster's PKI (a CA, the API server's serving certificate, an admin client
certificate in system:masters, the ServiceAccount signing key), the components' flags, their
processes (each in its own process group, stopped by its id), readiness, and the two
kubeconfigs (host: through the forwarder; node: [::1]:6443, for the components).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import selectors
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import trustme
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.kube.binaries import Binaries
from tests.kube.network import DNS_IP, NODE_IP, SERVICE_CIDR, NodeNetwork

API_PORT = 6443
ETCD_PORT = 2379
KUBERNETES_SERVICE_IP = "fd00:10:96::1"
CLUSTER_DOMAIN = "cluster.local"
START_TIMEOUT = 90.0  # generous: a cold start of all four on 2 busy CPUs takes ~10 s


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


def stop_group(popen: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM the process group, then SIGKILL what is left after grace."""
    if popen.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, 15)
    try:
        popen.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, 9)
        popen.wait(timeout=10)


class Forwarder:
    """A host loopback port whose connections are relayed to an address inside a namespace
    (bytes only: TLS goes end to end). One thread and one selector for every connection."""

    def __init__(self, network: NodeNetwork, target: tuple[str, int], port: int = 0) -> None:
        self.network = network
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kube-forwarder", daemon=True)
        self._thread.start()

    def _connect(self) -> socket.socket:
        return self.network.node.call(
            lambda: socket.create_connection(self.target, timeout=10), timeout=15
        )

    def _loop(self) -> None:
        peers: dict[socket.socket, socket.socket] = {}

        def drop(sock: socket.socket) -> None:
            other = peers.pop(sock, None)
            for s in (sock, other):
                if s is None:
                    continue
                peers.pop(s, None)
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(s)
                s.close()

        while not self._stop.is_set():
            for key, _ in self.selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    try:
                        upstream = self._connect()
                    except OSError:
                        client.close()
                        continue
                    for s in (client, upstream):
                        s.setblocking(False)
                        self.selector.register(s, selectors.EVENT_READ, None)
                    peers[client], peers[upstream] = upstream, client
                    continue
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    drop(sock)
                    continue
                try:
                    peers[sock].setblocking(True)
                    peers[sock].sendall(data)
                    peers[sock].setblocking(False)
                except (OSError, KeyError):
                    drop(sock)
        for sock in list(peers):
            drop(sock)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.selector.close()
        self.listener.close()


@dataclass
class ControlPlane:
    """One cluster's control plane; start() brings it up, close() takes it down."""

    binaries: Binaries
    network: NodeNetwork
    workdir: Path
    processes: list[Process] = field(default_factory=list)
    forwarder: Forwarder | None = None
    host_port: int = 0  # 0: any free loopback port

    # -- PKI and kubeconfigs ------------------------------------------------------------------
    def _pki(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="cache-injector test cluster")
        ca.cert_pem.write_to_path(str(pki / "ca.crt"))
        ca.private_key_pem.write_to_path(str(pki / "ca.key"))
        serving = ca.issue_cert(
            "127.0.0.1",
            "::1",
            "localhost",
            NODE_IP,
            KUBERNETES_SERVICE_IP,
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
            common_name="kube-apiserver",
        )
        serving.cert_chain_pems[0].write_to_path(str(pki / "apiserver.crt"))
        serving.private_key_pem.write_to_path(str(pki / "apiserver.key"))
        admin = ca.issue_cert(
            "kubernetes-admin", common_name="kubernetes-admin", organization_name="system:masters"
        )
        admin.cert_chain_pems[0].write_to_path(str(pki / "admin.crt"))
        admin.private_key_pem.write_to_path(str(pki / "admin.key"))
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (pki / "sa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        (pki / "sa.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        for path in pki.iterdir():
            path.chmod(0o600)

    def _kubeconfig(self, path: Path, server: str) -> None:
        pki = self.workdir / "pki"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "cache-injector",
                    "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(pki / "admin.crt"),
                        "client-key": str(pki / "admin.key"),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "cache-injector",
                    "context": {"cluster": "cache-injector", "user": "admin"},
                }
            ],
            "current-context": "cache-injector",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)

    @property
    def kubeconfig(self) -> Path:
        """For the host: kubectl, Helm, the `kubernetes` client, `cache-injector audit`."""
        return self.workdir / "kubeconfig"

    @property
    def node_kubeconfig(self) -> Path:
        """For programs inside the node's namespace (the components, `purge` to pod IPs)."""
        return self.workdir / "node.kubeconfig"

    # -- processes ----------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [*self.network.node.exec_prefix(), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(Process(name, popen, log))

    def start(self) -> None:
        self._pki()
        pki = self.workdir / "pki"
        b = self.binaries
        self._kubeconfig(self.node_kubeconfig, f"https://[::1]:{API_PORT}")
        self._spawn(
            "etcd",
            [
                b["etcd"],
                "--name=ci",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{ETCD_PORT}",
                f"--advertise-client-urls=http://127.0.0.1:{ETCD_PORT}",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=ci=http://127.0.0.1:2380",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                b["kube-apiserver"],
                f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
                "--bind-address=::",
                f"--secure-port={API_PORT}",
                f"--advertise-address={NODE_IP}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--authorization-mode=Node,RBAC",
                # Webhook and aggregated-API Services are called at an endpoint's pod IP, not
                # the ClusterIP: there is no kube-proxy to route a ClusterIP.
                "--enable-aggregator-routing=true",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        self.forwarder = Forwarder(self.network, ("::1", API_PORT), self.host_port)
        self._kubeconfig(self.kubeconfig, f"https://127.0.0.1:{self.forwarder.port}")
        self.wait_ready("/readyz", START_TIMEOUT)
        node_kubeconfig = str(self.node_kubeconfig)
        self._spawn(
            "kube-controller-manager",
            [
                b["kube-controller-manager"],
                f"--kubeconfig={node_kubeconfig}",
                f"--authentication-kubeconfig={node_kubeconfig}",
                f"--authorization-kubeconfig={node_kubeconfig}",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--bind-address=127.0.0.1",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                b["kube-scheduler"],
                f"--kubeconfig={node_kubeconfig}",
                f"--authentication-kubeconfig={node_kubeconfig}",
                f"--authorization-kubeconfig={node_kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--v=1",
            ],
        )

    # -- readiness ----------------------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        pki = self.workdir / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return context

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        assert self.forwarder is not None
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.forwarder.port, context=self.ssl_context(), timeout=timeout
        )
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def wait_ready(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                status, body = self.get(path)
                if status == 200:
                    return
                last = f"{status} {body[:500]!r}"
            except OSError as err:
                last = repr(err)
            time.sleep(0.25)
        raise TimeoutError(f"API server {path} not ready after {timeout:.0f} s: {last}")

    def check_alive(self) -> None:
        for process in self.processes:
            code = process.popen.poll()
            if code is not None:
                tail = process.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{process.name} exited ({code}):\n{tail}")

    def close(self) -> None:
        # All at once: each stops on its own SIGTERM (the API server's takes a few seconds).
        stoppers = [
            threading.Thread(target=stop_group, args=(p.popen,), daemon=True)
            for p in self.processes
        ]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join(timeout=30)
        self.processes.clear()
        if self.forwarder is not None:
            self.forwarder.close()
            self.forwarder = None


__all__ = ["CLUSTER_DOMAIN", "DNS_IP", "ControlPlane", "Forwarder"]
