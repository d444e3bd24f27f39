"""The CLI as users meet it: output, error lines, exit codes (0 ok, 1 explain found denials,
2 bad input or a denied injection)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from tests.conftest import CORPUS
from webhook.cli import main

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {LABEL}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations:
        cache-injector.io/backend: {BACKEND}
    spec:
      containers: [{name: web, image: nginx}]
"""


def deployment(backend: str = "app:8080", label: str = "{}") -> str:
    return DEPLOYMENT.replace("{BACKEND}", backend).replace("{LABEL}", label)


def cli(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin)


SELECT = ("--namespace-labels", "cache-injector.io/inject=enabled")


def test_inject_reads_stdin_and_writes_yaml() -> None:
    result = cli("inject", "-f", "-", *SELECT, stdin=deployment())
    assert result.exit_code == 0, result.stderr
    out = yaml.safe_load(result.stdout)
    init = out["spec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["cache-haproxy", "cache-varnish"]


def test_inject_error_lines_name_file_document_workload_and_value(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text("kind: ConfigMap\nmetadata: {name: c}\n---\n" + deployment("web"))
    result = cli("inject", "-f", str(path), *SELECT)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"{path}: doc 2 (Deployment/web): cache-injector.io/backend: web is invalid: "
        "SERVICE[.NAMESPACE]:PORT, PORT a number (1-65535) or, with discovery dns-srv, a Service "
        "port name"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("a: [unclosed", "doc 1: not valid YAML", id="bad-yaml"),
        pytest.param("---\nkind: Pod\n---\n: :\n  - [", "doc 2: not valid YAML", id="bad-second"),
    ],
)
def test_unreadable_input_exits_2(text: str, message: str) -> None:
    result = cli("inject", "-f", "-", stdin=text)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_exits_2() -> None:
    result = cli("inject", "-f", "/nonexistent/app.yaml")
    assert result.exit_code == 2
    assert "/nonexistent/app.yaml: cannot read" in result.stderr


def test_bad_namespace_labels_flag() -> None:
    result = cli("inject", "-f", "-", "--namespace-labels", "enabled", stdin=deployment())
    assert result.exit_code == 2
    assert "--namespace-labels: enabled is invalid: KEY=VALUE" in result.stderr


def test_kind_list_items_are_injected() -> None:
    path = CORPUS / "fabric8-client__kubernetes-client-src-test-resources-test-list.yaml"
    result = cli("inject", "-f", str(path), "--policy", "-", *SELECT,
                 stdin="defaults: {backend: app:8080}")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    (data,) = list(yaml.safe_load_all(result.stdout))
    pods = [item for item in data["items"] if item["kind"] in ("Deployment", "Pod")]
    assert pods


def test_explain_gives_one_line_with_reason_and_sources() -> None:
    result = cli("explain", "-f", "-", *SELECT, stdin=deployment())
    assert result.exit_code == 0
    line, images = result.stdout.splitlines()
    assert images == "    images: cache-haproxy=haproxy:3.4 (pull (Kubernetes default)), " \
        "cache-varnish=varnish:8.0 (pull (Kubernetes default))"  # fmt: skip
    assert "(Deployment/web, namespace default): injected [namespace_label]" in line
    assert "backend=app:8080 (annotation)" in line
    assert "cache-size=128Mi (policy-default)" in line
    assert "max-backends=128 (built-in)" in line


def test_explain_spots_a_label_on_the_workload_instead_of_the_template() -> None:
    result = cli(
        "explain", "-f", "-", stdin=deployment(label="{cache-injector.io/inject: enabled}")
    )
    assert "skipped [label_on_workload_only]" in result.stdout
    assert "pod template is not" in result.stdout


def test_explain_json_and_denial_exit_code() -> None:
    result = cli("explain", "-f", "-", "-o", "json", *SELECT, stdin=deployment("web:http"))
    assert result.exit_code == 1
    (record,) = json.loads(result.stdout)
    assert record["result"] == "denied"
    assert record["errors"][0].startswith("cache-injector.io/backend: web:http is invalid")
    assert record["options"] == {}


def test_policy_check_summary(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("defaults: {cache-size: 256Mi}\nexcludeNamespaces: [monitoring]\n")
    result = cli("policy", "check", str(path))
    assert result.exit_code == 0
    assert f"{path}: valid policy" in result.stdout
    assert "defaults: cache-size=256Mi" in result.stdout
    assert "excluded namespaces: kube-node-lease, kube-public, kube-system, monitoring" in (
        result.stdout
    )


def test_policy_check_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("clusterDomian: x\ndefaults: {grace: forever}\n")
    result = cli("policy", "check", str(path))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"{path}: clusterDomian: unknown field: remove it or "
                                          "check its spelling"]  # fmt: skip
    path.write_text("defaults: {grace: forever, max-backends: 0}\n")
    result = cli("policy", "check", str(path))
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 2
    assert f'{path}: defaults.grace: "forever": a duration' in result.stderr


def test_policy_flag_with_invalid_policy_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("onInvalid: maybe\n")
    result = cli("inject", "-f", "-", "--policy", str(path), stdin=deployment())
    assert result.exit_code == 2
    assert f"{path}: onInvalid:" in result.stderr


def test_explain_shows_the_query_options_their_sources_and_what_trackers_names(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults: {sort-query: true}\n")
    text = deployment().replace(
        "cache-injector.io/backend: app:8080",
        "cache-injector.io/backend: app:8080\n        "
        "cache-injector.io/ignore-query-params: trackers,ref",
    )
    result = cli("explain", "-f", "-", "--policy", str(policy), *SELECT, stdin=text)
    assert result.exit_code == 0, result.stderr
    assert "ignore-query-params=trackers,ref (annotation)" in result.stdout
    assert "sort-query=true (policy-default)" in result.stdout
    result = cli("explain", "-f", "-", "-o", "json", "--policy", str(policy), *SELECT, stdin=text)
    (record,) = json.loads(result.stdout)
    query = record["options"]["ignore-query-params"]
    assert query["names"][:3] == ["utm_*", "gclid", "gclsrc"] and query["names"][-1] == "ref"
    assert record["options"]["sort-query"] == {"value": "true", "source": "policy-default"}
    plain = cli("explain", "-f", "-", *SELECT, stdin=deployment())
    assert "ignore-query-params=unset (built-in), sort-query=false (built-in)" in plain.stdout
