"""A slow-client flood against 127.0.0.1:PORT, run as its own process by test_slow_clients.py.

Opens SLOW TLS connections that each send half a request header and then nothing, then keeps
opening RATE more per second for SECONDS; also BARE TCP connections that never start their TLS
handshake. Each connection waits for the server to close it (or for the run to end) and the
run prints one JSON line: how many connections were opened and closed by the server, and how
long after their last byte the server closed them. Bounded: every connection and the whole
run end by the deadline.

    python -m tests.server.flood PORT SLOW RATE SECONDS BARE DEADLINE
"""

from __future__ import annotations

import asyncio
import json
import resource
import ssl
import sys
import time

# Seconds left, after the last connection is made, for the server to close it.
CLOSE_MARGIN = 15.0
PARTIAL = b"POST /mutate HTTP/1.1\r\nHost: cache-injector.cache-injector.svc\r\nContent-Ty"


async def slow(
    port: int,
    context: ssl.SSLContext,
    gate: asyncio.Semaphore,
    closes: list[float],
    failed: list[str],
    end: float,
) -> None:
    try:
        # Connected in time for the server's deadline to close it before the run ends (on a
        # very loaded machine the last ones may not be: they count as failed, not open).
        async with asyncio.timeout(max(0.1, end - time.monotonic() - CLOSE_MARGIN)):
            async with gate:  # handshakes in progress at once
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=context, server_hostname="flood"
                )
    except (OSError, TimeoutError) as err:
        failed.append(type(err).__name__)
        return
    sent = time.monotonic()
    try:
        writer.write(PARTIAL)
        await writer.drain()
        sent = time.monotonic()
        await asyncio.wait_for(reader.read(), timeout=max(0.1, end - sent))
        closes.append(time.monotonic() - sent)
    except TimeoutError:
        pass  # still open at the deadline: not in `closes`
    except OSError:
        closes.append(time.monotonic() - sent)
    finally:
        writer.transport.abort()


async def bare(port: int, closes: list[float], end: float) -> None:
    """TCP only: the server's TLS handshake deadline must close it."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    opened = time.monotonic()
    try:
        await asyncio.wait_for(reader.read(), timeout=max(0.1, end - opened))
        closes.append(time.monotonic() - opened)
    except TimeoutError:
        pass
    except OSError:
        closes.append(time.monotonic() - opened)
    finally:
        writer.transport.abort()


async def main(
    port: int, count: int, rate: int, seconds: float, bare_count: int, deadline: float
) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    end = time.monotonic() + deadline
    closes: list[float] = []
    bare_closes: list[float] = []
    failed: list[str] = []
    tasks = [asyncio.create_task(bare(port, bare_closes, end)) for _ in range(bare_count)]
    gate = asyncio.Semaphore(100)
    tasks += [
        asyncio.create_task(slow(port, context, gate, closes, failed, end)) for _ in range(count)
    ]
    started = time.monotonic()
    streamed = 0
    while (elapsed := time.monotonic() - started) < seconds:
        # By the clock, not by sleeps: a busy loop must not thin out the stream.
        for _ in range(int(rate * elapsed) - streamed):
            tasks.append(asyncio.create_task(slow(port, context, gate, closes, failed, end)))
            streamed += 1
        await asyncio.sleep(0.05)
    for _ in range(int(rate * seconds) - streamed):  # a loop late at the end still sends all
        tasks.append(asyncio.create_task(slow(port, context, gate, closes, failed, end)))
        streamed += 1
    opened = count + streamed
    await asyncio.gather(*tasks)
    print(
        json.dumps(
            {
                "opened": opened,
                "closed": len(closes),
                "failed": len(failed),
                "max_close": max(closes, default=0.0),
                "bare": bare_count,
                "bare_closed": len(bare_closes),
                "bare_max_close": max(bare_closes, default=0.0),
            }
        )
    )


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port, count, rate = (int(arg) for arg in sys.argv[1:4])
    seconds, bare_count, deadline = float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
    asyncio.run(main(port, count, rate, seconds, bare_count, deadline))
