"""Annotation values: every invalid value gets the one message format; valid ones parse;
precedence is annotation > namespace-policy > policy-default > built-in; limits always win."""

from __future__ import annotations

import json
import re
from typing import cast

import pytest

from tests.conftest import policy_from
from webhook.engine.errors import (
    BackendNamespaceNotAllowed,
    InvalidOptions,
    InvalidPolicy,
    LimitExceeded,
)
from webhook.engine.options import resolve_options, unknown_annotation_warnings
from webhook.engine.policy import Policy
from webhook.engine.values import (
    MIB,
    TRACKING_QUERY_PARAMS,
    Backend,
    ObjectSize,
    cookie_names_regex,
    parse_backend,
    parse_query_param_names,
)

P = "cache-injector.io/"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("web:8080", Backend("web", None, 8080), id="service-and-number"),
        pytest.param("web.shop:http", Backend("web", "shop", "http"), id="namespace-and-port-name"),
        pytest.param("a:1", Backend("a", None, 1), id="shortest"),
        pytest.param("web-api.team-a:65535", Backend("web-api", "team-a", 65535), id="max-port"),
    ],
)
def test_parse_backend_accepts(value: str, expected: Backend) -> None:
    assert parse_backend(value) == expected


# (annotation, value, a phrase the message must contain): the message always reads
# `<annotation>: <value> is invalid: <what is accepted>`.
INVALID = [
    pytest.param("backend", "web", "SERVICE[.NAMESPACE]:PORT", id="backend-no-port"),
    pytest.param("backend", ":8080", "SERVICE[.NAMESPACE]:PORT", id="backend-no-service"),
    pytest.param("backend", "web:", "SERVICE[.NAMESPACE]:PORT", id="backend-empty-port"),
    pytest.param("backend", "Web:8080", "Service name", id="backend-uppercase"),
    pytest.param("backend", "9web:8080", "starting with a letter", id="backend-digit-first"),
    pytest.param(
        "backend", "web.shop.svc.cluster.local:80", "not a full DNS name", id="backend-fqdn"
    ),
    pytest.param("backend", "web:0", "from 1 to 65535", id="backend-port-0"),
    pytest.param("backend", "web:65536", "from 1 to 65535", id="backend-port-too-big"),
    pytest.param("backend", "web:08080", "from 1 to 65535", id="backend-port-leading-zero"),
    pytest.param("backend", "web:http_api", "port name", id="backend-bad-port-name"),
    pytest.param("backend", "web:http", "with discovery dns-a", id="backend-name-needs-srv"),
    pytest.param("discovery", "dns", "dns-a or dns-srv", id="discovery-unknown"),
    pytest.param("discovery", "DNS-A", "dns-a or dns-srv", id="discovery-case"),
    pytest.param("ip-family", "dual", "auto, ipv4 or ipv6", id="ip-family-unknown"),
    pytest.param("ip-family", "IPv6", "auto, ipv4 or ipv6", id="ip-family-case"),
    pytest.param("max-backends", "0", "from 1 to 128", id="max-backends-0"),
    pytest.param("max-backends", "-1", "from 1 to 128", id="max-backends-negative"),
    pytest.param("max-backends", "ten", "from 1 to 128", id="max-backends-word"),
    pytest.param("max-backends", "4.5", "from 1 to 128", id="max-backends-fraction"),
    pytest.param("health-path", "healthz", "absolute HTTP path", id="health-path-relative"),
    pytest.param("health-path", "/a b", "absolute HTTP path", id="health-path-space"),
    pytest.param("health-path", '/a"b', "absolute HTTP path", id="health-path-quote"),
    pytest.param("health-path", "/a\nb", "absolute HTTP path", id="health-path-newline"),
    pytest.param("health-path", "/a#b", "absolute HTTP path", id="health-path-hash"),
    pytest.param("health-path", "/" + "a" * 300, "absolute HTTP path", id="health-path-long"),
    pytest.param("cache-size", "256", "from 16Mi to 4Gi", id="cache-size-bytes-too-small"),
    pytest.param("cache-size", "lots", "memory quantity", id="cache-size-word"),
    pytest.param("cache-size", "0", "from 16Mi", id="cache-size-zero"),
    pytest.param("cache-size", "", "memory quantity", id="cache-size-empty"),
    pytest.param("cache-size", "-1Gi", "memory quantity", id="cache-size-negative"),
    pytest.param("cache-size", "8Mi", "from 16Mi", id="cache-size-too-small"),
    pytest.param("default-ttl", "-5s", "from 0s to 365d", id="ttl-negative"),
    pytest.param("default-ttl", "120", "unit s, m, h or d", id="ttl-no-unit"),
    pytest.param("default-ttl", "2w", "unit s, m, h or d", id="ttl-weeks"),
    pytest.param("default-ttl", "400d", "from 0s to 365d", id="ttl-too-long"),
    pytest.param("grace", "1.5h", "unit s, m, h or d", id="grace-fraction"),
    pytest.param("listen-port", "80", "from 1025 to 65535", id="listen-port-80"),
    pytest.param("listen-port", "70000", "from 1025 to 65535", id="listen-port-too-big"),
    pytest.param("listen-port", "6090", "not 6090, 6091 or 6092", id="listen-port-haproxy-local"),
    pytest.param("listen-port", "6091", "not 6090, 6091 or 6092", id="listen-port-haproxy-metrics"),
    pytest.param("listen-port", "6092", "not 6090, 6091 or 6092", id="listen-port-haproxy-stats"),
    pytest.param("sticky-sessions", "yes", "true or false", id="sticky-yes"),
    pytest.param("sticky-sessions", "True", "true or false", id="sticky-capital"),
    pytest.param("drain-seconds", "301", "from 0 to 300", id="drain-too-long"),
    pytest.param("drain-seconds", "-1", "from 0 to 300", id="drain-negative"),
    pytest.param("vcl-configmap", "My_VCL", "ConfigMap name", id="vcl-configmap-bad-name"),
    pytest.param("max-object-size", "0%", "from 1% to 100%", id="object-size-0pct"),
    pytest.param("max-object-size", "101%", "from 1% to 100%", id="object-size-101pct"),
    pytest.param("max-object-size", "1.5%", "from 1% to 100%", id="object-size-fraction"),
    pytest.param("max-object-size", "512", "at least 1Ki", id="object-size-tiny"),
    pytest.param("max-object-size", "big", "memory", id="object-size-word"),
    pytest.param("tunnel-timeout", "0s", "from 1s to 24d", id="tunnel-zero"),
    pytest.param("tunnel-timeout", "25d", "from 1s to 24d", id="tunnel-over-haproxy-max"),
    pytest.param("ignore-cookies", "", "comma-separated cookie names", id="cookies-empty"),
    pytest.param("ignore-cookies", "_ga,,_gid", "comma-separated", id="cookies-empty-name"),
    pytest.param("ignore-cookies", "*", "comma-separated", id="cookies-everything"),
    pytest.param("ignore-cookies", "a|b", "comma-separated", id="cookies-regex"),
    pytest.param("ignore-cookies", 'a"b', "comma-separated", id="cookies-quote"),
    pytest.param("ignore-cookies", "_g*a", "comma-separated", id="cookies-star-inside"),
    pytest.param(
        "ignore-query-params", "", "comma-separated query parameter names", id="query-empty"
    ),
    pytest.param("ignore-query-params", "gclid,,fbclid", "at most 64", id="query-empty-name"),
    pytest.param("ignore-query-params", "*", "ending in *", id="query-everything"),
    pytest.param("ignore-query-params", "utm_source|gclid", "letters, digits", id="query-regex"),
    pytest.param("ignore-query-params", "a=b", "letters, digits", id="query-equals"),
    pytest.param("ignore-query-params", "a&b", "letters, digits", id="query-ampersand"),
    pytest.param("ignore-query-params", 'a"b', "letters, digits", id="query-quote"),
    pytest.param("ignore-query-params", "utm*_x", "ending in *", id="query-star-inside"),
    pytest.param("ignore-query-params", "x" * 65, "letters, digits", id="query-name-too-long"),
    pytest.param(
        "ignore-query-params", ",".join(f"p{i}" for i in range(65)), "at most 64", id="query-65"
    ),
    pytest.param(
        "ignore-query-params",
        "trackers," + ",".join(f"p{i}" for i in range(31)),
        "trackers stands for 34 of them, so at most 30 more beside it",
        id="query-trackers-plus-31",
    ),
    pytest.param("sort-query", "yes", "true or false", id="sort-query-yes"),
    pytest.param("tag-header", "", "an HTTP header name", id="tag-header-empty"),
    pytest.param("tag-header", "Surrogate Key", "an HTTP header name", id="tag-header-space"),
    pytest.param("tag-header", "x_key", "an HTTP header name", id="tag-header-underscore"),
    pytest.param("tag-header", "Cache-Control", "Cache-Control", id="tag-header-caching"),
    pytest.param("tag-header", "X-Cache-Url", "X-Cache-*", id="tag-header-ours"),
    pytest.param("tag-header", "X-Cache", "X-Cache-*", id="tag-header-hit-miss"),
    pytest.param("tag-header", "a" * 65, "at most 64", id="tag-header-long"),
    pytest.param("expose-tag-header", "yes", "true or false", id="expose-tags-yes"),
]


@pytest.mark.parametrize(("suffix", "value", "phrase"), INVALID)
def test_invalid_annotation_message_names_key_value_and_accepted(
    suffix: str, value: str, phrase: str, policy: Policy
) -> None:
    annotations = {P + "backend": "app:8080", P + suffix: value}
    with pytest.raises(InvalidOptions) as caught:
        resolve_options(annotations, namespace="shop", policy=policy)
    messages = [str(problem) for problem in caught.value.problems]
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"{P}{suffix}: {value} is invalid: "), messages[0]
    assert phrase in messages[0]


def test_every_invalid_annotation_is_reported_at_once(policy: Policy) -> None:
    annotations = {P + "backend": "web", P + "cache-size": "x", P + "grace": "forever"}
    with pytest.raises(InvalidOptions) as caught:
        resolve_options(annotations, namespace="shop", policy=policy)
    assert {problem.key for problem in caught.value.problems} == {
        P + "backend",
        P + "cache-size",
        P + "grace",
    }


@pytest.mark.parametrize(
    ("suffix", "value", "field", "expected"),
    [
        pytest.param("max-backends", "1", "max_backends", 1, id="max-backends-low-edge"),
        pytest.param("ip-family", "ipv6", "ip_family", "ipv6", id="ip-family-ipv6"),
        pytest.param("max-backends", "128", "max_backends", 128, id="max-backends-limit-edge"),
        pytest.param("cache-size", "16Mi", "cache_size", 16 * MIB, id="cache-size-low-edge"),
        pytest.param("cache-size", "4Gi", "cache_size", 4096 * MIB, id="cache-size-limit-edge"),
        pytest.param("cache-size", "1G", "cache_size", 10**9, id="cache-size-decimal-suffix"),
        pytest.param("default-ttl", "0s", "default_ttl", 0, id="ttl-zero"),
        pytest.param("default-ttl", "5m", "default_ttl", 300, id="ttl-minutes"),
        pytest.param("grace", "365d", "grace", 365 * 86400, id="grace-max"),
        pytest.param("listen-port", "1025", "listen_port", 1025, id="listen-port-low-edge"),
        pytest.param("listen-port", "65535", "listen_port", 65535, id="listen-port-high-edge"),
        pytest.param("drain-seconds", "0", "drain_seconds", 0, id="drain-off"),
        pytest.param("drain-seconds", "300", "drain_seconds", 300, id="drain-max"),
        pytest.param("sticky-sessions", "true", "sticky_sessions", True, id="sticky-on"),
        pytest.param("health-path", "/healthz?full=1", "health_path", "/healthz?full=1", id="hp"),
        pytest.param(
            "max-object-size", "100%", "max_object_size", ObjectSize(percent=100), id="obj-100pct"
        ),
        pytest.param(
            "max-object-size", "4Mi", "max_object_size", ObjectSize(size=4 * MIB), id="obj-4Mi"
        ),
        pytest.param("tunnel-timeout", "1s", "tunnel_timeout", 1, id="tunnel-low-edge"),
        pytest.param("tunnel-timeout", "24d", "tunnel_timeout", 24 * 86400, id="tunnel-high"),
        pytest.param(
            "ignore-cookies",
            "_ga, _ga_*,_gid,consent.v2",
            "ignore_cookies",
            ("_ga", "_ga_*", "_gid", "consent.v2"),
            id="cookies",
        ),
        pytest.param(
            "ignore-query-params",
            "gclid, utm_*,a.b,x-y",
            "ignore_query_params",
            ("gclid", "utm_*", "a.b", "x-y"),
            id="query-params",
        ),
        pytest.param(
            "ignore-query-params",
            "ref,trackers,gclid",
            "ignore_query_params",
            ("ref", *TRACKING_QUERY_PARAMS),
            id="query-trackers-expanded-once",
        ),
        pytest.param(
            "ignore-query-params",
            "trackers," + ",".join(f"p{i}" for i in range(64 - len(TRACKING_QUERY_PARAMS))),
            "ignore_query_params",
            (*TRACKING_QUERY_PARAMS, *(f"p{i}" for i in range(64 - len(TRACKING_QUERY_PARAMS)))),
            id="query-64-in-all",
        ),
        pytest.param("sort-query", "true", "sort_query", True, id="sort-query-on"),
        pytest.param("tag-header", "Surrogate-Key", "tag_header", "Surrogate-Key", id="tags"),
        pytest.param("expose-tag-header", "true", "expose_tag_header", True, id="expose-tags"),
    ],
)
def test_valid_annotation_values(
    suffix: str, value: str, field: str, expected: object, policy: Policy
) -> None:
    options = resolve_options(
        {P + "backend": "app:8080", P + suffix: value}, namespace="shop", policy=policy
    )
    assert getattr(options, field) == expected
    assert options.sources[field] == "annotation"


LAYERED = policy_from(
    {
        "defaults": {"cache-size": "256Mi", "grace": "1h", "backend": "app:8080"},
        "namespaces": {"shop": {"cache-size": "512Mi", "backend": "catalog:9090"}},
        "limits": {"maxCacheSize": "1Gi", "maxBackends": 64},
    }
)


@pytest.mark.parametrize(
    ("namespace", "annotations", "field", "value", "source"),
    [
        pytest.param("shop", {P + "cache-size": "64Mi"}, "cache_size", 64 * MIB, "annotation",
                     id="annotation-beats-namespace"),
        pytest.param("shop", {}, "cache_size", 512 * MIB, "namespace-policy",
                     id="namespace-beats-default"),
        pytest.param("other", {}, "cache_size", 256 * MIB, "policy-default",
                     id="default-when-no-namespace-entry"),
        pytest.param("shop", {}, "grace", 3600, "policy-default",
                     id="namespace-entry-without-option-falls-through"),
        pytest.param("shop", {}, "default_ttl", 120, "built-in", id="built-in-last"),
        pytest.param("shop", {}, "backend", Backend("catalog", None, 9090), "namespace-policy",
                     id="namespace-default-backend"),
        pytest.param("other", {}, "backend", Backend("app", None, 8080), "policy-default",
                     id="cluster-default-backend"),
    ],
)  # fmt: skip
def test_precedence(
    namespace: str, annotations: dict[str, str], field: str, value: object, source: str
) -> None:
    options = resolve_options(annotations, namespace=namespace, policy=LAYERED)
    assert getattr(options, field) == value
    assert options.sources[field] == source


@pytest.mark.parametrize(
    ("suffix", "value", "limit_text"),
    [
        pytest.param("cache-size", "2Gi", "from 16Mi to 1Gi", id="cache-size-over-limit"),
        pytest.param("max-backends", "65", "from 1 to 64", id="max-backends-over-limit"),
    ],
)
def test_limits_always_win(suffix: str, value: str, limit_text: str) -> None:
    with pytest.raises(InvalidOptions) as caught:
        resolve_options({P + suffix: value}, namespace="shop", policy=LAYERED)
    (problem,) = caught.value.problems
    assert isinstance(problem, LimitExceeded)
    assert limit_text in str(problem)
    assert "(cluster policy limit)" in str(problem)


CROSS = policy_from(
    {"namespaces": {"shop": {"allowedBackendNamespaces": ["catalog"]}, "ops": {
        "allowedBackendNamespaces": ["*"]}}}
)  # fmt: skip


@pytest.mark.parametrize(
    ("namespace", "backend", "allowed"),
    [
        pytest.param("shop", "app.shop:80", True, id="own-namespace-spelled-out"),
        pytest.param("shop", "app:80", True, id="own-namespace-implied"),
        pytest.param("shop", "api.catalog:80", True, id="listed-namespace"),
        pytest.param("shop", "api.billing:80", False, id="unlisted-namespace"),
        pytest.param("blog", "api.catalog:80", False, id="no-entry-own-only"),
        pytest.param("ops", "api.billing:80", True, id="wildcard"),
    ],
)
def test_cross_namespace_backend_needs_policy(namespace: str, backend: str, allowed: bool) -> None:
    annotations = {P + "backend": backend}
    if allowed:
        assert resolve_options(annotations, namespace=namespace, policy=CROSS).backend
        return
    with pytest.raises(InvalidOptions) as caught:
        resolve_options(annotations, namespace=namespace, policy=CROSS)
    (problem,) = caught.value.problems
    assert isinstance(problem, BackendNamespaceNotAllowed)
    assert f"namespaces.{namespace}.allowedBackendNamespaces" in str(problem)


def test_dns_srv_needs_a_port_name(policy: Policy) -> None:
    with pytest.raises(InvalidOptions, match="must be a Service port name"):
        resolve_options(
            {P + "backend": "app:8080", P + "discovery": "dns-srv"}, namespace="s", policy=policy
        )
    options = resolve_options(
        {P + "backend": "app:http", P + "discovery": "dns-srv"}, namespace="s", policy=policy
    )
    assert options.backend == Backend("app", None, "http")


@pytest.mark.parametrize(
    ("key", "warning"),
    [
        pytest.param(P + "cache-sise", "did you mean cache-injector.io/cache-size?", id="typo"),
        pytest.param(P + "inject", "is a label, not an annotation", id="label-as-annotation"),
        pytest.param(P + "frobnicate", "is ignored", id="unknown"),
    ],
)
def test_unknown_annotation_keys_are_reported(key: str, warning: str) -> None:
    (message,) = unknown_annotation_warnings({key: "x", "other.io/x": "y", P + "grace": "1h"})
    assert message.startswith(key)
    assert warning in message


def test_non_string_annotation_value_is_invalid_not_a_crash(policy: Policy) -> None:
    # Not what the API server sends, but what a hand-made review can: a number, not a string.
    annotations = cast("dict[str, str]", {P + "backend": "a:1", P + "max-backends": 5})
    with pytest.raises(InvalidOptions, match="max-backends"):
        resolve_options(
            annotations,
            namespace="s",
            policy=policy,
        )


def test_built_in_max_backends_never_exceeds_a_lower_policy_limit() -> None:
    """The built-in default (128) under a policy capping max-backends at 64 is 64, not a
    denial of every pod; an annotation above the limit is still refused."""
    policy = policy_from({"limits": {"maxBackends": 64}})
    options = resolve_options({P + "backend": "app:8080"}, namespace="shop", policy=policy)
    assert (options.max_backends, options.sources["max_backends"]) == (64, "built-in")
    with pytest.raises(InvalidOptions, match="from 1 to 64"):
        resolve_options(
            {P + "backend": "app:8080", P + "max-backends": "65"}, namespace="shop", policy=policy
        )


@pytest.mark.parametrize(
    ("values_", "problem_key"),
    [
        pytest.param({"cache-size": "8Gi"}, "cache-size", id="cache-over-limit"),
        pytest.param({"cache-size": "1Mi"}, "cache-size", id="cache-under-minimum"),
        pytest.param({"max-backends": "200"}, "max-backends", id="backends-over-limit"),
        pytest.param({"listen-port": "6091"}, "listen-port", id="haproxy-port"),
        pytest.param({"backend": "api:http"}, "backend", id="port-name-with-dns-a"),
        pytest.param({"backend": "api:80", "discovery": "dns-srv"}, "backend", id="number-srv"),
        pytest.param({"backend": "api.billing:80"}, "backend", id="namespace-not-allowed"),
        pytest.param({"cache-size": "64Mi", "backend": "api:http", "discovery": "dns-srv"}, None,
                     id="valid"),
    ],
)  # fmt: skip
def test_policy_and_annotations_apply_one_rule(
    values_: dict[str, str], problem_key: str | None
) -> None:
    """A value refused in an annotation is refused as the namespace's policy default, with
    the same text: both callers use policy.check_option / policy.check_backend."""
    annotation_error = policy_error = None
    try:
        resolve_options({P + k: v for k, v in values_.items()}, namespace="shop", policy=CROSS)
    except InvalidOptions as err:
        (problem,) = err.problems
        annotation_error = (problem.key.removeprefix(P), problem.accepted)
    try:
        policy_from({"namespaces": {"shop": {**values_, "allowedBackendNamespaces": ["catalog"]}}})
    except InvalidPolicy as err:
        (text,) = err.problems
        where, value, accepted = text.split(": ", 2)
        policy_error = (where.rsplit(".", 1)[1], accepted)
        assert json.loads(value) == values_[policy_error[0]]
    if problem_key is None:
        assert annotation_error is None and policy_error is None
    else:
        assert annotation_error == policy_error
        assert annotation_error is not None and annotation_error[0] == problem_key


def test_defaults_of_the_traffic_options(policy: Policy) -> None:
    """10 % of the cache (bench.objectsize), an hour for idle tunnels, no cookie ignored."""
    options = resolve_options({P + "backend": "app:8080"}, namespace="shop", policy=policy)
    assert options.max_object_size.bytes_for(options.cache_size) == 128 * MIB // 10
    assert options.tunnel_timeout == 3600
    assert options.ignore_cookies is None
    assert options.ignore_query_params is None and options.sort_query is False


def test_cookie_regex_matches_whole_names_only() -> None:
    pattern = re.compile(r"(^|;\s*)" + cookie_names_regex(("_ga", "_ga_*", "a.b")) + "=")
    for cookie in ("_ga=1", "x=1; _ga=2", "_ga_XYZ=3", "a.b=4"):
        assert pattern.search(cookie), cookie
    for cookie in ("_gab=1", "x_ga=1", "axb=1", "session=_ga=1"):
        assert not pattern.search(cookie), cookie


def test_trackers_list_is_valid_and_covers_the_common_ones() -> None:
    """The preset passes its own parser (so the VCL regex is safe) and names what the issue
    and the vendors' documentation name."""
    assert parse_query_param_names(",".join(TRACKING_QUERY_PARAMS)) == TRACKING_QUERY_PARAMS
    for name in ("utm_*", "gclid", "fbclid", "msclkid", "mc_cid", "mc_eid", "dclid", "gbraid"):
        assert name in TRACKING_QUERY_PARAMS
    for name in ("wbraid", "_ga", "_gl", "yclid", "igshid", "twclid", "li_fat_id"):
        assert name in TRACKING_QUERY_PARAMS


def test_query_params_from_the_policy_default_with_its_source() -> None:
    policy = policy_from({"defaults": {"ignore-query-params": "trackers", "sort-query": True}})
    options = resolve_options({P + "backend": "app:8080"}, namespace="shop", policy=policy)
    assert options.ignore_query_params == TRACKING_QUERY_PARAMS
    assert options.sort_query is True
    assert options.sources["ignore_query_params"] == "policy-default"
    assert options.texts["ignore_query_params"] == "trackers"


def test_a_bad_policy_default_names_the_field_value_and_accepted() -> None:
    with pytest.raises(InvalidPolicy) as caught:
        policy_from({"defaults": {"ignore-query-params": "utm_source|gclid"}})
    (problem,) = caught.value.problems
    assert problem.startswith('defaults.ignore-query-params: "utm_source|gclid": ')
    assert "comma-separated query parameter names" in problem
