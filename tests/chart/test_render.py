"""The chart renders, lints clean and produces valid, hardened objects for every value set."""

from __future__ import annotations

import re
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest

from tests.chart.chart import (
    CHART,
    FULLNAME,
    NAMESPACE,
    VALUE_SETS,
    Rendered,
    is_custom_resource,
    render,
    validate_custom_resource,
)

# The oldest Kubernetes the default policy targets (docs/design.md: native sidecars, 1.30) and the
# newest that kubernetes-validate knows.
KUBE_VERSIONS = ("1.30.0", "1.37.0")
LINT_ERROR = 2  # helm lint severities: 1 info, 2 warning, 3 error
# The only finding accepted: the project has no icon to point Chart.yaml at.
LINT_ACCEPTED = {("Chart.yaml", "icon is recommended")}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
RBAC_KINDS = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}

value_sets = pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in VALUE_SETS])


@pytest.fixture(scope="module")
def rendered() -> dict[str, Rendered]:
    """Each value set rendered once for the whole module (rendering generates keys)."""
    return {name: render(values) for name, values in VALUE_SETS.items()}


@value_sets
def test_lint_is_clean(name: str) -> None:
    report = helm_python.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE)
    findings = {(message["path"], message["error"]) for message in report["messages"]}
    assert report["errors"] == []
    assert findings <= LINT_ACCEPTED, findings - LINT_ACCEPTED
    assert all(message["severity"] < LINT_ERROR for message in report["messages"])


def test_lint_reports_a_broken_template(tmp_path: Any) -> None:
    """The lint check above can fail: a chart with a template error is reported."""
    broken = tmp_path / "cache-injector"
    helm_python.Chart.load(CHART).save_dir(tmp_path)
    (broken / "templates" / "broken.yaml").write_text("{{ .Values.nope.deeper }}\n")
    report = helm_python.lint(broken, None, strict=True, namespace=NAMESPACE)
    assert any(message["severity"] >= LINT_ERROR for message in report["messages"])


@value_sets
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_validates_strictly(
    rendered: dict[str, Rendered], name: str, version: str
) -> None:
    for obj in rendered[name].objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if is_custom_resource(obj):
            try:
                validate_custom_resource(obj)
            except jsonschema.ValidationError as err:
                pytest.fail(f"{where}: {err.message} at {list(err.absolute_path)}")
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{where} on Kubernetes {version}: {err.message}")


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param(
            {
                "apiVersion": "cert-manager.io/v1",
                "kind": "Certificate",
                "metadata": {"name": "x"},
                "spec": {"secretName": "x", "issuerRef": {"name": "i"}, "dnsName": ["a"]},
            },
            "Additional properties are not allowed ('dnsName' was unexpected)",
            id="certificate-typo",
        ),
        pytest.param(
            {
                "apiVersion": "cert-manager.io/v1",
                "kind": "Certificate",
                "metadata": {"name": "x"},
                "spec": {"issuerRef": {"name": "i"}},
            },
            "'secretName' is a required property",
            id="certificate-without-secret",
        ),
        pytest.param(
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "ServiceMonitor",
                "metadata": {"name": "x"},
                "spec": {"selector": {}, "endpoints": [{"scheme": "gopher"}]},
            },
            "'gopher' is not one of",
            id="servicemonitor-bad-scheme",
        ),
    ],
)
def test_custom_resource_check_rejects_invalid_objects(obj: dict[str, Any], expected: str) -> None:
    with pytest.raises(jsonschema.ValidationError) as caught:
        validate_custom_resource(obj)
    assert expected in str(caught.value.message) or any(
        expected in str(error.message) for error in caught.value.context or []
    )


def test_kubernetes_validate_is_strict() -> None:
    """The strict schemas reject what the API server would prune: a misspelled field."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 443, "targtPort": "https"}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBE_VERSIONS[-1], strict=True)


COMMON = {
    f"ConfigMap/{FULLNAME}-policy",
    f"Deployment/{FULLNAME}",
    f"Secret/{FULLNAME}-sticky-session",
    f"MutatingWebhookConfiguration/{FULLNAME}",
    f"Service/{FULLNAME}",
}
EXPECTED_OBJECTS = {
    "defaults": COMMON
    | {
        f"Secret/{FULLNAME}-tls",
        f"ServiceAccount/{FULLNAME}",
        f"PodDisruptionBudget/{FULLNAME}",
        f"Pod/{FULLNAME}-test",
    },
    "cert-manager-own-ca": COMMON
    | {
        f"Issuer/{FULLNAME}-selfsigned",
        f"Certificate/{FULLNAME}-ca",
        f"Issuer/{FULLNAME}-ca",
        f"Certificate/{FULLNAME}-tls",
        f"ServiceAccount/{FULLNAME}",
        f"PodDisruptionBudget/{FULLNAME}",
        f"Pod/{FULLNAME}-test",
    },
    "cert-manager-cluster-issuer": COMMON
    | {
        f"Certificate/{FULLNAME}-tls",
        f"ServiceAccount/{FULLNAME}",
        f"PodDisruptionBudget/{FULLNAME}",
        f"Pod/{FULLNAME}-test",
    },
    "existing-secret": COMMON
    | {
        f"ConfigMap/{FULLNAME}-ca",
        f"ServiceAccount/{FULLNAME}",
        f"PodDisruptionBudget/{FULLNAME}",
        f"Pod/{FULLNAME}-test",
    },
    "minimal": COMMON | {f"Secret/{FULLNAME}-tls"},
}


@pytest.mark.parametrize(
    ("name", "expected"),
    [pytest.param(name, names, id=name) for name, names in EXPECTED_OBJECTS.items()],
)
def test_each_mode_renders_exactly_its_objects(
    rendered: dict[str, Rendered], name: str, expected: set[str]
) -> None:
    assert set(rendered[name].names()) == expected


def test_service_monitor_only_when_enabled(rendered: dict[str, Rendered]) -> None:
    assert rendered["defaults"].all("ServiceMonitor") == []
    monitor = rendered["everything-on"].one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    endpoint = monitor["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["path"], endpoint["scheme"]) == (
        "https",
        "/metrics",
        "https",
    )
    assert endpoint["tlsConfig"]["serverName"] == f"{FULLNAME}.{NAMESPACE}.svc"
    assert endpoint["tlsConfig"]["ca"] == {"secret": {"name": f"{FULLNAME}-tls", "key": "ca.crt"}}
    existing = rendered["everything-on-existing"].one("ServiceMonitor")
    assert existing["spec"]["endpoints"][0]["tlsConfig"]["ca"] == {
        "configMap": {"name": f"{FULLNAME}-ca", "key": "ca.crt"}
    }


def _pods(rendered: Rendered) -> list[tuple[str, dict[str, Any]]]:
    pods = [("Deployment", rendered.deployment_pod())]
    pods += [(f"Pod/{pod['metadata']['name']}", pod["spec"]) for pod in rendered.all("Pod")]
    return pods


@value_sets
def test_every_pod_meets_the_restricted_pod_security_standard(
    rendered: dict[str, Rendered], name: str
) -> None:
    for where, pod in _pods(rendered[name]):
        pod_context = pod.get("securityContext") or {}
        assert pod_context.get("runAsNonRoot") is True, where
        assert pod_context.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        assert pod.get("automountServiceAccountToken") is False, where
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container.get("securityContext") or {}
            name = f"{where}: {container['name']}"
            assert context.get("allowPrivilegeEscalation") is False, name
            assert context.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not context.get("capabilities", {}).get("add"), name
            assert context.get("readOnlyRootFilesystem") is True, name
            assert context.get("privileged") is not True, name
            assert "resources" in container and container["resources"].get("limits"), name
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= {"secret", "configMap", "emptyDir"}, where


@value_sets
def test_webhook_serves_https_with_mounted_directories(
    rendered: dict[str, Rendered], name: str
) -> None:
    result = rendered[name]
    container = result.webhook_container()
    args = container["args"]
    assert args[0] == "serve"
    options = dict(arg.removeprefix("--").split("=", 1) for arg in args[1:] if "=" in arg)
    port = container["ports"][0]
    assert port["name"] == "https" and int(options["port"]) == port["containerPort"]
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    # Whole directories: a subPath mount never sees the kubelet's symlink swap (hot reload).
    assert all("subPath" not in mount and "subPathExpr" not in mount for mount in mounts.values())
    assert options["tls-cert"] == mounts["tls"]["mountPath"] + "/tls.crt"
    assert options["tls-key"] == mounts["tls"]["mountPath"] + "/tls.key"
    assert options["policy"] == mounts["policy"]["mountPath"] + "/policy.yaml"
    assert "/tmp" in {mount["mountPath"] for mount in mounts.values()}
    volumes = {volume["name"]: volume for volume in result.deployment_pod()["volumes"]}
    assert volumes["policy"]["configMap"]["name"] == f"{result.fullname()}-policy"
    assert "items" not in volumes["tls"]["secret"] and "items" not in volumes["policy"]["configMap"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"], get["scheme"]) == (path, "https", "HTTPS"), probe
    service = result.one("Service")
    assert service["spec"]["ports"][0]["targetPort"] == "https"
    webhook = result.one("MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["service"]
    assert webhook["name"] == service["metadata"]["name"]
    assert webhook["port"] == service["spec"]["ports"][0]["port"]
    assert webhook["path"] == "/mutate"


@value_sets
def test_no_rbac_and_no_token(rendered: dict[str, Rendered], name: str) -> None:
    """The webhook makes no API calls: nothing to grant, nothing to mount."""
    result = rendered[name]
    assert not {obj["kind"] for obj in result.objects} & RBAC_KINDS
    for account in result.all("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False
    assert result.deployment_pod()["automountServiceAccountToken"] is False


@value_sets
def test_selectors_find_the_webhook_pods_only(rendered: dict[str, Rendered], name: str) -> None:
    result = rendered[name]
    deployment = result.one("Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert set(selector) == {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
    }
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert result.one("Service")["spec"]["selector"] == selector
    for budget in result.all("PodDisruptionBudget"):
        assert budget["spec"]["selector"]["matchLabels"] == selector
    for pod in result.all("Pod"):
        assert not selector.items() <= pod["metadata"]["labels"].items(), (
            "the Service would route to the test Pod"
        )


@value_sets
def test_names_are_valid(rendered: dict[str, Rendered], name: str) -> None:
    result = rendered[name]
    for obj in result.objects:
        name = obj["metadata"]["name"]
        assert DNS_SUBDOMAIN.match(name) and len(name) <= 253, name
    service = result.one("Service")["metadata"]["name"]
    assert len(service) <= 63, "a Service name is a DNS label"
    assert len(result.fullname()) <= 63


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return selector.keys() == {"matchLabels"} and selector["matchLabels"].items() <= labels.items()


def test_defaults_survive_a_node_drain_and_a_rollout(rendered: dict[str, Rendered]) -> None:
    """With the default values, evicting one pod (a node drain) or rolling out a new version
    never leaves the webhook without a ready pod, and the pods spread over nodes and zones:
    checked as relations between the objects, not as the values' numbers."""
    result = rendered["defaults"]
    deployment = result.one("Deployment")
    replicas = deployment["spec"]["replicas"]
    budget = result.one("PodDisruptionBudget")["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert 1 <= budget["minAvailable"] < replicas, "a drain may evict one, never the last"
    assert _selects(budget["selector"], labels), "the budget covers the webhook pods"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = result.deployment_pod()
    (preferred,) = pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert _selects(preferred["podAffinityTerm"]["labelSelector"], labels)
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert _selects(spread["labelSelector"], labels)


def test_everything_on_reaches_the_pod(rendered: dict[str, Rendered]) -> None:
    result = rendered["everything-on"]
    pod = result.deployment_pod()
    container = result.webhook_container()
    assert container["image"] == "registry.example/cache-injector@sha256:" + "a" * 64
    assert "--workers=4" in container["args"] and container["args"][-1] == "--some-flag"
    assert "--host=::" in container["args"] and "--port=9443" in container["args"]
    assert container["env"][1:] == [{"name": "TZ", "value": "UTC"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAntiAffinity"]
    labels = result.one("Deployment")["spec"]["template"]["metadata"]
    assert labels["labels"]["team"] == "platform"
    assert labels["labels"]["app.kubernetes.io/name"] == "cache-injector", "chart labels win"
    assert labels["annotations"]["example.com/owner"] == "platform"
    for hook in result.one("MutatingWebhookConfiguration")["webhooks"]:
        assert (hook["failurePolicy"], hook["timeoutSeconds"], hook["reinvocationPolicy"]) == (
            "Fail",
            3,
            "Never",
        )
    assert result.one("ServiceAccount")["metadata"]["annotations"] == {"team": "platform"}


def test_minimal_leaves_optional_parts_out(rendered: dict[str, Rendered]) -> None:
    result = rendered["minimal"]
    pod = result.deployment_pod()
    assert pod["serviceAccountName"] == "default"
    assert "affinity" not in pod and "topologySpreadConstraints" not in pod
    assert "nodeSelector" not in pod
    assert "replicaCount is 1" in result.notes


def test_custom_affinity_and_spread_are_kept(rendered: dict[str, Rendered]) -> None:
    result = rendered["custom-affinity-and-names"]
    pod = result.deployment_pod()
    assert set(pod["affinity"]) == {"nodeAffinity"}, "affinity replaces podAntiAffinity"
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["labelSelector"] == {"matchLabels": {"custom": "selector"}}
    assert result.fullname() == "injector"
    assert result.one("Service")["metadata"]["name"] == "injector"


@pytest.mark.parametrize(
    ("release", "values", "expected"),
    [
        pytest.param("ci", {}, "ci-cache-injector", id="release-and-chart"),
        pytest.param("cache-injector", {}, "cache-injector", id="release-named-like-the-chart"),
        pytest.param("my-cache-injector-prod", {}, "my-cache-injector-prod", id="contains-chart"),
        pytest.param("r" * 53, {}, "r" * 53 + "-cache-inj", id="truncated-to-63"),
        pytest.param(
            "r" * 53, {"nameOverride": "abcdefgh-ij"}, "r" * 53 + "-abcdefgh", id="no-trailing-dash"
        ),
        pytest.param("ci", {"fullnameOverride": "webhook"}, "webhook", id="full-name-override"),
    ],
)
def test_full_name(release: str, values: dict[str, Any], expected: str) -> None:
    assert render(values, name=release).fullname() == expected
