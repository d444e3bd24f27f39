"""`helm lint --strict` of the chart with its default values, for `make lint` (there is no helm
binary; helm-python-sdk bundles Helm). Prints every finding; exits 1 on warnings or errors.
The tests lint every value set; this is the quick check while editing templates."""

from __future__ import annotations

import sys

import helm_python

from tests.chart.chart import CHART, NAMESPACE
from tests.chart.test_render import LINT_ACCEPTED


def main() -> int:
    report = helm_python.lint(CHART, None, strict=True, namespace=NAMESPACE)
    failed = bool(report["errors"])
    for message in report["messages"]:
        accepted = (message["path"], message["error"]) in LINT_ACCEPTED
        failed = failed or not accepted
        note = " (accepted)" if accepted else ""
        print(f"helm lint: {message['path']}: {message['error']}{note}")
    for error in report["errors"]:
        print(f"helm lint: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
