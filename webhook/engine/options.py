"""Turn pod annotations and policy defaults into validated Options.

Owns: the meaning of every cache-injector.io/ annotation value and the precedence
annotation > namespace-policy > policy-default > built-in (limits always win).
Does not: read files, call the API server, or decide whether to inject.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from . import backend_tls, names, values
from .errors import (
    BackendNamespaceNotAllowed,
    InvalidAnnotation,
    InvalidOptions,
    LimitExceeded,
)
from .memo import BoundedMemo
from .policy import OverLimit, Policy, accepted_text, check_backend, check_option

Source = Literal["annotation", "namespace-policy", "policy-default", "built-in"]


@dataclass(frozen=True)
class Options:
    """Every option of one pod, validated; `sources` says where each value came from."""

    backend: values.Backend | None
    discovery: str
    max_backends: int
    ip_family: str
    health_path: str | None
    backend_tls: str
    backend_tls_ca: values.TlsCa | None
    backend_tls_server_name: str | None
    backend_tls_client_secret: str | None
    cache_size: int
    default_ttl: int
    grace: int
    listen_port: int
    sticky_sessions: bool
    drain_seconds: int
    max_object_size: values.ObjectSize
    tunnel_timeout: int
    ignore_cookies: tuple[str, ...] | None
    ignore_query_params: tuple[str, ...] | None
    sort_query: bool
    vcl_configmap: str | None
    access_log: bool
    metrics: bool
    tag_header: str
    expose_tag_header: bool
    sources: Mapping[str, Source] = field(compare=False, hash=False, repr=False)
    # The raw strings as resolved, for `explain` and messages.
    texts: Mapping[str, str | None] = field(compare=False, hash=False, repr=False)


def _pick(
    spec: names.OptionSpec,
    annotations: Mapping[str, str],
    namespace_values: Mapping[str, str],
    policy: Policy,
) -> tuple[str | None, Source]:
    if spec.key in annotations:
        return annotations[spec.key], "annotation"
    if spec.name in namespace_values:
        return namespace_values[spec.name], "namespace-policy"
    if spec.name in policy.defaults:
        return policy.defaults[spec.name], "policy-default"
    return spec.default, "built-in"


_RESOLVED: BoundedMemo[tuple[object, ...], Options] = BoundedMemo(4096)


def resolve_options(annotations: Mapping[str, str], *, namespace: str, policy: Policy) -> Options:
    """Resolve every option for a pod in `namespace`; raise InvalidOptions listing all problems.

    Memoized per (policy, namespace, our annotations): replicas of a workload resolve once.
    """
    ours = tuple(item for item in annotations.items() if item[0].startswith(names.PREFIX))
    if all(isinstance(value, str) for _, value in ours):
        key = (policy.digest, namespace, ours)
        options = _RESOLVED.get(key)
        if options is None:
            options = _RESOLVED.put(key, _resolve(annotations, namespace, policy))
        return options
    return _resolve(annotations, namespace, policy)


def _resolve(annotations: Mapping[str, str], namespace: str, policy: Policy) -> Options:
    namespace_values = policy.namespace_options.get(namespace, {})
    problems: list[InvalidAnnotation] = []
    parsed: dict[str, object] = {}
    sources: dict[str, Source] = {}
    texts: dict[str, str | None] = {}
    limits = policy.model.limits
    for spec in names.OPTIONS:
        text, source = _pick(spec, annotations, namespace_values, policy)
        if spec.name == "max_backends" and source == "built-in" and text is not None:
            # The built-in default never exceeds a policy's lower limit (a policy written
            # when the default was 32 may cap it at 64): the limit is the default then.
            text = str(min(int(text), limits.max_backends))
        sources[spec.name], texts[spec.name] = source, text
        if text is None:
            parsed[spec.name] = None
            continue
        if not isinstance(text, str):  # annotations from a hostile review
            problems.append(InvalidAnnotation(spec.key, repr(text), accepted_text(spec, limits)))
            continue
        try:
            value = check_option(spec, text, limits)
        except OverLimit as err:
            problems.append(LimitExceeded(spec.key, text, str(err)))
            continue
        except ValueError as err:
            problems.append(InvalidAnnotation(spec.key, text, str(err)))
            continue
        parsed[spec.name] = value
    if parsed.get("metrics") is True and parsed.get("listen_port") == names.EXPORTER_PORT:
        problems.append(
            InvalidAnnotation(
                names.OPTIONS_BY_NAME["listen_port"].key,
                str(texts["listen_port"]),
                f"a port other than {names.EXPORTER_PORT} with "
                f"{names.OPTIONS_BY_NAME['metrics'].key}: true ({names.CONTAINER_EXPORTER} "
                "listens there)",
            )
        )
    problems += _check_backend(parsed, texts, sources, namespace, policy)
    problems += backend_tls.check(parsed, texts, sources, namespace, policy)
    if problems:
        raise InvalidOptions(problems, parsed)
    return Options(**parsed, sources=sources, texts=texts)  # type: ignore[arg-type]


def _check_backend(
    parsed: Mapping[str, object],
    texts: Mapping[str, str | None],
    sources: Mapping[str, Source],
    namespace: str,
    policy: Policy,
) -> list[InvalidAnnotation]:
    backend = parsed.get("backend")
    discovery = parsed.get("discovery")
    if not isinstance(backend, values.Backend) or not isinstance(discovery, str):
        return []
    key, text = names.OPTIONS_BY_NAME["backend"].key, str(texts["backend"])
    source = "" if sources["backend"] == "annotation" else f" (from {sources['backend']})"
    return [
        (BackendNamespaceNotAllowed if problem.namespace_not_allowed else InvalidAnnotation)(
            key, text + source if problem.namespace_not_allowed else text, problem.accepted
        )
        for problem in check_backend(backend, discovery, namespace, policy)
    ]


def unknown_annotation_warnings(annotations: Mapping[str, str]) -> list[str]:
    """Keys under our prefix that mean nothing to us: a typo is reported, never ignored."""
    warnings = []
    for key in annotations:
        if not key.startswith(names.PREFIX):
            continue
        if key in names.OPTIONS_BY_KEY or key in names.WRITTEN_ANNOTATIONS:
            continue
        if key == names.LABEL_INJECT:
            warnings.append(
                f"{key} is a label, not an annotation: set it under metadata.labels to "
                "select the pod"
            )
            continue
        guess = difflib.get_close_matches(key, list(names.OPTIONS_BY_KEY), n=1, cutoff=0.75)
        hint = f"; did you mean {guess[0]}?" if guess else ""
        warnings.append(f"{key} is not a cache-injector annotation and is ignored{hint}")
    return warnings
