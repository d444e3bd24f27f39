"""The rendered MutatingWebhookConfiguration calls the webhook for exactly the pods the design
selects, never twice for one pod, and never in an excluded namespace.

The API server's matching is modelled here: rules (operation, group, version, resource), the
namespaceSelector against the namespace's labels (which always include
kubernetes.io/metadata.name), the objectSelector against the pod's labels, and matchConditions,
whose CEL expressions are evaluated for real with a CEL implementation.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any

import cel
import pytest

from tests.chart.chart import NAMESPACE, SYSTEM_NAMESPACES, render
from webhook.engine.policy import Policy, load_policy_text
from webhook.engine.selection import select_pod

LABEL = "cache-injector.io/inject"
NAMESPACE_ENTRY = "namespace-label.cache-injector.io"
POD_ENTRY = "pod-label.cache-injector.io"
POLICY_EXCLUDED = "legacy"
VALUES = {"policy": {"excludeNamespaces": [POLICY_EXCLUDED]}}

# Label values: enabled, disabled, absent (None), and a typo that must count as absent.
LABEL_VALUES = ("enabled", "disabled", None, "true")


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics; an empty or missing selector matches everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        # The API server rejects these (metav1 validation), so a chart using one fails here.
        if operator in ("In", "NotIn"):
            assert values, f"{operator} needs values: {expression}"
        else:
            assert not values, f"{operator} takes no values: {expression}"
        if operator == "In":
            ok = key in labels and labels[key] in values
        elif operator == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif operator == "Exists":
            ok = key in labels
        elif operator == "DoesNotExist":
            ok = key not in labels
        else:
            raise AssertionError(f"unknown operator {operator}")
        if not ok:
            return False
    return True


def rule_matches(rules: list[dict[str, Any]], operation: str) -> bool:
    def has(values: list[str], value: str) -> bool:
        return "*" in values or value in values

    return any(
        has(rule["operations"], operation)
        and has(rule["apiGroups"], "")
        and has(rule["apiVersions"], "v1")
        and has(rule["resources"], "pods")
        for rule in rules
    )


def conditions_match(conditions: list[dict[str, str]], pod: Mapping[str, Any]) -> bool:
    """All matchConditions true (the API server's rule); an error would fail the test."""
    return all(cel.evaluate(condition["expression"], {"object": pod}) for condition in conditions)


def called_entries(
    mwc: Mapping[str, Any],
    *,
    namespace: str,
    namespace_labels: Mapping[str, str],
    pod: Mapping[str, Any],
    operation: str = "CREATE",
) -> list[str]:
    """Names of the webhook entries the API server would call for this pod."""
    labels = {**namespace_labels, "kubernetes.io/metadata.name": namespace}
    pod_labels = pod["metadata"].get("labels") or {}
    return [
        hook["name"]
        for hook in mwc["webhooks"]
        if rule_matches(hook["rules"], operation)
        and selector_matches(hook.get("namespaceSelector"), labels)
        and selector_matches(hook.get("objectSelector"), pod_labels)
        and conditions_match(hook.get("matchConditions") or [], pod)
    ]


def make_pod(
    label: str | None = None, annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"generateName": "web-", "labels": {"app": "web"}}
    if label is not None:
        metadata["labels"][LABEL] = label
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    }


def namespace_labels(label: str | None) -> dict[str, str]:
    return {} if label is None else {LABEL: label}


@pytest.fixture(scope="module")
def mwc() -> dict[str, Any]:
    return render(VALUES).one("MutatingWebhookConfiguration")


@pytest.fixture(scope="module")
def mwc_without_conditions() -> dict[str, Any]:
    values = {**VALUES, "webhook": {"matchConditions": False}}
    return render(values).one("MutatingWebhookConfiguration")


@pytest.fixture(scope="module")
def mwc_with_and_without_conditions(
    mwc: dict[str, Any], mwc_without_conditions: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    return mwc, mwc_without_conditions


@pytest.fixture(scope="module")
def rendered_policy() -> Policy:
    """The policy the server would load: the rendered ConfigMap's."""
    return load_policy_text(render(VALUES).policy_text(), "rendered ConfigMap")


# The design's table (docs/design.md "How a review flows", webhook/engine/selection.py):
# the pod's label wins.
TRUTH_TABLE = [
    # namespace label, pod label, entry called
    ("enabled", "enabled", NAMESPACE_ENTRY),
    ("enabled", "disabled", None),
    ("enabled", None, NAMESPACE_ENTRY),
    ("enabled", "true", NAMESPACE_ENTRY),
    ("disabled", "enabled", POD_ENTRY),
    ("disabled", "disabled", None),
    ("disabled", None, None),
    (None, "enabled", POD_ENTRY),
    (None, "disabled", None),
    (None, None, None),
    (None, "true", None),
    ("true", "enabled", POD_ENTRY),
    ("true", None, None),
]


@pytest.mark.parametrize(
    ("namespace_label", "pod_label", "expected"),
    [
        pytest.param(ns, pod, expected, id=f"namespace-{ns or 'absent'}-pod-{pod or 'absent'}")
        for ns, pod, expected in TRUTH_TABLE
    ],
)
def test_selectors_follow_the_truth_table(
    mwc: dict[str, Any],
    rendered_policy: Policy,
    namespace_label: str | None,
    pod_label: str | None,
    expected: str | None,
) -> None:
    pod = make_pod(pod_label)
    labels = namespace_labels(namespace_label)
    called = called_entries(mwc, namespace="shop", namespace_labels=labels, pod=pod)
    assert called == ([expected] if expected else [])
    # The engine, given the same labels and the rendered policy, agrees.
    decision = select_pod(
        pod, namespace="shop", operation="CREATE", policy=rendered_policy, namespace_labels=labels
    )
    assert decision.inject == bool(called), decision.message


EXCLUDED = [*SYSTEM_NAMESPACES, NAMESPACE, POLICY_EXCLUDED]


@pytest.mark.parametrize("namespace", [pytest.param(ns, id=ns) for ns in EXCLUDED])
@pytest.mark.parametrize("pod_label", ["enabled", None])
def test_excluded_namespaces_are_never_called(
    mwc: dict[str, Any], rendered_policy: Policy, namespace: str, pod_label: str | None
) -> None:
    pod = make_pod(pod_label)
    labels = namespace_labels("enabled")
    assert called_entries(mwc, namespace=namespace, namespace_labels=labels, pod=pod) == []
    decision = select_pod(
        pod,
        namespace=namespace,
        operation="CREATE",
        policy=rendered_policy,
        namespace_labels=labels,
    )
    assert decision.reason == "namespace_excluded", "the server excludes it too"


@pytest.mark.parametrize(
    ("annotations", "reason"),
    [
        pytest.param({"kubernetes.io/config.mirror": "abc"}, "mirror_pod", id="mirror-pod"),
        pytest.param({"cache-injector.io/status": "{}"}, "already_injected", id="already-injected"),
    ],
)
@pytest.mark.parametrize("namespace_label", ["enabled", None])
def test_match_conditions_skip_pods_the_server_would_skip(
    mwc_with_and_without_conditions: tuple[dict[str, Any], dict[str, Any]],
    rendered_policy: Policy,
    annotations: dict[str, str],
    reason: str,
    namespace_label: str | None,
) -> None:
    mwc, mwc_without_conditions = mwc_with_and_without_conditions
    pod = make_pod("enabled", annotations)
    labels = namespace_labels(namespace_label)
    assert called_entries(mwc, namespace="shop", namespace_labels=labels, pod=pod) == []
    # Without matchConditions the server is called, and skips the pod with the same outcome.
    assert (
        len(
            called_entries(
                mwc_without_conditions, namespace="shop", namespace_labels=labels, pod=pod
            )
        )
        == 1
    )
    decision = select_pod(
        pod, namespace="shop", operation="CREATE", policy=rendered_policy, namespace_labels=labels
    )
    assert (decision.inject, decision.reason) == (False, reason)


def test_match_conditions_pass_other_annotations(mwc: dict[str, Any]) -> None:
    pod = make_pod("enabled", {"cache-injector.io/backend": "web:8080", "other": "x"})
    assert called_entries(mwc, namespace="shop", namespace_labels={}, pod=pod) == [POD_ENTRY]


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "CONNECT"])
def test_only_create_is_matched(mwc: dict[str, Any], operation: str) -> None:
    pod = make_pod("enabled")
    labels = namespace_labels("enabled")
    assert (
        called_entries(mwc, namespace="shop", namespace_labels=labels, pod=pod, operation=operation)
        == []
    )


def test_no_pod_ever_matches_both_entries(
    mwc: dict[str, Any], mwc_without_conditions: dict[str, Any]
) -> None:
    namespaces = ["shop", *EXCLUDED]
    annotation_sets: list[dict[str, str]] = [
        {},
        {"kubernetes.io/config.mirror": "x"},
        {"cache-injector.io/status": "{}"},
    ]
    reached: set[str] = set()
    for config, namespace, ns_label, pod_label, extra in itertools.product(
        (mwc, mwc_without_conditions), namespaces, LABEL_VALUES, LABEL_VALUES, annotation_sets
    ):
        pod = make_pod(pod_label, extra)
        called = called_entries(
            config, namespace=namespace, namespace_labels=namespace_labels(ns_label), pod=pod
        )
        assert len(called) <= 1, (namespace, ns_label, pod_label, extra, called)
        reached.update(called)
    # Not vacuous: each entry is the one called for some pod.
    assert reached == {NAMESPACE_ENTRY, POD_ENTRY}


def test_webhook_entries_are_configured_as_designed(mwc: dict[str, Any]) -> None:
    assert [hook["name"] for hook in mwc["webhooks"]] == [NAMESPACE_ENTRY, POD_ENTRY]
    for hook in mwc["webhooks"]:
        assert hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["matchPolicy"] == "Equivalent"
        assert hook["failurePolicy"] == "Ignore"
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert hook["timeoutSeconds"] == 5
        assert hook["rules"] == [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ]
        excluded = next(
            expression["values"]
            for expression in hook["namespaceSelector"]["matchExpressions"]
            if expression["key"] == "kubernetes.io/metadata.name"
        )
        assert excluded == EXCLUDED


@pytest.mark.parametrize(
    ("policy_excluded", "expected"),
    [
        pytest.param([], [*SYSTEM_NAMESPACES, NAMESPACE], id="none"),
        pytest.param(["a", "b"], [*SYSTEM_NAMESPACES, NAMESPACE, "a", "b"], id="adds"),
        pytest.param(
            [NAMESPACE, "kube-system", "a"],
            [*SYSTEM_NAMESPACES, NAMESPACE, "a"],
            id="no-duplicates",
        ),
    ],
)
def test_policy_exclusions_only_add(policy_excluded: list[str], expected: list[str]) -> None:
    mwc = render({"policy": {"excludeNamespaces": policy_excluded}}).one(
        "MutatingWebhookConfiguration"
    )
    for hook in mwc["webhooks"]:
        (names,) = [
            expression["values"]
            for expression in hook["namespaceSelector"]["matchExpressions"]
            if expression["key"] == "kubernetes.io/metadata.name"
        ]
        assert names == expected


def from_kubernetes_syntax(text: str) -> dict[str, Any]:
    """A selector in kubectl's string syntax as the LabelSelector object it means."""
    expressions: list[dict[str, Any]] = []
    for raw in re.findall(r"[^,(]+(?:\([^)]*\))?", text):
        term = raw.strip()
        if match := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", term):
            key, operator, values = match.groups()
            listed = [value.strip() for value in values.split(",")]
            operator = "In" if operator == "in" else "NotIn"
            expressions.append({"key": key, "operator": operator, "values": listed})
        elif "!=" in term:
            key, value = term.split("!=")
            expressions.append({"key": key, "operator": "NotIn", "values": [value]})
        elif "=" in term:
            key, value = term.replace("==", "=").split("=")
            expressions.append({"key": key, "operator": "In", "values": [value]})
        elif term.startswith("!"):
            expressions.append({"key": term[1:], "operator": "DoesNotExist"})
        elif term:
            expressions.append({"key": term, "operator": "Exists"})
    return {"matchExpressions": expressions} if expressions else {}


# Kubernetes' own cases: apimachinery pkg/labels/selector_test.go (TestSelectorMatches, the
# ones LabelSelector can express) and the "Labels and Selectors" concept page.
LABELSET = {"foo": "bar", "baz": "blah"}
KUBERNETES_CASES = [
    ("", {"x": "y"}, True), ("x=y", {"x": "y"}, True), ("x=y,z=w", {"x": "y", "z": "w"}, True),
    ("x!=y,z!=w", {"x": "z", "z": "a"}, True), ("notin=in", {"notin": "in"}, True),
    ("x", {"x": "z"}, True), ("!x", {"y": "z"}, True),
    ("x=z", {}, False), ("x=y", {"x": "z"}, False), ("x=y,z=w", {"x": "w", "z": "w"}, False),
    ("x!=y,z!=w", {"x": "z", "z": "w"}, False), ("x", {"y": "z"}, False),
    ("!x", {"x": "z"}, False),
    ("foo=bar", LABELSET, True), ("baz=blah", LABELSET, True),
    ("foo=bar,baz=blah", LABELSET, True), ("foo=blah", LABELSET, False),
    ("baz=bar", LABELSET, False), ("foo=bar,foobar=bar,baz=blah", LABELSET, False),
    ("environment in (production, qa)", {"environment": "qa"}, True),
    ("environment in (production, qa)", {}, False),
    ("tier notin (frontend, backend)", {}, True),
    ("tier notin (frontend, backend)", {"tier": "backend"}, False),
    ("partition,environment notin (qa)", {"partition": "a", "environment": "prod"}, True),
    ("partition,environment notin (qa)", {"environment": "prod"}, False),
]  # fmt: skip


@pytest.mark.parametrize(("text", "labels", "expected"), KUBERNETES_CASES)
def test_selector_model_agrees_with_kubernetes(
    text: str, labels: dict[str, str], expected: bool
) -> None:
    """The model used above gives Kubernetes' answers, both as matchExpressions and, where
    the selector is only equalities, as matchLabels."""
    selector = from_kubernetes_syntax(text)
    assert selector_matches(selector, labels) is expected
    expressions = selector.get("matchExpressions", [])
    if expressions and all(e["operator"] == "In" and len(e["values"]) == 1 for e in expressions):
        as_labels = {"matchLabels": {e["key"]: e["values"][0] for e in expressions}}
        assert selector_matches(as_labels, labels) is expected


@pytest.mark.parametrize(
    "expression",
    [{"key": "a", "operator": "In", "values": []}, {"key": "a", "operator": "Exists",
                                                   "values": ["1"]}],
)  # fmt: skip
def test_selector_model_refuses_what_the_api_server_refuses(expression: dict[str, Any]) -> None:
    with pytest.raises(AssertionError):
        selector_matches({"matchExpressions": [expression]}, {"a": "1"})


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        pytest.param({}, {"a": "1"}, True, id="empty-matches-all"),
        pytest.param({"matchLabels": {"a": "1"}}, {"a": "1"}, True, id="match-labels"),
        pytest.param({"matchLabels": {"a": "1"}}, {"a": "2"}, False, id="match-labels-differ"),
        pytest.param(
            {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]},
            {},
            True,
            id="not-in-matches-absent",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]},
            {},
            False,
            id="in-needs-the-key",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]},
            {"a": ""},
            False,
            id="does-not-exist",
        ),
    ],
)
def test_selector_model(selector: dict[str, Any], labels: dict[str, str], expected: bool) -> None:
    """The model of the API server's label selectors used above."""
    assert selector_matches(selector, labels) is expected
