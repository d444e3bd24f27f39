"""The CustomResourceDefinitions of the custom resources the chart creates (cert-manager's
Certificate and Issuer, prometheus-operator's ServiceMonitor, PodMonitor and PrometheusRule),
for a real API server to validate the chart's objects against.

Built from the schemas that cloudcoil's model packages carry (generated from the upstream
CRDs of the versions in their names), turned back into structural OpenAPI schemas: $refs
inlined, Optional's null branch dropped, int-or-string unions and free-form fields marked as
the upstream CRDs mark them, titles and defaults left out. Minimal, but real: the API server
rejects unknown fields and wrong types in them as it does with the upstream CRDs, and nothing
third-party is copied into this repository.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The validations a structural schema may carry (titles, defaults and the like are left out).
KEPT = (
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "required",
)


@dataclass(frozen=True)
class CustomKind:
    group: str
    version: str
    kind: str
    plural: str
    source: str  # the cloudcoil models package (and so the upstream version)

    @property
    def name(self) -> str:
        return f"{self.plural}.{self.group}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


CERT_MANAGER = (
    CustomKind("cert-manager.io", "v1", "Certificate", "certificates", "cert_manager"),
    CustomKind("cert-manager.io", "v1", "Issuer", "issuers", "cert_manager"),
)
PROMETHEUS_OPERATOR = (
    CustomKind("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors", "prometheus"),
    CustomKind("monitoring.coreos.com", "v1", "PodMonitor", "podmonitors", "prometheus"),
    CustomKind("monitoring.coreos.com", "v1", "PrometheusRule", "prometheusrules", "prometheus"),
)
ALL = CERT_MANAGER + PROMETHEUS_OPERATOR


def _model(kind: CustomKind) -> Any:
    if kind.source == "cert_manager":
        from cloudcoil.models.cert_manager import v1 as cert_manager  # noqa: PLC0415 (slow)

        return getattr(cert_manager, kind.kind)
    from cloudcoil.models.prometheus_operator import v1 as prometheus  # noqa: PLC0415

    return getattr(prometheus, kind.kind)


def structural(node: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """One pydantic JSON Schema node as a structural schema node."""
    if "$ref" in node:
        return structural(defs[str(node["$ref"]).rpartition("/")[2]], defs)
    if "anyOf" in node:
        branches = [structural(b, defs) for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) == 1:
            return branches[0]
        types = {b.get("type") for b in branches}
        if types <= {"integer", "number", "string"} and "string" in types:
            return {"x-kubernetes-int-or-string": True}
        raise ValueError(f"no structural form for the union {sorted(map(str, types))}")
    kind = node.get("type")
    if kind is None and "enum" in node:
        kind = "string" if all(isinstance(v, str) for v in node["enum"]) else None
    if kind is None:  # Any: a free-form field
        return {"x-kubernetes-preserve-unknown-fields": True}
    out: dict[str, Any] = {"type": kind}
    if "const" in node:
        out["enum"] = [node["const"]]
    for key in KEPT:
        if key in node:
            out[key] = node[key]
    if "properties" in node:
        out["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
    elif isinstance(node.get("additionalProperties"), Mapping):
        out["additionalProperties"] = structural(node["additionalProperties"], defs)
    elif kind == "object":
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "items" in node:
        out["items"] = structural(node["items"], defs)
    return out


@functools.cache
def definition(kind: CustomKind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind, ready for the API server."""
    schema = _model(kind).model_json_schema(by_alias=True)
    defs = schema.get("$defs", {})
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
    }
    for part in ("spec", "status"):
        if part in schema["properties"]:
            properties[part] = structural(schema["properties"][part], defs)
    root: dict[str, Any] = {"type": "object", "properties": properties}
    required = [key for key in schema.get("required", []) if key in ("spec",)]
    if required:
        root["required"] = required
    version: dict[str, Any] = {
        "name": kind.version,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": root},
    }
    if "status" in properties:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.name,
            "labels": {"tests.cache-injector.io/crd-from": f"cloudcoil-models-{kind.source}"},
        },
        "spec": {
            "group": kind.group,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
            },
            "versions": [version],
        },
    }
