"""The sticky-session secret from the environment (the chart's Secret): every worker derives
the same dynamic-cookie-key from it, and it is not the one anyone computes from the FQDN."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from webhook.engine import names
from webhook.engine.render import cookie_key
from webhook.serve.server import STICKY_SESSION_SECRET_ENV

from .reviews import decoded_patch, make_pod, pod_review
from .support import Pki, serve_pki

SECRET = "kF3-not-a-real-secret-but-long-enough-0123456789"
FQDN = "web.shop.svc.cluster.local"


def test_every_worker_uses_the_secret_from_the_environment(
    tmp_path: Path, pki: Pki, test_policy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STICKY_SESSION_SECRET_ENV, SECRET)
    server = serve_pki(tmp_path, pki, policy=test_policy, workers=2)
    keys: set[str] = set()
    pids: set[int] = set()
    try:
        for _ in range(8):
            client = server.client()  # a new connection: the kernel spreads them over workers
            pids.add(client.get("/readyz").json()["pid"])
            pod = make_pod(
                annotations={
                    "cache-injector.io/backend": "web:8080",
                    "cache-injector.io/sticky-sessions": "true",
                }
            )
            response = client.review(pod_review(pod))
            for op in decoded_patch(response):
                value = op.get("value")
                config = (
                    value.get(names.ANNOTATION_HAPROXY_CFG) if isinstance(value, dict) else None
                )
                if op["path"].endswith(names.ANNOTATION_HAPROXY_CFG.replace("/", "~1")):
                    config = value
                if isinstance(config, str):
                    keys |= set(re.findall(r"dynamic-cookie-key (\S+)", config))
            client.close()
    finally:
        server.stop(signal.SIGKILL)
    assert keys == {cookie_key(FQDN, SECRET)}
    assert cookie_key(FQDN, "") not in keys
    assert len(pids) == 2, "both workers answered"
    assert SECRET not in json.dumps([line for line in server.lines()])
