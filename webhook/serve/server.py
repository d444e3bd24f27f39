"""The admission webhook over HTTPS: POST /mutate, GET /healthz, /readyz, /metrics.

Owns: the HTTP side of /mutate (the body read with its size cap -> 413 and its deadline -> 408,
the answer sent with prebuilt headers, then one JSON log line and the metrics for it) and the
per-process Runtime: the Admission for the current policy and templates (swapped whole on
reload), the serving certificate, the file watches, and the status /readyz reports.
Does not: decide or encode a review (admission.py), generate certificates (certs.py) or
configure uvicorn (runner.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
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
from ..engine.errors import InvalidCertificate, InvalidPolicy, MalformedReview
from ..engine.policy import (
    Policy,
    default_policy,
    load_policy_text,
    with_sticky_session_secret,
)
from ..engine.render import load_templates
from . import guard, logs, metrics
from .admission import Admission, Answer
from .certs import ServingCertificate
from .review import error_body
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


_RELOADS = {"policy": metrics.POLICY_RELOADS, "certificate": metrics.CERTIFICATE_RELOADS}


def _reloaded(what: str, result: str, message: str, **fields: Any) -> None:
    """Count a reload of `what` and log it (ERROR when rejected): one shape for both files,
    so their metrics and log lines read alike."""
    _RELOADS[what].labels(result=result).inc()
    level = logging.ERROR if result == "error" else logging.INFO
    logs.event(message, level, event=f"{what}_reload", result=result, **fields)


class Runtime:
    """One process's state: the Admission for the current policy, the serving certificate,
    the file watches."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        policy_files = (settings.policy,) if settings.policy else ()
        # Taken before loading, so a change made during start-up is seen at the first poll.
        before = (signatures((settings.tls_cert, settings.tls_key)), signatures(policy_files))
        self.admission = Admission(
            read_policy(settings.policy), load_templates(), settings.revision
        )
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
        old = self.admission.policy
        try:
            policy = read_policy(self.settings.policy)
        except InvalidPolicy as err:
            _reloaded(
                "policy",
                "error",
                "policy reload rejected; the last good policy stays in force",
                path=str(self.settings.policy),
                problems=list(err.problems),
                digest=old.digest,
            )
            return
        self.admission = Admission(policy, self.admission.templates, self.settings.revision)
        _reloaded(
            "policy",
            "success",
            "policy reloaded",
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
            _reloaded(
                "certificate",
                "error",
                "certificate reload rejected; the current certificate keeps serving",
                error=err.reason,
                serial=old.serial_hex,
            )
            return
        metrics.CERTIFICATE_EXPIRY.set(pair.not_after.timestamp())
        _reloaded(
            "certificate",
            "success",
            "certificate reloaded",
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
        # Everything loaded so far lives as long as the process: out of the collector's sight,
        # a full collection no longer walks the ~64,000 objects of the imported modules (one
        # took 10-100 ms, a pause some review would wait through).
        gc.collect()
        gc.freeze()
        logs.event("worker started", event="started", **self.status())

    def status(self) -> dict[str, Any]:
        pair, policy = self.certificate.current, self.admission.policy
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


class BodyDeadlines:
    """The body deadline of every /mutate request in flight, enforced by one sweep.

    asyncio.timeout() arms and disarms a timer per request (4-5 µs measured), for a body that
    almost always arrives with the headers. Here a request only notes its deadline, and one
    task, a few times per body timeout, cancels the body reads that ran past theirs: a stalled
    body gets its 408 at most a quarter of the timeout late.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.pending: dict[asyncio.Task[Any], float] = {}
        self.expired: set[asyncio.Task[Any]] = set()

    async def sweep_forever(self) -> None:
        interval = min(1.0, self.timeout / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for task, deadline in list(self.pending.items()):
                if deadline <= now and task not in self.expired:
                    self.expired.add(task)
                    task.cancel()

    async def read(self, receive: Receive, scope: Scope, limit: int) -> bytes:
        """read_body(), or TimeoutError when the body is not in by the deadline."""
        task = asyncio.current_task()
        assert task is not None
        self.pending[task] = time.monotonic() + self.timeout
        try:
            return await read_body(receive, scope, limit)
        except asyncio.CancelledError:
            if task not in self.expired:
                raise
            task.uncancel()
            raise TimeoutError from None
        finally:
            del self.pending[task]
            self.expired.discard(task)


class Webhook:
    """The ASGI app: /mutate on a thin path of its own, everything else through FastAPI.

    /mutate reads the body bytes itself, hands them to the Admission and answers with
    prebuilt headers; FastAPI's request and response machinery would only add per-request cost
    to the path the API server waits on. A /mutate body that arrives with its headers is
    answered without ASGI at all, by the HTTP protocol (protocol.InlineHttpToolsProtocol)
    through `inline`: the same `answer_body`, so both ways log, count and answer alike.
    """

    def __init__(self, runtime: Runtime, api: FastAPI, deadlines: BodyDeadlines) -> None:
        self.runtime, self.api, self.deadlines = runtime, api, deadlines
        self.inline = InlineMutate(self)

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
            body = await self.deadlines.read(receive, scope, settings.max_body_bytes)
        except BodyTooLarge:
            metrics.count_rejected(413)
            limit = settings.max_body_bytes
            error = MalformedReview("body", f"more than {limit} bytes", f"at most {limit} bytes")
            logs.event("body too large", logging.WARNING, event="rejected", code=413)
            await respond(send, 413, orjson.dumps(error_body(error)))
            return
        except TimeoutError:
            metrics.count_rejected(408)
            seconds = f"{settings.body_timeout:g} s"
            error = MalformedReview(
                "body", f"incomplete after {seconds}", f"all of it in {seconds}"
            )
            logs.event("body too slow", logging.WARNING, event="rejected", code=408)
            await respond(send, 408, orjson.dumps(error_body(error)), [(b"connection", b"close")])
            return
        except ClientGone:
            return
        await respond(send, *self.answer_body(body, started))

    def answer_body(self, body: bytes, started: float) -> tuple[int, bytes]:
        """The status and body answering a whole /mutate body, logged and counted."""
        answer = self.runtime.admission.answer(body)
        account(answer, time.perf_counter() - started)
        return answer.status, answer.body


class InlineMutate:
    """protocol.InlineAnswer for /mutate: POSTs whose body is within the cap."""

    __slots__ = ("headers", "max_body", "webhook")

    def __init__(self, webhook: Webhook) -> None:
        self.webhook = webhook
        self.max_body = webhook.runtime.settings.max_body_bytes
        self.headers = b"".join(name + b": " + value + b"\r\n" for name, value in JSON_HEADERS)

    def wants(self, scope: Scope) -> bool:
        return bool(scope["method"] == "POST" and scope["path"] == "/mutate")

    def answer(self, body: bytes, started: float) -> tuple[int, bytes]:
        return self.webhook.answer_body(body, started)


def account(answer: Answer, elapsed: float) -> None:
    """Log and count one answered /mutate body: one JSON line and the metrics for it."""
    if answer.bug is not None:
        uid = answer.fields.get("uid")
        logs.logger.error(
            answer.bug_message,
            exc_info=answer.bug,
            extra={"fields": {"event": "internal_error", "uid": uid}},
        )
    if answer.result is None:
        metrics.count_rejected(answer.status)
        if answer.bug is not None:
            metrics.ADMISSIONS.labels(result="error", reason="internal_error").inc()
    else:
        metrics.count_admission(answer.result, answer.reason, elapsed)
    if answer.message:
        fields = answer.fields
        if answer.result is not None:
            fields["ms"] = round(elapsed * 1000, 3)
        logs.line(answer.message, fields, answer.level)


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
    deadlines = BodyDeadlines(runtime.settings.body_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.started()
        tasks = [
            asyncio.create_task(watch_forever(runtime.watches, runtime.settings.watch_interval)),
            asyncio.create_task(deadlines.sweep_forever()),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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

    return Webhook(runtime, api, deadlines)
