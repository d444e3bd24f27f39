"""`serve` refuses to start on files it cannot use, saying which and why."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .support import CLI, Pki, free_port


def serve(pki: Pki, *extra: str, cert: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [CLI, "serve", "--host", "127.0.0.1", "--port", str(free_port())]
    command += ["--tls-cert", str(cert or pki.cert), "--tls-key", str(pki.key), *extra]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


@pytest.mark.parametrize(
    ("policy_text", "message"),
    [
        pytest.param("limits: {maxBackends: lots}\n", "limits.maxBackends", id="invalid-field"),
        pytest.param("", "empty", id="empty-file"),
    ],
)
def test_invalid_policy_stops_serve(
    policy_text: str, message: str, pki: Pki, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text)
    run = serve(pki, "--policy", str(policy))
    assert run.returncode == 2
    assert message in run.stderr
    assert str(policy) in run.stderr


def test_unreadable_certificate_stops_serve(pki: Pki, tmp_path: Path) -> None:
    run = serve(pki, cert=tmp_path / "missing.crt")
    assert run.returncode == 2
    assert "missing.crt" in run.stderr
    assert "No such file" in run.stderr
