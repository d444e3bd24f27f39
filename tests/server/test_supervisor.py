"""runner.SpreadingMultiprocess rides on uvicorn's private worker supervisor, because uvicorn
has no supported way to give each worker its own listening socket (no reuse_port option as of
0.54; `uvicorn.run` hands every worker the one socket). This pins what the subclass relies
on: uvicorn's own `run()` loop must call our overrides for start-up, SIGHUP restarts and
dead-worker replacement, and each of those must hand worker slot i only socket i. A uvicorn
upgrade that renames a hook, changes `Process(config, sockets)` or stops calling them fails
here, not in production (where every worker would silently listen on every socket).

No worker process starts: uvicorn's `Process` is replaced by a recorder, in uvicorn's module
too, so a code path that bypasses our overrides is recorded instead of run.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator

import pytest
import uvicorn
from uvicorn.supervisors import multiprocess

from webhook.serve import runner


class RecordedProcess:
    """Stands in for uvicorn's worker Process; records the sockets each one was given."""

    created: list[RecordedProcess] = []  # noqa: RUF012 (reset by the fixture)
    supervisor: runner.SpreadingMultiprocess | None = None

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        self.sockets = list(sockets)
        self.alive = True
        self.exitcode: int | None = None
        RecordedProcess.created.append(self)

    def start(self) -> None:
        pass

    def wait_until_ready(self, timeout: float, should_exit: object = None) -> bool:
        return True

    def is_alive(self, timeout: float = 5) -> bool:
        return self.alive

    def terminate(self) -> None:
        self.alive = False

    def kill(self) -> None:
        self.alive = False
        self.exitcode = -9

    def join(self) -> None:
        pass

    @property
    def pid(self) -> int:
        return 0


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[RecordedProcess]]:
    monkeypatch.setattr(multiprocess, "Process", RecordedProcess)
    monkeypatch.setattr(runner, "Process", RecordedProcess)
    # runner's own Process subclass (its servers drain on SIGTERM), which slots are made of.
    monkeypatch.setattr(runner, "DrainingProcess", RecordedProcess)
    RecordedProcess.created = []
    saved = {sig: signal.getsignal(sig) for sig in multiprocess.SIGNALS}
    try:
        yield RecordedProcess
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_uvicorn_calls_our_hooks_and_each_worker_gets_only_its_socket(
    recorded: type[RecordedProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    sockets = runner.listening_sockets("127.0.0.1", 0, 2)
    try:
        config = uvicorn.Config(app=lambda: None, workers=2, timeout_worker_healthcheck=1)
        supervisor = runner.SpreadingMultiprocess(config, sockets)
        # Queued as uvicorn's own signal handler would queue them; uvicorn's loop reads them.
        supervisor.signal_queue.append(signal.SIGHUP)
        rounds = 0

        def keep_alive() -> None:
            nonlocal rounds
            rounds += 1
            if rounds == 1:
                worker = supervisor.processes[1]
                assert isinstance(worker, RecordedProcess)  # the fixture's, not uvicorn's
                worker.alive = False  # a worker died
            elif rounds > 1:
                supervisor.should_exit.set()
            runner.SpreadingMultiprocess.keep_subprocess_alive(supervisor)

        monkeypatch.setattr(supervisor, "keep_subprocess_alive", keep_alive)
        supervisor.run()  # uvicorn's loop: start, SIGHUP restart, replace the dead worker
    finally:
        for sock in sockets:
            sock.close()
    given = [process.sockets for process in recorded.created]
    # 2 at start, 2 by the SIGHUP restart, 1 replacing the dead worker of slot 1.
    assert given == [[sockets[0]], [sockets[1]], [sockets[0]], [sockets[1]], [sockets[1]]]
    assert rounds >= 2


def test_uvicorn_has_no_supported_per_worker_socket_option() -> None:
    """When uvicorn gains one (a reuse_port setting), use it and delete the subclass."""
    assert not hasattr(uvicorn.Config(app=lambda: None), "reuse_port")
