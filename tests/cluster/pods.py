"""Pods as the API server would return them (injected by the real engine, with a status), the
namespace's purge-token Secret, and what `purge -o json` reports per pod."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch

from webhook.engine import names
from webhook.engine.inject import inject_pod
from webhook.engine.policy import Policy, default_policy
from webhook.engine.render import load_templates


def pod(
    name: str,
    *,
    namespace: str = "shop",
    labels: dict[str, str] | None = None,
    injected: bool = True,
    phase: str = "Running",
    ready: bool = True,
    ip: str = "10.0.0.1",
    policy: Policy | None = None,
    owner: tuple[str, str] | None = None,
    image: str = "example/web:1",
) -> dict[str, Any]:
    """A pod of the Deployment `web`, injected with `policy` (default: the embedded one)."""
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": "web", **(labels or {})},
            "annotations": {"cache-injector.io/backend": "app:8080"},
            "uid": f"uid-{name}",
        },
        "spec": {"containers": [{"name": "web", "image": image}]},
    }
    if owner:
        manifest["metadata"]["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": owner[0],
                "name": owner[1],
                "controller": True,
                "uid": f"uid-{owner[1]}",
            }
        ]
    if injected:
        outcome = inject_pod(
            manifest,
            namespace=namespace,
            operation="CREATE",
            policy=policy or default_policy(),
            templates=load_templates(),
        )
        assert outcome.injected, outcome.decision
        manifest = jsonpatch.apply_patch(manifest, copy.deepcopy(outcome.patch))
    manifest["status"] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if phase == "Running":
        manifest["status"]["podIP"] = ip
    return manifest


def inject_as(manifest: dict[str, Any], revision: str, labels: dict[str, str]) -> dict[str, Any]:
    """An uninjected pod injected by the injector of `revision` (namespace labels given)."""
    status = manifest.pop("status")
    outcome = inject_pod(
        manifest,
        namespace=manifest["metadata"]["namespace"],
        operation="CREATE",
        policy=default_policy(),
        templates=load_templates(),
        namespace_labels=labels,
        revision=revision,
    )
    assert outcome.injected, outcome.decision
    injected: dict[str, Any] = jsonpatch.apply_patch(manifest, copy.deepcopy(outcome.patch))
    injected["status"] = status
    return injected


def purge_secret(token: str, namespace: str = "shop") -> dict[str, Any]:
    """The namespace's purge-token Secret, as `purge` reads it without --token-file."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": names.PURGE_SECRET, "namespace": namespace},
        "data": {names.PURGE_SECRET_KEY: base64.b64encode(token.encode()).decode()},
    }


def purge_records(stdout: str) -> dict[str, dict[str, Any]]:
    """`purge -o json`'s result per pod, by pod name ({} when it printed nothing)."""
    pods: list[dict[str, Any]] = json.loads(stdout)["pods"] if stdout else []
    return {r["pod"]: r for r in pods}
