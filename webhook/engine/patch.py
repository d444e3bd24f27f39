"""Build the JSON patch (RFC 6902) that turns a pod into the injected pod.

Owns: the operations, built directly from the pod's shape — no deep copy and diff — with
RFC 6901 escaping of keys, and the status annotation that makes re-injection a no-op.
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


def status_annotation(
    containers: Sequence[Mapping[str, Any]], volumes: Sequence[str], config_hash: str
) -> str:
    """What was injected, so re-injection is a no-op and a stale pod can be spotted."""
    return orjson.dumps(
        {
            "version": __version__,
            "containers": [c["name"] for c in containers],
            "volumes": list(volumes),
            "configHash": config_hash,
        },
        option=orjson.OPT_SORT_KEYS,
    ).decode()


def _annotation_ops(metadata: Mapping[str, Any], added: Mapping[str, str]) -> list[Op]:
    existing = metadata.get("annotations")
    if not isinstance(existing, dict):
        return [{"op": "add", "path": "/metadata/annotations", "value": dict(added)}]
    return [
        {"op": "add", "path": f"/metadata/annotations/{escape(key)}", "value": value}
        for key, value in added.items()
    ]


def _merged_evict_volumes(metadata: Mapping[str, Any], ours: Sequence[str]) -> str:
    """Merge (never overwrite) our volumes into the autoscaler's safe-to-evict list."""
    current = (metadata.get("annotations") or {}).get(
        names.ANNOTATION_SAFE_TO_EVICT_LOCAL_VOLUMES, ""
    )
    listed = [v.strip() for v in str(current).split(",") if v.strip()]
    return ",".join(listed + [v for v in ours if v not in listed])


def build_patch(
    pod: Mapping[str, Any],
    *,
    containers: Sequence[Mapping[str, Any]],
    volumes: Sequence[Mapping[str, Any]],
    annotations: Mapping[str, str],
    replaced: Mapping[str, tuple[str, int]],
    native: bool,
) -> list[Op]:
    """The ops, in an order that applies cleanly: removals (highest index first), then adds.

    `replaced` names user-declared containers (group, index) that `containers` supersede.
    """
    spec: Mapping[str, Any] = pod.get("spec") or {}
    metadata: Mapping[str, Any] = pod.get("metadata") or {}
    ops: list[Op] = []
    for parent in ("metadata", "spec"):
        if not isinstance(pod.get(parent), dict):
            ops.append({"op": "add", "path": f"/{parent}", "value": {}})
    for group, index in sorted(replaced.values(), key=lambda item: -item[1]):
        ops.append({"op": "remove", "path": f"/spec/{group}/{index}"})

    user_volumes = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    new_volumes = [v for v in volumes if v["name"] not in user_volumes]
    evictable = [v["name"] for v in new_volumes if "emptyDir" in v]
    all_annotations = dict(annotations)
    if evictable:
        all_annotations[names.ANNOTATION_SAFE_TO_EVICT_LOCAL_VOLUMES] = _merged_evict_volumes(
            metadata, evictable
        )
    ops += _annotation_ops(metadata, all_annotations)
    # The label a PodMonitor selects injected pods by (charts/cache-injector).
    if isinstance(metadata.get("labels"), dict):
        path = f"/metadata/labels/{escape(names.LABEL_INJECTED)}"
        ops.append({"op": "add", "path": path, "value": names.LABEL_INJECTED_VALUE})
    else:
        value = {names.LABEL_INJECTED: names.LABEL_INJECTED_VALUE}
        ops.append({"op": "add", "path": "/metadata/labels", "value": value})

    if native:
        # Native sidecars start first, before the pod's own init containers.
        if "initContainers" in spec and isinstance(spec["initContainers"], list):
            ops += [
                {"op": "add", "path": f"/spec/initContainers/{i}", "value": dict(c)}
                for i, c in enumerate(containers)
            ]
        else:
            ops.append(
                {
                    "op": "add",
                    "path": "/spec/initContainers",
                    "value": [dict(c) for c in containers],
                }
            )
    else:
        ops += [{"op": "add", "path": "/spec/containers/-", "value": dict(c)} for c in containers]

    if new_volumes:
        if isinstance(spec.get("volumes"), list):
            ops += [{"op": "add", "path": "/spec/volumes/-", "value": dict(v)} for v in new_volumes]
        else:
            ops.append(
                {"op": "add", "path": "/spec/volumes", "value": [dict(v) for v in new_volumes]}
            )
    return ops
