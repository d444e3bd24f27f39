"""Where the real daemons are: Debian's (haproxy 2.6, varnish 7.1) and the newer builds the
default images run (HAProxy 3.4, Varnish 8.0, from ../shared/daemons/install.sh).

With CI=true a missing daemon fails the test; elsewhere it skips, naming what is missing.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest


@dataclass(frozen=True)
class Daemon:
    label: str  # e.g. "haproxy-3.4"
    path: str


_HAPROXY = (("haproxy-2.6", "/usr/sbin/haproxy"), ("haproxy-3.4", "/opt/haproxy-3.4/sbin/haproxy"))
_VARNISH = (
    ("varnish-7.1", "/usr/sbin/varnishd"),
    ("varnish-8.0", "/opt/varnish-8.0/sbin/varnishd"),
)


def _find(label: str, path: str) -> str | None:
    if Path(path).is_file() and os.access(path, os.X_OK):
        return path
    if label.endswith(("2.6", "7.1")):  # Debian's may live elsewhere on PATH
        return shutil.which(
            label.split("-", maxsplit=1)[0] + ("d" if label.startswith("varnish") else "")
        )
    return None


def require(label: str) -> Daemon:
    """The daemon with this label, or skip (fail under CI) saying which one is missing."""
    for candidate, path in _HAPROXY + _VARNISH:
        if candidate == label:
            found = _find(candidate, path)
            if found:
                return Daemon(label, found)
            message = (
                f"{label} not installed ({path}); `make daemons` installs Debian's and "
                "../shared/daemons/install.sh the newer builds"
            )
            missing(message)
    raise KeyError(label)


def missing(message: str) -> NoReturn:
    """Skip for a missing tool, except under CI, where a skip would hide a gap: fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def available() -> dict[str, str]:
    """Label -> path of every daemon present on this machine."""
    found = {}
    for label, path in _HAPROXY + _VARNISH:
        where = _find(label, path)
        if where:
            found[label] = where
    return found


# Debian's build of prometheus_varnish_exporter 1.6.1 (`make daemons` installs it). It runs
# `varnishstat -j` from PATH, so it reports whichever Varnish generation comes first there.
EXPORTER = "/usr/bin/prometheus-varnish-exporter"


def varnish_tool(varnishd: str, tool: str) -> str:
    """varnishncsa/varnishstat of the same build as `varnishd` (sbin/ -> bin/)."""
    return str(Path(varnishd).resolve().parent.parent / "bin" / tool)


def require_exporter() -> str:
    """The exporter binary, or skip (fail under CI) saying how to install it."""
    if Path(EXPORTER).is_file() and os.access(EXPORTER, os.X_OK):
        return EXPORTER
    missing(f"{EXPORTER} not installed; `make daemons` installs prometheus-varnish-exporter")


HAPROXY_LABELS = [label for label, _ in _HAPROXY]
VARNISH_LABELS = [label for label, _ in _VARNISH]
NEWEST = {"haproxy": "haproxy-3.4", "varnish": "varnish-8.0"}
OLDEST = {"haproxy": "haproxy-2.6", "varnish": "varnish-7.1"}
