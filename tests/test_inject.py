"""The engine end to end on pods: what the injected pod looks like, the rules of docs/design.md
("The injected pod"), warnings, denials and idempotency."""

from __future__ import annotations

import re
from typing import Any

import jsonpatch
import pytest

from tests.conftest import make_pod, policy_from
from webhook.engine.errors import ImageOverrideNotAllowed, InvalidOptions, PortClash
from webhook.engine.inject import Outcome, inject_pod
from webhook.engine.policy import Policy
from webhook.engine.render import Templates

P = "cache-injector.io/"


def run(
    pod: dict[str, Any], policy: Policy, templates: Templates, namespace: str = "shop"
) -> Outcome:
    return inject_pod(
        pod, namespace=namespace, operation="CREATE", policy=policy, templates=templates
    )


def injected_pod(
    pod: dict[str, Any], policy: Policy, templates: Templates, namespace: str = "shop"
) -> dict[str, Any]:
    outcome = run(pod, policy, templates, namespace)
    assert outcome.injected, (outcome.decision, outcome.error)
    result: dict[str, Any] = jsonpatch.apply_patch(pod, outcome.patch)
    return result


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    found: list[dict[str, Any]] = [
        c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name
    ]
    assert len(found) == 1, f"{name} appears {len(found)} times"
    return found[0]


def test_native_sidecars_come_first_in_order(policy: Policy, templates: Templates) -> None:
    pod = make_pod(spec={"initContainers": [{"name": "migrate", "image": "busybox"}]})
    result = injected_pod(pod, policy, templates)
    names_ = [c["name"] for c in result["spec"]["initContainers"]]
    assert names_ == ["cache-haproxy", "cache-varnish", "migrate"]
    assert all(c["restartPolicy"] == "Always" for c in result["spec"]["initContainers"][:2])
    assert [c["name"] for c in result["spec"]["containers"]] == ["app"]


def test_regular_sidecars_fallback(templates: Templates) -> None:
    policy = policy_from({"nativeSidecars": False})
    result = injected_pod(make_pod(), policy, templates)
    assert [c["name"] for c in result["spec"]["containers"]] == [
        "app",
        "cache-haproxy",
        "cache-varnish",
    ]
    varnish = container(result, "cache-varnish")
    assert "restartPolicy" not in varnish
    assert varnish["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}
    # A regular HAProxy would be stopped at once, failing Varnish's misses while it drains.
    haproxy = container(result, "cache-haproxy")
    assert haproxy["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "6"]}}


def test_native_haproxy_needs_no_prestop(policy: Policy, templates: Templates) -> None:
    """Native sidecars stop in reverse order: HAProxy gets SIGTERM once Varnish is gone."""
    result = injected_pod(make_pod(), policy, templates)
    assert "lifecycle" not in container(result, "cache-haproxy")
    assert container(result, "cache-varnish")["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}


def test_restricted_security_context_on_both(policy: Policy, templates: Templates) -> None:
    result = injected_pod(make_pod(), policy, templates)
    for name, uid in (("cache-haproxy", 99), ("cache-varnish", 1000)):
        context = container(result, name)["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == uid
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["readOnlyRootFilesystem"] is True
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("native", [True, False], ids=["native", "appended"])
def test_no_container_we_add_gets_the_api_token(native: bool, templates: Templates) -> None:
    """Each has an empty read-only volume of ours where the ServiceAccount plugin mounts the
    token, so the plugin (run again after the webhook) skips it; the app keeps its own."""
    policy = policy_from({"nativeSidecars": native})
    token = "/var/run/secrets/kubernetes.io/serviceaccount"
    app_mount = {"name": "kube-api-access-x", "mountPath": token, "readOnly": True}
    pod = make_pod(annotations={P + "access-log": "true", P + "metrics": "true"})
    pod["spec"]["containers"][0]["volumeMounts"] = [app_mount]
    result = injected_pod(pod, policy, templates)
    spec = result["spec"]
    ours = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] != "app"]
    assert {c["name"] for c in ours} == {
        "cache-haproxy",
        "cache-varnish",
        "cache-access-log",
        "cache-varnish-exporter",
    }
    for added in ours:
        at_token = [m for m in added["volumeMounts"] if m["mountPath"] == token]
        assert at_token == [{"name": "cache-no-api-token", "mountPath": token, "readOnly": True}], (
            added["name"]
        )
    volume = next(v for v in spec["volumes"] if v["name"] == "cache-no-api-token")
    assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": "4Ki"}
    assert container(result, "app")["volumeMounts"] == [app_mount]


def test_openshift_style_policy_leaves_uid_to_the_platform(templates: Templates) -> None:
    policy = policy_from({"runAsUser": {"haproxy": None, "varnish": None}})
    result = injected_pod(make_pod(), policy, templates)
    assert "runAsUser" not in container(result, "cache-varnish")["securityContext"]


@pytest.mark.parametrize(
    ("cache_size", "transient", "limit", "memory_request"),
    [
        # limit: cache + Transient + 16Mi workdir + 32Mi + 1152 B per 352 B of both storages
        # (a cache full of the smallest objects); request: cache + 16Mi + 32Mi.
        pytest.param("128Mi", "64Mi", "869Mi", "176Mi", id="defaults"),
        pytest.param("1Gi", "64Mi", "4697Mi", "1072Mi", id="bigger-cache"),
        pytest.param("128Mi", "256Mi", "1689Mi", "176Mi", id="bigger-transient"),
    ],
)
def test_varnish_memory_limit_rule(
    cache_size: str, transient: str, limit: str, memory_request: str, templates: Templates
) -> None:
    policy = policy_from({"transientSize": transient})
    pod = make_pod(annotations={P + "cache-size": cache_size})
    varnish = container(injected_pod(pod, policy, templates), "cache-varnish")
    assert varnish["resources"]["limits"]["memory"] == limit
    assert varnish["resources"]["requests"]["memory"] == memory_request
    assert f"Transient=malloc,{transient.removesuffix('Mi')}M" in varnish["args"]


def test_policy_memory_limit_above_the_floor_is_kept(templates: Templates) -> None:
    policy = policy_from({"resources": {"varnish": {"limits": {"memory": "1Gi"}}}})
    varnish = container(injected_pod(make_pod(), policy, templates), "cache-varnish")
    assert varnish["resources"]["limits"]["memory"] == "1Gi"


def test_fqdn_uses_the_request_namespace_when_the_pod_has_none(
    policy: Policy, templates: Templates
) -> None:
    pod = make_pod(namespace=None)
    outcome = run(pod, policy, templates, namespace="team-a")
    assert outcome.configs is not None
    cfg = outcome.configs.haproxy_cfg
    assert "server-template pod 128 app.team-a.svc.cluster.local:8080" in cfg


def test_dns_srv_discovery_queries_the_named_port(policy: Policy, templates: Templates) -> None:
    pod = make_pod(annotations={P + "backend": "app.catalog:http", P + "discovery": "dns-srv"})
    policy = policy_from({"namespaces": {"shop": {"allowedBackendNamespaces": ["catalog"]}}})
    outcome = run(pod, policy, templates)
    assert outcome.configs is not None
    assert "server-template pod 128 _http._tcp.app.catalog.svc.cluster.local\n" in (
        outcome.configs.haproxy_cfg
    )


def test_sticky_sessions_use_a_dynamic_cookie_shared_by_replicas(
    policy: Policy, templates: Templates
) -> None:
    def cfg(name: str) -> str:
        pod = make_pod(name=name, annotations={P + "sticky-sessions": "true"})
        outcome = run(pod, policy, templates)
        assert outcome.configs is not None
        return outcome.configs.haproxy_cfg

    first, second = cfg("web-0"), cfg("web-1")
    assert "cookie CACHESRV insert indirect httponly dynamic" in first
    assert "dynamic-cookie-key " in first
    assert first == second, "every replica must compute the same cookie for a backend pod"
    other_secret = policy_from({"stickySessionSecret": "other"})
    outcome = run(make_pod(annotations={P + "sticky-sessions": "true"}), other_secret, templates)
    assert outcome.configs is not None and outcome.configs.haproxy_cfg != first


def test_health_path_becomes_an_http_check(policy: Policy, templates: Templates) -> None:
    outcome = run(make_pod(annotations={P + "health-path": "/healthz"}), policy, templates)
    assert outcome.configs is not None
    cfg = outcome.configs.haproxy_cfg
    assert "http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host app.shop" in cfg
    plain = run(make_pod(), policy, templates)
    assert plain.configs is not None
    cfg = plain.configs.haproxy_cfg
    backend_pods = cfg.split("backend backend_pods", 1)[1].split("\nbackend ")[0]
    assert "httpchk" not in backend_pods, "no health-path: TCP checks"


def test_user_declared_container_is_completed_not_duplicated(
    policy: Policy, templates: Templates
) -> None:
    pod = make_pod()
    pod["spec"]["containers"].append(
        {"name": "cache-varnish", "env": [{"name": "TZ", "value": "UTC"}]}
    )
    result = injected_pod(pod, policy, templates)
    varnish = container(result, "cache-varnish")
    # Env merges by name (the user's wins): the invalidation token stays.
    assert [e["name"] for e in varnish["env"]] == [
        "CACHE_INJECTOR_PURGE_TOKEN",
        "MALLOC_CONF",
        "TZ",
    ]
    assert varnish["env"][2] == {"name": "TZ", "value": "UTC"}
    assert varnish["command"] == ["varnishd"]
    assert varnish in result["spec"]["initContainers"]


def test_varnish_runs_with_eight_jemalloc_arenas_unless_the_user_says(
    policy: Policy, templates: Templates
) -> None:
    """jemalloc's arenas (4 per CPU of the node) fragmented under small-object churn
    (bench/churn): eight by default, whatever the node; a MALLOC_CONF the user declares on
    cache-varnish replaces ours, once, and no MALLOC_ARENA_MAX (glibc's, which jemalloc
    ignores) is set."""
    plain = container(injected_pod(make_pod(), policy, templates), "cache-varnish")
    assert {"name": "MALLOC_CONF", "value": "narenas:8"} in plain["env"]
    assert not [e for e in plain["env"] if e["name"] == "MALLOC_ARENA_MAX"]
    pod = make_pod()
    pod["spec"]["containers"].append(
        {"name": "cache-varnish", "env": [{"name": "MALLOC_CONF", "value": "narenas:4"}]}
    )
    varnish = container(injected_pod(pod, policy, templates), "cache-varnish")
    assert [e for e in varnish["env"] if e["name"] == "MALLOC_CONF"] == [
        {"name": "MALLOC_CONF", "value": "narenas:4"}
    ]


def test_user_image_override_needs_policy_permission(templates: Templates) -> None:
    pod = make_pod()
    pod["spec"]["containers"].append({"name": "cache-haproxy", "image": "haproxy:2.8"})
    outcome = run(pod, policy_from({}), templates)
    assert not outcome.allowed
    assert isinstance(outcome.error, InvalidOptions)
    assert isinstance(outcome.error.problems[0], ImageOverrideNotAllowed)
    allowed = run(pod, policy_from({"allowImageOverride": True}), templates)
    assert allowed.injected


def test_port_clash_names_both_containers(policy: Policy, templates: Templates) -> None:
    outcome = run(make_pod(ports=[6081]), policy, templates)
    assert not outcome.allowed and isinstance(outcome.error, InvalidOptions)
    (problem,) = outcome.error.problems
    assert isinstance(problem, PortClash)
    assert "container app" in str(problem) and "cache-varnish" in str(problem)
    assert run(make_pod(ports=[6081], annotations={P + "listen-port": "7000"}), policy,
               templates).injected  # fmt: skip


def test_a_port_name_that_is_not_a_string_is_ignored(policy: Policy, templates: Templates) -> None:
    pod = make_pod()
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": 8080, "name": {"x": 1}}]
    assert run(pod, policy, templates).injected


def test_on_invalid_skip_lets_the_pod_through_with_a_warning(templates: Templates) -> None:
    policy = policy_from({"onInvalid": "skip"})
    outcome = run(make_pod(annotations={P + "grace": "forever"}), policy, templates)
    assert outcome.allowed and not outcome.patch
    assert outcome.decision.reason == "invalid_skipped"
    assert any("cache-injector.io/grace: forever is invalid" in w for w in outcome.warnings)


@pytest.mark.parametrize(
    ("on_missing", "allowed", "reason"),
    [
        pytest.param("skip", True, "no_backend", id="skip"),
        pytest.param("deny", False, "invalid", id="deny"),
    ],
)
def test_missing_backend(on_missing: str, allowed: bool, reason: str, templates: Templates) -> None:
    policy = policy_from({"onMissingBackend": on_missing})
    outcome = run(make_pod(backend=None), policy, templates)
    assert (outcome.allowed, outcome.decision.reason, outcome.patch) == (allowed, reason, [])


def test_short_grace_period_warns_and_is_not_changed(policy: Policy, templates: Templates) -> None:
    pod = make_pod(spec={"terminationGracePeriodSeconds": 5})
    outcome = run(pod, policy, templates)
    assert any("terminationGracePeriodSeconds 5" in w for w in outcome.warnings)
    assert jsonpatch.apply_patch(pod, outcome.patch)["spec"]["terminationGracePeriodSeconds"] == 5


@pytest.mark.parametrize(("grace", "sleep"), [(2, 2), (0, None), (None, 5), (7, 5)])
def test_native_prestop_sleep_never_outlasts_the_grace_period(
    grace: int | None, sleep: int | None, policy: Policy, templates: Templates
) -> None:
    """The API server rejects a sleep action longer than terminationGracePeriodSeconds
    (found by tests/kube/test_failure.py: every pod of a Deployment with grace 2 refused)."""
    pod = make_pod(spec={} if grace is None else {"terminationGracePeriodSeconds": grace})
    injected = injected_pod(pod, policy, templates)
    lifecycle = container(injected, "cache-varnish").get("lifecycle")
    assert (lifecycle["preStop"]["sleep"]["seconds"] if lifecycle else None) == sleep
    if grace is not None and grace < 5:
        assert any(f"terminationGracePeriodSeconds {grace}" in w
                   for w in run(pod, policy, templates).warnings)  # fmt: skip


def test_user_memory_limit_below_the_floor_warns(policy: Policy, templates: Templates) -> None:
    pod = make_pod()
    pod["spec"]["containers"].append(
        {"name": "cache-varnish", "resources": {"limits": {"memory": "200Mi"}}}
    )
    outcome = run(pod, policy, templates)
    assert outcome.injected
    assert any("OOM-killed" in w for w in outcome.warnings)


def test_reinjection_is_a_no_op(policy: Policy, templates: Templates) -> None:
    once = injected_pod(make_pod(), policy, templates)
    again = run(once, policy, templates)
    assert again.allowed and again.patch == []
    assert again.decision.reason == "already_injected"


def test_drain_seconds_zero_means_no_prestop(policy: Policy, templates: Templates) -> None:
    pod = make_pod(annotations={P + "drain-seconds": "0"})
    assert "lifecycle" not in container(injected_pod(pod, policy, templates), "cache-varnish")
    fallback = injected_pod(pod, policy_from({"nativeSidecars": False}), templates)
    for name in ("cache-haproxy", "cache-varnish"):
        assert "lifecycle" not in container(fallback, name)


def test_vcl_configmap_replaces_the_generated_vcl(policy: Policy, templates: Templates) -> None:
    result = injected_pod(make_pod(annotations={P + "vcl-configmap": "my-vcl"}), policy, templates)
    assert P + "vcl" not in result["metadata"]["annotations"]
    volume = next(v for v in result["spec"]["volumes"] if v["name"] == "cache-varnish-config")
    assert volume["configMap"]["name"] == "my-vcl"
    probe = container(result, "cache-varnish")["readinessProbe"]
    assert "tcpSocket" in probe, "a user's VCL may not answer /.cache/ready"


def test_configs_reach_the_containers_through_the_downward_api(
    policy: Policy, templates: Templates
) -> None:
    result = injected_pod(make_pod(), policy, templates)
    annotations = result["metadata"]["annotations"]
    volumes = {v["name"]: v for v in result["spec"]["volumes"]}
    for volume, files in (
        ("cache-haproxy-config", {"haproxy.cfg": P + "haproxy-cfg"}),
        ("cache-varnish-config", {"default.vcl": P + "vcl", "start.cli": P + "varnish-cli"}),
    ):
        items = volumes[volume]["downwardAPI"]["items"]
        assert {i["path"]: i["fieldRef"]["fieldPath"] for i in items} == {
            path: f"metadata.annotations['{key}']" for path, key in files.items()
        }
        assert all(annotations[key] for key in files.values())
    # varnishd loads the VCL through the start-up CLI file (xkey when the image has it).
    varnishd = container(result, "cache-varnish")["args"]
    assert varnishd[varnishd.index("-f") + 1] == ""
    assert varnishd[varnishd.index("-I") + 1] == "/etc/cache-injector/varnish/start.cli"
    workdir = volumes["cache-varnish-workdir"]["emptyDir"]
    assert workdir == {"medium": "Memory", "sizeLimit": "16Mi"}
    # The shared-memory log must fit in the workdir, or varnishd fails at launch. Nothing
    # reads it in this pod (no access log): the smaller log.
    args = container(result, "cache-varnish")["args"]
    assert args[args.index("-p", args.index("debug=+vclrel")) + 1] == "vsl_space=4M"


def test_a_pod_without_spec_or_metadata_parts_still_gets_a_patch_that_applies(
    policy: Policy, templates: Templates
) -> None:
    pod = make_pod()
    del pod["spec"]
    outcome = run(pod, policy, templates)
    assert outcome.injected
    result = jsonpatch.apply_patch(pod, outcome.patch)
    assert [c["name"] for c in result["spec"]["initContainers"]] == [
        "cache-haproxy",
        "cache-varnish",
    ]


def _vcl(annotations: dict[str, str], policy: Policy, templates: Templates) -> str:
    outcome = run(make_pod(annotations=annotations), policy, templates)
    assert outcome.configs is not None and outcome.configs.vcl is not None
    return outcome.configs.vcl


def test_ignored_query_params_leave_the_cache_key_not_the_request(
    policy: Policy, templates: Templates
) -> None:
    """The rendered key expression, run on URLs (Python's re and PCRE agree on these
    patterns; the e2e runs them in Varnish): named parameters go, whole names only, the rest
    stays in order; req.url and bereq.url are never rewritten."""
    vcl = _vcl({P + "ignore-query-params": "utm_*,gclid,a.b"}, policy, templates)
    match = re.search(
        r'hash_data\(regsub\(regsuball\(req\.url, "([^"]+)", ""\), "([^"]+)", ""\)\);', vcl
    )
    assert match, vcl
    remove, tail = (re.compile(pattern) for pattern in match.groups())

    def key(url: str) -> str:
        return tail.sub("", remove.sub("", url), count=1)

    cases = {
        "/p?utm_source=news&utm_medium=mail": "/p",
        "/p?id=7&utm_source=x&gclid=abc&page=2": "/p?id=7&page=2",
        "/p?gclid": "/p",
        "/p?gclid=1&gclid=2&id=7": "/p?id=7",
        "/p?gclid2=1&xgclid=2&a_b=3&axb=4": "/p?gclid2=1&xgclid=2&a_b=3&axb=4",
        "/p?q=utm_source%3Dx&a.b=1": "/p?q=utm_source%3Dx",
        "/utm_x/p?id=1": "/utm_x/p?id=1",
        "/p": "/p",
    }
    assert {url: key(url) for url in cases} == cases
    assert not re.search(r"set (bereq|req)\.url = (regsub|std\.querysort)", vcl)
    assert 'set beresp.http.X-Cache-Url = regsub(regsuball(bereq.url, "' in vcl


def test_sort_query_wraps_the_key_and_the_default_keeps_the_built_in_hash(
    policy: Policy, templates: Templates
) -> None:
    both = _vcl({P + "ignore-query-params": "gclid", P + "sort-query": "true"}, policy, templates)
    assert "hash_data(std.querysort(regsub(regsuball(req.url, " in both
    assert "set beresp.http.X-Cache-Url = std.querysort(regsub(regsuball(bereq.url, " in both
    sort = _vcl({P + "sort-query": "true"}, policy, templates)
    assert "hash_data(std.querysort(req.url));" in sort
    assert "set beresp.http.X-Cache-Url = std.querysort(bereq.url);" in sort
    default = _vcl({}, policy, templates)
    assert "sub vcl_hash" not in default and "querysort" not in default
    assert "set beresp.http.X-Cache-Url = bereq.url;" in default
