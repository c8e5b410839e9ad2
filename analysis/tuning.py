"""Each variant at its own best value of a tuned key (a spec's `tune:` block, e.g. train.lr).

An *arm* is everything a run is but the tuned value: its named variant and its values of the other
grid axes. Every arm ran every value with every seed. An arm's best value is the one with the lowest
mean validation score over the seeds, among the values where every seed finished (a value where a
seed diverged cannot be best). The best value "at the edge" is the lowest or highest value tried:
the optimum may lie outside the range.

What inference is honest here. A score of the run that made a choice is optimistic (among several
values the one picked is partly the one whose noise was favourable), so the comparison between arms
never scores a choice on what made it:
  - text: with a test text (data.test_fraction > 0) every compared score is on the test text, which
    no choice saw; without one the scores are on the validation text that chose (the report says so);
  - seeds: runs of one seed share its batches and initialisation, so a seed whose noise favoured a
    value on the validation text favours it on any text. Each seed's score is therefore its run at
    the value chosen on the *other* seeds (leave one seed out), and Δ for that seed is its arm's score
    minus the reference arm's, each at its own such value.
The seeds' Δ are then not independent (each seed's choice saw every other seed: simulated under no
difference, Student t over them said "yes" 9-16% of the time at 5%, more with more seeds), so p and
the interval come from a swap test instead (swap_effect): under "the arm makes no difference" the two
arms' runs of one seed are exchangeable, so swapping them within any set of seeds, choosing again and
recomputing the statistic gives its exact null distribution (every one of the 2^n swaps up to
SWAP_ALL_UP_TO seeds, a fixed random sample beyond). The statistic is the paired t of the Δ, not their
mean: a swap that mixes two arms whose best values differ scores some seeds far from their best, which
spreads its Δ, and |mean Δ| alone ranked such swaps above a real difference (swap_p). The 95% interval
is every shift δ of the arm's scores that the test does not reject: a constant added to all of an arm's
runs of a seed moves no choice, so each swap's t is a closed form in δ, and the interval (read on a
fine grid of δ, each end then found by bisection) is exact too, up to that search.
The smallest p is 2 / 2^n (the identity and the swap of every seed), and Holm's correction over the
arms (that of every other table, analysis/stats.py) multiplies it by up to their number, so a verdict
needs at least seeds_for_a_yes(arms compared) seeds: 6 for one, 7 for two or three, 8 for four to six.
What they estimate is the tuning procedure (pick the best of these values on the other seeds), not one
fixed value; when every leave-one-out choice is the overall best value (`stable`), it is the comparison
at the best values the table names. With one seed no seed can be left out: the choice and the score share it, and there is
no test.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.stats import ALPHA, SeedEffect, family_verdicts, mean_ci
from analysis.tables import Experiment, arm_labels, done_runs, ordered_arms

VAL, TEST = "final_val_bpb", "final_test_bpb"


def tuned_key(exp: Experiment) -> str | None:
    return (exp.tune or {}).get("key")


def arms(exp: Experiment, runs: pd.DataFrame) -> pd.Series:
    return arm_labels(exp, runs, tuned_key(exp))


def arm_order(exp: Experiment) -> list[str]:
    return ordered_arms(exp, arms(exp, exp.runs))


def has_test(exp: Experiment) -> bool:
    return TEST in exp.runs.columns and done_runs(exp)[TEST].notna().any()


def matrices(exp: Experiment, arm: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(validation, score) as seeds x values tables of one arm's finished runs (NaN where a run did
    not finish); the score is the test bpb when the experiment has a test text, else the validation's."""
    key, done = tuned_key(exp), done_runs(exp)
    mine = done[arms(exp, done) == arm] if len(done) else done
    index, columns = pd.Index(exp.seeds, name="seed"), pd.Index(exp.levels.get(key, []), name="value")

    def table(metric: str) -> pd.DataFrame:
        if mine.empty or metric not in mine.columns:
            return pd.DataFrame(np.nan, index=index, columns=columns)
        pivot = mine.pivot_table(index="seed", columns=key, values=metric, aggfunc="mean")
        return pivot.reindex(index=index, columns=columns)

    return table(VAL), table(TEST if has_test(exp) else VAL)


def choose(val: pd.DataFrame, seeds: list[int]) -> str | None:
    """The value with the lowest mean validation score over `seeds`, among those all of them finished."""
    if not seeds:
        return None
    index = int(value_choice(val.loc[seeds].to_numpy(dtype=float)))
    return None if index < 0 else str(val.columns[index])


def value_choice(val: np.ndarray) -> np.ndarray:
    """(..., seeds, values) validation scores -> (...,) the index of the value with the lowest mean
    over those seeds among the values every one of them finished (the first on a tie), -1 if none."""
    means = val.mean(axis=-2)                                                   # NaN where a seed did not finish
    finite = np.isfinite(means)
    return np.where(finite.any(axis=-1), np.where(finite, means, np.inf).argmin(axis=-1), -1)


def loo_scores(val: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(..., seeds, values) -> (..., seeds): each seed's score at the value chosen on the other seeds
    (on itself when it is the only one); NaN where there is no choice or that run did not finish."""
    n = val.shape[-2]
    out = np.full(val.shape[:-1], np.nan)
    for s in range(n):
        others = [o for o in range(n) if o != s] or [s]
        choice = value_choice(val[..., others, :])                             # (...,)
        picked = np.take_along_axis(score[..., s, :], np.maximum(choice, 0)[..., None], axis=-1)[..., 0]
        out[..., s] = np.where(choice >= 0, picked, np.nan)
    return out


def edge(exp: Experiment, value: str | None) -> str:
    """'lowest' / 'highest' when the value is an end of the numeric range tried, else ''."""
    values = numeric_values(exp)
    if value is None or values is None:
        return ""
    if values[value] == min(values.values()):
        return "lowest"
    return "highest" if values[value] == max(values.values()) else ""


def numeric_values(exp: Experiment) -> dict[str, float] | None:
    """The tuned values as numbers (level label -> float), or None when they are not all numbers."""
    try:
        return {level: float(level) for level in exp.levels.get(tuned_key(exp), [])}
    except (TypeError, ValueError):
        return None


def sensitivity(exp: Experiment, metric: str = VAL) -> pd.DataFrame:
    """Per arm and value: seeds finished, the mean and 95% t interval of `metric` over them."""
    rows = []
    for arm in arm_order(exp):
        val, score = matrices(exp, arm)
        table = val if metric == VAL else score
        for value in table.columns:
            s = mean_ci(table[value])
            rows.append({"arm": arm, "value": value, "n": s.n, "mean": s.mean, "ci_low": s.low, "ci_high": s.high})
    return pd.DataFrame(rows, columns=["arm", "value", "n", "mean", "ci_low", "ci_high"])


def best_values(exp: Experiment) -> pd.DataFrame:
    """One row per arm: its best value, where that lies, its scores there, and how stable the choice is."""
    rows = []
    for arm in arm_order(exp):
        val, score = matrices(exp, arm)
        best = choose(val, list(exp.seeds))
        loo = loo_choices(val)
        v = mean_ci(val[best]) if best is not None else mean_ci([])
        t = mean_ci(score[best]) if best is not None and has_test(exp) else mean_ci([])
        agree = sum(c == best for c in loo.values() if c is not None)
        rows.append({"arm": arm, "best": best, "edge": edge(exp, best), "n": v.n, "val_mean": v.mean,
                     "val_low": v.low, "val_high": v.high, "test_mean": t.mean, "test_low": t.low,
                     "test_high": t.high, "stable": f"{agree} of {len(loo)}" if len(loo) > 1 else "—"})
    return pd.DataFrame(rows)


def loo_choices(val: pd.DataFrame) -> dict[int, str | None]:
    """Seed -> the value chosen on the other seeds (with one seed: the value that seed chose)."""
    seeds = list(val.index)
    if len(seeds) == 1:
        return {seeds[0]: choose(val, seeds)}
    return {s: choose(val, [o for o in seeds if o != s]) for s in seeds}


def seed_scores(exp: Experiment, arm: str) -> pd.Series:
    """Seed -> that seed's score at the value chosen without it (NaN where that run did not finish)."""
    val, score = matrices(exp, arm)
    return pd.Series(loo_scores(val.to_numpy(dtype=float), score.to_numpy(dtype=float)), index=val.index)


# -- the comparison: a swap test, since each seed's choice saw the other seeds ----------------------
SWAP_ALL_UP_TO = 12   # seeds: all 2^n swaps (4,096) up to here; beyond, the identity and SWAP_SAMPLE more
SWAP_SAMPLE = 4095    # drawn with a fixed seed, so a report reads the same every time


def seeds_for_a_yes(compared: int, alpha: float = ALPHA) -> int:
    """The fewest seeds whose smallest swap p (2 / 2^n), times Holm's largest factor (the arms compared),
    is below alpha: with fewer, no comparison of the table can be called."""
    return next(n for n in range(2, 64) if max(compared, 1) * 2.0 ** (1 - n) < alpha)


def swaps(n: int) -> np.ndarray:
    """(patterns, n) bool, True = that seed's two runs swapped; row 0 is the identity."""
    if n <= SWAP_ALL_UP_TO:
        return (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1 == 1
    drawn = np.random.default_rng(0).integers(0, 2, (SWAP_SAMPLE, n)) == 1
    return np.vstack([np.zeros((1, n), bool), drawn])


def swap_effect(arm: tuple[np.ndarray, np.ndarray], reference: tuple[np.ndarray, np.ndarray],
                alpha: float = ALPHA) -> SeedEffect:
    """Mean Δ = arm − reference over seeds, each scored at its leave-one-out choice, with the swap
    test's two-sided p and the interval of shifts it does not reject (see the module docstring).
    arm, reference: (validation, score) as seeds x values arrays, NaN where a run did not finish."""
    n = arm[0].shape[0]
    swapped = swaps(n)[:, :, None]                                            # (P, n, 1)
    side = [tuple(np.where(swapped, r, a) for a, r in zip(arm, reference)),
            tuple(np.where(swapped, a, r) for a, r in zip(arm, reference))]
    deltas = loo_scores(*side[0]) - loo_scores(*side[1])                      # (P, n)
    seeds = np.isfinite(deltas[0])
    if seeds.sum() < 2:
        mean = float(deltas[0, seeds].mean()) if seeds.any() else math.nan
        return SeedEffect(int(seeds.sum()), 1, mean, math.nan, math.nan, math.nan, 0, math.nan, seeds, np.ones(1, bool))
    moments = swap_moments(deltas, np.where(swapped[:, :, 0], -1.0, 1.0))
    low, high = shift_interval(moments, alpha)
    return SeedEffect(int(seeds.sum()), 1, float(moments[1][0]), float(np.sqrt(moments[3][0])), low, high,
                      int(seeds.sum()) - 1, float(swap_p(moments, 0.0)), seeds, np.ones(1, bool))


Moments = tuple[np.ndarray, ...]  # per swap: count, mean Δ, mean sign, and Var Δ, Cov(Δ, sign), Var sign


def swap_moments(deltas: np.ndarray, signs: np.ndarray) -> Moments:
    """Per swap (row) over its finite Δ: what its paired t statistic needs at any shift δ. Testing 'the arm's
    scores are the reference's plus δ' subtracts δ from the arm's runs: a seed's Δ moves by −δ where its
    runs kept their sides (sign +1) and by +δ where they swapped (−1); no choice moves (δ is the same at
    every value), so each swap's mean and variance of Δ are quadratics in δ (t_squared)."""
    finite = np.isfinite(deltas)
    count = finite.sum(axis=1)
    d, s = np.where(finite, deltas, 0.0), np.where(finite, signs, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean, slope = d.sum(axis=1) / count, s.sum(axis=1) / count
        dc, sc = np.where(finite, d - mean[:, None], 0.0), np.where(finite, s - slope[:, None], 0.0)
        k = count - 1
        return count, mean, slope, (dc * dc).sum(axis=1) / k, (dc * sc).sum(axis=1) / k, (sc * sc).sum(axis=1) / k


def t_squared(moments: Moments, delta: np.ndarray) -> np.ndarray:
    """(..., P): each swap's paired t statistic, squared, at each shift δ (inf where its Δ do not vary but
    their mean is not 0, and for a swap with fewer than 2 seeds: such a swap always reaches the observed)."""
    count, mean, slope, var, cov, var_sign = moments
    d = np.asarray(delta, dtype=float)[..., None]
    num = count * (mean - d * slope) ** 2
    spread = np.maximum(var - 2 * d * cov + d * d * var_sign, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t2 = np.where(spread > 0, num / spread, np.where(num > 0, np.inf, 0.0))
    return np.where(count >= 2, t2, np.inf)


def swap_p(moments: Moments, delta: float | np.ndarray) -> np.ndarray:
    """Two-sided p of 'the arm's scores are the reference's plus delta': the share of swaps whose |t|
    reaches the observed one (row 0). The statistic is studentized: with |mean Δ|, swaps that mix two arms
    whose best values differ score some seeds far from their best, which spreads the swaps' mean Δ and hid
    real differences (8 seeds, 0.10 bpb apart at the arms' own best values: p 0.45; with t: 2 / 256)."""
    t2 = t_squared(moments, delta)
    return ((t2 >= t2[..., :1] * (1 - 1e-12)).sum(axis=-1) / t2.shape[-1])[()]


def shift_interval(moments: Moments, alpha: float) -> tuple[float, float]:
    """The shifts δ the swap test does not reject at alpha (p > alpha), as [low, high]: p read on a grid
    from 1e-4 to 1e5 standard errors either side of the mean Δ, each end then found by bisection; ±inf
    where no shift that far is rejected (too few seeds)."""
    count, mean, var = moments[0][0], moments[1][0], moments[3][0]
    se = math.sqrt(var / count) if var > 0 else max(abs(mean), 1.0) * 1e-12
    offsets = np.geomspace(1e-4, 1e5, 1201) * se
    points = np.concatenate([mean - offsets[::-1], [mean], mean + offsets])
    p = np.concatenate([swap_p(moments, chunk) for chunk in np.array_split(points, len(points) // 128 + 1)])
    kept = np.flatnonzero(p > alpha)

    def edge(inside: float, outside: float) -> float:
        for _ in range(60):
            middle = (inside + outside) / 2
            inside, outside = (middle, outside) if swap_p(moments, middle) > alpha else (inside, middle)
        return float(inside)
    low = -math.inf if kept[0] == 0 else edge(points[kept[0]], points[kept[0] - 1])
    high = math.inf if kept[-1] == len(points) - 1 else edge(points[kept[-1]], points[kept[-1] + 1])
    return low, high


def tuned_effects(exp: Experiment) -> pd.DataFrame:
    """Each arm vs the reference arm, each at its own leave-one-seed-out best value, paired by seed:
    the swap test's p and interval (swap_effect) and Holm over the arms, in the columns of
    analysis/effects.py."""
    order = arm_order(exp)
    if len(order) < 2:
        return pd.DataFrame()

    def runs(arm: str) -> tuple[np.ndarray, np.ndarray]:
        return tuple(m.to_numpy(dtype=float) for m in matrices(exp, arm))

    reference = runs(order[0])
    rows, effects = [], []
    for arm in order[1:]:
        e = swap_effect(runs(arm), reference)
        effects.append(e)
        rows.append({"comparison": f"{arm} vs {order[0]}", "n_seeds": e.n_seeds, "n_settings": 1,
                     "mean_delta": e.mean, "ci_low": e.low, "ci_high": e.high, "p": e.p, "left_out": "",
                     "unfinished": ""})
    adjusted, verdicts = family_verdicts(effects)
    for row, p, v in zip(rows, adjusted, verdicts):
        row |= {"p_holm": p, "significant": pd.NA if v is None else v}
    return pd.DataFrame(rows)
