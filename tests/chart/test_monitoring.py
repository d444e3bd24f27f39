"""The chart's cache monitoring: the PodMonitor finds what the injector produces, every alert
and dashboard query is valid PromQL (promql-parser, the Rust parser's Python binding), and the
alerts fire when they should and stay quiet when they should not (Prometheus's own promtool:
`check rules` and `test rules` over synthetic series). That the metric names exist in a real
scrape of both Varnish generations is checked by tests/e2e/test_observe.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from tests.chart.chart import FULLNAME, VALUE_SETS, Rendered, render
from tests.conftest import make_pod
from tests.daemons import missing
from tests.test_inject import injected_pod
from webhook.engine import names
from webhook.engine.policy import default_policy
from webhook.engine.render import load_templates

ON = VALUE_SETS["cache-monitoring"]


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return render(ON)


def rules(rendered: Rendered) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [
        rule
        for group in rendered.one("PrometheusRule")["spec"]["groups"]
        for rule in group["rules"]
    ]
    return found


def dashboard(rendered: Rendered) -> dict[str, Any]:
    config_map = rendered.get("ConfigMap", f"{FULLNAME}-dashboard")
    loaded: dict[str, Any] = json.loads(config_map["data"]["cache-injector-cache.json"])
    return loaded


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables as the values it would put in their place."""
    return expr.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$pod", ".*")


def test_off_by_default() -> None:
    defaults = render({})
    assert defaults.all("PodMonitor") == [] and defaults.all("PrometheusRule") == []
    assert not [n for n in defaults.names() if n.endswith("-dashboard")]


def test_pod_monitor_selects_an_injected_pod_and_its_two_ports(rendered: Rendered) -> None:
    monitor = rendered.one("PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    pod = make_pod(annotations={names.PREFIX + "metrics": "true"})
    injected = injected_pod(pod, default_policy(), load_templates())
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= injected["metadata"]["labels"].items()
    ports = {
        port["name"]: port
        for container in injected["spec"]["initContainers"]
        for port in container.get("ports") or []
    }
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert {e["port"] for e in endpoints} == set(ports) - {names.PORT_NAME_HTTP}
    assert {e["path"] for e in endpoints} == {names.METRICS_PATH}


def test_every_query_parses_and_a_broken_one_does_not(rendered: Rendered) -> None:
    exprs = [rule["expr"] for rule in rules(rendered)]
    exprs += [
        grafana_to_promql(target["expr"])
        for panel in dashboard(rendered)["panels"]
        for target in panel["targets"]
    ]
    assert len(exprs) >= 5 + 5
    for expr in exprs:
        promql_parser.parse(expr)  # raises ValueError naming the problem
    with pytest.raises(ValueError):
        promql_parser.parse(exprs[0].replace(")", "", 1))


def test_the_alerts_the_issue_asks_for(rendered: Rendered) -> None:
    by_name = {rule["alert"]: rule for rule in rules(rendered)}
    assert set(by_name) == {
        "CacheHitRatioLow",
        "CacheLRUEvictions",
        "CacheStorageAlmostFull",
        "CacheThreadQueue",
        "CacheNoHealthyBackendPod",
    }
    hit_ratio = by_name["CacheHitRatioLow"]
    assert "< 0.8" in hit_ratio["expr"] and "client_req" not in hit_ratio["expr"]
    assert by_name["CacheStorageAlmostFull"]["expr"].rstrip().endswith("> 0.9")
    assert hit_ratio["labels"]["severity"] == "page"
    assert "__" not in json.dumps(by_name), "a placeholder was left unreplaced"


def test_dashboard_config_map_for_the_grafana_sidecar(rendered: Rendered) -> None:
    config_map = rendered.get("ConfigMap", f"{FULLNAME}-dashboard")
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Caches"}
    titles = {panel["title"] for panel in dashboard(rendered)["panels"]}
    assert titles == {
        "Hit ratio",
        "Requests by result",
        "Backend pods up",
        "LRU evictions",
        "Memory used vs limit",
    }


# -- promtool: the rules as Prometheus evaluates them --------------------------------------
PROMTOOL_TESTS = """
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  # 1 hit and 9 misses a second: 10 % hits, below 80 %, for 30 minutes.
  - interval: 1m
    input_series:
      - series: 'varnish_main_cache_hit{namespace="shop",pod="web-0"}'
        values: '0+60x40'
      - series: 'varnish_main_cache_miss{namespace="shop",pod="web-0"}'
        values: '0+540x40'
      # 9 hits, 1 miss a second: 90 %, quiet.
      - series: 'varnish_main_cache_hit{namespace="shop",pod="web-1"}'
        values: '0+540x40'
      - series: 'varnish_main_cache_miss{namespace="shop",pod="web-1"}'
        values: '0+60x40'
      # Idle: 1 lookup a minute, all misses, below the minimum rate: quiet.
      - series: 'varnish_main_cache_hit{namespace="shop",pod="web-2"}'
        values: '0+0x40'
      - series: 'varnish_main_cache_miss{namespace="shop",pod="web-2"}'
        values: '0+1x40'
    alert_rule_test:
      - eval_time: 10m
        alertname: CacheHitRatioLow
        exp_alerts: []
      - eval_time: 30m
        alertname: CacheHitRatioLow
        exp_alerts:
          - exp_labels: {namespace: shop, pod: web-0, severity: page}
            exp_annotations:
              summary: Cache hit ratio of shop/web-0 is 10%.
              description: >-
                Fewer than 0.8 of the cacheable lookups were hits over 10 minutes. Check the
                backend's Cache-Control headers, cookies on requests, and
                cache-injector.io/default-ttl.
  - interval: 1m
    input_series:
      - series: 'varnish_main_n_lru_nuked{namespace="shop",pod="web-0"}'
        values: '0x10 5 5x20'
      - series: 'varnish_sma_g_bytes{namespace="shop",pod="web-0",type="s0"}'
        values: '95x30'
      - series: 'varnish_sma_g_space{namespace="shop",pod="web-0",type="s0"}'
        values: '5x30'
      - series: 'varnish_sma_g_bytes{namespace="shop",pod="web-0",type="transient"}'
        values: '10x30'
      - series: 'varnish_sma_g_space{namespace="shop",pod="web-0",type="transient"}'
        values: '90x30'
      - series: 'varnish_main_thread_queue_len{namespace="shop",pod="web-0"}'
        values: '0x5 3x20'
      - series: 'haproxy_backend_active_servers{namespace="shop",pod="web-0",proxy="backend_pods"}'
        values: '2x5 0x10'
      - series: 'haproxy_backend_active_servers{namespace="shop",pod="web-0",proxy="cache_local"}'
        values: '0x15'
    alert_rule_test:
      - eval_time: 5m
        alertname: CacheLRUEvictions
        exp_alerts: []
      - eval_time: 12m
        alertname: CacheLRUEvictions
        exp_alerts:
          - exp_labels: {namespace: shop, pod: web-0, severity: page}
            exp_annotations:
              summary: Varnish in shop/web-0 evicted 5 objects in 10 minutes.
              description: >-
                The cache is full and evicts objects to store new ones; raise
                cache-injector.io/cache-size.
      - eval_time: 25m
        alertname: CacheLRUEvictions
        exp_alerts: []
      - eval_time: 15m
        alertname: CacheStorageAlmostFull
        exp_alerts:
          - exp_labels: {namespace: shop, pod: web-0, type: s0, severity: page}
            exp_annotations:
              summary: Varnish storage s0 of shop/web-0 is 95% full.
              description: >-
                Above 90 % for 10 minutes; evictions follow (s0) or uncacheable
                responses fail (Transient).
      - eval_time: 8m
        alertname: CacheThreadQueue
        exp_alerts: []
      - eval_time: 12m
        alertname: CacheThreadQueue
        exp_alerts:
          - exp_labels: {namespace: shop, pod: web-0, severity: page}
            exp_annotations:
              summary: Requests queue for Varnish worker threads in shop/web-0.
              description: >-
                3 requests waiting for a thread for 5 minutes.
      - eval_time: 5m
        alertname: CacheNoHealthyBackendPod
        exp_alerts: []
      - eval_time: 8m
        alertname: CacheNoHealthyBackendPod
        exp_alerts:
          - exp_labels: {namespace: shop, pod: web-0, severity: critical}
            exp_annotations:
              summary: No healthy backend pod behind the cache of shop/web-0.
              description: >-
                Every server slot of HAProxy's backend_pods is down or empty for a
                minute; check the backend Service's pods, its DNS name and
                cache-injector.io/health-path.
"""


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        missing("promtool not installed (Debian package prometheus; `make daemons`)")
    return found


def run_promtool(
    tmp_path: Path, rendered: Rendered, tests: str
) -> subprocess.CompletedProcess[str]:
    spec = rendered.one("PrometheusRule")["spec"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "tests.yaml").write_text(tests)
    binary = promtool()

    def promtool_run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
        )

    checked = promtool_run("check", "rules", "rules.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return promtool_run("test", "rules", "tests.yaml")


def test_alerts_fire_when_they_should_promtool(tmp_path: Path, rendered: Rendered) -> None:
    done = run_promtool(tmp_path, rendered, PROMTOOL_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_test_can_fail(tmp_path: Path, rendered: Rendered) -> None:
    """Negative control: the healthy pod web-1 expected to alert fails the test run."""
    wrong = re.sub(
        r"pod: web-0, severity: page\}\n            exp_annotations",
        "pod: web-1, severity: page}\n            exp_annotations",
        PROMTOOL_TESTS,
        count=1,
    )
    assert wrong != PROMTOOL_TESTS
    done = run_promtool(tmp_path, rendered, wrong)
    assert done.returncode != 0, done.stdout
