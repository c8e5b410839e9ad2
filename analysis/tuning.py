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
The t interval over the seeds' Δ and Holm's correction over the arms are then those of every other
table (analysis/stats.py). What they estimate is the tuning procedure (pick the best of these values
on the other seeds), not one fixed value; when every leave-one-out choice is the overall best value
(`stable`), it is the comparison at the best values the table names. With one seed no seed can be
left out: the choice and the score share it, and there is no interval.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.stats import family_verdicts, mean_ci, seed_level_effect
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
    means = val.loc[seeds].mean(axis=0, skipna=False).dropna()
    return None if means.empty else str(means.idxmin())


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
    out = {s: (score.loc[s, c] if c is not None else math.nan) for s, c in loo_choices(val).items()}
    return pd.Series(out, dtype=float)


def tuned_effects(exp: Experiment) -> pd.DataFrame:
    """Each arm vs the reference arm, each at its own leave-one-seed-out best value, paired by seed:
    the t interval over seeds and Holm over the arms, in the columns of analysis/effects.py."""
    order = arm_order(exp)
    if len(order) < 2:
        return pd.DataFrame()
    reference = seed_scores(exp, order[0])
    rows, effects = [], []
    for arm in order[1:]:
        delta = (seed_scores(exp, arm) - reference).to_numpy()
        e = seed_level_effect(delta)
        effects.append(e)
        rows.append({"comparison": f"{arm} vs {order[0]}", "n_seeds": e.n_seeds, "n_settings": 1,
                     "mean_delta": e.mean, "ci_low": e.low, "ci_high": e.high, "p": e.p, "left_out": ""})
    adjusted, verdicts = family_verdicts(effects)
    for row, p, v in zip(rows, adjusted, verdicts):
        row |= {"p_holm": p, "significant": pd.NA if v is None else v}
    return pd.DataFrame(rows)
