"""The Kubernetes versions the chart states are the ones that work: native sidecars from 1.30,
regular sidecars (policy.nativeSidecars=false) from 1.28, and an install the cluster cannot
run fails at render time with a message that says why and what to do."""

from __future__ import annotations

from pathlib import Path

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.chart.chart import CHART, Rendered, is_custom_resource, render

# Each boundary: the oldest the chart accepts, the last without the preStop sleep action, the
# first with it, and the newest kubernetes-validate ships schemas for.
OLDEST, BEFORE_SLEEP, FIRST_NATIVE, NEWEST = "1.28.0", "1.29.0", "1.30.0", "1.37.0"
FALLBACK = {"policy": {"nativeSidecars": False}}


def validate_all(rendered: Rendered, version: str) -> None:
    for obj in rendered.objects:
        if not is_custom_resource(obj):
            kubernetes_validate.validate(obj, version, strict=True)


def test_newest_is_the_newest_schema_kubernetes_validate_ships() -> None:
    shipped = set(kubernetes_validate.utils.all_versions())
    newest = max(shipped, key=lambda v: tuple(int(p) for p in v.split(".")))
    assert newest == NEWEST


def test_chart_yaml_states_1_28_and_the_policy_docs_agree() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.28.0-0"
    docs = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text()
    (row,) = [line for line in docs.splitlines() if line.startswith("| `nativeSidecars`")]
    assert "Kubernetes 1.30+" in row and "Kubernetes 1.28+" in row
    assert "1.29+" not in docs


@pytest.mark.parametrize("version", [FIRST_NATIVE, NEWEST])
def test_native_mode_renders_and_validates_from_1_30(version: str) -> None:
    rendered = render(kube_version=version)
    validate_all(rendered, version)
    pre_stop = rendered.webhook_container()["lifecycle"]["preStop"]
    assert pre_stop == {"sleep": {"seconds": 3}}


@pytest.mark.parametrize("version", [OLDEST, BEFORE_SLEEP])
def test_native_mode_fails_clearly_before_1_30(version: str) -> None:
    with pytest.raises(helm_python.HelmError) as caught:
        render(kube_version=version)
    message = str(caught.value)
    assert "policy.nativeSidecars=true needs Kubernetes 1.30 or newer" in message
    assert f"this cluster is v{version}" in message
    assert "set policy.nativeSidecars=false" in message


@pytest.mark.parametrize("version", [OLDEST, BEFORE_SLEEP, FIRST_NATIVE, NEWEST])
def test_fallback_mode_renders_and_validates_from_1_28(version: str) -> None:
    rendered = render(FALLBACK, kube_version=version)
    validate_all(rendered, version)
    pre_stop = rendered.webhook_container()["lifecycle"]["preStop"]
    # The webhook's own preStop: the sleep action where the cluster has it, else the image's
    # `sleep` (python:3.11-slim has coreutils).
    if version in (OLDEST, BEFORE_SLEEP):
        assert pre_stop == {"exec": {"command": ["sleep", "3"]}}
    else:
        assert pre_stop == {"sleep": {"seconds": 3}}


def test_older_than_1_28_fails_in_every_mode() -> None:
    for values in ({}, FALLBACK):
        with pytest.raises(helm_python.HelmError, match=r"v1\.27\.0 is too old: .* 1\.28"):
            render(values, kube_version="1.27.0")
