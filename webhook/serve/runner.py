"""Run the webhook under uvicorn: TLS only, in one process or in N worker processes.

Owns: uvicorn's configuration — uvloop and httptools named outright (guard.py's subclasses of
them), so a missing one fails start-up instead of serving with the pure-Python parser (p50 170x
worse, docs/design.md "Server"); the keep-alive and graceful-shutdown limits; the open-files limit;
the metrics directory the workers share; and the hooks uvicorn calls in each worker for the TLS
context and the app (each worker builds its own Runtime, watches the files itself and so picks
up every rotation and reload).
Does not: answer requests (server.py), build TLS contexts (certs.py) or bound slow clients and
drain (guard.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import resource
import shutil
import socket
import ssl
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess
from uvicorn.supervisors.multiprocess import Process

from . import guard, logs, metrics
from .server import Runtime, Settings, Webhook, build_app

# Longer than the API server's idle-connection timeout (Go's http.Transport: 90 s), so the
# client closes an idle connection first and never sends a review on one we are closing
# (a POST is not retried: with failurePolicy Ignore the pod would start without the cache).
KEEP_ALIVE_SECONDS = 120

_RUNTIMES: dict[Settings, Runtime] = {}


def runtime_for(settings: Settings) -> Runtime:
    """This process's Runtime, built on first use (in each worker: by the TLS hook)."""
    if settings not in _RUNTIMES:
        _RUNTIMES[settings] = Runtime(settings)
    return _RUNTIMES[settings]


def ssl_context(
    settings: Settings, config: uvicorn.Config, default: Callable[[], ssl.SSLContext]
) -> ssl.SSLContext:
    """uvicorn's ssl_context_factory: the context whose handshakes follow the cert files."""
    runtime = runtime_for(settings)
    protocol = config.http_protocol_class
    runtime.http = f"{protocol.__module__}.{protocol.__qualname__}"
    return runtime.certificate.context


def create_app(settings: Settings) -> Webhook:
    """uvicorn's app factory, called in each worker process."""
    return build_app(runtime_for(settings))


@contextlib.contextmanager
def shared_metrics_directory(workers: int) -> Iterator[None]:
    """PROMETHEUS_MULTIPROC_DIR for the workers: a fresh directory, removed at exit."""
    given = os.environ.get(metrics.MULTIPROC_ENV)
    if workers == 1 and not given:
        yield
        return
    if given:
        # Samples left by an earlier run would be added to this run's (prometheus_client docs).
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        yield
        return
    directory = tempfile.mkdtemp(prefix="cache-injector-metrics-")
    os.environ[metrics.MULTIPROC_ENV] = directory
    try:
        yield
    finally:
        del os.environ[metrics.MULTIPROC_ENV]
        shutil.rmtree(directory, ignore_errors=True)


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """One listening socket per worker, all in one SO_REUSEPORT group on host:port.

    The kernel then spreads new connections over the workers by their addresses. With one
    socket shared by every worker, the worker that wakes first accepts every pending
    connection: under 8 keep-alive connections one worker served all of them while the
    other idled, and a second worker added no throughput.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # --port 0: the same free port for every worker
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class DrainingProcess(Process):
    """A worker process whose server drains on SIGTERM (guard.DrainingServer)."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            assert isinstance(self.config, guard.ServingConfig)
            self._server = guard.DrainingServer(self.config)
        return self._server


def raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one (as Go programs do): at the usual soft 1024, a
    crowd of connections made accept() fail for everyone, the API server included."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class SpreadingMultiprocess(Multiprocess):
    """uvicorn's worker supervisor, but worker i listens only on socket i (see
    listening_sockets); a worker that dies is replaced on the same socket.

    A subclass of a private API because uvicorn (0.54) has no supported way to give each
    worker its own socket; tests/server/test_supervisor.py fails on an upgrade that breaks it.
    """

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self.worker_sockets = sockets

    def _process(self, index: int) -> Process:
        process = DrainingProcess(self.config, [self.worker_sockets[index]])
        process.start()
        return process

    def init_processes(self) -> None:
        self.processes = [self._process(index) for index in range(self.processes_num)]

    def restart_all(self) -> None:
        """SIGHUP: replace each worker, its replacement serving before the old one stops."""
        for index, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._process(index)
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                return
            old.terminate()
            old.join()
            self.processes[index] = new

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                # Broken app, TLS or bind: every restart would fail the same way.
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            self.processes[index] = self._process(index)


def check(settings: Settings) -> None:
    """Load policy, templates and certificate once, so a bad file fails `serve` with its
    message before any worker starts (raises InvalidPolicy or InvalidCertificate)."""
    runtime_for(settings)


def run(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int = 1,
    shutdown_timeout: int = 20,
    log_level: str = "INFO",
    limits: guard.Guard | None = None,
) -> int:
    """Serve until SIGTERM (after the drain) or SIGINT; in-flight reviews finish first. The
    exit status."""
    raise_open_files_limit()
    with shared_metrics_directory(workers):
        config = guard.ServingConfig(
            app=functools.partial(create_app, settings),
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",  # guard.ServingConfig makes it a HandshakeBoundedLoop
            # httptools with the guard's deadlines and limits; one write per response, and
            # /mutate answered inline (GuardedHttpToolsProtocol subclasses
            # protocol.InlineHttpToolsProtocol).
            http=guard.GuardedHttpToolsProtocol,
            ws="none",
            lifespan="on",
            interface="asgi3",
            log_config=logs.log_config(log_level),
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=shutdown_timeout,
            limit_concurrency=None,  # guard.py limits requests, not connections
            ssl_context_factory=functools.partial(ssl_context, settings),
            guard=limits or guard.Guard(),
        )
        if workers == 1:
            server = guard.DrainingServer(config)
            server.run()
            return 0 if server.started else STARTUP_FAILURE
        try:
            sockets = listening_sockets(host, port, workers)
        except OSError as err:
            logs.event("cannot listen", logging.ERROR, host=host, port=port, error=str(err))
            return STARTUP_FAILURE
        supervisor = SpreadingMultiprocess(config, sockets)
        supervisor.run()
        failed = any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
        return STARTUP_FAILURE if failed else 0
