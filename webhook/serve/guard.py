"""Connection hygiene under uvicorn: slow clients, idle crowds and the drain on SIGTERM.

Owns: how long a client may take for its TLS handshake and for each request's headers (uvicorn
and httptools have no header timeout: 3,000 connections sending half a header stayed open for
minutes), the cap on connections per worker (the longest-waiting idle or header-less one is
closed to admit a new one, so a crowd of them cannot lock the API server out), the in-flight
request limit (uvicorn's own `limit_concurrency` counts idle connections too: a crowd of them
got every real review a 503), and the drain: on SIGTERM a worker keeps serving, reports
not-ready and asks every client to close its connection, for `drain_seconds`, then shuts down
as before.
Does not: configure uvicorn (runner.py) or answer requests (server.py).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn
import uvloop

from . import logs
from .protocol import InlineHttpToolsProtocol

# A TLS handshake on a cluster network takes milliseconds; the API server's own dialer gives
# up after 10 s. Python's default is 60 s.
HANDSHAKE_TIMEOUT_SECONDS = 5.0
# From a connection's handshake (or the first byte of a request) to its last header line.
HEADER_TIMEOUT_SECONDS = 5.0
# Connections a worker keeps before it closes the longest-waiting idle one (an open TLS
# connection costs ~20 KiB: ~2,000 added 34-40 MiB over two workers, test_slow_clients.py).
MAX_CONNECTIONS = 1024
# Requests in handling per worker beyond which the answer is 503: bounds memory, since each
# may hold a body of up to 8 MiB. The API server needs a handful.
MAX_REQUESTS_IN_FLIGHT = 256


@dataclass(frozen=True)
class Guard:
    """The limits one `serve` applies; the same in every worker (pickled with the config)."""

    handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS
    header_timeout: float = HEADER_TIMEOUT_SECONDS
    max_connections: int = MAX_CONNECTIONS
    max_requests_in_flight: int = MAX_REQUESTS_IN_FLIGHT
    drain_seconds: float = 0.0


class _Drain:
    """This process's drain state, read by /readyz and by every response."""

    def __init__(self) -> None:
        self.since: float | None = None

    @property
    def draining(self) -> bool:
        return self.since is not None


DRAIN = _Drain()


def draining() -> bool:
    """True once SIGTERM arrived: /readyz then answers 503 and connections are closed."""
    return DRAIN.draining


class ServingConfig(uvicorn.Config):
    """uvicorn's Config carrying our Guard, with a loop that bounds TLS handshakes."""

    def __init__(self, *args: Any, guard: Guard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def get_loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop]:
        timeout = self.guard.handshake_timeout

        def new_loop() -> asyncio.AbstractEventLoop:
            loop = HandshakeBoundedLoop()
            loop.handshake_timeout = timeout
            return loop

        return new_loop


class HandshakeBoundedLoop(uvloop.Loop):
    """uvloop, but every TLS server it starts drops a client whose handshake is too slow
    (uvicorn passes no ssl_handshake_timeout, so asyncio's 60 s applied), and gives a closing
    connection as long for the client's close_notify (instead of 30 s)."""

    handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS

    async def create_server(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", self.handshake_timeout)
            kwargs.setdefault("ssl_shutdown_timeout", self.handshake_timeout)
        return await super().create_server(*args, **kwargs)


# Per worker: connections waiting for a request's headers (fresh, idle between requests, or
# part-way through a header), oldest first. Those in the middle of a request are not here.
_WAITING: collections.OrderedDict[GuardedHttpToolsProtocol, None] = collections.OrderedDict()


class GuardedHttpToolsProtocol(InlineHttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a connection cap, an in-flight
    limit that ignores idle connections, and `Connection: close` while draining; a response
    still leaves in one write, and a whole /mutate request is answered inline (protocol.py)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        guard = getattr(config, "guard", None)
        self.guard: Guard = guard if isinstance(guard, Guard) else Guard()
        # uvicorn's check counts connections; ours (on_headers_complete) counts requests.
        self.limit_concurrency = None
        self.header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for_headers()
        while len(self.connections) > self.guard.max_connections:
            # The longest-waiting connection that is not in a request makes room; when every
            # other one is mid-request, the newcomer is refused.
            victim = next(iter(_WAITING))
            _WAITING.pop(victim)
            # abort, not close: a TLS close waits (up to the shutdown timeout) for the
            # client's close_notify, which a client that never reads never sends.
            victim.transport.abort()
            if victim is self:
                break
            victim.connections.discard(victim)

    def _wait_for_headers(self) -> None:
        _WAITING[self] = None
        _WAITING.move_to_end(self)
        if self.header_deadline is None:
            self.header_deadline = self.loop.call_later(
                self.guard.header_timeout, self._headers_too_slow
            )

    def _headers_arrived(self) -> None:
        _WAITING.pop(self, None)
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _headers_too_slow(self) -> None:
        self.header_deadline = None
        self.transport.abort()  # no request to answer; see connection_made

    def data_received(self, data: bytes) -> None:
        if self.header_deadline is None and self in _WAITING:
            # An idle keep-alive connection starts a request: its headers are due in time.
            self._wait_for_headers()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._headers_arrived()
        busy = len(self.tasks) >= self.guard.max_requests_in_flight
        # 0 makes uvicorn's own check true: it answers 503 "Exceeded concurrency limit".
        self.limit_concurrency = 0 if busy else None
        super().on_headers_complete()
        self.limit_concurrency = None
        if DRAIN.draining and self.cycle is not None:
            # The client reconnects through the Service, to a pod that is not draining.
            self.cycle.keep_alive = False

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            # Idle: uvicorn's keep-alive timer runs; the header deadline starts at the next
            # request's first byte (data_received).
            _WAITING[self] = None
            _WAITING.move_to_end(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_arrived()
        super().connection_lost(exc)


class DrainingServer(uvicorn.Server):
    """uvicorn's Server, but SIGTERM first drains for `guard.drain_seconds` (SIGINT, and a
    second signal, stop at once)."""

    def __init__(self, config: ServingConfig) -> None:
        super().__init__(config)
        self.drain_seconds = config.guard.drain_seconds
        self.drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.drain_seconds > 0 and not DRAIN.draining:
            # Only flags here (a signal handler): on_tick does the rest in the loop.
            self._captured_signals.append(sig)
            DRAIN.since = time.monotonic()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if DRAIN.since is not None:
            if not self.drain_logged:
                self.drain_logged = True
                logs.event(
                    "draining: not ready, closing connections after their next answer",
                    logging.INFO,
                    event="draining",
                    seconds=self.drain_seconds,
                )
            if time.monotonic() - DRAIN.since >= self.drain_seconds:
                self.should_exit = True
        return await super().on_tick(counter)
