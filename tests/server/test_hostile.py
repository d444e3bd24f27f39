"""Hostile input against the real server over TLS: thousands of malformed and random reviews.

Every answer must be a 400 or 413 with a JSON error, or a 200 carrying a well-formed
AdmissionReview response — never a 500 — and the server must still be up afterwards. Each
family below asserts how many requests it really sent; together they send more than 2,000.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .reviews import corpus_pods, make_pod, pod_review
from .support import Client, Server

MIB = 1024 * 1024
PODS = [case.pod for case in corpus_pods()] + [
    make_pod(annotations={"cache-injector.io/backend": "catalog-api:8080"})
]
OPTION_KEYS = [
    "backend",
    "discovery",
    "max-backends",
    "health-path",
    "cache-size",
    "default-ttl",
    "grace",
    "listen-port",
    "sticky-sessions",
    "drain-seconds",
    "vcl-configmap",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


class Tally:
    """Requests sent and answers seen, per family."""

    def __init__(self) -> None:
        self.sent = 0
        self.statuses: dict[int, int] = {}

    def count(self, status: int) -> None:
        self.sent += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1


FAMILIES: dict[str, Tally] = {}


@pytest.fixture(scope="module")
def hostile(server: Server) -> Iterator[Client]:
    """One keep-alive client for every family; prints what was sent when the module ends."""
    yield server.client()
    total = sum(family.sent for family in FAMILIES.values())
    print(f"\nhostile requests: {total}", {k: (v.sent, v.statuses) for k, v in FAMILIES.items()})


def tally(name: str) -> Tally:
    FAMILIES[name] = Tally()
    return FAMILIES[name]


def still_serving(server: Server, client: Client) -> None:
    """After a family: the process is alive, answers, and the engine never failed."""
    assert server.alive()
    assert client.get("/healthz").status_code == 200
    assert server.events("internal_error") == []


def check_answer(answer: httpx.Response, sent: Any, pod: Any = None) -> None:
    """A 400/413 with a JSON error, or a 200 with a well-formed AdmissionReview response."""
    assert answer.status_code in (200, 400, 413), (answer.status_code, answer.text[:500])
    if answer.status_code != 200:
        assert isinstance(answer.json()["error"], str)
        return
    review = answer.json()
    assert review["apiVersion"] == "admission.k8s.io/v1"
    assert review["kind"] == "AdmissionReview"
    response = review["response"]
    request = sent.get("request") if isinstance(sent, dict) else None
    uid = request.get("uid") if isinstance(request, dict) else None
    if isinstance(uid, str):
        assert response["uid"] == uid
    assert isinstance(response["allowed"], bool)
    assert all(isinstance(warning, str) for warning in response.get("warnings", []))
    if not response["allowed"]:
        assert response["status"]["code"] in (400, 403)
        assert isinstance(response["status"]["message"], str)
    if "patch" in response:
        assert response["patchType"] == "JSONPatch"
        ops = json.loads(base64.b64decode(response["patch"]))
        assert isinstance(ops, list)
        if isinstance(pod, dict):
            jsonpatch.apply_patch(pod, ops)  # every patch applies to its pod


def send(client: Client, tally: Tally, body: bytes, sent: Any = None, pod: Any = None) -> None:
    answer = client.post(body)
    tally.count(answer.status_code)
    check_answer(answer, sent, pod)


def dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass")


def fuzz(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- the families -------------------------------------------------------------------------

# Fields the decoder and the engine read: hit these more often than the rest of the tree.
HOT_PATHS = [
    ("apiVersion",),
    ("kind",),
    ("request",),
    ("request", "uid"),
    ("request", "kind"),
    ("request", "kind", "kind"),
    ("request", "kind", "group"),
    ("request", "operation"),
    ("request", "namespace"),
    ("request", "name"),
    ("request", "subResource"),
    ("request", "dryRun"),
    ("request", "object"),
    ("request", "object", "metadata"),
    ("request", "object", "metadata", "labels"),
    ("request", "object", "metadata", "annotations"),
    ("request", "object", "metadata", "generateName"),
    ("request", "object", "metadata", "ownerReferences"),
    ("request", "object", "spec"),
    ("request", "object", "spec", "containers"),
    ("request", "object", "spec", "initContainers"),
    ("request", "object", "spec", "volumes"),
    ("request", "object", "spec", "hostNetwork"),
    ("request", "object", "spec", "terminationGracePeriodSeconds"),
]


def all_paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from all_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index)
            yield from all_paths(value, (*prefix, index))


def has(node: Any, key: Any) -> bool:
    if isinstance(node, dict):
        return key in node
    return isinstance(node, list) and isinstance(key, int) and key < len(node)


def mutate_at(review: Any, path: tuple[Any, ...], value: Any, delete: bool) -> None:
    node = review
    for key in path[:-1]:
        if not has(node, key):
            return
        node = node[key]
    last = path[-1]
    if isinstance(node, dict):
        if delete:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        if delete:
            del node[last]
        else:
            node[last] = value


@st.composite
def mutated_reviews(draw: st.DrawFn) -> dict[str, Any]:
    """A real review with 1-4 fields deleted or replaced by a value of any JSON type."""
    review = pod_review(
        copy.deepcopy(draw(st.sampled_from(PODS))),
        namespace=draw(st.sampled_from(["shop", "default", "kube-system", "payments"])),
        operation=draw(st.sampled_from(["CREATE", "CREATE", "CREATE", "UPDATE", "DELETE"])),
        dry_run=draw(st.booleans()),
    )
    for _ in range(draw(st.integers(1, 4))):
        hot = draw(st.booleans())
        paths = HOT_PATHS if hot else list(all_paths(review)) or HOT_PATHS
        path = draw(st.sampled_from(paths))
        mutate_at(review, path, draw(json_values), delete=draw(st.integers(0, 3)) == 0)
    return review


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A real review whose apiVersion, kind or request.kind is wrong or of the wrong type."""
    review = pod_review(make_pod(annotations={"cache-injector.io/backend": "a:1"}))
    wrong = (
        st.sampled_from(
            ["admission.k8s.io/v1beta1", "admission.k8s.io/v2", "v1", "", "AdmissionReview"]
        )
        | json_values
    )
    target = draw(st.sampled_from(["apiVersion", "kind", "request.kind", "request.kind.kind"]))
    mutate_at(review, tuple(target.split(".")), draw(wrong), delete=False)
    return review


@st.composite
def hostile_annotations(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """Any text in any of our annotations (and keys that look like ours)."""
    pod = copy.deepcopy(draw(st.sampled_from(PODS)))
    keys = st.sampled_from(OPTION_KEYS).map("cache-injector.io/".__add__) | st.text(
        min_size=1, max_size=30
    ).map("cache-injector.io/".__add__)
    text = st.text(max_size=80) | st.sampled_from(
        ["web:8080", "a.b:http", "\n", '"', "}", "{{x}}", "\x00", "1" * 400, "-1", "0", "9" * 30]
    )
    annotations = draw(st.dictionaries(keys, text, max_size=5))
    if draw(st.integers(0, 20)) == 0:
        annotations["cache-injector.io/health-path"] = "/" + "a" * draw(st.integers(1, 200_000))
    metadata = pod.setdefault("metadata", {})
    metadata["annotations"] = {**(metadata.get("annotations") or {}), **annotations}
    review = pod_review(pod, namespace=draw(st.sampled_from(["shop", "default"])))
    return review, pod


@st.composite
def invalid_utf8(draw: st.DrawFn) -> bytes:
    """A real review's bytes with bytes that are not UTF-8 put inside a string."""
    body = dumps(pod_review(copy.deepcopy(draw(st.sampled_from(PODS)))))
    bad = draw(
        st.sampled_from(
            [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xe2\x82"]
        )
        | st.binary(min_size=1, max_size=8).map(lambda b: b"\xfe" + b)
    )
    quotes = [index for index, byte in enumerate(body) if byte == ord('"')]
    at = draw(st.sampled_from(quotes)) + 1
    return body[:at] + bad + body[at:]


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    """Arrays or objects nested far past any parser's limit, alone or inside a review."""
    depth = draw(st.integers(min_value=300, max_value=200_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    nested = opener * depth + b"1" + closer * depth
    if draw(st.booleans()):
        return nested
    review = dumps(pod_review(make_pod()))
    return review.replace(b'"dryRun": false', b'"dryRun": ' + nested)


# --- the tests ----------------------------------------------------------------------------


def test_random_bytes(hostile: Client, server: Server) -> None:
    counted = tally("random-bytes")

    @fuzz(250)
    @given(st.binary(max_size=4096))
    def run(body: bytes) -> None:
        send(hostile, counted, body)

    run()
    still_serving(server, hostile)
    assert counted.sent >= 250
    assert set(counted.statuses) == {400}


def test_random_json_documents(hostile: Client, server: Server) -> None:
    counted = tally("random-json")

    @fuzz(250)
    @given(json_values)
    def run(document: Any) -> None:
        send(hostile, counted, dumps(document), document)

    run()
    still_serving(server, hostile)
    assert counted.sent >= 250


def test_reviews_with_fields_missing_or_of_the_wrong_type(hostile: Client, server: Server) -> None:
    counted = tally("wrong-types")

    @fuzz(700)
    @given(mutated_reviews())
    def run(review: dict[str, Any]) -> None:
        request = review.get("request")
        pod = request.get("object") if isinstance(request, dict) else None
        send(hostile, counted, dumps(review), review, copy.deepcopy(pod))

    run()
    still_serving(server, hostile)
    assert counted.sent >= 700
    assert counted.statuses.get(200, 0) > 0 and counted.statuses.get(400, 0) > 0


def test_wrong_api_version_or_kind(hostile: Client, server: Server) -> None:
    counted = tally("wrong-envelope")

    @fuzz(150)
    @given(envelopes())
    def run(review: dict[str, Any]) -> None:
        send(hostile, counted, dumps(review), review)

    run()
    still_serving(server, hostile)
    assert counted.sent >= 150


def test_hostile_annotation_values(hostile: Client, server: Server) -> None:
    counted = tally("annotations")

    @fuzz(400)
    @given(hostile_annotations())
    def run(case: tuple[dict[str, Any], dict[str, Any]]) -> None:
        review, pod = case
        send(hostile, counted, dumps(review), review, pod)

    run()
    still_serving(server, hostile)
    assert counted.sent >= 400
    assert set(counted.statuses) == {200}  # strings in annotations are a usable review


def test_invalid_utf8(hostile: Client, server: Server) -> None:
    counted = tally("invalid-utf8")

    @fuzz(200)
    @given(invalid_utf8())
    def run(body: bytes) -> None:
        send(hostile, counted, body)

    run()
    still_serving(server, hostile)
    assert counted.sent >= 200
    assert set(counted.statuses) == {400}


def test_deep_nesting(hostile: Client, server: Server) -> None:
    counted = tally("deep-nesting")

    @fuzz(100)
    @given(deep_nesting())
    def run(body: bytes) -> None:
        send(hostile, counted, body)

    run()
    still_serving(server, hostile)
    assert counted.sent >= 100
    assert set(counted.statuses) == {400}


def test_huge_bodies(hostile: Client, server: Server) -> None:
    """Annotations of megabytes (served) and bodies over the 8 MiB cap (413)."""
    counted = tally("huge")

    @fuzz(24)
    @given(st.integers(min_value=1 * MIB, max_value=int(10.5 * MIB)), st.booleans())
    def run(size: int, chunked: bool) -> None:
        pod = make_pod(annotations={"cache-injector.io/backend": "web:8080"})
        pod["metadata"]["annotations"]["example.com/blob"] = "x" * size
        review = pod_review(pod)
        body = dumps(review)
        content: bytes | Iterator[bytes] = body
        if chunked:
            content = iter([body[i : i + MIB] for i in range(0, len(body), MIB)])
        answer = hostile.post(content)
        counted.count(answer.status_code)
        check_answer(answer, review, pod)
        assert answer.status_code == (413 if len(body) > 8 * MIB else 200)

    run()
    still_serving(server, hostile)
    assert counted.sent >= 24
