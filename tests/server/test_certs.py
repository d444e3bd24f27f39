"""`cache-injector certs generate` and loading serving pairs, without a server."""

from __future__ import annotations

import ipaddress
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from webhook.engine.errors import InvalidCertificate
from webhook.serve import certs

from .support import CLI


def generate(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            CLI,
            "certs",
            "generate",
            "--service",
            "hook",
            "--namespace",
            "infra",
            "--out",
            str(out),
            *list(extra),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_generate_writes_ca_and_serving_pair_with_service_names(tmp_path: Path) -> None:
    run = generate(tmp_path, "--host", "127.0.0.1", "--host", "localhost", "--days", "30")
    assert run.returncode == 0, run.stderr
    for name, mode in (
        ("ca.crt", 0o644),
        ("ca.key", 0o600),
        ("tls.crt", 0o644),
        ("tls.key", 0o600),
    ):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    serving, ca = load(tmp_path / "tls.crt"), load(tmp_path / "ca.crt")
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        "hook",
        "hook.infra",
        "hook.infra.svc",
        "hook.infra.svc.cluster.local",
        "localhost",
    ]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert serving.issuer == ca.subject
    serving.verify_directly_issued_by(ca)
    usage = serving.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = serving.not_valid_after_utc - serving.not_valid_before_utc
    assert 30 <= lifetime.days <= 31
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3650


def test_generate_again_reuses_the_ca(tmp_path: Path) -> None:
    assert generate(tmp_path).returncode == 0
    first_ca, first = (tmp_path / "ca.crt").read_bytes(), load(tmp_path / "tls.crt")
    run = generate(tmp_path)
    assert "existing CA" in run.stdout
    assert (tmp_path / "ca.crt").read_bytes() == first_ca
    second = load(tmp_path / "tls.crt")
    assert second.serial_number != first.serial_number
    second.verify_directly_issued_by(load(tmp_path / "ca.crt"))


def test_generate_new_ca_on_request(tmp_path: Path) -> None:
    assert generate(tmp_path).returncode == 0
    first_ca = (tmp_path / "ca.crt").read_bytes()
    assert generate(tmp_path, "--new-ca").returncode == 0
    assert (tmp_path / "ca.crt").read_bytes() != first_ca


def test_generate_rejects_a_service_that_is_not_a_dns_label(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            CLI,
            "certs",
            "generate",
            "--service",
            "Hook_1",
            "--namespace",
            "x",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert "--service: Hook_1 is invalid" in run.stderr


@pytest.fixture
def pair(tmp_path: Path) -> certs.Generated:
    return certs.generate(tmp_path, service="hook", namespace="infra")


def test_load_pair_serves_tls_1_2_or_newer(pair: certs.Generated) -> None:
    loaded = certs.load_pair(pair.directory / "tls.crt", pair.directory / "tls.key")
    assert loaded.serial == pair.serial
    assert loaded.context.minimum_version == ssl.TLSVersion.TLSv1_2


def other_key(tmp_path: Path) -> bytes:
    return (
        certs.generate(tmp_path / "other", service="x", namespace="y")
        .directory.joinpath("tls.key")
        .read_bytes()
    )


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        pytest.param("missing-key", "No such file", id="missing-key"),
        pytest.param("empty-cert", "no PEM certificate", id="empty-cert"),
        pytest.param("garbage-key", "no unencrypted PEM private key", id="garbage-key"),
        pytest.param("key-of-another-cert", "does not belong", id="mismatched-pair"),
    ],
)
def test_load_pair_rejects_a_broken_pair(
    breakage: str, reason: str, pair: certs.Generated, tmp_path: Path
) -> None:
    cert, key = pair.directory / "tls.crt", pair.directory / "tls.key"
    if breakage == "missing-key":
        key.unlink()
    elif breakage == "empty-cert":
        cert.write_bytes(b"")
    elif breakage == "garbage-key":
        key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    else:
        key.write_bytes(other_key(tmp_path))
    with pytest.raises(InvalidCertificate) as raised:
        certs.load_pair(cert, key)
    assert reason in raised.value.reason


def test_serving_certificate_keeps_the_old_pair_when_the_new_one_is_broken(
    pair: certs.Generated, tmp_path: Path
) -> None:
    serving = certs.ServingCertificate(pair.directory / "tls.crt", pair.directory / "tls.key")
    (pair.directory / "tls.key").write_bytes(other_key(tmp_path))
    with pytest.raises(InvalidCertificate):
        serving.reload()
    assert serving.current.serial == pair.serial
