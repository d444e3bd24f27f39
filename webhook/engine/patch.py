"""Build the JSON patch (RFC 6902) that turns a pod into the injected pod, and its inverse.

Owns: the operations, built directly from the pod's shape — no deep copy and diff — with
RFC 6901 escaping of keys; the status annotation that makes re-injection a no-op and records
everything `uninject` needs to restore the pod exactly (what was added, what was created,
what was replaced); and `uninject` itself.
Does not: decide what the containers contain (builder.py) or whether to inject.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from .. import __version__
from . import names

Op = dict[str, Any]


def escape(key: str) -> str:
    """A JSON pointer reference token (RFC 6901): `~` -> `~0`, `/` -> `~1`."""
    return key.replace("~", "~0").replace("/", "~1")


def _annotation_ops(metadata: Mapping[str, Any], added: Mapping[str, str]) -> list[Op]:
    existing = metadata.get("annotations")
    if not isinstance(existing, dict):
        return [{"op": "add", "path": "/metadata/annotations", "value": dict(added)}]
    return [
        {"op": "add", "path": f"/metadata/annotations/{escape(key)}", "value": value}
        for key, value in added.items()
    ]


def _listed(value: Any) -> list[str]:
    """The autoscaler's safe-to-evict list: we merge into it (never overwrite it)."""
    return [v.strip() for v in str(value or "").split(",") if v.strip()]


def build_patch(
    pod: Mapping[str, Any],
    *,
    containers: Sequence[Mapping[str, Any]],
    volumes: Sequence[Mapping[str, Any]],
    annotations: Mapping[str, str],
    replaced: Mapping[str, tuple[str, int]],
    native: bool,
    config_hash: str,
    revision: str = names.DEFAULT_REVISION,
    pull_secrets: Sequence[str] = (),
) -> list[Op]:
    """The ops, in an order that applies cleanly: removals (highest index first), then adds.

    `replaced` names user-declared containers (group, index) that `containers` supersede.
    `annotations` are our written annotations but the status, which is built here because it
    records what these ops add, create and replace. `pull_secrets` (the policy's) are
    appended to the pod's imagePullSecrets, but for names the pod already lists.
    """
    spec: Mapping[str, Any] = pod.get("spec") or {}
    metadata: Mapping[str, Any] = pod.get("metadata") or {}
    ops: list[Op] = []
    created: list[str] = []
    nulls: list[str] = []

    def creating(pointer: str, parent: Mapping[str, Any], key: str) -> None:
        created.append(pointer)
        if key in parent and parent[key] is None:
            nulls.append(pointer)

    for parent in ("metadata", "spec"):
        if not isinstance(pod.get(parent), dict):
            creating(f"/{parent}", pod, parent)
            ops.append({"op": "add", "path": f"/{parent}", "value": {}})
    restore: list[dict[str, Any]] = []
    for group, index in sorted(replaced.values(), key=lambda item: -item[1]):
        ops.append({"op": "remove", "path": f"/spec/{group}/{index}"})
        restore.append({"group": group, "index": index, "container": spec[group][index]})

    user_volumes = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    new_volumes = [v for v in volumes if v["name"] not in user_volumes]
    evictable = [v["name"] for v in new_volumes if "emptyDir" in v]
    status: dict[str, Any] = {
        "version": __version__,
        "containers": [c["name"] for c in containers],
        "volumes": [v["name"] for v in new_volumes],
        "configHash": config_hash,
        "revision": revision,
        "annotations": sorted([*annotations, names.ANNOTATION_STATUS]),
    }
    evict_value = None
    evict_key = names.ANNOTATION_SAFE_TO_EVICT_LOCAL_VOLUMES
    if evictable:
        before = (metadata.get("annotations") or {}).get(evict_key)
        listed = _listed(before)
        status["evict"] = {"added": [v for v in evictable if v not in listed]}
        if before is not None:
            status["evict"]["before"] = before
        evict_value = ",".join(listed + status["evict"]["added"])
    if not isinstance(metadata.get("annotations"), dict):
        creating("/metadata/annotations", metadata, "annotations")

    container_ops: list[Op] = []
    if native:
        # Native sidecars start first, before the pod's own init containers.
        if "initContainers" in spec and isinstance(spec["initContainers"], list):
            container_ops = [
                {"op": "add", "path": f"/spec/initContainers/{i}", "value": dict(c)}
                for i, c in enumerate(containers)
            ]
        else:
            creating("/spec/initContainers", spec, "initContainers")
            container_ops = [
                {
                    "op": "add",
                    "path": "/spec/initContainers",
                    "value": [dict(c) for c in containers],
                }
            ]
    else:
        container_ops = [
            {"op": "add", "path": "/spec/containers/-", "value": dict(c)} for c in containers
        ]

    volume_ops: list[Op] = []
    if new_volumes:
        if isinstance(spec.get("volumes"), list):
            volume_ops = [
                {"op": "add", "path": "/spec/volumes/-", "value": dict(v)} for v in new_volumes
            ]
        else:
            creating("/spec/volumes", spec, "volumes")
            volume_ops = [
                {"op": "add", "path": "/spec/volumes", "value": [dict(v) for v in new_volumes]}
            ]
    pull_ops: list[Op] = []
    if pull_secrets:
        # After the pod's own, in the policy's order; the pod's entries never move (the
        # kubelet tries them in order) and a name already listed is not repeated.
        own = spec.get("imagePullSecrets")
        if isinstance(own, list):
            own_names = {entry.get("name") for entry in own if isinstance(entry, dict)}
            added = [name for name in pull_secrets if name not in own_names]
            pull_ops = [
                {"op": "add", "path": "/spec/imagePullSecrets/-", "value": {"name": name}}
                for name in added
            ]
        else:
            creating("/spec/imagePullSecrets", spec, "imagePullSecrets")
            added = list(pull_secrets)
            pull_ops = [
                {
                    "op": "add",
                    "path": "/spec/imagePullSecrets",
                    "value": [{"name": name} for name in added],
                }
            ]
        if added:
            status["pullSecrets"] = added
    if created:
        status["created"] = created
    if nulls:
        status["nulls"] = nulls
    if restore:
        status["replaced"] = sorted(restore, key=lambda item: item["index"])
    all_annotations = dict(annotations)
    all_annotations[names.ANNOTATION_STATUS] = orjson.dumps(
        status, option=orjson.OPT_SORT_KEYS
    ).decode()
    if evict_value is not None:
        all_annotations[evict_key] = evict_value
    return ops + _annotation_ops(metadata, all_annotations) + container_ops + volume_ops + pull_ops


def read_status(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The parsed status annotation; None when the pod is not injected.

    Raises ValueError (naming the annotation) when it is there but not ours to read.
    """
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(names.ANNOTATION_STATUS) if isinstance(annotations, dict) else None
    if raw is None:
        return None
    try:
        status = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise ValueError(f"{names.ANNOTATION_STATUS}: not JSON: {err}") from None
    if not isinstance(status, dict) or not isinstance(status.get("containers"), list):
        raise ValueError(
            f"{names.ANNOTATION_STATUS}: {raw[:80]} is not a status the injector wrote "
            "(a JSON object with containers)"
        )
    return status


def _strings(status: Mapping[str, Any], key: str) -> list[str]:
    value = status.get(key) or []
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def uninject(pod: dict[str, Any]) -> list[str]:
    """Take out, in place, exactly what the status annotation says injection added.

    The inverse of applying `build_patch`: our containers, volumes and pull Secrets by name,
    our annotations, our names in the autoscaler's list (its earlier text restored), the user's
    containers we replaced (back at their index) and any map or list we created. Returns
    what was removed, for the user; [] when the pod was not injected.
    """
    status = read_status(pod)
    if status is None:
        return []
    metadata = pod["metadata"]
    spec: dict[str, Any] = pod["spec"] if isinstance(pod.get("spec"), dict) else {}
    removed: list[str] = []
    ours = set(_strings(status, "containers"))
    for group in ("initContainers", "containers"):
        items = spec.get(group)
        if isinstance(items, list):
            kept = [c for c in items if not (isinstance(c, dict) and c.get("name") in ours)]
            removed += [f"{group}/{c['name']}" for c in items if c not in kept]
            items[:] = kept
    for item in status.get("replaced") or []:
        spec.setdefault(item["group"], []).insert(item["index"], item["container"])
        removed.append(f"restored {item['group']}/{item['container'].get('name')}")
    volumes = set(_strings(status, "volumes"))
    if isinstance(spec.get("volumes"), list):
        kept = [v for v in spec["volumes"] if not (isinstance(v, dict) and v["name"] in volumes)]
        removed += [f"volumes/{v['name']}" for v in spec["volumes"] if v not in kept]
        spec["volumes"][:] = kept
    secrets = set(_strings(status, "pullSecrets"))
    if secrets and isinstance(spec.get("imagePullSecrets"), list):
        own = spec["imagePullSecrets"]
        kept = [s for s in own if not (isinstance(s, dict) and s.get("name") in secrets)]
        removed += [f"imagePullSecrets/{s['name']}" for s in own if s not in kept]
        own[:] = kept
    annotations = metadata["annotations"]
    evict = status.get("evict")
    evict_key = names.ANNOTATION_SAFE_TO_EVICT_LOCAL_VOLUMES
    if isinstance(evict, dict) and evict_key in annotations:
        added = set(_strings(evict, "added"))
        left = [v for v in _listed(annotations[evict_key]) if v not in added]
        before = evict.get("before")
        if before is not None and left == _listed(before):
            annotations[evict_key] = before  # its text as the user wrote it
        elif left:
            annotations[evict_key] = ",".join(left)
        else:
            del annotations[evict_key]
        removed.append(f"annotation {evict_key}: {', '.join(sorted(added))}")
    for key in _strings(status, "annotations") or sorted(names.WRITTEN_ANNOTATIONS):
        if annotations.pop(key, None) is not None:
            removed.append(f"annotation {key}")
    nulls = set(_strings(status, "nulls"))
    # Innermost first: /metadata/annotations before /metadata.
    for pointer in sorted(_strings(status, "created"), key=lambda p: -p.count("/")):
        parent_path, _, key = pointer.rpartition("/")
        parent: Any = pod if not parent_path else pod.get(parent_path.strip("/"))
        if isinstance(parent, dict) and key in parent and not parent[key]:
            if pointer in nulls:
                parent[key] = None
            else:
                del parent[key]
    return removed
