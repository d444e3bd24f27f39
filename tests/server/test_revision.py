"""`serve --revision`: the server records its revision in every pod it injects (the status
annotation, which audit reads) and reports it in /readyz; the CLI refuses a bad name."""

from __future__ import annotations

import base64
import json

from click.testing import CliRunner

from webhook.cli import main
from webhook.engine import names
from webhook.serve.server import Runtime, Settings

from .reviews import make_pod, pod_review
from .support import Pki


def injected_status(runtime: Runtime) -> dict[str, object]:
    review = pod_review(make_pod(annotations={"cache-injector.io/backend": "web:8080"}))
    answer = runtime.admission.answer(json.dumps(review).encode())
    assert answer.status == 200
    patch = json.loads(base64.b64decode(json.loads(answer.body)["response"]["patch"]))
    key = "/metadata/annotations/" + names.ANNOTATION_STATUS.replace("/", "~1")
    (value,) = [op["value"] for op in patch if op["path"] == key]
    return dict(json.loads(value))


def test_the_status_records_the_servers_revision(pki: Pki) -> None:
    canary = Runtime(Settings(tls_cert=pki.cert, tls_key=pki.key, revision="canary"))
    assert injected_status(canary)["revision"] == "canary"
    default = Runtime(Settings(tls_cert=pki.cert, tls_key=pki.key))
    assert injected_status(default)["revision"] == names.DEFAULT_REVISION


def test_a_revision_must_be_a_dns_label(pki: Pki) -> None:
    result = CliRunner().invoke(
        main,
        ["serve", "--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--revision", "Can_ary"],
    )
    assert result.exit_code == 2
    assert "--revision: Can_ary is invalid: a DNS label" in result.output
