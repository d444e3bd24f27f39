"""The `helm test` Pod's script, run for real against a stand-in webhook over TLS on loopback.

The script is taken from the rendered Pod and run with the same Python the image has; only
WEBHOOK_URL and CA_FILE differ from the cluster (127.0.0.1 and a trustme CA).
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.chart.chart import render

READY = "/readyz"


def hook_pod() -> dict[str, Any]:
    (pod,) = [obj for obj in render().objects if obj["kind"] == "Pod"]
    return pod


def test_hook_is_a_test_pod_that_runs_once() -> None:
    pod = hook_pod()
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    assert container["command"][:2] == ["python", "-c"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["WEBHOOK_URL"] == "https://ci-cache-injector.cache-injector.svc:443"
    (mount,) = container["volumeMounts"]
    assert env["CA_FILE"] == mount["mountPath"] + "/ca.crt"


class StandIn:
    """Answers /readyz, and /mutate with `answer(review)`."""

    def __init__(self, ca: trustme.CA, answer: Any) -> None:
        self.paths: list[str] = []
        self.reviews: list[dict[str, Any]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stand_in.paths.append(self.path)
                self._send(200 if self.path == READY else 404, b"ok")

            def do_POST(self) -> None:
                stand_in.paths.append(self.path)
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand_in.reviews.append(review)
                self._send(200, json.dumps(answer(review)).encode())

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)

    def __enter__(self) -> StandIn:
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}"


def allow(review: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"], "allowed": True},
    }


def wrong_uid(review: dict[str, Any]) -> dict[str, Any]:
    answer = allow(review)
    answer["response"]["uid"] = "someone-else"
    return answer


def deny(review: dict[str, Any]) -> dict[str, Any]:
    answer = allow(review)
    answer["response"]["allowed"] = False
    return answer


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "ca.crt"
    ca.cert_pem.write_to_path(str(path))
    yield path


def run_hook(url: str, ca_file: Path) -> subprocess.CompletedProcess[str]:
    (container,) = hook_pod()["spec"]["containers"]
    script = container["command"][2]
    return subprocess.run(
        [sys.executable, "-c", script],
        env={"WEBHOOK_URL": url, "CA_FILE": str(ca_file)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("answer", "succeeds"),
    [
        pytest.param(allow, True, id="allowed-with-uid"),
        pytest.param(wrong_uid, False, id="uid-not-echoed"),
        pytest.param(deny, False, id="denied"),
    ],
)
def test_hook_script_checks_readyz_and_mutate(
    ca: trustme.CA, ca_file: Path, answer: Any, succeeds: bool
) -> None:
    with StandIn(ca, answer) as stand_in:
        result = run_hook(stand_in.url, ca_file)
    assert stand_in.paths == [READY, "/mutate"]
    # A pod that opted out: any policy lets it through unchanged, so the hook tests only that
    # the webhook answers.
    (review,) = stand_in.reviews
    assert review["request"]["operation"] == "CREATE"
    assert review["request"]["object"]["metadata"]["labels"] == {
        "cache-injector.io/inject": "disabled"
    }
    assert (result.returncode == 0) is succeeds, result.stdout + result.stderr
    if not succeeds:
        assert "/mutate: unexpected answer" in result.stderr
