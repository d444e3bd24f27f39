"""What a memory cgroup would charge each container of a running pod, read from /proc, and
the limits HAProxy reports it settled on.

Owns: the footprint measure of issue 13 - the PSS of every process of a container (its PID
namespace: a page shared by N processes counts 1/N, as the cgroup charges it once) plus the
pages of the Memory emptyDirs it mounts (tmpfs pages count toward the container's memory in
Kubernetes, not toward any process's RSS). The bench and the e2e scenarios both use it.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from pathlib import Path

from tests.e2e.podrunner import ContainerState, PodRunner

MIB = 2**20
_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (every thread's children), from /proc."""
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                queue += [int(child) for child in (task / "children").read_text().split()]
    return sorted(set(pids))


def pss_mib(state: ContainerState, skip: tuple[str, ...] = ()) -> float:
    """Sum of Pss over the container's processes (0 when it is not running), less mappings
    of files under the `skip` directories (as the container sees them)."""
    if state.main_pid is None:
        return 0.0
    total = 0
    for pid in process_tree(state.main_pid):
        counted = True
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
                if _MAPPING.match(line):
                    fields = line.split(maxsplit=5)
                    path = fields[5] if len(fields) == 6 else ""
                    counted = not any(path.startswith(prefix) for prefix in skip)
                elif counted and line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total / 1024


def volume_mib(runner: PodRunner, name: str) -> float:
    """MiB held by one Memory emptyDir (tmpfs), seen through the pause process's root."""
    assert runner.pause is not None
    path = f"/proc/{runner.pause.pid}/root{runner.workdir}/volumes/{name}"
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize / MIB


def memory_volumes(runner: PodRunner) -> list[str]:
    return [
        name
        for name, volume in runner.spec.volumes.items()
        if (volume.get("emptyDir") or {}).get("medium") == "Memory"
    ]


def footprint(runner: PodRunner, container: str) -> float:
    """MiB charged to one container: PSS of its processes + its Memory emptyDirs' pages.

    A volume mounted by several containers is charged to the first of them (Kubernetes
    charges a tmpfs page to the cgroup that first touched it; ours are each written by one).
    A tmpfs page a process maps is one page, charged once: mappings of files in those
    volumes are left out of the PSS (varnishd mlocks a log of under 8 MiB, RLIMIT_MEMLOCK,
    so all 4 MiB of it were mapped and counted twice).
    """
    state = runner.states[container]
    memory = set(memory_volumes(runner))
    mounts = [m for m in state.spec.mounts if m.volume in memory]
    total = pss_mib(state, tuple(m.path.rstrip("/") + "/" for m in mounts))
    for mount in mounts:
        total += volume_mib(runner, mount.volume)
    return total


def footprints(runner: PodRunner, containers: tuple[str, ...] | None = None) -> dict[str, float]:
    """MiB per container (cache-* sidecars by default) and their "total", rounded to 0.1."""
    names = containers or tuple(n for n in runner.states if n.startswith("cache-"))
    out = {name: round(footprint(runner, name), 1) for name in names}
    out["total"] = round(sum(out.values()), 1)
    return out


def haproxy_info(runner: PodRunner) -> dict[str, str]:
    """HAProxy's own report of the limits it settled on (`show info` on its admin socket,
    reached through the pause process's root) and the open-files limit it was started
    with (RLIMIT_NOFILE of its PID 1, "soft hard")."""
    assert runner.pause is not None
    state = runner.states["cache-haproxy"]
    assert state.main_pid is not None
    volume = runner.workdir / "volumes" / "cache-haproxy-run"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(f"/proc/{runner.pause.pid}/root{volume}/admin.sock")
        sock.sendall(b"show info\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    wanted = ("Ulimit-n", "Maxsock", "Maxconn", "Hard_maxconn", "Version")
    info = {}
    for line in b"".join(chunks).decode().splitlines():
        key, _, value = line.partition(": ")
        if key in wanted:
            info[key] = value
    limits = Path(f"/proc/{state.main_pid}/limits").read_text().splitlines()
    info["RLIMIT_NOFILE at start"] = next(
        " ".join(x.split()[3:5]) for x in limits if x.startswith("Max open files")
    )
    return info
