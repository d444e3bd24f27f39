"""Notice when mounted files change, the way Kubernetes changes them.

Owns: what "changed" means for a file — its resolved path and the stat of what it resolves
to (device, inode, size, mtime) — so an in-place write, a rename over it, and the `..data`
symlink swap by which the kubelet updates a Secret or ConfigMap volume all count; and the
polling loop (stat is cheap, works on every filesystem, and needs no inotify watch that a
symlink swap would orphan).
Does not: read or parse the files (each watch's callback does), log their content, or count.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

Signature = tuple[str, int, int, int, int] | None

logger = logging.getLogger("cache_injector")


def signature(path: Path) -> Signature:
    """Where `path` leads and that file's identity, or None while it is missing."""
    try:
        resolved = os.path.realpath(path)
        stat = os.stat(resolved)
    except OSError:
        return None
    return (resolved, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def signatures(paths: Sequence[Path]) -> tuple[Signature, ...]:
    return tuple(signature(path) for path in paths)


@dataclass
class Watch:
    """Files read together (a certificate and its key), and what to do when any changes.

    `on_change` handles its own expected failures (it logs and keeps the old state); the
    files are looked at again only after they change again.
    """

    name: str
    paths: tuple[Path, ...]
    on_change: Callable[[], None]
    last: tuple[Signature, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.last:
            self.last = signatures(self.paths)

    def poll(self) -> bool:
        """Call on_change if the files changed since the last look; True if it did."""
        seen = signatures(self.paths)
        if seen == self.last:
            return False
        self.on_change()
        # Changed again while being read (a writer still at work): look again next tick.
        if signatures(self.paths) == seen:
            self.last = seen
        return True


async def watch_forever(watches: Sequence[Watch], interval: float) -> None:
    """Poll every watch every `interval` seconds until cancelled; a bug never stops it."""
    while True:
        await asyncio.sleep(interval)
        for item in watches:
            try:
                item.poll()
            except Exception:
                logger.exception(
                    "watch failed", extra={"fields": {"event": "watch_failed", "watch": item.name}}
                )
