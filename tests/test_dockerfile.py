"""The Dockerfile cannot be built here (no container engine). Its build stage is run for real
by tests/test_wheel.py (the wheel is built from the context its COPY lines and .dockerignore
make); here: what .dockerignore keeps out, a user the kubelet can check, and the image's default
command being the one the chart runs."""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import pytest

from tests.chart.chart import render
from tests.dockerfiles import stages

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
BUILD_TOOLS = ("gcc", "cc ", "g++", "make", "build-essential", "apt-get", "apk ")


def in_context(path: str) -> bool:
    """Whether .dockerignore lets `path` into the build context (last matching rule wins)."""
    included = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
            for prefix in prefixes
        ):
            included = negate
    return included


def copied_sources() -> set[str]:
    sources: set[str] = set()
    for keyword, rest in stages(DOCKERFILE)[0]:
        if keyword == "COPY" and "--from" not in rest:
            sources.update(part.rstrip("/") for part in shlex.split(rest)[:-1])
    return sources


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param(".venv/bin/python", False, id="venv"),
        pytest.param("tests/chart/test_render.py", False, id="tests"),
        pytest.param("certs/tls.key", False, id="dev-certs"),
        pytest.param(".git/config", False, id="git"),
        pytest.param("webhook/__pycache__/cli.cpython-311.pyc", False, id="bytecode"),
        pytest.param("webhook/cli.py", True, id="source"),
    ],
)
def test_dockerignore_keeps_the_context_small(path: str, expected: bool) -> None:
    assert in_context(path) is expected


def test_image_user_lets_kubernetes_verify_run_as_non_root() -> None:
    """runAsNonRoot without runAsUser needs a numeric, non-zero USER in the image: with a
    name, the kubelet cannot verify it and refuses to start the container."""
    (user,) = [rest for keyword, rest in stages(DOCKERFILE)[-1] if keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit()), user


def test_default_command_matches_the_chart() -> None:
    (cmd,) = [rest for keyword, rest in stages(DOCKERFILE)[-1] if keyword == "CMD"]
    arguments = re.findall(r'"([^"]*)"', cmd)
    assert arguments[0] == "serve"
    image_options = dict(zip(arguments[1::2], arguments[2::2], strict=True))
    container = render().webhook_container()
    chart_options = dict(arg.split("=", 1) for arg in container["args"][1:])
    for option in ("--tls-cert", "--tls-key", "--policy", "--port", "--host"):
        assert image_options[option] == chart_options[option], option
    assert f"EXPOSE {chart_options['--port']}" in DOCKERFILE
