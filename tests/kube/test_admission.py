"""Admission on a real API server, oldest and newest release served: pods made by the real
controllers (generateName, namespace only in the request) through Pod Security `restricted`,
in both sidecar modes (the default release native; a second release, revision `legacy`, with
nativeSidecars false); what must stay untouched and which release picks a pod; dry-run,
re-apply, label updates, `kubectl debug` (ephemeral containers, copies) and evictions; a
mesh-like webhook called before and after ours; the stored pod holding every field the
webhook sent; and Windows pods, which the server refuses with our Linux sidecars."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from kubernetes import client

from tests.daemons import missing
from tests.e2e.conftest import host_problem
from tests.kube.binaries import NEWEST, OLDEST, binaries
from tests.kube.cluster import RELEASE_NAMESPACE, Cluster
from tests.kube.conftest import Kubectl, runs_pod, wait_for
from tests.kube.workloads import (
    KINDS,
    Namespaces,
    Sidecars,
    chart_release,
    create,
    injection_problem,
    job_from_cronjob,
    pods,
    raw,
    restricted_template,
    top_owners,
    untouched_problem,
    wait_pods,
    workload,
)
from webhook.engine import names

LEGACY = "ci-legacy"  # the second release: revision "legacy", sidecars appended
# Also: a default backend (pods need no annotation), and no matchConditions, so the server
# itself sees reinvocations and already-injected pods.
LEGACY_VALUES: dict[str, Any] = {
    "revision": "legacy",
    "replicaCount": 1,
    "policy": {"nativeSidecars": False, "defaults": {"backend": "app:8080"}},
    "webhook": {"matchConditions": False},
}
# How a namespace picks each mode: the default revision (native) or the legacy release.
MODE_LABELS = {
    "native": {names.LABEL_INJECT: names.LABEL_ENABLED},
    "appended": {names.LABEL_REV: "legacy"},
}
NOWHERE = {"cache-injector-test/node": "none"}  # a nodeSelector no node has: never run


@dataclass
class Env:
    """One release's cluster with both chart releases, and a namespace factory for it."""

    cluster: Cluster
    release: str
    namespaces: Namespaces


@pytest.fixture(scope="module", params=[NEWEST, OLDEST])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """NEWEST: the session cluster; OLDEST: a cluster of this module's own (one, torn down
    before the session ends). Each gets the legacy release beside the default one."""
    with contextlib.ExitStack() as stack:
        if request.param == NEWEST:
            cluster: Cluster = request.getfixturevalue("cluster")
        else:
            problem = host_problem()
            if problem:
                missing(problem)
            old = Cluster(kube=binaries(OLDEST), runs=runs_pod)
            cluster = stack.enter_context(old)
            cluster.install_chart({"replicaCount": 1})
        stack.enter_context(chart_release(cluster, LEGACY, LEGACY_VALUES))
        spaces = Namespaces(cluster)
        stack.callback(spaces.close)
        yield Env(cluster, request.param, spaces)


# -- 1 and 2: every workload kind, both releases, both modes -------------------------------------


@pytest.mark.parametrize("mode", ["native", "appended"])
def test_controller_pods_injected_once(env: Env, mode: str) -> None:
    """Each controller's pods reach the webhook without a name and must come out with both
    sidecars once, in the mode of the release that selects the namespace; Pod Security
    `restricted` then judges the injected pod. Appended mode leaves Job pods alone (a regular
    sidecar would keep the Job from completing: docs/policy.md)."""
    cluster = env.cluster
    version = client.VersionApi(cluster.api).get_code().git_version
    assert version.startswith(f"{env.release}."), version
    native = mode == "native"
    ns = env.namespaces.make(f"adm-{mode}", MODE_LABELS[mode])
    for kind in KINDS:
        create(cluster, ns, workload(kind, kind.lower()))
    job_from_cronjob(cluster, ns, "cronjob", "cronjob-manual")
    # No labels, no annotations: the patch must create both maps. Only the legacy release
    # has a default backend; the default release skips a pod without one (onMissingBackend).
    bare = workload("Pod", "minimal")
    bare["metadata"] = {"name": "minimal"}
    minimal = create(cluster, ns, bare)
    assert (untouched_problem(minimal) if native else injection_problem(minimal, False)) is None

    def every_kind() -> dict[str, tuple[str, str]] | None:
        owners = top_owners(cluster, ns)
        return owners if {k for k, _ in owners.values()} >= set(KINDS) else None

    owners = wait_for(f"{ns}: a pod of every kind", every_kind, timeout=60)
    stored = {p["metadata"]["name"]: p for p in pods(cluster, ns)}
    counts: dict[str, int] = {}
    problems = []
    for name, (kind, _) in owners.items():
        if name == "minimal":
            continue
        counts[kind] = counts.get(kind, 0) + 1
        pod = stored[name]
        if kind != "Pod" and not pod["metadata"].get("generateName"):
            problems.append(f"{name}: the {kind} controller gave no generateName")
        job = kind in ("Job", "CronJob")
        problem = untouched_problem(pod) if job and not native else injection_problem(pod, native)
        if problem:
            problems.append(f"{kind}: {problem}")
    assert counts == dict.fromkeys(KINDS, 1), counts
    assert not problems, "\n".join(problems)


def _nowhere_pod(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    template = restricted_template(name, labels=labels)
    spec = {**template["spec"], "nodeSelector": dict(NOWHERE)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **template["metadata"]},
        "spec": spec,
    }


def test_unselected_pods_untouched(env: Env) -> None:
    """No injection where neither release may inject: an unlabelled namespace (pods and a
    Deployment's), the opt-out pod label in namespaces of both modes, kube-system and both
    releases' own namespaces (selected by a pod label or their revision's namespace label:
    excluded by name)."""
    cluster = env.cluster
    plain = env.namespaces.make("adm-plain")
    create(cluster, plain, workload("Deployment", "web"))
    create(cluster, plain, workload("Pod", "bare"))
    optout = {names.LABEL_INJECT: names.LABEL_DISABLED}
    places = [plain]
    for mode, labels in MODE_LABELS.items():
        ns = env.namespaces.make(f"adm-optout-{mode}", labels)
        create(cluster, ns, workload("Pod", "optout", labels=optout))
        create(cluster, ns, workload("Deployment", "optout", labels=optout))
        places.append(ns)
    enabled = {names.LABEL_INJECT: names.LABEL_ENABLED}
    system = [("kube-system", "adm-system"), (RELEASE_NAMESPACE, "adm-own"), (LEGACY, "adm-own")]
    # The legacy release's namespace labelled for its own revision (its webhook entry
    # excludes it by name): the default revision's pod-label entry would inject a pod
    # labelled enabled there, as in any namespace not its own.
    revision = {names.LABEL_REV: "legacy"}
    cluster.core.patch_namespace(LEGACY, {"metadata": {"labels": revision}})
    try:
        for ns, name in system:
            create(cluster, ns, _nowhere_pod(name, labels=None if ns == LEGACY else enabled))
        checked = [cluster.core.read_namespaced_pod(name, ns) for ns, name in system]
        problems = [untouched_problem(raw(cluster, p)) for p in checked]
        expected = {plain: 2, places[1]: 2, places[2]: 2}
        for ns, count in expected.items():
            problems += [untouched_problem(p) for p in wait_pods(cluster, ns, count)]
    finally:
        for ns, name in system:
            with contextlib.suppress(client.exceptions.ApiException):
                cluster.core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
        cluster.core.patch_namespace(LEGACY, {"metadata": {"labels": {names.LABEL_REV: None}}})
    assert [p for p in problems if p] == []


# -- 4: dry-run, label updates, ephemeral containers, eviction (newest release, native) ----------


def test_server_dry_run_answers_injected(
    cluster: Cluster, kubectl: Kubectl, namespace: Any
) -> None:
    """`kubectl apply --dry-run=server` reaches the webhook (sideEffects None allows it) and
    answers the injected pod, which is not stored."""
    ns = namespace("adm-dry")
    pod = workload("Pod", "dry")
    done = kubectl(
        "apply", "--dry-run=server", "-n", ns, "-o", "json", "-f", "-", input=json.dumps(pod)
    )
    answered = json.loads(done.stdout)
    assert injection_problem(answered, native=True) is None, answered["spec"]
    with pytest.raises(client.exceptions.ApiException) as gone:
        cluster.core.read_namespaced_pod("dry", ns)
    assert gone.value.status == 404


def _running_template() -> dict[str, Any]:
    template = restricted_template("running")
    template["spec"]["containers"][0].update(
        image="python:3.11", command=["python3", "-m", "http.server", "8080"]
    )
    return template


@pytest.fixture(scope="module")
def running(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """A Deployment's pod running on the node (sidecars and all): (namespace, pod name)."""
    spaces = Namespaces(cluster)
    try:
        ns = spaces.make("adm-run", MODE_LABELS["native"], run=True)
        deployment = workload("Deployment", "running")
        deployment["spec"]["template"] = _running_template()
        create(cluster, ns, deployment)
        yield ns, _ready_pod(cluster, ns)
    finally:
        spaces.close()


def _ready_pod(cluster: Cluster, ns: str, other_than: str = "") -> str:
    def ready() -> str | None:
        for pod in pods(cluster, ns):
            meta = pod["metadata"]
            conditions = (pod.get("status") or {}).get("conditions") or []
            if (
                meta["name"] != other_than
                and not meta.get("deletionTimestamp")
                and any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
            ):
                return str(meta["name"])
        return None

    name: str = wait_for(f"{ns}: a ready pod", ready, timeout=90)
    return name


def _stored(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = raw(cluster, cluster.core.read_namespaced_pod(name, ns))
    return pod


def test_label_updates_keep_the_injection(
    cluster: Cluster, kubectl: Kubectl, running: tuple[str, str]
) -> None:
    """Relabelling a running pod (even with the opt-out label) is an UPDATE: it succeeds, and
    neither removes nor repeats anything."""
    ns, name = running
    before = _stored(cluster, ns, name)
    kubectl("label", "-n", ns, "pod", name, "team=cache")
    kubectl("label", "-n", ns, "pod", name, f"{names.LABEL_INJECT}=disabled", "--overwrite")
    after = _stored(cluster, ns, name)
    assert after["metadata"]["labels"]["team"] == "cache"
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["metadata"]["annotations"] == before["metadata"]["annotations"]
    assert after["spec"]["initContainers"] == before["spec"]["initContainers"]
    assert injection_problem(after, native=True) is None


def debug(
    kubectl: Kubectl, ns: str, name: str, *, profile: str, container: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`kubectl debug` adding an ephemeral container aimed at the pod's app (no -it)."""
    return kubectl(
        "debug", "-n", ns, name, "--image=busybox", "--target=app",
        f"--profile={profile}", f"--container={container}", check=check,
    )  # fmt: skip


def test_debug_ephemeral_container(
    cluster: Cluster, kubectl: Kubectl, running: tuple[str, str]
) -> None:
    """`kubectl debug --target` patches only the ephemeralcontainers subresource: the
    webhook (pod CREATE only) is not involved, and Pod Security judges the debug container
    (profile restricted, as the namespace enforces)."""
    ns, name = running
    before = _stored(cluster, ns, name)
    done = debug(kubectl, ns, name, profile="restricted", container="debugger")
    assert done.returncode == 0
    after = _stored(cluster, ns, name)
    ephemeral = [c["name"] for c in after["spec"].get("ephemeralContainers") or []]
    assert ephemeral == ["debugger"]
    assert after["metadata"]["annotations"] == before["metadata"]["annotations"]
    assert injection_problem(after, native=True) is None


def test_debug_general_profile_refused_by_pod_security(
    kubectl: Kubectl, running: tuple[str, str]
) -> None:
    """The default debug profile's container is not `restricted`: Pod Security refuses the
    subresource update, and the error names the container, not ours."""
    ns, name = running
    done = debug(kubectl, ns, name, profile="general", container="general", check=False)
    assert done.returncode != 0
    assert "restricted" in done.stderr and "cache-" not in done.stderr, done.stderr


def test_eviction(cluster: Cluster, running: tuple[str, str]) -> None:
    """A policy/v1 Eviction of an injected pod: accepted, the pod terminates with its
    annotations as they were, and the ReplicaSet's replacement is injected once."""
    ns, name = running
    before = _stored(cluster, ns, name)
    eviction = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=ns))
    cluster.core.create_namespaced_pod_eviction(name, ns, eviction)
    with contextlib.suppress(client.exceptions.ApiException):
        evicted = _stored(cluster, ns, name)
        assert evicted["metadata"]["annotations"] == before["metadata"]["annotations"]
    wait_for(
        f"{ns}/{name} gone",
        lambda: name not in [p["metadata"]["name"] for p in pods(cluster, ns)],
        timeout=90,
    )
    replacement = _ready_pod(cluster, ns, other_than=name)
    assert injection_problem(_stored(cluster, ns, replacement), native=True) is None


# -- 5: a mesh-like webhook before and after ours ------------------------------------------------

MESH_SCRIPT = Path(__file__).with_name("mesh_webhook.py")
MESH_LABEL = "cluster-suite.cache-injector.io/mesh"


@dataclass
class Mesh:
    namespace: str
    ca_bundle: str


@pytest.fixture(scope="module")
def mesh(env: Env) -> Mesh:
    """The mesh webhook as a pod on the node behind a Service, serving a certificate of a
    test CA for the Service's name (removed with the env's namespaces)."""
    cluster = env.cluster
    ns = env.namespaces.make("mesh", run=True, enforce=None)
    ca = trustme.CA()
    cert = ca.issue_cert(f"mesh.{ns}.svc")
    key = cert.private_key_pem.bytes().decode()
    crt = b"".join(p.bytes() for p in cert.cert_chain_pems).decode()
    secret = {"metadata": {"name": "mesh-tls"}, "stringData": {"tls.crt": crt, "tls.key": key}}
    create(cluster, ns, {"apiVersion": "v1", "kind": "Secret", **secret})
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "mesh", "labels": {"app": "mesh"}},
        "spec": {
            "containers": [
                {
                    "name": "mesh",
                    "image": "python:3.11",
                    "command": [
                        "/usr/bin/python3",
                        str(MESH_SCRIPT),
                        "8443",
                        "/certs/tls.crt",
                        "/certs/tls.key",
                    ],
                    "ports": [{"containerPort": 8443}],
                    "readinessProbe": {"tcpSocket": {"port": 8443}, "periodSeconds": 1},
                    "volumeMounts": [{"name": "tls", "mountPath": "/certs"}],
                }
            ],
            "volumes": [{"name": "tls", "secret": {"secretName": "mesh-tls"}}],
        },
    }
    create(cluster, ns, pod)
    service = {
        "metadata": {"name": "mesh"},
        "spec": {"selector": {"app": "mesh"}, "ports": [{"port": 443, "targetPort": 8443}]},
    }
    create(cluster, ns, {"apiVersion": "v1", "kind": "Service", **service})
    _ready_pod(cluster, ns)
    return Mesh(ns, base64.b64encode(ca.cert_pem.bytes()).decode())


def _mesh_configuration(mesh: Mesh, name: str, reinvocation: str) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "inject.mesh.example",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",  # a mesh that cannot answer must fail the test
                "reinvocationPolicy": reinvocation,
                "timeoutSeconds": 10,
                "clientConfig": {
                    "service": {"namespace": mesh.namespace, "name": "mesh", "path": "/mutate"},
                    "caBundle": mesh.ca_bundle,
                },
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {MESH_LABEL: "on"}},
            }
        ],
    }


def _env_names(container: dict[str, Any]) -> list[str]:
    return [e["name"] for e in container.get("env") or []]


@pytest.mark.parametrize("reinvocation", ["IfNeeded", "Never"])
@pytest.mark.parametrize("order", ["before", "after"])
@pytest.mark.parametrize("mode", ["native", "appended"])
def test_mesh_webhook(env: Env, mesh: Mesh, mode: str, order: str, reinvocation: str) -> None:
    """Configurations are called in the order of their names ("aaa-" before our
    "cache-injector", "zzz-" after), and a webhook with reinvocationPolicy IfNeeded is
    called again when a later one changed the pod. Whatever the order: one mesh proxy, our
    sidecars once, the pod valid for the API server and Pod Security `restricted`; the
    mesh's variable reaches our sidecars exactly when the mesh ran after us. The legacy
    release has no matchConditions: its server answers its own reinvocation."""
    cluster = env.cluster
    config = _mesh_configuration(
        mesh, f"{'aaa' if order == 'before' else 'zzz'}-mesh", reinvocation
    )
    admission = client.AdmissionregistrationV1Api(cluster.api)
    create(cluster, "", config)
    try:
        ns = env.namespaces.make("mesh-app", {**MODE_LABELS[mode], MESH_LABEL: "on"})

        def meshed() -> bool:
            probe = workload("Pod", "probe")
            answered = create(cluster, ns, probe, dry_run=True)
            init = answered["spec"].get("initContainers") or []
            return any(c["name"] == "mesh-proxy" for c in init)

        wait_for("the mesh webhook in effect", meshed, timeout=30)
        create(cluster, ns, workload("Deployment", "web"))
        create(cluster, ns, workload("Pod", "bare"))
        stored = wait_for(
            f"{ns}: 2 pods", lambda: len(pods(cluster, ns)) >= 2 and pods(cluster, ns)
        )
        expect_sidecar_env = order == "after" or reinvocation == "IfNeeded"
        for pod in stored:
            assert injection_problem(pod, native=mode == "native") is None
            init = pod["spec"]["initContainers"]
            assert [c["name"] for c in init].count("mesh-proxy") == 1, init
            for container in init + pod["spec"]["containers"]:
                ours = container["name"] in names.CONTAINERS
                expected = 1 if expect_sidecar_env or not ours else 0
                count = _env_names(container).count("MESH_ENABLED")
                assert count == expected, (order, container["name"], container.get("env"))
    finally:
        admission.delete_mutating_webhook_configuration(config["metadata"]["name"])


@pytest.mark.parametrize("how", ["client-side", "server-side"])
def test_reapply_bare_pod(cluster: Cluster, kubectl: Kubectl, namespace: Any, how: str) -> None:
    """Applying the same manifest again (GitOps does, every sync) must succeed and leave the
    injection alone."""
    ns = namespace("adm-apply")
    manifest = json.dumps(workload("Pod", "applied"))
    side = ["--server-side"] if how == "server-side" else []
    kubectl("apply", *side, "-n", ns, "-f", "-", input=manifest)
    first = _stored(cluster, ns, "applied")
    again = kubectl("apply", *side, "-n", ns, "-f", "-", input=manifest, check=False)
    assert again.returncode == 0, again.stderr
    second = _stored(cluster, ns, "applied")
    assert injection_problem(second, native=True) is None
    assert second["spec"]["initContainers"] == first["spec"]["initContainers"]


# -- what the server stored is what the webhook sent ---------------------------------------------


def _missing(sent: Any, stored: Any, path: str = "") -> list[str]:
    """Where `stored` lacks or changed something of `sent` (server defaults may add)."""
    if isinstance(sent, dict) and isinstance(stored, dict):
        return [m for k, v in sent.items() for m in _missing(v, stored.get(k), f"{path}.{k}")]
    if isinstance(sent, list) and isinstance(stored, list) and len(sent) == len(stored):
        return [
            m
            for i, (a, b) in enumerate(zip(sent, stored, strict=True))
            for m in _missing(a, b, f"{path}[{i}]")
        ]
    return [] if sent == stored else [f"{path}: sent {sent!r}, stored {stored!r}"]


TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount"


def _cli(*args: str, stdin: str) -> str:
    cli = Path(sys.executable).with_name("cache-injector")
    done = subprocess.run(
        [str(cli), *args], input=stdin, capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("mode", ["native", "appended"])
def test_stored_pod_is_what_the_webhook_sent(env: Env, mode: str, tmp_path: Path) -> None:
    """The API server decodes the patched pod into its own types: a field it does not know,
    or a value it normalises, would be dropped or changed without an error. What the webhook
    sent is recomputed offline from what it was sent: the stored pod with the injection taken
    out (`uninject`: the server's own admission plugins ran before the webhook, e.g. the
    ServiceAccount token volume), injected again with the release's policy. The stored pod
    must hold every field of that as sent, and nothing of the user's may have changed."""
    cluster = env.cluster
    release_ns = RELEASE_NAMESPACE if mode == "native" else LEGACY
    maps = raw(cluster, cluster.core.list_namespaced_config_map(release_ns))["items"]
    policy = next(m for m in maps if m["metadata"]["name"].endswith("-policy"))
    (tmp_path / "policy.yaml").write_text(policy["data"]["policy.yaml"])
    ns = env.namespaces.make(f"adm-exact-{mode}", MODE_LABELS[mode])
    stored = create(cluster, ns, workload("Pod", "exact"))
    received = yaml.safe_load(_cli("uninject", "-f", "-", stdin=json.dumps(stored)))
    assert untouched_problem(received) is None
    labels = ",".join(f"{k}={v}" for k, v in MODE_LABELS[mode].items())
    revision = ["--revision", "legacy"] if mode == "appended" else []
    sent = yaml.safe_load(
        _cli("inject", "-f", "-", "--policy", str(tmp_path / "policy.yaml"), "--namespace", ns,
             "--namespace-labels", labels, *revision, stdin=json.dumps(received))
    )  # fmt: skip
    assert injection_problem(sent, native=mode == "native") is None
    assert _missing(sent["metadata"], stored["metadata"]) == []
    # The ServiceAccount admission plugin runs again after the webhooks changed the pod and
    # mounts the API token into every container without a mount at its path: ours have one
    # (an empty volume of ours), so only the app holds the token.
    at_token = {}
    for container in stored["spec"].get("initContainers", []) + stored["spec"]["containers"]:
        mounts = container.get("volumeMounts") or []
        at_token[container["name"]] = [m["name"] for m in mounts if m["mountPath"] == TOKEN]
    app_token = at_token.pop("app")
    assert len(app_token) == 1 and app_token[0].startswith("kube-api-access-"), app_token
    ours = [names.VOLUME_NO_API_TOKEN]
    assert at_token == {names.CONTAINER_HAPROXY: ours, names.CONTAINER_VARNISH: ours}
    assert _missing(sent["spec"], stored["spec"]) == []


@pytest.mark.parametrize("mode", ["native", "appended"])
def test_windows_pod(env: Env, mode: str) -> None:
    """A pod for a Windows node (spec.os.name windows) in a labelled namespace: the API
    server forbids Linux-only security fields in such a pod, and the cache daemons are Linux
    programs. It must still be created, as in a plain namespace, and left uninjected."""
    cluster = env.cluster
    pod = workload("Pod", "win")
    pod["spec"] = {
        "os": {"name": "windows"},
        "containers": [{"name": "app", "image": "mcr.microsoft.com/windows/nanoserver:ltsc2022"}],
    }
    plain = env.namespaces.make("adm-win-plain", enforce=None)
    create(cluster, plain, pod)
    ns = env.namespaces.make(f"adm-win-{mode}", MODE_LABELS[mode], enforce=None)
    try:
        stored = create(cluster, ns, pod)
    except client.exceptions.ApiException as err:
        pytest.fail(f"refused in a labelled namespace: {err.body}")
    assert untouched_problem(stored) is None


def test_revision_selection(env: Env) -> None:
    """Which release injects, by the real selectors: inject=enabled beside rev=legacy means
    the default release (and only it); a pod labelled enabled in a namespace of revision
    legacy gets the legacy release (the default's pod-label entry needs no rev label); in an
    unlabelled namespace the pod label selects the default release."""
    cluster = env.cluster
    enabled = {names.LABEL_INJECT: names.LABEL_ENABLED}
    cases = [
        ("adm-both", {**MODE_LABELS["native"], **MODE_LABELS["appended"]}, None, True),
        ("adm-rev-pod", MODE_LABELS["appended"], enabled, False),
        ("adm-pod", {}, enabled, True),
    ]
    for prefix, labels, pod_labels, native in cases:
        ns = env.namespaces.make(prefix, labels)
        stored = create(cluster, ns, workload("Pod", "picked", labels=pod_labels))
        assert injection_problem(stored, native) is None, prefix
        revision = "default" if native else "legacy"
        status = json.loads(stored["metadata"]["annotations"][names.ANNOTATION_STATUS])
        assert status["revision"] == revision, prefix


@pytest.mark.parametrize("mode", ["native", "appended"])
def test_debug_copy_of_an_injected_pod(env: Env, mode: str) -> None:
    """`kubectl debug --copy-to` creates a new pod from an injected pod's spec (kubectl
    keeps neither its labels nor annotations by default): a CREATE that already holds our
    sidecars without the status annotation. It must be created, with them once."""
    cluster = env.cluster
    ns = env.namespaces.make(f"adm-copy-{mode}", MODE_LABELS[mode])
    create(cluster, ns, workload("Pod", "original"))
    done = Kubectl(cluster)(
        "debug", "-n", ns, "original", "--copy-to=copy", "--image=busybox",
        "--container=debugger", "--profile=restricted", check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    copy = _stored(cluster, ns, "copy")
    found = Sidecars.of(copy)
    ours = found.init if mode == "native" else found.regular
    assert ours == (names.CONTAINER_HAPROXY, names.CONTAINER_VARNISH), found
