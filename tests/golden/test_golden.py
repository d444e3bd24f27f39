"""Golden files, as istio's kube-inject tests: each tests/golden/<case>/ holds `input.yaml`
(optionally `policy.yaml` and `args`, CLI flags) and the expected outputs:

- `injected.yaml` and `warnings.txt`: what `cache-injector inject` writes to stdout / stderr;
- `patch.json`, `default.vcl`, `haproxy.cfg`: the webhook's patch and the rendered configs for
  the first injected workload.

`make golden` (REFRESH_GOLDEN=1) rewrites them; review the diff like code. The injector version
and config hash are normalised so a release does not rewrite every file.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from webhook import __version__
from webhook.cli import evaluate, main, parse_labels
from webhook.engine.policy import default_policy, load_policy_text
from webhook.engine.render import load_templates
from webhook.engine.workloads import split_documents

HERE = Path(__file__).parent
CASES = sorted(p for p in HERE.iterdir() if (p / "input.yaml").is_file())
REFRESH = os.environ.get("REFRESH_GOLDEN") == "1"


def normalise(text: str, digests: set[str]) -> str:
    text = text.replace(f"cache-injector {__version__}", "cache-injector <version>")
    text = re.sub(r'(version\\?":\\?")' + re.escape(__version__), r"\1<version>", text)
    for digest in digests:
        text = text.replace(digest, "<config-hash>")
    return text


def _arguments(case: Path) -> list[str]:
    args = shlex.split((case / "args").read_text()) if (case / "args").exists() else []
    if (case / "policy.yaml").exists():
        args += ["--policy", str(case / "policy.yaml")]
    return args


def _option(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def produce(case: Path) -> dict[str, str]:
    """Every output file of a case, as the code produces it now."""
    args = _arguments(case)
    result = CliRunner().invoke(main, ["inject", "-f", str(case / "input.yaml"), *args])
    assert result.exit_code == 0, result.output + result.stderr
    policy_path = _option(args, "--policy")
    policy = load_policy_text(Path(policy_path).read_text()) if policy_path else default_policy()
    results = list(
        evaluate(
            split_documents((case / "input.yaml").read_text()),
            policy=policy,
            templates=load_templates(),
            namespace=_option(args, "--namespace"),
            namespace_labels=parse_labels(_option(args, "--namespace-labels")),
        )
    )
    injected = [r.outcome for r in results if r.outcome.injected]
    assert injected, f"{case.name}: nothing injected"
    first = injected[0]
    assert first.configs is not None
    digests = {outcome.configs.digest for outcome in injected if outcome.configs}
    outputs = {
        "injected.yaml": result.stdout,
        "warnings.txt": result.stderr.replace(str(case) + "/", ""),
        "patch.json": json.dumps(first.patch, indent=2, sort_keys=True) + "\n",
        "haproxy.cfg": first.configs.haproxy_cfg,
    }
    if first.configs.vcl is not None:
        outputs["default.vcl"] = first.configs.vcl
    return {name: normalise(text, digests) for name, text in outputs.items()}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_golden(case: Path) -> None:
    produced = produce(case)
    if REFRESH:
        for stale in case.iterdir():
            if stale.name not in produced and stale.name not in (
                "input.yaml",
                "policy.yaml",
                "args",
            ):
                stale.unlink()
        for name, text in produced.items():
            (case / name).write_text(text)
        return
    for name, text in produced.items():
        path = case / name
        expected = path.read_text() if path.exists() else ""
        if text != expected:
            diff = "".join(
                difflib.unified_diff(
                    expected.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    f"{case.name}/{name} (golden)",
                    f"{case.name}/{name} (now)",
                )
            )
            pytest.fail(f"golden file is stale; run `make golden` and review:\n{diff}")


def test_enough_golden_cases() -> None:
    assert len(CASES) >= 10
