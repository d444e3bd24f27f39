"""AdmissionReviews built as the API server builds them, and pods from the corpus."""

from __future__ import annotations

import base64
import copy
import itertools
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webhook.engine.workloads import find_workloads, split_documents

CORPUS = Path(__file__).resolve().parent.parent / "corpus"

_uids = itertools.count()


def new_uid() -> str:
    return str(uuid.UUID(int=next(_uids) + (os.getpid() << 64)))


def pod_review(
    pod: dict[str, Any] | None,
    *,
    namespace: str = "shop",
    operation: str = "CREATE",
    uid: str | None = None,
    dry_run: bool = False,
    old: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An AdmissionReview as the API server sends it for a Pod."""
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    metadata = (pod or old or {}).get("metadata") or {}
    options_kind = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions"}.get(
        operation, "DeleteOptions"
    )
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or new_uid(),
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": metadata.get("name", ""),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "object": pod,
            "oldObject": old,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": options_kind},
        },
    }


def make_pod(
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    name: str | None = None,
    generate_name: str | None = "web-5d8f7c9b6-",
    ports: Sequence[int] = (8000,),
) -> dict[str, Any]:
    """A Pod as a ReplicaSet creates it: generateName, no namespace, labelled for us."""
    metadata: dict[str, Any] = {
        "labels": {"app": "web", "cache-injector.io/inject": "enabled", **(labels or {})},
    }
    if annotations:
        metadata["annotations"] = dict(annotations)
    if name:
        metadata["name"] = name
    elif generate_name:
        metadata["generateName"] = generate_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "nginx:1.27",
                    "ports": [{"containerPort": port, "protocol": "TCP"} for port in ports],
                }
            ]
        },
    }


OWNER_KIND = {
    "Deployment": "ReplicaSet",
    "CronJob": "Job",
}


@dataclass(frozen=True)
class CorpusPod:
    """A pod as the API server would see it, created by one corpus workload."""

    id: str
    namespace: str
    pod: dict[str, Any]


def corpus_pods() -> list[CorpusPod]:
    """Every pod template in the corpus, as the pod its controller would create: labelled
    enabled, generateName, no metadata.namespace, an owner reference."""
    found: list[CorpusPod] = []
    for path in sorted(CORPUS.glob("*.yaml")):
        documents = split_documents(path.read_text(encoding="utf-8"))
        for workload in find_workloads(documents):
            template = copy.deepcopy(workload.template)
            metadata = dict(template.get("metadata") or {})
            metadata.pop("namespace", None)
            metadata.pop("name", None)
            labels = dict(metadata.get("labels") or {})
            labels["cache-injector.io/inject"] = "enabled"
            metadata["labels"] = labels
            owner = workload.kind
            if owner == "Pod":
                metadata["name"] = workload.name
            else:
                metadata["generateName"] = f"{workload.name.rstrip('-')}-"
                metadata["ownerReferences"] = [
                    {
                        "apiVersion": "apps/v1",
                        "kind": OWNER_KIND.get(owner, owner),
                        "name": workload.name.rstrip("-"),
                        "uid": "00000000-0000-0000-0000-000000000001",
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ]
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": metadata,
                "spec": template.get("spec") or {},
            }
            case = f"{path.stem.split('__', 1)[-1]}/{workload.kind}/{workload.name}"
            found.append(CorpusPod(case, workload.namespace or "default", json_safe(pod)))
    return found


def json_safe(data: Any) -> Any:
    """YAML may hold dates and other non-JSON scalars; the API server sends JSON."""
    return json.loads(json.dumps(data, default=str))


def decoded_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    assert response.get("patchType") == "JSONPatch", response
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"]))
    return ops
