"""One local cluster: the node's network, the control plane, cluster DNS and the node, up
together and down together; and the chart installed into it with Helm, as a user does.

`python -m tests.kube.cluster` (`make cluster`) starts one, installs the chart from
charts/cache-injector with the webhook from this checkout as its Service's endpoints, labels
a demo namespace, prints the kubeconfig path and waits for Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import helm_python
from kubernetes import client, config

from tests import daemons
from tests.e2e.podrunner import process_alive, remove_mount_points
from tests.kube.binaries import Binaries, binaries
from tests.kube.controlplane import CLUSTER_DOMAIN, ControlPlane
from tests.kube.dns import ApiClusterDNS
from tests.kube.network import DNS_IP, NodeNetwork
from tests.kube.node import Kubelet

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cache-injector"
RELEASE = "cache-injector"
RELEASE_NAMESPACE = "cache-injector"
# The chart's values for this cluster: IPv6 single-stack (tests/kube/network.py), so the
# webhook listens on ::, and one worker per webhook pod (2 CPUs for everything here).
LOCAL_VALUES: dict[str, Any] = {"server": {"host": "::", "workers": 1}}
READY_TIMEOUT = 120.0
WORK_ROOT = Path("/var/lib/cache-injector-cluster")
_SERIAL = itertools.count()
OWNER_FILE = "owner.pid"  # the process whose cluster this folder holds
KEEP_ENV = "CACHE_INJECTOR_KEEP_CLUSTER"  # set: close() leaves the workdir (logs) in place


def reap_stale_clusters() -> None:
    """What killed runs left behind under WORK_ROOT (reap_folder each)."""
    if WORK_ROOT.is_dir():
        for folder in WORK_ROOT.iterdir():
            reap_folder(folder)


def reap_folder(folder: Path) -> None:
    """A cluster folder whose owner is gone: the processes that name it (control plane,
    pods), its network namespaces, the folder itself."""
    with contextlib.suppress(OSError, ValueError):
        owner = int((folder / OWNER_FILE).read_text())
        if process_alive(owner):
            return
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if str(folder).encode() in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
        prefix = (folder / "prefix").read_text().strip()
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        for line in listing.stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(f"{prefix}-"):
                subprocess.run(["ip", "netns", "delete", name], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def daemons_for(pod: Mapping[str, Any]) -> dict[str, str]:
    """The daemon binaries a pod's cache images call for: 2.6/7.1 images get Debian's, others
    the newer builds (as tests/e2e picks by generation)."""
    spec = pod.get("spec") or {}
    images = [str(c.get("image", "")) for c in (spec.get("initContainers") or [])]
    images += [str(c.get("image", "")) for c in (spec.get("containers") or [])]
    old = any(i.endswith((":2.6", ":7.1")) or ":2.6." in i or ":7.1." in i for i in images)
    pick = daemons.OLDEST if old else daemons.NEWEST
    available = daemons.available()
    out = {}
    if pick["haproxy"] in available:
        out["haproxy"] = available[pick["haproxy"]]
    if pick["varnish"] in available:
        varnishd = available[pick["varnish"]]
        out["varnishd"] = varnishd
        out["varnishncsa"] = daemons.varnish_tool(varnishd, "varnishncsa")
        out["varnishstat"] = daemons.varnish_tool(varnishd, "varnishstat")
    return out


class Cluster:
    """A control plane and one node, on the host through a loopback port."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        prefix: str | None = None,
        runs: Callable[[Mapping[str, Any]], bool] = lambda _pod: True,
        host_port: int = 0,
        kube: Binaries | None = None,
    ) -> None:
        self.binaries = kube or binaries()
        # Not under /tmp: pods mount emptyDirs there (the webhook's own chart does), which
        # would hide their own volumes and resolv.conf from the container's mounts.
        WORK_ROOT.mkdir(parents=True, exist_ok=True)
        reap_stale_clusters()
        self.made_workdir = workdir is None  # removed by close() unless KEEP_ENV is set
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="cluster-", dir=WORK_ROOT))
        (self.workdir / OWNER_FILE).write_text(str(os.getpid()))
        # Containers run as other users and must reach their pod's files (pki/ stays 0700).
        for folder in (WORK_ROOT, self.workdir):
            folder.chmod(0o755)
        # Unique per cluster: a test session has several at once (the session's, a module's).
        self.prefix = prefix or f"ck{os.getpid() % 100000}{next(_SERIAL):x}"
        self.runs = runs
        self.host_port = host_port
        self.network: NodeNetwork | None = None
        self.control: ControlPlane | None = None
        self.dns: ApiClusterDNS | None = None
        self.node: Kubelet | None = None
        self._api: client.ApiClient | None = None
        self.started_in = 0.0

    # -- life ---------------------------------------------------------------------------------
    def start(self) -> Cluster:
        began = time.monotonic()
        (self.workdir / "prefix").write_text(self.prefix)
        try:
            self.network = NodeNetwork(self.prefix)
            self.control = ControlPlane(
                self.binaries, self.network, self.workdir, host_port=self.host_port
            )
            self.control.start()
            self._api = self.api_client()
            self._wait_controllers()
            self._dns_service()
            self.dns = ApiClusterDNS(self.api, self.network)
            self.dns.start()
            self.node = Kubelet(
                self.api,
                self.network,
                self.workdir,
                daemons=daemons_for,
                version=self.binaries.version,
                runs=self.runs,
            )
            self.node.start()
            self._wait_node_schedulable()
        except BaseException:
            self.close()
            raise
        self.started_in = time.monotonic() - began
        return self

    def api_client(self) -> client.ApiClient:
        """A new connection through the host forwarder, as the admin."""
        assert self.control is not None
        configuration = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(self.control.kubeconfig), client_configuration=configuration
        )
        return client.ApiClient(configuration)

    @property
    def api(self) -> client.ApiClient:
        """The admin's connection (once started)."""
        assert self._api is not None, "the cluster is not started"
        return self._api

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def kubeconfig(self) -> Path:
        assert self.control is not None
        return self.control.kubeconfig

    def _wait_controllers(self) -> None:
        """The default ServiceAccount exists once the controller-manager runs: pods can be
        created (the ServiceAccount admission plugin needs it)."""
        self.wait_service_account("default")

    def wait_service_account(self, namespace: str, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.control is not None
            self.control.check_alive()
            with contextlib.suppress(client.exceptions.ApiException):
                self.core.read_namespaced_service_account("default", namespace)
                return
            time.sleep(0.2)
        raise TimeoutError(f"no default ServiceAccount in {namespace} after {timeout:.0f} s")

    def _dns_service(self) -> None:
        body = {
            "metadata": {
                "name": "kube-dns",
                "namespace": "kube-system",
                "labels": {"k8s-app": "kube-dns"},
            },
            "spec": {
                "clusterIP": DNS_IP,
                "ipFamilies": ["IPv6"],
                "selector": {"k8s-app": "kube-dns"},
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ],
            },
        }
        with contextlib.suppress(client.exceptions.ApiException):
            self.core.create_namespaced_service("kube-system", cast(Any, body))

    def _wait_node_schedulable(self, timeout: float = READY_TIMEOUT) -> None:
        """Ready, and without the not-ready taint the node lifecycle controller may add."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            node = self.core.read_node("node-1")
            taints = [t.key for t in (node.spec.taints if node.spec else None) or []]
            if not any(t.startswith("node.kubernetes.io/") for t in taints):
                return
            time.sleep(0.2)
        raise TimeoutError("node-1 still tainted")

    def close(self) -> None:
        for part in (self.node, self.dns):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.close()
        if self.control is not None:
            self.control.close()
        if self.network is not None:
            self.network.close()
        self.node = self.dns = self.control = self.network = None
        remove_mount_points()
        if self.made_workdir and not os.environ.get(KEEP_ENV):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- Helm ---------------------------------------------------------------------------------
    def helm(self, namespace: str = RELEASE_NAMESPACE) -> helm_python.Config:
        return helm_python.Config(kubeconfig_path=str(self.kubeconfig), namespace=namespace)

    def install_chart(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        release: str = RELEASE,
        namespace: str = RELEASE_NAMESPACE,
        timeout: int = 180,
    ) -> Any:
        """`helm install --create-namespace --wait`: returns once the webhook pods are ready."""
        merged = merge(LOCAL_VALUES, dict(values or {}))
        return self.helm(namespace).install(
            str(CHART),
            release,
            merged,
            namespace=namespace,
            create_namespace=True,
            wait="watcher",
            timeout=timeout,
        )


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


DEMO_NAMESPACE = "demo"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=6443, help="host loopback port (0: any)")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".cluster")
    args = parser.parse_args(argv)
    reap_folder(args.workdir)  # an earlier `make cluster` that was killed
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    began = time.monotonic()
    kube = binaries()
    print(f"Kubernetes {kube.version} from {kube.folder}", flush=True)

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the `with` below takes everything down

    signal.signal(signal.SIGTERM, interrupt)
    with Cluster(args.workdir, prefix="ckdemo", host_port=args.port, kube=kube) as cluster:
        print(f"control plane and node-1 up in {cluster.started_in:.1f} s", flush=True)
        cluster.install_chart()
        core = cluster.core
        labels = {"cache-injector.io/inject": "enabled"}
        core.create_namespace(cast(Any, {"metadata": {"name": DEMO_NAMESPACE, "labels": labels}}))
        bin_dir = args.workdir / "bin"  # this release's kubectl, first on the user's PATH
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "kubectl").symlink_to(kube["kubectl"])
        print(
            f"\nReady in {time.monotonic() - began:.1f} s: chart {RELEASE} installed in namespace "
            f"{RELEASE_NAMESPACE}, namespace {DEMO_NAMESPACE} labelled for injection.\n\n"
            f"  export KUBECONFIG={cluster.kubeconfig} PATH={bin_dir}:$PATH\n"
            f"  kubectl get pods -A\n"
            f"  kubectl -n {DEMO_NAMESPACE} apply -f docs/examples/cluster-demo.yaml\n\n"
            f"Cluster DNS {DNS_IP} ({CLUSTER_DOMAIN}); logs in {args.workdir}/logs. "
            "Ctrl-C stops everything.",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1)
                assert cluster.control is not None
                cluster.control.check_alive()
        print("stopping (the pods first, as in a node drain: about 30 s)", flush=True)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
