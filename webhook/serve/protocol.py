"""uvicorn's httptools protocol, but a response leaves in one write.

Owns: coalescing the writes uvicorn makes for one response. uvicorn writes the status line and
headers when the app sends `http.response.start` and the body when it sends the body; on a TLS
connection under uvloop each write became its own TLS record and its own send(2) at once. On
loopback a send also runs the receiver's TCP path, so the header write was the largest single
cost of a review: 24% of the server's samples (py-spy, under wrk, after the review itself was
made cheap), and the body's write another 9%. Writes made in one pass of the event loop are
now joined and written once, at the end of that pass: one record, one send.
Does not: parse HTTP or change what is written (uvicorn does both).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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
