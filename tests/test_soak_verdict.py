"""bench/soak's verdict on synthetic curves: each rule can fail, and the noise test tells a
flat curve with scatter or a step from a real creep."""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

import pytest

from bench.churn.__main__ import Sample
from bench.soak.__main__ import Soak, again
from bench.soak.verdict import HitWindow, hit_windows, slope, t_975, verdict

LIMIT = 869.0


def curve(minutes: float = 60, every: float = 10, *, level: float = 340, creep: float = 0,
          noise: float = 0.0, seed: int = 1) -> list[tuple[float, float]]:  # fmt: skip
    """(minutes, MiB): a fill over 3 minutes, then `level` plus `creep` MiB/min and scatter."""
    rng = random.Random(seed)
    points = []
    for i in range(1, int(minutes * 60 / every) + 1):
        x = i * every / 60
        y = level * min(1.0, x / 3) + creep * max(0.0, x - 3) + rng.gauss(0, noise)
        points.append((x, y))
    return points


def hitting(minutes: float = 60, every: float = 10, *, rate: int = 100,
            misses_at: float | None = None, misses: int = 0, other: int = 0,
            ) -> list[tuple[float, int, int, int]]:  # fmt: skip
    """Running totals (seconds, HIT, MISS, other) every `every` seconds; `misses` MISSes (and
    `other` failures) fall in the sample at `misses_at` seconds."""
    totals, hit, miss, bad = [(0.0, 0, 0, 0)], 0, 0, 0
    for i in range(1, int(minutes * 60 / every) + 1):
        seconds = i * every
        hit += int(rate * every)
        if misses_at is not None and seconds == misses_at:
            hit, miss, bad = hit - misses - other, miss + misses, bad + other
        totals.append((seconds, hit, miss, bad))
    return totals


def test_flat_curve_with_scatter_passes() -> None:
    result = verdict(curve(noise=1.5), LIMIT, hitting(), 0)
    assert result.passed, result.reasons
    assert result.slope.points == 121  # the last 20 minutes at 10 s (both ends)
    assert abs(result.slope.slope) < result.slope.threshold
    assert result.hit_ratio == 1.0 and result.lowest_window == 1.0


def test_creep_fails_as_still_growing() -> None:
    result = verdict(curve(creep=0.5, noise=1.5), LIMIT, hitting(), 0)
    assert not result.passed
    assert result.slope.low > 0 and result.slope.slope > result.slope.threshold
    assert result.reasons == [result.reasons[0]] and "still growing" in result.reasons[0]


def test_a_step_inside_the_window_is_noise_when_small() -> None:
    """A 1 MiB step in a curve with 1 MiB of scatter: the interval excludes 0, but the drift
    is inside twice the scatter, so it is levelled; the same step without scatter is not."""
    points = [(x, y + (1.0 if x > 50 else 0.0)) for x, y in curve(noise=1.0)]
    fit = slope(points)
    assert fit.low > 0  # "significant" for the interval alone
    assert fit.levelled
    assert not slope([(x, y + (1.0 if x > 50 else 0.0)) for x, y in curve(noise=0.1)]).levelled


def test_growth_that_ends_before_the_window_passes() -> None:
    """A curve that climbs for 35 minutes and then is flat: only the last 20 minutes count."""
    points = [(x, 300 + min(x, 35.0)) for x, _ in curve()]
    assert slope(points).levelled
    assert not slope(points, window=40).levelled


def test_above_the_limit_share_fails() -> None:
    result = verdict(curve(level=0.61 * LIMIT, noise=1), LIMIT, hitting(), 0)
    assert not result.passed
    assert result.reasons == [
        f"{result.peak_mib:.1f} MiB is 61 % of the 869 MiB limit (at most 60 %)"
    ]


def test_one_window_below_the_hit_ratio_fails() -> None:
    # 100/s for 60 s is 6000 requests a minute: 61 MISSes is 98.98 %, 60 is exactly 99 %
    failing = verdict(curve(), LIMIT, hitting(misses_at=1800, misses=61), 0)
    assert not failing.passed
    assert failing.reasons == ["1 of 60 working-set windows below 99 % hits (lowest 98.98 %)"]
    assert verdict(curve(), LIMIT, hitting(misses_at=1800, misses=60), 0).passed


def test_misses_during_the_warmup_do_not_count() -> None:
    totals = hitting(misses_at=30, misses=3000)
    assert not verdict(curve(), LIMIT, totals, 0).passed
    assert verdict(curve(), LIMIT, totals, 0, warmup=60).passed


def test_errors_fail() -> None:
    result = verdict(curve(), LIMIT, hitting(misses_at=600, other=1), 1)
    assert not result.passed
    assert result.reasons == ["1 errors (non-2xx or socket errors)"]


def test_a_working_set_that_stopped_answering_fails() -> None:
    half = hitting(minutes=30)
    totals = half + [(float(s), *half[-1][1:]) for s in range(1810, 3601, 10)]
    result = verdict(curve(), LIMIT, totals, 0)
    assert result.reasons == ["30 of 60 working-set windows below 99 % hits (lowest 0.00 %)"]


def test_no_working_set_fails() -> None:
    assert verdict(curve(), LIMIT, [], 0).reasons == [
        "no working-set requests were answered after the warm-up"
    ]


def test_hit_windows_cover_every_request_once() -> None:
    totals = hitting(minutes=5, misses_at=130, misses=7, other=2)
    windows = hit_windows(totals)
    assert [(w.start, w.end) for w in windows] == [(0, 60), (60, 120), (120, 180), (180, 240),
                                                   (240, 300)]  # fmt: skip
    assert sum(w.hits + w.misses + w.other for w in windows) == 100 * 300
    assert windows[2] == HitWindow(120, 180, 6000 - 9, 7, 2)


def test_too_few_samples_is_an_error_not_a_verdict() -> None:
    with pytest.raises(ValueError, match=r"2 samples in the last 20.0 minutes: 3 needed"):
        slope([(0.0, 1.0), (1.0, 2.0)])


def test_t_quantile_matches_the_table() -> None:
    for df, table in ((5, 2.571), (10, 2.228), (30, 2.042), (118, 1.980)):
        assert t_975(df) == pytest.approx(table, rel=0.01)


def test_a_results_file_is_judged_and_plotted_again(tmp_path: Path) -> None:
    """`python -m bench.soak --from FILE`: the verdict, the per-minute windows and the plot
    from a results file alone (here a synthetic hour that creeps, so it must fail)."""
    samples = [
        Sample(
            seconds=x * 60,
            footprint_mib=round(y, 1),
            cgroup_mib=round(y - 2, 1),
            objects=300_000,
            objheads=300_000,
            evicted=int(2000 * x * 60),
            requests=300_000 + int(2000 * x * 60),
            stored_mib=128.0,
            threads=44,
        )
        for x, y in [(0.0, 80.0), *curve(creep=0.5, noise=1)]
    ]
    seen = Soak("haproxy-3.4/varnish-8.0", 60, LIMIT, {"requests": 1}, 2500, 2125, {}, 300,
                100, samples, hitting())  # fmt: skip
    path = tmp_path / "soak.json"
    path.write_text(json.dumps({"date": "x", "soak": asdict(seen)}))
    again(path)
    judged = json.loads(path.read_text())["soak"]
    assert not judged["verdict"]["passed"]
    assert judged["verdict"]["reasons"][0].startswith("still growing: +0.4")
    assert len(judged["windows"]) == 60
    assert {w["unique_per_s"] for w in judged["windows"]} == {2000}
    assert path.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


def test_a_falling_curve_is_not_levelled_either() -> None:
    points = [(x, 500 - 2 * x) for x, _ in curve(noise=0.5)]
    assert verdict(points, LIMIT, hitting(), 0).reasons[0].startswith("still falling: -2.000")
