"""The failure mapping at the edge, in-process: a bug in the engine or the decoder is logged
with its traceback and counted, and the answer is still well-formed — never a 500."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from prometheus_client import REGISTRY

from webhook.engine import names
from webhook.engine.errors import ImageOverrideNotAllowed
from webhook.engine.policy import default_policy
from webhook.engine.render import load_templates
from webhook.serve import admission as admission_module
from webhook.serve.admission import Admission
from webhook.serve.server import account

from .reviews import make_pod, pod_review


@pytest.fixture
def admission() -> Admission:
    return Admission(default_policy(), load_templates(), names.DEFAULT_REVISION)


def internal_errors() -> float:
    labels = {"result": "error", "reason": "internal_error"}
    return REGISTRY.get_sample_value("cache_injector_admissions_total", labels) or 0.0


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The event's own fields, which logs.event() attaches as extra={"fields": ...}."""
    found = getattr(record, "fields", {})
    assert isinstance(found, dict), found
    return found


def body() -> tuple[bytes, str]:
    review = pod_review(make_pod(annotations={"cache-injector.io/backend": "web:8080"}))
    return json.dumps(review).encode(), review["request"]["uid"]


def test_engine_bug_lets_the_pod_through_with_a_warning(
    admission: Admission, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: Any, **__: Any) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(admission_module, "inject_pod", broken)
    data, uid = body()
    before = internal_errors()
    with caplog.at_level(logging.INFO, logger="cache_injector"):
        answer = admission.answer(data)
        account(answer, 0.001)
    response = json.loads(answer.body)["response"]
    assert answer.status == 200
    assert response == {"uid": uid, "allowed": True, "warnings": response["warnings"]}
    assert uid in response["warnings"][0]
    assert internal_errors() == before + 1
    failure = next(r for r in caplog.records if fields(r).get("event") == "internal_error")
    assert failure.exc_info is not None
    assert fields(failure)["uid"] == uid
    line = next(r for r in caplog.records if fields(r).get("event") == "review")
    assert fields(line)["reason"] == "internal_error"
    assert fields(line)["ms"] == 1.0


def test_decoder_bug_is_a_400_not_a_500(
    admission: Admission, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_: bytes) -> None:
        raise TypeError("a bug")

    monkeypatch.setattr(admission_module, "decode_review", broken)
    before = internal_errors()
    with caplog.at_level(logging.INFO, logger="cache_injector"):
        answer = admission.answer(body()[0])
        account(answer, 0.001)
    assert answer.status == 400
    assert json.loads(answer.body)["field"] == "body"
    assert internal_errors() == before + 1
    (failure,) = caplog.records
    assert failure.exc_info is not None and "a bug" in str(failure.exc_info[1])


def test_a_cache_injector_error_escaping_the_engine_denies(
    admission: Admission, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuses(*_: Any, **__: Any) -> None:
        raise ImageOverrideNotAllowed("container cache-varnish image", "evil:1", "varnish:8.0")

    monkeypatch.setattr(admission_module, "inject_pod", refuses)
    answer = admission.answer(body()[0])
    response = json.loads(answer.body)["response"]
    assert answer.status == 200
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert "evil:1" in response["status"]["message"]
