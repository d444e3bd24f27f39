"""The project's own rules: generated docs are current, the package's four kinds of code import
in one direction (docs/design.md "Layout"), and annotation keys are spelled in one place."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT
from webhook.tools import docs

PACKAGE = ROOT / "webhook"
# Each engine module and the engine modules it may import (its left). workloads parses
# manifests for the CLI and sits beside the chain: it may import only errors.
ENGINE_ORDER = ["names", "memo", "errors", "values", "policy", "backend_tls", "options",
                "selection", "builder", "render", "patch", "inject"]  # fmt: skip
ENGINE_SIDE = {"workloads": {"errors"}}
# Each subpackage and the subpackages it may import. cli.py, at the top, may import any.
LAYERS = {
    "engine": set(),
    "serve": {"engine"},
    "cluster": {"engine"},
    "tools": {"engine"},
}


def _imports(path: Path) -> set[str]:
    """Absolute dotted names of the webhook modules (or packages) that `path` imports."""
    here = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[: len(here) - node.level + 1])
            elif node.module and node.module.split(".")[0] == "webhook":
                base = []
            else:
                continue
            module = [*base, *(node.module.split(".") if node.module else [])]
            found.update(".".join([*module, a.name]) for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("webhook."))
    return found


def _layer(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else None


def test_generated_docs_are_current() -> None:
    for path, text in docs.generated(ROOT).items():
        assert path.exists() and path.read_text() == text, (
            f"{path.relative_to(ROOT)} is stale: run `make docs`"
        )


def test_every_module_belongs_to_a_layer() -> None:
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top == {"__init__.py", "cli.py"}, f"put {top - {'__init__.py', 'cli.py'}} in a layer"
    engine = {p.stem for p in (PACKAGE / "engine").glob("*.py")} - {"__init__"}
    assert engine == set(ENGINE_ORDER) | set(ENGINE_SIDE), "update ENGINE_ORDER for new modules"


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers_import_only_what_they_may(layer: str) -> None:
    for path in (PACKAGE / layer).glob("*.py"):
        imported = {_layer(d) for d in _imports(path)} - {None, layer}
        assert imported <= LAYERS[layer], f"{path.relative_to(ROOT)} imports from {imported}"


@pytest.mark.parametrize("module", ENGINE_ORDER + sorted(ENGINE_SIDE))
def test_engine_modules_import_only_from_their_left(module: str) -> None:
    if module in ENGINE_SIDE:
        allowed = ENGINE_SIDE[module]
    else:
        allowed = set(ENGINE_ORDER[: ENGINE_ORDER.index(module)])
    imported = {d.split(".")[2] for d in _imports(PACKAGE / "engine" / f"{module}.py") if _layer(d)}
    assert imported <= allowed, f"{module} imports {imported - allowed}: move the code"


def test_the_rule_sees_a_wrong_import(tmp_path: Path) -> None:
    """The checker itself: a rightward import is found (so the rules above can fail)."""
    bad = ROOT / "webhook" / "engine" / "_probe_.py"
    bad.write_text("from .inject import inject_pod\nfrom ..serve import server\n")
    try:
        found = _imports(bad)
    finally:
        bad.unlink()
    assert found == {"webhook.engine.inject.inject_pod", "webhook.serve.server"}


def test_no_annotation_key_literals_outside_names() -> None:
    literal = re.compile(r"[\"']cache-injector\.io/")
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "names.py" and literal.search(path.read_text())
    ]
    assert offenders == []
