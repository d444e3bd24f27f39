"""A network namespace made by `ip netns`, and threads that work inside it.

Owns: creating and deleting the namespace (loopback only: every address the e2e uses is a
127.x on its `lo`), and running Python code inside it. A thread joins the namespace with
setns(2) (ctypes: Python 3.11 has no os.setns); only threads made here ever do, so pytest's
own threads stay in the host namespace. A socket keeps the namespace it was created in,
so a server built in a namespaced thread may be served from any thread.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def run(argv: list[str], *, timeout: float = 30) -> str:
    """Run a short command; its output, or CalledProcessError with stderr in the message."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


class Netns:
    """One network namespace, loopback up, deleted by close()."""

    def __init__(self, name: str) -> None:
        self.name = name
        run(["ip", "netns", "add", name])
        try:
            run(["ip", "-n", name, "link", "set", "lo", "up"])
        except Exception:
            run(["ip", "netns", "delete", name])
            raise
        self._executors: list[ThreadPoolExecutor] = []

    @property
    def path(self) -> str:
        return f"{NETNS_DIR}/{self.name}"

    def exec_prefix(self) -> list[str]:
        """argv prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def enter(self) -> None:
        """Move the calling thread into the namespace (use only on threads made for it)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({self.path}): {os.strerror(err)}")
        finally:
            os.close(fd)

    def call(self, function: Callable[[], T], *, timeout: float = 30) -> T:
        """Run function() on a new thread inside the namespace and return its result."""
        future: Future[T] = Future()

        def body() -> None:
            try:
                self.enter()
                future.set_result(function())
            except BaseException as err:  # handed to the caller
                future.set_exception(err)

        thread = threading.Thread(target=body, name=f"netns-{self.name}", daemon=True)
        thread.start()
        return future.result(timeout=timeout)

    def executor(self, workers: int) -> ThreadPoolExecutor:
        """A thread pool whose threads all live inside the namespace; shut down by close()."""
        pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"netns-{self.name}", initializer=self.enter
        )
        self._executors.append(pool)
        return pool

    def close(self) -> None:
        for pool in self._executors:
            pool.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()
        if os.path.exists(self.path):
            run(["ip", "netns", "delete", self.name])
