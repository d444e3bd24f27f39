"""Read an AdmissionReview request; write the AdmissionReview response.

Owns: the admission.k8s.io/v1 wire format — which bodies are usable reviews (anything else
raises MalformedReview naming the field, the value and what is accepted), the shape a Pod
must have before the engine sees it, and the response for an Outcome: base64 JSON patch,
warnings, and the status code of a denial (403 for a policy refusal, else 400).
Does not: decide or inject (inject.py, called by admission.py), touch the network, log or count
(server.py).
Pure: bytes or dicts in, dicts or bytes out, so it is tested without a server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import pybase64

from ..engine.errors import (
    BackendNamespaceNotAllowed,
    CacheInjectorError,
    ImageOverrideNotAllowed,
    InvalidOptions,
    LimitExceeded,
    MalformedReview,
)
from ..engine.inject import Outcome
from ..engine.selection import Decision, decide
from ..engine.values import DNS_LABEL

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
# Refusals the cluster policy makes (the pod asks for something it may not have): 403.
# Every other denial is a value that cannot be used as given: 400.
POLICY_REFUSALS = (LimitExceeded, BackendNamespaceNotAllowed, ImageOverrideNotAllowed)
INTERNAL_ERROR_WARNING = (
    "cache-injector failed unexpectedly and let the pod through without the cache; "
    "the injector's log has the details (uid {uid})"
)

Result = Literal["injected", "skipped", "denied", "error"]


@dataclass(frozen=True, slots=True)
class ReviewRequest:
    """The fields of `request` the webhook uses, checked."""

    uid: str
    operation: str
    group: str  # request.kind.group: "" for core kinds such as Pod
    kind: str  # request.kind.kind
    sub_resource: str
    namespace: str
    name: str  # request.name, else the object's metadata.name; "" before generation
    generate_name: str
    dry_run: bool
    object: Any  # request.object as sent (checked as a Pod only for a Pod CREATE)

    @property
    def is_pod(self) -> bool:
        """A review of a Pod itself, not of another kind or of a subresource."""
        return self.group == "" and self.kind == "Pod" and not self.sub_resource


def _show(value: Any) -> str:
    """A value for a message: short, and never the whole of a hostile document."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, str) and len(value) > 60:
        return orjson.dumps(value[:60]).decode()[:-1] + '..."'
    return orjson.dumps(value).decode()


def _field(
    data: Mapping[str, Any], where: str, key: str, kind: type | tuple[type, ...], accepted: str
) -> Any:
    """data[key] if it is absent, null or of `kind`; else MalformedReview."""
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise MalformedReview(f"{where}.{key}", _show(value), accepted)
    return value


def _string_map(metadata: Mapping[str, Any], where: str, key: str) -> None:
    value = _field(metadata, where, key, dict, "a map of strings to strings")
    for item_key, item in (value or {}).items():
        if not isinstance(item, str):
            raise MalformedReview(f"{where}.{key}.{item_key}", _show(item), "a string")


def _list_of_objects(data: Mapping[str, Any], where: str, key: str) -> list[dict[str, Any]]:
    value = _field(data, where, key, list, "a list of objects")
    for index, item in enumerate(value or []):
        if not isinstance(item, dict):
            raise MalformedReview(f"{where}.{key}.{index}", _show(item), "an object")
    return value or []


def check_pod(pod: Any, where: str = "request.object") -> dict[str, Any]:
    """The Pod if every field the engine reads has its API type; else MalformedReview.

    The API server only sends Pods it decoded, so this rejects only forged reviews; it keeps
    the engine from ever seeing, say, a list where the labels map should be.
    """
    if not isinstance(pod, dict):
        raise MalformedReview(where, _show(pod), "a Pod object")
    metadata = _field(pod, where, "metadata", dict, "an object (ObjectMeta)") or {}
    meta_where = f"{where}.metadata"
    for key in ("name", "generateName", "namespace"):
        _field(metadata, meta_where, key, str, "a string")
    _string_map(metadata, meta_where, "labels")
    _string_map(metadata, meta_where, "annotations")
    _list_of_objects(metadata, meta_where, "ownerReferences")
    spec = pod.get("spec")
    spec_where = f"{where}.spec"
    if not isinstance(spec, dict):
        # The API server always sends one (PodSpec is not a pointer); the patch adds to it.
        raise MalformedReview(spec_where, _show(spec), "an object (PodSpec)")
    _field(spec, spec_where, "hostNetwork", bool, "true or false")
    for group in ("initContainers", "containers"):
        for index, container in enumerate(_list_of_objects(spec, spec_where, group)):
            container_where = f"{spec_where}.{group}.{index}"
            _field(container, container_where, "name", str, "a string")
            _field(container, container_where, "image", str, "a string")
            _list_of_objects(container, container_where, "ports")
    for index, volume in enumerate(_list_of_objects(spec, spec_where, "volumes")):
        _field(volume, f"{spec_where}.volumes.{index}", "name", str, "a string")
    return pod


def decode_review(body: bytes) -> ReviewRequest:
    """Parse and check an AdmissionReview request body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise MalformedReview("body", "(not JSON)", f"a JSON AdmissionReview: {err}") from None
    if not isinstance(data, dict):
        raise MalformedReview("body", _show(data), "a JSON object (an AdmissionReview)")
    if data.get("apiVersion") != API_VERSION:
        raise MalformedReview("apiVersion", _show(data.get("apiVersion")), API_VERSION)
    if data.get("kind") != KIND:
        raise MalformedReview("kind", _show(data.get("kind")), KIND)
    request = data.get("request")
    if not isinstance(request, dict):
        raise MalformedReview("request", _show(request), "an object (AdmissionRequest)")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise MalformedReview("request.uid", _show(uid), "a non-empty string")
    operation = request.get("operation")
    if not isinstance(operation, str) or operation not in OPERATIONS:
        raise MalformedReview(
            "request.operation", _show(operation), "one of " + ", ".join(sorted(OPERATIONS))
        )
    kind = request.get("kind")
    if not isinstance(kind, dict):
        raise MalformedReview("request.kind", _show(kind), "an object (GroupVersionKind)")
    group = _field(kind, "request.kind", "group", str, "a string") or ""
    kind_name = _field(kind, "request.kind", "kind", str, "a string")
    if not kind_name:
        raise MalformedReview("request.kind.kind", _show(kind_name), "a kind such as Pod")
    sub_resource = _field(request, "request", "subResource", str, "a string") or ""
    namespace = _field(request, "request", "namespace", str, "a string") or ""
    name = _field(request, "request", "name", str, "a string") or ""
    dry_run = bool(_field(request, "request", "dryRun", bool, "true or false"))
    obj = request.get("object")
    generate_name = ""
    if group == "" and kind_name == "Pod" and not sub_resource and operation == "CREATE":
        # Only a Pod CREATE needs its object (a DELETE's object is null).
        metadata = check_pod(obj).get("metadata") or {}
        if not DNS_LABEL.match(namespace):
            # Pods are namespaced: the API server always says where this one is created,
            # and the name reaches the rendered configs (the backend's FQDN).
            raise MalformedReview("request.namespace", _show(namespace), "the Pod's namespace name")
        name = name or metadata.get("name") or ""
        generate_name = metadata.get("generateName") or ""
    return ReviewRequest(
        uid=uid,
        operation=operation,
        group=group,
        kind=kind_name,
        sub_resource=sub_resource,
        namespace=namespace,
        name=name,
        generate_name=generate_name,
        dry_run=dry_run,
        object=obj,
    )


def not_pod_decision(request: ReviewRequest) -> Decision:
    """Other kinds and Pod subresources pass untouched (the webhook config should not ask)."""
    what = f"{request.group}/{request.kind}" if request.group else request.kind
    return decide(False, "not_pod", kind=f"{what}/{request.sub_resource}".rstrip("/"))


def result_of(outcome: Outcome) -> Result:
    """The metric's and the log's `result` for an engine Outcome."""
    if not outcome.allowed:
        return "denied"
    return "injected" if outcome.patch else "skipped"


def denial_code(error: CacheInjectorError | None) -> int:
    """403 when the policy refuses something the pod asks for; 400 for unusable values."""
    problems = error.problems if isinstance(error, InvalidOptions) else (error,)
    return 403 if any(isinstance(problem, POLICY_REFUSALS) for problem in problems) else 400


def _review(response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def response_for(uid: str, outcome: Outcome) -> dict[str, Any]:
    """The AdmissionReview answering one review with the engine's Outcome."""
    response: dict[str, Any] = {"uid": uid, "allowed": outcome.allowed}
    if outcome.allowed and outcome.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = pybase64.b64encode(orjson.dumps(outcome.patch)).decode()
    if not outcome.allowed:
        code = denial_code(outcome.error)
        message = str(outcome.error) if outcome.error else outcome.decision.message
        response["status"] = {
            "status": "Failure",
            "code": code,
            "reason": "Forbidden" if code == 403 else "BadRequest",
            "message": f"cache-injector: {message}",
        }
    if outcome.warnings:
        response["warnings"] = list(outcome.warnings)
    return _review(response)


# The bytes every allowing answer starts with: orjson.dumps(response_for(...)) up to the uid.
_ANSWER_HEAD = b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":'


def encode_response(uid: str, outcome: Outcome) -> bytes:
    """orjson.dumps(response_for(uid, outcome)), byte for byte, for an allowing answer without
    building the dict: the base64 patch is the bulk of the answer (~10 KB), and as a str in a
    dict it was encoded from bytes, decoded to text and scanned for escapes again."""
    if not outcome.allowed:
        return orjson.dumps(response_for(uid, outcome))
    out = _ANSWER_HEAD + orjson.dumps(uid) + b',"allowed":true'
    if outcome.patch:
        patch = pybase64.b64encode(orjson.dumps(outcome.patch))
        out += b',"patchType":"JSONPatch","patch":"' + patch + b'"'
    if outcome.warnings:
        out += b',"warnings":' + orjson.dumps(list(outcome.warnings))
    return out + b"}}"


def allowed_response(uid: str, warnings: list[str] | None = None) -> dict[str, Any]:
    """Allowed, untouched: other kinds, and the answer to our own bugs (with a warning)."""
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if warnings:
        response["warnings"] = warnings
    return _review(response)


def internal_error_response(uid: str) -> dict[str, Any]:
    """A bug must not block pod creation: let the pod through uninjected, and say so."""
    return allowed_response(uid, [INTERNAL_ERROR_WARNING.format(uid=uid)])


def error_body(error: MalformedReview) -> dict[str, Any]:
    """The JSON body of an HTTP 400 or 413: what is wrong, as fields and as one sentence."""
    return {
        "error": str(error),
        "field": error.field,
        "value": error.value,
        "accepted": error.accepted,
    }
