"""A search's trials as Optuna scores them: the objective of each trial is the metric's mean over
its seeds, ranked in the search's direction, and only trials with every seed finished are ranked
(a trial whose second seed diverged has its first seed's score, not the trial's)."""
from __future__ import annotations

import pandas as pd

from analysis.tables import Experiment, complete_variants, done_runs


def adaptive(exp: Experiment) -> bool:
    """Whether the runs are a search's: points a sampler chose, minus the pruned, with no baseline or
    design to compare against (a grid run as a study is not one)."""
    return bool(exp.search) and exp.search.get("mode") != "grid"


def search_metric(exp: Experiment, columns) -> str:
    """The runs.csv column of the search's objective (a search may name `val_bpb` for `final_val_bpb`)."""
    metric = str((exp.search or {}).get("metric", "final_val_bpb"))
    return next((m for m in (metric, f"final_{metric}") if m in columns), "final_val_bpb")


def objectives(exp: Experiment) -> pd.Series:
    """Each complete trial's objective (by variant), best first."""
    runs = done_runs(exp)
    runs = runs[runs["variant"].isin(complete_variants(exp))]
    if "state" in runs.columns:
        runs = runs[runs["state"].fillna("COMPLETE").str.upper() == "COMPLETE"]
    metric = search_metric(exp, runs.columns)
    means = runs.dropna(subset=[metric]).groupby("variant", sort=False)[metric].mean()
    return means.sort_values(ascending=(exp.search or {}).get("direction") != "maximize", kind="stable")


def best_trial(exp: Experiment) -> pd.Series | None:
    """The finished trial with the best objective, as its first run, with `objective` = that mean."""
    runs = done_runs(exp)
    if "trial" not in runs.columns:
        return None
    ranked = objectives(exp)
    ranked = ranked[ranked.index.isin(runs.loc[runs["trial"].notna(), "variant"])]
    if ranked.empty:
        return None
    best = runs[runs["variant"] == ranked.index[0]].sort_values("seed").iloc[0].copy()
    best["objective"] = ranked.iloc[0]
    return best
