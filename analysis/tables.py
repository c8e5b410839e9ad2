"""Load an experiment folder into pandas tables and compute seed statistics.

Everything here works from the layout in results/README.md: ``runs.csv`` is the primary table,
``experiment.json`` says what was planned (axes, variants, seeds, baseline), each run folder adds
its ``metrics.csv`` (curves) and ``summary.json`` (fills columns ``runs.csv`` lacks).

Statistics only ever use runs whose status is ``done``: a diverged or unfinished run has no
meaningful final loss. Confidence intervals are two-sided 95% Student t intervals over seeds
(analysis/stats.py); with one value there is no interval and the bounds are NaN rather than
invented. Comparisons between runs live in analysis/effects.py.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.stats import mean_ci
from experiments import metrics
from experiments.metrics import LABELS, UNITS  # noqa: F401  (plots and report read them from here)
from experiments.plan_fields import plan_problem

TEST_SCORES = ("final_test_loss", "final_test_bpb")  # summary.json's, with data.test_fraction > 0

NUMERIC = ("seed", "trial", metrics.PARAMS, metrics.FLOPS_PER_TOKEN, metrics.TOKENS_SEEN, metrics.BYTES_SEEN,
           metrics.FLOPS_SEEN, *metrics.LOSSES, metrics.TOKENS_PER_S, metrics.WALL_S, metrics.TRAIN_S,
           *TEST_SCORES, "vocab_size", metrics.TRAINING_RULES)
# Columns a runs.csv row may lack (older runner, run still going; the test scores, which runs.csv
# leaves out so that nothing is chosen on them) that summary.json can supply.
FROM_SUMMARY = NUMERIC[2:] + ("tokenizer", "corpus")
COST_COLUMNS = metrics.COSTS
# What the curves can be drawn against (metrics.csv columns), by the budget kind that counts it.
X_AXES = {metrics.TOKENS: "tokens seen", metrics.BYTES: "bytes of training text seen",
          metrics.FLOPS: "training FLOPs"}
BUDGET_AXIS = {"steps": metrics.TOKENS, "tokens": metrics.TOKENS, "tokens_per_param": metrics.TOKENS,
               "bytes": metrics.BYTES, "flops": metrics.FLOPS}
REQUIRED = ("run_id", "variant", "seed", "status")
METRICS_REQUIRED = (metrics.STEP, metrics.TOKENS)   # what every metrics.csv has had; the curves are drawn against them


class ExperimentError(ValueError):
    """Input that cannot be analysed; the message is written for the person who ran the command."""


@dataclass
class Experiment:
    """One results/<experiment>/ folder, loaded."""

    path: Path
    name: str
    axes: list[str]                 # dotted grid keys, spec order
    variants: list[str]             # named variants from the spec ([] when it has none)
    seeds: list[int]
    baseline: str | None            # experiment.json's baseline variant, if any
    search: dict[str, Any] | None   # {"storage", "study_name", "metric", "direction"} or None
    planned: int                    # N: runs in the plan (or seen, if more)
    runs: pd.DataFrame              # runs.csv, axis columns as strings
    metrics: pd.DataFrame           # all metrics.csv rows, tidy, with run_id/variant/seed/status
    levels: dict[str, list[str]] = field(default_factory=dict)  # axis -> levels, spec order
    variant_order: list[str] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)          # spec.yaml ({} if absent)
    budget: dict[str, Any] = field(default_factory=dict)        # the spec's train budget: {kind: amount}
    tune: dict[str, Any] | None = None                          # {"key", "values"} of a tune: block
    scale: dict[str, Any] | None = None                         # {"axis", "keys", "sizes"} of a scale: block
    unplanned: list[str] = field(default_factory=list)          # run folders an earlier version of the spec made

    @property
    def budget_kind(self) -> str:
        return next(iter(self.budget), "steps")

    @property
    def x_axis(self) -> str:
        """The metrics.csv column the budget counts: the curves' x-axis."""
        return BUDGET_AXIS.get(self.budget_kind, metrics.TOKENS)


# ---------------------------------------------------------------------------------------------
# Loading

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # bad JSON, or bytes that are not UTF-8
        raise ExperimentError(f"{path} is not valid JSON ({str(err)[:200]}).") from None


def _read_summary(path: Path) -> dict[str, Any]:
    """A run's summary.json, or {} when it is missing or damaged: one broken run never stops the report."""
    try:
        summary = _read_json(path) if path.is_file() else {}
    except (ExperimentError, OSError):
        return {}
    return summary if isinstance(summary, dict) else {}


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml  # a project dependency; imported here so `tables` loads without it

    try:
        data = yaml.safe_load(path.read_text(errors="replace"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_runs_csv(path: Path) -> pd.DataFrame:
    try:
        # Everything as text first: axis values must match experiment.json's values as written
        # ("0.001", "pre"), not whatever type pandas would guess.
        runs = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ExperimentError(f"{path} is empty: not even a header row.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ExperimentError(f"{path} could not be parsed as CSV ({err}).") from None
    missing = [c for c in REQUIRED if c not in runs.columns]
    if missing:
        raise ExperimentError(f"{path} lacks the column(s) {', '.join(missing)}; expected the "
                              "columns described in results/README.md.")
    runs = runs.replace("", np.nan)
    for col in NUMERIC:
        if col in runs.columns:
            runs[col] = pd.to_numeric(runs[col], errors="coerce")
    runs["status"] = runs["status"].fillna("pending").str.strip().str.lower()
    return runs


def _fill_from_summaries(runs: pd.DataFrame, runs_dir: Path) -> pd.DataFrame:
    """Fill columns runs.csv lacks (or left empty) from each run's summary.json."""
    rows = []
    for run_id in runs["run_id"]:
        path = runs_dir / str(run_id) / "summary.json"
        summary = _read_summary(path)
        rows.append({k: summary.get(k) for k in FROM_SUMMARY})
    fill = pd.DataFrame(rows, index=runs.index, columns=list(FROM_SUMMARY))
    for col in FROM_SUMMARY:
        values = pd.to_numeric(fill[col], errors="coerce") if col in NUMERIC else fill[col]
        runs[col] = runs[col].fillna(values) if col in runs.columns else values
    return runs


def _read_metrics(runs: pd.DataFrame, runs_dir: Path) -> pd.DataFrame:
    frames = []
    for run in runs.itertuples(index=False):
        path = runs_dir / str(run.run_id) / "metrics.csv"
        if not path.is_file():
            continue
        try:                              # a damaged byte reads as U+FFFD, and its cell as NaN below;
            m = pd.read_csv(path, encoding="utf-8", encoding_errors="replace",   # a row with too many
                            on_bad_lines="skip")                                 # cells is left out
        except (pd.errors.EmptyDataError, OSError):
            continue                      # a run that has not evaluated yet has no curve
        except pd.errors.ParserError as err:
            raise ExperimentError(f"{path} could not be parsed as CSV ({str(err).strip()[:200]}); a run's "
                                  "metrics.csv is the table results/README.md describes. Restore the file, or "
                                  "delete the run's folder and run the spec again to retrain it.") from None
        missing = [c for c in METRICS_REQUIRED if c not in m.columns]
        if missing:                       # another file's header, or bytes that are no CSV at all
            header = ",".join(str(c) for c in m.columns)
            found = ("its first line is not UTF-8 text (a binary or damaged file)" if "\ufffd" in header
                     else f"its header is {header[:120]!r}{'...' if len(header) > 120 else ''}")
            raise ExperimentError(
                f"{path} lacks the column(s) {', '.join(missing)}: {found}, but a run's metrics.csv starts with "
                f"{','.join(metrics.EVAL_COLUMNS)} (results/README.md; older runs lack bytes and flops). "
                "Restore the file, or delete the run's folder and run the spec again to retrain it.")
        m = m.apply(pd.to_numeric, errors="coerce")
        if metrics.FLOPS not in m.columns:    # a run from before FLOPs were logged: tokens x FLOPs/token
            m[metrics.FLOPS] = m[metrics.TOKENS] * getattr(run, metrics.FLOPS_PER_TOKEN, np.nan)
        m.insert(0, "run_id", run.run_id)
        m.insert(1, "variant", run.variant)
        m.insert(2, "seed", run.seed)
        m.insert(3, "status", run.status)
        frames.append(m)
    cols = ["run_id", "variant", "seed", "status", *metrics.EVAL_COLUMNS]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True).reindex(columns=cols)


def _in_order(first: list[str], seen: Any) -> list[str]:
    """`first` followed by any values of `seen` it lacks, each once, in order of appearance."""
    out = list(dict.fromkeys(str(v) for v in first))
    out += [v for v in dict.fromkeys(str(s) for s in seen if pd.notna(s)) if v not in out]
    return out


def _axis_value(value: Any) -> str:
    """experiment.json axis value -> the text the runner wrote in runs.csv."""
    return value if isinstance(value, str) else str(value)


def _named_variant(label: str, variants: list[str]) -> str | None:
    """The spec's variant a run belongs to. With a grid as well, the runner labels a run
    "<variant>, <axis>=<value>, ..."; the named part comes first."""
    if label in variants:
        return label
    head = label.split(", ", 1)[0]
    return head if head in variants else None


def _infer_axes(columns: list[str]) -> list[str]:
    """Without experiment.json: the axis columns sit between `variant` and `seed`."""
    i, j = columns.index("variant"), columns.index("seed")
    return columns[i + 1:j] if i < j else []


def check_experiment_dir(path: Path | str) -> Path:
    """Cheap first check (no file is parsed): raise ExperimentError unless `path` is a folder
    with a runs.csv."""
    path = Path(path)
    if not path.exists():
        raise ExperimentError(f"{path} does not exist.")
    if not path.is_dir():
        raise ExperimentError(f"{path} is not a folder.")
    if not (path / "runs.csv").is_file():
        raise ExperimentError(f"{path} has no runs.csv, so it is not an experiment folder "
                              "written by `python -m experiments.run` (or no run has started "
                              "yet).")
    return path


def load_experiment(path: Path | str) -> Experiment:
    """Read results/<experiment>/; raise ExperimentError when it is not an experiment folder."""
    path = check_experiment_dir(path)
    runs = _read_runs_csv(path / "runs.csv")
    plan_path = path / "experiment.json"
    plan = _read_json(plan_path) if plan_path.is_file() else {}
    if not isinstance(plan, dict):
        raise ExperimentError(f"{plan_path} should hold a JSON object.")
    if why := plan_problem(plan):
        raise ExperimentError(f"{plan_path}: {why}. `python -m experiments.run` writes it: run the experiment's "
                              "spec again to rewrite it (finished runs are kept, not trained again).")

    axes = [str(a) for a in plan.get("axes") or _infer_axes(list(runs.columns))]
    for axis in axes:
        if axis not in runs.columns:
            runs[axis] = np.nan
    planned_runs = plan.get("runs") or []
    levels = {a: _in_order([_axis_value(r.get("axes", {}).get(a)) for r in planned_runs
                            if a in r.get("axes", {})], runs[a]) for a in axes}
    variants = [str(v) for v in plan.get("variants") or []]
    # Run labels in plan order (the runner writes the plan in spec order, seed 0 first).
    variant_order = _in_order([str(r.get("variant")) for r in planned_runs], runs["variant"])
    seeds = [int(s) for s in plan.get("seeds") or sorted(runs["seed"].dropna().unique())]
    if variants:
        runs["named_variant"] = [_named_variant(str(v), variants) for v in runs["variant"]]
    search = plan.get("search")
    if search is True:                    # results/README.md's older form: a bare flag
        search = {"metric": "final_val_bpb", "direction": "minimize"}
    runs = _fill_from_summaries(runs, path / "runs")
    runs["warmup_share"] = runs["run_id"].map({r.get("run_id"): r["warmup"] / r["steps"] for r in planned_runs
                                               if isinstance(r.get("warmup"), (int, float)) and r.get("steps")})
    spec = _read_yaml(path / "spec.yaml") if (path / "spec.yaml").is_file() else {}
    return Experiment(
        path=path, name=str(plan.get("experiment") or spec.get("experiment") or path.name),
        axes=axes, variants=variants, seeds=seeds, baseline=plan.get("baseline"),
        search=search if isinstance(search, dict) else None,
        planned=max(len(planned_runs), runs["run_id"].nunique()),
        runs=runs, metrics=_read_metrics(runs, path / "runs"), levels=levels,
        variant_order=variant_order, spec=spec, budget=_budget(plan, spec),
        tune=plan.get("tune"), scale=plan.get("scale"), unplanned=_unplanned(path / "runs", set(runs["run_id"])))


def _budget(plan: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """experiment.json's budget, else the spec's (an experiment from before budgets: its steps)."""
    train = spec.get("train") if isinstance(spec.get("train"), dict) else {}
    budget = plan.get("budget") or train.get("budget") or {"steps": train.get("steps")}
    return budget if isinstance(budget, dict) and len(budget) == 1 else {"steps": None}


def unplanned_note(exp: Experiment) -> str:
    return (f"{len(exp.unplanned)} run folder(s) under runs/ are not in the current spec (an earlier version "
            f"of it made them) and are left out: {', '.join(exp.unplanned[:10])}{' ...' * (len(exp.unplanned) > 10)}.")


def _unplanned(runs_dir: Path, listed: set[str]) -> list[str]:
    """Run folders runs.csv does not list: left over from an earlier version of the spec."""
    if not runs_dir.is_dir():
        return []
    return sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and p.name not in listed)


# ---------------------------------------------------------------------------------------------
# Which runs are comparable

def done_runs(exp: Experiment) -> pd.DataFrame:
    """The runs that finished; every statistic below is computed on these only."""
    return exp.runs[exp.runs["status"] == "done"]


def progress(exp: Experiment) -> dict[str, int]:
    """Run counts by status plus `planned` (N); planned runs missing from runs.csv are pending."""
    counts = {s: int(n) for s, n in exp.runs["status"].value_counts().items()}
    missing = exp.planned - len(exp.runs)
    if missing > 0:
        counts["pending"] = counts.get("pending", 0) + missing
    counts.setdefault("done", 0)
    counts["planned"] = exp.planned
    return counts


def tokenizers(exp: Experiment) -> list[str]:
    """Tokenizers of the finished runs (the ones that get compared)."""
    return sorted(done_runs(exp)["tokenizer"].dropna().astype(str).unique())


def mixed_tokenizers(exp: Experiment) -> bool:
    return len(tokenizers(exp)) > 1


def comparable_metrics(exp: Experiment) -> list[str]:
    """Final metrics that may be compared across the finished runs.

    Nats per token depend on what a token is, so with more than one tokenizer only bits per
    byte of text are on a common scale.
    """
    return ["final_val_bpb"] if mixed_tokenizers(exp) else ["final_val_loss", "final_val_bpb"]


def best_run(exp: Experiment, metric: str = "final_val_bpb") -> pd.Series | None:
    """The finished run with the lowest `metric`, or None when none finished."""
    done = done_runs(exp).dropna(subset=[metric])
    return None if done.empty else done.loc[done[metric].idxmin()]


def complete_variants(exp: Experiment) -> list[str]:
    """Variants (plan order) with a finished run for every seed of the spec. A search ranks only
    these: a pruned trial whose second seed diverged has one seed's mean, not the trial's."""
    seeds = {int(s) for s in exp.seeds}
    done = done_runs(exp).dropna(subset=["seed"])
    finished = {v: {int(s) for s in g} for v, g in done.groupby("variant")["seed"]}
    return [v for v in exp.variant_order if seeds and seeds <= finished.get(v, set())]


def arm_labels(exp: Experiment, runs: pd.DataFrame, swept: str | None) -> pd.Series:
    """Each run's arm along a swept axis (a tune: key, a scale: size): its named variant and its
    values of the other axes, e.g. 'post, positional=rope' ('baseline' when there is nothing else)."""
    others = [a for a in exp.axes if a != swept]
    short = {a: a.split(".", 1)[-1] for a in others}

    def label(row: Any) -> str:
        parts = [str(row["named_variant"])] if exp.variants and "named_variant" in row else []
        parts += [f"{short[a]}={row[a]}" for a in others]
        return ", ".join(parts) or "baseline"

    return runs.apply(label, axis=1) if len(runs) else pd.Series(dtype=str)


def ordered_arms(exp: Experiment, labels: pd.Series) -> list[str]:
    """Arms in plan order, the reference first: the baseline variant's first arm (else the first)."""
    order = list(dict.fromkeys(labels))
    if exp.variants and exp.baseline and "named_variant" in exp.runs.columns:
        first = labels[exp.runs["named_variant"] == exp.baseline]
        if len(first):
            order.remove(first.iloc[0])
            order.insert(0, first.iloc[0])
    return order


# ---------------------------------------------------------------------------------------------
# Per-variant seed statistics

def _stats_columns(values: pd.Series, metric: str) -> dict[str, float]:
    s = mean_ci(values)
    return {f"{metric}_mean": s.mean, f"{metric}_std": s.std,
            f"{metric}_ci_low": s.low, f"{metric}_ci_high": s.high}


def variant_table(exp: Experiment, metrics: list[str] | None = None) -> pd.DataFrame:
    """One row per variant (plan order): seed count, mean/std/95% CI of each metric, costs.

    `n` counts finished seeds; `runs` counts every run of the variant in runs.csv.
    """
    metrics = metrics or ["final_val_loss", "final_val_bpb"]
    done = done_runs(exp)
    rows = []
    for variant in exp.variant_order:
        mine, all_mine = done[done["variant"] == variant], exp.runs[exp.runs["variant"] == variant]
        row: dict[str, Any] = {"variant": variant}
        for axis in exp.axes:
            values = all_mine[axis].dropna().unique()
            row[axis] = values[0] if len(values) == 1 else np.nan
        row["tokenizer"] = ",".join(sorted(all_mine["tokenizer"].dropna().astype(str).unique()))
        row["n"] = int(mine[metrics[-1]].notna().sum())
        row["runs"] = len(all_mine)
        for metric in metrics:
            row.update(_stats_columns(mine[metric], metric))
        for col in COST_COLUMNS:
            row[col] = float(mine[col].mean()) if len(mine) else math.nan
        rows.append(row)
    columns = ["variant", *exp.axes, "tokenizer", "n", "runs",
               *(k for m in metrics for k in _stats_columns(pd.Series(dtype=float), m)), *COST_COLUMNS]
    return pd.DataFrame(rows, columns=columns)  # the columns even with no variant (a search with no trial)


# ---------------------------------------------------------------------------------------------
# Grid summaries

def pivot_tables(exp: Experiment, metric: str = "final_val_bpb"
                 ) -> dict[tuple[str, str], pd.DataFrame]:
    """For each pair of axes (a, b): mean `metric` with a's levels as rows, b's as columns,
    averaged over seeds and any remaining axes."""
    done = done_runs(exp)
    out = {}
    for a, b in itertools.combinations(exp.axes, 2):
        table = done.pivot_table(index=a, columns=b, values=metric, aggfunc="mean")
        out[(a, b)] = table.reindex(index=exp.levels[a], columns=exp.levels[b])
    return out


# ---------------------------------------------------------------------------------------------
# Curves

def curve_table(exp: Experiment, metric: str = "val_bpb") -> pd.DataFrame:
    """Per variant and tokens seen: n, mean and 95% CI of `metric` over the finished seeds."""
    m = exp.metrics
    m = m[(m["status"] == "done") & m[metric].notna() & m["tokens"].notna()]
    rows = []
    for (variant, tokens), group in m.groupby(["variant", "tokens"], sort=True):
        s = mean_ci(group[metric])
        rows.append({"variant": variant, "tokens": tokens, "n": s.n, "mean": s.mean,
                     "ci_low": s.low, "ci_high": s.high})
    return pd.DataFrame(rows, columns=["variant", "tokens", "n", "mean", "ci_low", "ci_high"])
