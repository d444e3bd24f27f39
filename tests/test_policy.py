"""The cluster policy: strict schema, every problem listed as `path.to.field: value: accepted`,
example policies valid, the embedded default valid, and the JSON Schema export in sync."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT
from webhook.engine.errors import InvalidPolicy
from webhook.engine.policy import build_policy, default_policy, load_policy_text, policy_json_schema

EXAMPLES = sorted((ROOT / "docs" / "examples").glob("policy-*.yaml"))


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in EXAMPLES])
def test_example_policies_are_valid(path: Path) -> None:
    load_policy_text(path.read_text(), str(path))


def test_there_are_example_policies() -> None:
    assert len(EXAMPLES) >= 3


def test_embedded_default_policy_is_valid() -> None:
    policy = default_policy()
    assert policy.model.native_sidecars
    assert policy.model.on_invalid == "deny"


BROKEN = [
    pytest.param({"clusterDomian": "x"}, ["clusterDomian: unknown field"], id="typo-top-level"),
    pytest.param({"defaults": {"cache-sise": "1Gi"}}, ["defaults.cache-sise: unknown field"],
                 id="typo-option"),
    pytest.param({"nativeSidecars": "yes"}, ['nativeSidecars: "yes": Input should be a valid '
                                             "boolean"], id="wrong-type"),
    pytest.param({"onInvalid": "warn"}, ['onInvalid: "warn": Input should be \'deny\' or '
                                         "'skip'"], id="bad-enum"),
    pytest.param({"defaults": {"cache-size": "lots"}}, ['defaults.cache-size: "lots": a '
                                                        "Kubernetes memory quantity"],
                 id="bad-option-value"),
    pytest.param({"defaults": {"cache-size": "8Gi"}}, ['defaults.cache-size: "8Gi": a '
                                                       "Kubernetes memory quantity from 16Mi to "
                                                       "4Gi"], id="default-over-limit"),
    pytest.param({"limits": {"maxBackends": 1000}}, ["limits.maxBackends: 1000: Input should "
                                                     "be less than or equal to 256"],
                 id="limit-out-of-range"),
    pytest.param({"clusterDomain": "Cluster Local"}, ['clusterDomain: "Cluster Local": a DNS '
                                                      "domain"], id="bad-domain"),
    pytest.param({"excludeNamespaces": ["Kube_Stuff"]}, ['excludeNamespaces.0: "Kube_Stuff": a '
                                                         "namespace name"], id="bad-namespace"),
    pytest.param({"namespaces": {"shop": {"backend": "api.catalog:80"}}},
                 ['namespaces.shop.backend: "api.catalog:80": a Service in namespace shop; the '
                  "cluster policy does not let shop use Services in catalog (add it to "
                  "namespaces.shop.allowedBackendNamespaces)"], id="cross-namespace-default"),
    pytest.param({"namespaces": {"shop": {"backend": "api:http"}}},
                 ['namespaces.shop.backend: "api:http": with discovery dns-a the port must be '
                  "a number"], id="port-name-without-srv"),
    pytest.param({"defaults": {"backend": "api:http"}},
                 ['defaults.backend: "api:http": with discovery dns-a the port must be a number'],
                 id="cluster-default-port-name-without-srv"),
    pytest.param({"defaults": {"listen-port": "6090"}},
                 ['defaults.listen-port: "6090": an integer from 1025 to 65535'],
                 id="default-listen-port-reserved"),
    pytest.param({"resources": {"varnish": {"limits": {"memory": "256Mi"}}}},
                 ['resources.varnish.limits.memory: "256Mi": at least 869Mi (cache-size 128Mi '
                  "+ transientSize 64Mi + 16Mi workdir + headroom (32Mi + 1152 bytes per 352 "
                  "bytes of cache and Transient))"], id="memory-rule"),
    pytest.param({"resources": {"haproxy": {"requests": {"cpu": "fast"}}}},
                 ['resources.haproxy.requests.cpu: "fast": a Kubernetes quantity'],
                 id="bad-resource-quantity"),
    pytest.param({"images": {"varnish": "varnish 8"}}, ['images.varnish: "varnish 8": an image '
                                                        "reference"], id="bad-image"),
    pytest.param({"transientSize": "0"}, ['transientSize: "0": a quantity above 0'],
                 id="zero-transient"),
    pytest.param({"runAsUser": {"varnish": 0}}, ["runAsUser.varnish: 0: Input should be "
                                                 "greater than or equal to 1"], id="root-uid"),
    pytest.param([1, 2], ['(top level): "[1, 2]": a mapping of policy fields'], id="not-a-map"),
    pytest.param({"clusterDomian": "x", "onInvalid": "warn"},
                 ["clusterDomian: unknown field", "onInvalid: \"warn\""], id="all-listed"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "expected"), BROKEN)
def test_broken_policy_lists_every_problem(data: object, expected: list[str]) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        build_policy(data)
    problems = caught.value.problems
    assert len(problems) == len(expected), problems
    for want in expected:
        assert any(problem.startswith(want) for problem in problems), (want, problems)


def test_yaml_syntax_error_is_reported_not_raised() -> None:
    with pytest.raises(InvalidPolicy, match="not valid YAML"):
        load_policy_text("defaults: [unclosed")


def test_exported_schema_is_strict_and_current() -> None:
    schema = policy_json_schema()
    assert schema["additionalProperties"] is False
    for name, definition in schema["$defs"].items():
        if definition.get("type") == "object":
            assert definition.get("additionalProperties") is False, name
    committed = json.loads((ROOT / "docs" / "policy.schema.json").read_text())
    assert committed == schema, "docs/policy.schema.json is stale: run `make docs`"
