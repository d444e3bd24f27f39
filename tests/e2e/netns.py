"""A network namespace made by `ip netns`, and threads that work inside it.

Owns: creating and deleting the namespace, its addresses, and running Python code inside it.
IPv4 addresses are 127.x on its `lo`; IPv6 ones (fd00::/8, unique local) go on `eth0`, one
end of a veth pair inside the namespace, so `lo` keeps exactly what a pod's has (127.0.0.1/8
and ::1) and an address is still local to every process in the namespace. A thread joins
the namespace with setns(2) (ctypes: Python 3.11 has no os.setns); only threads made here
ever do, so pytest's own threads stay in the host namespace. A socket keeps the namespace it
was created in, so a server built in a namespaced thread may be served from any thread.
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
        self._eth0 = False

    def add_address(self, address: str) -> None:
        """Put an IPv6 address on eth0 (no duplicate-address detection: usable at once); an
        IPv4 127.x address is already local (127.0.0.0/8 on lo)."""
        if ":" not in address:
            return
        if not self._eth0:
            run(["ip", "-n", self.name, "link", "add", "eth0", "type", "veth", "peer", "eth1"])
            for link in ("eth0", "eth1"):
                run(["ip", "-n", self.name, "link", "set", link, "up"])
            self._eth0 = True
        run(["ip", "-n", self.name, "addr", "add", f"{address}/128", "dev", "eth0", "nodad"])

    def disable_ipv6(self) -> None:
        """A pod without IPv6 (the sysctl an IPv4-only CNI or node sets): not even ::1."""
        for scope in ("all", "default", "lo"):
            run([*self.exec_prefix(), "sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6=1"])

    def addresses(self, link: str) -> list[str]:
        """The addresses on one link, as `ip -br addr` prints them (address/prefix)."""
        out = run(["ip", "-n", self.name, "-br", "addr", "show", "dev", link])
        return out.split()[2:]

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
