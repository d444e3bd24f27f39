"""Kubernetes quantities parse as the API server parses them.

The cases are Kubernetes' own (apimachinery pkg/api/resource/quantity_test.go,
TestQuantityParse), less the ones whose point is rounding to nano precision or saturating at
2^63 - 1: we keep exact values, and every caller bounds them (limits, "above 0").
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from webhook.engine.values import parse_quantity, parse_size

KI, MI, GI, TI, PI, EI = (1024**power for power in range(1, 7))

VALID = [
    ("0", 0), ("0n", 0), ("0u", 0), ("0m", 0), ("0Ki", 0), ("0k", 0), ("0Mi", 0), ("0M", 0),
    ("0Gi", 0), ("0G", 0), ("0Ti", 0), ("0T", 0),
    ("1", 1),
    ("1Ki", KI), ("8Ki", 8 * KI), ("7Mi", 7 * MI), ("6Gi", 6 * GI), ("5Ti", 5 * TI),
    ("4Pi", 4 * PI), ("3Ei", 3 * EI), ("10Ti", 10 * TI), ("100Ti", 100 * TI),
    ("5n", "5e-9"), ("4u", "4e-6"), ("3m", "3e-3"), ("9", 9), ("8k", 8000), ("50k", 50000),
    ("7M", 7 * 10**6), ("6G", 6 * 10**9), ("5T", 5 * 10**12), ("40T", 4 * 10**13),
    ("300T", 3 * 10**14), ("2P", 2 * 10**15), ("1E", 10**18), ("12E", 12 * 10**18),
    ("1E-3", "1e-3"), ("1e3", 1000), ("1E6", 10**6), ("1e9", 10**9), ("1E12", 10**12),
    ("1e15", 10**15), ("1E18", 10**18), ("1e14", 10**14), ("1e13", 10**13),
    ("100.035k", 100035),
    ("0.001", "0.001"), ("0.0005k", "0.5"), ("0.005", "0.005"), ("0.05", "0.05"),
    ("0.5", "0.5"), ("0.00050k", "0.5"), ("0.00500", "0.005"), ("0.05000", "0.05"),
    ("0.50000", "0.5"), ("0.5e0", "0.5"), ("0.5e-1", "0.05"), ("0.5e-2", "0.005"),
    ("10.035M", 10035000),
    ("1.2e3", 1200), ("1.3E+6", 1300000), ("1.40e9", 14 * 10**8), ("1.53E12", 153 * 10**10),
    ("1.6e15", 16 * 10**14), ("1.7E18", 17 * 10**17),
    ("9.01", "9.01"), ("8.1k", 8100), ("7.123456M", 7123456), ("6.987654321G", 6987654321),
    ("5.444T", 5444 * 10**9), ("40.1T", 401 * 10**11), ("300.2T", 3002 * 10**11),
    ("2.5P", 25 * 10**14), ("1.01E", 101 * 10**16),
    ("100.035Ki", "102435.84"), ("0.5Mi", MI // 2), ("0.05Gi", "53687091.2"),
    ("0.025Ti", "27487790694.4"),
    (".001", "0.001"), (".0001k", "0.1"), ("1.", 1), ("1.G", 10**9),
]  # fmt: skip

# Kubernetes' invalid list, plus what our own callers must never see as a number.
INVALID = ["", "1.1.M", "1+1.0M", "0.1mi", "0.1am", "aoeu", ".5i", "1i", "-3.01i", "-3.01e-",
           " 1", "1 ", "1K", "1mi", "1e", "Mi", "1Mi ", "1,5Gi"]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_kubernetes_quantities_parse_exactly(text: str, expected: int | str) -> None:
    want = Decimal(expected)
    assert parse_quantity(text) == want
    # Kubernetes' table is run again with an explicit sign.
    assert parse_quantity("+" + text) == want
    assert parse_quantity("-" + text) == -want


@pytest.mark.parametrize("text", INVALID)
def test_invalid_quantities_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_sizes_are_whole_bytes_rounded_down() -> None:
    assert parse_size("0.05Gi") == 53687091
    assert parse_size("1e3") == 1000
    assert parse_size("1Pi") == PI
