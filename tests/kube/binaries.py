"""The control plane's binaries: built once per machine by kube/build.sh from the pinned
modules in kube/go.mod, and found here."""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "kube" / "build.sh"
PROGRAMS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


@dataclass(frozen=True)
class Binaries:
    """The folder holding one release's binaries, and that release."""

    folder: Path
    version: str  # v1.37.2

    def __getitem__(self, program: str) -> str:
        return str(self.folder / program)


@functools.cache
def binaries() -> Binaries:
    """Build (first call on a machine: minutes) or find the binaries. KUBE_BIN_DIR names a
    folder of prebuilt ones instead (its version is read from kube-apiserver)."""
    given = os.environ.get("KUBE_BIN_DIR")
    if given:
        folder = Path(given)
    else:
        done = subprocess.run(
            [str(BUILD)], capture_output=True, text=True, check=False, timeout=3600
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
