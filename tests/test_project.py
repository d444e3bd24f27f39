"""The project's own rules: generated docs are current, modules import only leftwards
(STYLE.md: names, errors, values, policy -> options -> selection -> builder -> render -> patch
-> inject -> edges), and annotation keys are spelled in one place."""

from __future__ import annotations

import ast
import re

import pytest

from tests.conftest import ROOT
from webhook import docs

# Each core module and the core modules it may import. Edge modules (cli, server, ...) may
# import anything; nothing in the core may import an edge module.
ORDER = ["names", "memo", "errors", "values", "policy", "options", "selection", "builder", "render",
         "patch", "inject"]  # fmt: skip
PACKAGE = ROOT / "webhook"


def test_generated_docs_are_current() -> None:
    for path, text in docs.generated(ROOT).items():
        assert path.exists() and path.read_text() == text, (
            f"{path.relative_to(ROOT)} is stale: run `make docs`"
        )


def _imports(path: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{path}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            found.update(a.name for a in node.names if node.module is None)
    return {name for name in found if not name.startswith("__")}


@pytest.mark.parametrize("module", ORDER)
def test_core_modules_import_only_from_their_left(module: str) -> None:
    allowed = set(ORDER[: ORDER.index(module)])
    imported = _imports(module)
    assert imported <= allowed, f"{module} imports {imported - allowed}: move the code"


def test_no_annotation_key_literals_outside_names() -> None:
    literal = re.compile(r"[\"']cache-injector\.io/")
    offenders = [
        path.name
        for path in PACKAGE.glob("*.py")
        if path.name != "names.py" and literal.search(path.read_text())
    ]
    assert offenders == []
