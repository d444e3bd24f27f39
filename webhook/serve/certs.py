"""TLS for the webhook: a CA and serving certificate, and a serving context that follows the
certificate files as they rotate.

Owns: generating a CA and a serving certificate whose SANs are the Service's in-cluster names
(`certs generate`); loading a cert/key pair into an SSLContext (TLS 1.2 minimum); and which
pair new handshakes get: every handshake starts on the context uvicorn was given, whose
`sni_callback` moves it to the newest good pair, so a rotation needs no restart and a broken
new pair is rejected while the old one keeps serving.
Does not: watch files (watch.py), log or count (server.py), or serve HTTP.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..engine.errors import InvalidCertificate

CA_CERT, CA_KEY, TLS_CERT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"
# Tolerated clock skew between this machine and the API server.
BACKDATE = datetime.timedelta(minutes=5)


def service_names(service: str, namespace: str) -> list[str]:
    """The DNS names the API server may use for the webhook's Service."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@dataclass(frozen=True)
class Authority:
    """A CA that signs serving certificates."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _builder(
    common_name: str,
    issuer: x509.Name | None,
    public: ec.EllipticCurvePublicKey,
    days: int,
    *,
    authority: bool,
) -> x509.CertificateBuilder:
    """What the CA and the serving certificate share: subject, issuer (None: self-signed),
    validity from BACKDATE ago, and the constraints and key usage of a CA or a leaf."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if issuer is None else issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.BasicConstraints(ca=authority, path_length=0 if authority else None),
            critical=True,
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=authority,
                crl_sign=authority,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def new_authority(common_name: str, days: int) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _builder(common_name, None, key.public_key(), days, authority=True).sign(
        key, hashes.SHA256()
    )
    return Authority(certificate, key)


def load_authority(cert_path: Path, key_path: Path) -> Authority:
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: not an EC private key")
    return Authority(certificate, key)


def issue_serving(
    authority: Authority, *, common_name: str, hosts: Sequence[str], days: int
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A serving certificate (serverAuth) for `hosts`, signed by the authority."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_public = authority.certificate.public_key()
    assert isinstance(ca_public, ec.EllipticCurvePublicKey)
    certificate = (
        _builder(
            common_name, authority.certificate.subject, key.public_key(), days, authority=False
        )
        .add_extension(
            x509.SubjectAlternativeName([_general_name(host) for host in hosts]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
        .sign(authority.key, hashes.SHA256())
    )
    return certificate, key


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Readers see the old file or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


@dataclass(frozen=True)
class Generated:
    """What `certs generate` wrote."""

    directory: Path
    names: tuple[str, ...]
    serial: int
    not_after: datetime.datetime
    new_ca: bool


def generate(
    out: Path,
    *,
    service: str,
    namespace: str,
    hosts: Sequence[str] = (),
    days: int = 365,
    ca_days: int = 3650,
    new_ca: bool = False,
) -> Generated:
    """Write ca.crt, ca.key, tls.crt and tls.key into `out` (keys mode 0600).

    A CA already in `out` signs the new serving certificate (a rotation clients need not
    notice), unless `new_ca`.
    """
    out.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = out / CA_CERT, out / CA_KEY
    reuse = not new_ca and ca_cert.is_file() and ca_key.is_file()
    if reuse:
        authority = load_authority(ca_cert, ca_key)
    else:
        authority = new_authority(f"{service}.{namespace} webhook CA", ca_days)
        write_atomically(ca_key, _pem_key(authority.key), 0o600)
        write_atomically(
            ca_cert, authority.certificate.public_bytes(serialization.Encoding.PEM), 0o644
        )
    names = [*service_names(service, namespace), *[h for h in hosts if h]]
    names = list(dict.fromkeys(names))
    certificate, key = issue_serving(
        authority, common_name=f"{service}.{namespace}.svc", hosts=names, days=days
    )
    # Key first: a reader that sees the new certificate then finds its key already there.
    write_atomically(out / TLS_KEY, _pem_key(key), 0o600)
    write_atomically(out / TLS_CERT, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return Generated(
        out, tuple(names), certificate.serial_number, certificate.not_valid_after_utc, not reuse
    )


@dataclass(frozen=True)
class ServingPair:
    """A loaded certificate/key pair, ready for handshakes."""

    context: ssl.SSLContext
    serial: int
    not_after: datetime.datetime
    subject: str

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "x")


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def load_pair(cert_path: Path, key_path: Path) -> ServingPair:
    """Load and check a pair: PEM, a certificate and the key that belongs to it."""

    def invalid(reason: str) -> InvalidCertificate:
        return InvalidCertificate(str(cert_path), str(key_path), reason)

    try:
        cert_bytes, key_bytes = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as err:
        raise invalid(f"{err.filename}: {err.strerror}") from None
    try:
        leaf = x509.load_pem_x509_certificate(cert_bytes)
    except ValueError:
        raise invalid("the certificate file holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError):
        raise invalid("the key file holds no unencrypted PEM private key") from None
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise invalid("the key does not belong to the certificate")
    context = server_context()
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as err:
        # The files changed between the checks above and this load: the watcher sees the
        # change and loads again.
        raise invalid(f"cannot load the pair: {err}") from None
    return ServingPair(
        context=context,
        serial=leaf.serial_number,
        not_after=leaf.not_valid_after_utc,
        subject=leaf.subject.rfc4514_string(),
    )


class ServingCertificate:
    """The pair new handshakes get, swapped whole when the files change."""

    def __init__(self, cert_path: Path, key_path: Path) -> None:
        self.cert_path, self.key_path = cert_path, key_path
        self.current = load_pair(cert_path, key_path)
        # The context handed to uvicorn. Each handshake starts on it; the callback, run on
        # every ClientHello (with or without SNI), moves the connection to the newest pair.
        self.context = self.current.context
        self.context.sni_callback = self._select

    def _select(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        newest = self.current.context
        if connection.context is not newest:
            connection.context = newest

    def reload(self) -> ServingPair:
        """Load the files again; on InvalidCertificate the current pair stays in force."""
        pair = load_pair(self.cert_path, self.key_path)
        self.current = pair
        return pair
