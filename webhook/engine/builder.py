"""Build the cache-haproxy and cache-varnish containers and their volumes as plain dicts.

Owns: what the injected pod looks like (docs/design.md "The injected pod"): commands, ports,
probes, volumes, securityContext, resources and the memory-limit rule; merging a container
the user declared under our name; port clash detection. Does not: render configs or build
patch operations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import backend_tls, names, values
from .errors import ImageOverrideNotAllowed, InvalidAnnotation, PortClash
from .memo import BoundedMemo
from .options import Options
from .policy import (
    VARNISH_LOG_SIZE_READER,
    VARNISH_WORKDIR_SIZE,
    Policy,
    Resources,
    varnish_log_size,
    varnish_memory_limit,
    varnish_memory_request,
)

JsonDict = dict[str, Any]


def _security_context(uid: int | None) -> JsonDict:
    """Pod Security "restricted": non-root, nothing to escalate, read-only root filesystem."""
    context: JsonDict = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if uid is not None:
        context["runAsUser"] = uid
        context["runAsGroup"] = uid
    return context


def _pull_policy(policy: Policy) -> JsonDict:
    """The policy's imagePullPolicy, or nothing: Kubernetes' default then applies."""
    pull_policy = policy.model.images.pull_policy
    return {"imagePullPolicy": pull_policy} if pull_policy else {}


def _resources(
    spec: Resources, memory_floor: int | None = None, memory_request: int | None = None
) -> JsonDict:
    out: JsonDict = {}
    for kind in ("requests", "limits"):
        resource_list = getattr(spec, kind)
        entries = {
            alias: value
            for alias, value in (
                ("cpu", resource_list.cpu),
                ("memory", resource_list.memory),
                ("ephemeral-storage", resource_list.ephemeral_storage),
            )
            if value is not None
        }
        out[kind] = entries
    if memory_floor is not None:
        # The memory-limit rule: never below what a full cache needs (docs/design.md).
        limit = out["limits"].get("memory")
        if limit is None or values.parse_size(limit) < memory_floor:
            out["limits"]["memory"] = values.format_quantity(memory_floor)
        if "memory" not in out["requests"]:
            request = memory_floor if memory_request is None else memory_request
            out["requests"]["memory"] = values.format_quantity(request)
    return {kind: entries for kind, entries in out.items() if entries}


def _http_probe(path: str, port: int | str, *, period: int, failures: int) -> JsonDict:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 1,
    }


def _tcp_probe(port: int | str, *, period: int, failures: int) -> JsonDict:
    return {
        "tcpSocket": {"port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 1,
    }


def build_haproxy(options: Options, policy: Policy) -> JsonDict:
    """cache-haproxy: master-worker in the foreground, logs to stdout, probes its own port."""
    model = policy.model
    container: JsonDict = {
        "name": names.CONTAINER_HAPROXY,
        "image": model.images.haproxy,
        **_pull_policy(policy),
        # Master-worker (-W) although the master costs 2.6 MiB on 3.4 and 2.1 MiB on 2.6
        # (bench/footprint): HAProxy alone catches no SIGTERM, and a PID namespace's init
        # (HAProxy, as the container's PID 1) never gets a signal it does not catch - so the
        # lone process ignored pod deletion until SIGKILL (e2e 11-13 failed). The master
        # catches SIGTERM and stops the worker.
        "command": [
            "haproxy",
            "-W",
            "-db",
            "-f",
            f"{names.HAPROXY_CONFIG_DIR}/{names.HAPROXY_CONFIG_FILE}",
        ],
        "ports": [
            {
                "name": names.PORT_NAME_METRICS,
                "containerPort": names.HAPROXY_METRICS_PORT,
                "protocol": "TCP",
            }
        ],
        # Probes see only HAProxy itself, never the backends: a probe that waits for
        # backend pods deadlocks a pod that is its own backend.
        "startupProbe": _http_probe(
            names.HAPROXY_HEALTH_PATH, names.PORT_NAME_METRICS, period=1, failures=30
        ),
        "readinessProbe": _http_probe(
            names.HAPROXY_HEALTH_PATH, names.PORT_NAME_METRICS, period=5, failures=3
        ),
        "resources": _resources(model.resources.haproxy),
        "securityContext": _security_context(model.run_as_user.haproxy),
        "volumeMounts": [
            {
                "name": names.VOLUME_HAPROXY_CONFIG,
                "mountPath": names.HAPROXY_CONFIG_DIR,
                "readOnly": True,
            },
            {"name": names.VOLUME_HAPROXY_RUN, "mountPath": names.HAPROXY_RUN_DIR},
            # backend-tls: the CA bundle and client certificate, read-only, HAProxy's only.
            *backend_tls.mounts(options),
        ],
    }
    if options.drain_seconds and not model.native_sidecars:
        # As a regular container HAProxy gets SIGTERM when the pod is deleted, at the same
        # time as Varnish starts draining (native sidecars stop in reverse order instead):
        # every miss during the drain got a 503. It outlives Varnish's drain by a second so
        # the last misses finish (SIGTERM is HAProxy's hard stop).
        seconds = str(options.drain_seconds + 1)
        container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", seconds]}}}
    return container


# Threads each of Varnish's two pools keeps when idle (default 100): 200 idle threads cost
# ~1.4 MiB and buy nothing a burst needs - the pools add threads on demand (64 clients at
# once from idle: bench/datapath) and drop them thread_pool_timeout (300 s) after.
VARNISH_THREADS_MIN = 10


# jemalloc's tunables for varnishd (MALLOC_CONF): the official images and Debian's varnishd
# link jemalloc, which makes 4 arenas per CPU of the node - not of the container's quota -
# and gives each new thread the next one, so on a node of 11+ CPUs each of varnishd's ~45
# threads has its own. Evictions of a stream of unique tiny objects fragment them
# (bench/churn, default pod, from the cache full): 64 arenas +66 MiB in 4 min, still
# +12.6 MiB/min; 8 (this 2-CPU machine's default) +7.4 MiB in 5 min; 2 about the same
# (+5.9 in 3 min) but MISSes 0.87x req/s (median of 4 noisy pairs). So 8: what was measured
# here, on any node. A pod can set its own MALLOC_CONF on cache-varnish (it wins).
VARNISH_JEMALLOC_CONF = "narenas:8"


def varnish_hash_buckets(cache_size: int) -> int:
    """Buckets of the classic hasher: one per 32 KiB of cache, at least 1024 (~110 bytes
    each). Full of ~350-byte objects the chains stay ~100 long at worst; lookups compare
    32-byte digests under the bucket's own lock, so a few hundred ns."""
    return max(1024, cache_size // (32 * values.KIB))


# Bytes a passed (uncacheable) response may run ahead of its slowest client. Without a cap a
# backend faster than its clients fills Transient: 6 concurrent 48 MiB passes through a
# 64 MiB Transient got one 503 (Content-Length) or six truncated bodies (chunked); with 1 MiB
# all six arrived whole and cache-varnish peaked at 115 MiB instead of 191 MiB (e2e, 8.0).
TRANSIT_BUFFER = "1M"


def varnish_args(options: Options, policy: Policy) -> list[str]:
    """varnishd's arguments: storage sizes and the parameters our measurements call for."""
    cache_mib = max(1, options.cache_size // values.MIB)
    transient_mib = max(1, policy.transient_size // values.MIB)
    config = f"{names.VARNISH_CONFIG_DIR}/{names.VARNISH_CONFIG_FILE}"
    # The generated VCL is loaded by the start-up CLI file, with tag invalidation when the
    # image has the xkey VMOD and without it otherwise (xkey.cli.j2): an image without
    # varnish-modules still runs, no shell or vmod directory guessed. -f '' loads no VCL
    # itself. A user's own VCL (vcl-configmap) is loaded as before.
    load = (
        ["-f", config]
        if options.vcl_configmap
        else ["-f", "", "-I", f"{names.VARNISH_CONFIG_DIR}/{names.VARNISH_CLI_FILE}"]
    )
    args = [
        "-F",
        "-n",
        names.VARNISH_WORKDIR,
        *load,
        # No address: varnishd binds every address getaddrinfo gives for the wildcard,
        # 0.0.0.0 and [::] (v6only), so cache-http answers on the pod's IPv4 and IPv6
        # addresses; where the kernel has no IPv6 (EAFNOSUPPORT) it skips [::] (7.1 and 8.0).
        "-a",
        f":{options.listen_port}",
        "-s",
        f"malloc,{cache_mib}M",
        "-s",
        f"Transient=malloc,{transient_mib}M",
        # The default critbit hasher keeps each evicted object's objhead for critbit_cooloff
        # (180 s): a stream of unique small objects grew past any limit (450 MiB, 117 % of
        # the default pod's). classic frees it at once: memory levels off.
        "-h",
        f"classic,{varnish_hash_buckets(options.cache_size)}",
        # A full cache must evict, not fail: with the default (50 evictions per fetch) large
        # objects arriving into a cache of small ones got 503s; 10000 left none.
        "-p",
        "nuke_limit=10000",
        # An idle piped connection (WebSocket) is closed after this long (default 60 s);
        # HAProxy's `timeout tunnel` is the same.
        "-p",
        f"pipe_timeout={options.tunnel_timeout}",
        # Varnish 8.0 otherwise ignores SIGTERM for ~60 s after concurrent traffic (idle
        # workers keep VCL references until 60 s after their last task), holding pod
        # deletion until SIGKILL. Its cost on HITs is below the noise (bench/datapath).
        "-p",
        "debug=+vclrel",
        # The shared-memory log lives in the workdir's Memory emptyDir: 80M by default, most
        # of an idle pod's memory (policy.VARNISH_LOG_SIZE says why these sizes).
        "-p",
        f"vsl_space={varnish_log_size(options.access_log) // values.MIB}M",
        "-p",
        f"thread_pool_min={VARNISH_THREADS_MIN}",
        # Varnish must close an idle connection to HAProxy before HAProxy does, or it can
        # send a request on a connection HAProxy is closing (its default, 60 s, was above
        # HAProxy's 10 s). The local frontend keeps idle connections twice as long (60 s).
        "-p",
        f"backend_idle_timeout={names.VARNISH_BACKEND_IDLE_SECONDS}",
    ]
    if policy.varnish_transit_buffer:
        args += ["-p", f"transit_buffer={TRANSIT_BUFFER}"]
    return args


def build_varnish(options: Options, policy: Policy) -> JsonDict:
    """cache-varnish: varnishd in the foreground, workdir and /tmp on Memory emptyDirs."""
    model = policy.model
    floor = varnish_memory_limit(options.cache_size, policy.transient_size)
    request = varnish_memory_request(options.cache_size, policy.transient_size)
    if options.vcl_configmap:
        # A user's VCL may not answer /.cache/ready: only check that Varnish accepts.
        startup = _tcp_probe(names.PORT_NAME_HTTP, period=1, failures=60)
        readiness = _tcp_probe(names.PORT_NAME_HTTP, period=5, failures=3)
    else:
        startup = _http_probe(names.VARNISH_READY_PATH, names.PORT_NAME_HTTP, period=1, failures=60)
        readiness = _http_probe(
            names.VARNISH_READY_PATH, names.PORT_NAME_HTTP, period=5, failures=3
        )
    container: JsonDict = {
        "name": names.CONTAINER_VARNISH,
        "image": model.images.varnish,
        **_pull_policy(policy),
        "command": ["varnishd"],
        "args": varnish_args(options, policy),
        "ports": [
            {"name": names.PORT_NAME_HTTP, "containerPort": options.listen_port, "protocol": "TCP"}
        ],
        # The token for invalidation from outside the pod (default.vcl.j2), when the user
        # created the Secret; unset otherwise, and the pod starts either way.
        "env": [
            {
                "name": names.PURGE_TOKEN_ENV,
                "valueFrom": {
                    "secretKeyRef": {
                        "name": names.PURGE_SECRET,
                        "key": names.PURGE_SECRET_KEY,
                        "optional": True,
                    }
                },
            },
            # Memory that levels off under small-object churn (VARNISH_JEMALLOC_CONF); a
            # MALLOC_CONF the user declares on cache-varnish wins (env merges by name).
            {"name": names.MALLOC_CONF_ENV, "value": VARNISH_JEMALLOC_CONF},
        ],
        "startupProbe": startup,
        "readinessProbe": readiness,
        "resources": _resources(
            model.resources.varnish, memory_floor=floor, memory_request=request
        ),
        "securityContext": _security_context(model.run_as_user.varnish),
        "volumeMounts": [
            {
                "name": names.VOLUME_VARNISH_CONFIG,
                "mountPath": names.VARNISH_CONFIG_DIR,
                "readOnly": True,
            },
            {"name": names.VOLUME_VARNISH_WORKDIR, "mountPath": names.VARNISH_WORKDIR},
            {"name": names.VOLUME_VARNISH_TMP, "mountPath": "/tmp"},
        ],
    }
    if options.drain_seconds:
        # Keep serving while endpoints drop the pod; the kubelet's sleep action needs no
        # shell in the image (native-sidecar clusters are 1.30+), the fallback execs sleep.
        if model.native_sidecars:
            container["lifecycle"] = {"preStop": {"sleep": {"seconds": options.drain_seconds}}}
        else:
            container["lifecycle"] = {
                "preStop": {"exec": {"command": ["sleep", str(options.drain_seconds)]}}
            }
    return container


def _workdir_reader(
    name: str, image: str, command: list[str], options: Options, policy: Policy
) -> JsonDict:
    """A container that reads cache-varnish's workdir: the shared memory log and counters.

    Read-only mount; the uid of varnishd (the files are 0640); VSM_NOPID=1 because varnishd
    runs in another PID namespace, where its pid in _.pid means nothing (checked on Varnish
    7.1 and 8.0: tests/e2e/test_observe.py).
    """
    model = policy.model
    container: JsonDict = {
        "name": name,
        "image": image,
        **_pull_policy(policy),
        "command": command,
        "env": [{"name": "VSM_NOPID", "value": "1"}],
        "securityContext": _security_context(model.run_as_user.varnish),
        "volumeMounts": [
            {
                "name": names.VOLUME_VARNISH_WORKDIR,
                "mountPath": names.VARNISH_WORKDIR,
                "readOnly": True,
            }
        ],
    }
    if options.drain_seconds:
        # Keep reading while cache-varnish drains, so the drain's requests are logged and
        # counted. Native sidecars stop in reverse order, these before cache-varnish: their
        # sleep as long as its own, which runs at the same time, so they get SIGTERM when
        # Varnish stops serving. As regular containers all get SIGTERM at once after their
        # hooks: 1 s longer, as cache-haproxy.
        if model.native_sidecars:
            container["lifecycle"] = {"preStop": {"sleep": {"seconds": options.drain_seconds}}}
        else:
            seconds = str(options.drain_seconds + 1)
            container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", seconds]}}}
    return container


def build_access_log(options: Options, policy: Policy) -> JsonDict:
    """cache-access-log: varnishncsa, one JSON line per client request on stdout."""
    container = _workdir_reader(
        names.CONTAINER_ACCESS_LOG,
        policy.model.images.varnish,
        # -t off: wait for varnishd's workdir, should it not be there yet (nativeSidecars:
        # false starts every container at once); -q: the kubelet's probes of /.cache/ready
        # are not client requests.
        [
            "varnishncsa",
            "-n",
            names.VARNISH_WORKDIR,
            "-t",
            "off",
            "-q",
            f'ReqURL ne "{names.VARNISH_READY_PATH}"',
            "-j",
            "-F",
            names.ACCESS_LOG_FORMAT,
        ],
        options,
        policy,
    )
    container["resources"] = _resources(policy.model.resources.access_log)
    return container


def build_exporter(options: Options, policy: Policy) -> JsonDict:
    """cache-varnish-exporter: `varnishstat -j` on every scrape, as Prometheus metrics."""
    container = _workdir_reader(
        names.CONTAINER_EXPORTER,
        policy.model.images.varnish_exporter,
        [
            "prometheus_varnish_exporter",
            "-n",
            names.VARNISH_WORKDIR,
            "-web.listen-address",
            f":{names.EXPORTER_PORT}",
            "-web.telemetry-path",
            names.METRICS_PATH,
            "-raw",
        ],
        options,
        policy,
    )
    container["ports"] = [
        {
            "name": names.PORT_NAME_VARNISH_METRICS,
            "containerPort": names.EXPORTER_PORT,
            "protocol": "TCP",
        }
    ]
    # No probes: the pod's readiness never depends on its metrics.
    container["resources"] = _resources(policy.model.resources.varnish_exporter)
    return container


def workdir_size(options: Options) -> int:
    """The workdir emptyDir's size. With the access log, room for one more log: when varnishd
    restarts, varnishncsa still maps the old (deleted) log until it re-attaches, and with
    room for one log only the new child could not create its own ("Child failed on launch",
    on every restart: e2e scenario 19). Not counted in cache-varnish's memory limit: the old
    log's pages were charged to the container instance that wrote them."""
    return VARNISH_WORKDIR_SIZE + (VARNISH_LOG_SIZE_READER if options.access_log else 0)


def build_volumes(options: Options) -> list[JsonDict]:
    """Configs arrive through the downward API (no ConfigMaps created: no side effects)."""

    def from_annotation(key: str, path: str) -> JsonDict:
        return {"path": path, "fieldRef": {"fieldPath": f"metadata.annotations['{key}']"}}

    varnish_config: JsonDict
    if options.vcl_configmap:
        varnish_config = {
            "name": names.VOLUME_VARNISH_CONFIG,
            "configMap": {
                "name": options.vcl_configmap,
                "items": [{"key": "default.vcl", "path": names.VARNISH_CONFIG_FILE}],
            },
        }
    else:
        varnish_config = {
            "name": names.VOLUME_VARNISH_CONFIG,
            "downwardAPI": {
                "items": [
                    from_annotation(names.ANNOTATION_VCL, names.VARNISH_CONFIG_FILE),
                    from_annotation(names.ANNOTATION_VARNISH_CLI, names.VARNISH_CLI_FILE),
                ]
            },
        }
    return [
        {
            "name": names.VOLUME_HAPROXY_CONFIG,
            "downwardAPI": {
                "items": [from_annotation(names.ANNOTATION_HAPROXY_CFG, names.HAPROXY_CONFIG_FILE)]
            },
        },
        {"name": names.VOLUME_HAPROXY_RUN, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        varnish_config,
        # The shared-memory log lives here: smaller than vsl_space and varnishd fails at launch.
        {
            "name": names.VOLUME_VARNISH_WORKDIR,
            "emptyDir": {
                "medium": "Memory",
                "sizeLimit": values.format_quantity(workdir_size(options)),
            },
        },
        # varnishd compiles the VCL with cc, which writes temporary files.
        {"name": names.VOLUME_VARNISH_TMP, "emptyDir": {"medium": "Memory", "sizeLimit": "32Mi"}},
        # Stays empty (mounted read-only: no_api_token). One page, what tmpfs gives anyway;
        # even on disk an empty directory (4096 bytes) would not exceed it.
        {"name": names.VOLUME_NO_API_TOKEN, "emptyDir": {"medium": "Memory", "sizeLimit": "4Ki"}},
        *backend_tls.volumes(options),
    ]


def declared_ports(pod_spec: Mapping[str, Any]) -> list[tuple[str, int, str | None]]:
    """(container, port, port name) for every port the pod's own containers declare."""
    found = []
    for group in ("initContainers", "containers"):
        for container in pod_spec.get(group) or []:
            if not isinstance(container, dict) or container.get("name") in names.CONTAINERS:
                continue
            for port in container.get("ports") or []:
                if isinstance(port, dict) and isinstance(port.get("containerPort"), int):
                    # A name that is not a string (only hostile reviews carry one: the API
                    # server would not decode it) names nothing; unchecked, it broke the
                    # set lookup in check_ports with a TypeError.
                    name = port.get("name") if isinstance(port.get("name"), str) else None
                    found.append((str(container.get("name")), port["containerPort"], name))
    return found


def check_ports(
    pod_spec: Mapping[str, Any], listen_port: int, *, metrics: bool = False
) -> list[InvalidAnnotation]:
    """Every sidecar port and port name against the pod's own; each clash names both sides."""
    listen_key = names.OPTIONS_BY_NAME["listen_port"].key
    fixed = (
        f"{names.CONTAINER_HAPROXY} always uses {names.HAPROXY_LOCAL_PORT}, "
        f"{names.HAPROXY_METRICS_PORT} and {names.HAPROXY_STATS_PORT}"
    )
    # port -> (what the sidecar uses it for, the way out)
    ours = {
        names.HAPROXY_LOCAL_PORT: ("local frontend", fixed),
        names.HAPROXY_METRICS_PORT: ("metrics", fixed),
        names.HAPROXY_STATS_PORT: ("stats page, localhost only", fixed),
        listen_port: (listen_key, f"set {listen_key} to a free port from 1025 to 65535"),
    }
    our_names = {names.PORT_NAME_HTTP, names.PORT_NAME_METRICS, names.PORT_NAME_VARNISH_METRICS}
    sidecars = {listen_port: names.CONTAINER_VARNISH}
    if metrics:
        metrics_key = names.OPTIONS_BY_NAME["metrics"].key
        ours[names.EXPORTER_PORT] = (
            "Varnish metrics",
            f"{names.CONTAINER_EXPORTER} always uses {names.EXPORTER_PORT}; set {metrics_key} "
            "to false or move the container's port",
        )
        sidecars[names.EXPORTER_PORT] = names.CONTAINER_EXPORTER
    problems: list[InvalidAnnotation] = []
    for container, port, port_name in declared_ports(pod_spec):
        if port in ours:
            role, remedy = ours[port]
            sidecar = sidecars.get(port, names.CONTAINER_HAPROXY)
            key = listen_key if port == listen_port else f"container {container} port"
            problems.append(
                PortClash(
                    key,
                    str(port),
                    f"port {port} is used by container {container} and needed by {sidecar} "
                    f"({role}); {remedy}",
                )
            )
        if port_name in our_names:
            problems.append(
                PortClash(
                    f"container {container} port name",
                    str(port_name),
                    f"the port names {', '.join(sorted(our_names))} belong to the cache "
                    "sidecars; rename the container's port",
                )
            )
    return problems


def merge_user_container(built: JsonDict, declared: Mapping[str, Any], policy: Policy) -> JsonDict:
    """A container the user declared under our name is completed, not duplicated.

    The user's fields win (as in Istio), except an image the policy pins.
    """
    overridden = "image" in declared and declared["image"] != built["image"]
    if overridden and not policy.model.allow_image_override:
        raise ImageOverrideNotAllowed(
            f"container {built['name']} image",
            str(declared["image"]),
            f"{built['image']} (the cluster policy pins sidecar images; "
            "allowImageOverride is false)",
        )
    merged = dict(built)
    merged.update(declared)
    if isinstance(declared.get("env"), list) and built.get("env"):
        # Env is merged by name (the user's wins), so the invalidation token stays.
        mine = {e.get("name") for e in declared["env"] if isinstance(e, dict)}
        merged["env"] = [e for e in built["env"] if e["name"] not in mine] + declared["env"]
    return merged


def memory_limit_warning(
    container: Mapping[str, Any], options: Options, policy: Policy
) -> str | None:
    """A user-set memory limit below what a full cache needs: allowed, but say so."""
    limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    if not isinstance(limit, str):
        return None
    floor = varnish_memory_limit(options.cache_size, policy.transient_size)
    try:
        size = values.parse_size(limit)
    except ValueError:
        return None
    if size >= floor:
        return None
    return (
        f"container {names.CONTAINER_VARNISH} memory limit {limit} is below "
        f"{values.format_quantity(floor)} (cache-size + Transient + workdir + headroom for "
        "the smallest objects): it can be OOM-killed when the cache fills"
    )


def no_api_token(container: JsonDict) -> JsonDict:
    """With an empty read-only directory where the pod's ServiceAccount token would go.

    The API server's ServiceAccount admission plugin runs again after the webhooks changed
    the pod and mounts the API token into every container without a mount at that path
    (measured on a real API server: tests/kube/test_admission.py); the daemons facing client
    traffic never call the API, so they get no credential for it.
    """
    mount = {
        "name": names.VOLUME_NO_API_TOKEN,
        "mountPath": names.SERVICE_ACCOUNT_DIR,
        "readOnly": True,
    }
    return {**container, "volumeMounts": [*container["volumeMounts"], mount]}


def native(container: JsonDict) -> JsonDict:
    """As a native sidecar: an init container that keeps running (restartPolicy Always)."""
    return {**container, "restartPolicy": "Always"}


_BUILT: BoundedMemo[tuple[Options, str], tuple[list[JsonDict], list[JsonDict]]] = BoundedMemo(1024)


def build_sidecars(options: Options, policy: Policy) -> tuple[list[JsonDict], list[JsonDict]]:
    """Our containers and their volumes. Start order: HAProxy, Varnish, then the optional
    readers of Varnish's workdir: started once varnishd runs (its startupProbe), varnishncsa
    attaches at once; started before it, it re-attached up to seconds after the child was
    up and missed the first requests (e2e scenario 19). They stop first, after a preStop
    sleep as long as Varnish's drain.

    Memoized per (options, policy): the dicts are shared between reviews, so callers treat
    them as read-only (the CLI copies a patch before applying it to a document).
    """
    key = (options, policy.digest)
    built = _BUILT.get(key)
    if built is None:
        containers = [build_haproxy(options, policy), build_varnish(options, policy)]
        if options.access_log:
            containers.append(build_access_log(options, policy))
        if options.metrics:
            containers.append(build_exporter(options, policy))
        # Every container we add, whatever else the options add.
        containers = [no_api_token(container) for container in containers]
        if policy.model.native_sidecars:
            containers = [native(container) for container in containers]
        built = _BUILT.put(key, (containers, build_volumes(options)))
    return built


def user_declared(pod_spec: Mapping[str, Any]) -> dict[str, tuple[str, int, Mapping[str, Any]]]:
    """Our container names the user already declared: name -> (group, index, container)."""
    found: dict[str, tuple[str, int, Mapping[str, Any]]] = {}
    for group in ("initContainers", "containers"):
        items: Sequence[Any] = pod_spec.get(group) or []
        for index, container in enumerate(items):
            if isinstance(container, dict) and container.get("name") in names.CONTAINERS:
                found[container["name"]] = (group, index, container)
    return found
