"""Properties over hostile input (hypothesis): any text in any annotation gives Options or a
CacheInjectorError, never another exception; no value reaches a config unescaped; every patch
applies to its pod; injecting twice adds nothing."""

from __future__ import annotations

from typing import Any

import jsonpatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_pod
from webhook.engine import names
from webhook.engine.errors import CacheInjectorError
from webhook.engine.inject import inject_pod
from webhook.engine.patch import escape
from webhook.engine.policy import default_policy
from webhook.engine.render import load_templates

POLICY = default_policy()
TEMPLATES = load_templates()
KEYS = [spec.key for spec in names.OPTIONS]
# Plausible values mixed with hostile ones: config syntax, newlines, quotes, braces, unicode.
HOSTILE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "app:8080\n    server evil 10.0.0.1:80",
            'app:80"; }\nsub vcl_recv { return (pipe); }',
            "/h\r\nHost: x",
            "128Mi\n",
            "5m;",
            "true\n",
            "{{ 7*7 }}",
            "${HOME}",
            "app:8080 #",
            "app.shop:http",
            "/ok",
            "6081",
            "256Mi",
        ]
    ),
)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(annotations=st.dictionaries(st.sampled_from(KEYS), HOSTILE, max_size=6))
def test_hostile_annotations_never_escape_into_configs(annotations: dict[str, str]) -> None:
    pod = make_pod(annotations=annotations)
    try:
        outcome = inject_pod(
            pod, namespace="shop", operation="CREATE", policy=POLICY, templates=TEMPLATES
        )
    except CacheInjectorError:  # pragma: no cover - the engine reports, it does not raise
        raise AssertionError("inject_pod must return an Outcome, not raise") from None
    if not outcome.injected:
        assert outcome.error is not None or outcome.decision.reason == "no_backend"
        return
    assert outcome.configs is not None and outcome.options is not None
    for text in (outcome.configs.haproxy_cfg, outcome.configs.vcl or ""):
        for value in annotations.values():
            if "\n" in value or '"' in value or "{" in value:
                assert value not in text, f"unescaped value {value!r} reached a config"
    result = jsonpatch.apply_patch(pod, outcome.patch)
    again = inject_pod(
        result, namespace="shop", operation="CREATE", policy=POLICY, templates=TEMPLATES
    )
    assert again.patch == [], "injecting twice must add nothing"


@SETTINGS
@given(
    containers=st.lists(
        st.fixed_dictionaries(
            {"name": st.sampled_from(["app", "side", "cache-varnish", "cache-haproxy"])},
            optional={
                "ports": st.lists(
                    st.fixed_dictionaries({"containerPort": st.integers(1, 65535)}), max_size=3
                )
            },
        ),
        min_size=1,
        max_size=4,
        unique_by=lambda c: str(c["name"]),
    ),
    init=st.booleans(),
    volumes=st.booleans(),
    with_annotations=st.booleans(),
)
def test_every_patch_applies_to_its_pod(
    containers: list[dict[str, Any]], init: bool, volumes: bool, with_annotations: bool
) -> None:
    pod = make_pod()
    pod["spec"]["containers"] = containers
    if init:
        pod["spec"]["initContainers"] = [{"name": "setup", "image": "busybox"}]
    if volumes:
        pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    if not with_annotations:
        pod["metadata"]["annotations"] = None
        pod["metadata"]["labels"]["x"] = "y"
    outcome = inject_pod(
        pod, namespace="shop", operation="CREATE", policy=POLICY, templates=TEMPLATES
    )
    if not outcome.injected:
        return
    result = jsonpatch.apply_patch(pod, outcome.patch)
    spec = result["spec"]
    every = [c["name"] for c in spec.get("initContainers", []) + spec["containers"]]
    for name in (names.CONTAINER_HAPROXY, names.CONTAINER_VARNISH):
        assert every.count(name) == 1
    assert all(every.count(name) <= 1 for name in names.CONTAINERS)
    assert len({v["name"] for v in spec["volumes"]}) == len(spec["volumes"])


@given(st.text())
def test_json_pointer_escaping_round_trips(key: str) -> None:
    patch = [{"op": "add", "path": f"/metadata/annotations/{escape(key)}", "value": "v"}]
    result = jsonpatch.apply_patch({"metadata": {"annotations": {}}}, patch)
    assert result["metadata"]["annotations"] == {key: "v"}
