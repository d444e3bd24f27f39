"""`uninject` is the exact inverse of `inject`: over every corpus file (both sidecar modes) and
over the shapes injection has to remember (replaced user containers, created or null maps,
the autoscaler's list as the user spelled it, a user volume with one of our names)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from click.testing import CliRunner

from tests.conftest import CORPUS
from webhook.cli import main
from webhook.engine import names
from webhook.engine.inject import inject_pod
from webhook.engine.patch import read_status, uninject
from webhook.engine.policy import load_policy_text
from webhook.engine.render import load_templates
from webhook.engine.workloads import dump_document, split_documents

FILES = sorted(CORPUS.glob("*.yaml"))
POLICIES = {
    "native": "defaults:\n  backend: app:8080\n",
    "regular": "nativeSidecars: false\ndefaults:\n  backend: app:8080\n",
}
SELECT = ["--namespace-labels", "cache-injector.io/inject=enabled"]


def cli(*args: str, stdin: str) -> str:
    result = CliRunner().invoke(main, list(args), input=stdin)
    assert result.exit_code == 0, result.output
    return result.stdout


def canonical(text: str, injected: str) -> str:
    """The file as `inject` writes documents it changes: untouched ones byte for byte, the
    others re-serialised (inject drops their comments and layout; nothing can restore those)."""
    out = []
    for before, after in zip(split_documents(text), split_documents(injected), strict=True):
        before.changed = before.text != after.text
        out.append(dump_document(before))
    return "".join(out)


@pytest.fixture(scope="module")
def policy_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("policies")
    files = {}
    for mode, text in POLICIES.items():
        files[mode] = directory / f"{mode}.yaml"
        files[mode].write_text(text)
    return files


def test_round_trip_over_the_corpus(policy_files: dict[str, Path]) -> None:
    counts = {"files": 0, "injected_docs": 0, "untouched_docs": 0}
    for mode, policy in policy_files.items():
        for path in FILES:
            original = path.read_text()
            injected = cli("inject", "-f", "-", "--policy", str(policy), *SELECT, stdin=original)
            restored = cli("uninject", "-q", "-f", "-", stdin=injected)
            expected = canonical(original, injected)
            assert restored == expected, f"{mode} {path.name}"
            # Byte for byte from the canonical form: inject -> uninject gives it back exactly.
            again = cli("inject", "-f", "-", "--policy", str(policy), *SELECT, stdin=expected)
            assert again == injected, f"{mode} {path.name}: inject of the canonical form"
            assert cli("uninject", "-q", "-f", "-", stdin=again) == expected
            # The data equals the original's, documents untouched by inject are the same bytes.
            for before, after in zip(
                split_documents(original), split_documents(restored), strict=True
            ):
                assert after.data == before.data, f"{mode} {path.name} doc {before.number}"
                if json.dumps(after.data) != json.dumps(before.data):
                    raise AssertionError(f"{path.name}: key order changed")
                unchanged = before.text == after.text
                counts["untouched_docs" if unchanged else "injected_docs"] += 1
            counts["files"] += 1
    print(f"uninject round trip: {counts}")
    assert counts["files"] == 2 * len(FILES)
    assert counts["injected_docs"] > len(FILES), counts  # it did inject, in both modes


def inject_then_uninject(pod: dict[str, Any], policy_text: str = POLICIES["native"]) -> list[str]:
    policy = load_policy_text(policy_text, "test")
    outcome = inject_pod(
        pod, namespace="shop", operation="CREATE", policy=policy, templates=load_templates()
    )
    assert outcome.injected, outcome.decision
    injected = jsonpatch.apply_patch(pod, copy.deepcopy(outcome.patch))
    assert read_status(injected) is not None
    # Through JSON, as a status read back from the API server would be.
    injected = json.loads(json.dumps(injected))
    removed = uninject(injected)
    assert removed
    assert json.dumps(injected) == json.dumps(pod), "not restored exactly (values or key order)"
    assert uninject(injected) == [], "a second uninject finds nothing"
    return removed


def base_pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": {names.LABEL_INJECT: "enabled"}},
        "spec": {"containers": [{"name": "app", "image": "app", "ports": [{"containerPort": 80}]}]},
    }


@pytest.mark.parametrize("mode", list(POLICIES))
def test_replaced_user_container_comes_back_at_its_place(mode: str) -> None:
    pod = base_pod()
    user = {"name": names.CONTAINER_VARNISH, "resources": {"limits": {"memory": "512Mi"}}}
    pod["spec"]["containers"].insert(0, user)
    inject_then_uninject(pod, POLICIES[mode])


@pytest.mark.parametrize(
    "shape",
    ["annotations-null", "annotations-empty", "init-null", "init-empty", "no-metadata"],
)
def test_created_and_null_containers_are_restored(shape: str) -> None:
    pod = base_pod()
    if shape == "annotations-null":
        pod["metadata"]["annotations"] = None
    elif shape == "annotations-empty":
        pod["metadata"]["annotations"] = {}
    elif shape == "init-null":
        pod["spec"]["initContainers"] = None
    elif shape == "init-empty":
        pod["spec"]["initContainers"] = []
    else:
        del pod["metadata"]
    policy = POLICIES["native"]
    if shape == "no-metadata":  # selected by the namespace then; the policy names the backend
        policy_obj = load_policy_text(policy, "test")
        outcome = inject_pod(
            pod,
            namespace="shop",
            operation="CREATE",
            policy=policy_obj,
            templates=load_templates(),
        )
        injected = jsonpatch.apply_patch(pod, copy.deepcopy(outcome.patch))
        assert uninject(injected) and injected == pod
        return
    inject_then_uninject(pod, policy)


def test_autoscaler_list_keeps_the_users_spelling_and_entries() -> None:
    pod = base_pod()
    key = names.ANNOTATION_SAFE_TO_EVICT_LOCAL_VOLUMES
    pod["metadata"]["annotations"] = {key: " data , cache-varnish-tmp", "other": "x"}
    pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    inject_then_uninject(pod)


def test_a_user_volume_with_our_name_is_kept() -> None:
    pod = base_pod()
    pod["spec"]["volumes"] = [{"name": names.VOLUME_VARNISH_TMP, "emptyDir": {"medium": "Memory"}}]
    inject_then_uninject(pod)


@pytest.mark.parametrize("mode", list(POLICIES))
def test_the_volume_that_keeps_the_api_token_out_goes_too(mode: str) -> None:
    """A pod as the API server stores it (the ServiceAccount plugin ran before the webhook):
    our empty volume at the token's path goes, the pod's token volume and mount stay."""
    pod = base_pod()
    token = {"name": "kube-api-access-x2k9p", "projected": {"sources": []}}
    pod["spec"]["volumes"] = [token]
    pod["spec"]["containers"][0]["volumeMounts"] = [
        {"name": token["name"], "mountPath": names.SERVICE_ACCOUNT_DIR, "readOnly": True}
    ]
    removed = inject_then_uninject(pod, POLICIES[mode])
    assert f"volumes/{names.VOLUME_NO_API_TOKEN}" in removed


def test_a_status_we_cannot_read_is_a_clear_error() -> None:
    pod = base_pod()
    pod["metadata"]["annotations"] = {names.ANNOTATION_STATUS: "not json"}
    result = CliRunner().invoke(main, ["uninject", "-f", "-"], input=json.dumps(pod))
    assert result.exit_code == 2
    assert "doc 1 (Pod/web)" in result.output and names.ANNOTATION_STATUS in result.output
