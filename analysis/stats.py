"""Seed-level statistics on plain numpy arrays: Student t intervals and p values, paired effects
with the seed as the unit of inference, and Holm's correction for a table of comparisons.

Why the seed. Runs of one seed share their batches, their initialisation and their evaluation
windows, so the runs of one seed in different settings of the other grid axes are not independent
draws: only the seeds are. A comparison that pools settings therefore averages each seed's paired
differences first and takes the t interval over those seed means (df = seeds − 1). On a complete
seeds × settings block the seed means are independent and identically distributed whatever the
correlation between one seed's settings (a seed × variant interaction shared by all of them, for
one), so under normality this is an exact test of the setting-averaged effect, with no mixed
model to fit; averaging first is also what makes it fast.

Why Holm. A table asks several questions at once; with m comparisons at 5% each, the chance that
at least one null comparison says "yes" grows to 1 − 0.95^m (for independent ones). Holm's step-down
correction keeps that family-wise chance at 5% whatever the dependence between the comparisons
(they share a baseline).

These functions take arrays and are what the report's pandas tables call (analysis/effects.py), so
the calibration test (tests/test_calibration.py) exercises the same code on thousands of simulated
experiments in a few seconds. scipy is not a runtime dependency; tests/test_stats.py checks every
quantile, p value and interval here against scipy.stats.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import numpy as np

ALPHA = 0.05          # every verdict: two-sided 95% intervals, family-wise 5%


class MeanCI(NamedTuple):
    n: int
    mean: float
    std: float
    low: float
    high: float


class SeedEffect(NamedTuple):
    """A paired comparison with the seed as the unit: the t interval over per-seed mean Δ."""

    n_seeds: int          # seeds that enter (a complete block; see seed_block)
    n_settings: int       # settings of the other axes each seed mean averages over
    mean: float           # mean over seeds of each seed's mean Δ
    std: float            # sample std of the seed means (NaN with one seed)
    low: float            # two-sided 95% t interval (NaN with fewer than two seeds)
    high: float
    df: int               # n_seeds − 1
    p: float              # two-sided p of H0: mean Δ = 0 (NaN with fewer than two seeds)
    seeds: np.ndarray     # bool per row of the Δ matrix: the seeds that entered
    settings: np.ndarray  # bool per column: the settings that entered


# ---------------------------------------------------------------------------------------------
# Student t for integer degrees of freedom

def _t_central_mass(t: float, df: int) -> float:
    """P(|T| <= t) for integer df, by the closed-form series of Abramowitz & Stegun 26.7.3-4."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        # even: sin θ · Σ_{k=0}^{(df-2)/2} [(1·3···(2k-1)) / (2·4···2k)] cos^{2k} θ
        total, term = 1.0, 1.0
        for k in range(1, (df - 2) // 2 + 1):
            term *= (2 * k - 1) / (2 * k) * cos2
            total += term
        return sin * total
    if df == 1:
        return 2 * theta / math.pi
    # odd: (2/π)[θ + sin θ cos θ · Σ_{k=0}^{(df-3)/2} [(2·4···2k)/(3·5···(2k+1))] cos^{2k} θ]
    total, term = 1.0, 1.0
    for k in range(1, (df - 3) // 2 + 1):
        term *= (2 * k) / (2 * k + 1) * cos2
        total += term
    return 2 / math.pi * (theta + sin * math.sqrt(cos2) * total)


def _normal_central_mass(z: float, _df: int = 0) -> float:
    return math.erf(z / math.sqrt(2))


def _central_mass(t: float, df: int) -> float:
    # The series has df/2 terms; past 1e5 the t and the normal agree to ~1e-5 anyway.
    return _t_central_mass(t, df) if df <= 100_000 else _normal_central_mass(t)


def _check_df(df: Any) -> int:
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df}")
    return int(df)


@functools.lru_cache(maxsize=1024)
def t_quantile(p: float, df: int) -> float:
    """Inverse CDF of Student's t: the t with P(T <= t) = p, for integer df >= 1."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    df = _check_df(df)
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    target = 2 * p - 1                    # central mass between -t and t
    lo, hi = 0.0, 1.0
    while _central_mass(hi, df) < target:
        lo, hi = hi, hi * 2
    for _ in range(200):                  # bisection: the mass is monotone in t
        mid = (lo + hi) / 2
        if _central_mass(mid, df) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return (lo + hi) / 2


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with integer df >= 1 (t = ±inf gives 0)."""
    df = _check_df(df)
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return min(1.0, max(0.0, 1.0 - _central_mass(abs(t), df)))


# ---------------------------------------------------------------------------------------------
# One sample of independent values

def _t_test(x: np.ndarray, level: float) -> tuple[float, float, float, float, float]:
    """mean, std, low, high, p of the finite 1-D sample x (len >= 2)."""
    n = len(x)
    mean, std = float(x.mean()), float(x.std(ddof=1))
    se = std / math.sqrt(n)
    half = t_quantile(0.5 + level / 2, n - 1) * se
    if se > 0:
        p = t_two_sided_p(mean / se, n - 1)
    else:                                 # every value equal: a point interval
        p = 1.0 if mean == 0 else 0.0
    return mean, std, mean - half, mean + half, p


def mean_ci(values: Any, level: float = 1 - ALPHA) -> MeanCI:
    """n, mean, sample std and two-sided Student t interval of the finite values given."""
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return MeanCI(0, math.nan, math.nan, math.nan, math.nan)
    if n == 1:                            # one value: no spread, so no interval
        return MeanCI(1, float(x[0]), math.nan, math.nan, math.nan)
    mean, std, low, high, _ = _t_test(x, level)
    return MeanCI(n, mean, std, low, high)


# ---------------------------------------------------------------------------------------------
# Paired effects with the seed as the unit

def seed_block(present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The complete seeds × settings block a comparison uses, from a (seeds, settings) mask of the
    pairs that exist (a missing pair: a run that diverged, failed or has not finished).

    Each seed mean must average the same settings, or the seeds would estimate different things.
    Two complete blocks are candidates: every setting with the seeds that have them all, or every
    seed (that has any pair) with the settings that have them all. The larger one (more pairs) is
    used; on a tie the one with more seeds, since the seeds are what the interval counts.
    Which block is used depends only on which runs finished, never on their values.
    """
    present = np.asarray(present, dtype=bool)
    if present.all():                     # the usual case: nothing missing
        return np.ones(present.shape[0], bool), np.ones(present.shape[1], bool)
    seeds_any, settings_any = present.any(axis=1), present.any(axis=0)
    # A: all settings that occur; the seeds complete over them.
    seeds_a = seeds_any & present[:, settings_any].all(axis=1)
    a = (seeds_a, settings_any)
    # B: all seeds that occur; the settings complete over them.
    settings_b = settings_any & present[seeds_any].all(axis=0)
    b = (seeds_any, settings_b)
    size_a, size_b = seeds_a.sum() * settings_any.sum(), seeds_any.sum() * settings_b.sum()
    return a if (size_a, seeds_a.sum()) > (size_b, seeds_any.sum()) else b


def seed_level_effect(deltas: Any, level: float = 1 - ALPHA) -> SeedEffect:
    """Paired Δ as a (seeds, settings) matrix, NaN where a pair is missing -> the t interval and
    p over the seeds' mean Δ (df = seeds − 1). A 1-D input is one setting."""
    d = np.asarray(deltas, dtype=float)
    d = d[:, None] if d.ndim == 1 else d
    seeds, settings = seed_block(np.isfinite(d))
    means = d[np.ix_(seeds, settings)].mean(axis=1) if settings.any() else np.empty(0)
    n, k = len(means), int(settings.sum())
    if n == 0:
        return SeedEffect(0, k, math.nan, math.nan, math.nan, math.nan, 0, math.nan, seeds, settings)
    if n == 1:
        return SeedEffect(1, k, float(means[0]), math.nan, math.nan, math.nan, 0, math.nan,
                          seeds, settings)
    mean, std, low, high, p = _t_test(means, level)
    return SeedEffect(n, k, mean, std, low, high, n - 1, p, seeds, settings)


# ---------------------------------------------------------------------------------------------
# A table of comparisons: one family

def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p values (NaN entries are not comparisons and stay NaN; the family
    is the finite ones). Reject where adjusted p < α: family-wise error ≤ α under any dependence."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):      # smallest p first, multiplied by m, m − 1, ...
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def family_verdicts(effects: Sequence[SeedEffect], alpha: float = ALPHA
                    ) -> tuple[np.ndarray, list[bool | None]]:
    """Holm-adjusted p of every comparison of one table, and its verdict: True = the effect is
    called (adjusted p < α and the interval excludes 0), False = not, None = fewer than two seeds."""
    adjusted = holm([e.p for e in effects])
    verdicts: list[bool | None] = []
    for e, p in zip(effects, adjusted):
        if e.n_seeds < 2 or math.isnan(p):
            verdicts.append(None)
        else:
            verdicts.append(bool(p < alpha and (e.low > 0 or e.high < 0)))
    return adjusted, verdicts
