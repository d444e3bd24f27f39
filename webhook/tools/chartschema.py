"""Keep the Helm chart's values.schema.json in step with the policy model and values.yaml.

Owns: the generated parts of charts/cache-injector/values.schema.json: `properties.policy`
(the policy file's JSON Schema, as in docs/policy.schema.json, with its `$ref`s inlined) and
the `description` of every other property (the comment block above the key in values.yaml).
Types, enums and bounds are written by hand in the file and kept as they are.
`make chart-schema` (and `make docs`) writes it; `--check` exits 1 when it is stale, and a test
does the same. Does not: validate values (Helm does, with this schema).

The `$ref`s are inlined rather than moved: Helm 4 resolves `$defs`, but a `$ref` into the
policy's own `$defs` would resolve against the chart schema's root, and a self-contained
draft-07 `policy` property also works with older validators (Helm 3's, editors').
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from ..engine.policy import policy_json_schema

CHART = Path("charts") / "cache-injector"
SCHEMA_FILE = CHART / "values.schema.json"
VALUES_FILE = CHART / "values.yaml"
# Free-form: its keys are the policy file's, described by the policy schema, not values.yaml.
POLICY_KEY = "policy"
DEFS_PREFIX = "#/$defs/"

_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?:\s|$)")
_COMMENT_LINE = re.compile(r"^(?P<indent> *)#(?: (?P<text>.*)|(?P<empty>))$")


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with every `#/$defs/NAME` reference replaced by the definition itself."""
    defs: dict[str, Any] = schema.get("$defs", {})

    def resolve(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [resolve(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        ref = node.get("$ref")
        if isinstance(ref, str):
            if not ref.startswith(DEFS_PREFIX) or ref[len(DEFS_PREFIX) :] not in defs:
                raise ValueError(f"cannot inline $ref {ref}: not one of {sorted(defs)}")
            name = ref[len(DEFS_PREFIX) :]
            if name in seen:
                raise ValueError(f"cannot inline $ref {ref}: it refers to itself")
            out.update(resolve(defs[name], (*seen, name)))
        for key, value in node.items():
            if key in ("$ref", "$defs", "$schema"):
                continue
            out[key] = resolve(value, seen)
        return out

    resolved: dict[str, Any] = resolve(schema, ())
    return resolved


def values_comments(text: str) -> dict[str, str]:
    """Dotted key path -> the comment block right above that key in a values.yaml.

    Only `# ` comment lines at the key's own indentation, with no blank line between them and
    the key, count; the text keeps its inner indentation (examples stay readable).
    """
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    pending_indent = -1
    for line in text.splitlines():
        comment = _COMMENT_LINE.match(line)
        if comment:
            indent = len(comment["indent"])
            if indent != pending_indent:
                pending, pending_indent = [], indent
            pending.append(comment["text"] if comment["text"] is not None else "")
            continue
        key = _KEY_LINE.match(line)
        if key is None:
            pending, pending_indent = [], -1
            continue
        indent = len(key["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(name for _, name in stack), key["key"]])
        if pending and pending_indent == indent:
            comments[path] = "\n".join(pending).strip()
        stack.append((indent, key["key"]))
        pending, pending_indent = [], -1
    return comments


def _describe(node: dict[str, Any], path: str, comments: dict[str, str]) -> dict[str, Any]:
    """The hand-written schema node with its and its properties' descriptions filled in."""
    out: dict[str, Any] = {}
    if path:
        if path not in comments:
            raise ValueError(f"{VALUES_FILE}: {path}: no comment above the key to describe it")
        out["description"] = comments[path]
    for key, value in node.items():
        if key == "properties":
            out[key] = {
                name: _describe(child, f"{path}.{name}" if path else name, comments)
                for name, child in value.items()
            }
        elif key != "description":
            out[key] = value
    return out


def chart_schema(current: dict[str, Any], values_text: str) -> dict[str, Any]:
    """values.schema.json as it should be: `current` with the generated parts replaced."""
    comments = values_comments(values_text)
    properties = dict(current["properties"])
    properties.pop(POLICY_KEY, None)
    described = _describe({**current, "properties": properties}, "", comments)
    policy = inline_refs(policy_json_schema())
    policy.pop("title", None)
    policy["description"] = comments.get(POLICY_KEY, policy.get("description", ""))
    ordered = {}
    for name in current["properties"]:
        ordered[name] = policy if name == POLICY_KEY else described["properties"][name]
    if POLICY_KEY not in ordered:
        ordered[POLICY_KEY] = policy
    described["properties"] = ordered
    return described


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    args = sys.argv[1:]
    check = "--check" in args
    root = Path(next((arg for arg in args if arg != "--check"), "."))
    path = root / SCHEMA_FILE
    current_text = path.read_text(encoding="utf-8")
    expected = render(chart_schema(json.loads(current_text), (root / VALUES_FILE).read_text()))
    if check:
        if current_text != expected:
            sys.exit(f"{SCHEMA_FILE} is stale: run `make chart-schema`")
        return
    path.write_text(expected, encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}")


if __name__ == "__main__":
    main()
