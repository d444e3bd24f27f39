"""values.schema.json: bad values fail with the schema's message, the schema and values.yaml
list the same documented keys, and its policy part is the policy file's own schema."""

from __future__ import annotations

import json
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml

from tests.chart.chart import CHART, ROOT, render
from webhook.engine.policy import policy_json_schema
from webhook.tools import chartschema

SCHEMA_PATH = CHART / "values.schema.json"
VALUES_PATH = CHART / "values.yaml"
# Kubernetes types passed through to the objects as they are. Their keys are Kubernetes', so
# the schema leaves them open here; kubernetes-validate checks what they render into.
KUBERNETES_TYPES = {
    "podSecurityContext",
    "securityContext",
    "resources",
    "affinity",
    "server.env.items",
    "tolerations.items",
    "topologySpreadConstraints.items",
    "networkPolicy.from.items",
    "networkPolicy.metricsFrom.items",
}
# Maps of user-chosen keys to strings.
STRING_MAPS = {
    "serviceAccount.annotations",
    "podAnnotations",
    "podLabels",
    "nodeSelector",
    "serviceMonitor.labels",
}


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return loaded


def defaults() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(VALUES_PATH.read_text())
    return loaded


BAD_VALUES = [
    pytest.param(
        {"replicasCount": 3},
        "at '': additional properties 'replicasCount' not allowed",
        id="unknown-top-level-key",
    ),
    pytest.param(
        {"image": {"tags": "1.0"}},
        "at '/image': additional properties 'tags' not allowed",
        id="unknown-nested-key",
    ),
    pytest.param(
        {"replicaCount": "two"}, "at '/replicaCount': got string, want integer", id="wrong-type"
    ),
    pytest.param(
        {"replicaCount": 0}, "at '/replicaCount': minimum: got 0, want 1", id="no-replicas"
    ),
    pytest.param(
        {"certs": {"mode": "vault"}},
        "at '/certs/mode': value must be one of 'helm', 'cert-manager', 'existing'",
        id="invalid-cert-mode",
    ),
    pytest.param(
        {"webhook": {"failurePolicy": "ignore"}},
        "at '/webhook/failurePolicy': value must be one of 'Ignore', 'Fail'",
        id="failure-policy-case",
    ),
    pytest.param(
        {"webhook": {"timeoutSeconds": 60}},
        "at '/webhook/timeoutSeconds': maximum: got 60, want 30",
        id="timeout-above-api-maximum",
    ),
    pytest.param(
        {"service": {"port": 70000}},
        "at '/service/port': maximum: got 70,000, want 65,535",
        id="port-out-of-range",
    ),
    pytest.param(
        {"server": {"port": 443}},
        "at '/server/port': minimum: got 443, want 1,025",
        id="privileged-container-port",
    ),
    pytest.param(
        {"podAntiAffinity": "strict"},
        "at '/podAntiAffinity': value must be one of 'soft', 'hard', 'none'",
        id="anti-affinity-mode",
    ),
    pytest.param(
        {"certs": {"mode": "existing"}},
        "at '/certs/existing/secretName': minLength: got 0, want 1",
        id="existing-without-secret",
    ),
    pytest.param(
        {"certs": {"mode": "existing", "existing": {"secretName": "tls"}}},
        "at '/certs/existing/caBundle': minLength: got 0, want 1",
        id="existing-without-ca",
    ),
    pytest.param(
        {"certs": {"certManager": {"duration": "90 days"}}},
        "at '/certs/certManager/duration': '90 days' does not match pattern",
        id="duration-format",
    ),
    pytest.param(
        {"serviceMonitor": {"enabled": "yes"}},
        "at '/serviceMonitor/enabled': got string, want boolean",
        id="boolean-as-string",
    ),
    pytest.param(
        {"podLabels": {"team": 1}},
        "at '/podLabels/team': got number, want string",
        id="label-value-not-string",
    ),
    # The policy part, whose definitions were $refs in the policy schema.
    pytest.param(
        {"policy": {"onMissingBackend": "maybe"}},
        "at '/policy/onMissingBackend': value must be one of 'skip', 'deny'",
        id="policy-enum",
    ),
    pytest.param(
        {"policy": {"limits": {"maxBackend": 3}}},
        "at '/policy/limits': additional properties 'maxBackend' not allowed",
        id="policy-nested-typo",
    ),
    pytest.param(
        {"policy": {"limits": {"maxBackends": 0}}},
        "at '/policy/limits/maxBackends': minimum: got 0, want 1",
        id="policy-bound",
    ),
    pytest.param(
        {"policy": {"namespaces": {"shop": {"cache-sise": "1Gi"}}}},
        "at '/policy/namespaces/shop': additional properties 'cache-sise' not allowed",
        id="policy-namespace-entry-typo",
    ),
    pytest.param(
        {"policy": {"excludeNamespaces": "legacy"}},
        "at '/policy/excludeNamespaces': got string, want array",
        id="policy-list-as-string",
    ),
    pytest.param(
        {"policy": {"nativeSidecar": True}},
        "at '/policy': additional properties 'nativeSidecar' not allowed",
        id="policy-top-level-typo",
    ),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES)
def test_bad_values_fail_with_the_schema_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        render(values)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param(
            {
                "certs": {
                    "mode": "existing",
                    "existing": {"secretName": "t", "caBundle": "aGVsbG8="},
                }
            },
            "certs.existing.caBundle: must be the base64 of PEM CA certificates",
            id="ca-bundle-not-pem",
        ),
    ],
)
def test_bad_values_the_templates_catch(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render(values)
    assert message in str(caught.value)


def test_schema_is_generated_from_the_code_and_values_yaml() -> None:
    current = SCHEMA_PATH.read_text()
    expected = chartschema.render(
        chartschema.chart_schema(json.loads(current), VALUES_PATH.read_text())
    )
    assert current == expected, "values.schema.json is stale: run `make chart-schema`"


def _without_description(node: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in node.items() if key != "description"}


def test_policy_part_equals_docs_policy_schema() -> None:
    """The chart's policy property is docs/policy.schema.json with its $refs inlined."""
    docs_schema = json.loads((ROOT / "docs" / "policy.schema.json").read_text())
    assert docs_schema == json.loads(json.dumps(policy_json_schema())), "run `make docs`"
    inlined = chartschema.inline_refs(docs_schema)
    inlined.pop("title")
    assert _without_description(schema()["properties"]["policy"]) == _without_description(inlined)
    assert "$ref" not in json.dumps(schema()), "every $ref is inlined"


def test_schema_is_valid_draft_07() -> None:
    jsonschema.Draft7Validator.check_schema(schema())
    jsonschema.Draft7Validator(schema()).validate(defaults())


def _object_paths(node: dict[str, Any], path: str = "") -> dict[str, dict[str, Any]]:
    """Every schema node of type object or array below `node`, by dotted path."""
    found: dict[str, dict[str, Any]] = {}
    for name, child in (node.get("properties") or {}).items():
        child_path = f"{path}.{name}" if path else name
        if name == "policy" and not path:
            continue
        if child.get("type") in ("object", "array"):
            found[child_path] = child
        found.update(_object_paths(child, child_path))
        if isinstance(child.get("items"), dict):
            items = child["items"]
            if items.get("type") == "object":
                found[f"{child_path}.items"] = items
    return found


def test_every_object_forbids_unknown_keys() -> None:
    """additionalProperties: false everywhere but the named open Kubernetes types and maps."""
    open_objects = set()
    for path, node in _object_paths(schema()).items():
        if node["type"] != "object":
            continue
        if node.get("additionalProperties") is False:
            assert node.get("properties"), path
            continue
        open_objects.add(path)
        if path in STRING_MAPS:
            assert node["additionalProperties"] == {"type": "string"}, path
    assert open_objects == KUBERNETES_TYPES | STRING_MAPS
    assert schema()["additionalProperties"] is False
    policy_objects = [
        node
        for node in _walk(schema()["properties"]["policy"])
        if node.get("type") == "object" and "properties" in node
    ]
    assert policy_objects and all(node["additionalProperties"] is False for node in policy_objects)


def _walk(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, list):
        return [found for item in node for found in _walk(item)]
    if not isinstance(node, dict):
        return []
    return [node, *(found for value in node.values() for found in _walk(value))]


def _schema_keys(node: dict[str, Any], path: str = "") -> set[str]:
    keys = set()
    for name, child in (node.get("properties") or {}).items():
        child_path = f"{path}.{name}" if path else name
        keys.add(child_path)
        if name != "policy" or path:
            keys |= _schema_keys(child, child_path)
    return keys


def _values_keys(values: dict[str, Any], shape: dict[str, Any], path: str = "") -> set[str]:
    """Keys of values.yaml, descending where the schema lists properties (not into the open
    Kubernetes types, whose keys are Kubernetes', nor into policy)."""
    keys = set()
    for name, value in values.items():
        child_path = f"{path}.{name}" if path else name
        keys.add(child_path)
        child_shape = (shape.get("properties") or {}).get(name, {})
        if isinstance(value, dict) and child_shape.get("properties") and child_path != "policy":
            keys |= _values_keys(value, child_shape, child_path)
    return keys


def test_values_yaml_and_schema_list_the_same_keys() -> None:
    assert _values_keys(defaults(), schema()) == _schema_keys(schema())


def test_every_value_is_documented_in_both() -> None:
    comments = chartschema.values_comments(VALUES_PATH.read_text())
    for path in _schema_keys(schema()):
        node = schema()
        for part in path.split("."):
            node = node["properties"][part]
        assert node.get("description"), f"{path}: no description in values.schema.json"
        assert comments.get(path), f"{path}: no comment above it in values.yaml"


def test_policy_defaults_match_the_embedded_default_policy() -> None:
    """values.yaml's policy is the embedded default policy (plus empty lists), so a default
    install behaves as `make run`."""
    embedded = yaml.safe_load((ROOT / "webhook" / "engine" / "default-policy.yaml").read_text())
    assert defaults()["policy"] == {**embedded, "excludeNamespaces": [], "namespaces": {}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("# A.\na: 1\n", {"a": "A."}, id="one-key"),
        pytest.param("# A.\n\na: 1\n", {}, id="blank-line-detaches"),
        pytest.param(
            "# Top.\na:\n  # Inner,\n  # two lines.\n  b: 1\n",
            {"a": "Top.", "a.b": "Inner,\ntwo lines."},
            id="nested-and-multiline",
        ),
        pytest.param(
            "# Example:\n#   - x\n#\n# More.\nk: []\n",
            {"k": "Example:\n  - x\n\nMore."},
            id="example",
        ),
        pytest.param("a:\n  # For b.\n# For c.\nc: 1\n", {"c": "For c."}, id="indent-decides"),
        pytest.param("l:\n  - name: x\n    # no.\n    v: 1\n", {"l.v": "no."}, id="list-items"),
    ],
)
def test_values_comments(text: str, expected: dict[str, str]) -> None:
    assert chartschema.values_comments(text) == expected


def test_inline_refs_rejects_unknown_and_recursive_refs() -> None:
    with pytest.raises(ValueError, match="not one of"):
        chartschema.inline_refs({"$ref": "#/$defs/Nope", "$defs": {}})
    with pytest.raises(ValueError, match="refers to itself"):
        chartschema.inline_refs(
            {"$ref": "#/$defs/A", "$defs": {"A": {"items": {"$ref": "#/$defs/A"}}}}
        )


def test_generator_refuses_an_undocumented_key() -> None:
    current = schema()
    current["properties"]["image"]["properties"]["undocumented"] = {"type": "string"}
    with pytest.raises(ValueError, match=r"image\.undocumented: no comment"):
        chartschema.chart_schema(current, VALUES_PATH.read_text())
