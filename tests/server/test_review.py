"""review.py without a server: decoding requests and building responses are plain functions."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest

from webhook.engine.errors import (
    BackendNamespaceNotAllowed,
    CacheInjectorError,
    ImageOverrideNotAllowed,
    InvalidAnnotation,
    InvalidOptions,
    LimitExceeded,
    MalformedReview,
    PortClash,
)
from webhook.engine.inject import Outcome
from webhook.engine.selection import decide
from webhook.serve.review import (
    check_pod,
    decode_review,
    denial_code,
    encode_response,
    internal_error_response,
    not_pod_decision,
    response_for,
    result_of,
)

from .reviews import make_pod, pod_review


def body(review: dict[str, Any]) -> bytes:
    return json.dumps(review).encode()


def test_decode_create_of_a_generate_name_pod() -> None:
    review = pod_review(make_pod(), namespace="shop", uid="u-1", dry_run=True)
    request = decode_review(body(review))
    assert (request.uid, request.operation, request.namespace) == ("u-1", "CREATE", "shop")
    assert (request.name, request.generate_name) == ("", "web-5d8f7c9b6-")
    assert request.dry_run is True
    assert request.is_pod
    assert request.object == review["request"]["object"]


@pytest.mark.parametrize(
    ("review", "is_pod"),
    [
        pytest.param(pod_review(None, operation="DELETE", old=make_pod()), True, id="delete-null"),
        pytest.param(pod_review(None, operation="UPDATE"), True, id="update-no-object-checked"),
        pytest.param(
            {
                **pod_review(make_pod()),
                "request": {
                    **pod_review(make_pod())["request"],
                    "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
                    "object": "anything",
                },
            },
            False,
            id="other-kind-object-not-checked",
        ),
    ],
)
def test_decode_without_checking_the_object(review: dict[str, Any], is_pod: bool) -> None:
    assert decode_review(body(review)).is_pod is is_pod


@pytest.mark.parametrize(
    ("pod", "field"),
    [
        pytest.param([], "request.object", id="not-an-object"),
        pytest.param({"metadata": [], "spec": {}}, "request.object.metadata", id="metadata"),
        pytest.param(
            {"spec": {}, "metadata": {"name": 1}}, "request.object.metadata.name", id="name"
        ),
        pytest.param(
            {"spec": {}, "metadata": {"labels": {"a": None}}},
            "request.object.metadata.labels.a",
            id="label-value",
        ),
        pytest.param(
            {"spec": {}, "metadata": {"ownerReferences": ["x"]}},
            "request.object.metadata.ownerReferences.0",
            id="owner-reference",
        ),
        pytest.param({"metadata": {}}, "request.object.spec", id="no-spec"),
        pytest.param(
            {"spec": {"hostNetwork": "yes"}}, "request.object.spec.hostNetwork", id="host"
        ),
        pytest.param(
            {"spec": {"initContainers": [{"name": ["a"]}]}},
            "request.object.spec.initContainers.0.name",
            id="container-name",
        ),
        pytest.param(
            {"spec": {"volumes": [{"name": 3}]}},
            "request.object.spec.volumes.0.name",
            id="volume-name",
        ),
    ],
)
def test_check_pod_names_the_field(pod: Any, field: str) -> None:
    with pytest.raises(MalformedReview) as raised:
        check_pod(pod)
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")


def test_malformed_review_message_is_short_for_huge_values() -> None:
    with pytest.raises(MalformedReview) as raised:
        decode_review(body({"apiVersion": "x" * 100_000}))
    assert len(str(raised.value)) < 200


def outcome_denied(error: CacheInjectorError) -> Outcome:
    return Outcome(allowed=False, decision=decide(False, "invalid"), error=error)


def annotation(cls: type[InvalidAnnotation]) -> InvalidAnnotation:
    return cls("cache-injector.io/x", "v", "what is accepted")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        pytest.param(annotation(InvalidAnnotation), 400, id="invalid-value"),
        pytest.param(annotation(PortClash), 400, id="port-clash"),
        pytest.param(annotation(LimitExceeded), 403, id="limit"),
        pytest.param(annotation(BackendNamespaceNotAllowed), 403, id="backend-namespace"),
        pytest.param(annotation(ImageOverrideNotAllowed), 403, id="image-override"),
        pytest.param(
            InvalidOptions([annotation(InvalidAnnotation), annotation(LimitExceeded)]),
            403,
            id="any-policy-refusal-among-problems",
        ),
        pytest.param(
            InvalidOptions([annotation(InvalidAnnotation), annotation(PortClash)]),
            400,
            id="only-bad-values",
        ),
    ],
)
def test_denial_code(error: CacheInjectorError, code: int) -> None:
    assert denial_code(error) == code
    status = response_for("u", outcome_denied(error))["response"]["status"]
    assert status["code"] == code
    assert status["message"] == f"cache-injector: {error}"


def test_response_for_an_injected_pod() -> None:
    ops = [{"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}]
    outcome = Outcome(
        allowed=True, decision=decide(True, "pod_label"), patch=ops, warnings=["careful"]
    )
    review = response_for("u-2", outcome)
    assert review["apiVersion"] == "admission.k8s.io/v1"
    assert review["kind"] == "AdmissionReview"
    response = review["response"]
    assert response["uid"] == "u-2"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == ops
    assert response["warnings"] == ["careful"]
    assert result_of(outcome) == "injected"


def test_response_for_a_skipped_pod_has_no_patch_or_warnings() -> None:
    outcome = Outcome(allowed=True, decision=decide(False, "label_disabled"))
    assert response_for("u", outcome)["response"] == {"uid": "u", "allowed": True}
    assert result_of(outcome) == "skipped"


def test_internal_error_lets_the_pod_through_with_a_warning() -> None:
    response = internal_error_response("u-3")["response"]
    assert response["allowed"] is True
    assert "patch" not in response
    assert "u-3" in response["warnings"][0]


def test_not_pod_decision_names_the_kind() -> None:
    review = pod_review(make_pod())
    review["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    decision = not_pod_decision(decode_review(body(review)))
    assert (decision.inject, decision.reason) == (False, "not_pod")
    assert "apps/Deployment" in decision.message


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome(allowed=True, decision=decide(False, "label_disabled")),
        Outcome(allowed=True, decision=decide(False, "no_backend"), warnings=['w "1"', "ü"]),
        Outcome(
            allowed=True,
            decision=decide(True, "pod_label"),
            patch=[{"op": "add", "path": "/metadata/annotations", "value": {"a": 'b\n"c'}}],
        ),
        Outcome(
            allowed=True,
            decision=decide(True, "pod_label"),
            patch=[{"op": "add", "path": "/spec/volumes/-", "value": {"name": "v"}}],
            warnings=["careful"],
        ),
        outcome_denied(annotation(InvalidAnnotation)),
    ],
    ids=["skipped", "warnings", "patch", "patch-and-warnings", "denied"],
)
@pytest.mark.parametrize("uid", ["u-1", 'odd "uid" \\ é'])
def test_encoded_response_is_the_response_dict_byte_for_byte(outcome: Outcome, uid: str) -> None:
    """The server sends encode_response(); it must be exactly the documented response."""
    assert encode_response(uid, outcome) == orjson.dumps(response_for(uid, outcome))
