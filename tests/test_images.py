"""Sidecar images from real registries: digest pins validated, the policy's imagePullPolicy on
both sidecars, its imagePullSecrets merged into the pod's (never duplicated or reordered), and
`explain` showing what the kubelet would pull."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest
from click.testing import CliRunner

from tests.conftest import PodFactory, policy_from
from webhook.cli import main
from webhook.engine import names
from webhook.engine.errors import InvalidPolicy
from webhook.engine.inject import inject_pod
from webhook.engine.patch import uninject
from webhook.engine.policy import Policy
from webhook.engine.render import Templates

DIGEST = "sha256:" + "0123456789abcdef" * 4
MIRROR = {
    "haproxy": f"registry.example:5000/mirror/haproxy:3.4@{DIGEST}",
    "varnish": f"registry.example:5000/mirror/varnish@{DIGEST}",
    "pullPolicy": "IfNotPresent",
    "pullSecrets": ["mirror-cred", "shared-cred"],
}


def injected(pod: dict[str, Any], policy: Policy, templates: Templates) -> dict[str, Any]:
    outcome = inject_pod(
        pod, namespace="shop", operation="CREATE", policy=policy, templates=templates
    )
    assert outcome.injected, outcome
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(pod), copy.deepcopy(outcome.patch))
    return result


def sidecars(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    every = spec.get("initContainers", []) + spec["containers"]
    return [c for c in every if c["name"] in names.CONTAINERS]


@pytest.mark.parametrize("native", [True, False], ids=["native", "fallback"])
def test_mirror_images_pull_policy_and_secrets(
    native: bool, pod_factory: PodFactory, templates: Templates
) -> None:
    policy = policy_from({"images": MIRROR, "nativeSidecars": native})
    pod = injected(pod_factory(), policy, templates)
    assert [(c["image"], c["imagePullPolicy"]) for c in sidecars(pod)] == [
        (MIRROR["haproxy"], "IfNotPresent"),
        (MIRROR["varnish"], "IfNotPresent"),
    ]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "mirror-cred"}, {"name": "shared-cred"}]


def test_default_policy_leaves_pull_settings_to_kubernetes(
    pod_factory: PodFactory, policy: Policy, templates: Templates
) -> None:
    pod = injected(pod_factory(), policy, templates)
    assert all("imagePullPolicy" not in c for c in sidecars(pod))
    assert "imagePullSecrets" not in pod["spec"]


@pytest.mark.parametrize(
    ("own", "expected"),
    [
        pytest.param([], ["mirror-cred", "shared-cred"], id="empty-list"),
        pytest.param(
            ["own", "shared-cred"], ["own", "shared-cred", "mirror-cred"], id="one-shared"
        ),
        pytest.param(
            ["shared-cred", "mirror-cred"], ["shared-cred", "mirror-cred"], id="all-there"
        ),
        pytest.param(["z", "a"], ["z", "a", "mirror-cred", "shared-cred"], id="order-kept"),
    ],
)
def test_pull_secrets_merge_with_the_pods_own(
    own: list[str], expected: list[str], pod_factory: PodFactory, templates: Templates
) -> None:
    policy = policy_from({"images": MIRROR})
    pod = pod_factory(spec={"imagePullSecrets": [{"name": name} for name in own]})
    after = injected(pod, policy, templates)
    assert [entry["name"] for entry in after["spec"]["imagePullSecrets"]] == expected


@pytest.mark.parametrize(
    "image",
    [
        "haproxy:3.4",
        "haproxy",
        f"haproxy@{DIGEST}",
        f"haproxy:3.4@{DIGEST}",
        "registry.example/team/haproxy:3.4",
        "localhost:5000/haproxy:3.4",
        f"[fd00::1]:5000/mirror/haproxy@{DIGEST}",
    ],
)
def test_valid_image_references(image: str) -> None:
    assert policy_from({"images": {"haproxy": image}}).model.images.haproxy == image


@pytest.mark.parametrize(
    ("image", "says"),
    [
        ("haproxy@sha256:abc", "not sha256: followed by 64 lowercase hex digits"),
        ("haproxy@sha256:" + "A" * 64, "not sha256: followed by 64 lowercase hex digits"),
        ("haproxy@sha512:" + "a" * 128, "not sha256: followed by 64 lowercase hex digits"),
        ("haproxy@" + "a" * 64, "not sha256: followed by 64 lowercase hex digits"),
        ("HAProxy:3.4", "an image reference"),
        ("haproxy 3.4", "an image reference"),
        ("", "an image reference"),
        ("haproxy:", "an image reference"),
    ],
)
def test_invalid_image_references_name_field_value_and_form(image: str, says: str) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        policy_from({"images": {"varnish": image}})
    (problem,) = caught.value.problems
    assert problem.startswith(f"images.varnish: {json.dumps(image)}: ")
    assert says in problem


@pytest.mark.parametrize(
    ("secrets", "problem"),
    [
        (["Bad_Name"], 'images.pullSecrets.0: "Bad_Name": a Secret name'),
        (["a", "a"], 'images.pullSecrets.1: "a": listed twice'),
    ],
)
def test_invalid_pull_secrets(secrets: list[str], problem: str) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        policy_from({"images": {"pullSecrets": secrets}})
    assert caught.value.problems[0].startswith(problem)


def test_invalid_pull_policy_is_named() -> None:
    with pytest.raises(InvalidPolicy) as caught:
        policy_from({"images": {"pullPolicy": "Sometimes"}})
    assert caught.value.problems[0].startswith('images.pullPolicy: "Sometimes":')


def test_explain_shows_the_images_a_pod_would_get(tmp_path: Any) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps({"images": MIRROR}))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "labels": {"cache-injector.io/inject": "enabled"},
            "annotations": {"cache-injector.io/backend": "app:8080"},
        },
        "spec": {"imagePullSecrets": [{"name": "mirror-cred"}], "containers": [{"name": "a"}]},
    }
    runner = CliRunner()
    result = runner.invoke(
        main, ["explain", "-f", "-", "--policy", str(policy), "-o", "json"], input=json.dumps(pod)
    )
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.output)
    assert record["images"] == {
        "containers": [
            {
                "name": "cache-haproxy",
                "image": MIRROR["haproxy"],
                "imagePullPolicy": "IfNotPresent",
            },
            {
                "name": "cache-varnish",
                "image": MIRROR["varnish"],
                "imagePullPolicy": "IfNotPresent",
            },
        ],
        "addedImagePullSecrets": ["shared-cred"],
    }
    text = runner.invoke(
        main, ["explain", "-f", "-", "--policy", str(policy)], input=json.dumps(pod)
    )
    assert f"cache-haproxy={MIRROR['haproxy']} (pull IfNotPresent)" in text.output
    assert "imagePullSecrets added: shared-cred" in text.output


@pytest.mark.parametrize(
    "own",
    [
        pytest.param(None, id="no-list"),
        pytest.param([], id="empty-list"),
        pytest.param(["own", "shared-cred"], id="one-shared"),
    ],
)
def test_uninject_takes_out_exactly_the_pull_secrets_it_added(
    own: list[str] | None, pod_factory: PodFactory, templates: Templates
) -> None:
    policy = policy_from({"images": MIRROR})
    pod = pod_factory(
        spec={} if own is None else {"imagePullSecrets": [{"name": name} for name in own]}
    )
    after = injected(pod, policy, templates)
    removed = uninject(after)
    assert after == pod
    assert [line for line in removed if line.startswith("imagePullSecrets/")] == [
        f"imagePullSecrets/{name}" for name in MIRROR["pullSecrets"] if name not in (own or [])
    ]
