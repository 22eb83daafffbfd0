"""Slopes of a series: least squares, Theil-Sen, and per window."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["ls_slope", "theil_sen", "window_slopes"]


def ls_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ``ys`` against ``xs``; ``None`` when undefined."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def theil_sen(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Median of the pairwise slopes (robust to a few steps and outliers)."""
    slopes = [
        (ys[j] - ys[i]) / (xs[j] - xs[i]) for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]
    ]
    return statistics.median(slopes) if slopes else None


def window_slopes(xs: Sequence[float], ys: Sequence[float], windows: int = 4) -> list[float]:
    """Least-squares slopes of ``windows`` consecutive equal slices (a curve still warming up shows
    falling slopes; a leak, steady ones)."""
    n = len(xs) // windows
    out: list[float] = []
    for w in range(windows if n >= 3 else 0):
        slope = ls_slope(xs[w * n : (w + 1) * n], ys[w * n : (w + 1) * n])
        if slope is not None:
            out.append(slope)
    return out
