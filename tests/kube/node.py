"""A Node whose kubelet is the e2e pod runner: what the scheduler binds here runs for real.

Owns: registering the Node and keeping it alive (its Lease every 10 s, its Ready condition);
watching the pods bound to it; running each one with tests.e2e.podrunner in a network
namespace of its own on the node's bridge (tests/kube/network.py), with its ConfigMaps,
Secrets and ServiceAccount token fetched from the API as the kubelet does; reporting back
the pod's IP, phase, conditions and container statuses; and a deletion as the kubelet
honours it (preStop, grace, then the final delete with grace 0 and the pod's UID).

Images: there is no container runtime. A container that names its `command` runs it; one
that does not needs its image's entrypoint from IMAGES (the webhook's image runs
`cache-injector` from this checkout). A pod the runner cannot run (an image with no known
entrypoint for a container it must run, a volume kind it does not emulate) stays Pending
with the reason in its container statuses, as a kubelet reports a container it cannot create.
The `cache-haproxy`/`cache-varnish` sidecars run the real daemons (`daemons(pod)`).

`runs(pod)` picks the pods to run at all: the admission tests need only the stored pods,
and starting every one of them would cost CPU for nothing; the others stay Pending.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.e2e.podrunner import PodRunner
from tests.kube.network import DNS_IP, NODE_IP, NodeNetwork

LOG = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10
STATUS_PERIOD = 0.25  # how often running pods' statuses are compared and patched


@dataclass(frozen=True)
class Image:
    """What the node knows of an image: the entrypoint (a container's `command` when it sets
    none) and the user it runs as (the image's USER) when the pod sets no runAsUser."""

    entrypoint: tuple[str, ...]
    user: int | None = None
    # Other programs the image puts on PATH, as (name, host binary): its containers' own
    # commands (the webhook image's `python`, which the `helm test` Pod runs) find them.
    programs: tuple[tuple[str, str], ...] = ()


def checkout_images() -> dict[str, Image]:
    """The webhook image (`cache-injector`, any tag or registry): this checkout's CLI. Its
    Dockerfile's USER is 65532, but this machine's Python lives under /root (mode 0700):
    the process runs as root when that user could not start it."""
    cli = Path(sys.executable).with_name("cache-injector")
    user: int | None = 65532
    with contextlib.suppress(OSError):
        if not Path(sys.executable).resolve().stat().st_mode & 0o001 or any(
            not p.stat().st_mode & 0o001 for p in Path(sys.executable).resolve().parents
        ):
            user = None
    python = (("python", sys.executable), ("python3", sys.executable))
    return {"cache-injector": Image((str(cli),), user, python)}


def image_name(reference: str) -> str:
    """The repository's last path element without tag or digest: registry/x/cache-injector:1
    -> cache-injector."""
    name = reference.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def plain(api: client.ApiClient, obj: object) -> dict[str, Any]:
    """A client model as the API's JSON (dicts and lists): what the runner and tests read."""
    out = api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    assert isinstance(out, dict)
    return out


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PodEntry:
    uid: str
    namespace: str
    name: str
    manifest: dict[str, Any]
    ip: str | None = None
    runner: PodRunner | None = None
    error: str | None = None  # why the pod cannot run here
    started_at: str | None = None
    deleting: bool = False
    gone: bool = False
    last_status: dict[str, Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Kubelet:
    """One node; start() registers it and runs its loops, close() stops every pod."""

    def __init__(
        self,
        api: client.ApiClient,
        network: NodeNetwork,
        workdir: Path,
        *,
        daemons: Callable[[Mapping[str, Any]], Mapping[str, str]],
        version: str,
        name: str = "node-1",
        images: Mapping[str, Image] | None = None,
        runs: Callable[[Mapping[str, Any]], bool] = lambda _pod: True,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.network = network
        self.workdir = workdir
        self.daemons = daemons  # the programs a pod's images put on PATH, by its images
        self.version = version
        self.name = name
        self.images = dict(images if images is not None else checkout_images())
        self.runs = runs
        self.pods: dict[str, PodEntry] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- the Node -----------------------------------------------------------------------------
    def _node_status(self) -> dict[str, Any]:
        stamp = now_rfc3339()
        capacity = {"cpu": "64", "memory": "256Gi", "pods": "500", "ephemeral-storage": "100Gi"}
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "the e2e pod runner is posting ready status",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }
        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [ready],
            "addresses": [
                {"type": "InternalIP", "address": NODE_IP},
                {"type": "Hostname", "address": self.name},
            ],
            "nodeInfo": {
                "kubeletVersion": self.version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "cache-injector-e2e://1",
                "kernelVersion": "",
                "osImage": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    def register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
        }
        with contextlib.suppress(ApiException):
            self.core.create_node(cast(Any, body))  # the client takes plain dicts too
        self.core.patch_node_status(self.name, {"status": self._node_status()})
        coordination = client.CoordinationV1Api(self.api)
        lease = {
            "metadata": {"name": self.name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.name,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": self._micro_now(),
            },
        }
        with contextlib.suppress(ApiException):
            coordination.create_namespaced_lease("kube-node-lease", cast(Any, lease))

    @staticmethod
    def _micro_now() -> str:
        return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _heartbeat(self) -> None:
        coordination = client.CoordinationV1Api(self.api)
        beats = 0
        while not self._stop.wait(HEARTBEAT_SECONDS):
            beats += 1
            with contextlib.suppress(Exception):
                coordination.patch_namespaced_lease(
                    self.name, "kube-node-lease", {"spec": {"renewTime": self._micro_now()}}
                )
                if beats % 6 == 0:  # the status itself once a minute, as nodeStatusReport
                    self.core.patch_node_status(self.name, {"status": self._node_status()})

    # -- loops --------------------------------------------------------------------------------
    def start(self) -> None:
        self.register()
        for target, label in (
            (self._heartbeat, "heartbeat"),
            (self._watch, "watch"),
            (self._status_loop, "status"),
        ):
            thread = threading.Thread(target=target, name=f"kubelet-{label}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _watch(self) -> None:
        selector = f"spec.nodeName={self.name}"
        while not self._stop.is_set():
            try:
                listing = self.core.list_pod_for_all_namespaces(field_selector=selector)
                seen = set()
                for pod in listing.items:
                    raw = plain(self.api, pod)
                    seen.add(raw["metadata"]["uid"])
                    self._observe(raw)
                for uid in set(self.pods) - seen:
                    self._vanished(uid)
                stream = watch.Watch()  # type: ignore[no-untyped-call]
                version = listing.metadata.resource_version if listing.metadata else None
                for event in stream.stream(  # type: ignore[no-untyped-call]
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=version,
                    timeout_seconds=30,
                    _request_timeout=40,
                ):
                    if self._stop.is_set():
                        stream.stop()  # type: ignore[no-untyped-call]
                        break
                    raw = plain(self.api, event["object"])
                    if event["type"] == "DELETED":
                        self._vanished(raw["metadata"]["uid"])
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        self._observe(raw)
            except Exception as err:  # a dropped watch: list again
                if not self._stop.is_set():
                    LOG.debug("kubelet watch: %s", err)
                    time.sleep(0.5)

    def _observe(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            entry = self.pods.get(uid)
            if entry is None:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed") and not meta.get(
                    "deletionTimestamp"
                ):
                    return
                entry = PodEntry(uid, meta["namespace"], meta["name"], pod)
                self.pods[uid] = entry
                self._spawn_thread(self._run, entry)
        if meta.get("deletionTimestamp") and not entry.deleting:
            entry.deleting = True
            grace = meta.get("deletionGracePeriodSeconds")
            self._spawn_thread(self._delete, entry, grace)

    def _vanished(self, uid: str) -> None:
        with self._lock:
            entry = self.pods.pop(uid, None)
        if entry is not None and not entry.gone:
            entry.gone = True
            self._spawn_thread(self._teardown, entry, 0)

    def _spawn_thread(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()

    # -- one pod ------------------------------------------------------------------------------
    def _manifest(self, pod: dict[str, Any]) -> dict[str, Any]:
        """The pod with its images' entrypoints and users filled in where it names none."""
        spec = pod["spec"]
        level = spec.get("securityContext") or {}
        for key in ("initContainers", "containers"):
            for container in spec.get(key) or []:
                image = self.images.get(image_name(str(container.get("image", ""))))
                if image is None:
                    continue
                if not container.get("command"):
                    container["command"] = list(image.entrypoint)
                security = container.setdefault("securityContext", {})
                if "runAsUser" not in security and "runAsUser" not in level:
                    if image.user is not None:
                        security["runAsUser"] = image.user
                elif "runAsUser" not in security:
                    security["runAsUser"] = level["runAsUser"]
        return pod

    def _programs(self, pod: dict[str, Any]) -> dict[str, str]:
        """What the pod's containers find on PATH: its cache images' daemons, and the other
        programs of its images (IMAGES)."""
        programs = dict(self.daemons(pod))
        for key in ("initContainers", "containers"):
            for container in pod["spec"].get(key) or []:
                image = self.images.get(image_name(str(container.get("image", ""))))
                if image is not None:
                    programs.update(image.programs)
        return programs

    def _volume_sources(self, pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The ConfigMaps and Secrets the pod's volumes and env name, read from the API."""
        spec = pod["spec"]
        namespace = pod["metadata"]["namespace"]
        config_maps: set[str] = set()
        secrets: set[str] = set()
        for volume in spec.get("volumes") or []:
            sources = [volume, *((volume.get("projected") or {}).get("sources") or [])]
            for source in sources:
                if "configMap" in source:
                    config_maps.add(source["configMap"]["name"])
                if "secret" in source:
                    secret = source["secret"]
                    secrets.add(secret.get("secretName") or secret.get("name"))
        for key in ("initContainers", "containers"):
            for container in spec.get(key) or []:
                for env in container.get("env") or []:
                    ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                    if ref:
                        secrets.add(ref["name"])
        maps: dict[str, Any] = {}
        for name in config_maps:
            with contextlib.suppress(ApiException):
                maps[name] = dict(self.core.read_namespaced_config_map(name, namespace).data or {})
        values: dict[str, Any] = {}
        for name in secrets:
            with contextlib.suppress(ApiException):
                data = self.core.read_namespaced_secret(name, namespace).data or {}
                values[name] = {k: base64.b64decode(v).decode() for k, v in data.items()}
        return maps, values

    def _token(self, pod: dict[str, Any]) -> dict[str, str]:
        spec = pod["spec"]
        if not any("projected" in v for v in spec.get("volumes") or []):
            return {}
        account = spec.get("serviceAccountName") or "default"
        body = {
            "spec": {
                "audiences": [],
                "expirationSeconds": 3607,
                "boundObjectRef": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "name": pod["metadata"]["name"],
                    "uid": pod["metadata"]["uid"],
                },
            }
        }
        token = self.core.create_namespaced_service_account_token(
            account, pod["metadata"]["namespace"], cast(Any, body)
        )
        assert token.status is not None
        return {str(account): str(token.status.token)}

    def _run(self, entry: PodEntry) -> None:
        pod = entry.manifest
        if not self.runs(pod) or entry.deleting:
            return
        with entry.lock:
            try:
                netns, entry.ip = self.network.add_pod(entry.uid)
                maps, secrets = self._volume_sources(pod)
                tokens = self._token(pod)
                workdir = self.workdir / "pods" / entry.uid
                entry.runner = PodRunner(
                    self._manifest(pod),
                    netns=netns,
                    pod_ip=entry.ip,
                    nameserver=DNS_IP,
                    daemons=self._programs(pod),
                    workdir=workdir,
                    config_maps=maps,
                    secrets=secrets,
                    tokens=tokens,
                )
                entry.started_at = now_rfc3339()
            except Exception as err:
                entry.error = f"{type(err).__name__}: {err}"
                self._report(entry)
                return
        runner = entry.runner  # a deletion meanwhile clears entry.runner (_teardown)
        try:
            runner.start()
        except Exception as err:  # not ready in time, or a container that would not start
            if runner.pause is None:
                entry.error = f"{type(err).__name__}: {err}"
            LOG.info("pod %s/%s: %s", entry.namespace, entry.name, err)
        self._report(entry)

    def _delete(self, entry: PodEntry, grace: int | None) -> None:
        """A pod marked for deletion: stop it within its grace, then delete it for good."""
        with entry.lock:
            runner = entry.runner
        if runner is not None and runner.pause is not None:
            runner.terminate(grace=grace, reason="deleted")
            self._report(entry)
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(
                entry.name,
                entry.namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=entry.uid)
                ),
            )
        self._teardown(entry, 0)

    def _teardown(self, entry: PodEntry, _grace: int) -> None:
        with entry.lock:
            runner, entry.runner = entry.runner, None
        if runner is not None:
            runner.close()
            shutil.rmtree(runner.workdir, ignore_errors=True)
        self.network.remove_pod(entry.uid)
        with self._lock:
            self.pods.pop(entry.uid, None)

    # -- status -------------------------------------------------------------------------------
    def _status_loop(self) -> None:
        while not self._stop.wait(STATUS_PERIOD):
            with self._lock:
                entries = list(self.pods.values())
            for entry in entries:
                if entry.runner is not None and not entry.gone:
                    with contextlib.suppress(Exception):
                        self._report(entry)

    def status(self, entry: PodEntry) -> dict[str, Any]:
        """The pod's status as the kubelet would post it."""
        spec = entry.manifest["spec"]
        runner = entry.runner
        states = runner.states if runner is not None else {}
        statuses: dict[str, list[dict[str, Any]]] = {}
        all_ready = True
        sidecars_started = True
        for key, kind in (
            ("initContainers", "initContainerStatuses"),
            ("containers", "containerStatuses"),
        ):
            out = []
            for container in spec.get(key) or []:
                name = container["name"]
                state = states.get(name)
                status: dict[str, Any] = {
                    "name": name,
                    "image": container.get("image", ""),
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                }
                if state is None or state.process is None:
                    if entry.error:
                        reason, message = "CreateContainerError", entry.error
                    elif runner is None or state is not None:
                        reason, message = "ContainerCreating", ""
                    else:
                        reason = "NotRunOnThisNode"
                        message = "no command, and no entrypoint known for its image on this node"
                    waiting = {"reason": reason, **({"message": message[:1000]} if message else {})}
                    status["state"] = {"waiting": waiting}
                    all_ready = False
                    if key == "initContainers":
                        sidecars_started = False
                else:
                    status["containerID"] = f"e2e://{entry.uid}/{name}"
                    status["restartCount"] = len(state.restarts)
                    if state.running and state.exit_code is None:
                        status["state"] = {"running": {"startedAt": entry.started_at}}
                        status["started"] = state.started_at is not None
                        status["ready"] = bool(state.ready)
                    else:
                        code = state.exit_code if state.exit_code is not None else 137
                        status["state"] = {
                            "terminated": {
                                "exitCode": code if code >= 0 else 128 - code,
                                "reason": "Completed" if code == 0 else "Error",
                                "startedAt": entry.started_at,
                                "finishedAt": now_rfc3339(),
                            }
                        }
                        status["started"] = False
                    if not status["ready"]:
                        all_ready = False
                out.append(status)
            if out:
                statuses[kind] = out
        phase = "Pending"
        if runner is not None and runner.pause is not None:
            phase = "Running"
            if runner.completed_at is not None:
                codes = [s.exit_code for s in states.values() if not s.spec.native_sidecar]
                phase = "Succeeded" if all(c == 0 for c in codes) else "Failed"
        terminating = runner is not None and runner.termination is not None
        ready = all_ready and phase == "Running" and not terminating

        def condition(kind: str, value: bool) -> dict[str, Any]:
            return {"type": kind, "status": "True" if value else "False"}

        status_body: dict[str, Any] = {
            "phase": phase,
            "hostIP": NODE_IP,
            "hostIPs": [{"ip": NODE_IP}],
            "conditions": [
                condition("PodReadyToStartContainers", runner is not None),
                condition("Initialized", sidecars_started and runner is not None),
                condition("ContainersReady", ready),
                condition("Ready", ready),
                condition("PodScheduled", True),
            ],
            **statuses,
        }
        if entry.started_at:
            status_body["startTime"] = entry.started_at
        if entry.ip and runner is not None:
            status_body["podIP"] = entry.ip
            status_body["podIPs"] = [{"ip": entry.ip}]
        return status_body

    def _report(self, entry: PodEntry) -> None:
        body = self.status(entry)
        if body == entry.last_status or entry.gone:
            return
        try:
            self.core.patch_namespaced_pod_status(entry.name, entry.namespace, {"status": body})
            entry.last_status = body
        except ApiException as err:
            if err.status == 404:
                entry.gone = True

    # -- lookups for tests --------------------------------------------------------------------
    def runner(self, namespace: str, name: str) -> PodRunner | None:
        with self._lock:
            for entry in self.pods.values():
                if entry.namespace == namespace and entry.name == name:
                    return entry.runner
        return None

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            entries = list(self.pods.values())
            self.pods.clear()

        def stop(entry: PodEntry) -> None:
            entry.gone = True
            runner = entry.runner
            if runner is not None:
                with contextlib.suppress(Exception):
                    runner.close()
            self.network.remove_pod(entry.uid)

        # Every pod at once: each may take its teardown grace (10 s) to stop.
        stoppers = [threading.Thread(target=stop, args=(e,), daemon=True) for e in entries]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join(timeout=60)
        for thread in self._threads:
            thread.join(timeout=5)
