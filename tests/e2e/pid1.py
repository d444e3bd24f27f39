"""The parent of a container's PID 1, run by `unshare --pid`: forks the container's program as
the first process of the new PID namespace, waits for it and exits the way it did (a death by
signal included, which `unshare --fork` of util-linux 2.38 reports as status 1 for SIGKILL).

Usage: python3 pid1.py PROGRAM [ARG...]
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main() -> None:
    argv = sys.argv[1:]
    pid = os.fork()
    if pid == 0:
        # What Python changed for itself is not the container's: default dispositions.
        for reset in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
            signal.signal(reset, signal.SIG_DFL)
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # until its uid changes
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number != signal.SIGKILL:  # whose disposition cannot be set, nor needs to be
            signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
