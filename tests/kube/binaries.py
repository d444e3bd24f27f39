"""The control plane's binaries: built once per machine by kube/build.sh from the pinned
modules in kube/RELEASE/go.mod, and found here. NEWEST is what `make cluster` and the whole
suite run; OLDEST (the oldest release served) runs the admission tests too."""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "kube" / "build.sh"
NEWEST = "v1.37"
OLDEST = "v1.34"
RELEASES = (NEWEST, OLDEST)
PROGRAMS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


@dataclass(frozen=True)
class Binaries:
    """The folder holding one release's binaries, and that release."""

    folder: Path
    version: str  # v1.37.2

    def __getitem__(self, program: str) -> str:
        return str(self.folder / program)


@functools.cache
def binaries(release: str = NEWEST) -> Binaries:
    """Build (first call on a machine: minutes) or find one release's binaries. KUBE_BIN_DIR
    names a folder of prebuilt ones for NEWEST instead (its version read from kube-apiserver)."""
    given = os.environ.get("KUBE_BIN_DIR") if release == NEWEST else None
    if given:
        folder = Path(given)
    else:
        done = subprocess.run(
            [str(BUILD), release], capture_output=True, text=True, check=False, timeout=3600
        )
        if done.returncode != 0:
            raise RuntimeError(f"{BUILD} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        folder = Path(done.stdout.strip().splitlines()[-1])
    missing = [p for p in PROGRAMS if not (folder / p).is_file()]
    if missing:
        raise RuntimeError(f"{folder}: missing {', '.join(missing)}")
    out = subprocess.run(
        [str(folder / "kube-apiserver"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return Binaries(folder=folder, version=out.split()[-1])
