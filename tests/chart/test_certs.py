"""The three certificate modes: what the API server trusts is what signed the webhook's
serving certificate, and mode helm keeps its CA across upgrades."""

from __future__ import annotations

import base64
import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.chart.chart import (
    FULLNAME,
    NAMESPACE,
    Rendered,
    example_ca,
    existing_certs,
    render,
    render_upgrade,
)
from tests.chart.fake_apiserver import FakeApiServer

SECRET = f"{FULLNAME}-tls"
SERVICE_NAMES = [
    FULLNAME,
    f"{FULLNAME}.{NAMESPACE}",
    f"{FULLNAME}.{NAMESPACE}.svc",
    f"{FULLNAME}.{NAMESPACE}.svc.cluster.local",
]


def _decode(value: str) -> bytes:
    return base64.b64decode(value)


def _ca_bundles(rendered: Rendered) -> list[str | None]:
    mwc = rendered.one("MutatingWebhookConfiguration")
    return [hook["clientConfig"].get("caBundle") for hook in mwc["webhooks"]]


def _tls_volume(rendered: Rendered) -> dict[str, Any]:
    volumes = {volume["name"]: volume for volume in rendered.deployment_pod()["volumes"]}
    secret: dict[str, Any] = volumes["tls"]["secret"]
    return secret


def _test_pod_ca_volume(rendered: Rendered) -> dict[str, Any]:
    (volume,) = rendered.one("Pod")["spec"]["volumes"]
    return {key: value for key, value in volume.items() if key != "name"}


def tls_secrets(rendered: Rendered) -> list[dict[str, Any]]:
    return [
        secret for secret in rendered.all("Secret") if secret.get("type") == "kubernetes.io/tls"
    ]


def _sans(cert: x509.Certificate) -> list[str]:
    extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return extension.value.get_values_for_type(x509.DNSName)


def check_serving_certificate(data: dict[str, str], dns_names: list[str]) -> x509.Certificate:
    """tls.crt is signed by ca.crt for exactly these names, and tls.key is its key."""
    ca = x509.load_pem_x509_certificate(_decode(data["ca.crt"]))
    cert = x509.load_pem_x509_certificate(_decode(data["tls.crt"]))
    key = serialization.load_pem_private_key(_decode(data["tls.key"]), password=None)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert key.public_key().public_numbers() == public.public_numbers()
    assert sorted(_sans(cert)) == sorted(dns_names)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    return cert


@pytest.fixture(scope="module")
def helm_mode() -> Rendered:
    return render()


def test_helm_mode_generates_a_ca_and_a_serving_certificate(helm_mode: Rendered) -> None:
    secret = helm_mode.get("Secret", SECRET)
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    cert = check_serving_certificate(secret["data"], SERVICE_NAMES)
    days = (cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).days
    assert 3640 < days <= 3650
    # What the API server trusts is the CA that signed it.
    assert _ca_bundles(helm_mode) == [secret["data"]["ca.crt"]] * 2
    assert _tls_volume(helm_mode)["secretName"] == SECRET
    assert _test_pod_ca_volume(helm_mode) == {
        "secret": {"secretName": SECRET, "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    }


def test_helm_mode_follows_validity_and_cluster_domain() -> None:
    rendered = render(
        {"certs": {"helm": {"validityDays": 30}}, "policy": {"clusterDomain": "corp.example"}}
    )
    data = rendered.get("Secret", SECRET)["data"]
    names = [*SERVICE_NAMES[:3], f"{FULLNAME}.{NAMESPACE}.svc.corp.example"]
    cert = check_serving_certificate(data, names)
    days = (cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).days
    assert 28 <= days <= 30


def test_without_cluster_access_every_render_makes_a_new_ca() -> None:
    """Why GitOps tools that only template should not use mode helm (values.yaml says so)."""
    first, second = render(), render()
    assert (
        first.get("Secret", SECRET)["data"]["ca.crt"]
        != second.get("Secret", SECRET)["data"]["ca.crt"]
    )


def test_helm_mode_keeps_the_ca_across_upgrades() -> None:
    with FakeApiServer().running() as api:
        installed = render()
        secret = installed.get("Secret", SECRET)
        api.secrets[(NAMESPACE, SECRET)] = secret
        upgraded = render_upgrade(api.url)
        assert any(
            path.startswith(f"/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}")
            for path in api.requests
        )
    assert upgraded.get("Secret", SECRET)["data"] == secret["data"]
    assert _ca_bundles(upgraded) == [secret["data"]["ca.crt"]] * 2


@pytest.mark.parametrize(
    "missing",
    [
        pytest.param("ca.crt", id="no-ca"),
        pytest.param("tls.key", id="no-key"),
        pytest.param(None, id="no-secret"),
    ],
)
def test_helm_mode_regenerates_an_incomplete_secret(missing: str | None) -> None:
    with FakeApiServer().running() as api:
        secret = render().get("Secret", SECRET)
        if missing:
            del secret["data"][missing]
            api.secrets[(NAMESPACE, SECRET)] = secret
        upgraded = render_upgrade(api.url)
    data = upgraded.get("Secret", SECRET)["data"]
    assert data["tls.crt"] != secret["data"]["tls.crt"]
    check_serving_certificate(data, SERVICE_NAMES)
    assert _ca_bundles(upgraded) == [data["ca.crt"]] * 2


def test_other_modes_never_look_up_the_secret() -> None:
    with FakeApiServer().running() as api:
        render_upgrade(api.url, {"certs": {"mode": "cert-manager"}})
        render_upgrade(api.url, {"certs": existing_certs()})
    # (The sticky-session Secret is looked up in every mode: test_sticky_session.py.)
    assert not any(f"/secrets/{SECRET}" in path for path in api.requests)


def test_cert_manager_mode_builds_a_ca_chain() -> None:
    rendered = render({"certs": {"mode": "cert-manager"}})
    assert not tls_secrets(rendered), "cert-manager writes the Secret"
    selfsigned = rendered.get("Issuer", f"{FULLNAME}-selfsigned")
    assert selfsigned["spec"] == {"selfSigned": {}}
    ca = rendered.get("Certificate", f"{FULLNAME}-ca")
    assert ca["spec"]["isCA"] is True
    assert ca["spec"]["issuerRef"]["name"] == selfsigned["metadata"]["name"]
    ca_issuer = rendered.get("Issuer", f"{FULLNAME}-ca")
    assert ca_issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    serving = rendered.get("Certificate", SECRET)
    assert serving["spec"]["issuerRef"] == {
        "name": ca_issuer["metadata"]["name"],
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    assert serving["spec"]["secretName"] == _tls_volume(rendered)["secretName"]
    assert serving["spec"]["dnsNames"] == SERVICE_NAMES
    assert (serving["spec"]["duration"], serving["spec"]["renewBefore"]) == ("2160h", "720h")
    mwc = rendered.one("MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NAMESPACE}/{serving['metadata']['name']}"
    }
    assert _ca_bundles(rendered) == [None, None], "the cainjector fills them"
    assert _test_pod_ca_volume(rendered)["secret"]["secretName"] == serving["spec"]["secretName"]


def test_cert_manager_mode_with_a_cluster_issuer() -> None:
    rendered = render(
        {
            "certs": {
                "mode": "cert-manager",
                "certManager": {"issuerRef": {"name": "corp", "kind": "ClusterIssuer"}},
            }
        }
    )
    assert rendered.all("Issuer") == []
    serving = rendered.one("Certificate")
    assert serving["spec"]["issuerRef"] == {
        "name": "corp",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    annotations = rendered.one("MutatingWebhookConfiguration")["metadata"]["annotations"]
    assert (
        annotations["cert-manager.io/inject-ca-from"]
        == f"{NAMESPACE}/{serving['metadata']['name']}"
    )


@pytest.mark.parametrize(
    "wrap", [pytest.param(False, id="one-line"), pytest.param(True, id="wrapped-like-base64-76")]
)
def test_existing_mode_uses_the_given_secret_and_bundle(wrap: bool) -> None:
    pem, bundle = example_ca()
    given = "\n".join(bundle[i : i + 76] for i in range(0, len(bundle), 76)) if wrap else bundle
    values = {
        "certs": {"mode": "existing", "existing": {"secretName": "my-tls", "caBundle": given}}
    }
    rendered = render(values)
    assert tls_secrets(rendered) == [] and rendered.all("Certificate") == []
    assert _tls_volume(rendered)["secretName"] == "my-tls"
    assert _ca_bundles(rendered) == [bundle] * 2
    ca_map = rendered.get("ConfigMap", f"{FULLNAME}-ca")
    assert ca_map["data"]["ca.crt"].strip() == pem.strip()
    assert _test_pod_ca_volume(rendered)["configMap"]["name"] == f"{FULLNAME}-ca"
