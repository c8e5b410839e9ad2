"""Comparisons between runs, paired by seed, with the seed as the unit of inference.

A factor is what a run can be compared along: the named variants (against the baseline) and each
grid axis (against its first level). A pair is two finished runs with the same seed and the same
value of every other factor (their "setting"); Δ = run − partner. The pairs of one comparison form
a seeds × settings matrix, and the comparison is the Student t interval over the seeds' mean Δ
(df = seeds − 1; analysis/stats.py says why and what happens when a pair is missing).

Every function here that returns comparisons returns one table, and a table is one family: each
row has its raw p, its Holm-adjusted p (`p_holm`) and the verdict (`significant`) read from the
adjusted p.
"""
from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from analysis.stats import SeedEffect, family_verdicts, mean_ci, seed_block, seed_level_effect
from analysis.tables import Experiment, done_runs

EFFECT_COLUMNS = ["factor", "level", "reference", "comparison", "metric", "n_seeds", "n_settings",
                  "n_pairs", "mean_delta", "std_delta", "ci_low", "ci_high", "df", "p", "p_holm",
                  "significant", "left_out", "unfinished"]


class Factor(NamedTuple):
    name: str             # "variant" or a dotted axis key
    column: str           # the runs column holding its level
    reference: str        # the baseline level
    levels: list[str]     # all levels, reference first


def factors(exp: Experiment) -> list[Factor]:
    """What a run can be compared along: named variants (vs the baseline) and each grid axis
    (vs its first level). Variant names built from axis values are not a factor of their own."""
    out = []
    if exp.variants:
        ref = next((b for b in (exp.baseline, "baseline") if b in exp.variants), exp.variants[0])
        levels = [ref] + [v for v in exp.variants if v != ref]
        out.append(Factor("variant", "named_variant", ref, levels))
    for axis in exp.axes:
        if exp.levels.get(axis):
            out.append(Factor(axis, axis, exp.levels[axis][0], exp.levels[axis]))
    return out


def comparison_label(factor: str, level: str, reference: str) -> str:
    if factor == "variant":
        return f"{level} vs {reference}"
    return f"{factor}: {level} vs {reference}"


def setting_label(values: Any, others: list[Factor]) -> str:
    """('b1',) with [model.norm] -> 'model.norm=b1'; '' when there are no other factors."""
    return ", ".join(f"{f.name}={v}" for f, v in zip(others, values))


def _settings(runs: pd.DataFrame, others: list[Factor]) -> list[str]:
    values = runs[[f.column for f in others]].itertuples(index=False, name=None)
    return [setting_label(v, others) for v in values]


# ---------------------------------------------------------------------------------------------
# Pairs

def _pairs(done: pd.DataFrame, column: str, others: list[Factor], level: str, reference: str,
           metric: str) -> pd.DataFrame:
    """Runs at `level` of `column`, each with its partner at `reference` (same seed, same setting
    of the `others`): columns seed, setting, run_id, ref_run_id, delta."""
    keys = ["seed"] + [f.column for f in others]
    base = done[done[column] == reference][keys + ["run_id", metric]].drop_duplicates(subset=keys)
    merged = done[done[column] == level][keys + ["run_id", metric]].merge(
        base, on=keys, suffixes=("", "_ref"))
    return pd.DataFrame({"seed": merged["seed"], "setting": _settings(merged, others),
                         "run_id": merged["run_id"], "ref_run_id": merged["run_id_ref"],
                         "delta": merged[metric] - merged[f"{metric}_ref"]})


def paired_deltas(exp: Experiment, metric: str = "final_val_bpb") -> pd.DataFrame:
    """One row per pair: a finished run and its partner at the factor's reference level, with
    the same seed and the same setting of the other factors; Δ = run − partner. Runs whose
    partner did not finish have no pair."""
    done = done_runs(exp).dropna(subset=[metric])
    all_factors = factors(exp)
    frames = []
    for factor in all_factors:
        others = [f for f in all_factors if f is not factor]
        for level in factor.levels[1:]:
            pairs = _pairs(done, factor.column, others, level, factor.reference, metric)
            frames.append(pairs.assign(factor=factor.name, level=level,
                                       reference=factor.reference))
    cols = ["factor", "level", "reference", "seed", "setting", "run_id", "ref_run_id", "delta"]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def _seed_matrix(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    """seed × setting table of `value` (NaN where a seed has no value in a setting)."""
    if frame.empty:
        return pd.DataFrame()
    return frame.pivot_table(index="seed", columns="setting", values=value, aggfunc="mean")


# ---------------------------------------------------------------------------------------------
# One comparison, one family

def _planned_settings(exp: Experiment, column: str, levels: tuple[str, str], others: list[Factor]) -> list[str]:
    """The settings of the `others` that the plan has runs of at either of `levels` of `column`."""
    runs = exp.runs[exp.runs[column].isin(levels)] if column in exp.runs.columns else exp.runs.iloc[0:0]
    return list(dict.fromkeys(_settings(runs, others))) if others else []


def _comparison(factor: str, level: str, reference: str, label: str, metric: str,
                pairs: pd.DataFrame, planned: list[str] = ()) -> tuple[dict[str, Any], SeedEffect]:
    """One row of a table; a `planned` setting with no pair at all is named in `left_out` with the others."""
    matrix = _seed_matrix(pairs, "delta")
    if not matrix.empty:
        matrix = matrix.reindex(columns=list(dict.fromkeys([*matrix.columns, *planned])))
    e = seed_level_effect(matrix.to_numpy())
    row = {"factor": factor, "level": level, "reference": reference, "comparison": label,
           "metric": metric, "n_seeds": e.n_seeds, "n_settings": e.n_settings,
           "n_pairs": e.n_seeds * e.n_settings, "mean_delta": e.mean, "std_delta": e.std,
           "ci_low": e.low, "ci_high": e.high, "df": e.df, "p": e.p,
           "left_out": _left_out(matrix, e)}
    return row, e


def _left_out(matrix: pd.DataFrame, e: SeedEffect) -> str:
    """The seeds and settings with pairs that did not enter the complete block ('' if none)."""
    if matrix.empty:
        return ""
    has_pairs = matrix.notna().any(axis=1).to_numpy()
    seeds = [f"seed {int(s)}" for s, used, any_ in zip(matrix.index, e.seeds, has_pairs)
             if any_ and not used]
    settings = [str(c) for c, used in zip(matrix.columns, e.settings) if not used]
    return "; ".join(seeds + settings)


def unfinished(exp: Experiment, column: str, levels: tuple[str, str], others: list[Factor],
               setting: str | None = None) -> str:
    """The runs at either of `levels` of `column` (in `setting` of the others, if given) without a
    final score, e.g. 'post seed 2 diverged; post seed 1 pending' ('' if none). Their seeds have no
    pair, so the comparison is of the seeds that finished: a level that diverges more often can look
    better, and a row with runs still pending or running changes when they finish."""
    runs = exp.runs
    if column not in runs.columns:
        return ""
    ended = runs[(runs["status"] != "done") & runs[column].isin(levels)]
    if setting is not None and len(ended):
        ended = ended[[s == setting for s in _settings(ended, others)]]
    return "; ".join(f"{r.variant} seed {int(r.seed)} {r.status}" for r in ended.itertuples())


def _family(results: list[tuple[dict[str, Any], SeedEffect]],
            columns: list[str] = EFFECT_COLUMNS) -> pd.DataFrame:
    """The rows of one table, with Holm-adjusted p values and verdicts over all of them."""
    adjusted, verdicts = family_verdicts([e for _, e in results])
    rows = [{**row, "p_holm": p, "significant": pd.NA if v is None else v}
            for (row, _), p, v in zip(results, adjusted, verdicts)]
    return pd.DataFrame(rows, columns=columns)


def paired_effects(exp: Experiment, metric: str = "final_val_bpb") -> pd.DataFrame:
    """Per non-reference level of each factor, pooled over the settings of the other factors:
    mean Δ over seeds (each seed's mean Δ first), 95% CI, p, Holm-adjusted p and verdict.
    Negative Δ means lower loss than the reference."""
    deltas = paired_deltas(exp, metric)
    results, all_factors = [], factors(exp)
    for factor in all_factors:
        others = [f for f in all_factors if f is not factor]
        for level in factor.levels[1:]:
            d = deltas[(deltas["factor"] == factor.name) & (deltas["level"] == level)]
            row, e = _comparison(factor.name, level, factor.reference,
                                 comparison_label(factor.name, level, factor.reference), metric, d,
                                 _planned_settings(exp, factor.column, (level, factor.reference), others))
            results.append(({**row, "unfinished": unfinished(exp, factor.column, (level, factor.reference), [])}, e))
    return _family(results)


def simple_effects(exp: Experiment, metric: str = "final_val_bpb") -> pd.DataFrame:
    """The paired effects within each setting of the other factors (one row per factor level and
    setting; the seed is still the unit): where factors interact, a pooled effect can be lost in
    the spread between settings while one setting's own effect is clear. The whole table is one
    family. Empty with fewer than two factors."""
    all_factors = factors(exp)
    cols = EFFECT_COLUMNS[:3] + ["setting"] + EFFECT_COLUMNS[3:]
    if len(all_factors) < 2:
        return pd.DataFrame(columns=cols)
    deltas = paired_deltas(exp, metric)
    results = []
    for factor in all_factors:
        others = [f for f in all_factors if f is not factor]
        for level in factor.levels[1:]:
            d = deltas[(deltas["factor"] == factor.name) & (deltas["level"] == level)]
            for setting in itertools.product(*(f.levels for f in others)):
                where = setting_label(setting, others)
                label = f"{comparison_label(factor.name, level, factor.reference)} (at {where})"
                row, e = _comparison(factor.name, level, factor.reference, label, metric,
                                     d[d["setting"] == where])
                results.append(({**row, "setting": where, "unfinished": unfinished(
                    exp, factor.column, (level, factor.reference), others, where)}, e))
    return _family(results, cols)


def consecutive_effects(exp: Experiment, metric: str = "final_val_bpb") -> pd.DataFrame:
    """Each named variant against the one listed before it (the steps of a ladder), paired by
    seed and pooled over any grid axes like paired_effects. Empty without two named variants."""
    done = done_runs(exp).dropna(subset=[metric])
    others = [f for f in factors(exp) if f.name != "variant"]
    results = []
    for before, after in zip(exp.variants, exp.variants[1:]):
        pairs = _pairs(done, "named_variant", others, after, before, metric)
        row, e = _comparison("variant", after, before, comparison_label("variant", after, before), metric, pairs,
                             _planned_settings(exp, "named_variant", (after, before), others))
        results.append(({**row, "unfinished": unfinished(exp, "named_variant", (after, before), others)}, e))
    return _family(results)


# ---------------------------------------------------------------------------------------------
# Marginal means (main effects)

def seed_means(exp: Experiment, column: str, metric: str = "final_val_bpb", common: bool = False) -> pd.DataFrame:
    """Per level of `column` and seed: that seed's mean of `metric` over the settings of the other
    factors (a complete seeds × settings block per level, as for comparisons; with `common`, one block
    for every level of the column, so that the levels average the same seeds and the same settings).
    Columns: `column`, seed, `metric`; `.attrs["left_out"]` names the seeds and settings the common
    block left out. Intervals over these rows are intervals over seeds."""
    done = done_runs(exp).dropna(subset=[metric, column])
    others = [f for f in factors(exp) if f.column != column]
    matrices = {level: _seed_matrix(runs.assign(setting=_settings(runs, others)), metric)
                for level, runs in done.groupby(column, sort=False)}
    left_out = ""
    if common and matrices:  # one mask: the pairs every level with a finished run has
        seeds = sorted(set().union(*(m.index for m in matrices.values())))
        settings = sorted(set().union(*(m.columns for m in matrices.values())))
        matrices = {lv: m.reindex(index=seeds, columns=settings) for lv, m in matrices.items()}
        keep_seeds, keep_settings = seed_block(np.logical_and.reduce([m.notna().to_numpy() for m in matrices.values()]))
        gone = [f"seed {int(x)}" for x in exp.seeds if x not in set(np.asarray(seeds)[keep_seeds])]
        left_out = "; ".join(gone + [str(c) for c, kept in zip(settings, keep_settings) if not kept and c])
        matrices = {lv: m.loc[keep_seeds, keep_settings] for lv, m in matrices.items()}
    frames = []
    for level, matrix in matrices.items():
        if not common:
            seeds_mask, settings_mask = seed_block(matrix.notna().to_numpy())
            matrix = matrix.loc[seeds_mask, settings_mask]
        means = matrix.mean(axis=1)
        frames.append(pd.DataFrame({column: level, "seed": means.index, metric: means.to_numpy()}))
    out = (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[column, "seed", metric]))
    out.attrs["left_out"] = left_out
    return out


def main_effects(exp: Experiment, metric: str = "final_val_bpb") -> pd.DataFrame:
    """Marginal mean of `metric` at each level of each axis: the mean over seeds of each seed's mean
    over the other factors, with the 95% t interval over seeds (`n` = seeds). Every level of an axis
    averages the same seeds and the same settings of the other factors (one complete block for the
    axis), so a level that lost its hardest seed or setting does not look better for it; `left_out`
    names what the block left out."""
    rows = []
    for axis in exp.axes:
        means = seed_means(exp, axis, metric, common=True)
        for level in exp.levels.get(axis, []):
            s = mean_ci(means.loc[means[axis] == level, metric])
            rows.append({"axis": axis, "level": level, "n": s.n, "mean": s.mean, "std": s.std,
                         "ci_low": s.low, "ci_high": s.high, "left_out": means.attrs["left_out"]})
    return pd.DataFrame(rows, columns=["axis", "level", "n", "mean", "std", "ci_low", "ci_high", "left_out"])
