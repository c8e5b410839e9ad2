"""What an experiment folder records, and the tables printed from it: experiment.json's plan,
runs.csv rebuilt from the run folders (the source of truth), the report hooks, text tables."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments import files, metrics
from experiments.overrides import same_spec_record
from experiments.schema import TRAIN, is_number, label
from registry import SpecError, cut

if TYPE_CHECKING:
    from experiments.spec import RunSpec, Spec

FINISHED = ("done", "diverged", "pruned")
RUN_COLUMNS = ["run_id", "variant", "seed", "status", metrics.PARAMS, metrics.FLOPS_PER_TOKEN, metrics.TOKENS_SEEN,
               metrics.BYTES_SEEN, metrics.FLOPS_SEEN,
               metrics.FINAL_TRAIN_LOSS, metrics.FINAL_VAL_LOSS, metrics.FINAL_VAL_BPB, metrics.BEST_VAL_LOSS,
               metrics.BEST_VAL_BPB, metrics.TOKENS_PER_S, metrics.WALL_S, "tokenizer", "corpus", metrics.TRAINING_RULES]


# -- the plan ------------------------------------------------------------------------------------
def axis_values(run: RunSpec) -> dict[str, str]:
    return {k: label(v) for k, v in run.axes.items()}


def plan_entry(run: RunSpec) -> dict[str, Any]:
    """experiment.json's entry for a run: who it is, and its length (steps, tokens per step) for status's ETA
    and the report (with its warm-up steps)."""
    tokens_per_step = run.train.batch_size * run.train.grad_accum * run.model["context_length"]
    return {"run_id": run.run_id, "variant": run.variant, "axes": axis_values(run), "seed": run.seed,
            "steps": run.train.steps, "warmup": run.train.warmup, "tokens_per_step": tokens_per_step}


def plan_record(spec: Spec, runs: list[RunSpec], search: dict | None = None) -> dict[str, Any]:
    return {"experiment": spec.experiment, "axes": spec.axes, "variants": spec.variants, "seeds": spec.seeds,
            "runs": [plan_entry(r) for r in runs], "baseline": spec.baseline, "search": search,
            "budget": budget_record(spec), "tune": spec.sweeps.tune, "scale": spec.sweeps.scale}


def budget_record(spec: Spec) -> dict[str, Any]:
    """The spec's own train budget, as {kind: amount} ({steps: N} for train.steps or its default)."""
    train = spec.base.get("train", {})
    return train.get("budget") or {"steps": train.get("steps", TRAIN["steps"].default)}


EXPERIMENT_FILES = {"spec.yaml", "experiment.json", "runs.csv", "runs", "report.md", "plots", "study.db", "trials.log"}


def results_problem(results: str, experiment: str) -> str | None:
    """Why --results cannot take this experiment, or None: an empty --results (the current folder), or an
    experiment folder there without the lab's spec.yaml or experiment.json that holds files the lab does
    not write (a source folder of the same name, say), which would get the lab's files mixed into its own."""
    if not results.strip():
        return "--results is empty (an unset shell variable?): give the results folder (default: results)"
    folder = Path(results) / experiment
    try:
        entries = sorted(e.name for e in folder.iterdir() if not e.name.startswith(".")) if folder.is_dir() else []
    except OSError:
        return None  # unreadable: the first write says so
    if {"spec.yaml", "experiment.json"} & set(entries):  # the lab's, whatever else it holds (a study, notes)
        return None
    if foreign := [name for name in entries if name not in EXPERIMENT_FILES and not name.startswith("study.db-")]:
        return (f"{cut(str(folder))!r} already exists and holds {', '.join(foreign[:3])}{' ...' * (len(foreign) > 3)}, "
                "which the lab does not write: it is not an experiment folder of the lab, and its files would be "
                "mixed with the experiment's. Pass another --results, or name the experiment otherwise")
    return None


def start_experiment(exp_dir: Path, spec: Spec, spec_text: str, runs: list[RunSpec]) -> None:
    """spec.yaml (the spec as it ran, with its command line: experiments/overrides.py) and
    experiment.json (the plan), each written only when it changed, so a finished experiment on
    read-only storage can be listed again. A folder this call created is removed again when the
    writes fail (a full disk, say): nothing is left half-made."""
    if busy := another_plan_running(exp_dir, runs):
        raise SpecError(f"another spec is running as experiment '{spec.experiment}' in {cut(str(exp_dir.parent))!r} "
                        f"(its run {busy} is training now) and this spec plans other runs: two plans cannot share "
                        "one experiment folder. Wait for it to end, or give this spec an experiment name of its own")
    created = next((p for p in reversed([exp_dir, *exp_dir.parents]) if not p.exists()), None)
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
        files.remove_stale_leftovers(exp_dir)  # of runs.csv / experiment.json writes or analyses a kill cut short
        write_spec_record(exp_dir, spec_text)
        files.write_json(exp_dir / "experiment.json", plan_record(spec, runs), only_if_changed=True)
    except OSError:
        if created is not None:  # the first folder this call made, and everything in it
            shutil.rmtree(created, ignore_errors=True)
        raise


def another_plan_running(exp_dir: Path, runs: list[RunSpec]) -> str | None:
    """A run of experiment.json's plan that a live process is training, when that plan is not this one's
    (another spec under the same name); None otherwise. Two commands of one spec share the work instead."""
    try:
        planned = {e["run_id"] for e in files.read_json(exp_dir / "experiment.json")["runs"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if planned == {r.run_id for r in runs}:
        return None
    return next((rid for rid in sorted(planned) if files.RunLock(exp_dir / "runs" / rid).held_elsewhere()), None)


def write_spec_record(exp_dir: Path, spec_text: str) -> None:
    """results/<experiment>/spec.yaml, left alone when it holds the same spec (the command line aside)."""
    try:
        recorded = (exp_dir / "spec.yaml").read_text(encoding="utf-8")
    except (OSError, ValueError):  # none yet, or not text: written anew
        recorded = ""
    if not same_spec_record(recorded, spec_text):
        files.write_text(exp_dir / "spec.yaml", spec_text)


# -- runs.csv ------------------------------------------------------------------------------------
def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """A run's summary.json, or None when there is none or it cannot be read (cut short, not JSON,
    not a summary, a "done" one without its finite final scores): such a run is treated as unfinished
    and trained again."""
    try:
        summary = files.read_json(run_dir / "summary.json")
    except (OSError, ValueError):  # ValueError: bad JSON, or bytes that are not UTF-8
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("status"), str):
        return None
    # A finished run always has them (a non-finite one makes it "diverged", whose finals may be null).
    scored = all(is_number(summary.get(k)) for k in (metrics.FINAL_VAL_LOSS, metrics.FINAL_VAL_BPB))
    return summary if scored or summary["status"] != "done" else None


def run_status(run_dir: Path) -> str:
    """A run's status from its folder; its lock is only probed (RunLock.held_elsewhere), never held."""
    summary = read_summary(run_dir)
    if summary is not None:
        return summary["status"]
    if files.RunLock(run_dir).held_elsewhere():
        return "running"
    return "pending"


def rebuild_runs_csv(exp_dir: Path) -> list[dict[str, Any]]:
    """runs.csv from experiment.json's plan and the run folders (the source of truth); the file is
    rewritten only when it changed."""
    plan = files.read_json(exp_dir / "experiment.json")
    rows = []
    for entry in plan["runs"]:
        run_dir = exp_dir / "runs" / entry["run_id"]
        summary = read_summary(run_dir) or {}
        row = {"run_id": entry["run_id"], "variant": entry["variant"], **entry["axes"], "seed": entry["seed"],
               **{k: entry[k] for k in ("trial", "state") if k in entry}}
        row |= {k: summary.get(k) for k in RUN_COLUMNS if k not in row}
        row["status"] = summary.get("status") or run_status(run_dir)
        rows.append(row)
    extra = [k for k in ("trial", "state") if any(k in r for r in rows)]
    columns = ["run_id", "variant", *plan["axes"], "seed", *extra] + [c for c in RUN_COLUMNS[3:]]
    files.write_csv(exp_dir / "runs.csv", rows, columns, only_if_changed=True)
    return rows


def rules_note(rows: list[dict[str, Any]]) -> str | None:
    """metrics.rules_note over the finished runs of runs.csv's rows."""
    return metrics.rules_note({r["run_id"]: r.get(metrics.TRAINING_RULES) for r in rows if r["status"] == "done"})


def runs_not_in_plan(exp_dir: Path) -> list[str]:
    """Run folders under runs/ that experiment.json's plan does not name: runs of an earlier version of
    the spec, which runs.csv and the report leave out."""
    try:
        planned = {entry["run_id"] for entry in files.read_json(exp_dir / "experiment.json")["runs"]}
    except (OSError, ValueError, KeyError, TypeError):
        return []
    runs = exp_dir / "runs"
    return sorted(p.name for p in runs.iterdir() if p.is_dir() and p.name not in planned) if runs.is_dir() else []


# -- the report ----------------------------------------------------------------------------------
def write_report(exp_dir: Path) -> Path | None:
    """The analysis report of the experiment, or None when it cannot be written (a warning says why)."""
    try:
        from analysis.report import write_report as analyse
    except ImportError:
        return None
    try:
        return analyse(exp_dir)
    except Exception as err:  # the runs are safe on disk; a broken report must not hide that
        print(f"warning: the report could not be written ({type(err).__name__}: {err}); "
              f"retry with: python -m analysis {exp_dir}", file=sys.stderr)
        return None


def report_is_stale(exp_dir: Path) -> bool:
    """Whether a run finished after report.md's analysis read the runs (its time: analysis/report.py), or
    there is none."""
    report = exp_dir / "report.md"
    if not report.exists():
        return True
    newest = max((p.stat().st_mtime for p in exp_dir.glob("runs/*/summary.json")), default=0)
    return newest > report.stat().st_mtime


# -- text tables ---------------------------------------------------------------------------------
def text_table(rows: list[dict[str, Any]]) -> str:
    """Rows as aligned columns of text (every key of every row, in order of appearance)."""
    if not rows:
        return "(no runs)"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4f}"
    return str(value)

