"""The optional audit CronJob (values `audit`): off by default; when on, it runs
`cache-injector audit` with the release's policy and revision, under its own ServiceAccount
whose ClusterRole has only what the command uses; every object validates strictly."""

from __future__ import annotations

import kubernetes_validate
import pytest

from tests.chart.chart import render

KUBERNETES_VERSION = "1.37.0"


def test_off_by_default() -> None:
    kinds = {obj["kind"] for obj in render({}).objects}
    assert not kinds & {"CronJob", "ClusterRole", "ClusterRoleBinding"}


@pytest.mark.parametrize("restart", [False, True])
def test_cronjob_runs_audit_with_the_narrowest_role(restart: bool) -> None:
    rendered = render({"audit": {"enabled": True, "restart": restart}, "revision": "canary"})
    cronjob = rendered.one("CronJob")
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][:4] == [
        "audit",
        "--policy=/etc/cache-injector/policy/policy.yaml",
        "--revision=canary",
        "--output=json",
    ]
    assert ("--restart" in container["args"]) is restart
    assert pod["volumes"][0]["configMap"]["name"].endswith("-policy")
    role = rendered.one("ClusterRole")
    verbs = {
        (resource, verb)
        for rule in role["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    expected = {("pods", "list"), ("namespaces", "list"), ("mutatingwebhookconfigurations", "list")}
    expected.add(("namespaces", "get"))  # audit -n NAMESPACE reads its labels
    if restart:
        expected |= {(kind, verb) for kind in ("deployments", "statefulsets", "daemonsets")
                     for verb in ("get", "patch")}  # fmt: skip
    assert verbs == expected
    binding = rendered.one("ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    for obj in rendered.objects:
        if obj["kind"] in ("CronJob", "ClusterRole", "ClusterRoleBinding", "ServiceAccount"):
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
