"""What the chart does for a safe fleet: the sticky-session secret (generated, kept across
upgrades, never in the policy ConfigMap, the same in every replica), the webhook's drain on
its own rollout, the slow-client bounds, and the optional NetworkPolicy."""

from __future__ import annotations

import base64
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.chart.chart import (
    FULLNAME,
    NAMESPACE,
    Rendered,
    render,
    render_upgrade,
)
from tests.chart.fake_apiserver import FakeApiServer
from webhook.serve.server import STICKY_SESSION_SECRET_ENV

STICKY = f"{FULLNAME}-sticky-session"


def secret_value(rendered: Rendered) -> str:
    return base64.b64decode(rendered.get("Secret", STICKY)["data"]["secret"]).decode()


def env_ref(rendered: Rendered) -> dict[str, Any]:
    (entry,) = [
        e for e in rendered.webhook_container()["env"] if e["name"] == STICKY_SESSION_SECRET_ENV
    ]
    ref: dict[str, Any] = entry["valueFrom"]["secretKeyRef"]
    return ref


def checksum(rendered: Rendered) -> str:
    annotations = rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    value: str = annotations["checksum/sticky-session"]
    return value


# --- sticky-session secret ---------------------------------------------------------------


def test_a_random_secret_in_a_secret_and_every_replicas_environment() -> None:
    first, second = render(), render()
    value = secret_value(first)
    assert len(value) == 48 and value.isalnum()
    assert value != secret_value(second), "random per install"
    assert env_ref(first) == {"name": STICKY, "key": "secret"}
    assert "stickySessionSecret" not in first.policy_text()
    assert value not in "\n".join(first.files.values()).replace(
        first.get("Secret", STICKY)["data"]["secret"], ""
    ), "the value appears only (encoded) in the Secret"


def test_the_secret_is_kept_across_upgrades() -> None:
    installed = render()
    with FakeApiServer().running() as api:
        api.secrets[(NAMESPACE, STICKY)] = installed.get("Secret", STICKY)
        upgraded = render_upgrade(api.url)
        assert any(path.endswith(f"/secrets/{STICKY}") for path in api.requests)
    assert secret_value(upgraded) == secret_value(installed)
    assert checksum(upgraded) == checksum(installed), "an upgrade restarts nothing"


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"stickySessions": {"secret": "given-one"}}, id="stickySessions.secret"),
        pytest.param({"policy": {"stickySessionSecret": "given-one"}}, id="policy-field"),
    ],
)
def test_a_given_secret_wins_and_never_reaches_the_configmap(values: dict[str, Any]) -> None:
    installed = render()
    with FakeApiServer().running() as api:
        api.secrets[(NAMESPACE, STICKY)] = installed.get("Secret", STICKY)
        upgraded = render_upgrade(api.url, values)
    assert secret_value(upgraded) == "given-one"
    assert "given-one" not in upgraded.policy_text()
    assert "stickySessionSecret" not in upgraded.policy_text()
    assert checksum(upgraded) != checksum(installed), "a new secret restarts the webhook"


# --- drain and slow clients --------------------------------------------------------------


def test_drain_and_slow_client_bounds_reach_the_server() -> None:
    rendered = render(
        {
            "server": {
                "preStopSeconds": 4,
                "drainSeconds": 12,
                "headerTimeoutSeconds": 3,
                "maxConnections": 2048,
            }
        }
    )
    args = rendered.webhook_container()["args"]
    for flag in (
        "--drain-seconds=12",
        "--header-timeout=3",
        "--handshake-timeout=3",
        "--max-connections=2048",
    ):
        assert flag in args
    assert rendered.webhook_container()["lifecycle"]["preStop"] == {"sleep": {"seconds": 4}}
    # preStop + drain + 20 s for in-flight reviews + 5 s to exit.
    assert rendered.deployment_pod()["terminationGracePeriodSeconds"] == 4 + 12 + 25


def test_no_prestop_when_set_to_zero() -> None:
    rendered = render({"server": {"preStopSeconds": 0}})
    assert "lifecycle" not in rendered.webhook_container()
    assert rendered.deployment_pod()["terminationGracePeriodSeconds"] == 10 + 25


# --- NetworkPolicy -----------------------------------------------------------------------

API_SERVER = [{"ipBlock": {"cidr": "10.0.0.0/24"}}]
PROMETHEUS = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}]


def test_no_network_policy_by_default() -> None:
    assert render().all("NetworkPolicy") == []


@pytest.mark.parametrize("monitor", [True, False])
def test_network_policy_admits_only_the_listed_peers(monitor: bool) -> None:
    rendered = render(
        {
            "networkPolicy": {"enabled": True, "from": API_SERVER, "metricsFrom": PROMETHEUS},
            "serviceMonitor": {"enabled": monitor},
        }
    )
    policy = rendered.one("NetworkPolicy")
    kubernetes_validate.validate(policy, "1.28.0", strict=True)
    kubernetes_validate.validate(policy, "1.37.0", strict=True)
    spec = policy["spec"]
    labels = rendered.one("Deployment")["spec"]["selector"]["matchLabels"]
    assert spec["podSelector"] == {"matchLabels": labels}
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": "https", "protocol": "TCP"}]
    test_pod = rendered.one("Pod")["metadata"]["labels"]
    expected = API_SERVER + (PROMETHEUS if monitor else [])
    assert rule["from"][: len(expected)] == expected
    (tester,) = rule["from"][len(expected) :]
    assert tester["podSelector"]["matchLabels"].items() <= test_pod.items()
    assert not tester["podSelector"]["matchLabels"].items() <= labels.items()


def test_network_policy_without_peers_is_refused() -> None:
    with pytest.raises(helm_python.HelmError, match=r"networkPolicy\.from: empty"):
        render({"networkPolicy": {"enabled": True}})


def test_values_yaml_documents_the_new_settings() -> None:
    from tests.chart.chart import CHART  # noqa: PLC0415

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["networkPolicy"] == {"enabled": False, "from": [], "metricsFrom": []}
    assert values["stickySessions"] == {"secret": ""}
    assert values["server"]["drainSeconds"] > 0
