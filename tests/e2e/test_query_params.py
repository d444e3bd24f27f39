"""Scenario 24: tracking query parameters and parameter order do not fragment the cache.

With `ignore-query-params: trackers` and `sort-query: true`, 20 clicks on one asset with 20
different `utm_*` values are 1 MISS and 19 HITs, and the one backend request carries the
first click's parameters (the cache key ignores them, the request keeps them); a parameter
not on the list still varies the response; the same parameters in another order HIT; a
PURGE of the bare path, and `cache-injector purge --url` (a ban of the URL), drop the object
the tagged URLs shared.
Without the options (the default) every click is a MISS and the order matters.
"""

from __future__ import annotations

import pytest

from tests.e2e.client import errors
from tests.e2e.harness import LISTEN_PORT, POD_IP, PodEnv, generation
from tests.e2e.scenarios import recorder
from webhook.cluster.purge import invalidations

pytestmark = pytest.mark.e2e

OPTIONS = {
    "cache-injector.io/ignore-query-params": "trackers",
    "cache-injector.io/sort-query": "true",
}
HOST = {"Host": f"{POD_IP}:{LISTEN_PORT}"}  # what the GETs sent: the key's Host
CLICKS = [
    f"/static/app.js?utm_source=news{i}&utm_medium=mail&utm_campaign=spring{i}" for i in range(20)
]


def _caches(env: PodEnv, paths: list[str]) -> list[str]:
    replies = [env.http.get(path) for path in paths]
    assert not errors(replies), [r.describe() for r in replies]
    return [r.cache for r in replies]


def _received(env: PodEnv, prefix: str) -> list[str]:
    """What the backend pods received under a path prefix (path and query), in order."""
    return sorted(t for b in env.backends.values() for t in b.targets if t.startswith(prefix))


def _tally(caches: list[str]) -> str:
    return f"{caches.count('MISS')} MISS, {caches.count('HIT')} HIT"


@pytest.mark.parametrize("gen_name", ["newest", "oldest"])
def test_tracking_params_and_order_share_one_object_the_backend_still_sees_them(
    gen_name: str,
) -> None:
    gen = generation(gen_name)
    note = recorder("24 query params", gen.label)
    with PodEnv(gen, annotations=OPTIONS, label="query") as env:
        clicks = _caches(env, CLICKS)
        note("20 utm_* clicks, trackers + sort-query", _tally(clicks))
        assert clicks == ["MISS"] + ["HIT"] * 19, clicks
        received = _received(env, "/static/app.js")
        note("backend received", received)
        assert received == [CLICKS[0]], "one fetch, with the first click's parameters"

        # v is not a tracker: it still selects the object; the trackers beside it do not.
        versions = _caches(
            env,
            [
                "/static/app.js?v=1&utm_source=a",
                "/static/app.js?v=2&gclid=b",
                "/static/app.js?fbclid=c&v=1&utm_source=z",
            ],
        )
        note("v=1, v=2, v=1 (trackers differ)", ",".join(versions))
        assert versions == ["MISS", "MISS", "HIT"], versions
        assert _received(env, "/static/app.js?v") == [
            "/static/app.js?v=1&utm_source=a",
            "/static/app.js?v=2&gclid=b",
        ]

        order = _caches(
            env, ["/static/list?a=1&b=2", "/static/list?b=2&a=1", "/static/list?b=2&msclkid=x&a=1"]
        )
        note("a=1&b=2, b=2&a=1, b=2&msclkid=x&a=1 (sorted)", ",".join(order))
        assert order == ["MISS", "HIT", "HIT"], order
        assert _received(env, "/static/list") == ["/static/list?a=1&b=2"]

        # PURGE of the bare path finds the key every tagged click used.
        purged = env.http.get("/static/app.js", method="PURGE", host="127.0.0.1", headers=HOST)
        assert purged.status == 200, purged.describe()
        after = _caches(env, ["/static/app.js?utm_source=later", "/static/app.js?gclid=y"])
        note("after PURGE /static/app.js", ",".join(after))
        assert after == ["MISS", "HIT"], after
        # `cache-injector purge --url` without --host bans ^URL$, matched against the URL as
        # the cache keys it (trackers out, sorted): the requests that command sends.
        for url in ("/static/app.js", "/static/list?a=1&b=2"):
            (ban,) = invalidations([url], [], [])
            sent = env.http.get(ban.path, method="POST", host="127.0.0.1", headers=ban.headers())
            assert sent.status == 200, sent.describe()
        after_ban = _caches(
            env,
            [
                "/static/app.js?utm_source=after-ban",
                "/static/list?b=2&utm_term=t&a=1",
                "/static/list?a=1&b=2",
            ],
        )
        note("after purge --url /static/app.js, --url /static/list?a=1&b=2", ",".join(after_ban))
        assert after_ban == ["MISS", "MISS", "HIT"], after_ban
        # With --host it is a PURGE (POST /.cache/purge), keyed as a request: any trackers.
        (purge,) = invalidations(["/static/app.js?gclid=other"], [HOST["Host"]], [])
        sent = env.http.get(purge.path, method="POST", host="127.0.0.1", headers=purge.headers())
        assert sent.status == 200, sent.describe()
        after_host = _caches(env, ["/static/app.js", "/static/app.js?utm_source=again"])
        note("after purge --url /static/app.js?gclid=other --host", ",".join(after_host))
        assert after_host == ["MISS", "HIT"], after_host
        assert _received(env, "/static/list") == [
            "/static/list?a=1&b=2",
            "/static/list?b=2&utm_term=t&a=1",
        ]

    with PodEnv(gen, label="query-default") as env:
        clicks = _caches(env, CLICKS)
        note("20 utm_* clicks, options unset", _tally(clicks))
        assert clicks == ["MISS"] * 20, clicks
        assert _received(env, "/static/app.js") == sorted(CLICKS)
        order = _caches(env, ["/static/list?a=1&b=2", "/static/list?b=2&a=1"])
        note("a=1&b=2, b=2&a=1, options unset", ",".join(order))
        assert order == ["MISS", "MISS"], order
