"""Honest statistics over aggregated rows: Wilson intervals, Spearman with ties, logistic regression.

All functions take grouped data ((value, converted, count) rows), so exact
results come from ClickHouse aggregates without moving every observation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MIN_OBSERVATIONS = 30  # below this a rate or a correlation is reported as "too few"
Z95 = 1.959963984540054


def wilson(successes: int, n: int) -> tuple[float, float] | None:
    """The Wilson score 95% interval of a proportion; None without observations."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def spearman(groups: Sequence[tuple[float, int, int]]) -> float | None:
    """Spearman's rho between a metric and a 0/1 outcome, from (value, outcome, count) groups, with tied ranks."""
    n = sum(c for _, _, c in groups)
    if n < MIN_OBSERVATIONS:
        return None
    by_value: dict[float, list[int]] = {}
    for value, outcome, count in groups:
        entry = by_value.setdefault(value, [0, 0])
        entry[0] += count
        entry[1] += count * outcome
    successes = sum(s for _, s in by_value.values())
    if successes in (0, n) or len(by_value) < 2:
        return None
    # Ranks of x (averaged over ties); y is 0/1 so its ranks are two averaged values.
    rank_y0, rank_y1 = (n - successes + 1) / 2, (n - successes) + (successes + 1) / 2
    mean = (n + 1) / 2
    cov = var_x = 0.0
    below = 0
    for value in sorted(by_value):
        count, ones = by_value[value]
        rank_x = below + (count + 1) / 2
        below += count
        dx = rank_x - mean
        cov += dx * (ones * (rank_y1 - mean) + (count - ones) * (rank_y0 - mean))
        var_x += count * dx * dx
    var_y = successes * (rank_y1 - mean) ** 2 + (n - successes) * (rank_y0 - mean) ** 2
    if var_x == 0 or var_y == 0:
        return None
    return cov / math.sqrt(var_x * var_y)


def logistic_odds_ratio(groups: Sequence[tuple[float, int, int]], scale: float = 1.0) -> dict[str, float] | None:
    """Odds ratio per ``scale`` units of the metric (e.g. 1000 ms = per second) with its 95% interval.

    Maximum likelihood by Newton-Raphson on grouped data (exact, not SGD).
    """
    n = sum(c for _, _, c in groups)
    successes = sum(c * y for _, y, c in groups)
    if n < MIN_OBSERVATIONS or successes in (0, n):
        return None
    xs = [(v / scale, y, c) for v, y, c in groups]
    b0, b1 = math.log(successes / (n - successes)), 0.0
    info11 = 0.0
    for _ in range(50):
        g0 = g1 = h00 = h01 = h11 = 0.0
        for x, y, c in xs:
            z = max(-30.0, min(30.0, b0 + b1 * x))
            p = 1 / (1 + math.exp(-z))
            g0 += c * (y - p)
            g1 += c * (y - p) * x
            w = c * p * (1 - p)
            h00 += w
            h01 += w * x
            h11 += w * x * x
        det = h00 * h11 - h01 * h01
        if det <= 1e-12:
            return None
        step0 = (h11 * g0 - h01 * g1) / det
        step1 = (-h01 * g0 + h00 * g1) / det
        b0, b1 = b0 + step0, b1 + step1
        info11 = h00 / det  # variance of b1
        if abs(step0) < 1e-10 and abs(step1) < 1e-10:
            break
    se = math.sqrt(max(info11, 0.0))
    return {
        "odds_ratio": math.exp(b1),
        "ci95": [math.exp(b1 - Z95 * se), math.exp(b1 + Z95 * se)],  # type: ignore[dict-item]
        "coefficient": b1,
    }
