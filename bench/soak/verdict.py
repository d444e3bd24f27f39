"""The soak's verdict, a pure function of its samples (unit-tested with synthetic curves).

Levelled off: the least-squares slope of the footprint over the last `window` minutes is within
noise, meaning either its 95 % confidence interval includes 0, or the fitted line moves less
over the whole window than two standard deviations of the samples around it (the band a
plot shows as scatter: a drift smaller than that cannot be told from noise by any reader of
the curve). The second test is needed because samples 10 s apart are autocorrelated (the
footprint moves in steps as pages are touched and returned), which makes the interval too
narrow: a flat curve with 1 MiB of scatter and one 1 MiB step would otherwise fail on a
0.07 MiB/min "trend". A real creep still fails both: 0.5 MiB/min over 20 minutes is 10 MiB,
far outside such scatter.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

LIMIT_SHARE = 0.60  # cache-varnish must level off below this share of its memory limit
HIT_RATIO = 0.99  # every window's working-set hit ratio, after the warm-up
WINDOW_MINUTES = 20.0  # the slope is taken over the last this many minutes
HIT_WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Slope:
    minutes: float  # the window the fit covers
    points: int
    slope: float  # MiB/min, least squares
    low: float  # its 95 % confidence interval
    high: float
    noise: float  # MiB, the residuals' standard deviation
    threshold: float  # MiB/min: 2 x noise over the window
    levelled: bool


@dataclass(frozen=True)
class HitWindow:
    start: float  # seconds
    end: float
    hits: int
    misses: int
    other: int  # non-200 answers

    @property
    def ratio(self) -> float:
        """HITs among the answered; 0 when none was (the client stalled: nothing hit)."""
        served = self.hits + self.misses
        return self.hits / served if served else 0.0


@dataclass(frozen=True)
class Verdict:
    passed: bool
    slope: Slope
    final_mib: float
    peak_mib: float  # the highest sample in the slope's window
    limit_mib: float
    hit_ratio: float  # all working-set requests after the warm-up
    lowest_window: float  # the worst window's hit ratio after the warm-up
    errors: int
    reasons: list[str] = field(default_factory=list)  # why it failed; empty when it passed


def t_975(df: int) -> float:
    """Student's t 97.5 % quantile by its Cornish-Fisher expansion around the normal's 1.96,
    within 1 % of the table from 5 degrees of freedom on (the soak fits ~120 points; no SciPy
    for one number)."""
    if df <= 0:
        return math.inf
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def slope(points: Sequence[tuple[float, float]], window: float = WINDOW_MINUTES) -> Slope:
    """The slope of (minutes, MiB) over the last `window` minutes and whether it is levelled."""
    if not points:
        raise ValueError("no samples")
    end = points[-1][0]
    tail = [(x, y) for x, y in points if x >= end - window]
    if len(tail) < 3:
        raise ValueError(f"{len(tail)} samples in the last {window} minutes: 3 needed")
    xs, ys = zip(*tail, strict=True)
    fit = statistics.linear_regression(xs, ys)
    residuals = [y - (fit.slope * x + fit.intercept) for x, y in tail]
    df = len(tail) - 2
    noise = math.sqrt(sum(r * r for r in residuals) / df) if df else 0.0
    mean_x = statistics.fmean(xs)
    spread = sum((x - mean_x) ** 2 for x in xs)
    error = noise / math.sqrt(spread) if spread else math.inf
    half = t_975(df) * error
    span = max(xs) - min(xs)
    threshold = 2 * noise / span if span else math.inf
    levelled = fit.slope - half <= 0 <= fit.slope + half or abs(fit.slope) < threshold
    return Slope(round(span, 2), len(tail), fit.slope, fit.slope - half, fit.slope + half,
                 noise, threshold, levelled)  # fmt: skip


def hit_windows(working: Sequence[tuple[float, int, int, int]],
                every: float = HIT_WINDOW_SECONDS) -> list[HitWindow]:  # fmt: skip
    """Per-window counts from running totals (seconds, hits, misses, other), `every` seconds
    apart at least (the last window may be shorter; the totals arrive at sample times)."""
    windows: list[HitWindow] = []
    if not working:
        return windows
    start = working[0]
    for point in working[1:]:
        if point[0] - start[0] >= every or point is working[-1]:
            windows.append(HitWindow(start[0], point[0], point[1] - start[1],
                                     point[2] - start[2], point[3] - start[3]))  # fmt: skip
            start = point
    return windows


def verdict(
    footprint: Sequence[tuple[float, float]],
    limit_mib: float,
    working: Sequence[tuple[float, int, int, int]],
    errors: int,
    *,
    warmup: float = 0.0,
    window: float = WINDOW_MINUTES,
) -> Verdict:
    """Pass when the footprint (minutes, MiB) levels off below LIMIT_SHARE of the limit, every
    working-set window (running totals at seconds) after `warmup` seconds hits HIT_RATIO, and
    there are no errors. A window in which nothing was answered fails too."""
    fit = slope(footprint, window)
    end = footprint[-1][0]
    peak = max(y for x, y in footprint if x >= end - window)
    final = footprint[-1][1]
    reasons = []
    if not fit.levelled:
        trend = "still growing" if fit.slope > 0 else "still falling"
        reasons.append(f"{trend}: {fit.slope:+.3f} MiB/min over the last {fit.minutes} "
                       f"min (95 % CI {fit.low:+.3f}..{fit.high:+.3f}, noise threshold "
                       f"{fit.threshold:.3f})")  # fmt: skip
    if peak >= LIMIT_SHARE * limit_mib:
        reasons.append(
            f"{peak:.1f} MiB is {100 * peak / limit_mib:.0f} % of the "
            f"{limit_mib:.0f} MiB limit (at most {100 * LIMIT_SHARE:.0f} %)"
        )
    windows = [w for w in hit_windows(working) if w.start >= warmup]
    hits = sum(w.hits for w in windows)
    served = hits + sum(w.misses for w in windows)
    ratio = hits / served if served else float("nan")
    lowest = min((w.ratio for w in windows), default=0.0)
    if not windows or served == 0:
        reasons.append("no working-set requests were answered after the warm-up")
    elif lowest < HIT_RATIO:
        bad = sum(1 for w in windows if w.ratio < HIT_RATIO)
        reasons.append(f"{bad} of {len(windows)} working-set windows below "
                       f"{100 * HIT_RATIO:.0f} % hits (lowest {100 * lowest:.2f} %)")  # fmt: skip
    if errors:
        reasons.append(f"{errors} errors (non-2xx or socket errors)")
    return Verdict(not reasons, fit, final, peak, limit_mib, ratio, lowest, errors, reasons)
