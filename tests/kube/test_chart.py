"""The chart against a real API server: every supported value set is accepted (server-side dry
run, with and without the custom resources' CRDs), upgrades keep the generated CA and the
sticky-session secret, `helm test` passes on the node, and `helm uninstall` leaves nothing.

The models (tests/chart) validate each object against schemas; only the API server knows
what it really refuses (namespaces that do not exist, kinds it does not serve, admission),
so these tests run on a cluster of their own: they install, upgrade and uninstall releases.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from kubernetes import client

from tests.chart.chart import VALUE_SETS, chart, parse_manifests
from tests.daemons import missing
from tests.e2e.conftest import host_problem
from tests.kube import crds
from tests.kube.cluster import CHART, LOCAL_VALUES, Cluster, merge
from tests.kube.conftest import Kubectl, wait_for
from tests.kube.serviceproxy import ServiceProxy
from webhook.serve import certs

DRY_RELEASE, DRY_NAMESPACE = "ci", "chart-dry-run"
# grafanaDashboard's namespace in VALUE_SETS["cache-monitoring"]: Grafana's, which exists
# before the chart is installed (the chart does not create it).
DASHBOARD_NAMESPACE = "monitoring"
INSTANCE = "app.kubernetes.io/instance"
# The chart's pods claim the restricted Pod Security profile: the dry-run namespace enforces
# it on Pods and warns about it on workloads' templates (a warning fails assert_accepted).
RESTRICTED = {
    f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")
}
HELM_TIMEOUT = 180

# The combinations tests/chart treats as supported besides VALUE_SETS: the audit CronJob with
# its ClusterRole (test_audit_cronjob), a named revision (test_revisions), the NetworkPolicy
# (test_fleet) and regular sidecars for Kubernetes 1.28/1.29 (test_kube_versions).
EXTRA_VALUE_SETS: dict[str, dict[str, Any]] = {
    "audit-restart-canary": {"audit": {"enabled": True, "restart": True}, "revision": "canary"},
    "network-policy": {
        "networkPolicy": {
            "enabled": True,
            "from": [{"ipBlock": {"cidr": "fd00:10:244::/64"}}],
            "metricsFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
            ],
        },
        "serviceMonitor": {"enabled": True},
    },
    "regular-sidecars": {"policy": {"nativeSidecars": False}},
}
SUPPORTED = {**VALUE_SETS, **EXTRA_VALUE_SETS}
# Every optional object at once, runnable on the one node: what uninstall must clean up.
KITCHEN_SINK: dict[str, Any] = merge(
    VALUE_SETS["cache-monitoring"],
    {
        "replicaCount": 1,
        "serviceMonitor": {"enabled": True},
        "audit": {"enabled": True, "restart": True},
        "networkPolicy": EXTRA_VALUE_SETS["network-policy"]["networkPolicy"],
    },
)


def render(values: Mapping[str, Any], release: str, namespace: str) -> list[dict[str, Any]]:
    """The chart's objects as `helm template` renders them (NOTES.txt apart)."""
    files = chart().render(copy.deepcopy(dict(values)), name=release, namespace=namespace)
    return parse_manifests(files).objects


def custom_kinds(objects: list[dict[str, Any]]) -> set[str]:
    served_by_crds = {kind.kind for kind in crds.ALL}
    return {obj["kind"] for obj in objects if obj["kind"] in served_by_crds}


class OwnKubectl(Kubectl):
    """kubectl with a discovery cache of this module's own: CRDs come and go here."""

    def __init__(self, cluster: Cluster, cache: Path) -> None:
        super().__init__(cluster)
        self.cache = cache

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> Any:
        return super().__call__(
            f"--cache-dir={self.cache}", *args, input=input, check=check, timeout=timeout
        )


class Kube:
    """This module's cluster, its kubectl, and the CRDs' presence."""

    def __init__(self, cluster: Cluster, kubectl: OwnKubectl) -> None:
        self.cluster = cluster
        self.kubectl = kubectl

    @contextlib.contextmanager
    def helm(self, namespace: str) -> Iterator[helm_python.Config]:
        config = self.cluster.helm(namespace)
        try:
            yield config
        finally:
            config.close()

    def namespace(self, name: str, labels: Mapping[str, str] | None = None) -> str:
        with contextlib.suppress(client.exceptions.ApiException):
            meta = client.V1ObjectMeta(name=name, labels=dict(labels or {}))
            body = client.V1Namespace(metadata=meta)
            self.cluster.core.create_namespace(body)
        self.cluster.wait_service_account(name)
        return name

    def served(self) -> set[str]:
        """The custom kinds that discovery lists."""
        listed = self.kubectl("api-resources", "-o", "name").stdout.split()
        return {kind.kind for kind in crds.ALL if kind.name in listed}

    def install_crds(self) -> None:
        documents = "---\n".join(yaml.safe_dump(crds.definition(kind)) for kind in crds.ALL)
        self.kubectl(
            "apply", "--server-side", "--field-manager=chart-tests", "-f", "-", input=documents
        )
        names = [f"crd/{kind.name}" for kind in crds.ALL]
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
        wait_for("CRDs in discovery", lambda: self.served() == {k.kind for k in crds.ALL})

    def remove_crds(self) -> None:
        names = [f"crd/{kind.name}" for kind in crds.ALL]
        self.kubectl("delete", "--ignore-not-found", "--wait=true", *names)
        wait_for("CRDs gone from discovery", lambda: not self.served(), timeout=60)


@pytest.fixture(scope="module")
def kube() -> Iterator[Kube]:
    """A cluster for this module alone (it installs and removes CRDs and releases)."""
    problem = host_problem()
    if problem:
        missing(problem)
    with Cluster() as cluster, tempfile.TemporaryDirectory(prefix="kubectl-cache-") as cache:
        assert cluster.api is not None and cluster.network is not None
        # The `helm test` Pod calls the webhook by its Service's ClusterIP.
        proxy = ServiceProxy(cluster.api, cluster.network).start()
        try:
            own = Kube(cluster, OwnKubectl(cluster, Path(cache)))
            own.namespace(DRY_NAMESPACE, RESTRICTED)
            own.namespace(DASHBOARD_NAMESPACE)
            yield own
        finally:
            proxy.close()


@pytest.fixture
def without_crds(kube: Kube) -> Kube:
    """The cluster as before prometheus-operator or cert-manager is installed."""
    if kube.served():
        kube.remove_crds()
    return kube


@pytest.fixture
def with_crds(kube: Kube) -> Kube:
    """The cluster with every CRD the chart's custom resources need (crds.ALL)."""
    if kube.served() != {kind.kind for kind in crds.ALL}:
        kube.install_crds()
    return kube


def server_dry_run(kube: Kube, objects: list[dict[str, Any]]) -> Any:
    """`kubectl apply --dry-run=server` of the objects (strict field validation)."""
    text = "---\n".join(yaml.safe_dump(obj) for obj in objects)
    return kube.kubectl("apply", "--dry-run=server", "-f", "-", input=text, check=False)


def assert_accepted(kube: Kube, objects: list[dict[str, Any]]) -> None:
    done = server_dry_run(kube, objects)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    accepted = [line for line in done.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(objects), done.stdout


value_sets = pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in SUPPORTED])


# --- every value set, server-side dry run ------------------------------------------------


@value_sets
def test_without_crds_only_sets_with_custom_resources_fail(without_crds: Kube, name: str) -> None:
    """With no CRDs, a set without custom resources is accepted whole; one with them fails
    before anything is created, naming each missing kind and what to do."""
    kube = without_crds
    values = merge(LOCAL_VALUES, SUPPORTED[name])
    objects = render(values, DRY_RELEASE, DRY_NAMESPACE)
    needed = custom_kinds(objects)
    with kube.helm(DRY_NAMESPACE) as helm:
        if not needed:
            assert_accepted(kube, objects)
            release = helm.install(
                str(CHART), DRY_RELEASE, values, namespace=DRY_NAMESPACE, dry_run="server"
            )
            assert release["manifest"]
            return
        with pytest.raises(helm_python.HelmReleaseError) as refused:
            helm.install(str(CHART), DRY_RELEASE, values, namespace=DRY_NAMESPACE, dry_run="server")
    message = str(refused.value)
    assert "ensure CRDs are installed first" in message
    for kind in needed:
        assert f'no matches for kind "{kind}"' in message, message
    done = server_dry_run(kube, objects)
    assert done.returncode != 0
    for kind in needed:
        assert f'no matches for kind "{kind}"' in done.stderr
    assert not kube.cluster.core.list_namespaced_secret(DRY_NAMESPACE).items


def test_crds_are_served_and_validate(with_crds: Kube) -> None:
    """The CRDs are structural and enforced: a wrong enum value and an unknown field (the
    typo the chart tests guard against) are refused, as upstream's CRDs refuse them."""
    kube = with_crds
    monitor: dict[str, Any] = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "probe", "namespace": DRY_NAMESPACE},
        "spec": {"selector": {}, "endpoints": [{"port": "https", "scheme": "https"}]},
    }
    assert_accepted(kube, [monitor])
    bad_scheme = copy.deepcopy(monitor)
    bad_scheme["spec"]["endpoints"][0]["scheme"] = "gopher"
    done = server_dry_run(kube, [bad_scheme])
    assert done.returncode != 0 and "gopher" in done.stderr, done.stderr
    certificate = {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "probe", "namespace": DRY_NAMESPACE},
        "spec": {"secretName": "x", "issuerRef": {"name": "i"}, "dnsName": ["a"]},
    }
    done = server_dry_run(kube, [certificate])
    assert done.returncode != 0 and 'unknown field "spec.dnsName"' in done.stderr, done.stderr


def template_pods(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A Pod from each workload's template (Deployment, CronJob): the dry run of a workload
    does not admit its pods (the ServiceAccount, PriorityClass and Pod Security checks)."""
    pods = []
    for obj in objects:
        if obj["kind"] == "Deployment":
            template = obj["spec"]["template"]
        elif obj["kind"] == "CronJob":
            template = obj["spec"]["jobTemplate"]["spec"]["template"]
        else:
            continue
        meta = obj["metadata"]
        pod_meta = {**template.get("metadata", {}), "name": f"{meta['name']}-pod"}
        pod_meta["namespace"] = meta["namespace"]
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, **template})
        pods[-1]["metadata"] = pod_meta
    return pods


@value_sets
def test_with_crds_every_object_is_accepted(with_crds: Kube, name: str) -> None:
    """Every object, and a Pod of each workload, in a namespace enforcing `restricted`."""
    kube = with_crds
    values = merge(LOCAL_VALUES, SUPPORTED[name])
    objects = render(values, DRY_RELEASE, DRY_NAMESPACE)
    assert_accepted(kube, objects)
    # A Pod is admitted only with its ServiceAccount stored: these are, for the moment.
    accounts = [obj for obj in objects if obj["kind"] == "ServiceAccount"]
    text = "---\n".join(yaml.safe_dump(obj) for obj in accounts)
    if accounts:
        kube.kubectl("apply", "-f", "-", input=text)
    try:
        assert_accepted(kube, template_pods(objects))
    finally:
        if accounts:
            kube.kubectl("delete", "--wait=true", "-f", "-", input=text)
    with kube.helm(DRY_NAMESPACE) as helm:
        release = helm.install(
            str(CHART), DRY_RELEASE, values, namespace=DRY_NAMESPACE, dry_run="server"
        )
    assert release["manifest"]


def test_dashboard_namespace_must_exist(with_crds: Kube) -> None:
    """The dashboard goes to Grafana's namespace, which the chart does not create: the API
    server refuses the install while it does not exist."""
    values = merge(
        LOCAL_VALUES,
        {"cacheMonitoring": {"grafanaDashboard": {"enabled": True, "namespace": "no-grafana"}}},
    )
    done = server_dry_run(with_crds, render(values, DRY_RELEASE, DRY_NAMESPACE))
    assert done.returncode != 0
    assert 'namespaces "no-grafana" not found' in done.stderr, done.stderr


# --- install, upgrade, test, uninstall ---------------------------------------------------


def secret_data(kube: Kube, namespace: str, name: str) -> dict[str, str]:
    data = kube.cluster.core.read_namespaced_secret(name, namespace).data or {}
    return {key: str(value) for key, value in data.items()}


def ca_bundles(kube: Kube, name: str) -> set[str]:
    configuration = kube.kubectl.json("get", "mutatingwebhookconfiguration", name)
    return {str(w["clientConfig"].get("caBundle")) for w in configuration["webhooks"]}


def hook_log(kube: Kube, namespace: str, release: str) -> str:
    """What the test Pod printed, read from the node (which serves no `kubectl logs`)."""
    assert kube.cluster.node is not None
    runner = kube.cluster.node.runner(namespace, f"{release}-cache-injector-test")
    return runner.log("test") if runner is not None else "(the node ran no test Pod)"


def helm_test(kube: Kube, namespace: str, release: str) -> None:
    """`helm test`: the hook Pod runs on the node and must exit 0 (its script exits non-zero
    unless /readyz answered 200 and /mutate allowed the review with its uid echoed). No
    logs=True: Helm reads them from the kubelet's port, which the node does not serve."""
    with kube.helm(namespace) as helm:
        try:
            helm.test(release, timeout=HELM_TIMEOUT)
        except helm_python.HelmReleaseError as err:
            raise AssertionError(f"helm test: {err}\n{hook_log(kube, namespace, release)}") from err


def deploy(
    kube: Kube, release: str, namespace: str, values: Mapping[str, Any], *, wait: bool
) -> None:
    """`helm install` or, when the release exists, `helm upgrade` with exactly these values."""
    merged = merge(LOCAL_VALUES, values)
    options: dict[str, Any] = {"timeout": HELM_TIMEOUT, "namespace": namespace}
    if wait:
        options["wait"] = "watcher"
    with kube.helm(namespace) as helm:
        if any(r["name"] == release for r in helm.list()):
            helm.upgrade(str(CHART), release, merged, **options)
        else:
            helm.install(str(CHART), release, merged, create_namespace=True, **options)


# (value set, wait for the webhook pods): everything-on cannot become ready on one node (three
# replicas with hard anti-affinity, an unknown --some-flag), so it is only applied.
UPGRADES = [("everything-on", False), ("cache-monitoring", True), ("minimal", True)]


def test_upgrades_keep_the_ca_and_the_sticky_secret(with_crds: Kube) -> None:
    """Install the defaults, upgrade through other value sets and back: the CA, serving
    certificate and sticky-session secret generated at install are the ones kept (lookup),
    the caBundle always matches, and `helm test` passes before and after."""
    kube = with_crds
    release, namespace = "lc", "chart-lifecycle"
    fullname = f"{release}-cache-injector"
    deploy(kube, release, namespace, {}, wait=True)
    tls = secret_data(kube, namespace, f"{fullname}-tls")
    sticky = secret_data(kube, namespace, f"{fullname}-sticky-session")
    assert set(tls) == {"tls.crt", "tls.key", "ca.crt"} and sticky["secret"]
    assert ca_bundles(kube, fullname) == {tls["ca.crt"]}
    helm_test(kube, namespace, release)
    for name, wait in [*UPGRADES, ("defaults", True)]:
        deploy(kube, release, namespace, VALUE_SETS[name], wait=wait)
        assert secret_data(kube, namespace, f"{fullname}-tls") == tls, name
        assert secret_data(kube, namespace, f"{fullname}-sticky-session") == sticky, name
        assert ca_bundles(kube, fullname) == {tls["ca.crt"]}, name
    with kube.helm(namespace) as helm:
        assert len(helm.history(release)) == len(UPGRADES) + 2
    helm_test(kube, namespace, release)
    with kube.helm(namespace) as helm:
        helm.uninstall(release, wait="watcher", timeout=HELM_TIMEOUT)


def leftovers(kube: Kube, release: str, namespace: str, fullname: str) -> list[str]:
    """Everything of the release the API server still lists: objects of every listable kind
    (namespaced in every namespace, and cluster-scoped) with its instance label or its name
    prefix, and Helm's own release records."""
    listable = kube.kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    # Events about the release's objects outlive them by design (the API server's TTL).
    kinds = [kind for kind in listable if kind.partition(".")[0] != "events"]
    found = kube.kubectl.json("get", ",".join(kinds), "--all-namespaces")["items"]
    left = []
    for obj in found:
        meta = obj["metadata"]
        labels = meta.get("labels") or {}
        ours = labels.get(INSTANCE) == release or meta["name"].startswith(fullname)
        helm_record = labels.get("owner") == "helm" and labels.get("name") == release
        if ours or helm_record:
            left.append(f"{obj['kind']}/{meta.get('namespace', '')}/{meta['name']}")
    return left


def assert_gone(
    kube: Kube, release: str, namespace: str, fullname: str, *, but: frozenset[str] = frozenset()
) -> None:
    """Within two minutes (pods terminate with their grace, the garbage collector removes
    ReplicaSets and EndpointSlices) nothing of the release is left but `but`."""
    left: list[str] = []

    def gone() -> bool:
        left[:] = leftovers(kube, release, namespace, fullname)
        return set(left) <= but

    try:
        wait_for(f"nothing of {release} left", gone, timeout=120, interval=2)
    except AssertionError:
        raise AssertionError(f"left after helm uninstall: {left}") from None


UNINSTALLS = {
    "kitchen-sink": (KITCHEN_SINK, True),
    # The certificates are never issued (no cert-manager here), nor my-tls provided: the
    # pods cannot start, but every object is created and must go.
    "cert-manager-own-ca": (VALUE_SETS["cert-manager-own-ca"], False),
    "existing-secret": (VALUE_SETS["existing-secret"], False),
}


@pytest.mark.parametrize("name", list(UNINSTALLS))
def test_uninstall_leaves_nothing(with_crds: Kube, name: str) -> None:
    kube = with_crds
    values, runnable = UNINSTALLS[name]
    release, namespace = f"un-{name[:8].strip('-')}", f"chart-un-{name}"
    fullname = f"{release}-cache-injector"
    deploy(kube, release, namespace, values, wait=runnable)
    created = leftovers(kube, release, namespace, fullname)
    expected = {
        f"{obj['kind']}/{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"
        for obj in render(merge(LOCAL_VALUES, values), release, namespace)
        if obj["kind"] != "Pod"  # the test hook, created only by `helm test`
    }
    assert expected <= set(created), expected - set(created)
    if runnable:
        helm_test(kube, namespace, release)
    with kube.helm(namespace) as helm:
        helm.uninstall(release, wait="watcher", timeout=HELM_TIMEOUT)
    assert_gone(kube, release, namespace, fullname)


def test_server_dry_run_of_helm_does_not_validate_objects(with_crds: Kube) -> None:
    """Helm's dry_run="server" only renders with lookup: an object the API server refuses (a
    dashboard for a namespace that does not exist) passes it, and the real install then
    fails half-way, after creating the objects before it. kubectl's server dry run (what the
    tests above use) refuses it up front."""
    kube = with_crds
    release, namespace = "half", kube.namespace("chart-half")
    values = merge(
        LOCAL_VALUES,
        {"cacheMonitoring": {"grafanaDashboard": {"enabled": True, "namespace": "no-grafana"}}},
    )
    with kube.helm(namespace) as helm:
        assert helm.install(str(CHART), release, values, namespace=namespace, dry_run="server")
        with pytest.raises(helm_python.HelmReleaseError, match='namespaces "no-grafana" not found'):
            helm.install(str(CHART), release, values, namespace=namespace, timeout=HELM_TIMEOUT)
        (stored,) = helm.history(release)
        assert stored["status"] == "failed"
        helm.uninstall(release, wait="watcher", timeout=HELM_TIMEOUT)
    fullname = f"{release}-cache-injector"
    assert_gone(kube, release, namespace, fullname)


def serving_certificate(dns_names: list[str]) -> tuple[str, str, str]:
    """(CA, certificate, key) PEMs: a CA of its own and a serving certificate it signed, by
    the code of `cache-injector certs generate`."""
    authority = certs.new_authority("chart-tests-ca", days=1)
    cert, key = certs.issue_serving(authority, common_name=dns_names[0], hosts=dns_names, days=1)
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return (
        authority.certificate.public_bytes(pem).decode(),
        cert.public_bytes(pem).decode(),
        key_pem,
    )


def test_helm_test_with_existing_certificates_and_a_wrong_ca(with_crds: Kube) -> None:
    """certs.mode=existing: the hook trusts the CA of certs.existing.caBundle (its own
    ConfigMap), so it passes with the CA that signed the Secret and fails with another one:
    the hook really verifies TLS, and would catch a wrong caBundle before the API server's
    calls fail (silently, with failurePolicy Ignore)."""
    kube = with_crds
    release, namespace = "ex", kube.namespace("chart-existing")
    service = f"{release}-cache-injector"
    ca, cert, key = serving_certificate(
        [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]
    )
    kube.cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="my-tls"),
            type="kubernetes.io/tls",
            string_data={"tls.crt": cert, "tls.key": key},
        ),
    )

    def values(bundle: str) -> dict[str, Any]:
        existing = {"secretName": "my-tls", "caBundle": bundle}
        return {"replicaCount": 1, "certs": {"mode": "existing", "existing": existing}}

    deploy(kube, release, namespace, values(b64(ca)), wait=True)
    assert ca_bundles(kube, service) == {b64(ca)}
    helm_test(kube, namespace, release)
    other_ca = serving_certificate(["other"])[0]
    deploy(kube, release, namespace, values(b64(other_ca)), wait=True)
    assert ca_bundles(kube, service) == {b64(other_ca)}
    with pytest.raises(AssertionError, match="CERTIFICATE_VERIFY_FAILED"):
        helm_test(kube, namespace, release)
    with kube.helm(namespace) as helm:
        helm.uninstall(release, wait="watcher", timeout=HELM_TIMEOUT)
    # The failed hook Pod is kept for `kubectl logs` (hook-delete-policy without
    # hook-failed; the next `helm test` replaces it), and `helm uninstall` leaves it too.
    hook = f"{service}-test"
    assert_gone(kube, release, namespace, service, but=frozenset({f"Pod/{namespace}/{hook}"}))
    status = kube.cluster.core.read_namespaced_pod(hook, namespace).status
    assert status is not None and status.phase == "Failed"
    kube.cluster.core.delete_namespaced_pod(hook, namespace)
    assert_gone(kube, release, namespace, service)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_the_dry_run_namespace_enforces_restricted(with_crds: Kube) -> None:
    """The Pod Security check above can fail: the webhook's Pod with its hardening undone
    (allowPrivilegeEscalation) is refused in the dry-run namespace."""
    objects = render(
        merge(LOCAL_VALUES, {"serviceAccount": {"create": False}}), "ci", DRY_NAMESPACE
    )
    (pod,) = template_pods(objects)
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    done = server_dry_run(with_crds, [pod])
    assert done.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in done.stderr, done.stderr
