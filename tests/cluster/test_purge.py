"""`cache-injector purge` against the fake API server (real client, real wire format): which
pods it targets, what each receives, retries, timeouts, per-pod results and exit codes, RBAC
403s, pagination. The caches' real answers (VCL, token) are proven in tests/e2e/test_purge.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from click.testing import CliRunner, Result

from tests.chart.fake_apiserver import FakeApiServer
from tests.cluster.pods import pod, purge_records, purge_secret
from webhook.cli import main

TOKEN = "0123456789abcdef-token"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeApiServer]:
    server = FakeApiServer(page_size=2)  # 2 a page: every list here takes `continue`
    server.add(purge_secret(TOKEN))
    server.add(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {}},
        }
    )
    server.add(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"app": "web"}},
        }
    )
    for index in range(3):
        server.add(pod(f"web-{index}", ip=f"10.0.0.{index + 1}"))
    server.add(pod("web-pending", phase="Pending"))
    server.add(pod("web-plain", injected=False))
    server.add(pod("other", labels={"app": "other"}))
    with server.running():
        yield server


def run(api: FakeApiServer, tmp_path: Path, *args: str) -> Result:
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
    return CliRunner().invoke(
        main, ["purge", "--kubeconfig", kubeconfig, "-n", "shop", *args], catch_exceptions=False
    )


def answering(codes: Mapping[str, list[int]]) -> Any:
    """A pod proxy whose pods answer these statuses in turn (OSError: unreachable)."""
    lock = threading.Lock()

    def handle(
        namespace: str, name: str, port: int, method: str, path: str, headers: Mapping[str, str]
    ) -> tuple[int, str, bytes]:
        with lock:
            queue = codes.get(name) or [200]
            code = queue.pop(0) if len(queue) > 1 else queue[0]
        if code == 0:
            raise OSError("dial tcp: connect: connection refused")
        return code, {200: "Banned", 403: "Wrong X-Cache-Token", 503: "Busy"}.get(code, "x"), b""

    return handle


def records(result: Result) -> dict[str, dict[str, Any]]:
    return purge_records(result.stdout)


@pytest.mark.parametrize("how", [["--deployment", "web"], ["--service", "web"], ["-l", "app=web"]])
def test_every_injected_running_pod_is_purged_once(
    api: FakeApiServer, tmp_path: Path, how: list[str]
) -> None:
    api.proxy = answering({})
    result = run(api, tmp_path, *how, "--url", "/a.css", "-o", "json")
    assert result.exit_code == 0, result.output
    found = records(result)
    assert {p: r["result"] for p, r in found.items()} == {
        "web-0": "ok",
        "web-1": "ok",
        "web-2": "ok",
        "web-pending": "skipped",
        "web-plain": "skipped",
    }
    assert "not injected" in found["web-plain"]["detail"]
    # One request per pod, through the pod proxy, to its cache port, with the token and
    # without the user's own credentials.
    assert sorted(p["pod"] for p in api.proxied) == ["web-0", "web-1", "web-2"]
    for request in api.proxied:
        assert request["path"] == "/.cache/ban"
        assert request["headers"]["X-Cache-Token"] == TOKEN
        assert request["headers"]["X-Cache-Ban-Url"] == r"^/a\.css$"
        assert "Authorization" not in request["headers"]
    pod_lists = [path for method, path in api.calls if "/pods?" in path]
    assert any("continue=" in path for path in pod_lists), "pages were followed"
    proxied = [unquote(path) for _, path in api.calls if "/proxy/" in path]
    assert len(proxied) == 3 and all("/pods/web-" in p and ":6081/proxy/" in p for p in proxied)


def test_purge_per_host(api: FakeApiServer, tmp_path: Path) -> None:
    api.proxy = answering({})
    result = run(
        api, tmp_path, "-l", "app=web", "--url", "/a", "--host", "x.example", "--host", "y.example"
    )
    assert result.exit_code == 0, result.output
    hosts = sorted(p["headers"]["X-Cache-Purge-Host"] for p in api.proxied if p["pod"] == "web-0")
    assert hosts == ["x.example", "y.example"]
    assert {p["path"] for p in api.proxied} == {"/.cache/purge"}
    assert "3 ok, 0 failed, 0 unreachable, 2 skipped" in result.stdout


def test_unreachable_pod_is_retried_reported_and_repeatable(
    api: FakeApiServer, tmp_path: Path
) -> None:
    api.proxy = answering({"web-1": [0]})
    result = run(api, tmp_path, "-l", "app=web", "--url", "/a", "--retries", "2")
    assert result.exit_code == 1, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:6]}
    assert "unreachable" in lines["web-1"] and "connection refused" in lines["web-1"]
    assert lines["web-1"].split()[3] == "3", "1 attempt + 2 retries"
    assert " ok " in lines["web-0"] and " ok " in lines["web-2"]
    assert "--pod web-1 --url /a" in result.stdout
    # Repeating for that pod only, once it answers again:
    api.proxy, api.proxied = answering({}), []
    again = run(api, tmp_path, "-l", "app=web", "--pod", "web-1", "--url", "/a")
    assert again.exit_code == 0, again.output
    assert [p["pod"] for p in api.proxied] == ["web-1"]


def test_transient_errors_are_retried_and_refusals_are_not(
    api: FakeApiServer, tmp_path: Path
) -> None:
    api.proxy = answering({"web-0": [503, 200], "web-2": [403]})
    result = run(api, tmp_path, "-l", "app=web", "--ban", "^/img/", "-o", "json")
    assert result.exit_code == 1
    found = records(result)
    assert (found["web-0"]["result"], found["web-0"]["attempts"]) == ("ok", 2)
    assert (found["web-2"]["result"], found["web-2"]["attempts"]) == ("failed", 1)
    assert "403 Wrong X-Cache-Token" in found["web-2"]["detail"]


def test_per_pod_timeout_bounds_a_hanging_pod(api: FakeApiServer, tmp_path: Path) -> None:
    def hang(*args: Any) -> tuple[int, str, bytes]:
        if args[1] == "web-2":
            time.sleep(3)
        return 200, "Banned", b""

    api.proxy = hang
    began = time.monotonic()
    result = run(
        api,
        tmp_path,
        "-l",
        "app=web",
        "--url",
        "/a",
        "--timeout",
        "0.5",
        "--retries",
        "1",
        "-o",
        "json",
    )
    assert result.exit_code == 1
    found = records(result)
    assert found["web-2"]["result"] == "unreachable" and found["web-2"]["attempts"] == 2
    assert found["web-0"]["result"] == "ok"
    assert time.monotonic() - began < 20  # generous: two 0.5 s attempts, not 2 x 3 s


def test_rbac_refusal_names_the_permission(api: FakeApiServer, tmp_path: Path) -> None:
    api.forbidden.add(("list", "pods"))
    result = run(api, tmp_path, "-l", "app=web", "--url", "/a")
    assert result.exit_code == 2
    assert 'cannot list resource "pods"' in result.output and "403" in result.output


def test_proxy_refused_by_rbac_fails_each_pod(api: FakeApiServer, tmp_path: Path) -> None:
    api.proxy = answering({})
    api.forbidden.add(("create", "pods/proxy"))
    result = run(api, tmp_path, "-l", "app=web", "--url", "/a", "-o", "json")
    assert result.exit_code == 1
    for name in ("web-0", "web-1", "web-2"):
        record = records(result)[name]
        assert record["result"] == "failed" and record["attempts"] == 1
        assert 'cannot create resource "pods/proxy"' in record["detail"]


def test_missing_secret_is_a_clear_error(api: FakeApiServer, tmp_path: Path) -> None:
    api.secrets.clear()
    result = run(api, tmp_path, "-l", "app=web", "--url", "/a")
    assert result.exit_code == 2
    assert "Secret shop/cache-injector-purge" in result.output and "404" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-l", "app=web"], "nothing to invalidate"),
        (["-l", "app=web", "--url", "a"], "--url: a is invalid"),
        (["-l", "app=web", "--ban", "(x"], "--ban: (x is invalid"),
        (["-l", "app=web", "--ban", 'a"b'], "no quotes or spaces"),
        (["--url", "/a"], "exactly one of --selector, --deployment, --service"),
        (["--deployment", "nope", "--url", "/a"], 'deployments "nope" not found'),
    ],
)
def test_bad_input_names_the_option(
    api: FakeApiServer, tmp_path: Path, args: list[str], message: str
) -> None:
    result = run(api, tmp_path, *args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_direct_mode_posts_to_pod_ips(tmp_path: Path) -> None:
    """--via direct: to each pod IP and its cache port, as a Job inside the cluster does."""
    seen: list[tuple[str, dict[str, str]]] = []

    class Cache(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append((self.path, dict(self.headers.items())))
            self.send_response(200, "Banned")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    caches = [ThreadingHTTPServer((f"127.0.5.{i + 1}", 0), Cache) for i in range(2)]
    threads = [threading.Thread(target=c.serve_forever, daemon=True) for c in caches]
    for thread in threads:
        thread.start()
    api = FakeApiServer()
    for index, cache in enumerate(caches):
        manifest = pod(f"web-{index}", ip=f"127.0.5.{index + 1}")
        varnish = next(
            c for c in manifest["spec"]["initContainers"] if c["name"] == "cache-varnish"
        )
        varnish["ports"][0]["containerPort"] = cache.server_address[1]
        api.add(manifest)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    try:
        with api.running():
            result = run(
                api,
                tmp_path,
                "-l",
                "app=web",
                "--via",
                "direct",
                "--token-file",
                str(token),
                "--url",
                "/x",
            )
    finally:
        for cache in caches:
            cache.shutdown()
            cache.server_close()
    assert result.exit_code == 0, result.output
    assert len(seen) == 2
    assert all(path == "/.cache/ban" and h["X-Cache-Token"] == TOKEN for path, h in seen)
    assert not [c for c in api.calls if "/proxy/" in c[1]], "direct mode never uses the proxy"


def tag_caches(counts: Mapping[str, int | None]) -> Any:
    """A pod proxy whose pods answer a tag purge as the generated VCL does: 200 and
    `purged N` with the xkey VMOD, 501 without it (None)."""

    def handle(
        namespace: str, name: str, port: int, method: str, path: str, headers: Mapping[str, str]
    ) -> tuple[int, str, bytes]:
        count = counts.get(name, 0)
        if path != "/.cache/xkey":
            return 200, "Banned", b""
        if count is None:
            return 501, "Tags not supported: no xkey VMOD in this Varnish image", b"<html>"
        return 200, "Purged", f"purged {count}\n".encode()

    return handle


def test_tag_purge_reports_objects_per_pod(api: FakeApiServer, tmp_path: Path) -> None:
    api.proxy = tag_caches({"web-0": 10, "web-1": 7, "web-2": 0})
    result = run(api, tmp_path, "-l", "app=web", "--tag", "product-42", "--tag", "cat-7")
    assert result.exit_code == 0, result.output
    assert sorted(p["pod"] for p in api.proxied) == ["web-0", "web-1", "web-2"]
    for request in api.proxied:  # one request per pod for every tag, with the token
        assert (request["method"], request["path"]) == ("POST", "/.cache/xkey")
        assert request["headers"]["X-Cache-Purge-Tag"] == "product-42 cat-7"
        assert "X-Cache-Purge-Soft" not in request["headers"]
        assert request["headers"]["X-Cache-Token"] == TOKEN
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:6]}
    assert "purge tags product-42 cat-7: 10 objects" in lines["web-0"]
    assert "0 tags not supported" in result.stdout
    assert "objects purged by tag: 17 (web-0 10, web-1 7, web-2 0)" in result.stdout
    as_json = run(api, tmp_path, "-l", "app=web", "--tag", "product-42", "--soft", "-o", "json")
    assert as_json.exit_code == 0, as_json.output
    assert {p: r["purged"] for p, r in records(as_json).items()} == {
        "web-0": 10,
        "web-1": 7,
        "web-2": 0,
        "web-pending": None,
        "web-plain": None,
    }
    assert {p["headers"].get("X-Cache-Purge-Soft") for p in api.proxied[3:]} == {"true"}


def test_pod_without_xkey_is_reported_not_counted_as_purged(
    api: FakeApiServer, tmp_path: Path
) -> None:
    api.proxy = tag_caches({"web-0": 3, "web-1": None, "web-2": 3})
    result = run(api, tmp_path, "-l", "app=web", "--url", "/a", "--tag", "t", "-o", "json")
    assert result.exit_code == 1, "a pod that kept its tagged objects is no success"
    found = records(result)
    assert found["web-1"]["result"] == "unsupported"
    assert found["web-1"]["attempts"] == 2, "the URL, then the tags once: 501 is not retried"
    assert "ban ^/a$" in found["web-1"]["detail"], "what it did do is reported"
    assert "tags not supported" in found["web-1"]["detail"]
    assert found["web-1"]["purged"] is None
    assert (found["web-0"]["result"], found["web-0"]["purged"]) == ("ok", 3)
    table = run(api, tmp_path, "-l", "app=web", "--tag", "t")
    assert "1 tags not supported" in table.stdout
    assert "tags not supported in 1 pods (web-1)" in table.stdout
    assert "repeat for those pods" not in table.stdout, "repeating cannot help there"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tag", "a b"], "--tag: a b is invalid"),
        (["--tag", "a,b"], "--tag: a,b is invalid"),
        (["--tag", ""], "--tag:  is invalid"),
        (["--url", "/a", "--soft"], "--soft: only with --tag"),
        (["--tag", "a", "--host", "x.example"], "--host: only with --url or --ban"),
    ],
)
def test_bad_tag_input_names_the_option(
    api: FakeApiServer, tmp_path: Path, args: list[str], message: str
) -> None:
    result = run(api, tmp_path, "-l", "app=web", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not api.proxied
