"""Scenario 26: invalidation by tag (surrogate keys, the xkey VMOD), on both generations.

Three injected pods with the xkey VMOD and a fourth whose Varnish has none (its vmod_path
lacks libvmod_xkey.so, as an image without varnish-modules), each caching 50 objects the
backend tagged with one of 5 tags. `cache-injector purge --tag` through the (fake) API
server's pod proxy, with the namespace's token:
- one tag: exactly its 10 objects MISS in each of the 3 pods, the other 40 still HIT, and
  each pod reports 10 purged; the pod without xkey is reported "unsupported" (exit 1) and
  still serves every object it had (it purged nothing, and says so);
- --soft: each object of the tag is served stale once (the old body, while the backend
  refetches it in the background), then the new one, fetched exactly once;
- the tag header: xkey (hidden from clients by default, or exposed) or Surrogate-Key.
The wall time of the purge call over the 3 pods and each pod's time are recorded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests import daemons
from tests.chart.fake_apiserver import FakeApiServer
from tests.cluster.pods import purge_records
from tests.e2e.harness import Generation, PodEnv, generation
from tests.e2e.podrunner import BASE_DIR
from tests.e2e.scenarios import recorder
from tests.e2e.test_purge import NO_DRAIN, SECRETS, serve_pods
from webhook.cli import main

pytestmark = pytest.mark.e2e

P = "cache-injector.io/"
TAGS = [f"t{k}" for k in range(5)]
PATHS = {tag: [f"/tagged/{tag}/obj-{i}" for i in range(10)] for tag in TAGS}
ALL_PATHS = [path for paths in PATHS.values() for path in paths]
# Pod -> (annotations, the header its backend sends tags in).
PODS = {
    "web-0": ({}, "xkey"),
    "web-1": ({P + "expose-tag-header": "true"}, "xkey"),
    "web-2": ({P + "tag-header": "Surrogate-Key"}, "Surrogate-Key"),
    "web-3": ({}, "xkey"),  # no xkey VMOD
}
WITH_XKEY = ["web-0", "web-1", "web-2"]


@contextlib.contextmanager
def vmods_without_xkey(gen: Generation) -> Iterator[Path]:
    """The generation's VMOD directory without libvmod_xkey.so: what an image without
    varnish-modules has (symlinks; outside /tmp, which is the container's emptyDir)."""
    prefix = Path(gen.varnish.path).resolve().parent.parent
    std = next(prefix.glob("lib/**/varnish/vmods/libvmod_std.so"), None)
    if std is None or not (std.parent / "libvmod_xkey.so").is_file():
        daemons.missing(f"{gen.varnish.label}: no xkey VMOD next to {std} (varnish-modules)")
    directory = BASE_DIR / f"vmods-no-xkey-{os.getpid()}-{gen.name}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    directory.chmod(0o755)
    for vmod in std.parent.iterdir():
        if "xkey" not in vmod.name:
            (directory / vmod.name).symlink_to(vmod)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _vmod_path(directory: Path) -> Any:
    def edit(manifest: dict[str, Any]) -> None:
        spec = manifest["spec"]
        for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
            if container["name"] == "cache-varnish":
                container["args"] += ["-p", f"vmod_path={directory}"]

    return edit


def _purge(api: FakeApiServer, kubeconfig: str, *args: str) -> tuple[int, dict[str, Any], float]:
    began = time.monotonic()
    result = CliRunner().invoke(
        main,
        ["purge", "--kubeconfig", kubeconfig, "-n", "shop", "-l", "app=web", "-o", "json",
         "--timeout", "3", "--retries", "1", *args],
        catch_exceptions=False,
    )  # fmt: skip
    elapsed = time.monotonic() - began
    return result.exit_code, purge_records(result.stdout), elapsed


def _only(*pods: str) -> list[str]:
    return [arg for pod in pods for arg in ("--pod", pod)]


@pytest.mark.parametrize("generation_name", ["newest", "oldest"])
def test_tag_purge_in_three_pods(tmp_path: Path, generation_name: str) -> None:
    gen = generation(generation_name)
    note = recorder("26 tag purge", gen.label)
    with contextlib.ExitStack() as stack:
        no_xkey = stack.enter_context(vmods_without_xkey(gen))
        envs: dict[str, PodEnv] = {}
        for name, (annotations, header) in PODS.items():
            envs[name] = stack.enter_context(
                PodEnv(
                    gen,
                    backends=1,
                    secrets=SECRETS,
                    annotations={**NO_DRAIN, **annotations},
                    label=f"tags-{name}",
                    pod_name=name,
                    edit_pod=_vmod_path(no_xkey) if name == "web-3" else None,
                )
            )
            envs[name].backends["app-0"].tag_header = header
        api, kubeconfig = serve_pods(stack, envs, tmp_path)
        log = envs["web-3"].runner.log("cache-varnish")
        assert "Could not find VMOD xkey" in log, "web-3 runs the VCL without xkey"

        def caches(name: str) -> dict[str, str]:
            return {path: envs[name].http.get(path).cache for path in ALL_PATHS}

        for name, env in envs.items():
            assert set(caches(name).values()) == {"MISS"}, name
            replies = [env.http.get(path) for path in ALL_PATHS]
            assert {r.cache for r in replies} == {"HIT"}, name
            # The tag header reaches clients only where the pod says so.
            seen = {h for r in replies for h in ("xkey", "surrogate-key") if h in r.headers}
            assert seen == ({"xkey"} if name == "web-1" else set()), (name, seen)
            assert replies[0].headers.get("xkey", "t0") == "t0"

        # A tag no object carries: nothing purged (and the CLI's first run, which loads the
        # Kubernetes client, stays out of the timing below).
        code, purged, _ = _purge(api, kubeconfig, "--tag", "none", *_only(*WITH_XKEY))
        assert code == 0 and {r["purged"] for r in purged.values()} == {0}, purged

        # One tag in the 3 pods with xkey: exactly its 10 objects go, everywhere.
        code, purged, seconds = _purge(api, kubeconfig, "--tag", "t0", *_only(*WITH_XKEY))
        assert code == 0, purged
        assert {n: (r["result"], r["purged"]) for n, r in purged.items()} == {
            n: ("ok", 10) for n in WITH_XKEY
        }
        note("tag purge, 3 pods (proxy), wall", f"{seconds:.3f} s")
        note("tag purge per pod", ", ".join(f"{n} {r['seconds']:.3f} s" for n, r in purged.items()))
        for name in WITH_XKEY:
            found = caches(name)
            missed = sorted(path for path, cache in found.items() if cache == "MISS")
            assert missed == sorted(PATHS["t0"]), (name, missed)
            assert sum(cache == "HIT" for cache in found.values()) == 40, name

        # Every pod of the workload: the one without xkey is reported, never counted as purged.
        code, purged, seconds = _purge(api, kubeconfig, "--tag", "t1")
        assert code == 1, purged
        assert purged["web-3"]["result"] == "unsupported", purged["web-3"]
        assert "tags not supported" in purged["web-3"]["detail"]
        assert purged["web-3"]["purged"] is None and purged["web-3"]["attempts"] == 1
        assert {purged[n]["purged"] for n in WITH_XKEY} == {10}
        assert set(caches("web-3").values()) == {"HIT"}, "web-3 purged nothing"
        note("tag purge, 4 pods, 1 without xkey, wall", f"{seconds:.3f} s")

        # Soft purge: each object is served stale once, refreshed in the background, then new.
        code, purged, seconds = _purge(api, kubeconfig, "--tag", "t2", "--soft", *_only(*WITH_XKEY))
        assert code == 0, purged
        assert {purged[n]["purged"] for n in WITH_XKEY} == {10}
        note("soft tag purge, 3 pods, wall", f"{seconds:.3f} s")
        # Stale first in every pod: while backend pods are up, an expired object is served
        # only within 10 s of its expiry (req.grace), so nothing slow comes in between.
        stale = {name: [envs[name].http.get(path) for path in PATHS["t2"]] for name in WITH_XKEY}
        for name in WITH_XKEY:
            env, backend = envs[name], envs[name].backends["app-0"]
            assert all(r.status == 200 and r.body.endswith(" 1\n") for r in stale[name]), [
                (r.describe(), r.body) for r in stale[name]
            ]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(
                backend.requests[path] < 2 for path in PATHS["t2"]
            ):
                time.sleep(0.05)
            # The new copy (a request that meets the refresh still in flight waits for it:
            # its X-Cache may say MISS, but nothing is fetched twice).
            fresh = [env.http.get(path) for path in PATHS["t2"]]
            assert all(r.status == 200 and r.body.endswith(" 2\n") for r in fresh), [
                (r.describe(), r.body) for r in fresh
            ]
            again = [env.http.get(path) for path in PATHS["t2"]]
            assert all(r.cache == "HIT" and r.body.endswith(" 2\n") for r in again), [
                (r.describe(), r.body) for r in again
            ]
            assert {backend.requests[path] for path in PATHS["t2"]} == {2}, "refetched once"
            found = caches(name)
            assert all(found[path] == "HIT" for tag in ("t3", "t4") for path in PATHS[tag])
