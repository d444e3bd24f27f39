"""The admission webhook over HTTPS: POST /mutate, GET /healthz, /readyz, /metrics.

Owns: the one mapping from failures to answers (docs/design.md): MalformedReview -> HTTP
400 with a JSON body; a body over 8 MiB -> 413; a body that does not arrive in time -> 408;
a CacheInjectorError -> a review that denies; anything else is a bug -> logged with the uid
and its traceback, counted as internal_error, answered with a review that lets the pod
through uninjected with a warning. Never a 500. Also owns the per-process Runtime (policy and
templates loaded once and swapped whole on reload, the serving certificate), one JSON log
line per review, and what the metrics count.
Does not: parse reviews or build patches (review.py, inject.py), generate certificates
(certs.py) or configure uvicorn (runner.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.responses import Response

from ..engine import names
from ..engine.errors import CacheInjectorError, InvalidCertificate, InvalidPolicy, MalformedReview
from ..engine.inject import Outcome, inject_pod
from ..engine.policy import (
    Policy,
    default_policy,
    load_policy_text,
    with_sticky_session_secret,
)
from ..engine.render import Templates, load_templates
from ..engine.selection import decide
from . import guard, logs, metrics
from .certs import ServingCertificate
from .review import (
    Result,
    ReviewRequest,
    decode_review,
    denial_code,
    error_body,
    internal_error_response,
    not_pod_decision,
    response_for,
    result_of,
)
from .watch import Watch, signatures, watch_forever

MAX_BODY_BYTES = 8 * 1024 * 1024
# The API server gives a webhook at most 30 s; a body still arriving after 10 s is a stalled
# or hostile client, not the API server.
BODY_TIMEOUT_SECONDS = 10.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass(frozen=True)
class Settings:
    """What `serve` was told; the same in every worker process."""

    tls_cert: Path
    tls_key: Path
    policy: Path | None = None
    watch_interval: float = 1.0
    max_body_bytes: int = MAX_BODY_BYTES
    body_timeout: float = BODY_TIMEOUT_SECONDS
    revision: str = names.DEFAULT_REVISION  # recorded in each injected pod's status


@dataclass(frozen=True)
class Engine:
    """What a review reads, swapped as one reference: no review sees half a reload."""

    policy: Policy
    templates: Templates


# The sticky-session secret, when set, replaces the policy's stickySessionSecret: the chart
# passes it from a Secret to every replica, so it is never in the policy ConfigMap.
STICKY_SESSION_SECRET_ENV = "CACHE_INJECTOR_STICKY_SESSION_SECRET"


def read_policy(path: Path | None) -> Policy:
    """The --policy file (or the embedded default) with the sticky-session secret from the
    environment, if set; InvalidPolicy for anything unusable."""
    policy = _read_policy_file(path)
    secret = os.environ.get(STICKY_SESSION_SECRET_ENV)
    return with_sticky_session_secret(policy, secret) if secret else policy


def _read_policy_file(path: Path | None) -> Policy:
    if path is None:
        return default_policy()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise InvalidPolicy([f"(file): cannot be read: {reason}"], str(path)) from None
    if not text.strip():
        # Most likely a file caught mid-write (truncated, not yet filled): taking it as "all
        # defaults" would drop every namespace's settings until the next look.
        raise InvalidPolicy(["(file): empty: write {} for a policy of all defaults"], str(path))
    return load_policy_text(text, str(path))


class BodyTooLarge(Exception):
    """The request body is over the cap (answered 413 without reading the rest)."""


class ClientGone(Exception):
    """The client disconnected before sending its whole body: nobody to answer."""


async def read_body(receive: Receive, scope: Scope, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Runtime:
    """One process's state: the engine's inputs, the serving certificate, the file watches."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        policy_files = (settings.policy,) if settings.policy else ()
        # Taken before loading, so a change made during start-up is seen at the first poll.
        before = (signatures((settings.tls_cert, settings.tls_key)), signatures(policy_files))
        self.engine = Engine(read_policy(settings.policy), load_templates())
        self.certificate = ServingCertificate(settings.tls_cert, settings.tls_key)
        self.watches = [
            Watch(
                "certificate",
                (settings.tls_cert, settings.tls_key),
                self.reload_certificate,
                before[0],
            )
        ]
        if settings.policy:
            self.watches.append(Watch("policy", (settings.policy,), self.reload_policy, before[1]))
        self.http = "unknown"  # the HTTP protocol class uvicorn runs, set by runner.py
        self.loop = "unknown"  # the event loop class, seen at start-up

    # --- reloads -------------------------------------------------------------------------

    def reload_policy(self) -> None:
        """Read --policy again; an invalid version is logged and counted, the old one stays."""
        old = self.engine.policy
        try:
            policy = read_policy(self.settings.policy)
        except InvalidPolicy as err:
            metrics.POLICY_RELOADS.labels(result="error").inc()
            logs.event(
                "policy reload rejected; the last good policy stays in force",
                logging.ERROR,
                event="policy_reload",
                result="error",
                path=str(self.settings.policy),
                problems=list(err.problems),
                digest=old.digest,
            )
            return
        self.engine = Engine(policy, self.engine.templates)
        metrics.POLICY_RELOADS.labels(result="success").inc()
        logs.event(
            "policy reloaded",
            event="policy_reload",
            result="success",
            path=str(self.settings.policy),
            digest=policy.digest,
            previous=old.digest,
        )

    def reload_certificate(self) -> None:
        """Load the pair again; a broken one is logged and counted, the old one keeps serving."""
        old = self.certificate.current
        try:
            pair = self.certificate.reload()
        except InvalidCertificate as err:
            metrics.CERTIFICATE_RELOADS.labels(result="error").inc()
            logs.event(
                "certificate reload rejected; the current certificate keeps serving",
                logging.ERROR,
                event="certificate_reload",
                result="error",
                error=err.reason,
                serial=old.serial_hex,
            )
            return
        metrics.CERTIFICATE_RELOADS.labels(result="success").inc()
        metrics.CERTIFICATE_EXPIRY.set(pair.not_after.timestamp())
        logs.event(
            "certificate reloaded",
            event="certificate_reload",
            result="success",
            serial=pair.serial_hex,
            previous=old.serial_hex,
            notAfter=pair.not_after.isoformat(),
        )

    # --- state ---------------------------------------------------------------------------

    def started(self) -> None:
        """In the worker's event loop, before the first request."""
        loop = type(asyncio.get_running_loop())
        self.loop = f"{loop.__module__}.{loop.__qualname__}"
        metrics.initialise()
        metrics.CERTIFICATE_EXPIRY.set(self.certificate.current.not_after.timestamp())
        logs.event("worker started", event="started", **self.status())

    def status(self) -> dict[str, Any]:
        pair, policy = self.certificate.current, self.engine.policy
        return {
            "pid": os.getpid(),
            "loop": self.loop,
            "http": self.http,
            "certificate": {
                "serial": pair.serial_hex,
                "subject": pair.subject,
                "notAfter": pair.not_after.isoformat(),
                "expired": pair.not_after <= datetime.datetime.now(datetime.UTC),
            },
            "policy": {"source": policy.source, "digest": policy.digest},
            "revision": self.settings.revision,
        }

    # --- one review ----------------------------------------------------------------------

    def review(self, body: bytes, started: float) -> tuple[int, bytes]:
        """Status and body answering one /mutate request body."""
        try:
            request = decode_review(body)
        except MalformedReview as err:
            metrics.REJECTED_REQUESTS.labels(code="400").inc()
            logs.event(
                "malformed review", logging.WARNING, event="rejected", code=400, error=str(err)
            )
            return 400, orjson.dumps(error_body(err))
        except Exception:
            # A bug in decoding: without a uid there is no review to answer, and a 400 has
            # the same effect as an allowing answer under failurePolicy Ignore. Never a 500.
            logs.logger.exception(
                "internal error while decoding a review",
                extra={"fields": {"event": "internal_error", "uid": None}},
            )
            metrics.ADMISSIONS.labels(result="error", reason="internal_error").inc()
            metrics.REJECTED_REQUESTS.labels(code="400").inc()
            bug = MalformedReview("body", "(undecodable)", "a review this injector can read")
            return 400, orjson.dumps(error_body(bug))
        outcome: Outcome | None = None
        try:
            outcome = self.decide(request)
            answer = response_for(request.uid, outcome)
            result: Result = result_of(outcome)
            reason = outcome.decision.reason
            encoded = orjson.dumps(answer)
        except Exception:
            # A bug. The pod must not pay for it: let it through uninjected, and say so.
            logs.logger.exception(
                "internal error; the pod was let through uninjected",
                extra={"fields": {"event": "internal_error", "uid": request.uid}},
            )
            outcome, result, reason = None, "error", "internal_error"
            encoded = orjson.dumps(internal_error_response(request.uid))
        elapsed = time.perf_counter() - started
        metrics.count_admission(result, reason, elapsed)
        self.log_review(request, outcome, result, reason, elapsed)
        return 200, encoded

    def decide(self, request: ReviewRequest) -> Outcome:
        if not request.is_pod:
            return Outcome(allowed=True, decision=not_pod_decision(request))
        engine = self.engine
        pod = request.object if isinstance(request.object, dict) else {}
        try:
            # namespace_labels=None: the MutatingWebhookConfiguration matched this pod.
            return inject_pod(
                pod,
                # The request's namespace: a pod made from a template has none of its own yet.
                namespace=request.namespace,
                operation=request.operation,
                policy=engine.policy,
                templates=engine.templates,
                namespace_labels=None,
                revision=self.settings.revision,
            )
        except CacheInjectorError as err:
            return Outcome(allowed=False, decision=decide(False, "invalid"), error=err)

    @staticmethod
    def log_review(
        request: ReviewRequest,
        outcome: Outcome | None,
        result: Result,
        reason: str,
        elapsed: float,
    ) -> None:
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
        fields |= {
            "operation": request.operation,
            "dryRun": request.dry_run,
            "result": result,
            "reason": reason,
            "allowed": outcome.allowed if outcome else True,
            "warnings": len(outcome.warnings) if outcome else 1,
            "ms": round(elapsed * 1000, 3),
        }
        if outcome is not None and not outcome.allowed:
            fields["code"] = denial_code(outcome.error)
        if outcome is not None and outcome.patch:
            fields["patchOps"] = len(outcome.patch)
        logs.event("review", **fields)


class Webhook:
    """The ASGI app: /mutate on a thin path of its own, everything else through FastAPI.

    /mutate reads the body bytes itself and answers with prebuilt headers; FastAPI's request
    and response machinery would only add per-request cost to the path the API server waits on.
    """

    def __init__(self, runtime: Runtime, api: FastAPI) -> None:
        self.runtime, self.api = runtime, api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/mutate":
            await self.mutate(scope, receive, send)
        else:
            await self.api(scope, receive, send)

    async def mutate(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        if scope["method"] != "POST":
            await respond(send, 405, b'{"error":"POST an AdmissionReview"}', [(b"allow", b"POST")])
            return
        settings = self.runtime.settings
        try:
            async with asyncio.timeout(settings.body_timeout):
                body = await read_body(receive, scope, settings.max_body_bytes)
        except BodyTooLarge:
            metrics.REJECTED_REQUESTS.labels(code="413").inc()
            limit = settings.max_body_bytes
            error = MalformedReview("body", f"more than {limit} bytes", f"at most {limit} bytes")
            logs.event("body too large", logging.WARNING, event="rejected", code=413)
            await respond(send, 413, orjson.dumps(error_body(error)))
            return
        except TimeoutError:
            metrics.REJECTED_REQUESTS.labels(code="408").inc()
            seconds = f"{settings.body_timeout:g} s"
            error = MalformedReview(
                "body", f"incomplete after {seconds}", f"all of it in {seconds}"
            )
            logs.event("body too slow", logging.WARNING, event="rejected", code=408)
            await respond(send, 408, orjson.dumps(error_body(error)), [(b"connection", b"close")])
            return
        except ClientGone:
            return
        status, answer = self.runtime.review(body, started)
        await respond(send, status, answer)


async def respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *JSON_HEADERS,
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def build_app(runtime: Runtime) -> Webhook:
    """The ASGI app for one worker process."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.started()
        watching = asyncio.create_task(
            watch_forever(runtime.watches, runtime.settings.watch_interval)
        )
        try:
            yield
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            metrics.process_exited(os.getpid())

    api = FastAPI(
        title="cache-injector",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )

    @api.get("/healthz")
    async def healthz() -> Response:
        """Liveness: the process answers."""
        return Response(b'{"status":"ok"}', media_type="application/json")

    @api.get("/readyz")
    async def readyz() -> Response:
        """Ready once the certificate and policy are loaded (and the certificate is valid);
        not ready while draining after SIGTERM, so endpoints drop the pod."""
        status = runtime.status()
        ready = not status["certificate"]["expired"] and not guard.draining()
        return Response(
            orjson.dumps({"ready": ready, **status}),
            status_code=200 if ready else 503,
            media_type="application/json",
        )

    @api.get("/metrics")
    async def prometheus() -> Response:
        data, content_type = metrics.exposition()
        return Response(data, media_type=content_type)

    return Webhook(runtime, api)
