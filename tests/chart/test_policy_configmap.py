"""The policy ConfigMap is the `policy` values verbatim plus the release namespace, and the
real `cache-injector policy check` accepts it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart import NAMESPACE, VALUE_SETS, chart, render

CLI = Path(sys.executable).parent / "cache-injector"


def policy_check(text: str, directory: Path) -> subprocess.CompletedProcess[str]:
    path = directory / "policy.yaml"
    path.write_text(text)
    return subprocess.run(
        [str(CLI), "policy", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in VALUE_SETS])
def test_rendered_policy_passes_policy_check(name: str, tmp_path: Path) -> None:
    result = policy_check(render(VALUE_SETS[name]).policy_text(), tmp_path)
    assert result.returncode == 0, result.stderr


def test_policy_check_rejects_what_the_schema_cannot_see(tmp_path: Path) -> None:
    """Quantities and limits pass the JSON Schema (strings) but not the policy's own checks,
    so the check above is a real one."""
    rendered = render({"policy": {"limits": {"maxCacheSize": "1Ki"}}})
    result = policy_check(rendered.policy_text(), tmp_path)
    assert result.returncode == 2
    assert "limits.maxCacheSize" in result.stderr


@pytest.mark.parametrize(
    ("excluded", "expected"),
    [
        pytest.param(None, [NAMESPACE], id="default"),
        pytest.param(["legacy"], ["legacy", NAMESPACE], id="adds-to-the-users"),
        pytest.param([NAMESPACE, "legacy"], [NAMESPACE, "legacy"], id="already-listed"),
    ],
)
def test_release_namespace_is_always_excluded(
    excluded: list[str] | None, expected: list[str]
) -> None:
    values: dict[str, Any] = {"policy": {"excludeNamespaces": excluded}} if excluded else {}
    policy = yaml.safe_load(render(values).policy_text())
    assert policy["excludeNamespaces"] == expected


def test_policy_is_the_values_verbatim() -> None:
    values = VALUE_SETS["everything-on"]
    rendered = render(values)
    policy = yaml.safe_load(rendered.policy_text())
    merged = rendered_values_policy(values)
    assert policy == {**merged, "excludeNamespaces": [*merged["excludeNamespaces"], NAMESPACE]}
    assert policy["namespaces"]["shop"]["backend"] == "web:8080"


def rendered_values_policy(values: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = chart().merge_values(values)["policy"]
    return merged


def test_policy_in_another_namespace_excludes_that_one() -> None:
    policy = yaml.safe_load(render(namespace="platform").policy_text())
    assert policy["excludeNamespaces"] == ["platform"]
