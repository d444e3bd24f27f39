"""Scenario 25: backend pods that only speak HTTPS (option backend-tls).

The backend pods serve TLS with a certificate from a test CA naming the Service; the CA
reaches cache-haproxy as a ConfigMap key, mounted read-only, and a client certificate from a
Secret (mutual TLS). Caching and balancing work as over HTTP; a wrong CA or a wrong name gives
503 with HAProxy's reason in its log, and `explain` says what HAProxy verifies; a certificate
rotated on the backends under steady traffic costs no request. Both HAProxy generations.
Also measured (printed, never asserted): a MISS's p50 with and without TLS to the backend,
the two pods side by side, requests interleaved.
"""

from __future__ import annotations

import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from tests.e2e.client import Traffic, errors, pods
from tests.e2e.harness import FQDN, PodEnv, generation, wait_for
from tests.e2e.scenarios import recorder
from webhook.engine.backend_tls import HANDSHAKE_FAILURE, WRONG_NAME

pytestmark = pytest.mark.e2e

P = "cache-injector.io/"
CLIENT_NAME = "web.shop.svc.cluster.local"  # the cache pod's client certificate
GENERATIONS = ["newest", "oldest"]


def server_context(
    ca: trustme.CA, name: str = FQDN, *, client_ca: trustme.CA | None = None
) -> ssl.SSLContext:
    """A backend pod's TLS: a certificate from `ca` naming `name`; with client_ca, a client
    certificate from it is required (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def tls_env(
    gen_name: str,
    label: str,
    *,
    served_by: ssl.SSLContext,
    trusted: trustme.CA,
    client: trustme.CA | None = None,
    edit_haproxy_cfg: Callable[[str], str] | None = None,
) -> PodEnv:
    """A pod whose backends serve `served_by`, trusting `trusted` (ConfigMap app-ca) and,
    with `client`, presenting a certificate from it (Secret web-client)."""
    annotations = {P + "backend-tls": "on", P + "backend-tls-ca": "app-ca"}
    secrets = {}
    if client is not None:
        leaf = client.issue_cert(CLIENT_NAME, common_name=CLIENT_NAME)
        annotations[P + "backend-tls-client-secret"] = "web-client"
        secrets["web-client"] = {
            "tls.crt": leaf.cert_chain_pems[0].bytes().decode(),
            "tls.key": leaf.private_key_pem.bytes().decode(),
        }
    return PodEnv(
        generation(gen_name),
        annotations=annotations,
        config_maps={"app-ca": {"ca.crt": trusted.cert_pem.bytes().decode()}},
        secrets=secrets,
        backend_tls=served_by,
        label=label,
        edit_haproxy_cfg=edit_haproxy_cfg,
    )


@pytest.mark.parametrize("gen_name", GENERATIONS)
def test_https_backends_cache_and_balance_as_over_http(gen_name: str) -> None:
    ca, clients = trustme.CA(), trustme.CA()
    context = server_context(ca, client_ca=clients)
    with tls_env(gen_name, "tls", served_by=context, trusted=ca, client=clients) as env:
        note = recorder("25 backend TLS", env.gen.label)
        first, second = env.http.get("/static/page"), env.http.get("/static/page")
        assert (first.status, first.cache) == (200, "MISS"), first.describe()
        assert (second.status, second.cache) == (200, "HIT"), second.describe()
        assert sum(b.requests["/static/page"] for b in env.backends.values()) == 1
        replies = [env.http.get(f"/nocache/{i}") for i in range(30)]
        assert not errors(replies), [r.describe() for r in replies]
        spread = pods(replies)
        note("nocache requests per pod over HTTPS", dict(sorted(spread.items())))
        assert set(spread) == set(env.backends), spread
        for backend in env.backends.values():
            assert backend.handshakes[1] > 0 and not backend.handshakes[None], backend.handshakes
            # Every handshake (traffic and health checks) came with the client certificate.
            assert backend.client_names[CLIENT_NAME] == backend.handshakes[1], backend.name
        # The CA and the client key are in cache-haproxy only, read-only.
        mounts = env.runner.exec("cache-haproxy", ["cat", "/proc/self/mounts"])
        for path in (
            "/etc/cache-injector/backend-tls/ca",
            "/etc/cache-injector/backend-tls/client",
        ):
            line = next(m for m in mounts.splitlines() if f" {path} " in m)
            assert " ro," in line, line
        varnish_mounts = env.runner.exec("cache-varnish", ["cat", "/proc/self/mounts"])
        assert "backend-tls" not in varnish_mounts


def explain_text(env: PodEnv) -> str:
    """`cache-injector explain` on the pod as the test wrote it (before injection)."""
    cli = Path(sys.executable).with_name("cache-injector")
    done = subprocess.run(
        [str(cli), "explain", "-f", str(env.workdir / "pod.yaml"), "--namespace", "shop"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("case", ["wrong-ca", "wrong-name"])
@pytest.mark.parametrize("gen_name", GENERATIONS)
def test_a_wrong_ca_or_name_gives_503_and_haproxy_says_why(gen_name: str, case: str) -> None:
    ca, other = trustme.CA(), trustme.CA()
    if case == "wrong-ca":
        served, trusted, reason = server_context(other), ca, HANDSHAKE_FAILURE
    else:
        served, trusted = server_context(ca, "other.shop.svc.cluster.local"), ca
        reason = WRONG_NAME
    with tls_env(gen_name, f"tls-{case}", served_by=served, trusted=trusted) as env:
        replies = [env.http.get(f"/static/{case}/{i}", timeout=15) for i in range(3)]
        assert [r.status for r in replies] == [503] * 3, [r.describe() for r in replies]
        assert all(b.total("/static/") == 0 for b in env.backends.values())

        def said() -> bool:
            return reason in env.haproxy_log()

        assert wait_for(said, timeout=20), env.diagnostics()
        line = next(x for x in env.haproxy_log().splitlines() if reason in x)
        recorder("25 backend TLS", env.gen.label)(f"{case}: HAProxy's log", line.strip())
        assert "backend_pods/pod" in line and "DOWN" in line, line
        assert all(b.handshakes[None] > 0 for b in env.backends.values())
        hint = next(x for x in explain_text(env).splitlines() if "backend TLS:" in x)
        assert "ConfigMap app-ca key ca.crt" in hint, hint
        assert f"name {FQDN}" in hint and f'"{reason}"' in hint and "503" in hint


@pytest.mark.parametrize("gen_name", GENERATIONS)
def test_a_certificate_rotated_under_load_costs_no_request(gen_name: str) -> None:
    ca = trustme.CA()
    with tls_env(gen_name, "tls-rotate", served_by=server_context(ca), trusted=ca) as env:
        note = recorder("25 backend TLS", env.gen.label)

        def path(index: int) -> str:
            return f"/nocache/{index}" if index % 2 else f"/short/{index % 10}"

        traffic = Traffic(env.http, path, rate=20, limit_seconds=60).start()
        time.sleep(3)
        rotated_at = time.monotonic()
        for backend in env.backends.values():
            backend.set_tls(server_context(ca))  # a new key and certificate, same CA

        def new_served() -> bool:
            return all(b.handshakes[2] > 0 for b in env.backends.values())

        waited = wait_for(new_served, timeout=20)
        assert waited is not None, [b.handshakes for b in env.backends.values()]
        time.sleep(4)  # traffic on the new certificate only
        replies = traffic.stop()
        note("new certificate served on every pod after (s)", round(waited, 2))
        note("requests during rotation run", len(replies))
        assert len(replies) >= 100, len(replies)
        assert not errors(replies), [r.describe() for r in errors(replies)][:8]
        assert [r for r in replies if r.at > rotated_at + waited], "traffic after the rotation"
        for backend in env.backends.values():
            assert not backend.handshakes[None], (backend.name, backend.handshakes)


def p50_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


NO_REUSE = "option http-server-close"


def no_reuse(cfg: str) -> str:
    """haproxy.cfg with a new backend connection per request (closed after each response):
    every MISS over HTTPS then pays a handshake (resumed: HAProxy keeps each server's TLS
    session). `http-reuse never` is not that: a session keeps its own idle connections."""
    return cfg.replace("    balance roundrobin\n", f"    balance roundrobin\n    {NO_REUSE}\n")


@pytest.mark.parametrize("gen_name", GENERATIONS)
def test_miss_latency_with_and_without_tls_to_the_backend(gen_name: str) -> None:
    """Printed, not asserted: a MISS (a cacheable object not yet stored) through a pod with
    plain HTTP to the backends and one with HTTPS, side by side, requests alternated; once
    as generated (HAProxy keeps backend connections alive) and once with a new backend
    connection per request (so a TLS handshake per MISS: the worst case)."""
    ca = trustme.CA()
    rounds = 300
    for reuse in ("kept-alive", "no reuse"):
        edit = None if reuse == "kept-alive" else no_reuse
        with (
            PodEnv(generation(gen_name), label="miss-plain", edit_haproxy_cfg=edit) as plain,
            tls_env(
                gen_name,
                "miss-tls",
                served_by=server_context(ca),
                trusted=ca,
                edit_haproxy_cfg=edit,
            ) as tls,
        ):
            for env in (plain, tls) if edit else ():
                assert NO_REUSE in env.manifest["metadata"]["annotations"][P + "haproxy-cfg"]
            note = recorder("25 backend TLS", plain.gen.label)
            for env in (plain, tls):  # warm: connections to every pod, the VCL's first run
                assert not errors([env.http.get(f"/static/warm/{i}") for i in range(9)])
            before = sum(b.handshakes[1] for b in tls.backends.values())
            timings: dict[str, list[float]] = {"plain": [], "tls": []}
            for index in range(rounds):
                order = [("plain", plain), ("tls", tls)]
                for name, env in order if index % 2 else order[::-1]:
                    reply = env.http.get(f"/static/miss/{index}")
                    assert (reply.status, reply.cache) == (200, "MISS"), reply.describe()
                    timings[name].append(reply.elapsed)
            plain_ms, tls_ms = p50_ms(timings["plain"]), p50_ms(timings["tls"])
            handshakes = sum(b.handshakes[1] for b in tls.backends.values()) - before
            note(f"MISS p50 ms, {reuse}, HTTP (n={rounds})", plain_ms)
            note(f"MISS p50 ms, {reuse}, HTTPS (n={rounds})", tls_ms)
            note(f"MISS p50 ms, {reuse}, HTTPS - HTTP", round(tls_ms - plain_ms, 2))
            note(f"TLS handshakes, {reuse} (incl. checks)", handshakes)
