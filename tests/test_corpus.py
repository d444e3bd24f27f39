"""Every real manifest of tests/corpus (see its SOURCES.md) through the CLI, as users run it:
no crash; selected workloads injected and still valid Kubernetes (strict schemas); every
other document byte-for-byte unchanged; nothing of the user's changed; re-injection a no-op."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import CORPUS, ROOT
from webhook.engine import names
from webhook.engine.workloads import POD_TEMPLATE_PATHS, find_workloads, split_documents

KUBERNETES_VERSION = "1.37.0"
POLICY = "defaults:\n  backend: app:8080\n"
FILES = sorted(CORPUS.glob("*.yaml"))
SELECT = ["--namespace-labels", "cache-injector.io/inject=enabled"]


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=ROOT,
        timeout=60,
    )


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(POLICY)
    return path


def template_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    node: Any = obj
    for key in POD_TEMPLATE_PATHS.get(obj.get("kind", ""), ("-",)):
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def without_injection(template: dict[str, Any]) -> dict[str, Any]:
    """The template with our additions taken out again, to compare with the original."""
    template = copy.deepcopy(template)
    annotations = template["metadata"]["annotations"]
    for key in [*names.WRITTEN_ANNOTATIONS, names.ANNOTATION_SAFE_TO_EVICT_LOCAL_VOLUMES]:
        annotations.pop(key, None)
    if not annotations:
        del template["metadata"]["annotations"]
    labels = template["metadata"].get("labels") or {}
    labels.pop(names.LABEL_INJECTED, None)
    if "labels" in template["metadata"] and not labels:
        del template["metadata"]["labels"]
    if not template["metadata"]:
        del template["metadata"]
    spec = template["spec"]
    for group in ("initContainers", "containers", "volumes"):
        if group in spec:
            spec[group] = [item for item in spec[group] if item["name"] not in names.CONTAINERS
                           and item["name"] not in names.VOLUMES]  # fmt: skip
            if not spec[group] and group != "containers":
                del spec[group]
    return template


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in FILES])
def test_corpus_file_injects_cleanly(path: Path, policy_file: Path) -> None:
    original = path.read_text()
    result = run_cli("inject", "-f", str(path), "--policy", str(policy_file), *SELECT)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr

    before = split_documents(original)
    after = split_documents(result.stdout)
    assert len(before) == len(after)
    injected = 0
    for doc_before, doc_after in zip(before, after, strict=True):
        selected = [
            w
            for w in find_workloads([doc_before])
            if w.namespace not in names.SYSTEM_NAMESPACES and not w.template["spec"].get(
                "hostNetwork")
        ]  # fmt: skip
        if not selected:
            assert doc_after.text == doc_before.text, "an untouched document must be kept as is"
            continue
        for workload, injected_workload in zip(selected, find_workloads([doc_after]), strict=True):
            template = injected_workload.template
            init = [c["name"] for c in template["spec"].get("initContainers", [])]
            assert init[:2] == [names.CONTAINER_HAPROXY, names.CONTAINER_VARNISH], init
            assert without_injection(template) == workload.template, "a user field changed"
            injected += 1
        _validate_like_before(doc_before.data, doc_after.data)
    assert injected or "daemonset" in path.stem.lower(), "nothing injected"


def _objects(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict) and data.get("kind") == "List":
        return [item for item in data.get("items", []) if isinstance(item, dict)]
    return [data] if isinstance(data, dict) else []


def _validate_like_before(before: Any, after: Any) -> None:
    """An object that was valid Kubernetes must still be after injection (strict schemas)."""
    for obj_before, obj_after in zip(_objects(before), _objects(after), strict=True):
        try:
            kubernetes_validate.validate(obj_before, KUBERNETES_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError):
            continue  # not valid to begin with (e.g. a retired apiVersion): not ours to judge
        kubernetes_validate.validate(obj_after, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in FILES])
def test_reinjection_is_a_no_op(path: Path, policy_file: Path) -> None:
    first = run_cli("inject", "-f", str(path), "--policy", str(policy_file), *SELECT)
    second = run_cli("inject", "-f", "-", "--policy", str(policy_file), *SELECT, stdin=first.stdout)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout


def test_unselected_corpus_is_left_exactly_as_is(policy_file: Path) -> None:
    """Without a namespace label, only templates labelled themselves are selected: none here."""
    for path in FILES:
        result = run_cli("inject", "-f", str(path), "--policy", str(policy_file))
        assert result.returncode == 0, result.stderr
        assert result.stdout == path.read_text(), path.name


def test_corpus_sources_are_kept() -> None:
    sources = (CORPUS / "SOURCES.md").read_text()
    for path in FILES:
        assert path.name in sources, f"{path.name} has no entry in SOURCES.md"


def test_injected_pods_validate_with_every_option(policy_file: Path) -> None:
    """The injected pod, at several option settings, is valid for a current Kubernetes."""
    base = yaml.safe_load((CORPUS / "istio__samples-httpbin-httpbin.yaml").read_text().split(
        "---")[-1])  # fmt: skip
    assert base["kind"] == "Deployment"
    variants = [
        {},
        {"cache-injector.io/sticky-sessions": "true", "cache-injector.io/health-path": "/get"},
        {"cache-injector.io/backend": "app:http", "cache-injector.io/discovery": "dns-srv"},
        {"cache-injector.io/vcl-configmap": "my-vcl", "cache-injector.io/drain-seconds": "0"},
    ]
    for extra in variants:
        obj = copy.deepcopy(base)
        obj["spec"]["template"]["metadata"].setdefault("annotations", {}).update(extra)
        result = run_cli(
            "inject", "-f", "-", "--policy", str(policy_file), *SELECT, stdin=yaml.safe_dump(obj)
        )
        assert result.returncode == 0, result.stderr
        injected = yaml.safe_load(result.stdout)
        template = template_of(injected)
        assert template is not None, injected
        assert template["spec"]["initContainers"][0]["name"] == "cache-haproxy"
        kubernetes_validate.validate(injected, KUBERNETES_VERSION, strict=True)
