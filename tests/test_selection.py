"""Who gets the cache: the label truth table and every skip rule, each with its reason code."""

from __future__ import annotations

import pytest

from tests.conftest import make_pod, policy_from
from webhook.engine.policy import Policy
from webhook.engine.selection import REASONS, select_pod

ENABLED = {"cache-injector.io/inject": "enabled"}
DISABLED = {"cache-injector.io/inject": "disabled"}


def _pod(label: str | None) -> dict[str, object]:
    pod = make_pod()
    labels = pod["metadata"]["labels"]
    del labels["cache-injector.io/inject"]
    if label is not None:
        labels["cache-injector.io/inject"] = label
    return pod


@pytest.mark.parametrize(
    ("pod_label", "namespace_labels", "inject", "reason"),
    [
        pytest.param("enabled", ENABLED, True, "pod_label", id="pod-enabled-ns-enabled"),
        pytest.param("enabled", {}, True, "pod_label", id="pod-enabled-ns-absent"),
        pytest.param("enabled", DISABLED, True, "pod_label", id="pod-enabled-ns-disabled"),
        pytest.param("disabled", ENABLED, False, "label_disabled", id="pod-disabled-ns-enabled"),
        pytest.param("disabled", {}, False, "label_disabled", id="pod-disabled-ns-absent"),
        pytest.param(None, ENABLED, True, "namespace_label", id="pod-absent-ns-enabled"),
        pytest.param(None, {}, False, "not_selected", id="pod-absent-ns-absent"),
        pytest.param(None, DISABLED, False, "not_selected", id="pod-absent-ns-disabled"),
        pytest.param("true", {}, False, "not_selected", id="pod-other-value-ns-absent"),
        pytest.param(None, None, True, "namespace_label", id="webhook-called-through-namespace"),
        pytest.param("disabled", None, False, "label_disabled", id="webhook-pod-disabled"),
    ],
)
def test_label_truth_table(
    pod_label: str | None,
    namespace_labels: dict[str, str] | None,
    inject: bool,
    reason: str,
    policy: Policy,
) -> None:
    decision = select_pod(
        _pod(pod_label),
        namespace="shop",
        operation="CREATE",
        policy=policy,
        namespace_labels=namespace_labels,
    )
    assert (decision.inject, decision.reason) == (inject, reason)
    assert decision.message and "?" not in decision.message


EXCLUDING = policy_from({"excludeNamespaces": ["legacy"], "nativeSidecars": False})


@pytest.mark.parametrize(
    ("pod", "namespace", "operation", "owner", "policy_", "reason"),
    [
        pytest.param(make_pod(), "shop", "UPDATE", None, None, "not_create", id="update"),
        pytest.param(make_pod(), "shop", "DELETE", None, None, "not_create", id="delete"),
        pytest.param(make_pod(), "kube-system", "CREATE", None, None, "namespace_excluded",
                     id="kube-system"),
        pytest.param(make_pod(), "kube-node-lease", "CREATE", None, None, "namespace_excluded",
                     id="kube-node-lease"),
        pytest.param(make_pod(), "legacy", "CREATE", None, EXCLUDING, "namespace_excluded",
                     id="policy-excluded"),
        pytest.param(make_pod(spec={"hostNetwork": True}), "shop", "CREATE", None, None,
                     "host_network", id="host-network"),
        pytest.param(make_pod(spec={"os": {"name": "windows"}}), "shop", "CREATE", None, None,
                     "windows_pod", id="windows-pod"),
        pytest.param(make_pod(annotations={"cache-injector.io/status": "{}"}), "shop", "CREATE",
                     None, None, "already_injected", id="already-injected"),
        pytest.param(make_pod(annotations={"kubernetes.io/config.mirror": "x"}), "shop",
                     "CREATE", None, None, "mirror_pod", id="mirror-pod"),
        pytest.param(make_pod(), "shop", "CREATE", "Job", EXCLUDING,
                     "job_without_native_sidecars", id="job-regular-sidecars"),
        pytest.param(make_pod(labels={"batch.kubernetes.io/job-name": "j"}), "shop", "CREATE",
                     None, EXCLUDING, "job_without_native_sidecars", id="job-label"),
        pytest.param(make_pod(), "shop", "CREATE", "CronJob", None, "pod_label",
                     id="cronjob-native-sidecars-injected"),
    ],
)  # fmt: skip
def test_skip_rules(
    pod: dict[str, object],
    namespace: str,
    operation: str,
    owner: str | None,
    policy_: Policy | None,
    reason: str,
    policy: Policy,
) -> None:
    decision = select_pod(
        pod, namespace=namespace, operation=operation, policy=policy_ or policy, owner_kind=owner
    )
    assert decision.reason == reason
    assert decision.inject == (reason == "pod_label")


def test_job_pod_owned_by_reference_is_skipped_without_native_sidecars() -> None:
    pod = make_pod()
    pod["metadata"]["ownerReferences"] = [{"kind": "Job", "name": "nightly"}]
    decision = select_pod(pod, namespace="shop", operation="CREATE", policy=EXCLUDING)
    assert decision.reason == "job_without_native_sidecars"


def test_every_reason_has_a_sentence_without_placeholders_left() -> None:
    for code, sentence in REASONS.items():
        assert code.islower() and " " not in code
        assert sentence and not sentence.endswith(".")
