"""Scenario 8: sticky sessions (`sticky-sessions: "true"`) through Varnish.

A client that returns HAProxy's cookie stays on one backend pod, whatever else it sends; the
application never sees that cookie (`indirect`) but does see its own; another replica of the
cache pod sends the same cookie to the same pod (one dynamic-cookie-key for all replicas).
And sticky sessions must not switch the cache off: a cacheable response is still stored, for
clients with or without the cookie.
"""

from __future__ import annotations

import secrets

import pytest

from tests.e2e.client import errors, pods
from tests.e2e.harness import PodEnv, generation
from tests.e2e.scenarios import recorder

pytestmark = pytest.mark.e2e

STICKY = {"cache-injector.io/sticky-sessions": "true"}
COOKIE = "CACHESRV"
# As the chart runs the webhook: a random secret (out of the policy ConfigMap, the same for
# every webhook replica), so the cookie key cannot be computed from the Service's name alone.
SECRET_POLICY = f"stickySessionSecret: {secrets.token_urlsafe(36)}\n"


def sticky_cookie(set_cookie: str) -> str:
    """`CACHESRV=<value>` out of the Set-Cookie headers of one response."""
    for line in set_cookie.split("\n"):
        if line.startswith(COOKIE + "="):
            return line.split(";")[0]
    raise AssertionError(f"no {COOKIE} cookie in {set_cookie!r}")


def test_a_client_returning_the_cookie_stays_on_one_pod() -> None:
    gen = generation("newest")
    with PodEnv(gen, annotations=STICKY, label="sticky", policy=SECRET_POLICY) as env:
        note = recorder("8 sticky sessions", gen.label)
        first = env.http.get("/nocache/login")
        assert first.ok, first.describe()
        cookie, pod = sticky_cookie(first.headers.get("set-cookie", "")), first.pod

        with_app_cookie = [
            env.http.get(f"/nocache/cart/{i}", headers={"Cookie": f"{cookie}; session=abc"})
            for i in range(12)
        ]
        only_sticky = [
            env.http.get(f"/nocache/page/{i}", headers={"Cookie": cookie}) for i in range(12)
        ]
        without = [env.http.get(f"/nocache/anon/{i}") for i in range(12)]
        for replies in (with_app_cookie, only_sticky, without):
            assert not errors(replies), [r.describe() for r in errors(replies)]
        note("pods seen with cookie (24 requests)", dict(pods(with_app_cookie + only_sticky)))
        note("pods seen without cookie (12)", dict(sorted(pods(without).items())))
        assert set(pods(with_app_cookie + only_sticky)) == {pod}
        assert set(pods(without)) == set(env.backends), "without the cookie: balanced"
        assert all("set-cookie" not in r.headers for r in with_app_cookie + only_sticky)

        seen = [c for backend in env.backends.values() for c in backend.cookies]
        assert seen and all(COOKIE not in c for c in seen), seen  # indirect: HAProxy's own
        assert all(c == "session=abc" for c in env.backends[pod].cookies), env.backends[pod].cookies

        # Another replica of the cache pod (same Service, same addresses): same cookie, same pod.
        with PodEnv(
            gen, annotations=STICKY, label="sticky-replica", policy=SECRET_POLICY
        ) as replica:
            there = [
                replica.http.get(f"/nocache/r/{i}", headers={"Cookie": cookie}) for i in range(6)
            ]
            assert not errors(there) and set(pods(there)) == {pod}, [r.describe() for r in there]
        note("same pod through a second replica", True)


def test_sticky_sessions_keep_cacheable_responses_cached() -> None:
    gen = generation("newest")
    with PodEnv(gen, annotations=STICKY, label="sticky-cache") as env:
        note = recorder("8 sticky sessions", gen.label)
        anonymous = [env.http.get("/static/home") for _ in range(2)]
        assert [r.cache for r in anonymous] == ["MISS", "HIT"], [r.describe() for r in anonymous]
        assert all("set-cookie" not in r.headers for r in anonymous), "a stored page pins nobody"

        cookie = sticky_cookie(env.http.get("/nocache/login").headers.get("set-cookie", ""))
        returning = env.http.get("/static/home", headers={"Cookie": cookie})
        assert returning.cache == "HIT", returning.describe()
        assert sum(b.requests["/static/home"] for b in env.backends.values()) == 1
        note("cacheable GETs without/with cookie", "MISS,HIT / HIT")

        # The application's own cookie still makes a response uncacheable, and both cookies
        # reach the client.
        app = [env.http.get("/session/new") for _ in range(2)]
        assert [r.cache for r in app] == ["MISS", "MISS"], [r.describe() for r in app]
        for reply in app:
            cookies = reply.headers.get("set-cookie", "")
            assert "session=" in cookies and COOKIE + "=" in cookies, cookies
