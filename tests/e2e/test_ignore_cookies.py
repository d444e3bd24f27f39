"""Scenario 22: browser traffic - cookies named in `ignore-cookies` do not stop caching.

A static asset requested with analytics cookies (`_ga`, `_gid`, `_ga_<id>`) is a HIT once
they are named; a cookie not named still passes the request (and reaches the backend); the
sticky-session cookie keeps a client on its pod beside them, piped WebSockets included.
Without the option (the safe default) the same requests are all passed.
"""

from __future__ import annotations

import pytest

from tests.e2e.client import WebSocket, errors, pods
from tests.e2e.harness import LISTEN_PORT, POD_IP, PodEnv, generation
from tests.e2e.scenarios import recorder
from tests.e2e.test_sticky_sessions import STICKY, sticky_cookie

pytestmark = pytest.mark.e2e

ANALYTICS = "_ga=GA1.2.111.222; _gid=GA1.2.333.444; _ga_ABC123=GS1.1.555"
IGNORE = {"cache-injector.io/ignore-cookies": "_ga,_ga_*,_gid"}


def _caches(env: PodEnv, path: str, cookie: str, times: int = 2) -> list[str]:
    replies = [env.http.get(path, headers={"Cookie": cookie}) for _ in range(times)]
    assert not errors(replies), [r.describe() for r in replies]
    return [r.cache for r in replies]


@pytest.mark.parametrize("gen_name", ["newest", "oldest"])
def test_ignored_cookies_are_cached_others_pass_sticky_still_works(gen_name: str) -> None:
    gen = generation(gen_name)
    note = recorder("22 ignore-cookies", gen.label)
    with PodEnv(gen, annotations={**IGNORE, **STICKY}, label="cookies") as env:
        analytics = _caches(env, "/static/app.js", ANALYTICS)
        note("analytics cookies only", ",".join(analytics))
        assert analytics == ["MISS", "HIT"]
        seen = [c for b in env.backends.values() for c in b.cookies]
        assert not seen, f"the backend never sees the ignored cookies: {seen}"

        other = _caches(env, "/static/app.js", f"{ANALYTICS}; theme=dark")
        note("analytics + a cookie not named", ",".join(other))
        assert other == ["MISS", "MISS"], "a cookie not named still passes"
        seen = [c for b in env.backends.values() for c in b.cookies]
        assert seen == ["theme=dark", "theme=dark"], seen

        login = env.http.get("/nocache/login")
        sticky = sticky_cookie(login.headers.get("set-cookie", ""))
        stays = [
            env.http.get(f"/nocache/page/{i}", headers={"Cookie": f"{ANALYTICS}; {sticky}"})
            for i in range(9)
        ]
        assert not errors(stays) and set(pods(stays)) == {login.pod}, [r.describe() for r in stays]
        # A WebSocket is piped: the sticky cookie still picks its pod (vcl_pipe hands it on).
        assert env.netns
        sockets = [
            WebSocket(env.netns, POD_IP, LISTEN_PORT, headers={"Cookie": f"_ga=1; {sticky}"})
            for _ in range(3)
        ]
        try:
            assert [ws.echo("hi").split()[0] for ws in sockets] == [login.pod] * 3
        finally:
            for ws in sockets:
                ws.close()
        with_sticky = _caches(env, "/static/app.js", f"_ga=GA1.2.9.9; {sticky}", times=1)
        note("analytics + sticky cookie", ",".join(with_sticky))
        assert with_sticky == ["HIT"]

    with PodEnv(gen, label="cookies-default") as env:
        default = _caches(env, "/static/app.js", ANALYTICS)
        note("analytics cookies, option unset", ",".join(default))
        assert default == ["MISS", "MISS"], "the default names no cookie: every cookie passes"
