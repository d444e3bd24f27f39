"""The wheel is what users install: it must carry the sidecar-configs templates and the
embedded default policy, and its `cache-injector` command must inject from a fresh venv.
It is built as the Dockerfile's build stage builds it: from only the files its COPY lines
put in the build context (less what .dockerignore excludes), so a file the image would miss
fails here."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_dockerfile import copied_sources, in_context

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {cache-injector.io/inject: enabled}
  annotations: {cache-injector.io/backend: app:8080}
spec:
  containers: [{name: web, image: nginx}]
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    context = tmp_path_factory.mktemp("docker-context")
    for source in copied_sources():
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(
                path,
                context / source,
                ignore=lambda folder, names: [
                    name
                    for name in names
                    if not in_context(str((Path(folder) / name).relative_to(ROOT)))
                ],
            )
        else:
            assert in_context(source), f"{source} is excluded by .dockerignore"
            shutil.copy2(path, context / source)
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(context)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("cache_injector-*.whl")
    return path


def test_wheel_installs_and_injects_in_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    # --no-deps + the current interpreter's site-packages would hide a missing file; install
    # the dependencies for real (pip's cache makes this quick).
    subprocess.run(
        [str(env / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    result = subprocess.run(
        [str(env / "bin" / "cache-injector"), "inject", "-f", "-", "--namespace", "shop"],
        input=POD,
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the source tree: templates must come from the wheel
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "server-template pod 128 app.shop.svc.cluster.local:8080" in result.stdout
    assert "vcl 4.1;" in result.stdout
