"""Scenario 9: PURGE from localhost (another container of the pod) removes an object; from
any other address (another pod) it is refused and the object stays.

The cache key is URL + Host, so a PURGE names the Host the object was requested with, as
`curl -X PURGE -H 'Host: shop.example' http://localhost:6081/path` would.
"""

from __future__ import annotations

import pytest

from tests.e2e.harness import LISTEN_PORT, OTHER_CLIENT_IP, POD_IP, PodEnv, generation
from tests.e2e.scenarios import recorder

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
