"""Shared fixtures: a pod builder, policies and the compiled templates."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import available
from webhook.engine.policy import Policy, build_policy, default_policy
from webhook.engine.render import Templates, load_templates

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"

PodFactory = Callable[..., dict[str, Any]]


def make_pod(
    *,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    ports: list[int] | None = None,
    name: str = "web-0",
    namespace: str | None = "shop",
    spec: Mapping[str, Any] | None = None,
    backend: str | None = "app:8080",
) -> dict[str, Any]:
    """A small labelled pod; vary it with keyword arguments instead of copying manifests."""
    all_annotations = {"cache-injector.io/backend": backend} if backend else {}
    all_annotations.update(annotations or {})
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {"app": "web", "cache-injector.io/inject": "enabled", **(labels or {})},
        "annotations": all_annotations,
    }
    if namespace:
        metadata["namespace"] = namespace
    container: dict[str, Any] = {"name": "app", "image": "nginx:1.27"}
    if ports:
        container["ports"] = [{"containerPort": port} for port in ports]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [container], **(spec or {})},
    }


@pytest.fixture
def pod_factory() -> PodFactory:
    return make_pod


@pytest.fixture(scope="session")
def templates() -> Templates:
    return load_templates()


@pytest.fixture(scope="session")
def policy() -> Policy:
    return default_policy()


def policy_from(data: Mapping[str, Any]) -> Policy:
    return build_policy(dict(data), "test policy")


def pytest_report_header() -> list[str]:
    """Say up front which daemon generations this run checks against."""
    found = available()
    line = "daemons: " + ", ".join(f"{label} ({path})" for label, path in found.items())
    missing = [label for label in ("haproxy-3.4", "varnish-8.0") if label not in found]
    if missing:
        line += (
            f"\nNOTE: {', '.join(missing)} not installed: only Debian's daemons are checked "
            "(run ../shared/daemons/install.sh for the versions the default images carry)"
        )
    return [line]
