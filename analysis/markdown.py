"""Markdown for the report: tables, numbers with their units, intervals, and the table of one family
of comparisons (its note on Holm's correction, its verdicts). Shared by analysis/report.py and the
report's sections on budgets, tuning and scaling (analysis/fair_report.py)."""
from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from analysis.stats import ALPHA
from analysis.tables import UNITS


def cell(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame, index: bool = False, digits: int = 4) -> str:
    """A GitHub-flavoured markdown table; floats to `digits` places, missing values as —."""
    if index:
        df = df.reset_index()
    header = [cell(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else "---"
                            for c in df.columns) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v, digits) for v in row) + " |")
    return "\n".join(lines)


def si(value: float, unit: str = "") -> str:
    """1234567 -> '1.23 M' (parameters, FLOPs, tokens: the magnitude is what matters)."""
    if value is None or not math.isfinite(value):
        return "—"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".strip()
    return f"{value:.3g} {unit}".strip()


def duration(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 10:  # a tiny run: "0 s" would read as nothing
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def ci(low: float, high: float, n: int, empty: str = "no finished run") -> str:
    if n == 0:
        return empty
    if n == 1 or math.isnan(low):
        return "n=1: no CI"
    return "[" + ", ".join(f"{v:.4f}" if math.isfinite(v) else "−∞" if v < 0 else "+∞" for v in (low, high)) + "]"


def fence(text: str, lang: str = "text") -> str:
    """A code fence longer than any backtick run in `text`, so the sample cannot break out."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    marks = "`" * max(3, longest + 1)
    return f"{marks}{lang}\n{text.rstrip()}\n{marks}"


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'model': {'positional': {'name': 'rope'}}} -> {'model.positional.name': 'rope'}."""
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flat(value, name) if isinstance(value, dict) and value else {name: value})
    return out


def kv(d: dict[str, Any]) -> str:
    # 1.5e+10 rather than 15000000000.0: large budgets as they were written (smaller numbers exactly)
    return ", ".join(f"`{k}={v:.6g}`" if isinstance(v, float) and abs(v) >= 1e6 else f"`{k}={v}`"
                     for k, v in flat(d).items()) or "—"



def p_text(value: float) -> str:
    return "—" if pd.isna(value) else "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def verdict(row: Any) -> str:
    if row.n_seeds == 0:
        return "—"
    if pd.isna(row.significant):
        return "fewer than 2 seeds: no test"
    if not row.significant:
        if row.ci_low > 0 or row.ci_high < 0:
            return "no: not after Holm's correction"
        return "no: within seed noise"
    return "yes: lower (better)" if row.mean_delta < 0 else "yes: higher (worse)"


def family_note(effects: pd.DataFrame) -> str:
    """One sentence: what the family is and which correction the verdicts used."""
    m = int(effects["p"].notna().sum())
    if m == 0:
        return "No comparison in this table has two seeds, so none is tested."
    if m == 1:
        return ("The family is this table's one tested comparison, so Holm's correction leaves "
                "its p unchanged.")
    return (f"The family is this table's {m} tested comparisons: Holm's correction holds the "
            f"chance of any false \"yes\" among them at {ALPHA:.0%}, and the verdict reads the "
            "Holm-adjusted p (the interval is the unadjusted 95% one).")


def effects_table(effects: pd.DataFrame, metric: str) -> list[str]:
    """The table of one family, its one-sentence note, and what was left out of which row."""
    table = pd.DataFrame({"comparison": effects["comparison"], "n seeds": effects["n_seeds"]})
    if (effects["n_settings"] > 1).any():
        table["settings"] = effects["n_settings"]
    table[f"mean Δ ({UNITS[metric]})"] = effects["mean_delta"]
    table["95% CI"] = [ci(lo, hi, n, "no finished pair") for lo, hi, n in
                       zip(effects["ci_low"], effects["ci_high"], effects["n_seeds"])]
    table["p"] = [p_text(v) for v in effects["p"]]
    table["p (Holm)"] = [p_text(v) for v in effects["p_holm"]]
    ended = effects["unfinished"].fillna("") != ""
    table["verdict"] = [verdict(r) + (" †" if mark else "") for r, mark in zip(effects.itertuples(), ended)]
    lines = [family_note(effects), "", to_markdown(table), ""]
    left = effects[effects["left_out"].fillna("") != ""]
    if len(left):
        lines += ["Left out so that every seed's mean Δ averages the same settings (a run "
                  "without its finished partner): " + "; ".join(
                      f"{r.comparison}: {r.left_out}" for r in left.itertuples()) + ".", ""]
    if ended.any():
        lines += ["**Runs that did not finish** (marked † above): their seeds have no pair, so these rows "
                  "compare the seeds that finished; a variant that diverges more often can look better "
                  "than it is, and a row with runs still pending or running changes when they finish: "
                  + "; ".join(f"{r.comparison}: {r.unfinished}" for r in effects[ended].itertuples()) + ".", ""]
    return lines


SEED_UNIT = ("Runs of one seed share their batches, initialisation and evaluation windows, so "
             "the seed is the unit: Δ is averaged within each seed first (over the settings of "
             "the other factors, in a grid), and the 95% interval and p are Student t over the "
             "seeds' mean Δ (df = seeds − 1).")
ASSUMED = ("Assumed: the seeds' mean Δ are independent draws from a roughly normal spread (with 3 "
           "seeds one odd seed weighs a lot); the seeds stand for the seed-to-seed variation (batch "
           "order, initialisation, evaluation windows) and nothing else differs between them; a pooled "
           "Δ weights the settings of the other factors equally.")
