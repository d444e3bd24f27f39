"""Scenario 9: PURGE from localhost (another container of the pod) removes an object; from
any other address (another pod) without the token it is refused and the object stays.

Scenario 23: three injected pods, the namespace's purge token, `cache-injector purge` through
the (fake) API server's pod proxy into each pod: a URL cached in all three is a MISS in each
after one command; no or a wrong token gets 401/403 and purges nothing; a pod stopped before
the purge is reported unreachable while the others are purged.

The cache key is URL + Host, so a PURGE names the Host the object was requested with, as
`curl -X PURGE -H 'Host: shop.example' http://localhost:6081/path` would.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.chart.fake_apiserver import FakeApiServer
from tests.cluster.pods import purge_records, purge_secret
from tests.e2e.harness import LISTEN_PORT, OTHER_CLIENT_IP, POD_IP, PodEnv, generation
from tests.e2e.scenarios import recorder
from webhook.cli import main

pytestmark = pytest.mark.e2e


def test_purge_only_from_localhost() -> None:
    gen = generation("newest")
    with PodEnv(gen, label="purge") as env:
        note = recorder("9 purge", gen.label)
        path = "/static/article"
        host = {"Host": f"{POD_IP}:{LISTEN_PORT}"}  # what the GETs sent
        assert [env.http.get(path).cache for _ in range(2)] == ["MISS", "HIT"]

        refused = env.http.get(path, method="PURGE", source=OTHER_CLIENT_IP, headers=host)
        assert refused.status == 403, refused.describe()
        assert env.http.get(path).cache == "HIT", "a refused PURGE removes nothing"

        purged = env.http.get(path, method="PURGE", host="127.0.0.1", headers=host)
        assert purged.status == 200, purged.describe()
        after = env.http.get(path)
        assert after.cache == "MISS", after.describe()
        assert sum(b.requests[path] for b in env.backends.values()) == 2
        note("PURGE from another pod / from localhost", f"{refused.status} / {purged.status}")


# -- scenario 23: invalidation from outside the pods, with a token, fanned out ---------------
TOKEN = "e2e-token-0123456789abcdef"
SECRETS = {"cache-injector-purge": {"token": TOKEN}}
NO_DRAIN = {"cache-injector.io/drain-seconds": "0"}  # a stopped pod stops at once
FORWARDED = ("x-cache-",)  # what the pod proxy passes on that matters here


def _api_pod(env: PodEnv) -> dict[str, Any]:
    """The pod as the API server lists it: the injected manifest plus a running status."""
    manifest = copy.deepcopy(env.manifest)
    manifest["status"] = {
        "phase": "Running",
        "podIP": POD_IP,
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    return manifest


def _proxy(envs: dict[str, PodEnv]) -> Any:
    """The API server's pod proxy: the request goes on into that pod's network namespace."""

    def forward(
        namespace: str, name: str, port: int, method: str, path: str, headers: Mapping[str, str]
    ) -> tuple[int, str, bytes]:
        passed = {k: v for k, v in headers.items() if k.lower().startswith(FORWARDED)}
        # From another address, as the API server's connection would be, never localhost.
        reply = envs[name].http.get(
            path, method=method, headers=passed, timeout=5, source=OTHER_CLIENT_IP
        )
        if reply.status == 0:
            raise OSError(reply.error)
        return reply.status, reply.reason, reply.body.encode()

    return forward


def serve_pods(
    stack: contextlib.ExitStack, envs: dict[str, PodEnv], tmp_path: Path
) -> tuple[FakeApiServer, str]:
    """The fake API server (for its pod proxy) holding the purge Secret and these pods,
    running until `stack` closes, and its kubeconfig."""
    api = FakeApiServer()
    api.add(purge_secret(TOKEN))
    for env in envs.values():
        api.add(_api_pod(env))
    api.proxy = _proxy(envs)
    stack.enter_context(api.running())
    return api, api.kubeconfig(tmp_path / "kubeconfig")


def _purge(api: FakeApiServer, kubeconfig: str, *args: str) -> tuple[int, dict[str, Any], float]:
    began = time.monotonic()
    result = CliRunner().invoke(
        main,
        [
            "purge",
            "--kubeconfig",
            kubeconfig,
            "-n",
            "shop",
            "-l",
            "app=web",
            "-o",
            "json",
            "--timeout",
            "3",
            "--retries",
            "1",
            *args,
        ],
        catch_exceptions=False,
    )
    elapsed = time.monotonic() - began
    return result.exit_code, purge_records(result.stdout), elapsed


@pytest.mark.parametrize("generation_name", ["newest", "oldest"])
def test_purge_reaches_every_pod_with_the_token(tmp_path: Path, generation_name: str) -> None:
    gen = generation(generation_name)
    note = recorder("23 purge fan-out", gen.label)
    with contextlib.ExitStack() as stack:
        envs = {
            f"web-{i}": stack.enter_context(
                PodEnv(
                    gen,
                    backends=1,
                    secrets=SECRETS,
                    annotations=NO_DRAIN,
                    label=f"purge-{i}",
                    pod_name=f"web-{i}",
                )
            )
            for i in range(3)
        }
        api, kubeconfig = serve_pods(stack, envs, tmp_path)

        def caches(path: str) -> dict[str, str]:
            return {name: env.http.get(path).cache for name, env in envs.items()}

        for path in ("/static/a", "/static/b", "/static/img/1", "/static/img/2"):
            assert set(caches(path).values()) == {"MISS"}
            assert set(caches(path).values()) == {"HIT"}, path

        # No token, or a wrong one, from outside the pod: refused, nothing purged.
        host = {"Host": f"{POD_IP}:{LISTEN_PORT}"}
        bare = envs["web-0"].http.get(
            "/static/a", method="PURGE", source=OTHER_CLIENT_IP, headers=host
        )
        assert bare.status == 401, bare.describe()
        wrong_token = {**host, "X-Cache-Token": TOKEN + "x"}
        wrong = envs["web-0"].http.get(
            "/static/a", method="PURGE", source=OTHER_CLIENT_IP, headers=wrong_token
        )
        assert wrong.status == 403, wrong.describe()
        bad_file = tmp_path / "wrong-token"
        bad_file.write_text("not-the-token-at-all\n")
        code, refused, _ = _purge(
            api, kubeconfig, "--url", "/static/a", "--token-file", str(bad_file)
        )
        assert code == 1
        assert {r["result"] for r in refused.values()} == {"failed"}, refused
        assert all("403" in r["detail"] and r["attempts"] == 1 for r in refused.values())
        assert set(caches("/static/a").values()) == {"HIT"}, "a refused purge removes nothing"

        # The token from the namespace's Secret: one command, a MISS in every pod.
        code, purged, seconds = _purge(api, kubeconfig, "--url", "/static/a")
        assert code == 0, purged
        assert {r["result"] for r in purged.values()} == {"ok"}
        assert set(caches("/static/a").values()) == {"MISS"}
        assert set(caches("/static/b").values()) == {"HIT"}, "only that URL"
        note("purge of 1 URL in 3 pods (proxy)", f"{seconds:.2f} s")
        note("per pod", ", ".join(f"{n} {r['seconds']:.3f} s" for n, r in purged.items()))

        # PURGE at one Host, and a BAN by regex.
        code, _, _ = _purge(
            api, kubeconfig, "--url", "/static/b", "--host", f"{POD_IP}:{LISTEN_PORT}"
        )
        assert code == 0
        assert set(caches("/static/b").values()) == {"MISS"}
        code, _, _ = _purge(api, kubeconfig, "--ban", "^/static/img/[0-9]+$")
        assert code == 0
        assert set(caches("/static/img/1").values()) == {"MISS"}
        assert set(caches("/static/img/2").values()) == {"MISS"}
        assert set(caches("/static/b").values()) == {"HIT"}

        # One pod stopped (still listed by the API server): failed, the others purged.
        stopped = envs["web-2"].runner.terminate(grace=5)
        assert stopped is not None
        code, partial, seconds = _purge(api, kubeconfig, "--url", "/static/b")
        assert code == 1
        assert partial["web-2"]["result"] == "unreachable", partial["web-2"]
        assert partial["web-2"]["attempts"] == 2
        assert partial["web-0"]["result"] == partial["web-1"]["result"] == "ok"
        assert envs["web-0"].http.get("/static/b").cache == "MISS"
        assert envs["web-1"].http.get("/static/b").cache == "MISS"
        note("with web-2 stopped", f"{seconds:.2f} s; web-2: {partial['web-2']['detail'][:90]}")
