"""The webhook during its own rollout: one of two server processes gets SIGTERM while several
clients keep sending reviews through the "Service". With the drain, every review is answered;
without it (the negative control), reviews fail while the endpoints still name the stopping
process."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from .support import Pki, Server, answers_ready, serve_pki, wait_for
from .traffic import Endpoints, ReviewClient, Tally

CLIENTS = 4
# Most clients also dial anew every third review, as the API server opens new connections.
# How often the "endpoints controller" probes /readyz (the kubelet's readiness period plus the
# endpoints update, compressed).
PROBE_PERIOD = 0.2
REVIEW_TIMEOUT = 10.0  # the API server's webhook timeout, generous for a loaded machine


def roll(tmp_path: Path, pki: Pki, test_policy: Path, drain: str) -> tuple[Tally, Server]:
    """Two servers, CLIENTS clients; SIGTERM to the first after 1 s; run until it has exited
    and 1 s more. The endpoints controller drops a server once its /readyz fails."""
    servers = [
        serve_pki(
            tmp_path,
            pki,
            policy=test_policy,
            extra=("--drain-seconds", drain),
        )
        for _ in range(2)
    ]
    endpoints = Endpoints([server.port for server in servers])
    tally, stop = Tally(), threading.Event()
    clients = [
        ReviewClient(endpoints, pki.ca, tally, stop, timeout=REVIEW_TIMEOUT, redial_every=3)
        for _ in range(CLIENTS - 1)
    ]
    # And one that keeps its connection to the first server until told to close it, as the
    # API server keeps its keep-alive connections: it is on the stopping server at SIGTERM.
    clients.append(
        ReviewClient(
            endpoints, pki.ca, tally, stop, timeout=REVIEW_TIMEOUT, first_port=servers[0].port
        )
    )

    def controller() -> None:
        while not stop.is_set():
            for server in servers:
                if not answers_ready(server):
                    endpoints.remove(server.port)
            time.sleep(PROBE_PERIOD)

    watcher = threading.Thread(target=controller, daemon=True)
    try:
        for thread in [*clients, watcher]:
            thread.start()
        wait_for(lambda: tally.answered >= 20, deadline=30, what="traffic flowing")
        stopping = servers[0]
        stopping.process.send_signal(signal.SIGTERM)
        stopping.process.wait(60)
        time.sleep(1)
    finally:
        stop.set()
        for thread in [*clients, watcher]:
            thread.join(REVIEW_TIMEOUT + 5)
        for server in servers:
            server.stop(signal.SIGKILL)
    return tally, servers[0]


def test_rollout_answers_every_review(tmp_path: Path, pki: Pki, test_policy: Path) -> None:
    tally, stopped = roll(tmp_path, pki, test_policy, drain="2")
    print(f"rollout with a 2 s drain: {tally.summary()}")
    assert tally.failures == [], tally.failures[:5]
    assert tally.answered >= 40
    # The stopping server kept answering during its drain, asking each client to go elsewhere
    # (only a draining server answers a review with Connection: close).
    assert len(stopped.events("draining")) == 1
    assert tally.closed_by_server >= 1
    assert max(tally.latencies) < REVIEW_TIMEOUT


def test_without_drain_reviews_fail(tmp_path: Path, pki: Pki, test_policy: Path) -> None:
    """The negative control: the test above can fail. Up to 3 rollouts, as failures here
    depend on a client dialling in the ~0.2 s before the endpoints drop the stopped server:
    usually 6-12 reviews fail, and 1 rollout in ~12 had none."""
    for attempt in range(1, 4):
        tally, _ = roll(tmp_path, pki, test_policy, drain="0")
        print(f"rollout without drain, attempt {attempt}: {tally.summary()}")
        if tally.failures:
            break
    assert tally.failures
