"""Render the Helm chart offline (helm-python-sdk bundles Helm itself) and read the result.

Shared by the chart tests: the value sets every test renders, a parsed view of the rendered
objects, and the checks of objects that kubernetes-validate has no schema for (cert-manager
and prometheus-operator custom resources, from the CRD models that cloudcoil's packages ship).
"""

from __future__ import annotations

import base64
import copy
import datetime
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helm_python import _native

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cache-injector"
RELEASE = "ci"
NAMESPACE = "cache-injector"
FULLNAME = "ci-cache-injector"
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")


@functools.cache
def example_ca() -> tuple[str, str]:
    """(PEM certificate, base64 of it) of a throwaway CA, for certs.mode=existing."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return pem, base64.b64encode(pem.encode()).decode()


def existing_certs() -> dict[str, Any]:
    return {"mode": "existing", "existing": {"secretName": "my-tls", "caBundle": example_ca()[1]}}


# Value sets that every rendering test runs: each certificate mode, and the switches that
# change which objects exist or how they look.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "cert-manager-own-ca": {"certs": {"mode": "cert-manager"}},
    "cert-manager-cluster-issuer": {
        "certs": {
            "mode": "cert-manager",
            "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}},
        }
    },
    "existing-secret": {"certs": existing_certs()},
    "everything-on": {
        "replicaCount": 3,
        "image": {"repository": "registry.example/cache-injector", "digest": "sha256:" + "a" * 64},
        "imagePullSecrets": ["regcred"],
        "server": {
            "host": "::",
            "port": 9443,
            "workers": 4,
            "extraArgs": ["--some-flag"],
            "env": [{"name": "TZ", "value": "UTC"}],
        },
        "policy": {
            "excludeNamespaces": ["legacy", "batch"],
            "namespaces": {
                "shop": {"backend": "web:8080", "allowedBackendNamespaces": ["catalog"]}
            },
            "onMissingBackend": "deny",
        },
        "webhook": {"failurePolicy": "Fail", "timeoutSeconds": 3, "reinvocationPolicy": "Never"},
        "service": {"port": 8443},
        "serviceAccount": {"annotations": {"team": "platform"}},
        "podAnnotations": {"example.com/owner": "platform"},
        "podLabels": {"team": "platform", "app.kubernetes.io/name": "overridden"},
        "priorityClassName": "system-cluster-critical",
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "infra"}],
        "podAntiAffinity": "hard",
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    },
    "everything-on-existing": {
        "certs": existing_certs(),
        "serviceMonitor": {"enabled": True},
    },
    "cache-monitoring": {
        "cacheMonitoring": {
            "podMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": True, "hitRatioThreshold": 0.8, "severity": "page"},
            "grafanaDashboard": {
                "enabled": True,
                "namespace": "monitoring",
                "annotations": {"grafana_folder": "Caches"},
            },
        }
    },
    "minimal": {
        "replicaCount": 1,
        "podDisruptionBudget": {"enabled": False},
        "test": {"enabled": False},
        "topologySpreadConstraints": [],
        "podAntiAffinity": "none",
        "nodeSelector": None,
        "serviceAccount": {"create": False},
        "webhook": {"matchConditions": False},
    },
    "custom-affinity-and-names": {
        "fullnameOverride": "injector",
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "node-role", "operator": "In", "values": ["infra"]}
                            ]
                        }
                    ]
                }
            }
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 2,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"custom": "selector"}},
            }
        ],
    },
}


@dataclass(frozen=True)
class Rendered:
    """The manifests of one render: objects by kind and name, NOTES.txt apart."""

    objects: list[dict[str, Any]]
    notes: str
    files: dict[str, str]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
        return found[0]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.all(kind):
            if obj["metadata"]["name"] == name:
                return obj
        raise AssertionError(f"no {kind} {name}; rendered: {self.names()}")

    def names(self) -> list[str]:
        return sorted(f"{obj['kind']}/{obj['metadata']['name']}" for obj in self.objects)

    def deployment_pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    def webhook_container(self) -> dict[str, Any]:
        container: dict[str, Any] = self.deployment_pod()["containers"][0]
        return container

    def policy_text(self) -> str:
        text: str = self.get("ConfigMap", f"{self.fullname()}-policy")["data"]["policy.yaml"]
        return text

    def fullname(self) -> str:
        name: str = self.one("Deployment")["metadata"]["name"]
        return name

    def hooks(self) -> list[dict[str, Any]]:
        return [
            obj
            for obj in self.objects
            if "helm.sh/hook" in (obj["metadata"].get("annotations") or {})
        ]


@functools.cache
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


def parse_manifests(files: Mapping[str, str]) -> Rendered:
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for document in yaml.safe_load_all(text):
            if document is not None:
                objects.append(document)
    return Rendered(objects=objects, notes=notes, files=dict(files))


def render(
    values: Mapping[str, Any] | None = None,
    *,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
    kube_version: str | None = None,
) -> Rendered:
    """Render like `helm template` (no cluster: lookup finds nothing), for a cluster of
    `kube_version` when given (`--kube-version`; else Helm's default)."""
    if kube_version is None:
        files = chart().render(copy.deepcopy(dict(values or {})), name=name, namespace=namespace)
        return parse_manifests(files)
    # helm-python's Chart.render has no kube_version argument; the library it wraps takes
    # the option (helm-c-sdk's render options: name, namespace, kube_version, ...).
    options = {"name": name, "namespace": namespace, "kube_version": kube_version}
    rendered = _native.call_string(
        "helm_render", chart()._raw(), json.dumps(dict(values or {})), json.dumps(options)
    )
    return parse_manifests(json.loads(rendered))


# --- custom resources ---------------------------------------------------------------------


def render_upgrade(apiserver_url: str, values: Mapping[str, Any] | None = None) -> Rendered:
    """Render like `helm upgrade` against the API server at `apiserver_url` (a fake one):
    `lookup` sees what it holds, as on a real upgrade."""
    config = helm_python.Config(kube_apiserver=apiserver_url, namespace=NAMESPACE)
    try:
        files = config.render(
            chart(), dict(values or {}), name=RELEASE, namespace=NAMESPACE, is_upgrade=True
        )
    finally:
        config.close()
    return parse_manifests(files)


def _close(node: Any) -> Any:
    """Every object schema with properties also forbids other keys, as a CRD's structural
    schema does for the API server's pruning (pruned keys would be lost silently)."""
    if isinstance(node, list):
        return [_close(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _close(value) for key, value in node.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@functools.cache
def _custom_resource_models() -> dict[tuple[str, str], Any]:
    from cloudcoil.models.cert_manager import v1 as cert_manager  # noqa: PLC0415 (slow import)
    from cloudcoil.models.prometheus_operator import v1 as prometheus  # noqa: PLC0415

    return {
        ("cert-manager.io/v1", "Certificate"): cert_manager.Certificate,
        ("cert-manager.io/v1", "Issuer"): cert_manager.Issuer,
        ("monitoring.coreos.com/v1", "ServiceMonitor"): prometheus.ServiceMonitor,
        ("monitoring.coreos.com/v1", "PodMonitor"): prometheus.PodMonitor,
        ("monitoring.coreos.com/v1", "PrometheusRule"): prometheus.PrometheusRule,
    }


def is_custom_resource(obj: Mapping[str, Any]) -> bool:
    """Built-in groups have no dot (apps, policy) or end in .k8s.io; the rest come from CRDs."""
    group = str(obj["apiVersion"]).rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


@functools.cache
def _custom_resource_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    models = _custom_resource_models()
    if (api_version, kind) not in models:
        raise AssertionError(
            f"{api_version} {kind}: no CRD model to check it against; add one to "
            "_custom_resource_models"
        )
    schema = _close(models[(api_version, kind)].model_json_schema(by_alias=True))
    return jsonschema.Draft202012Validator(schema)


def validate_custom_resource(obj: Mapping[str, Any]) -> None:
    """Check a custom resource against its CRD's schema (as cloudcoil's generated models
    carry it), rejecting unknown keys. Raises jsonschema.ValidationError."""
    validator = _custom_resource_validator(str(obj["apiVersion"]), str(obj["kind"]))
    validator.validate(dict(obj))
