"""The field report's outage, as a rule on every haproxy.cfg we write: HAProxy's resolver does
not expand short names (it ignores `search` and `ndots`), so a bare Service name gets NXDOMAIN
and the servers go DOWN ~30 s after start. The config must only ever name the FQDN, for the
right namespace and cluster domain — and never start HAProxy as a `daemon` or log to syslog."""

from __future__ import annotations

import re

import pytest

from tests.conftest import make_pod, policy_from
from webhook.engine.inject import inject_pod
from webhook.engine.policy import Policy
from webhook.engine.render import Templates

P = "cache-injector.io/"


@pytest.mark.parametrize(
    ("backend", "discovery", "namespace", "domain", "fqdn"),
    [
        pytest.param("app:3005", "dns-a", "shop", "cluster.local",
                     "app.shop.svc.cluster.local:3005", id="a-records"),
        pytest.param("app.catalog:3005", "dns-a", "shop", "cluster.local",
                     "app.catalog.svc.cluster.local:3005", id="other-namespace"),
        pytest.param("app:http", "dns-srv", "shop", "k8s.internal",
                     "_http._tcp.app.shop.svc.k8s.internal", id="srv-custom-domain"),
    ],
)  # fmt: skip
def test_haproxy_never_names_a_bare_service(
    backend: str, discovery: str, namespace: str, domain: str, fqdn: str, templates: Templates
) -> None:
    policy: Policy = policy_from(
        {
            "clusterDomain": domain,
            "namespaces": {namespace: {"allowedBackendNamespaces": ["catalog"]}},
        }
    )
    pod = make_pod(namespace=None, annotations={P + "backend": backend, P + "discovery": discovery})
    outcome = inject_pod(
        pod, namespace=namespace, operation="CREATE", policy=policy, templates=templates
    )
    assert outcome.configs is not None
    cfg = outcome.configs.haproxy_cfg
    directives = [line.split("#")[0].strip() for line in cfg.splitlines()]
    # backend_pods and pods_seen (which counts the Service's pods) both resolve the FQDN;
    # the only plain server is HAProxy's own max-backends check, on localhost.
    templates_ = [d for d in directives if d.startswith("server-template ")]
    assert [t.split()[3] for t in templates_] == [fqdn, fqdn], templates_
    servers = [d for d in directives if d.startswith("server ")]
    assert [s.split()[2].split(":")[0] for s in servers] == ["127.0.0.1"], servers
    for directive in directives:
        assert not re.search(r"(^|\s)app(:\d+)?(\s|$)", directive), directive
    assert "daemon" not in directives
    logs = [d for d in directives if d.startswith("log ")]
    assert logs and all(d == "log global" or d.startswith("log stdout ") for d in logs), logs
