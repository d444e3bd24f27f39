"""`cache-injector audit` against the fake API server: every kind of finding on a sample
cluster (pods injected by the real engine with other policies and versions), table and
JSON, pagination, and `--restart` rolling owners a few at a time. A clean cluster's exit 0
and the RBAC 403 are proven on a real API server (tests/kube/test_failure.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.chart.fake_apiserver import FakeApiServer
from tests.cluster.pods import pod
from webhook.cli import main
from webhook.engine import names
from webhook.engine.policy import load_policy_text

OLD_IMAGES = load_policy_text("images:\n  haproxy: haproxy:3.4\n  varnish: varnish:7.6\n")
OLD_DEFAULTS = load_policy_text("defaults:\n  default-ttl: 60s\n")


def namespace(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **labels}},
    }


def deployment(name: str, namespace_name: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace_name, "generation": 1},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}},
        },
        "status": {
            "observedGeneration": 1,
            "replicas": 2,
            "updatedReplicas": 2,
            "availableReplicas": 2,
        },
    }


def old_version(manifest: dict[str, Any]) -> dict[str, Any]:
    notes = manifest["metadata"]["annotations"]
    status = json.loads(notes[names.ANNOTATION_STATUS])
    status["version"] = "0.0.9"
    notes[names.ANNOTATION_STATUS] = json.dumps(status)
    return manifest


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer(page_size=3)
    server.add(namespace("shop", {names.LABEL_INJECT: "enabled"}))
    server.add(namespace("blog", {}))
    for name in ("web", "api", "old", "img"):
        server.add(deployment(name))
    rs, rs_labels = ("ReplicaSet", "web-5d4f"), {"pod-template-hash": "5d4f"}
    server.add(pod("web-5d4f-a", owner=rs, labels=rs_labels))
    server.add(pod("web-5d4f-b", injected=False, owner=rs, labels=rs_labels))
    api_rs, api_labels = ("ReplicaSet", "api-77aa"), {"app": "api", "pod-template-hash": "77aa"}
    server.add(pod("api-77aa-a", policy=OLD_DEFAULTS, owner=api_rs, labels=api_labels))
    server.add(
        old_version(
            pod("old-1-a", owner=("ReplicaSet", "old-1"), labels={"pod-template-hash": "1"})
        )
    )
    server.add(
        pod(
            "img-9-a",
            policy=OLD_IMAGES,
            owner=("ReplicaSet", "img-9"),
            labels={"pod-template-hash": "9"},
        )
    )
    server.add(pod("db-0", owner=("StatefulSet", "db"), injected=False, namespace="blog"))
    server.add(pod("blog-0", namespace="blog"))  # injected, namespace no longer labelled
    server.add(pod("done", injected=False, phase="Succeeded"))
    broken = pod("broken")
    broken["metadata"]["annotations"][names.ANNOTATION_STATUS] = "{not json"
    server.add(broken)
    with server.running():
        yield server


def run(api: FakeApiServer, tmp_path: Path, *args: str) -> Result:
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
    return CliRunner().invoke(
        main, ["audit", "--kubeconfig", kubeconfig, *args], catch_exceptions=False
    )


def test_every_kind_of_finding(api: FakeApiServer, tmp_path: Path) -> None:
    result = run(api, tmp_path, "-o", "json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    found = {f["pod"]: f for f in report["findings"]}
    assert {p: f["kind"] for p, f in found.items()} == {
        "web-5d4f-b": "missing",
        "api-77aa-a": "stale",
        "old-1-a": "stale",
        "img-9-a": "stale",
        "blog-0": "unselected",
        "broken": "unreadable",
    }
    assert report["pods"] == 8, "the Succeeded pod is not looked at"
    assert found["web-5d4f-b"]["owner"] == "Deployment/web"
    assert "config changed" in found["api-77aa-a"]["reason"]
    assert "injector upgraded (0.0.9 -> " in found["old-1-a"]["reason"]
    assert "config changed" not in found["old-1-a"]["reason"]
    assert "image changed (cache-varnish: varnish:7.6 -> varnish:8.0)" in found["img-9-a"]["reason"]
    assert "config changed" not in found["img-9-a"]["reason"]
    assert found["blog-0"]["owner"] == "Pod/blog-0"
    assert "db-0" not in found, "not selected, not injected: nothing to say"
    assert any("continue=" in path for _, path in api.calls), "pages were followed"


def test_table_and_a_clean_namespace(api: FakeApiServer, tmp_path: Path) -> None:
    result = run(api, tmp_path)
    print(result.stdout)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAMESPACE", "OWNER", "POD", "REVISION", "FINDING", "REASON"]
    assert (
        "8 pods audited, 6 findings (1 missing, 3 stale, 1 unreadable, 1 unselected)" in lines[-1]
    )
    # With the policy the old pods were injected with, the stale ones are current.
    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults:\n  default-ttl: 60s\n")
    again = run(api, tmp_path, "-n", "shop", "--policy", str(policy), "-o", "json")
    kinds = {f["pod"]: f["kind"] for f in json.loads(again.stdout)["findings"]}
    assert "api-77aa-a" not in kinds and kinds["web-5d4f-a"] == "stale"


def test_restart_rolls_owners_one_batch_at_a_time(api: FakeApiServer, tmp_path: Path) -> None:
    rolled: list[tuple[str, float, float]] = []  # owner, patched at, rolled out at

    def roll_out(kind: str, namespace_name: str, name: str) -> None:
        obj = api.objects[(kind, namespace_name, name)]
        patched = time.monotonic()

        def finish() -> None:
            time.sleep(0.5)
            obj["status"]["observedGeneration"] = obj["metadata"]["generation"]
            rolled.append((name, patched, time.monotonic()))

        obj["status"]["updatedReplicas"] = 0
        threading.Thread(target=finish, daemon=True).start()
        obj["status"]["updatedReplicas"] = 2

    api.on_patch = roll_out
    result = run(api, tmp_path, "-n", "shop", "--restart", "--max-restarts", "2", "-o", "json")
    assert result.exit_code == 1  # there were findings
    restarts = json.loads(result.stdout)["restarts"]
    assert [(r["owner"], r["result"]) for r in restarts] == [
        ("Deployment/web", "restarted"),
        ("Deployment/api", "restarted"),
        ("Deployment/old", "restarted"),
        ("Deployment/img", "restarted"),
    ]
    patches = [(kind, name, body) for kind, _, name, body in api.patches]
    assert len(patches) == 4
    for _, _, body in patches:
        annotations = body["spec"]["template"]["metadata"]["annotations"]
        assert set(annotations) == {"kubectl.kubernetes.io/restartedAt"}
    # At most 2 at once: the third owner was patched only after the first two rolled out.
    order = sorted(rolled, key=lambda r: r[1])
    assert order[2][1] >= max(order[0][2], order[1][2])
    assert order[3][1] >= max(order[0][2], order[1][2])


def mwc(revision: str) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": f"ci-{revision}",
            "namespace": "",
            "labels": {names.LABEL_REV: revision},
        },
        "webhooks": [],
    }


def test_revisions(tmp_path: Path) -> None:
    """beta picks canary, gamma picks a revision that is not installed."""
    server = FakeApiServer()
    server.add(namespace("shop", {names.LABEL_INJECT: "enabled"}))
    server.add(namespace("beta", {names.LABEL_REV: "canary"}))
    server.add(namespace("gamma", {names.LABEL_REV: "gone"}))
    server.add(mwc("default"))
    server.add(mwc("canary"))
    retired = pod("retired")
    status = json.loads(retired["metadata"]["annotations"][names.ANNOTATION_STATUS])
    status["revision"] = "old"
    retired["metadata"]["annotations"][names.ANNOTATION_STATUS] = json.dumps(status)
    server.add(retired)
    server.add(pod("by-default", namespace="beta"))  # injected by default, beta moved to canary
    canary = pod("by-canary", namespace="beta", injected=False)
    from tests.cluster.pods import inject_as  # noqa: PLC0415

    server.add(inject_as(canary, "canary", {names.LABEL_REV: "canary"}))
    server.add(pod("unserved", namespace="gamma", injected=False))
    with server.running():
        result = run(server, tmp_path, "-o", "json")
        as_canary = run(server, tmp_path, "-o", "json", "--revision", "canary")
        server.forbidden.add(("list", "mutatingwebhookconfigurations"))
        blind = run(server, tmp_path, "-o", "json")
    found = {f["pod"]: (f["kind"], f["revision"]) for f in json.loads(result.stdout)["findings"]}
    assert found == {
        "retired": ("orphaned", "old"),
        "by-default": ("stale", "default"),
        "unserved": ("missing", "gone"),
    }, found
    reasons = {f["pod"]: f["reason"] for f in json.loads(result.stdout)["findings"]}
    assert "revision changed (default -> canary)" in reasons["by-default"]
    # The canary's own audit finds its pod current.
    canary_found = {f["pod"] for f in json.loads(as_canary.stdout)["findings"]}
    assert "by-canary" not in canary_found
    # Without the right to list webhook configurations: a warning, no orphan findings (the
    # pod of the old revision is still stale: its namespace picks the default revision).
    assert "cannot list resource" in blind.stderr
    blind_found = {f["pod"]: f for f in json.loads(blind.stdout)["findings"]}
    assert blind_found["retired"]["kind"] == "stale"
    assert "revision changed (old -> default)" in blind_found["retired"]["reason"]
    assert "unserved" not in blind_found
