"""One /mutate body in; the answer's bytes and the record of it out.

Owns: the per-review path — decode (review.py), decide (the engine's inject_pod), encode — and
the one mapping from its failures to answers: MalformedReview -> HTTP 400 with a JSON body; a
CacheInjectorError -> a review that denies; anything else is a bug -> a review that lets the
pod through uninjected with a warning (after a decoding bug, with no uid to answer: a 400).
Never a 500. An Admission is built per policy and replaced whole on reload, so a review never
sees half a reload.
Does not: touch the network, log, count or read the clock: the HTTP layer (server.py) sends
`Answer.body`, then logs and counts what `Answer` records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from ..engine.errors import CacheInjectorError, MalformedReview
from ..engine.inject import Outcome, inject_pod
from ..engine.policy import Policy
from ..engine.render import Templates
from ..engine.selection import decide
from .review import (
    Result,
    ReviewRequest,
    decode_review,
    denial_code,
    encode_response,
    error_body,
    internal_error_response,
    not_pod_decision,
    result_of,
)

UNDECODABLE = MalformedReview("body", "(undecodable)", "a review this injector can read")


@dataclass(frozen=True, slots=True)
class Answer:
    """What one request got, and what the server logs and counts for it.

    `result` is None for a body that was not a review (HTTP 400, counted as rejected);
    `fields` are the log line's (its `ms` is set by the server, which owns the clock); `bug` is
    an unexpected exception, logged with its traceback under `bug_message`.
    """

    status: int
    body: bytes
    result: Result | None
    reason: str
    message: str
    level: int
    fields: dict[str, Any]
    bug: BaseException | None = None
    bug_message: str = ""


class Admission:
    """The per-review path for one policy and set of templates."""

    __slots__ = ("policy", "revision", "templates")

    def __init__(self, policy: Policy, templates: Templates, revision: str) -> None:
        self.policy = policy
        self.templates = templates
        self.revision = revision  # recorded in each injected pod's status

    def answer(self, body: bytes) -> Answer:
        """The answer to one /mutate request body."""
        try:
            request = decode_review(body)
        except MalformedReview as err:
            return Answer(
                400,
                orjson.dumps(error_body(err)),
                None,
                "",
                "malformed review",
                logging.WARNING,
                {"event": "rejected", "code": 400, "error": str(err)},
            )
        except Exception as err:
            # A bug in decoding: without a uid there is no review to answer, and a 400 has
            # the same effect as an allowing answer under failurePolicy Ignore.
            return Answer(
                400,
                orjson.dumps(error_body(UNDECODABLE)),
                None,
                "internal_error",
                "",
                logging.ERROR,
                {},
                err,
                "internal error while decoding a review",
            )
        bug: Exception | None = None
        outcome: Outcome | None = None
        try:
            outcome = self.decide(request)
            result: Result = result_of(outcome)
            reason = outcome.decision.reason
            encoded = encode_response(request.uid, outcome)
        except Exception as err:
            # A bug. The pod must not pay for it: let it through uninjected, and say so.
            bug, outcome, result, reason = err, None, "error", "internal_error"
            encoded = orjson.dumps(internal_error_response(request.uid))
        return Answer(
            200,
            encoded,
            result,
            reason,
            "review",
            logging.INFO,
            review_fields(request, outcome, result, reason),
            bug,
            "internal error; the pod was let through uninjected",
        )

    def decide(self, request: ReviewRequest) -> Outcome:
        if not request.is_pod:
            return Outcome(allowed=True, decision=not_pod_decision(request))
        pod = request.object if isinstance(request.object, dict) else {}
        try:
            # namespace_labels=None: the MutatingWebhookConfiguration matched this pod.
            return inject_pod(
                pod,
                # The request's namespace: a pod made from a template has none of its own yet.
                namespace=request.namespace,
                operation=request.operation,
                policy=self.policy,
                templates=self.templates,
                namespace_labels=None,
                revision=self.revision,
            )
        except CacheInjectorError as err:
            return Outcome(allowed=False, decision=decide(False, "invalid"), error=err)


def review_fields(
    request: ReviewRequest, outcome: Outcome | None, result: Result, reason: str
) -> dict[str, Any]:
    """The review line's fields: who asked about what, and what it got."""
    fields: dict[str, Any] = {
        "event": "review",
        "uid": request.uid,
        "namespace": request.namespace,
        "kind": request.kind,
    }
    if request.name or not request.generate_name:
        fields["name"] = request.name
    else:
        fields["generateName"] = request.generate_name
    fields["operation"] = request.operation
    fields["dryRun"] = request.dry_run
    fields["result"] = result
    fields["reason"] = reason
    fields["allowed"] = outcome.allowed if outcome else True
    fields["warnings"] = len(outcome.warnings) if outcome else 1
    fields["ms"] = 0.0  # the server's measure replaces it, in this place in the line
    if outcome is not None and not outcome.allowed:
        fields["code"] = denial_code(outcome.error)
    if outcome is not None and outcome.patch:
        fields["patchOps"] = len(outcome.patch)
    return fields
