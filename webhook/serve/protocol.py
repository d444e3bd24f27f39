"""uvicorn's httptools protocol, but a response leaves in one write, and /mutate skips ASGI.

Owns: coalescing the writes uvicorn makes for one response. uvicorn writes the status line and
headers when the app sends `http.response.start` and the body when it sends the body; on a TLS
connection under uvloop each write became its own TLS record and its own send(2) at once. On
loopback a send also runs the receiver's TCP path, so the header write was the largest single
cost of a review: 24% of the server's samples (py-spy, under wrk, after the review itself was
made cheap), and the body's write another 9%. Writes made in one pass of the event loop are
now joined and written once, at the end of that pass: one record, one send.
Owns too: the inline lane (InlineHttpToolsProtocol), which answers a request the app takes
inline straight from the parser's callback, without an ASGI task.
Does not: parse HTTP (httptools does), decide what a request gets (the app: server.py), or
change what uvicorn writes for the requests that go through ASGI.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)


class CorkedTransport:
    """A transport whose writes within one event-loop pass go out as one write.

    Everything but write, close and abort is the wrapped transport's own.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        """What was written goes out first, as with the transport's own close()."""
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CorkedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose requests answer through a CorkedTransport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Flow control, addresses and TLS details were taken from the real transport above.
        self.transport = CorkedTransport(transport, self.loop)  # type: ignore[assignment]


class InlineAnswer(Protocol):
    """What an app offers to be answered inline: `wants(scope)` picks the requests, from their
    method and path; `answer(body, started)` gives the status and body for a whole request
    body (logged and counted by the app); `headers` are the answer's own header lines (each
    ending in CRLF, without Content-Length); `max_body` is the largest body taken inline."""

    max_body: int
    headers: bytes

    def wants(self, scope: Any) -> bool: ...

    def answer(self, body: bytes, started: float) -> tuple[int, bytes]: ...


SERVER_ERROR = (
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\n"
    b"connection: close\r\n\r\nInternal Server Error"
)


def find_inline(app: Any) -> InlineAnswer | None:
    """The app's `inline`, under the middlewares uvicorn may wrap it in (each keeps the app
    it wraps as `.app`: proxy headers, trace logging)."""
    for _ in range(4):
        inline: InlineAnswer | None = getattr(app, "inline", None)
        if inline is not None:
            return inline
        app = getattr(app, "app", None)
    return None


class InlineHttpToolsProtocol(CorkedHttpToolsProtocol):
    """CorkedHttpToolsProtocol that answers the app's inline requests without an ASGI task.

    Why: a /mutate request almost always arrives whole in one read (uvloop hands over every
    TLS record of one socket read, up to 64 KiB, as one data_received; the API server's Go
    client writes a review in 4 KiB records back to back), yet uvicorn would make a task,
    receive and send messages and an event for it, and the app would await its body. With
    the answer itself ~20 µs, that machinery was a third of a no-op review's CPU (paired,
    c=1: no-op p50 171-177 -> 147-165 µs; docs/design.md "Server").
    How: a request the app's `inline` wants is held when its headers are complete and
    answered in the parser's message-complete callback from the bytes already read, with the
    headers uvicorn would write. One whose body is not complete by the end of the read that
    brought its headers (a slow client, `Expect: 100-continue`), or is over `max_body`, is
    handed to ASGI after all with what arrived: the app's body deadline (408) and size cap
    (413) stay where they are. Keep-alive, pipelining, the drain's `Connection: close` and
    the keep-alive timer are uvicorn's own: the cycle is marked complete and
    on_response_complete runs, as after an ASGI answer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inline: InlineAnswer | None = find_inline(self.app)
        self.held: RequestResponseCycle | None = None  # headers in, body not yet
        self.in_headers = False

    def on_headers_complete(self) -> None:
        self.in_headers = True
        try:
            super().on_headers_complete()
        finally:
            self.in_headers = False

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        inline = self.inline
        # Only from on_headers_complete, and only for the app itself (uvicorn passes its 503
        # app when over the request limit); pipelined requests started later go through ASGI.
        if self.in_headers and app is self.app and inline is not None and inline.wants(cycle.scope):
            self.held = cycle
            return
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        cycle, inline = self.held, self.inline
        if cycle is None or inline is None or cycle is not self.cycle:
            return
        self.held = None
        if len(cycle.body) > inline.max_body:
            super()._start_asgi_task(cycle, self.app)  # the app answers 413
            return
        cycle.response_started = cycle.response_complete = True
        try:
            status, body = inline.answer(bytes(cycle.body), time.perf_counter())
        except Exception as err:
            # As uvicorn does for an app that raises: logged, a 500, the connection closed.
            self.logger.error("Exception in inline answer", exc_info=err)
            response, close = STATUS_LINE[500] + SERVER_ERROR, True
        else:
            head = [STATUS_LINE[status]]
            for name, value in cycle.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [inline.headers, b"content-length: %d\r\n" % len(body)]
            close = not cycle.keep_alive
            if close:
                head.append(b"connection: close\r\n")
            head += [b"\r\n", body]
            response = b"".join(head)
        self.transport.write(response)
        if close:
            self.transport.close()
        self.on_response_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        cycle = self.held
        if cycle is not None:
            # The body is still on its way: the app reads the rest under its deadline.
            self.held = None
            if not self.transport.is_closing():
                super()._start_asgi_task(cycle, self.app)
