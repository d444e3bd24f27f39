"""TLS from cache-haproxy to the backend pods (option backend-tls and its companions).

Owns: what the options mean together — the rules across them and the policy allowance, the
HAProxy server keywords, the volumes and mounts that carry the CA bundle and the client
certificate, the warnings, and the sentence `explain` prints. Does not: parse single values
(values.py) or place anything in the pod (builder.py, render.py call in here).
Varnish to HAProxy stays plain HTTP on localhost: caching never sees TLS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from . import names, values
from .errors import InsecureBackendTlsNotAllowed, InvalidAnnotation
from .policy import INSECURE_TLS, Policy, insecure_tls_refusal


class Options(Protocol):
    """What this module reads of options.Options (which sits to its right)."""

    @property
    def backend_tls(self) -> str: ...
    @property
    def backend_tls_ca(self) -> values.TlsCa | None: ...
    @property
    def backend_tls_server_name(self) -> str | None: ...
    @property
    def backend_tls_client_secret(self) -> str | None: ...
    @property
    def sources(self) -> Mapping[str, str]: ...


OFF, ON = "off", "on"
COMPANIONS = ("backend_tls_ca", "backend_tls_server_name", "backend_tls_client_secret")
# What HAProxy (2.6 and 3.4 alike) logs as a backend pod's health check fails: a certificate
# not from the CA (or a refused client certificate), and one that names another host.
HANDSHAKE_FAILURE = "SSL handshake failure"
WRONG_NAME = "Server presented an SSL certificate different from the expected one"


def _key(name: str) -> str:
    return names.OPTIONS_BY_NAME[name].key


def check(
    parsed: Mapping[str, object],
    texts: Mapping[str, str | None],
    sources: Mapping[str, str],
    namespace: str,
    policy: Policy,
) -> list[InvalidAnnotation]:
    """The rules across the options: `on` needs a CA; insecure needs the policy's allowance."""
    mode = parsed.get("backend_tls")
    problems: list[InvalidAnnotation] = []
    if mode == ON and parsed.get("backend_tls_ca") is None and "backend_tls_ca" in parsed:
        problems.append(
            InvalidAnnotation(
                _key("backend_tls_ca"),
                "(unset)",
                f"with {_key('backend_tls')}: on, the CA the backend pods' certificates chain "
                "to: CONFIGMAP[:KEY] (a ConfigMap in namespace "
                f"{namespace}; KEY default {names.BACKEND_CA_DEFAULT_KEY}) or "
                f"{names.BACKEND_CA_SYSTEM} (the HAProxy image's bundle); or "
                f"{_key('backend_tls')}: {INSECURE_TLS} where the policy allows it",
            )
        )
    if mode == INSECURE_TLS and not policy.may_skip_tls_verify(namespace):
        source = sources.get("backend_tls", "annotation")
        shown = INSECURE_TLS + ("" if source == "annotation" else f" (from {source})")
        problems.append(
            InsecureBackendTlsNotAllowed(
                _key("backend_tls"), shown, insecure_tls_refusal(namespace)
            )
        )
    return problems


def warnings(options: Options) -> list[str]:
    """Allowed but worth saying at admission: no verification, or companions that do nothing."""
    mode = options.backend_tls
    out: list[str] = []
    if mode == INSECURE_TLS:
        out.append(
            f"{_key('backend_tls')}: {INSECURE_TLS}: {names.CONTAINER_HAPROXY} does not verify "
            "the backend pods' certificates: the traffic is encrypted, but anyone who can "
            "answer on a pod's address can read and change it"
        )
    unused = [
        name
        for name in COMPANIONS
        if options.sources[name] == "annotation"
        and (mode == OFF or (mode == INSECURE_TLS and name == "backend_tls_ca"))
    ]
    for name in unused:
        out.append(f"{_key(name)} is ignored: {_key('backend_tls')} is {mode}")
    return out


def server_name(options: Options, fqdn: str) -> str:
    """SNI and the verified name: the Service FQDN (pods' certificates name the Service,
    not a pod IP) unless backend-tls-server-name says otherwise."""
    name = options.backend_tls_server_name
    return str(name) if name else fqdn


def ca_file(ca: values.TlsCa) -> str:
    """HAProxy's ca-file: the mounted key, or @system-ca (HAProxy 2.6+: OpenSSL's default
    CA directory of the image)."""
    if ca.config_map is None:
        return "@system-ca"
    return f"{names.BACKEND_CA_DIR}/{names.BACKEND_CA_FILE}"


def server_keywords(options: Options, fqdn: str) -> str:
    """The `default-server` keywords for the backend pods; empty when TLS is off.

    `ssl` on a server also makes its health checks use TLS (no check port is set), with the
    same verification; `check-sni` because checks do not send the `sni` expression's name.
    """
    mode = options.backend_tls
    if mode == OFF:
        return ""
    name = server_name(options, fqdn)
    words = ["ssl"]
    if mode == ON:
        assert options.backend_tls_ca is not None, "check() requires a CA with on"
        words += ["verify required", f"ca-file {ca_file(options.backend_tls_ca)}"]
        words.append(f"verifyhost {name}")
    else:
        words.append("verify none")
    words += [f"sni str({name})", f"check-sni {name}"]
    if options.backend_tls_client_secret:
        words.append(f"crt {names.BACKEND_CLIENT_CERT_DIR}/{names.BACKEND_CLIENT_CERT_FILE}")
    return " ".join(words)


def volumes(options: Options) -> list[dict[str, Any]]:
    """The CA's ConfigMap key and the client certificate's Secret, as pod volumes. Neither is
    optional: a missing one keeps the pod from starting, with the kubelet's event naming it,
    rather than HAProxy starting with TLS it cannot do."""
    out: list[dict[str, Any]] = []
    if options.backend_tls == OFF:
        return out
    ca = options.backend_tls_ca
    if options.backend_tls == ON and ca is not None and ca.config_map is not None:
        out.append(
            {
                "name": names.VOLUME_BACKEND_CA,
                "configMap": {
                    "name": ca.config_map,
                    "items": [{"key": ca.key, "path": names.BACKEND_CA_FILE}],
                },
            }
        )
    if options.backend_tls_client_secret:
        cert = names.BACKEND_CLIENT_CERT_FILE
        out.append(
            {
                "name": names.VOLUME_BACKEND_CLIENT_CERT,
                "secret": {
                    "secretName": options.backend_tls_client_secret,
                    "items": [
                        {"key": "tls.crt", "path": cert},
                        {"key": "tls.key", "path": f"{cert}.key"},
                    ],
                },
            }
        )
    return out


MOUNT_PATHS = {
    names.VOLUME_BACKEND_CA: names.BACKEND_CA_DIR,
    names.VOLUME_BACKEND_CLIENT_CERT: names.BACKEND_CLIENT_CERT_DIR,
}


def mounts(options: Options) -> list[dict[str, Any]]:
    """cache-haproxy's read-only mounts of volumes()."""
    return [
        {"name": volume["name"], "mountPath": MOUNT_PATHS[volume["name"]], "readOnly": True}
        for volume in volumes(options)
    ]


def describe(options: Options, fqdn: str) -> str | None:
    """What HAProxy will verify, in one sentence, with the hint for when it fails."""
    mode = options.backend_tls
    if mode == OFF:
        return None
    name = server_name(options, fqdn)
    client = (
        f"; presents the client certificate of Secret {options.backend_tls_client_secret}"
        if options.backend_tls_client_secret
        else ""
    )
    if mode == INSECURE_TLS:
        return (
            f"HTTPS to the backend pods WITHOUT verifying their certificates (SNI {name}"
            f"{client}): encrypted, not authenticated"
        )
    ca = options.backend_tls_ca
    assert ca is not None, "check() requires a CA with on"
    source = (
        "the HAProxy image's system CA bundle (public CAs)"
        if ca.config_map is None
        else f"ConfigMap {ca.config_map} key {ca.key} (mounted at "
        f"{names.BACKEND_CA_DIR}/{names.BACKEND_CA_FILE}, read when HAProxy starts)"
    )
    return (
        f"HTTPS to the backend pods: each pod's certificate must chain to {source} and name "
        f"{name} (also sent as SNI; health checks too){client}. If not, HAProxy marks the pod "
        f"DOWN and clients get 503; {names.CONTAINER_HAPROXY}'s log says "
        f'"{HANDSHAKE_FAILURE}" (not from that CA, or the client certificate refused) or '
        f'"{WRONG_NAME}" (a certificate for another name): compare the pods\' certificates '
        f"(openssl s_client -connect POD_IP:PORT -servername {name}) with that CA and name"
    )
