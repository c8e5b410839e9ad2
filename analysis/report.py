"""report.md for one experiment: what was run, the tables with their CIs, the plots, a sample.

The report states its limits instead of papering over them: how many of the planned runs are
done, which runs were left out and why, when there is a single seed (no interval), and when
runs use different tokenizers (nats/token are then not compared).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.effects import (
    consecutive_effects, factors, main_effects, paired_effects, simple_effects)
from analysis.fair_report import budget_section, scale_section, search_test_lines, tune_section
from analysis.markdown import (  # noqa: F401  (to_markdown: read from here by the tests)
    ASSUMED, SEED_UNIT, ci, duration, effects_table, fence, kv, si, to_markdown)
from analysis.plots import CAPTIONS, PlotSet, make_plots, remove_stale
from analysis.tables import (
    LABELS, UNITS, Experiment, best_run, comparable_metrics, complete_variants, done_runs,
    load_experiment, mixed_tokenizers, pivot_tables, progress, tokenizers, unplanned_note, variant_table)
from analysis.trials import adaptive, best_trial, objectives, search_metric  # noqa: F401  (best_trial: tests)
from experiments import files, interrupts, metrics

MAX_VARIANT_ROWS = 25      # a search can have hundreds of trials; the report shows the best
MAX_SAMPLE_CHARS = 3000


# ---------------------------------------------------------------------------------------------
# Sections

def _header(exp: Experiment) -> list[str]:
    p = progress(exp)
    others = ", ".join(f"{p[s]} {s}" for s in ("diverged", "failed", "running", "pending")
                       if p.get(s))
    line = f"**{p['done']} of {p['planned']} runs done**" + (f" ({others})." if others else ".")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [f"# {exp.name}", "", f"Written by `python -m analysis` on {when} from "
            f"`{exp.path}`.", "", line, ""]


def _what_was_run(exp: Experiment) -> list[str]:
    spec = exp.spec
    lines = ["## What was run", ""]
    if not spec:
        lines += ["spec.yaml was not found in the experiment folder; the plan below comes "
                  "from experiment.json.", ""]
    data = spec.get("data", {}) if isinstance(spec.get("data"), dict) else {}
    if data:
        rest = {k: v for k, v in data.items() if k not in ("corpus", "tokenizer")}
        lines.append(f"- **data**: corpus `{data.get('corpus', '?')}`, tokenizer "
                     f"`{data.get('tokenizer', '?')}`" + (f"; {kv(rest)}" if rest else ""))
    used = tokenizers(exp)
    if used and (not data or [str(data.get("tokenizer"))] != used):
        lines.append(f"- **tokenizers in finished runs**: {', '.join(used)}")
    if isinstance(spec.get("model"), dict):
        lines.append(f"- **model**: {kv(spec['model'])}")
    if isinstance(spec.get("train"), dict):
        lines.append(f"- **train budget**: {kv(spec['train'])}")
    tokens = done_runs(exp)["tokens_seen"].dropna()
    if len(tokens) and tokens.min() == tokens.max():
        lines.append(f"- **tokens seen per finished run**: {si(tokens.min())} tokens")
    elif len(tokens):
        lines.append(f"- **tokens seen per finished run**: {si(tokens.min())} to {si(tokens.max())} tokens, by run")
    for axis in exp.axes:
        lines.append(f"- **axis `{axis}`**: " + ", ".join(f"`{v}`" for v in exp.levels[axis]))
    if exp.variants:
        overrides = spec.get("variants") if isinstance(spec.get("variants"), dict) else {}
        lines.append("- **variants**: " + "; ".join(
            f"`{v}`" + (f" ({kv(overrides[v])})" if overrides.get(v) else "")
            for v in exp.variants))
    lines.append(f"- **seeds**: {', '.join(str(s) for s in exp.seeds) or '—'}")
    if exp.search:
        lines.append(f"- **search**: Optuna study `{exp.search.get('study_name')}` "
                     f"({exp.search.get('direction', 'minimize')} "
                     f"`{exp.search.get('metric', '?')}`)")
    return lines + [""]


def _caveats(exp: Experiment) -> list[str]:
    notes = []
    table = variant_table(exp, ["final_val_bpb"])
    finished = table[table["n"] > 0]
    if len(finished) and finished["n"].max() <= 1:
        notes.append("**One seed: no confidence interval.** Every variant has a single "
                     "finished seed, so seed-to-seed noise cannot be estimated; differences "
                     "below may be noise. Run more seeds to get intervals.")
    elif (finished["n"] == 1).any():
        notes.append("Some variants have one finished seed: no confidence interval for them.")
    if mixed_tokenizers(exp):
        notes.append(f"**Runs use different tokenizers ({', '.join(tokenizers(exp))}).** A token "
                     "is a different unit for each, so losses in nats/token are not compared "
                     "or ranked here; every comparison is in bits per byte of text.")
    corpora = done_runs(exp)["corpus"].dropna().unique()
    if len(corpora) > 1:
        notes.append(f"Runs use different corpora ({', '.join(map(str, corpora))}): their "
                     "losses measure different text and are not comparable.")
    left_out = progress(exp)
    if left_out["done"] < left_out["planned"]:
        notes.append(f"Only runs with status `done` enter the statistics "
                     f"({left_out['done']} of {left_out['planned']}).")
    notes += [unplanned_note(exp)] if exp.unplanned else []
    notes += [n for n in [_rules_note(exp)] if n]
    return (["## Caveats", ""] + [f"- {n}" for n in notes] + [""]) if notes else []


def _rules_note(exp: Experiment) -> str | None:
    """Finished runs that followed training rules other than this code's (experiments/metrics.py)."""
    done = done_runs(exp)
    rules = done[metrics.TRAINING_RULES] if metrics.TRAINING_RULES in done.columns else [None] * len(done)
    note = metrics.rules_note({f"{r} seed {int(s)}": v for r, s, v in zip(done["variant"], done["seed"], rules)})
    return note and "**Training rules.** " + note


SHORT = {"final_val_bpb": "bpb", "final_val_loss": "loss"}


def _variant_section(exp: Experiment) -> list[str]:
    metrics = comparable_metrics(exp)
    table = variant_table(exp, metrics)
    partial: list[str] = []
    if exp.search:                            # rank only trials whose every seed finished
        complete = table["variant"].isin(complete_variants(exp))
        partial = _partial_trials(exp, table.loc[~complete & (table["runs"] > 0), "variant"])
        table = _ranked_trials(exp, table[complete])
    shown = table.head(MAX_VARIANT_ROWS)
    quality = pd.DataFrame({"variant": shown["variant"]})
    if mixed_tokenizers(exp):
        quality["tokenizer"] = shown["tokenizer"]
    quality["n seeds"] = shown["n"]
    if "objective" in shown.columns:
        quality[f"objective ({shown.attrs['metric']})"] = shown["objective"]
    for metric in reversed(metrics):          # bpb first: it is the scale every run shares
        short = SHORT[metric]
        quality[f"{short} mean"] = shown[f"{metric}_mean"]
        quality[f"{short} 95% CI"] = [
            ci(lo, hi, n) for lo, hi, n in
            zip(shown[f"{metric}_ci_low"], shown[f"{metric}_ci_high"], shown["n"])]
        quality[f"{short} std"] = shown[f"{metric}_std"]
    cost = pd.DataFrame({
        "variant": shown["variant"], "params": [si(v) for v in shown["params"]],
        "FLOPs/token": [si(v) for v in shown["flops_per_token"]],
        "tokens seen": [si(v) for v in shown["tokens_seen"]],
        "bytes seen": [si(v) for v in shown["bytes_seen"]], "FLOPs seen": [si(v) for v in shown["flops_seen"]],
        "tokens/s": [si(v) for v in shown["tokens_per_s"]],
        "wall time": [duration(v) for v in shown["wall_s"]]})
    units = "bpb: final validation bits per byte of text"
    if "final_val_loss" in metrics:
        units += "; loss: final validation cross-entropy in nats/token"
    lines = ["## Results per variant", "",
             f"Mean over finished seeds, sample std and the 95% Student t interval of the mean "
             f"({units}; lower is better); the interval assumes the seeds' scores are independent draws "
             f"from a roughly normal spread.", ""]
    if exp.search:
        lines[-2] += (" Only trials with every seed finished are ranked here, best first by the search's "
                      "objective; trials with a pruned, diverged or unfinished seed are listed apart below.")
    if adaptive(exp) and "_val_" in search_metric(exp, done_runs(exp).columns):
        lines[-2] += (" **The top rows were chosen on these same validation scores**, so their means and "
                      "intervals are optimistic (the best of many noisy trials looks better than it is): "
                      "the held-out test score in *Search* below is less so.")
    lines += [to_markdown(quality), ""]
    if len(table) > len(shown):
        lines += [f"({len(table) - len(shown)} more variants not shown; best first.)", ""]
    lines += _fewer_seeds_note(exp, table) + _worse_than_uniform_note(exp)
    lines += partial + ["### Cost per variant", "", "Means over the same finished seeds.", "",
              to_markdown(cost), ""]
    return lines


def _worse_than_uniform_note(exp: Experiment) -> list[str]:
    """Finished runs whose loss a uniform guess over their vocabulary (ln V nats) would beat: they failed to
    train, which their status (done) does not say."""
    done = done_runs(exp)
    if not {"vocab_size", "final_val_loss"} <= set(done.columns):
        return []
    bad = done[(done["vocab_size"] > 1) & (done["final_val_loss"] > np.log(done["vocab_size"].clip(lower=2)))]
    names = [f"{r.variant} seed {int(r.seed)} ({r.final_val_loss:.2f} nats/token; ln {int(r.vocab_size):,} = "
             f"{math.log(r.vocab_size):.2f})" for r in bad.itertuples()]
    if not names:
        return []
    return ["**Worse than a uniform guess**: " + "; ".join(names[:10]) + (" ..." if len(names) > 10 else "")
            + ". These runs finished, but predicting every token as equally likely would have scored better: "
              "they did not train (a learning rate too high, say), and count as they are in every table.", ""]


def _ranked_trials(exp: Experiment, table: pd.DataFrame) -> pd.DataFrame:
    """A search's complete trials, best first by its objective, with an `objective` column when the
    search's metric is not one the table shows already."""
    ranked = objectives(exp)
    order = {v: i for i, v in enumerate(ranked.index)}
    table = table.assign(objective=table["variant"].map(ranked), rank=table["variant"].map(order))
    table = table.sort_values("rank", kind="stable", na_position="last").drop(columns="rank")
    metric = search_metric(exp, done_runs(exp).columns)
    if metric in ("final_val_bpb", "final_val_loss"):
        table = table.drop(columns="objective")
    table.attrs["metric"] = metric
    return table


def _fewer_seeds_note(exp: Experiment, table: pd.DataFrame) -> list[str]:
    """Rows over fewer finished seeds than the spec's: their means average other seeds than the rest."""
    # a row with no finished seed has no mean to mislead (its cells are "—")
    short = table[(table["n"] < len(exp.seeds)) & (table["n"] > 0)] if len(exp.seeds) > 1 else table.iloc[0:0]
    if short.empty or adaptive(exp):  # a search lists its unfinished trials apart
        return []
    names = [f"`{r.variant}` ({int(r.n)} of {len(exp.seeds)})" for r in short.itertuples()]
    return ["**Rows over fewer seeds than the spec's**: " + ", ".join(names) + ". Their means and "
            "intervals average other seeds than the rest, so do not compare rows here; the paired "
            "tables below compare runs seed by seed.", ""]


def _partial_trials(exp: Experiment, variants: pd.Series) -> list[str]:
    """The trials with some seed not finished, apart from the ranking: their mean would be the
    mean of the seeds that happened to finish (a trial whose second seed diverged is not best
    because its first seed was good)."""
    if variants.empty:
        return []
    runs = exp.runs[exp.runs["variant"].isin(set(variants))]
    rows = []
    for variant, group in runs.sort_values("seed").groupby("variant", sort=False):
        done = group[group["status"] == "done"]
        state = group["state"].dropna() if "state" in group.columns else []
        rows.append({"variant": variant, "state": state.iloc[0] if len(state) else "—",
                     "seeds finished": f"{len(done)} of {len(exp.seeds)}",
                     "runs": ", ".join(f"seed {int(r.seed)}: {r.status}" for r in group.itertuples()),
                     "bpb of finished seeds": ", ".join(
                         f"{v:.4f}" for v in done["final_val_bpb"].dropna()) or "—"})
    return ["### Trials with unfinished seeds (not ranked)", "", to_markdown(pd.DataFrame(rows)),
            ""]


def _effects_section(exp: Experiment) -> list[str]:
    if not factors(exp):
        return []
    lines = ["## Paired effects vs the baseline", "",
             "Δ = variant − baseline, computed seed by seed (runs with the same seed see the "
             "same batches); negative is better. " + SEED_UNIT + " " + ASSUMED + " Pairing removes the "
             "seed-to-seed spread that both runs share, so the interval can exclude 0 when the "
             "per-variant intervals overlap.", ""]
    if len(exp.axes) > 1 or (exp.axes and exp.variants):
        lines[-2] += (" In a grid each run is paired with the run that has the same seed and "
                      "the same other-axis values; one comparison pools those settings.")
    if exp.tune:
        key = exp.tune["key"]
        lines[-2] += (f" This spec tunes `{key}`: these comparisons pool every value of it tried (each variant "
                      f"at the poor values as well as the good), so they are not the tuned comparison; "
                      f"that is \"Each variant at its best {key}\" below.")
    for metric in reversed(comparable_metrics(exp)):
        lines += [f"### {LABELS[metric]} ({UNITS[metric]})", "",
                  *effects_table(paired_effects(exp, metric), metric)]
    return lines + _simple_effects_section(exp)


def _consecutive_section(exp: Experiment) -> list[str]:
    """Each variant vs the one before it (`python -m analysis --consecutive`, for ladders)."""
    metric = "final_val_bpb"
    effects = consecutive_effects(exp, metric)
    if effects.empty:
        return []
    return ["## Each variant vs the one before it", "",
            "The variants in the order the spec lists them, as the steps of a ladder: Δ = "
            "variant − the one before, seed by seed. " + SEED_UNIT + " A step whose verdict is "
            "no is not told apart from the seed-to-seed noise.", "",
            f"### {LABELS[metric]} ({UNITS[metric]})", "", *effects_table(effects, metric)]


def _simple_effects_section(exp: Experiment) -> list[str]:
    """The same comparisons within each setting of the other factors (interactions)."""
    metric = "final_val_bpb"  # comparable whatever the tokenizers
    effects = simple_effects(exp, metric)
    if effects.empty:
        return []
    return [f"### Within each setting of the other factors: {LABELS[metric]} ({UNITS[metric]})",
            "", "The comparisons above, split by the values of the other factors (pairs: same "
            "seed, same setting; one pair per seed). Where these differ from each other the "
            "factors interact, and a pooled effect can sit within the noise although it is "
            "clear in one setting.", "", *effects_table(effects, metric)]


def _grid_section(exp: Experiment) -> list[str]:
    if not exp.axes:
        return []
    effects = main_effects(exp, "final_val_bpb")
    out = pd.DataFrame({"axis": effects["axis"], "level": effects["level"], "n seeds": effects["n"],
                        "mean final val bpb": effects["mean"],
                        "95% CI": [ci(lo, hi, n) for lo, hi, n in
                                   zip(effects["ci_low"], effects["ci_high"], effects["n"])]})
    lines = ["## Main effects of the grid axes", "",
             "Marginal mean of final val bpb (bits/byte) at each level: each seed's mean over "
             "the other axes, then the mean and 95% Student t interval over those seed means "
             "(df = seeds − 1). Whether two levels differ is the paired comparison above, not "
             "whether these intervals overlap.", "", to_markdown(out), ""]
    left = effects.drop_duplicates("axis")
    left = left[left["left_out"] != ""]
    if len(left):
        lines += ["Left out so that every level of an axis averages the same seeds and settings of the other "
                  "axes (a run without a final score): " + "; ".join(f"`{r.axis}`: {r.left_out}"
                                                                    for r in left.itertuples()) + ".", ""]
    waiting = exp.runs[exp.runs["status"] != "done"]
    if exp.axes and len(exp.axes) > 1 and len(waiting):
        lines += ["The cells below average the seeds that finished; a cell with a run left out averages "
                  "fewer: " + ", ".join(f"{r.variant} seed {int(r.seed)} ({r.status})"
                                        for r in waiting.head(20).itertuples())
                  + (", …" if len(waiting) > 20 else "") + ".", ""]
    for (a, b), pivot in pivot_tables(exp, "final_val_bpb").items():
        pivot = pivot.copy()
        pivot.index = [f"{a}={v}" for v in pivot.index]
        pivot.columns = [f"{b}={v}" for v in pivot.columns]
        lines += [f"### `{a}` × `{b}`: mean final val bpb (bits/byte)", "",
                  to_markdown(pivot.rename_axis("").reset_index()), ""]
    return lines


def _left_out_section(exp: Experiment) -> list[str]:
    runs = exp.runs
    bad = runs[runs["status"].isin(["diverged", "failed"])]
    p = progress(exp)
    unfinished = {s: p.get(s, 0) for s in ("running", "pending") if p.get(s)}
    if bad.empty and not unfinished:
        return []
    lines = ["## Runs left out of the statistics", ""]
    if not bad.empty:
        out = pd.DataFrame({"run": bad["run_id"], "variant": bad["variant"], "seed": bad["seed"],
                            "status": bad["status"]})
        lines += [to_markdown(out), ""]
    if unfinished:
        waiting = runs[runs["status"].isin(["running", "pending"])]
        names = ", ".join(f"{r.variant} seed {int(r.seed)} ({r.status})" for r in waiting.head(20).itertuples())
        lines += ["Not finished: " + ", ".join(f"{n} {s}" for s, n in unfinished.items())
                  + (f": {names}" + (", …" if len(waiting) > 20 else "") if names else "") + ".", ""]
    return lines


def _plots_section(exp: Experiment, plots: PlotSet) -> list[str]:
    lines = ["## Plots", ""]
    for key, path in plots.paths.items():
        rel = os.path.relpath(path, path.parent.parent)  # plots/<name>.png beside report.md
        lines += [f"{CAPTIONS[key]}", "", f"![{key}]({Path(rel).as_posix()})", ""]
    lines += [f"- {note}" for note in plots.notes]
    return lines + ([""] if plots.notes else [])


def _sample_section(exp: Experiment) -> list[str]:
    best = best_trial(exp) if exp.search else best_run(exp)   # a search: its best whole trial
    if best is None:
        return []
    path = exp.path / "runs" / str(best["run_id"]) / "samples.txt"
    head = (f"## Sample from the best run\n\n`{best['run_id']}` ({best['variant']}, seed "
            f"{int(best['seed'])}, final val bpb {best['final_val_bpb']:.4f}):\n")
    if not path.is_file():
        return [head, "No samples.txt in the run folder.", ""]
    text = path.read_text(errors="replace")
    if len(text) > MAX_SAMPLE_CHARS:
        text = text[:MAX_SAMPLE_CHARS] + "\n[…]"
    return [head, fence(text), ""]


def _study_best(exp: Experiment) -> list[str]:
    """The study's own view of its best trial (its parameters), when the study can be read."""
    from analysis.plots import Skip, load_study

    try:
        study = load_study(exp)
        trial = study.best_trial
    except (Skip, ValueError):            # ValueError: Optuna has no completed trial
        return []
    params = pd.DataFrame({"parameter": list(trial.params),
                           "value": [str(v) for v in trial.params.values()]})
    return [f"Optuna's best trial: #{trial.number}, objective {trial.value:.4f}, "
            f"{len(study.trials)} trials in the study.", "", to_markdown(params), ""]


def _search_section(exp: Experiment) -> list[str]:
    if not exp.search:
        return []
    lines = ["## Search", ""]
    best = best_trial(exp)
    if best is None:
        return lines + ["No trial has finished yet.", ""]
    metric = search_metric(exp, best.index)
    lines += [f"Best trial: **#{int(best['trial'])}** ({best['variant']}), {metric} = {best['objective']:.4f} "
              f"(mean over its seeds); its first run: `{best['run_id']}`.", ""]
    lines += search_test_lines(exp, best, metric)   # beside its score on the test text, if any
    lines += _study_best(exp)
    spec = exp.path / "runs" / str(best["run_id"]) / "spec.yaml"
    if spec.is_file():
        lines += ["Its resolved spec:", "", fence(spec.read_text(errors="replace"), "yaml"), ""]
    return lines


# ---------------------------------------------------------------------------------------------

def build_report(exp: Experiment, plots: PlotSet, consecutive: bool = False) -> str:
    """The report's markdown text (no files written); `consecutive` adds each variant vs the one before."""
    designed = not adaptive(exp)  # a search's trials have no baseline or design: no paired or main effects
    sections = [_header(exp), _what_was_run(exp), _caveats(exp), budget_section(exp), _variant_section(exp),
                _consecutive_section(exp) if consecutive else [],
                _effects_section(exp) if designed else [], _grid_section(exp) if designed else [],
                tune_section(exp), scale_section(exp),
                _left_out_section(exp), _search_section(exp), _plots_section(exp, plots), _sample_section(exp)]
    return "\n".join(line for section in sections for line in section).rstrip() + "\n"


def _publish(staging: Path, out: Path, plots: PlotSet) -> None:
    """Move the finished plots and report.md from `staging` into `out`: renames only (a moment), the
    report last, with Ctrl-C held until they are all done, so that Ctrl-C never leaves new plots
    beside an old report (or none)."""
    target = out / "plots"
    with interrupts.ctrl_c_held():
        if plots.paths:
            target.mkdir(exist_ok=True)
        for key, path in list(plots.paths.items()):
            os.replace(path, target / path.name)
            plots.paths[key] = target / path.name
        remove_stale(target, plots)
        os.replace(staging / "report.md", out / "report.md")


def write_report(exp_dir: Path, consecutive: bool = False, out: Path | None = None) -> Path:
    """Write report.md and plots/*.png into `out` (default: exp_dir); return the report's path.

    Everything is drawn and written in a temporary folder inside `out` first and moved into place at
    the end, so a failure or Ctrl-C part way leaves the previous report and plots as they were.
    Raises analysis.tables.ExperimentError when exp_dir is not an experiment folder.
    """
    # The report's time: the newest summary it read (the file system's clock, as the runs' summaries
    # have), so that a run finishing while it is drawn leaves it stale (records.report_is_stale).
    read_at = max((p.stat().st_mtime for p in Path(exp_dir).glob("runs/*/summary.json")), default=None)
    exp = load_experiment(Path(exp_dir))
    out = exp.path if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files.remove_stale_leftovers(out)  # staging folders of analyses a kill -9 cut short
    staging = Path(tempfile.mkdtemp(prefix=".analysis.", suffix=".tmp", dir=out))
    try:
        files.own(staging)
        plots = make_plots(exp, staging / "plots")
        (staging / "report.md").write_text(build_report(exp, plots, consecutive), encoding="utf-8")
        _publish(staging, out, plots)
        if read_at is not None:
            os.utime(out / "report.md", (read_at, read_at))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "report.md"
