"""A directory laid out like a Secret or ConfigMap volume, updated as the kubelet does."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class AtomicVolume:
    """Each file is a symlink `NAME -> ..data/NAME`; `..data` is a symlink to a timestamped
    directory. write() fills a new directory and renames a new `..data` link over the old one
    (kubelet's AtomicWriter), so readers see all old files or all new ones."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, files: dict[str, bytes]) -> None:
        self.generation += 1
        stamp = f"..2026_01_01_00_00_00.{self.generation:09d}"
        directory = self.root / stamp
        directory.mkdir()
        for name, data in files.items():
            (directory / name).write_bytes(data)
        data_link = self.root / "..data"
        previous = os.readlink(data_link) if data_link.is_symlink() else None
        temporary = self.root / "..data_tmp"
        os.symlink(stamp, temporary)
        os.rename(temporary, data_link)
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        if previous:
            shutil.rmtree(self.root / previous)
