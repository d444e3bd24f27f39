"""Scenario 21: WebSockets and server-sent events through the cache, on both generations.

- An upgrade request to the cache port reaches a backend pod as an upgrade: 101, frames echo
  both ways, before and after 75 s of silence (longer than every 60 s timeout on the way:
  HAProxy's client/server, Varnish's pipe_timeout default); new connections are still
  balanced over the pods.
- A server-sent event stream of 130 s (no caching headers: it must not be cached) reaches
  the client event by event, each within a second of being sent, across a 75 s gap in
  which the backend sends only heartbeat comments.
- What each open WebSocket costs: 50 idle connections, memory of each sidecar's cgroup.
All three run at once in one pod, in the background beside the other scenarios.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from tests.e2e.backends import event_plan
from tests.e2e.client import Event, WebSocket, read_events
from tests.e2e.harness import LISTEN_PORT, POD_IP, PodEnv, generation
from tests.e2e.scenarios import Scenarios, background, lasts, recorder, sleep

pytestmark = pytest.mark.e2e

IDLE = 75.0
STREAM = 130.0
OPEN = 50  # idle WebSockets counted for memory
BALANCED = 6  # new connections, over 3 pods


@dataclass
class Seen:
    label: str
    handshake: tuple[int, str] = (0, "")  # status, Upgrade header
    echoes: list[str] = field(default_factory=list)
    idle_seconds: float = 0.0
    balanced: list[str] = field(default_factory=list)  # pod of each new connection
    events: list[Event] = field(default_factory=list)
    heartbeats: int = 0
    stream: tuple[int, dict[str, str], str | None] = (0, {}, None)
    stream_seconds: float = 0.0
    second_stream_pods: list[str] = field(default_factory=list)
    per_connection: dict[str, float] = field(default_factory=dict)  # sidecar -> bytes
    errors: list[str] = field(default_factory=list)
    diagnostics: str = ""


@lasts(140)
def long_lived(gen_name: str) -> Seen:
    gen = generation(gen_name)
    with PodEnv(gen, backends=3, memory_limits=True, label="long-lived") as env:
        netns = env.netns
        assert netns is not None  # PodEnv.start() made it
        seen = Seen(gen.label)

        def stream() -> None:
            began = time.monotonic()
            status, headers, events, heartbeats, error = read_events(
                netns, POD_IP, LISTEN_PORT, f"/events/{STREAM:.0f}"
            )
            seen.stream_seconds = time.monotonic() - began
            seen.events, seen.heartbeats = events, heartbeats
            seen.stream = (status, headers, error)

        reader = threading.Thread(target=stream, daemon=True)
        reader.start()
        sockets: list[WebSocket] = []
        try:
            socket = WebSocket(netns, POD_IP, LISTEN_PORT)
            sockets.append(socket)
            seen.handshake = (socket.status, socket.headers.get("upgrade", ""))
            seen.echoes.append(socket.echo("before"))
            began = time.monotonic()
            # Meanwhile: balancing of new connections, and memory per open connection.
            for _ in range(BALANCED):
                other = WebSocket(netns, POD_IP, LISTEN_PORT)
                sockets.append(other)
                seen.balanced.append(other.echo("which").split()[0])
            before = {name: _usage(env, name) for name in ("cache-varnish", "cache-haproxy")}
            for _ in range(OPEN):
                other = WebSocket(netns, POD_IP, LISTEN_PORT)
                sockets.append(other)
                other.echo("open")
            time.sleep(1)
            for name, usage in before.items():
                seen.per_connection[name] = (_usage(env, name) - usage) / OPEN
            sleep(IDLE - (time.monotonic() - began))
            seen.idle_seconds = time.monotonic() - began
            seen.echoes.append(socket.echo("after"))
            # A second SSE request: passed (never served from a cached stream).
            _, headers, _, _, _ = read_events(netns, POD_IP, LISTEN_PORT, "/events/0")
            seen.second_stream_pods.append(headers.get("x-cache", ""))
        except (OSError, ConnectionError, ValueError) as err:
            seen.errors.append(f"{type(err).__name__}: {err}")
        finally:
            for other in sockets:
                other.close()
        reader.join(timeout=STREAM + 60)
        seen.diagnostics = env.diagnostics()
    return seen


def _usage(env: PodEnv, container: str) -> int:
    figures = env.runner.memory(container)
    return figures[0] if figures else 0


@pytest.mark.parametrize(
    "gen_name",
    [pytest.param(g, marks=background(long_lived, g)) for g in ("newest", "oldest")],
)
def test_websockets_and_event_streams_pass_through_the_cache(
    gen_name: str, scenarios: Scenarios, request: pytest.FixtureRequest
) -> None:
    seen: Seen = scenarios.outcome(request.node)
    note = recorder("21 websocket and SSE", seen.label)
    delays = [event.received - event.sent for event in seen.events]
    note("echoes (before, after idle)", len(seen.echoes))
    note("idle survived s", round(seen.idle_seconds, 1))
    note("new connections per pod", {p: seen.balanced.count(p) for p in sorted(set(seen.balanced))})
    note("events / heartbeats", f"{len(seen.events)} / {seen.heartbeats}")
    note("stream s", round(seen.stream_seconds, 1))
    note("slowest event s", round(max(delays, default=-1), 3))
    for name, size in seen.per_connection.items():
        note(f"{name} KiB per open WebSocket", round(size / 1024, 1))
    assert not seen.errors, "\n".join(seen.errors) + "\n" + seen.diagnostics
    assert seen.handshake == (101, "websocket"), seen.handshake
    pod = seen.echoes[0].split()[0]
    assert seen.echoes == [f"{pod} before", f"{pod} after"], seen.echoes
    assert seen.idle_seconds >= IDLE
    assert len(set(seen.balanced)) == 3, f"new connections balanced over 3 pods: {seen.balanced}"
    status, headers, error = seen.stream
    assert (status, error) == (200, None), (seen.stream, seen.diagnostics)
    assert headers.get("content-type") == "text/event-stream"
    assert [event.number for event in seen.events] == list(range(len(event_plan(STREAM))))
    assert seen.stream_seconds >= 120
    assert max(delays) < 1.0, f"events delayed: {sorted(delays)[-3:]}"
    assert seen.heartbeats >= 3, "the 75 s gap carried heartbeats only"
    assert seen.second_stream_pods == ["MISS"], "an event stream is never served from cache"
