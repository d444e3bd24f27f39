"""The access-log and metrics options and the scrape settings, as the engine injects them.
Their behaviour with the real varnishncsa and exporter is tests/e2e/test_observe.py's."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest

from tests.conftest import make_pod, policy_from
from tests.test_inject import container, injected_pod, run
from webhook.engine import names, values
from webhook.engine.errors import InvalidOptions, InvalidPolicy, PortClash
from webhook.engine.inject import inject_pod
from webhook.engine.patch import uninject
from webhook.engine.policy import VARNISH_LOG_SIZE_READER, Policy
from webhook.engine.render import Templates

P = "cache-injector.io/"
BOTH = {P + "access-log": "true", P + "metrics": "true"}
READERS = (names.CONTAINER_ACCESS_LOG, names.CONTAINER_EXPORTER)


def sidecar_names(pod: dict[str, Any]) -> list[str]:
    return [c["name"] for c in pod["spec"].get("initContainers", [])]


def test_off_by_default_and_nothing_changes(policy: Policy, templates: Templates) -> None:
    result = injected_pod(make_pod(), policy, templates)
    assert sidecar_names(result) == ["cache-haproxy", "cache-varnish"]
    notes = result["metadata"]["annotations"]
    assert names.HEADER_CACHE_BACKEND not in notes[names.ANNOTATION_HAPROXY_CFG]
    assert names.HEADER_CACHE_BACKEND not in notes[names.ANNOTATION_VCL]
    assert not [key for key in notes if key.startswith("prometheus.io/")]
    # The PodMonitor's label is on every injected pod.
    assert result["metadata"]["labels"][names.LABEL_INJECTED] == "true"


def test_readers_start_after_varnish_and_outlive_its_drain(
    policy: Policy, templates: Templates
) -> None:
    result = injected_pod(make_pod(annotations=BOTH), policy, templates)
    assert sidecar_names(result) == [
        "cache-haproxy",
        "cache-varnish",
        "cache-access-log",
        "cache-varnish-exporter",
    ]
    varnish = container(result, "cache-varnish")
    workdir = next(m for m in varnish["volumeMounts"] if m["mountPath"] == names.VARNISH_WORKDIR)
    # As every container we add, also the empty directory where the API token would go.
    no_token = next(m for m in varnish["volumeMounts"] if m["name"] == names.VOLUME_NO_API_TOKEN)
    for name in READERS:
        reader = container(result, name)
        assert reader["restartPolicy"] == "Always"
        assert reader["volumeMounts"] == [{**workdir, "readOnly": True}, no_token]
        assert {"name": "VSM_NOPID", "value": "1"} in reader["env"]
        assert reader["command"][reader["command"].index("-n") + 1] == names.VARNISH_WORKDIR
        # Restricted, as varnishd's uid (the shared memory files are 0640).
        assert reader["securityContext"] == varnish["securityContext"]
        assert reader["resources"]["limits"]["memory"]
        assert "startupProbe" not in reader and "readinessProbe" not in reader
        assert reader["lifecycle"] == varnish["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    exporter = container(result, "cache-varnish-exporter")
    assert exporter["ports"] == [
        {"name": "cache-vmetrics", "containerPort": names.EXPORTER_PORT, "protocol": "TCP"}
    ]
    assert exporter["image"] == policy.model.images.varnish_exporter
    assert container(result, "cache-access-log")["image"] == varnish["image"]


def test_access_log_carries_the_backend_pod_but_never_delivers_it(
    policy: Policy, templates: Templates
) -> None:
    result = injected_pod(make_pod(annotations={P + "access-log": "true"}), policy, templates)
    notes = result["metadata"]["annotations"]
    header = names.HEADER_CACHE_BACKEND
    assert f"http-response set-header {header} %si:%sp" in notes[names.ANNOTATION_HAPROXY_CFG]
    deliver = notes[names.ANNOTATION_VCL].split("sub vcl_deliver")[1]
    assert f"unset resp.http.{header};" in deliver
    command = container(result, "cache-access-log")["command"]
    assert command[command.index("-F") + 1] == names.ACCESS_LOG_FORMAT
    assert f"%{{VSL:RespHeader:{header}}}x" in names.ACCESS_LOG_FORMAT
    assert command[command.index("-q") + 1] == f'ReqURL ne "{names.VARNISH_READY_PATH}"'


def test_regular_containers_outlive_the_drain(templates: Templates) -> None:
    policy = policy_from({"nativeSidecars": False})
    result = injected_pod(make_pod(annotations=BOTH), policy, templates)
    for name in READERS:
        assert container(result, name)["lifecycle"] == {
            "preStop": {"exec": {"command": ["sleep", "6"]}}
        }


def test_exporter_port_clash_names_both_sides(policy: Policy, templates: Templates) -> None:
    outcome = run(make_pod(annotations=BOTH, ports=[names.EXPORTER_PORT]), policy, templates)
    assert not outcome.allowed and isinstance(outcome.error, InvalidOptions), outcome
    text = str(outcome.error)
    assert "9131" in text and "cache-varnish-exporter" in text and "container app" in text
    assert any(isinstance(p, PortClash) for p in outcome.error.problems)
    # Without metrics the port is the app's to use.
    assert run(make_pod(ports=[names.EXPORTER_PORT]), policy, templates).injected
    named = make_pod(annotations=BOTH)
    named["spec"]["containers"][0]["ports"] = [{"name": "cache-vmetrics", "containerPort": 80}]
    refused = run(named, policy, templates)
    assert not refused.allowed and "cache-vmetrics" in str(refused.error)


def test_listen_port_cannot_be_the_exporters(policy: Policy, templates: Templates) -> None:
    outcome = run(make_pod(annotations={**BOTH, P + "listen-port": "9131"}), policy, templates)
    assert not outcome.allowed
    assert "cache-injector.io/listen-port" in str(outcome.error) and "9131" in str(outcome.error)


def test_bad_value_names_the_annotation(policy: Policy, templates: Templates) -> None:
    outcome = run(make_pod(annotations={P + "metrics": "yes"}), policy, templates)
    assert not outcome.allowed
    assert "cache-injector.io/metrics" in str(outcome.error) and "true or false" in str(
        outcome.error
    )


@pytest.mark.parametrize(
    ("annotations", "port"), [({}, names.HAPROXY_METRICS_PORT), (BOTH, names.EXPORTER_PORT)]
)
def test_prometheus_annotations_from_the_policy(
    templates: Templates, annotations: dict[str, str], port: int
) -> None:
    policy = policy_from({"prometheusAnnotations": True})
    notes = injected_pod(make_pod(annotations=annotations), policy, templates)["metadata"][
        "annotations"
    ]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == str(port)
    assert notes["prometheus.io/path"] == "/metrics"


def test_a_pod_scraped_already_keeps_its_own(templates: Templates) -> None:
    policy = policy_from({"prometheusAnnotations": True})
    pod = make_pod(annotations={"prometheus.io/port": "8080", **BOTH})
    notes = injected_pod(pod, policy, templates)["metadata"]["annotations"]
    assert notes["prometheus.io/port"] == "8080"
    assert "prometheus.io/scrape" not in notes and "prometheus.io/path" not in notes


def test_policy_defaults_turn_them_on_for_a_namespace(templates: Templates) -> None:
    policy = policy_from({"namespaces": {"shop": {"access-log": "true", "metrics": True}}})
    result = injected_pod(make_pod(), policy, templates)
    assert set(READERS) <= set(sidecar_names(result))
    assert sidecar_names(injected_pod(make_pod(namespace="other"), policy, templates, "other")) == [
        "cache-haproxy",
        "cache-varnish",
    ]


def test_policy_checks_the_new_settings() -> None:
    with pytest.raises(InvalidPolicy) as raised:
        policy_from(
            {
                "images": {"varnishExporter": "bad image"},
                "resources": {"accessLog": {"limits": {"memory": "lots"}}},
                "defaults": {"access-log": "maybe"},
            }
        )
    text = str(raised.value)
    assert 'images.varnishExporter: "bad image"' in text
    assert 'resources.accessLog.limits.memory: "lots"' in text
    assert 'defaults.access-log: "maybe"' in text


def test_a_declared_reader_is_kept_when_its_option_is_off(
    policy: Policy, templates: Templates
) -> None:
    """Only containers the injector builds replace the user's under our names."""
    own = {"name": "cache-access-log", "image": "example/logger:1"}
    pod = make_pod(spec={"containers": [{"name": "app", "image": "nginx:1.27"}, own]})
    result = injected_pod(pod, policy, templates)
    assert own in result["spec"]["containers"]
    completed = injected_pod(
        make_pod(
            annotations={P + "access-log": "true"},
            spec={"containers": [{"name": "app", "image": "nginx:1.27"}, dict(own)]},
        ),
        policy_from({"allowImageOverride": True}),
        templates,
    )
    merged = container(completed, "cache-access-log")
    assert merged["image"] == "example/logger:1" and merged["command"][0] == "varnishncsa"


@pytest.mark.parametrize("labels", [True, False])
def test_uninject_takes_out_the_label_the_readers_and_the_scrape_annotations(
    templates: Templates, labels: bool
) -> None:
    policy = policy_from({"prometheusAnnotations": True})
    pod = make_pod(annotations=BOTH)
    if not labels:  # selected by its namespace's label: the injector creates the map
        del pod["metadata"]["labels"]
    original = copy.deepcopy(pod)
    outcome = inject_pod(
        pod,
        namespace="shop",
        operation="CREATE",
        policy=policy,
        templates=templates,
        namespace_labels={names.LABEL_INJECT: names.LABEL_ENABLED},
    )
    assert outcome.injected, outcome.decision
    injected = jsonpatch.apply_patch(copy.deepcopy(pod), outcome.patch)
    assert injected["metadata"]["labels"][names.LABEL_INJECTED] == "true"
    assert injected["metadata"]["annotations"]["prometheus.io/port"] == "9131"
    removed = uninject(injected)
    assert f"label {names.LABEL_INJECTED}" in removed
    assert injected == original


def test_the_workdir_holds_a_second_log_with_the_access_log(
    policy: Policy, templates: Templates
) -> None:
    """varnishncsa keeps the old log mapped across a varnishd restart (e2e scenario 19)."""

    def workdir_limit(annotations: dict[str, str]) -> str:
        pod = injected_pod(make_pod(annotations=annotations), policy, templates)
        volume = next(
            v for v in pod["spec"]["volumes"] if v["name"] == names.VOLUME_VARNISH_WORKDIR
        )
        limit: str = volume["emptyDir"]["sizeLimit"]
        return limit

    plain, metrics, logged = (
        workdir_limit({}),
        workdir_limit({P + "metrics": "true"}),
        workdir_limit({P + "access-log": "true"}),
    )
    assert plain == metrics
    assert values.parse_size(logged) == values.parse_size(plain) + VARNISH_LOG_SIZE_READER


def test_the_access_log_reader_gets_the_bigger_shared_memory_log(
    policy: Policy, templates: Templates
) -> None:
    """varnishncsa must not be lapped (8M held at 20-40 k req/s); a pod nothing reads keeps
    the smaller log, 4 MiB of every idle pod's memory."""

    def log_space(annotations: dict[str, str]) -> str:
        pod = injected_pod(make_pod(annotations=annotations), policy, templates)
        args = container(pod, "cache-varnish")["args"]
        value: str = next(a for a in args if a.startswith("vsl_space="))
        return value

    assert log_space({}) == log_space({P + "metrics": "true"}) == "vsl_space=4M"
    assert log_space({P + "access-log": "true"}) == "vsl_space=8M"
