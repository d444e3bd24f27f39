"""The API server, through the official `kubernetes` client: connect, list, read, proxy.

Owns: loading the user's kubeconfig (or the in-cluster ServiceAccount), lists that follow
`continue` to the end, objects as plain dicts (the engine's shape, not the client's models),
label selectors as text, and an API error turned into one line naming the verb, the
resource and the API server's own message (an RBAC 403 says what permission is missing).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

LIST_PAGE = 500  # items per list call; `continue` fetches the rest


class ClusterError(Exception):
    """An API call that failed, in words for the user."""


@dataclass
class Cluster:
    """One API server connection; thread-safe (urllib3's pool), shared by workers."""

    api: client.ApiClient

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def admission(self) -> client.AdmissionregistrationV1Api:
        return client.AdmissionregistrationV1Api(self.api)


def connect(kubeconfig: str | None, context: str | None, pool_size: int = 10) -> Cluster:
    """The user's kubeconfig (KUBECONFIG, ~/.kube/config), else the in-cluster account."""
    configuration = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    except (ConfigException, OSError) as kube_error:
        if kubeconfig or context:
            raise ClusterError(f"kubeconfig: {kube_error}") from None
        try:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except ConfigException:
            raise ClusterError(
                f"no kubeconfig ({kube_error}) and not running in a cluster: "
                "pass --kubeconfig or set KUBECONFIG"
            ) from None
    configuration.connection_pool_maxsize = max(pool_size, 4)
    return Cluster(client.ApiClient(configuration))


def describe(err: ApiException, what: str) -> str:
    """`what`: HTTP status and the API server's message (a Status object's `message`)."""
    message = ""
    try:
        body = json.loads(err.body or "")
        if isinstance(body, dict) and body.get("kind") == "Status":
            message = str(body.get("message") or body.get("reason") or "")
    except (TypeError, ValueError):
        message = str(err.body or "")[:200]
    return f"{what}: {err.status} {err.reason or ''}".rstrip() + (f": {message}" if message else "")


def is_status(err: ApiException) -> bool:
    """Whether the API server itself answered (a Status), not a pod behind its proxy."""
    try:
        body = json.loads(err.body or "")
    except (TypeError, ValueError):
        return False
    return isinstance(body, dict) and body.get("kind") == "Status"


def as_dict(response: Any) -> dict[str, Any]:
    data = json.loads(response.data)
    if not isinstance(data, dict):
        raise ClusterError(f"unexpected answer from the API server: {str(data)[:100]}")
    return data


def list_pods(
    cluster: Cluster, namespace: str | None, selector: str | None
) -> Iterator[dict[str, Any]]:
    """Every pod matching `selector` (namespace None: all), page by page (`continue`)."""
    yield from _pages(
        lambda token: (
            cluster.core.list_namespaced_pod(
                namespace,
                label_selector=selector or None,
                limit=LIST_PAGE,
                _continue=token,
                _preload_content=False,
            )
            if namespace
            else cluster.core.list_pod_for_all_namespaces(
                label_selector=selector or None,
                limit=LIST_PAGE,
                _continue=token,
                _preload_content=False,
            )
        ),
        f"list pods in namespace {namespace}" if namespace else "list pods in all namespaces",
    )


def list_webhook_configurations(cluster: Cluster, selector: str) -> Iterator[dict[str, Any]]:
    yield from _pages(
        lambda token: cluster.admission.list_mutating_webhook_configuration(
            label_selector=selector, limit=LIST_PAGE, _continue=token, _preload_content=False
        ),
        "list mutatingwebhookconfigurations",
    )


def list_namespaces(cluster: Cluster) -> Iterator[dict[str, Any]]:
    yield from _pages(
        lambda token: cluster.core.list_namespace(
            limit=LIST_PAGE, _continue=token, _preload_content=False
        ),
        "list namespaces",
    )


def _pages(call: Any, what: str) -> Iterator[dict[str, Any]]:
    """A list call followed through every `continue` token."""
    token: str | None = None
    for _ in range(100_000):  # bounded: 50 M objects
        try:
            page = as_dict(call(token))
        except ApiException as err:
            raise ClusterError(describe(err, what)) from None
        yield from page.get("items") or []
        token = (page.get("metadata") or {}).get("continue") or None
        if not token:
            return


def read(cluster: Cluster, kind: str, namespace: str, name: str) -> dict[str, Any]:
    """A Deployment, Service or Secret as a dict."""
    if kind == "Namespace":
        try:
            return as_dict(cluster.core.read_namespace(name, _preload_content=False))
        except ApiException as err:
            raise ClusterError(describe(err, f"get namespace {name}")) from None
    calls = {
        "Deployment": cluster.apps.read_namespaced_deployment,
        "Service": cluster.core.read_namespaced_service,
        "Secret": cluster.core.read_namespaced_secret,
    }
    try:
        return as_dict(calls[kind](name, namespace, _preload_content=False))
    except ApiException as err:
        raise ClusterError(describe(err, f"get {kind} {namespace}/{name}")) from None


def selector_text(selector: Mapping[str, Any]) -> str:
    """A metav1.LabelSelector (matchLabels, matchExpressions) as a label-selector string."""
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = ",".join(expression.get("values") or [])
        parts.append(
            {
                "In": f"{key} in ({values})",
                "NotIn": f"{key} notin ({values})",
                "Exists": key,
                "DoesNotExist": f"!{key}",
            }[operator]
        )
    return ",".join(parts)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
