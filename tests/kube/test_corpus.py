"""Every workload of tests/corpus (real manifests, SOURCES.md) applied to the real API server
twice, at one Pod Security level: in a plain namespace and in one labelled for injection
(native sidecars at each level; appended sidecars, by a second release, at privileged).
What the server (and the controllers, for the pods they make) accepts plain must be accepted
injected, each pod with our sidecars once: the full validation and Pod Security admission of
the mutated pod, which the offline corpus test (tests/test_corpus.py) cannot do.

Made the same in both namespaces, so the comparison is fair: each object's namespace is
dropped (each file gets a pair of namespaces of its own), pod templates get the backend
annotation (no policy default here), suspended Jobs are resumed, CronJobs get a Job as
`kubectl create job --from` makes it, and a ServiceAccount a pod names but the file does not
define is created (the ServiceAccount admission plugin would refuse the pod otherwise).
Cluster-scoped objects (RBAC, StorageClass) are left out: they are shared."""

from __future__ import annotations

import contextlib
import copy
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, dynamic

from tests.conftest import CORPUS
from tests.kube.cluster import Cluster
from tests.kube.workloads import (
    BACKEND,
    Namespaces,
    chart_release,
    controllers,
    create,
    failed_creates,
    injection_problem,
    job_from_cronjob,
    pods,
    top,
    top_owners,
)
from webhook.engine import names
from webhook.engine.selection import is_job_pod
from webhook.engine.workloads import POD_TEMPLATE_PATHS

FILES = sorted(CORPUS.glob("*.yaml"))
# (Pod Security level, sidecar mode): native through the session's release at every level;
# appended through a release of this module's own (revision "corpus", nativeSidecars false).
SETTINGS = [
    pytest.param(("privileged", "native"), id="privileged"),
    pytest.param(("baseline", "native"), id="baseline"),
    pytest.param(("restricted", "native"), id="restricted"),
    pytest.param(("privileged", "appended"), id="privileged-appended"),
]
APPENDED_RELEASE = "ci-corpus-appended"
APPENDED_VALUES: dict[str, Any] = {
    "revision": "corpus",
    "replicaCount": 1,
    "policy": {"nativeSidecars": False},
}
SETTLE_TIMEOUT = 90.0  # for the controllers to make (or fail to make) every workload's pods


@dataclass
class Outcome:
    """One workload in one namespace: its stored pods, or why there are none."""

    name: str = ""  # as stored (the server's for a generateName)
    pods: list[dict[str, Any]] = field(default_factory=list)
    refused: str = ""  # the API server's answer to the object, or to its controller's pod

    @property
    def accepted(self) -> bool:
        return bool(self.pods)

    def describe(self) -> str:
        if self.pods:
            injected = sum(names.ANNOTATION_STATUS in _annotations(p) for p in self.pods)
            return f"{len(self.pods)} pod(s), {injected} injected"
        return f"refused: {self.refused}" if self.refused else "no pod"


@dataclass
class FileResult:
    path: Path
    plain: dict[tuple[str, str], Outcome]
    labelled: dict[tuple[str, str], Outcome]


@dataclass
class Corpus:
    level: str
    native: bool
    files: dict[str, FileResult]


def _annotations(pod: dict[str, Any]) -> dict[str, str]:
    return dict(pod["metadata"].get("annotations") or {})


def _objects(path: Path) -> list[dict[str, Any]]:
    out = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not isinstance(doc, dict):
            continue
        items = doc.get("items") if doc.get("kind") == "List" else [doc]
        out += [i for i in items or [] if isinstance(i, dict) and i.get("kind")]
    return out


def _template(obj: dict[str, Any]) -> dict[str, Any] | None:
    node: Any = obj
    for key in POD_TEMPLATE_PATHS.get(obj["kind"], ("-",)):
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _prepared(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as this test creates it in both namespaces (see the module docstring)."""
    obj = copy.deepcopy(obj)
    obj.setdefault("metadata", {}).pop("namespace", None)
    template = _template(obj)
    if template is not None:
        metadata = template.setdefault("metadata", None) or {}
        template["metadata"] = metadata
        metadata.setdefault("annotations", {}).update(BACKEND)
    if obj["kind"] == "Job":
        obj["spec"].pop("suspend", None)
    return obj


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return (obj["kind"], meta.get("name") or meta.get("generateName", ""))


def _reason(err: client.exceptions.ApiException) -> str:
    text = str(err.body or err.reason)
    with_message = yaml.safe_load(text) if text.startswith("{") else None
    if isinstance(with_message, dict):
        text = str(with_message.get("message", text))
    return text


def _apply(cluster: Cluster, ns: str, objects: list[dict[str, Any]]) -> dict[Any, Outcome]:
    """Create the file's namespaced objects (workloads last); bare pods' refusals now."""
    api = dynamic.DynamicClient(cluster.api)  # type: ignore[no-untyped-call]
    outcomes: dict[Any, Outcome] = {}
    workloads = [o for o in objects if o["kind"] in POD_TEMPLATE_PATHS]
    others = [o for o in objects if o["kind"] not in POD_TEMPLATE_PATHS]
    accounts = {o["metadata"]["name"] for o in others if o["kind"] == "ServiceAccount"}
    for obj in workloads:
        spec = (_template(obj) or {}).get("spec") or {}
        for account in {spec.get("serviceAccountName"), spec.get("serviceAccount")} - {None}:
            if account not in accounts and account != "default":
                accounts.add(account)
                others.append(
                    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}}
                )
    for obj in others:
        resource = api.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        if resource.namespaced:
            # A Service or PVC the server refuses does not decide about pods.
            with contextlib.suppress(client.exceptions.ApiException):
                create(cluster, ns, _prepared(obj))
    for obj in workloads:
        body = _prepared(obj)
        try:
            stored = create(cluster, ns, body)
        except client.exceptions.ApiException as err:
            outcomes[_key(body)] = Outcome(refused=_reason(err))
            continue
        name = stored["metadata"]["name"]
        outcomes[_key(body)] = Outcome(name=name)
        if body["kind"] == "CronJob":
            job_from_cronjob(cluster, ns, name, f"{name[:40]}-manual")
    return outcomes


def _settle(cluster: Cluster, ns: str, outcomes: dict[Any, Outcome], deadline: float) -> None:
    """Fill each created workload's pods, or its controller's FailedCreate message."""
    waiting = [k for k, o in outcomes.items() if not o.refused]
    while True:
        owners = top_owners(cluster, ns)
        stored = {p["metadata"]["name"]: p for p in pods(cluster, ns)}
        parents = controllers(cluster, ns)
        failures = {top(parents, k): v for k, v in failed_creates(cluster, ns).items()}
        for key in waiting:
            mine = (key[0], outcomes[key].name)
            outcomes[key].pods = [stored[n] for n, o in owners.items() if o == mine and n in stored]
            if not outcomes[key].pods and mine in failures:
                outcomes[key].refused = failures[mine]
        pending = [k for k in waiting if not outcomes[k].pods and not outcomes[k].refused]
        if not pending or time.monotonic() > deadline:
            for key in pending:
                outcomes[key].refused = f"no pod within {SETTLE_TIMEOUT:.0f} s"
            return
        time.sleep(1)


@pytest.fixture(scope="module", params=SETTINGS)
def corpus(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[Corpus]:
    """Every file applied in its two namespaces at one Pod Security level and mode."""
    level, mode = request.param
    spaces = Namespaces(cluster)
    with contextlib.ExitStack() as stack:
        if mode == "appended":
            stack.enter_context(chart_release(cluster, APPENDED_RELEASE, APPENDED_VALUES))
            selected = {names.LABEL_REV: "corpus"}
        else:
            selected = {names.LABEL_INJECT: names.LABEL_ENABLED}
        stack.callback(spaces.close)
        results: dict[str, FileResult] = {}
        made = []
        for path in FILES:
            objects = _objects(path)
            plain = spaces.make("cp", enforce=level)
            labelled = spaces.make("cl", selected, enforce=level)
            made.append(
                (
                    path,
                    plain,
                    _apply(cluster, plain, objects),
                    labelled,
                    _apply(cluster, labelled, objects),
                )
            )
        deadline = time.monotonic() + SETTLE_TIMEOUT
        for path, plain, plain_out, labelled, labelled_out in made:
            _settle(cluster, plain, plain_out, deadline)
            _settle(cluster, labelled, labelled_out, deadline)
            results[path.stem] = FileResult(path, plain_out, labelled_out)
        yield Corpus(f"{level}, {mode} sidecars", mode == "native", results)


def _problems(result: FileResult, native: bool) -> list[str]:
    """What the labelled namespace got wrong, for workloads accepted plain."""
    out = []
    for key, plain in result.plain.items():
        labelled = result.labelled.get(key, Outcome(refused="missing"))
        if not plain.accepted:
            continue
        if not labelled.accepted:
            out.append(f"{key}: accepted plain, {labelled.describe()} injected")
            continue
        for pod in labelled.pods:
            if pod["spec"].get("hostNetwork"):  # never injected (docs/annotations.md)
                if names.ANNOTATION_STATUS in _annotations(pod):
                    out.append(f"{key}: a hostNetwork pod injected")
                continue
            if not native and is_job_pod(pod, None):  # never injected in appended mode
                if names.ANNOTATION_STATUS in _annotations(pod):
                    out.append(f"{key}: a Job's pod injected with appended sidecars")
                continue
            problem = injection_problem(pod, native)
            if problem:
                out.append(f"{key}: {problem}")
    return out


@pytest.mark.parametrize("stem", [p.stem for p in FILES])
def test_corpus_accepted_injected(corpus: Corpus, stem: str) -> None:
    result = corpus.files[stem]
    assert result.plain, "no workload in the file"
    assert not _problems(result, corpus.native)


def _short(refusal: str) -> str:
    """A refusal without pod names and per-container details, to group equal ones."""
    text = refusal.split("is forbidden: ", 1)[-1]
    return re.sub(r"\s*\([^)]*\)", "", text)[:160]


def test_corpus_table(corpus: Corpus, capsys: pytest.CaptureFixture[str]) -> None:
    """The counts for the report: each workload, plain and labelled, and the refusals."""
    rows = []
    counts = {"workloads": 0, "plain": 0, "labelled": 0, "injected": 0, "refused": 0}
    reasons: dict[str, int] = {}
    for stem, result in corpus.files.items():
        for key, plain in result.plain.items():
            labelled = result.labelled.get(key, Outcome(refused="missing"))
            counts["workloads"] += 1
            counts["plain"] += plain.accepted
            counts["labelled"] += labelled.accepted
            counts["injected"] += labelled.accepted and all(
                names.ANNOTATION_STATUS in _annotations(p) for p in labelled.pods
            )
            if not plain.accepted:
                counts["refused"] += 1
                reasons[_short(plain.refused)] = reasons.get(_short(plain.refused), 0) + 1
            rows.append(
                f"{stem[:58]:58} {key[0][:11]:11} {key[1][:22]:22} "
                f"{plain.describe()[:40]:40} {labelled.describe()[:40]}"
            )
    with capsys.disabled():
        print(f"\ncorpus at Pod Security {corpus.level}: {counts}")
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            print(f"  refused plain x{n}: {reason}")
        print("\n".join(rows))
    assert counts["plain"] <= counts["labelled"]
