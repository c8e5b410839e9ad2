"""Load an experiment folder into pandas tables and compute seed statistics.

Everything here works from the layout in results/README.md: ``runs.csv`` is the primary table,
``experiment.json`` says what was planned (axes, variants, seeds, baseline), each run folder adds
its ``metrics.csv`` (curves) and ``summary.json`` (fills columns ``runs.csv`` lacks).

Statistics only ever use runs whose status is ``done``: a diverged or unfinished run has no
meaningful final loss. Confidence intervals are two-sided 95% Student t intervals over seeds;
with one value there is no interval and the bounds are NaN rather than invented.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from experiments import metrics
from experiments.metrics import LABELS, UNITS  # noqa: F401  (plots and report read them from here)

NUMERIC = ("seed", "trial", metrics.PARAMS, metrics.FLOPS_PER_TOKEN, metrics.TOKENS_SEEN, *metrics.LOSSES,
           metrics.TOKENS_PER_S, metrics.WALL_S)
# Columns a runs.csv row may lack (older runner, run still going) that summary.json can supply.
FROM_SUMMARY = NUMERIC[2:] + ("tokenizer", "corpus")
COST_COLUMNS = metrics.COSTS
REQUIRED = ("run_id", "variant", "seed", "status")


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


class MeanCI(NamedTuple):
    n: int
    mean: float
    std: float
    low: float
    high: float


# ---------------------------------------------------------------------------------------------
# Student t quantiles (scipy is not a dependency; degrees of freedom here are always integers)

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


def t_quantile(p: float, df: int) -> float:
    """Inverse CDF of Student's t: the t with P(T <= t) = p, for integer df >= 1."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    target = 2 * p - 1                    # central mass between -t and t
    # The series has df/2 terms; past 1e5 the t and the normal agree to ~1e-5 anyway.
    mass = _t_central_mass if df <= 100_000 else _normal_central_mass
    lo, hi = 0.0, 1.0
    while mass(hi, int(df)) < target:
        lo, hi = hi, hi * 2
    for _ in range(200):                  # bisection: the mass is monotone in t
        mid = (lo + hi) / 2
        if mass(mid, int(df)) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return (lo + hi) / 2


def mean_ci(values: Any, level: float = 0.95) -> MeanCI:
    """n, mean, sample std and two-sided Student t interval of the finite values given."""
    x = np.asarray(pd.to_numeric(pd.Series(values, dtype="float64"), errors="coerce"), float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return MeanCI(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:                            # one value: no spread, so no interval
        return MeanCI(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return MeanCI(n, mean, std, mean - half, mean + half)


# ---------------------------------------------------------------------------------------------
# Loading

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExperimentError(f"{path} is not valid JSON ({err}).") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml  # a project dependency; imported here so `tables` loads without it

    try:
        data = yaml.safe_load(path.read_text())
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
        summary = _read_json(path) if path.is_file() else {}
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
        try:
            m = pd.read_csv(path)
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            continue                      # a run that has not evaluated yet has no curve
        m = m.apply(pd.to_numeric, errors="coerce")
        m.insert(0, "run_id", run.run_id)
        m.insert(1, "variant", run.variant)
        m.insert(2, "seed", run.seed)
        m.insert(3, "status", run.status)
        frames.append(m)
    cols = ["run_id", "variant", "seed", "status", "step", "tokens", "lr", "train_loss",
            "val_loss", "val_bpb", "elapsed_s"]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)


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
    spec = _read_yaml(path / "spec.yaml") if (path / "spec.yaml").is_file() else {}
    return Experiment(
        path=path, name=str(plan.get("experiment") or spec.get("experiment") or path.name),
        axes=axes, variants=variants, seeds=seeds, baseline=plan.get("baseline"),
        search=search if isinstance(search, dict) else None,
        planned=max(len(planned_runs), runs["run_id"].nunique()),
        runs=runs, metrics=_read_metrics(runs, path / "runs"), levels=levels,
        variant_order=variant_order, spec=spec)


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
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Paired effects against the baseline

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


def paired_deltas(exp: Experiment, metric: str = "final_val_bpb") -> pd.DataFrame:
    """One row per pair: a finished run and its baseline partner, Δ = run − partner.

    The partner has the same seed and the same value of every other factor, with this factor at
    its reference level; runs whose partner did not finish have no pair.
    """
    done = done_runs(exp).dropna(subset=[metric])
    all_factors = factors(exp)
    rows = []
    for factor in all_factors:
        keys = ["seed"] + [f.column for f in all_factors if f.column != factor.column]
        for level in factor.levels[1:]:
            pairs = _pairs(done, factor.column, keys, level, factor.reference, metric)
            for pair in pairs.itertuples(index=False):
                pair = pair._asdict()
                rows.append({"factor": factor.name, "level": level,
                             "reference": factor.reference, "seed": pair["seed"],
                             "run_id": pair["run_id"], "ref_run_id": pair["run_id_ref"],
                             "delta": pair[metric] - pair[f"{metric}_ref"]})
    cols = ["factor", "level", "reference", "seed", "run_id", "ref_run_id", "delta"]
    return pd.DataFrame(rows, columns=cols)


def _pairs(done: pd.DataFrame, column: str, keys: list[str], level: str, reference: str,
           metric: str) -> pd.DataFrame:
    """Runs at `level` of `column`, each next to its partner at `reference` with the same `keys`
    (columns `run_id`, metric and `run_id_ref`, `<metric>_ref`)."""
    base = done[done[column] == reference][keys + ["run_id", metric]].drop_duplicates(subset=keys)
    other = done[done[column] == level][keys + ["run_id", metric]]
    return other.merge(base, on=keys, suffixes=("", "_ref"))


def _effect_row(factor: str, level: str, reference: str, comparison: str, metric: str,
                deltas: pd.Series) -> dict[str, Any]:
    s = mean_ci(deltas)
    return {"factor": factor, "level": level, "reference": reference, "comparison": comparison,
            "metric": metric, "n_pairs": s.n, "mean_delta": s.mean, "std_delta": s.std,
            "ci_low": s.low, "ci_high": s.high,
            "excludes_zero": pd.NA if s.n < 2 else bool(s.low > 0 or s.high < 0)}


EFFECT_COLUMNS = ["factor", "level", "reference", "comparison", "metric", "n_pairs", "mean_delta",
                  "std_delta", "ci_low", "ci_high", "excludes_zero"]


def consecutive_effects(exp: Experiment, metric: str = "final_val_bpb") -> pd.DataFrame:
    """Each named variant against the one listed before it, paired by seed (and grid values): what
    each step of a ladder adds. Empty without at least two named variants."""
    done = done_runs(exp).dropna(subset=[metric])
    keys = ["seed"] + [f.column for f in factors(exp) if f.name != "variant"]
    rows = []
    for before, after in zip(exp.variants, exp.variants[1:]):
        pairs = _pairs(done, "named_variant", keys, after, before, metric)
        rows.append(_effect_row("variant", after, before, comparison_label("variant", after, before), metric,
                                pairs[metric] - pairs[f"{metric}_ref"]))
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def comparison_label(factor: str, level: str, reference: str) -> str:
    if factor == "variant":
        return f"{level} vs {reference}"
    return f"{factor}: {level} vs {reference}"


def paired_effects(exp: Experiment, metric: str = "final_val_bpb") -> pd.DataFrame:
    """Per non-reference level of each factor: mean Δ over pairs, its 95% CI, and whether the CI
    excludes 0 (NA with fewer than two pairs). Negative Δ means lower loss than the baseline."""
    deltas = paired_deltas(exp, metric)
    rows = []
    for factor in factors(exp):
        for level in factor.levels[1:]:
            d = deltas[(deltas["factor"] == factor.name) & (deltas["level"] == level)]
            rows.append(_effect_row(factor.name, level, factor.reference,
                                    comparison_label(factor.name, level, factor.reference), metric, d["delta"]))
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def simple_effects(exp: Experiment, metric: str = "final_val_bpb") -> pd.DataFrame:
    """The paired effects within each setting of the other factors (one row per factor level and
    setting): where factors interact, a pooled effect can be lost in the spread between settings
    while each setting's own effect is clear. Empty with fewer than two factors."""
    all_factors = factors(exp)
    cols = EFFECT_COLUMNS[:3] + ["setting"] + EFFECT_COLUMNS[3:]
    if len(all_factors) < 2:
        return pd.DataFrame(columns=cols)
    deltas = paired_deltas(exp, metric)
    settings_of_run = done_runs(exp).set_index("run_id")
    rows = []
    for factor in all_factors:
        others = [f for f in all_factors if f is not factor]
        for level in factor.levels[1:]:
            d = deltas[(deltas["factor"] == factor.name) & (deltas["level"] == level)]
            runs = settings_of_run.loc[d["run_id"]]
            for setting in itertools.product(*(f.levels for f in others)):
                same = np.ones(len(d), dtype=bool)
                for f, value in zip(others, setting):
                    same &= (runs[f.column] == value).to_numpy()
                where = ", ".join(f"{f.name}={v}" for f, v in zip(others, setting))
                label = f"{comparison_label(factor.name, level, factor.reference)} (at {where})"
                rows.append({**_effect_row(factor.name, level, factor.reference, label, metric,
                                           d.loc[same, "delta"]), "setting": where})
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------------------------------------
# Grid summaries

def main_effects(exp: Experiment, metric: str = "final_val_bpb") -> pd.DataFrame:
    """Marginal mean of `metric` at each level of each axis, over seeds and the other axes."""
    done = done_runs(exp)
    rows = []
    for axis in exp.axes:
        for level in exp.levels.get(axis, []):
            s = mean_ci(done.loc[done[axis] == level, metric])
            rows.append({"axis": axis, "level": level, "n": s.n, "mean": s.mean, "std": s.std,
                         "ci_low": s.low, "ci_high": s.high})
    return pd.DataFrame(rows, columns=["axis", "level", "n", "mean", "std", "ci_low", "ci_high"])


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
