"""Two releases side by side, the default revision and "canary", rendered for real: over every
combination of namespace labels (inject, rev), pod label and annotations, each pod is matched
by at most one webhook entry of both configurations, and the engine of each revision (with
its release's rendered policy) injects exactly the pods its configuration matches."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.chart.chart import NAMESPACE, SYSTEM_NAMESPACES, render
from tests.chart.test_selectors import LABEL_VALUES, called_entries, make_pod
from webhook.engine import names
from webhook.engine.policy import Policy, load_policy_text
from webhook.engine.selection import select_pod

CANARY_NAMESPACE = "cache-injector-canary"
REV_VALUES = (None, "canary", "gone", "")  # "" : the label present but empty


def release(revision: str, name: str, namespace: str) -> tuple[dict[str, Any], Policy]:
    rendered = render({"revision": revision} if revision else {}, name=name, namespace=namespace)
    policy = load_policy_text(rendered.policy_text(), f"{name} ConfigMap")
    return rendered.one("MutatingWebhookConfiguration"), policy


@pytest.fixture(scope="module")
def releases() -> dict[str, tuple[dict[str, Any], Policy]]:
    return {
        names.DEFAULT_REVISION: release("", "ci", NAMESPACE),
        "canary": release("canary", "canary", CANARY_NAMESPACE),
    }


def test_each_pod_is_matched_by_at_most_one_revision(
    releases: dict[str, tuple[dict[str, Any], Policy]],
) -> None:
    namespaces = ["shop", *SYSTEM_NAMESPACES, NAMESPACE, CANARY_NAMESPACE]
    annotation_sets: list[dict[str, str]] = [
        {},
        {"kubernetes.io/config.mirror": "x"},
        {names.ANNOTATION_STATUS: "{}"},
    ]
    checked = matched = 0
    per_revision = dict.fromkeys(releases, 0)
    for namespace, ns_inject, ns_rev, pod_label, extra in itertools.product(
        namespaces, LABEL_VALUES, REV_VALUES, LABEL_VALUES, annotation_sets
    ):
        labels: dict[str, str] = {}
        if ns_inject is not None:
            labels[names.LABEL_INJECT] = ns_inject
        if ns_rev is not None:
            labels[names.LABEL_REV] = ns_rev
        pod = make_pod(pod_label, extra)
        called = {
            revision: called_entries(mwc, namespace=namespace, namespace_labels=labels, pod=pod)
            for revision, (mwc, _) in releases.items()
        }
        total = sum(len(entries) for entries in called.values())
        assert total <= 1, (namespace, labels, pod_label, extra, called)
        for revision, (_, policy) in releases.items():
            decision = select_pod(
                pod,
                namespace=namespace,
                operation="CREATE",
                policy=policy,
                namespace_labels=labels,
                revision=revision,
            )
            # The engine of that revision, given the labels, injects iff its webhook is called.
            assert decision.inject == bool(called[revision]), (
                revision, namespace, labels, pod_label, extra, decision.reason,
            )  # fmt: skip
            per_revision[revision] += bool(called[revision])
        matched += total
        checked += 1
    assert checked == len(namespaces) * len(LABEL_VALUES) ** 2 * len(REV_VALUES) * 3
    # Both revisions do inject something: the matrix is not vacuous.
    assert all(count > 0 for count in per_revision.values()), per_revision
    print(f"revision matrix: {checked} combinations, {matched} matched, {per_revision}")


def test_a_named_revision_is_passed_to_the_server_and_labelled() -> None:
    rendered = render({"revision": "canary"}, name="canary", namespace=CANARY_NAMESPACE)
    args = rendered.deployment_pod()["containers"][0]["args"]
    assert "--revision=canary" in args
    mwc = rendered.one("MutatingWebhookConfiguration")
    assert mwc["metadata"]["labels"][names.LABEL_REV] == "canary"
    assert [hook["name"] for hook in mwc["webhooks"]] == ["revision.cache-injector.io"]
    default = render({})
    assert not [a for a in default.deployment_pod()["containers"][0]["args"] if "revision" in a]
    assert default.one("MutatingWebhookConfiguration")["metadata"]["labels"][names.LABEL_REV] == (
        "default"
    )


@pytest.mark.parametrize("bad", ["Canary", "-x", "a_b", "x" * 64])
def test_a_revision_must_be_a_label_value(bad: str) -> None:
    with pytest.raises(Exception, match="revision"):
        render({"revision": bad}, name="canary", namespace=CANARY_NAMESPACE)
