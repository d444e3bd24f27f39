"""Failure semantics on a real API server: what `failurePolicy` does while no webhook pod is
ready, and how `cache-injector audit` (run as the chart's own audit ServiceAccount) finds and
repairs the pods that `Ignore` let through without a cache.

The release runs on a cluster of this module's own: the tests scale the webhook to 0 and
upgrade the chart."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client

from tests.kube.cluster import RELEASE, Cluster
from tests.kube.conftest import wait_for
from tests.kube.operate import (
    CLI,
    Audit,
    account_kubeconfig,
    apps,
    audit_identity,
    chart_policy,
    deployment,
    events,
    injected,
    make_namespace,
    name_of,
    pods_of,
    release_cluster,
    run_audit,
    scale_webhook,
    upgrade,
)
from webhook.engine import names

EXCLUDED = "legacy"  # in policy.excludeNamespaces, and labelled for injection all the same
VALUES: dict[str, Any] = {"policy": {"excludeNamespaces": [EXCLUDED]}}
CANARY_NAMESPACE = "canary-system"  # a second release, revision canary
RUNNING: set[str] = set()


@pytest.fixture(scope="module")
def kube() -> Iterator[Cluster]:
    with release_cluster(VALUES, RUNNING) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def as_audit(kube: Cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(kubeconfig of the chart's audit ServiceAccount, the chart's policy file)."""
    return audit_identity(kube, tmp_path_factory.mktemp("audit"))


def bare_pod(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": labels or {},
            "annotations": {"cache-injector.io/backend": "app:8080"},
        },
        "spec": {"containers": [{"name": "app", "image": "python:3.11", "command": ["true"]}]},
    }


def refusal(kube: Cluster, namespace: str, body: dict[str, Any]) -> str:
    """The API server's message refusing the pod (AssertionError if it was created)."""
    try:
        kube.core.create_namespaced_pod(namespace, cast(Any, body))
    except client.exceptions.ApiException as err:
        return str(json.loads(err.body or "{}")["message"])
    raise AssertionError(f"pod {body['metadata']['name']} created in {namespace}")


def audit_ok(result: Audit) -> Audit:
    assert result.code in (0, 1), f"audit failed ({result.code}): {result.stderr}"
    return result


def test_ignore_lets_plain_pods_through_and_audit_restart_injects_them(
    kube: Cluster, as_audit: tuple[Path, Path]
) -> None:
    """No webhook endpoint + Ignore: the Deployment's pods are created without a cache. The
    chart's audit identity finds every one as missing, and --restart (webhook back) replaces
    them with injected pods."""
    kubeconfig, policy = as_audit
    ns = make_namespace(kube, "ignore", running=RUNNING)
    scale_webhook(kube, 0)
    apps(kube).create_namespaced_deployment(ns, cast(Any, deployment("web", 2)))
    plain = wait_for("2 pods of web", lambda: len(pods_of(kube, ns, "web")) == 2 and
                     pods_of(kube, ns, "web"))  # fmt: skip
    assert not any(injected(p) for p in plain), "created while no webhook pod was ready"
    plain_names = {name_of(p) for p in plain}

    found = audit_ok(run_audit(kubeconfig, policy))
    assert found.code == 1
    assert found.kinds() == dict.fromkeys(plain_names, "missing"), found.report
    assert {f["owner"] for f in found.report["findings"]} == {"Deployment/web"}
    # One namespace only, as docs/day2.md shows it (`audit -n shop`), with the same identity.
    scoped = audit_ok(run_audit(kubeconfig, policy, "-n", ns))
    assert scoped.kinds() == found.kinds()

    scale_webhook(kube, 2)
    repaired = audit_ok(run_audit(kubeconfig, policy, "--restart", "--rollout-timeout", "120"))
    restarts = [(r["namespace"], r["owner"], r["result"]) for r in repaired.report["restarts"]]
    assert restarts == [(ns, "Deployment/web", "restarted")], repaired.report
    wait_for(
        "only injected pods of web, the plain ones gone",
        lambda: {name_of(p) for p in kube.core.list_namespaced_pod(ns).items}.isdisjoint(
            plain_names
        ),
        timeout=90,
    )
    now = pods_of(kube, ns, "web")
    assert len(now) == 2 and all(injected(p) for p in now), [name_of(p) for p in now]
    clean = audit_ok(run_audit(kubeconfig, policy))
    assert (clean.code, clean.report["findings"]) == (0, []), clean.report


def test_fail_refuses_selected_pods_and_admits_exempt_namespaces(kube: Cluster) -> None:
    """Fail + no webhook endpoint: a selected pod is refused with an error naming our webhook
    (both entries); kube-system, an excluded namespace and an unlabelled one are never sent
    to the webhook, so their pods are created. With the webhook back, the refused
    Deployment's ReplicaSet creates its pods, injected."""
    upgrade(kube, {**VALUES, "webhook": {"failurePolicy": "Fail"}})
    configuration = client.AdmissionregistrationV1Api(kube.api).read_mutating_webhook_configuration(
        RELEASE
    )
    assert {w.failure_policy for w in configuration.webhooks or []} == {"Fail"}
    labelled = make_namespace(kube, "fail")
    plain = make_namespace(kube, "plain", inject=False)
    excluded = {"metadata": {"name": EXCLUDED, "labels": {names.LABEL_INJECT: "enabled"}}}
    kube.core.create_namespace(cast(Any, excluded))
    kube.wait_service_account(EXCLUDED)
    scale_webhook(kube, 0)

    message = refusal(kube, labelled, bare_pod("refused"))
    print("refused:", message)
    assert 'failed calling webhook "namespace-label.cache-injector.io"' in message
    assert f'no endpoints available for service "{RELEASE}"' in message
    by_label = refusal(kube, plain, bare_pod("labelled", {names.LABEL_INJECT: "enabled"}))
    assert 'failed calling webhook "pod-label.cache-injector.io"' in by_label

    apps(kube).create_namespaced_deployment(labelled, cast(Any, deployment("web", 2, node=False)))
    failed = wait_for(
        "a FailedCreate event of web's ReplicaSet",
        lambda: events(kube, labelled, "FailedCreate"),
        timeout=60,
    )
    assert "namespace-label.cache-injector.io" in failed[0].message, failed[0].message
    assert pods_of(kube, labelled, "web") == []

    for namespace in ("kube-system", EXCLUDED, plain):
        created = kube.core.create_namespaced_pod(namespace, cast(Any, bare_pod("exempt")))
        assert not injected(created), namespace

    scale_webhook(kube, 2)
    retried = wait_for(
        "web's pods created once the webhook is back",
        lambda: len(pods_of(kube, labelled, "web")) == 2 and pods_of(kube, labelled, "web"),
        timeout=120,
    )
    assert all(injected(p) for p in retried)


def test_audit_findings_on_real_pods(
    kube: Cluster, as_audit: tuple[Path, Path], tmp_path: Path
) -> None:
    """The real-server counterparts of tests/cluster/test_audit.py's sample cluster: pods the
    webhook injected are current with the chart's policy and stale with another; an injected
    pod whose namespace lost its label is unselected; a status annotation edited by hand is
    unreadable; a Succeeded pod is not looked at; an identity without the chart's RBAC gets
    a clear 403 (exit 2)."""
    kubeconfig, policy = as_audit
    shop = make_namespace(kube, "shop")
    blog = make_namespace(kube, "blog")
    done = make_namespace(kube, "done", inject=False, running=RUNNING)
    apps(kube).create_namespaced_deployment(shop, cast(Any, deployment("web", 2, node=False)))
    web = wait_for("2 pods of web", lambda: len(pods_of(kube, shop, "web")) == 2
                   and pods_of(kube, shop, "web"))  # fmt: skip
    assert all(injected(p) for p in web)
    for namespace, name in ((shop, "broken"), (blog, "blog-0")):
        assert injected(kube.core.create_namespaced_pod(namespace, cast(Any, bare_pod(name))))
    status = {"metadata": {"annotations": {names.ANNOTATION_STATUS: "{not json"}}}
    kube.core.patch_namespaced_pod("broken", shop, status)
    kube.core.patch_namespace(blog, {"metadata": {"labels": {names.LABEL_INJECT: None}}})
    finished = bare_pod("finished") | {"spec": {"restartPolicy": "Never", "containers": [
        {"name": "app", "image": "python:3.11", "command": ["true"]}]}}  # fmt: skip
    kube.core.create_namespaced_pod(done, cast(Any, finished))

    def phase() -> str | None:
        status = kube.core.read_namespaced_pod("finished", done).status
        return status.phase if status else None

    wait_for("finished Succeeded", lambda: phase() == "Succeeded", timeout=60)
    kube.core.patch_namespace(done, {"metadata": {"labels": {names.LABEL_INJECT: "enabled"}}})

    found = audit_ok(run_audit(kubeconfig, policy))
    assert found.code == 1
    assert found.kinds() == {"broken": "unreadable", "blog-0": "unselected"}, found.findings()
    scoped = audit_ok(run_audit(kubeconfig, policy, "-n", done))
    assert (scoped.code, scoped.report["pods"]) == (0, 0), "a Succeeded pod is not looked at"

    changed = yaml.safe_load(policy.read_text())
    changed["defaults"]["default-ttl"] = "60s"
    other = tmp_path / "policy.yaml"
    other.write_text(yaml.safe_dump(changed))
    stale = audit_ok(run_audit(kubeconfig, other, "-n", shop))
    reasons = {f["pod"]: f["reason"] for f in stale.report["findings"] if f["kind"] == "stale"}
    assert set(reasons) == {name_of(p) for p in web}, stale.report
    assert all("config changed" in r for r in reasons.values()), reasons

    webhook_identity = account_kubeconfig(kube, RELEASE, tmp_path / "webhook.kubeconfig")
    refused = run_audit(webhook_identity, policy)
    assert refused.code == 2, refused
    assert 'cannot list resource "namespaces"' in refused.stderr, refused.stderr


def test_purge_through_the_api_servers_pod_proxy(kube: Cluster) -> None:
    """The real-server counterpart of tests/cluster/test_purge.py's main flow: `purge
    --deployment` reaches each running injected pod's cache through the API server's pod
    proxy (the admin's identity) and skips a plain pod of the same app."""
    ns = make_namespace(kube, "purge", running=RUNNING)
    token = "0123456789abcdef-token"
    secret = {
        "metadata": {"name": names.PURGE_SECRET},
        "stringData": {names.PURGE_SECRET_KEY: token},
    }
    kube.core.create_namespaced_secret(ns, cast(Any, secret))
    apps(kube).create_namespaced_deployment(ns, cast(Any, deployment("web", 2)))
    plain = bare_pod("web-plain", {"app": "web", names.LABEL_INJECT: "disabled"})
    plain["spec"]["containers"][0]["command"] = ["python3", "-m", "http.server", "8080"]
    kube.core.create_namespaced_pod(ns, cast(Any, plain))

    def available() -> bool:
        status = apps(kube).read_namespaced_deployment("web", ns).status
        return status is not None and status.available_replicas == 2

    wait_for("web available", available, timeout=120)
    done = subprocess.run(
        [str(CLI), "purge", f"--kubeconfig={kube.kubeconfig}", "-n", ns, "--deployment", "web",
         "--url", "/a.css", "-o", "json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    results = {r["pod"]: r["result"] for r in json.loads(done.stdout)["pods"]}
    web = {name_of(p) for p in pods_of(kube, ns, "web") if injected(p)}
    assert len(web) == 2
    assert results == {**dict.fromkeys(web, "ok"), "web-plain": "skipped"}, done.stdout


def test_revisions_on_real_releases(
    kube: Cluster, as_audit: tuple[Path, Path], tmp_path: Path
) -> None:
    """The real-server counterpart of tests/cluster/test_audit.py::test_revisions, with a
    second release (revision canary) installed by Helm: a pod the default revision injected in
    a namespace moved to canary is stale; a namespace picking a revision that is not installed
    has its pod missing; canary's own audit finds canary's pod current; once canary is
    uninstalled its pod is orphaned."""
    kubeconfig, policy = as_audit
    RUNNING.add(CANARY_NAMESPACE)
    kube.install_chart(
        {"revision": "canary", "replicaCount": 1}, release="canary", namespace=CANARY_NAMESPACE
    )
    beta = make_namespace(kube, "beta")
    kube.core.create_namespaced_pod(beta, cast(Any, bare_pod("by-default")))
    moved = {"metadata": {"labels": {names.LABEL_INJECT: None, names.LABEL_REV: "canary"}}}
    kube.core.patch_namespace(beta, moved)
    by_canary = kube.core.create_namespaced_pod(beta, cast(Any, bare_pod("by-canary")))
    assert injected(by_canary)
    gamma = make_namespace(kube, "gamma", inject=False, labels={names.LABEL_REV: "gone"})
    unserved = kube.core.create_namespaced_pod(gamma, cast(Any, bare_pod("unserved")))
    assert not injected(unserved), "no webhook serves revision gone"

    def mine(result: Audit) -> dict[str, tuple[str, str]]:
        return {
            f["pod"]: (f["kind"], f["revision"])
            for f in result.report["findings"]
            if f["namespace"] in (beta, gamma)
        }

    found = audit_ok(run_audit(kubeconfig, policy))
    assert mine(found) == {
        "by-default": ("stale", "default"),
        "unserved": ("missing", "gone"),
    }, found.findings()
    canary_policy = chart_policy(kube, tmp_path / "canary.yaml", "canary-cache-injector",
                                 CANARY_NAMESPACE)  # fmt: skip
    as_canary = audit_ok(run_audit(kubeconfig, canary_policy, "--revision", "canary"))
    assert "by-canary" not in mine(as_canary), as_canary.findings()

    kube.helm(CANARY_NAMESPACE).uninstall("canary", wait="watcher", timeout=120)
    after = audit_ok(run_audit(kubeconfig, policy))
    assert mine(after)["by-canary"] == ("orphaned", "canary"), after.findings()
