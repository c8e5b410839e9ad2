"""The two-sided Student t interval of the CLI's last line (the best trial's test score across seeds).

analysis/stats.py computes the report's intervals, but the experiments side may not import the
analysis (tests/test_structure.py) and scipy is not a runtime dependency: this is the same closed
form, kept small; tests/test_search.py checks it against scipy.stats.
"""
from __future__ import annotations

import math
import statistics


def central_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df >= 1 (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    total, term = 1.0, 1.0
    if df % 2 == 0:
        for k in range(1, (df - 2) // 2 + 1):
            term *= (2 * k - 1) / (2 * k) * cos2
            total += term
        return math.sin(theta) * total
    for k in range(1, (df - 3) // 2 + 1):
        term *= (2 * k) / (2 * k + 1) * cos2
        total += term
    extra = math.sin(theta) * math.sqrt(cos2) * total if df > 1 else 0.0
    return 2 / math.pi * (theta + extra)


def t_critical(df: int, level: float = 0.95) -> float:
    """The t with P(|T| <= t) = level, by bisection (the mass grows with t)."""
    if df > 100_000:  # the series has df/2 terms; the normal agrees to ~1e-5 there
        return statistics.NormalDist().inv_cdf(0.5 + level / 2)
    lo, hi = 0.0, 1.0
    while central_mass(hi, df) < level:
        lo, hi = hi, hi * 2
    while hi - lo > 1e-12 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if central_mass(mid, df) < level else (lo, mid)
    return (lo + hi) / 2


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """(low, high) of the mean of two or more independent values."""
    n, mean = len(values), statistics.fmean(values)
    half = t_critical(n - 1, level) * statistics.stdev(values) / math.sqrt(n)
    return mean - half, mean + half
