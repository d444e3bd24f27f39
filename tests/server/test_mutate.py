"""POST /mutate over real TLS to a real uvicorn process, with reviews built like the API
server's: what comes back, what is logged and counted, and that the patch equals the CLI's."""

from __future__ import annotations

import copy
import datetime
import json
import socket
import ssl
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import uvloop
import yaml
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from webhook.serve import guard
from webhook.serve.protocol import CorkedHttpToolsProtocol, InlineHttpToolsProtocol

from .reviews import CorpusPod, corpus_pods, decoded_patch, make_pod, pod_review
from .support import (
    CLI,
    SERVICE,
    SERVICE_DNS,
    Client,
    Pki,
    Server,
    client_context,
    handshake,
    sample,
)

CORPUS_PODS = corpus_pods()
BACKEND = {"cache-injector.io/backend": "catalog-api:8080"}


# --- the corpus: the webhook's patch equals `cache-injector inject` ---------------------


@pytest.fixture(scope="module")
def cli_injected(tmp_path_factory: pytest.TempPathFactory, test_policy: Path) -> dict[str, Any]:
    """`cache-injector inject --namespace NS` on every corpus pod (one run per namespace)."""
    workdir = tmp_path_factory.mktemp("cli")
    by_namespace: dict[str, list[CorpusPod]] = {}
    for case in CORPUS_PODS:
        by_namespace.setdefault(case.namespace, []).append(case)
    injected: dict[str, Any] = {}
    for namespace, cases in by_namespace.items():
        manifest = workdir / f"{namespace}.yaml"
        manifest.write_text(yaml.safe_dump_all([case.pod for case in cases], sort_keys=False))
        run = subprocess.run(
            [
                CLI,
                "inject",
                "-f",
                str(manifest),
                "--namespace",
                namespace,
                "--policy",
                str(test_policy),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        outputs = list(yaml.safe_load_all(run.stdout))
        assert len(outputs) == len(cases)
        injected |= {case.id: output for case, output in zip(cases, outputs, strict=True)}
    return injected


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in CORPUS_PODS])
def test_corpus_pod_patched_by_webhook_equals_cli_output(
    case: CorpusPod, client: Client, cli_injected: dict[str, Any]
) -> None:
    response = client.review(pod_review(case.pod, namespace=case.namespace))
    assert response["allowed"] is True
    patched = copy.deepcopy(case.pod)
    if "patch" in response:
        patched = jsonpatch.apply_patch(patched, decoded_patch(response))
    assert patched == cli_injected[case.id]


def test_corpus_injects_most_workloads(client: Client) -> None:
    """Guard against the comparison above passing because nothing was injected."""
    injected = [
        case.id
        for case in CORPUS_PODS
        if "patch" in client.review(pod_review(case.pod, namespace=case.namespace))
    ]
    assert len(injected) >= len(CORPUS_PODS) - 3, injected


# --- answers by kind of review ------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    allowed: bool = True
    patched: bool = False
    code: int | None = None
    message: str | None = None  # a substring of status.message
    warning: str | None = None  # a substring of one warning


def other_kind(kind: str, group: str, resource: str, sub_resource: str = "") -> dict[str, Any]:
    review = pod_review(make_pod(annotations=BACKEND))
    gvk = {"group": group, "version": "v1", "kind": kind}
    review["request"] |= {
        "kind": gvk,
        "requestKind": gvk,
        "resource": {"group": group, "version": "v1", "resource": resource},
    }
    if sub_resource:
        review["request"]["subResource"] = sub_resource
    return review


ANSWERS = [
    pytest.param(
        pod_review(make_pod(annotations=BACKEND)), Expect(patched=True), id="create-injected"
    ),
    pytest.param(
        pod_review(make_pod(annotations=BACKEND), dry_run=True),
        Expect(patched=True),
        id="create-dry-run-same-answer",
    ),
    pytest.param(
        pod_review(make_pod(), namespace="payments"),
        Expect(patched=True),
        id="policy-default-backend",
    ),
    pytest.param(
        pod_review(make_pod(annotations=BACKEND), operation="UPDATE", old=make_pod()),
        Expect(),
        id="update-untouched",
    ),
    pytest.param(
        pod_review(None, operation="DELETE", old=make_pod(name="web-1")),
        Expect(),
        id="delete-object-null",
    ),
    pytest.param(
        pod_review(None, operation="CONNECT"),
        Expect(),
        id="connect-untouched",
    ),
    pytest.param(
        other_kind("Deployment", "apps", "deployments"), Expect(), id="non-pod-kind-deployment"
    ),
    pytest.param(other_kind("ConfigMap", "", "configmaps"), Expect(), id="non-pod-kind-configmap"),
    pytest.param(
        other_kind("Binding", "", "pods", "binding"), Expect(), id="pod-subresource-binding"
    ),
    pytest.param(
        other_kind("Pod", "", "pods", "ephemeralcontainers"),
        Expect(),
        id="pod-subresource-ephemeralcontainers",
    ),
    pytest.param(
        pod_review(make_pod(labels={"cache-injector.io/inject": "disabled"})),
        Expect(),
        id="label-disabled",
    ),
    pytest.param(pod_review(make_pod(), namespace="kube-system"), Expect(), id="kube-system"),
    pytest.param(
        pod_review(make_pod(annotations={**BACKEND, "cache-injector.io/max-backends": "lots"})),
        Expect(allowed=False, code=400, message="cache-injector.io/max-backends: lots"),
        id="invalid-annotation-400",
    ),
    pytest.param(
        pod_review(make_pod(annotations={**BACKEND, "cache-injector.io/cache-size": "64Gi"})),
        Expect(allowed=False, code=403, message="cache-injector.io/cache-size: 64Gi"),
        id="over-policy-limit-403",
    ),
    pytest.param(
        pod_review(make_pod(annotations={"cache-injector.io/backend": "api.billing:8080"})),
        Expect(allowed=False, code=403, message="billing"),
        id="backend-namespace-not-allowed-403",
    ),
    pytest.param(
        pod_review(make_pod(annotations={"cache-injector.io/backend": "api.catalog:8080"})),
        Expect(patched=True),
        id="backend-namespace-allowed",
    ),
    pytest.param(
        pod_review(make_pod(annotations={**BACKEND, "cache-injector.io/backnd": "x:1"})),
        Expect(patched=True, warning="did you mean cache-injector.io/backend"),
        id="typo-warned",
    ),
    pytest.param(
        pod_review(make_pod(annotations=BACKEND, ports=[6081])),
        Expect(allowed=False, code=400, message="6081"),
        id="port-clash-400",
    ),
]


@pytest.mark.parametrize(("review", "expect"), ANSWERS)
def test_review_answer(review: dict[str, Any], expect: Expect, client: Client) -> None:
    response = client.review(review)
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is expect.allowed
    assert ("patch" in response) is expect.patched
    if expect.patched:
        assert response["patchType"] == "JSONPatch"
        patched = jsonpatch.apply_patch(review["request"]["object"], decoded_patch(response))
        assert "cache-injector.io/status" in patched["metadata"]["annotations"]
    if expect.code is None:
        assert "status" not in response
    else:
        assert response["status"]["code"] == expect.code
        assert expect.message in response["status"]["message"]
    if expect.warning:
        assert any(expect.warning in warning for warning in response["warnings"])


def test_generate_name_pod_uses_request_namespace_for_the_backend_fqdn(client: Client) -> None:
    pod = make_pod(annotations={"cache-injector.io/backend": "catalog-api:8080"})
    assert "namespace" not in pod["metadata"]
    response = client.review(pod_review(pod, namespace="shop"))
    patched = jsonpatch.apply_patch(pod, decoded_patch(response))
    haproxy_cfg = patched["metadata"]["annotations"]["cache-injector.io/haproxy-cfg"]
    assert "catalog-api.shop.svc.cluster.local" in haproxy_cfg


def test_dry_run_gets_the_same_patch(client: Client) -> None:
    pod = make_pod(annotations=BACKEND)
    real = client.review(pod_review(pod))
    dry = client.review(pod_review(pod, dry_run=True))
    assert decoded_patch(real) == decoded_patch(dry)


# --- malformed requests -------------------------------------------------------------------


def without(path: str) -> dict[str, Any]:
    review = pod_review(make_pod(annotations=BACKEND))
    *parents, last = path.split(".")
    node = review
    for key in parents:
        node = node[key]
    del node[last]
    return review


def replaced(path: str, value: Any) -> dict[str, Any]:
    review = pod_review(make_pod(annotations=BACKEND))
    *parents, last = path.split(".")
    node: Any = review
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return review


def encoded(review: dict[str, Any]) -> bytes:
    return json.dumps(review).encode()


MALFORMED = [
    pytest.param(b"", "body", id="empty-body"),
    pytest.param(b"not json", "body", id="not-json"),
    pytest.param(b'{"apiVersion": "admission.k8s.io/v1"', "body", id="truncated-json"),
    pytest.param(b"[]", "body", id="json-array"),
    pytest.param(b'"\xff\xfe"', "body", id="invalid-utf8"),
    pytest.param(b"[" * 100_000, "body", id="deep-nesting"),
    pytest.param(
        encoded(replaced("apiVersion", "admission.k8s.io/v1beta1")),
        "apiVersion",
        id="v1beta1",
    ),
    pytest.param(encoded(replaced("kind", "TokenReview")), "kind", id="wrong-kind"),
    pytest.param(encoded(without("request")), "request", id="no-request"),
    pytest.param(encoded(without("request.uid")), "request.uid", id="no-uid"),
    pytest.param(encoded(replaced("request.uid", 42)), "request.uid", id="uid-not-string"),
    pytest.param(
        encoded(replaced("request.operation", "PATCH")), "request.operation", id="bad-operation"
    ),
    pytest.param(encoded(without("request.kind")), "request.kind", id="no-kind"),
    pytest.param(
        encoded(replaced("request.object", None)), "request.object", id="create-no-object"
    ),
    pytest.param(encoded(replaced("request.object", [])), "request.object", id="object-a-list"),
    pytest.param(
        encoded(replaced("request.object.metadata.labels", ["a"])),
        "request.object.metadata.labels",
        id="labels-a-list",
    ),
    pytest.param(
        encoded(replaced("request.object.metadata.annotations", {"a": 1})),
        "request.object.metadata.annotations.a",
        id="annotation-not-string",
    ),
    pytest.param(
        encoded(replaced("request.object.spec.containers", {"name": "x"})),
        "request.object.spec.containers",
        id="containers-an-object",
    ),
    pytest.param(
        encoded(replaced("request.object.spec.containers.0.ports", "80")),
        "request.object.spec.containers.0.ports",
        id="ports-a-string",
    ),
    pytest.param(encoded(without("request.namespace")), "request.namespace", id="no-namespace"),
    pytest.param(
        encoded(replaced("request.namespace", "shop\n  server evil 10.0.0.1:80")),
        "request.namespace",
        id="namespace-not-a-name",
    ),
]


@pytest.mark.parametrize(("body", "field"), MALFORMED)
def test_malformed_request_is_400_naming_the_field(body: bytes, field: str, client: Client) -> None:
    answer = client.post(body)
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["field"] == field
    assert error["error"].startswith(f"{field}: ")


def test_get_on_mutate_is_405(client: Client) -> None:
    assert client.get("/mutate").status_code == 405


def padded(size: int) -> bytes:
    """A valid review made exactly `size` bytes long with trailing whitespace."""
    body = encoded(pod_review(make_pod(annotations=BACKEND)))
    return body + b" " * (size - len(body))


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(padded(8 * 1024 * 1024), 200, id="exactly-8MiB-served"),
        pytest.param(padded(8 * 1024 * 1024 + 1), 413, id="one-byte-over-413"),
        pytest.param(b"x" * (12 * 1024 * 1024), 413, id="12MiB-junk-413"),
    ],
)
def test_body_size_cap(body: bytes, status: int, client: Client) -> None:
    assert client.post(body).status_code == status


def test_chunked_body_over_cap_is_413(client: Client) -> None:
    def chunks() -> Any:
        for _ in range(9):
            yield b" " * (1024 * 1024)

    answer = client.post(chunks())
    assert answer.status_code == 413
    assert answer.json()["field"] == "body"


# --- how it runs --------------------------------------------------------------------------


def test_runs_on_uvloop_and_httptools(client: Client, server: Server) -> None:
    """The pure-Python loop or parser would make p50 far worse (docs/design.md "Server"); guard.py
    subclasses uvloop's loop and uvicorn's httptools protocol (slow-client bounds)."""
    ready = client.get("/readyz").json()
    assert ready["loop"] == "webhook.serve.guard.HandshakeBoundedLoop"
    assert ready["http"] == "webhook.serve.guard.GuardedHttpToolsProtocol"
    assert issubclass(guard.HandshakeBoundedLoop, uvloop.Loop)
    assert issubclass(guard.GuardedHttpToolsProtocol, HttpToolsProtocol)
    # Each response leaves in one write (webhook/serve/protocol.py) under the guard too.
    assert issubclass(guard.GuardedHttpToolsProtocol, CorkedHttpToolsProtocol)
    # And /mutate is answered inline when its body came whole (tests/server/test_lanes.py).
    assert issubclass(guard.GuardedHttpToolsProtocol, InlineHttpToolsProtocol)
    started = server.events("started")
    assert started
    assert started[0]["loop"] == "webhook.serve.guard.HandshakeBoundedLoop"


def test_healthz_and_readyz(client: Client, pki: Pki) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    served = handshake(client_port(client), pki.ca)
    assert ready.json()["certificate"]["serial"] == format(served.serial_number, "x")
    assert ready.json()["policy"]["source"].endswith("policy.yaml")


def client_port(client: Client) -> int:
    return int(str(client.http.base_url).rsplit(":", 1)[1].rstrip("/"))


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(SERVICE, id="service"),
        pytest.param(f"{SERVICE}.cache-injector", id="service.namespace"),
        pytest.param(SERVICE_DNS, id="service.namespace.svc"),
        pytest.param(f"{SERVICE_DNS}.cluster.local", id="fqdn"),
    ],
)
def test_certificate_verifies_under_each_service_name(name: str, server: Server) -> None:
    assert handshake(server.port, server.ca, name).serial_number > 0


def test_certificate_does_not_verify_under_another_name(server: Server) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server.port, server.ca, "other.example")


@pytest.mark.parametrize(
    "version",
    [
        pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
        pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3"),
    ],
)
def test_tls_1_2_and_1_3_accepted(version: ssl.TLSVersion, server: Server) -> None:
    context = client_context(server.ca)
    context.minimum_version = context.maximum_version = version
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=SERVICE_DNS) as tls,
    ):
        assert tls.version() == version.name.replace("_", ".")


def test_tls_1_1_refused(server: Server) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw)


# --- logs and metrics ---------------------------------------------------------------------


def test_one_json_log_line_per_review(client: Client, server: Server) -> None:
    cases: list[tuple[dict[str, Any], Callable[[dict[str, Any]], None]]] = []

    injected = pod_review(make_pod(annotations=BACKEND))

    def check_injected(line: dict[str, Any]) -> None:
        assert line["generateName"] == "web-5d8f7c9b6-"
        assert "name" not in line
        assert (line["result"], line["reason"], line["operation"]) == (
            "injected",
            "pod_label",
            "CREATE",
        )
        assert line["patchOps"] > 0

    cases.append((injected, check_injected))
    named = pod_review(make_pod(name="web-0", annotations={"cache-injector.io/grace": "x"}))

    def check_denied(line: dict[str, Any]) -> None:
        assert line["name"] == "web-0"
        assert (line["result"], line["reason"], line["code"], line["allowed"]) == (
            "denied",
            "invalid",
            400,
            False,
        )

    cases.append((named, check_denied))
    deleted = pod_review(None, operation="DELETE", old=make_pod(name="web-1"))

    def check_deleted(line: dict[str, Any]) -> None:
        assert (line["result"], line["reason"], line["operation"]) == (
            "skipped",
            "not_create",
            "DELETE",
        )

    cases.append((deleted, check_deleted))
    for review, _ in cases:
        client.review(review)
    lines = {line["uid"]: line for line in server.events("review")}
    for review, check in cases:
        line = lines[review["request"]["uid"]]
        assert line["namespace"] == "shop"
        assert line["kind"] == "Pod"
        assert isinstance(line["ms"], float)
        assert isinstance(line["warnings"], int)
        assert "traceback" not in line
        check(line)


def test_metrics_count_admissions_latency_and_certificate(client: Client, pki: Pki) -> None:
    before = client.get("/metrics").text
    client.review(pod_review(make_pod(annotations=BACKEND)))
    client.review(pod_review(make_pod(labels={"cache-injector.io/inject": "disabled"})))
    client.post(b"{}")
    after = client.get("/metrics").text

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("cache_injector_admissions_total", result="injected", reason="pod_label") == 1
    assert grew("cache_injector_admissions_total", result="skipped", reason="label_disabled") == 1
    assert grew("cache_injector_rejected_requests_total", code="400") == 1
    assert grew("cache_injector_admission_duration_seconds_count") == 2
    assert sample(after, "cache_injector_policy_reloads_total", result="error") == 0
    assert "cache_injector_certificate_reloads_total" in after
    not_after = handshake(client_port(client), pki.ca).not_valid_after_utc
    expiry = sample(after, "cache_injector_certificate_expiry_timestamp_seconds")
    assert datetime.datetime.fromtimestamp(expiry, datetime.UTC) == not_after
