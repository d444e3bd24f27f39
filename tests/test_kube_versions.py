"""Injected pods of both sidecar modes are valid (kubernetes-validate, strict) on the oldest
Kubernetes each mode claims and on the newest schema kubernetes-validate ships: native
sidecars 1.30+ (restartPolicy Always init containers, preStop sleep action), regular sidecars
1.28+ (preStop exec sleep)."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest

from tests.conftest import PodFactory, policy_from
from webhook.engine import names
from webhook.engine.inject import inject_pod
from webhook.engine.render import Templates

MODES = {
    "native": (True, ("1.30.0", "1.37.0")),
    "fallback": (False, ("1.28.0", "1.37.0")),
}
EVERY_OPTION = {
    "cache-injector.io/sticky-sessions": "true",
    "cache-injector.io/health-path": "/healthz",
    "cache-injector.io/drain-seconds": "7",
    "cache-injector.io/cache-size": "256Mi",
}
IMAGES = {
    "haproxy": "registry.example/mirror/haproxy:3.4@sha256:" + "ab" * 32,
    "varnish": "registry.example/mirror/varnish:8.0",
    "pullPolicy": "Always",
    "pullSecrets": ["mirror"],
}


def injected(pod: dict[str, Any], native: bool, templates: Templates) -> dict[str, Any]:
    policy = policy_from({"nativeSidecars": native, "images": IMAGES})
    outcome = inject_pod(
        pod, namespace="shop", operation="CREATE", policy=policy, templates=templates
    )
    assert outcome.injected, outcome
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(pod), copy.deepcopy(outcome.patch))
    return result


@pytest.mark.parametrize(
    ("mode", "version"),
    [pytest.param(m, v, id=f"{m}-{v}") for m, (_, versions) in MODES.items() for v in versions],
)
def test_injected_pod_and_deployment_validate(
    mode: str, version: str, pod_factory: PodFactory, templates: Templates
) -> None:
    native = MODES[mode][0]
    pod = injected(pod_factory(annotations=EVERY_OPTION), native, templates)
    kubernetes_validate.validate(pod, version, strict=True)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": pod["metadata"], "spec": pod["spec"]},
        },
    }
    kubernetes_validate.validate(deployment, version, strict=True)

    group = "initContainers" if native else "containers"
    varnish = next(c for c in pod["spec"][group] if c["name"] == names.CONTAINER_VARNISH)
    if native:
        # The sleep action: GA-by-default from 1.30, dropped on 1.29 (the reason for 1.30).
        assert varnish["lifecycle"]["preStop"] == {"sleep": {"seconds": 7}}
        assert varnish["restartPolicy"] == "Always"
    else:
        assert varnish["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "7"]}}
        assert "restartPolicy" not in varnish


def test_validation_is_strict_enough_to_fail() -> None:
    """A field the schema does not know fails: the checks above can fail."""
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "x"},
                "spec": {"containers": [{"name": "a", "image": "a", "preStop": {}}]},
            },
            "1.28.0",
            strict=True,
        )
