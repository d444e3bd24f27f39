"""The cluster policy: a typed, strict model, parsed and checked once, then read on every review.

Owns: the policy file's schema (docs/policy.schema.json is exported from it), its semantic
checks (every problem as `path.to.field: value: what is accepted`) and the derived lookups
that the hot path reads. Does not: read files or watch them (the server and CLI do).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, create_model
from pydantic import ValidationError as PydanticValidationError
from pydantic.alias_generators import to_camel

from . import names, values
from .errors import InvalidPolicy

DEFAULT_IMAGES = {
    "haproxy": "haproxy:3.4",
    "varnish": "varnish:8.0",
    # Built from images/varnish-exporter/Dockerfile (no public image pairs the exporter with
    # Varnish 8.0's varnishstat): push it and set images.varnishExporter.
    "varnish_exporter": "cache-injector/varnish-exporter:8.0",
}
# Varnish's shared-memory log (vsl_space; Varnish's default is 80M). varnishd writes all of
# it at start into the workdir's Memory emptyDir, so every pod pays it, idle or not. A reader
# that must not lose records (cache-access-log's varnishncsa) needs room to keep up with a c=8
# HIT load. Measured (Varnish 8.0, 20-40 k req/s, bench/datapath): 1M and 2M overran, 4M
# overran in 1 of 2 runs (8.0's varnishncsa then died on an assert), 8M lost no record in any
# run, nor on 7.1. So the access log gets 8M.
VARNISH_LOG_SIZE_READER = 8 * values.MIB
# Without the access log nothing in the pod reads the log; a person's varnishlog sometimes
# does. With 4M such a reader is lapped only at the rates above, and the idle default pod is
# 4 MiB smaller (issue 25: 35.6 -> 31.6 MiB on 3.4/8.0 alone, bench/footprint).
VARNISH_LOG_SIZE = 4 * values.MIB
# The workdir emptyDir (tmpfs, charged to the container): the log, plus counters, the
# compiled VCLs and the panic buffer (under 1 MiB at idle). Smaller than the log and
# varnishd fails at launch ("Child failed on launch"). Sized for the reader's log either
# way: the memory limit counts it, and it did not shrink with the default pod's log.
VARNISH_WORKDIR_SIZE = VARNISH_LOG_SIZE_READER + 8 * values.MIB
# Besides cache, Transient and workdir: threads, sessions, VCL, allocator (measured idle
# ~7.5 MiB PSS with jemalloc, after 64 concurrent clients a few MiB more) and open
# WebSockets (~120 KiB each).
VARNISH_BASE_MEMORY = 32 * values.MIB
# What each object costs outside -s malloc (objcore, objhead, storage header, allocator),
# and the least -s malloc storage one takes (status, headers, a few bytes of body).
# Measured with a stream of unique tiny objects (docs/design.md, "Memory limit"): ~1.05 KB
# outside for ~350 bytes inside; the default pod under bench/churn (jemalloc, as the
# official images link it) ~620 bytes per object while the cache filled, ~700 at the 8-min
# peak: 1152 keeps a 1.6x margin.
VARNISH_OBJECT_OVERHEAD = 1152
VARNISH_SMALLEST_OBJECT = 352
MIN_CACHE_SIZE = 16 * values.MIB


def varnish_log_size(access_log: bool) -> int:
    """vsl_space: the reader's size when the pod runs the access log, else the smaller one."""
    return VARNISH_LOG_SIZE_READER if access_log else VARNISH_LOG_SIZE


def _whole_mib(size: int) -> int:
    return -(-size // values.MIB) * values.MIB


def varnish_memory_headroom(cache_size: int, transient_size: int) -> int:
    """Memory beyond cache + Transient + workdir: a fixed base plus the per-object cost of
    as many objects as both storages can hold, so it follows the cache size (a fixed
    headroom held for big objects and was OOM-killed by a stream of tiny ones)."""
    objects = (cache_size + transient_size) // VARNISH_SMALLEST_OBJECT
    return _whole_mib(VARNISH_BASE_MEMORY + objects * VARNISH_OBJECT_OVERHEAD)


def varnish_memory_limit(
    cache_size: int, transient_size: int, workdir_size: int = VARNISH_WORKDIR_SIZE
) -> int:
    """The least memory limit under which cache-varnish is not OOM-killed when full, even
    of the smallest objects: cache + Transient + workdir + headroom."""
    headroom = varnish_memory_headroom(cache_size, transient_size)
    return cache_size + transient_size + workdir_size + headroom


def varnish_memory_request(
    cache_size: int, transient_size: int, workdir_size: int = VARNISH_WORKDIR_SIZE
) -> int:
    """The memory request when the policy sets none: a full cache of ordinary objects
    (cache + workdir + base), not the tiny-object worst case the limit must hold for."""
    del transient_size  # Transient holds passes in flight: usually empty
    return cache_size + workdir_size + VARNISH_BASE_MEMORY


def describe_memory_rule(cache: str, transient: str) -> str:
    """The rule in words, for error messages and docs."""
    return (
        f"cache-size {cache} + transientSize {transient} + "
        f"{values.format_quantity(VARNISH_WORKDIR_SIZE)} workdir + headroom "
        f"({values.format_quantity(VARNISH_BASE_MEMORY)} + "
        f"{VARNISH_OBJECT_OVERHEAD} bytes per {VARNISH_SMALLEST_OBJECT} bytes of cache and "
        "Transient)"
    )


class StrictModel(BaseModel):
    """Unknown keys are errors, so a typo in a policy fails `policy check`, not a pod."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


# YAML types a policy may use for each option kind; the value is then checked as a string,
# exactly as the annotation would be.
_KIND_TYPES: dict[str, Any] = {"int": StrictInt | StrictStr, "bool": StrictBool | StrictStr}


def _option_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for spec in names.OPTIONS:
        accepted = spec.accepted.format(high=spec.high, limit="limits.maxCacheSize")
        fields[spec.name] = (
            _KIND_TYPES.get(spec.kind, StrictStr) | None,
            Field(
                default=None,
                alias=spec.suffix,
                description=f"{spec.doc} Accepted: {accepted}. Built-in default: "
                f"{spec.default if spec.default is not None else 'unset'}.",
            ),
        )
    return fields


OptionValues: type[BaseModel] = create_model(
    "OptionValues",
    __config__=ConfigDict(extra="forbid", frozen=True, populate_by_name=True),
    __doc__="A value for any pod annotation, by its key without the cache-injector.io/ prefix.",
    **_option_fields(),
)

NamespacePolicy: type[BaseModel] = create_model(
    "NamespacePolicy",
    __base__=OptionValues,
    __doc__="Settings for one namespace: option values and which backend namespaces it may target.",
    allowed_backend_namespaces=(
        list[StrictStr],
        Field(
            default_factory=list,
            alias="allowedBackendNamespaces",
            description="Namespaces whose Services pods of this namespace may use as backend, "
            'besides their own; "*" allows any.',
        ),
    ),
    allow_insecure_backend_tls=(
        StrictBool,
        Field(
            default=False,
            alias="allowInsecureBackendTls",
            description="May pods of this namespace set backend-tls: insecure-skip-verify "
            "(TLS to the backend pods without verifying their certificates)? Off: such a pod "
            "is denied (onInvalid). Only here, per namespace: never in defaults.",
        ),
    ),
)


class Images(StrictModel):
    """Sidecar images; they must run `haproxy`, `varnishd` (and `varnishncsa`) and
    `prometheus_varnish_exporter` (with a `varnishstat` of varnishd's version) from PATH. A
    mirror or private registry goes in the reference (registry.example/mirror/haproxy:3.4),
    pinned by digest if wanted (NAME@sha256:<64 hex>, or NAME:TAG@sha256:<64 hex>)."""

    haproxy: StrictStr = Field(
        DEFAULT_IMAGES["haproxy"],
        description="Image of cache-haproxy: [REGISTRY[:PORT]/]PATH[:TAG][@sha256:<64 hex>].",
    )
    varnish: StrictStr = Field(
        DEFAULT_IMAGES["varnish"],
        description="Image of cache-varnish, and of cache-access-log (its varnishncsa must "
        "match varnishd's version): [REGISTRY[:PORT]/]PATH[:TAG][@sha256:<64 hex>].",
    )
    varnish_exporter: StrictStr = Field(
        DEFAULT_IMAGES["varnish_exporter"],
        description="Image of cache-varnish-exporter (option metrics): the Varnish image plus "
        "prometheus_varnish_exporter, built from images/varnish-exporter/Dockerfile: "
        "[REGISTRY[:PORT]/]PATH[:TAG][@sha256:<64 hex>].",
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None,
        description="imagePullPolicy of every injected container; null leaves Kubernetes' "
        "default (Always for :latest or no tag, else IfNotPresent).",
    )
    pull_secrets: list[StrictStr] = Field(
        default_factory=list,
        description="Secret names added to every injected pod's imagePullSecrets, after the "
        "pod's own (none duplicated, their order kept). Like the pod's own, each must exist in "
        "the pod's namespace.",
    )


class ResourceList(StrictModel):
    """Kubernetes quantities; unset keys are left out of the container."""

    cpu: StrictStr | None = None
    memory: StrictStr | None = None
    ephemeral_storage: StrictStr | None = Field(None, alias="ephemeral-storage")


class Resources(StrictModel):
    """Kubernetes resource requests and limits of one sidecar."""

    requests: ResourceList = Field(default_factory=ResourceList)
    limits: ResourceList = Field(default_factory=ResourceList)


class SidecarResources(StrictModel):
    """Resources of each sidecar, as in a container spec (cpu, memory, ephemeral-storage)."""

    haproxy: Resources = Field(
        default_factory=lambda: Resources(
            requests=ResourceList(cpu="50m", memory="32Mi"), limits=ResourceList(memory="128Mi")
        ),
        description="cache-haproxy resources.",
    )
    varnish: Resources = Field(
        default_factory=lambda: Resources(requests=ResourceList(cpu="100m")),
        description="cache-varnish resources. The memory limit is never below cache-size + "
        "transientSize + 16Mi workdir + headroom (32Mi + 1152 bytes per 352 bytes of cache "
        "and Transient: what a cache full of the smallest objects needs); a lower limit here "
        "fails `policy check`. An unset request is cache-size + 16Mi + 32Mi.",
    )
    # Measured in e2e after 484 requests at c=8 (docs/observability.md): varnishncsa 3.5 MiB
    # resident, 0.2 MiB of it its own (anonymous); the exporter 10 MiB (2.3 anonymous), plus
    # a short-lived varnishstat per scrape. The shared memory log they map stays charged to
    # cache-varnish, which wrote it. Limits leave room for a burst and the Go runtime.
    access_log: Resources = Field(
        default_factory=lambda: Resources(
            requests=ResourceList(cpu="10m", memory="8Mi"), limits=ResourceList(memory="32Mi")
        ),
        description="cache-access-log resources (option access-log).",
    )
    varnish_exporter: Resources = Field(
        default_factory=lambda: Resources(
            requests=ResourceList(cpu="10m", memory="16Mi"), limits=ResourceList(memory="48Mi")
        ),
        description="cache-varnish-exporter resources (option metrics).",
    )


class Limits(StrictModel):
    """Ceilings no annotation or default may pass; a pod asking for more is denied."""

    max_cache_size: StrictStr = Field("4Gi", description="Largest cache-size a pod may ask for.")
    max_backends: StrictInt = Field(
        128,
        ge=1,
        le=names.OPTIONS_BY_NAME["max_backends"].high,  # the option's own bound: one place
        description="Largest max-backends a pod may ask for.",
    )


class RunAsUser(StrictModel):
    """UIDs set in the sidecars' securityContext; null leaves it to the platform (OpenShift)."""

    haproxy: StrictInt | None = Field(99, ge=1, description="uid of the official haproxy image.")
    varnish: StrictInt | None = Field(1000, ge=1, description="uid of the official varnish image.")


class PolicyModel(StrictModel):
    """The cluster-wide policy file."""

    cluster_domain: StrictStr = Field("cluster.local", description="Cluster DNS domain.")
    native_sidecars: StrictBool = Field(
        True,
        description="true: sidecars are native (initContainers, restartPolicy Always, "
        "preStop sleep action; Kubernetes 1.30+). false: appended to containers (preStop "
        "exec sleep; Kubernetes 1.28+), and Job pods are not injected.",
    )
    images: Images = Field(default_factory=Images, description="Sidecar images (see Images below).")
    allow_image_override: StrictBool = Field(
        False, description="May a pod declare cache-haproxy/cache-varnish with its own image?"
    )
    defaults: OptionValues = Field(
        default_factory=OptionValues, description="Defaults for every pod annotation."
    )
    limits: Limits = Field(
        default_factory=Limits,
        description="Ceilings that no annotation or default may pass (see Limits below).",
    )
    exclude_namespaces: list[StrictStr] = Field(
        default_factory=list,
        description="Namespaces never injected (kube-system, kube-public and kube-node-lease "
        "always are).",
    )
    namespaces: dict[StrictStr, NamespacePolicy] = Field(
        default_factory=dict, description="Per-namespace option defaults and backend allow-list."
    )
    on_missing_backend: Literal["skip", "deny"] = Field(
        "skip", description="A selected pod with no backend: skip (allowed uninjected) or deny."
    )
    on_invalid: Literal["deny", "skip"] = Field(
        "deny",
        description="A pod with invalid options: deny, or skip (allowed uninjected, with a "
        "warning).",
    )
    resources: SidecarResources = Field(
        default_factory=SidecarResources,
        description="requests/limits of each sidecar (see SidecarResources).",
    )
    transient_size: StrictStr = Field(
        "64Mi",
        description="Cap of Varnish's Transient storage: short-lived objects, and every passed "
        "response streams through it (too large, unsized, uncacheable; on Varnish 8.0 at most "
        "1 MiB ahead of each client).",
    )
    sticky_session_secret: StrictStr = Field(
        "",
        description="Mixed into HAProxy's dynamic-cookie-key: sha256(secret + NUL + backend "
        "FQDN), the same in every replica. Empty: anyone can compute a Service's key. The chart "
        "generates one and keeps it in a Secret (serve reads it from "
        "CACHE_INJECTOR_STICKY_SESSION_SECRET, which wins over this field); see docs/fleet.md "
        "for what the key in a pod's annotation does and does not allow.",
    )
    run_as_user: RunAsUser = Field(
        default_factory=RunAsUser,
        description="UIDs in the sidecars' securityContext; null leaves them to the platform. "
        "cache-access-log and cache-varnish-exporter run as varnish's: Varnish's shared "
        "memory files are readable by its own uid only.",
    )
    prometheus_annotations: StrictBool = Field(
        False,
        description="true: add prometheus.io/scrape, /port and /path to injected pods that "
        "set none of them, for Prometheus setups without the operator (one target per pod: "
        "the Varnish exporter when option metrics is on, else HAProxy's cache-metrics). Off "
        "by default: they clash with a pod's own scrape annotations.",
    )


def _allowed(entry: BaseModel) -> list[str]:
    allowed: list[str] = getattr(entry, "allowed_backend_namespaces")  # noqa: B009 (dynamic model)
    return allowed


def _option_strings(model: BaseModel) -> dict[str, str]:
    """Option name -> annotation-style string, for the options that are set."""
    out: dict[str, str] = {}
    for spec in names.OPTIONS:
        raw = getattr(model, spec.name)
        if raw is None:
            continue
        out[spec.name] = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
    return out


@dataclass(frozen=True)
class Policy:
    """A checked policy with the lookups the hot path needs, computed once."""

    model: PolicyModel
    defaults: dict[str, str]
    namespace_options: dict[str, dict[str, str]]
    allowed_backend_namespaces: dict[str, frozenset[str]]
    insecure_backend_tls_namespaces: frozenset[str]
    excluded_namespaces: frozenset[str]
    max_cache_size: int
    transient_size: int
    varnish_transit_buffer: bool  # the Varnish image knows transit_buffer (newer than 7.1)
    digest: str
    source: str = "built-in"
    warnings: tuple[str, ...] = field(default=())

    def may_target(self, namespace: str, backend_namespace: str) -> bool:
        """May pods of `namespace` use a Service in `backend_namespace`? Own namespace: yes."""
        if namespace == backend_namespace:
            return True
        allowed = self.allowed_backend_namespaces.get(namespace, frozenset())
        return "*" in allowed or backend_namespace in allowed

    def may_skip_tls_verify(self, namespace: str) -> bool:
        """May pods of `namespace` use backend-tls: insecure-skip-verify?"""
        return namespace in self.insecure_backend_tls_namespaces


def _format_location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _pydantic_problems(err: PydanticValidationError) -> list[str]:
    problems = []
    for item in err.errors():
        location = _format_location(item["loc"])
        value = item.get("input")
        if item["type"] == "extra_forbidden":
            problems.append(f"{location}: unknown field: remove it or check its spelling")
            continue
        shown = json.dumps(value) if not isinstance(value, dict) else "(an object)"
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{location}: {shown}: {message}")
    return problems


class OverLimit(ValueError):
    """An option value that parses but passes a cluster policy limit."""


def check_option(spec: names.OptionSpec, text: str, limits: Limits) -> object:
    """Parse one option value and hold it to the policy's limits: the one definition of an
    option's rules, for annotations (options.py) and for the policy's own defaults.

    Raises ValueError (OverLimit for a limit) whose message is what is accepted.
    """
    accepted = accepted_text(spec, limits)
    try:
        value = values.parse_option_value(spec.kind, text, spec.low, spec.high)
    except ValueError as err:
        raise ValueError(str(err) or accepted) from None
    if spec.name == "cache_size" and not (
        MIN_CACHE_SIZE <= int(str(value)) <= values.parse_size(limits.max_cache_size)
    ):
        raise OverLimit(accepted)
    if spec.name == "max_backends" and int(str(value)) > limits.max_backends:
        raise OverLimit(accepted)
    if spec.name == "listen_port" and value in (
        names.HAPROXY_LOCAL_PORT,
        names.HAPROXY_METRICS_PORT,
        names.HAPROXY_STATS_PORT,
    ):
        raise ValueError(accepted)
    return value


@dataclass(frozen=True)
class BackendProblem:
    """One broken backend rule; `accepted` says what would be accepted instead."""

    accepted: str
    namespace_not_allowed: bool = False


def check_backend(
    backend: values.Backend, discovery: str, namespace: str | None, policy: Policy | None
) -> list[BackendProblem]:
    """The backend rules, for a pod's options and the policy's namespace defaults alike:
    dns-a needs a port number, dns-srv a port name, and the Service's namespace must be one
    `namespace` may target (checked when both namespace and policy are known).
    """
    problems: list[BackendProblem] = []
    if discovery == "dns-a" and isinstance(backend.port, str):
        problems.append(
            BackendProblem(
                "with discovery dns-a the port must be a number (1-65535): A records carry no "
                "port; a Service port name needs discovery dns-srv"
            )
        )
    if discovery == "dns-srv" and isinstance(backend.port, int):
        problems.append(
            BackendProblem(
                "with discovery dns-srv the port must be a Service port name (SRV records are "
                "_PORTNAME._tcp.SERVICE...), such as web:http"
            )
        )
    if (
        backend.namespace
        and namespace is not None
        and policy is not None
        and not policy.may_target(namespace, backend.namespace)
    ):
        problems.append(
            BackendProblem(
                f"a Service in namespace {namespace}; the cluster policy does not let "
                f"{namespace} use Services in {backend.namespace} (add it to "
                f"namespaces.{namespace}.allowedBackendNamespaces)",
                namespace_not_allowed=True,
            )
        )
    return problems


def _check_option_values(path: str, options: dict[str, str], limits: Limits) -> list[str]:
    problems: list[str] = []
    for name, text in options.items():
        spec = names.OPTIONS_BY_NAME[name]
        try:
            check_option(spec, text, limits)
        except ValueError as err:
            problems.append(f"{path}.{spec.suffix}: {json.dumps(text)}: {err}")
    return problems


def accepted_text(spec: names.OptionSpec, limits: Limits) -> str:
    """The table's 'accepted' text with this policy's limits filled in."""
    high = spec.high
    if spec.name == "max_backends":
        high = limits.max_backends
    text = spec.accepted.format(high=high, limit=limits.max_cache_size)
    if spec.name in ("max_backends", "cache_size"):
        text += " (cluster policy limit)"
    return text


def _check_quantity(where: str, text: str | None, problems: list[str]) -> int | None:
    """Bytes (or, for cpu, whole units rounded down) of a valid quantity above 0; else None."""
    if text is None:
        return None
    try:
        size = values.parse_quantity(text)
    except ValueError:
        problems.append(f"{where}: {json.dumps(text)}: a Kubernetes quantity such as 128Mi or 500m")
        return None
    if size <= 0:
        problems.append(f"{where}: {json.dumps(text)}: a quantity above 0")
        return None
    return int(size)


def _check_semantics(model: PolicyModel) -> list[str]:
    problems: list[str] = []
    if not values.DNS_SUBDOMAIN.match(model.cluster_domain) or len(model.cluster_domain) > 253:
        problems.append(
            f"clusterDomain: {json.dumps(model.cluster_domain)}: a DNS domain such as cluster.local"
        )
    max_cache = _check_quantity("limits.maxCacheSize", model.limits.max_cache_size, problems)
    if max_cache is not None and max_cache < MIN_CACHE_SIZE:
        problems.append(
            f"limits.maxCacheSize: {json.dumps(model.limits.max_cache_size)}: at least "
            f"{values.format_quantity(MIN_CACHE_SIZE)}"
        )
    if problems:
        return problems  # the option checks below need a valid limit
    transient = _check_quantity("transientSize", model.transient_size, problems)
    for index, namespace in enumerate(model.exclude_namespaces):
        if not values.DNS_LABEL.match(namespace):
            problems.append(f"excludeNamespaces.{index}: {json.dumps(namespace)}: a namespace name")
    for index, secret in enumerate(model.images.pull_secrets):
        if not values.DNS_SUBDOMAIN.match(secret) or len(secret) > 253:
            problems.append(
                f"images.pullSecrets.{index}: {json.dumps(secret)}: a Secret name (a DNS "
                "subdomain: lowercase letters, digits, '-' and '.')"
            )
        elif secret in model.images.pull_secrets[:index]:
            problems.append(f"images.pullSecrets.{index}: {json.dumps(secret)}: listed twice")
    for which in ("haproxy", "varnish", "varnish_exporter"):
        image = getattr(model.images, which)
        image_problem = values.image_problem(image)
        if image_problem:
            problems.append(f"images.{to_camel(which)}: {json.dumps(image)}: {image_problem}")
    for which in ("haproxy", "varnish", "access_log", "varnish_exporter"):
        sidecar = getattr(model.resources, which)
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory", "ephemeral_storage"):
                alias = resource.replace("_", "-")
                _check_quantity(
                    f"resources.{to_camel(which)}.{kind}.{alias}",
                    getattr(getattr(sidecar, kind), resource),
                    problems,
                )
    defaults = _option_strings(model.defaults)
    problems += _check_option_values("defaults", defaults, model.limits)
    for namespace, entry in model.namespaces.items():
        path = f"namespaces.{namespace}"
        if not values.DNS_LABEL.match(namespace):
            problems.append(f"namespaces: {json.dumps(namespace)}: a namespace name")
        own = _option_strings(entry)
        problems += _check_option_values(path, own, model.limits)
        for index, allowed in enumerate(_allowed(entry)):
            if allowed != "*" and not values.DNS_LABEL.match(allowed):
                problems.append(
                    f"{path}.allowedBackendNamespaces.{index}: {json.dumps(allowed)}: "
                    'a namespace name or "*"'
                )
    problems += _check_insecure_tls(model)
    # The memory limit rule: a policy limit below what a full default cache needs is an
    # OOM kill waiting to happen.
    limit = model.resources.varnish.limits.memory
    default_cache = defaults.get("cache_size", names.OPTIONS_BY_NAME["cache_size"].default)
    assert default_cache is not None
    try:
        cache_size = values.parse_size(default_cache)
    except ValueError:
        cache_size = None
    if limit and transient is not None and cache_size is not None:
        size = _check_quantity("resources.varnish.limits.memory", limit, [])
        needed = varnish_memory_limit(cache_size, transient)
        if size is not None and size < needed:
            problems.append(
                f"resources.varnish.limits.memory: {json.dumps(limit)}: at least "
                f"{values.format_quantity(needed)} "
                f"({describe_memory_rule(default_cache, model.transient_size)}), "
                "or leave it unset to have it computed"
            )
    return problems


INSECURE_TLS = "insecure-skip-verify"


def insecure_tls_refusal(namespace: str | None) -> str:
    """What is accepted instead of backend-tls: insecure-skip-verify where it is not allowed."""
    if namespace is None:
        return (
            "off or on; skipping verification of backend certificates is allowed per "
            "namespace only: set it under namespaces.<ns> with allowInsecureBackendTls: true"
        )
    return (
        f"off or on; the cluster policy does not let namespace {namespace} skip verification "
        f"of backend certificates (set namespaces.{namespace}.allowInsecureBackendTls: true)"
    )


def _check_insecure_tls(model: PolicyModel) -> list[str]:
    """backend-tls: insecure-skip-verify as a default only where the namespace allows it."""
    problems: list[str] = []
    if getattr(model.defaults, "backend_tls") == INSECURE_TLS:  # noqa: B009 (dynamic model)
        problems.append(
            f"defaults.backend-tls: {json.dumps(INSECURE_TLS)}: {insecure_tls_refusal(None)}"
        )
    for namespace, entry in model.namespaces.items():
        if getattr(entry, "backend_tls") == INSECURE_TLS and not getattr(  # noqa: B009
            entry, "allow_insecure_backend_tls"
        ):
            problems.append(
                f"namespaces.{namespace}.backend-tls: {json.dumps(INSECURE_TLS)}: "
                f"{insecure_tls_refusal(namespace)}"
            )
    return problems


def _check_backends(policy: Policy) -> list[str]:
    """Default backends (cluster-wide and per namespace) must be discoverable, and a
    namespace's must be one that namespace may target."""
    problems: list[str] = []
    scopes: list[tuple[str, str | None, dict[str, str]]] = [("defaults", None, policy.defaults)] + [
        (f"namespaces.{ns}", ns, {**policy.defaults, **entry})
        for ns, entry in policy.namespace_options.items()
    ]
    for path, namespace, merged in scopes:
        if "backend" not in merged:
            continue
        backend = values.parse_backend(merged["backend"])
        discovery = merged.get("discovery", names.OPTIONS_BY_NAME["discovery"].default or "")
        for problem in check_backend(backend, discovery, namespace, policy):
            problems.append(f"{path}.backend: {json.dumps(merged['backend'])}: {problem.accepted}")
    return problems


def build_policy(data: Any, source: str = "policy") -> Policy:
    """Validate policy data (parsed YAML) and precompute its lookups; all problems at once."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidPolicy(
            [f"(top level): {json.dumps(str(data))[:80]}: a mapping of policy fields"], source
        )
    try:
        model = PolicyModel.model_validate(data)
    except PydanticValidationError as err:
        raise InvalidPolicy(_pydantic_problems(err), source) from None
    problems = _check_semantics(model)
    if problems:
        raise InvalidPolicy(problems, source)
    canonical = json.dumps(model.model_dump(mode="json", by_alias=True), sort_keys=True)
    policy = Policy(
        model=model,
        defaults=_option_strings(model.defaults),
        namespace_options={ns: _option_strings(entry) for ns, entry in model.namespaces.items()},
        allowed_backend_namespaces={
            ns: frozenset(_allowed(entry)) for ns, entry in model.namespaces.items()
        },
        insecure_backend_tls_namespaces=frozenset(
            ns
            for ns, entry in model.namespaces.items()
            if getattr(entry, "allow_insecure_backend_tls")  # noqa: B009 (dynamic model)
        ),
        excluded_namespaces=frozenset(names.SYSTEM_NAMESPACES) | set(model.exclude_namespaces),
        max_cache_size=values.parse_size(model.limits.max_cache_size),
        transient_size=values.parse_size(model.transient_size),
        varnish_transit_buffer=values.has_transit_buffer(model.images.varnish),
        digest=hashlib.sha256(canonical.encode()).hexdigest()[:16],
        source=source,
    )
    problems = _check_backends(policy)
    if problems:
        raise InvalidPolicy(problems, source)
    return policy


def with_sticky_session_secret(policy: Policy, secret: str) -> Policy:
    """The policy with stickySessionSecret replaced (the chart keeps it in a Secret, out of
    the policy ConfigMap; `serve` reads it from the environment)."""
    model = policy.model.model_copy(update={"sticky_session_secret": secret})
    canonical = json.dumps(model.model_dump(mode="json", by_alias=True), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return dataclasses.replace(policy, model=model, digest=digest)


def load_policy_text(text: str, source: str = "policy") -> Policy:
    """Parse a policy file's text (YAML or JSON)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InvalidPolicy([f"(file): not valid YAML: {err}".replace("\n", " ")], source) from None
    return build_policy(data, source)


def default_policy() -> Policy:
    """The embedded default policy (shipped in the package), used by `make run`."""
    text = resources.files(__package__).joinpath("default-policy.yaml").read_text()
    return load_policy_text(text, "embedded default policy")


def policy_json_schema() -> dict[str, Any]:
    """JSON Schema of the policy file (docs/policy.schema.json; the chart's values use it)."""
    schema = PolicyModel.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cache-injector cluster policy"
    return schema
