"""Option backend-tls: what the pod and haproxy.cfg get, what is refused and why, what
`explain` says. The daemons' verdict on each variant is in test_daemon_configs.py, the
traffic in tests/e2e/test_backend_tls.py."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import make_pod, policy_from
from webhook.cli import main
from webhook.engine import names
from webhook.engine.errors import InsecureBackendTlsNotAllowed, InvalidPolicy
from webhook.engine.inject import Outcome, inject_pod
from webhook.engine.patch import uninject
from webhook.engine.policy import Policy, default_policy
from webhook.engine.render import load_templates

P = names.PREFIX
FQDN = "app.shop.svc.cluster.local"
ALLOW_SHOP = {"namespaces": {"shop": {"allowInsecureBackendTls": True}}}


def run(annotations: dict[str, str], policy: Policy | None = None) -> Outcome:
    return inject_pod(
        make_pod(annotations=annotations),
        namespace="shop",
        operation="CREATE",
        policy=policy or default_policy(),
        templates=load_templates(),
    )


def tls_lines(outcome: Outcome) -> list[str]:
    assert outcome.configs is not None
    return [
        line.strip()
        for line in outcome.configs.haproxy_cfg.splitlines()
        if line.strip().startswith("default-server ssl")
    ]


def patched(outcome: Outcome) -> dict[str, Any]:
    pod = make_pod()
    return dict(jsonpatch.apply_patch(pod, copy.deepcopy(outcome.patch)))


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name)


def test_off_by_default_adds_nothing() -> None:
    outcome = run({})
    assert outcome.injected and outcome.options is not None
    assert outcome.options.backend_tls == "off"
    assert tls_lines(outcome) == []
    assert "ssl" not in outcome.configs.haproxy_cfg.split()  # type: ignore[union-attr]
    pod = patched(outcome)
    assert not {v["name"] for v in pod["spec"]["volumes"]} & {
        names.VOLUME_BACKEND_CA,
        names.VOLUME_BACKEND_CLIENT_CERT,
    }


def test_on_verifies_against_the_configmap_and_the_service_fqdn() -> None:
    outcome = run({P + "backend-tls": "on", P + "backend-tls-ca": "app-ca"})
    assert outcome.injected, outcome.error
    assert tls_lines(outcome) == [
        "default-server ssl verify required ca-file /etc/cache-injector/backend-tls/ca/ca.pem "
        f"verifyhost {FQDN} sni str({FQDN}) check-sni {FQDN}"
    ]
    pod = patched(outcome)
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == names.VOLUME_BACKEND_CA)
    assert volume["configMap"] == {"name": "app-ca", "items": [{"key": "ca.crt", "path": "ca.pem"}]}
    mount = {"name": names.VOLUME_BACKEND_CA, "mountPath": names.BACKEND_CA_DIR, "readOnly": True}
    assert mount in container(pod, names.CONTAINER_HAPROXY)["volumeMounts"]
    varnish_mounts = container(pod, names.CONTAINER_VARNISH)["volumeMounts"]
    assert all(m["name"] != names.VOLUME_BACKEND_CA for m in varnish_mounts)
    # The pods_seen slots only count pods: no TLS there, and Varnish -> HAProxy stays HTTP.
    cfg = outcome.configs.haproxy_cfg  # type: ignore[union-attr]
    assert "bind 127.0.0.1:6090\n" in cfg
    assert outcome.warnings == []


def test_system_bundle_server_name_and_client_certificate() -> None:
    outcome = run(
        {
            P + "backend-tls": "on",
            P + "backend-tls-ca": "system",
            P + "backend-tls-server-name": "api.example.internal",
            P + "backend-tls-client-secret": "web-client",
        }
    )
    assert outcome.injected, outcome.error
    assert tls_lines(outcome) == [
        "default-server ssl verify required ca-file @system-ca verifyhost api.example.internal "
        "sni str(api.example.internal) check-sni api.example.internal "
        "crt /etc/cache-injector/backend-tls/client/client.pem"
    ]
    pod = patched(outcome)
    ours = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert names.VOLUME_BACKEND_CA not in ours  # nothing to mount for the image's bundle
    assert ours[names.VOLUME_BACKEND_CLIENT_CERT]["secret"] == {
        "secretName": "web-client",
        "items": [
            {"key": "tls.crt", "path": "client.pem"},
            {"key": "tls.key", "path": "client.pem.key"},
        ],
    }
    mounts = container(pod, names.CONTAINER_HAPROXY)["volumeMounts"]
    assert {
        "name": names.VOLUME_BACKEND_CLIENT_CERT,
        "mountPath": names.BACKEND_CLIENT_CERT_DIR,
        "readOnly": True,
    } in mounts


def test_uninject_takes_the_tls_volumes_out_again() -> None:
    outcome = run(
        {
            P + "backend-tls": "on",
            P + "backend-tls-ca": "app-ca:bundle.pem",
            P + "backend-tls-client-secret": "web-client",
        }
    )
    pod = patched(outcome)
    removed = uninject(pod)
    assert f"volumes/{names.VOLUME_BACKEND_CA}" in removed
    assert f"volumes/{names.VOLUME_BACKEND_CLIENT_CERT}" in removed
    assert "volumes" not in pod["spec"]


def test_on_without_a_ca_is_refused_naming_what_to_set() -> None:
    outcome = run({P + "backend-tls": "on"})
    assert not outcome.allowed
    message = str(outcome.error)
    assert f"{P}backend-tls-ca: (unset) is invalid" in message
    assert "CONFIGMAP[:KEY]" in message and "system" in message


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("backend-tls", "https", "off, on or insecure-skip-verify"),
        ("backend-tls", "true", "off, on or insecure-skip-verify"),
        ("backend-tls-ca", "App_CA", "CONFIGMAP is a ConfigMap name"),
        ("backend-tls-ca", "app-ca:", "KEY is a ConfigMap key"),
        ("backend-tls-ca", "app-ca:ca crt", "KEY is a ConfigMap key"),
        ("backend-tls-ca", "/etc/ssl/ca.pem", "CONFIGMAP is a ConfigMap name"),
        ("backend-tls-server-name", "*.shop.svc", "a DNS name"),
        ("backend-tls-server-name", "10.0.0.1 x", "a DNS name"),
        ("backend-tls-client-secret", "Web_Client", "a Secret name"),
    ],
)
def test_bad_values_name_the_field_the_value_and_what_is_accepted(
    key: str, value: str, accepted: str
) -> None:
    annotations = {P + "backend-tls": "on", P + "backend-tls-ca": "app-ca", P + key: value}
    outcome = run(annotations)
    assert not outcome.allowed
    message = str(outcome.error)
    assert f"{P}{key}: {value} is invalid: " in message
    assert accepted in message


def test_insecure_is_refused_unless_the_namespace_is_allowed() -> None:
    outcome = run({P + "backend-tls": "insecure-skip-verify"})
    assert not outcome.allowed
    (problem,) = outcome.error.problems  # type: ignore[union-attr]
    assert isinstance(problem, InsecureBackendTlsNotAllowed)
    assert "namespaces.shop.allowInsecureBackendTls: true" in str(problem)

    allowed = run({P + "backend-tls": "insecure-skip-verify"}, policy_from(ALLOW_SHOP))
    assert allowed.injected
    assert tls_lines(allowed) == [
        f"default-server ssl verify none sni str({FQDN}) check-sni {FQDN}"
    ]
    assert any("does not verify the backend pods' certificates" in w for w in allowed.warnings)
    # Another namespace's allowance is not this one's.
    other = run(
        {P + "backend-tls": "insecure-skip-verify"},
        policy_from({"namespaces": {"dev": {"allowInsecureBackendTls": True}}}),
    )
    assert not other.allowed


def test_companions_without_tls_are_reported_not_silently_ignored() -> None:
    outcome = run({P + "backend-tls-ca": "app-ca", P + "backend-tls-server-name": "x.example"})
    assert outcome.injected
    assert f"{P}backend-tls-ca is ignored: {P}backend-tls is off" in outcome.warnings
    assert f"{P}backend-tls-server-name is ignored: {P}backend-tls is off" in outcome.warnings


def test_namespace_default_turns_tls_on_for_its_pods() -> None:
    policy = policy_from(
        {"namespaces": {"shop": {"backend-tls": "on", "backend-tls-ca": "cluster-ca"}}}
    )
    outcome = run({}, policy)
    assert outcome.injected and outcome.options is not None
    assert outcome.options.sources["backend_tls"] == "namespace-policy"
    assert "ca-file /etc/cache-injector/backend-tls/ca/ca.pem" in tls_lines(outcome)[0]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (
            {"defaults": {"backend-tls": "insecure-skip-verify"}},
            'defaults.backend-tls: "insecure-skip-verify": off or on; skipping verification',
        ),
        (
            {"namespaces": {"shop": {"backend-tls": "insecure-skip-verify"}}},
            'namespaces.shop.backend-tls: "insecure-skip-verify": off or on; the cluster policy '
            "does not let namespace shop",
        ),
        (
            {"defaults": {"backend-tls-ca": "Bad:Name"}},
            'defaults.backend-tls-ca: "Bad:Name": CONFIGMAP[:KEY] where CONFIGMAP',
        ),
        (
            {"namespaces": {"shop": {"allowInsecureBackendTls": "yes"}}},
            "namespaces.shop.allowInsecureBackendTls",
        ),
    ],
)
def test_policy_check_refuses_insecure_defaults_and_bad_values(
    data: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        policy_from(data)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_policy_allows_insecure_default_where_the_namespace_is_allowed() -> None:
    policy = policy_from(
        {
            "namespaces": {
                "dev": {"backend-tls": "insecure-skip-verify", "allowInsecureBackendTls": True}
            }
        }
    )
    assert policy.may_skip_tls_verify("dev") and not policy.may_skip_tls_verify("shop")


def pod_yaml(annotations: dict[str, str]) -> str:
    return yaml.safe_dump(make_pod(annotations=annotations))


def test_explain_says_what_haproxy_verifies_and_the_hint() -> None:
    stdin = pod_yaml({P + "backend-tls": "on", P + "backend-tls-ca": "app-ca:root.pem"})
    result = CliRunner().invoke(main, ["explain", "-f", "-"], input=stdin)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("    backend TLS: "))
    assert "ConfigMap app-ca key root.pem" in line
    assert f"name {FQDN} (also sent as SNI" in line
    assert '"SSL handshake failure"' in line and "503" in line
    assert "backend-tls=on (annotation)" in result.stdout

    result = CliRunner().invoke(main, ["explain", "-f", "-", "-o", "json"], input=stdin)
    (record,) = json.loads(result.stdout)
    assert "ConfigMap app-ca key root.pem" in record["backendTls"]


def test_explain_without_tls_prints_no_tls_line() -> None:
    result = CliRunner().invoke(main, ["explain", "-f", "-"], input=pod_yaml({}))
    assert result.exit_code == 0
    assert "backend TLS" not in result.stdout
    assert "backend-tls=off (built-in)" in result.stdout
