"""Seaborn plots of one experiment, saved as PNG files (headless: the Agg backend).

Every interval drawn is the same 95% Student t interval over seeds that the tables report
(seaborn is handed `t_interval` as its error-bar function, and marginal panels are drawn from each
seed's mean over the other factors, as the tables compute them), so a plot never disagrees with
the report. Only finished runs are drawn; with one seed there is no band or bar to draw.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from analysis import fair_plots
from analysis.effects import factors, paired_effects, seed_means
from analysis.figures import (  # noqa: F401  (Skip, PlotSet: read from here by the report and the tests)
    PlotSet, Skip, axis_label, ci_legend, legend_below, n_seeds, palette, plt, ranked_variants, save, si_ticks,
    style, t_interval)
from analysis.tables import LABELS, UNITS, Experiment, complete_variants, done_runs, mixed_tokenizers
from analysis.trials import adaptive
from experiments.search.study import quiet_optuna, recorded_storage, sqlite_file, with_credentials

MAX_ROWS = 30           # rows of a point plot (a search can have hundreds of trials)
MAX_HUES = 12           # beyond this a colour per variant cannot be told apart
FILES = {               # plot key -> file name under plots/
    **fair_plots.FILES,  # curves against what the budget counts, and the tune and scale plots
    "final_bpb": "final_bpb.png",
    "effects": "effects_vs_baseline.png",
    "params": "params_vs_bpb.png",
    "search_history": "search_history.png",
    "search_importances": "search_importances.png",
    "search_parallel": "search_parallel.png",
}
CAPTIONS = {
    **fair_plots.CAPTIONS,
    "final_bpb": "Final validation bits per byte per variant (sorted, best on top), "
                 "mean over seeds with 95% CI; one panel per grid axis.",
    "effects": "Paired effect of each variant on final val bpb vs the baseline, seed by seed, "
               "with the 95% CI over seeds; red = called by the Holm-corrected test; left of zero "
               "= better.",
    "params": "Parameters (log scale where they span 2x or more) against final validation bits per byte, one "
              "point per run.",
    "search_history": "Optuna optimisation history: each trial's objective and the best so far.",
    "search_importances": "Optuna hyperparameter importances for the objective (fANOVA over the completed "
                          "trials the sampler chose: a rough guide with few trials, not a test).",
    "search_parallel": "Optuna parallel-coordinate plot: each line is a trial.",
}


# ---------------------------------------------------------------------------------------------
# (2) final bpb per variant, one facet per grid axis

def _panels(exp: Experiment) -> list[tuple[str, str]]:
    """(column, panel title) pairs: the variants, and each axis when there is more than one."""
    if len(exp.axes) == 1 and not exp.variants:
        return [(exp.axes[0], exp.axes[0])]     # the variants are that axis's levels
    panels = [("variant", "all variants")]
    if exp.axes and exp.variants:
        panels.append(("named_variant", "variant (marginal over the grid)"))
    if len(exp.axes) > 1 or (exp.axes and exp.variants):
        panels += [(a, f"{a} (marginal over the rest)") for a in exp.axes]
    return panels


def _point_panel(ax: plt.Axes, exp: Experiment, column: str, title: str) -> None:
    """One point per level of `column`: the mean over seeds of each seed's mean over the other
    factors, with the t interval over those seed means (the main-effects table's numbers)."""
    done = seed_means(exp, column, "final_val_bpb", common=column in exp.axes)  # the main-effects table's block
    if exp.search and column == "variant":    # rank whole trials only, as the report does
        done = done[done[column].isin(complete_variants(exp))]
    order = list(done.groupby(column)["final_val_bpb"].mean().dropna()
                 .sort_values(kind="stable").index)
    if len(order) > MAX_ROWS:
        title += f" ({MAX_ROWS} best of {len(order)})"
        order = order[:MAX_ROWS]
        done = done[done[column].isin(order)]
    sns.pointplot(data=done, y=column, x="final_val_bpb", order=order, errorbar=t_interval,
                  linestyle="none", capsize=0.25, color="C0", ax=ax, orient="h")
    ax.set(title=title, xlabel=axis_label("final_val_bpb"), ylabel="")


def plot_final_bpb(exp: Experiment, path: Path) -> Path:
    done = done_runs(exp).dropna(subset=["final_val_bpb"]).copy()
    if done.empty:
        raise Skip("final bpb per variant: no finished run yet.")
    panels = _panels(exp)
    n_rows = min(MAX_ROWS, max(done[c].nunique() for c, _ in panels))
    with style():
        fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.5,
                                                          1.6 + 0.38 * n_rows), squeeze=False)
        for ax, (column, title) in zip(axes[0], panels):
            _point_panel(ax, exp, column, title)
        handles = [Line2D([], [], marker="o", color="C0", ls="none", label="mean over seeds"),
                   Line2D([], [], color="C0", label="95% CI (Student t)") if n_seeds(exp) > 1
                   else ci_legend(1, "")]
        fig.suptitle(f"{exp.name}: final validation bits per byte (lower is better)")
        fig.tight_layout()
        legend_below(fig, handles)
    return save(fig, path)


# ---------------------------------------------------------------------------------------------
# (3) forest plot of paired effects

def plot_effects(exp: Experiment, path: Path) -> Path:
    effects = paired_effects(exp, "final_val_bpb")
    effects = effects[effects["n_seeds"] > 0]
    if not factors(exp) or adaptive(exp):
        raise Skip("" if adaptive(exp) else "paired effects: no baseline to compare against (the spec has "
                   "neither named variants nor a grid).")
    if effects.empty:
        raise Skip("paired effects: no variant has a finished run paired with a finished "
                   "baseline run of the same seed.")
    styles = {True: ("C3", "called (Holm-adjusted p < 0.05)"), False: ("C0", "not called"),
              None: ("grey", "fewer than 2 seeds: no CI")}
    with style():
        fig, ax = plt.subplots(figsize=(7.5, 1.5 + 0.45 * len(effects)))
        labels = list(effects["comparison"])[::-1]      # first comparison at the top
        for y, row in enumerate(effects.iloc[::-1].itertuples(index=False)):
            key = None if pd.isna(row.significant) else bool(row.significant)
            colour = styles[key][0]
            err = None
            if not math.isnan(row.ci_low):
                err = [[row.mean_delta - row.ci_low], [row.ci_high - row.mean_delta]]
            ax.errorbar(row.mean_delta, y, xerr=err, fmt="o", color=colour, capsize=4)
            ax.annotate(f"{row.n_seeds} seeds", (1.01, y), xycoords=("axes fraction", "data"),
                        va="center", fontsize=8, color="dimgrey")
        ax.axvline(0, color="black", lw=1, ls="--")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(-0.7, len(labels) - 0.3)
        ax.set(xlabel="Δ final val bpb vs baseline (bits/byte; < 0 = better)", ylabel="",
               title=f"{exp.name}: paired effects vs baseline (Δ per seed, then mean)")
        used = {None if pd.isna(v) else bool(v) for v in effects["significant"]}
        handles = [Line2D([], [], marker="o", color=styles[k][0], label=styles[k][1])
                   for k in (True, False, None) if k in used]
        handles.append(Line2D([], [], color="black", ls="--", label="no effect (Δ = 0)"))
        fig.tight_layout()
        legend_below(fig, handles)
    return save(fig, path)


# ---------------------------------------------------------------------------------------------
# (4) parameters vs final bpb

def plot_params(exp: Experiment, path: Path) -> Path:
    done = done_runs(exp).dropna(subset=["final_val_bpb", "params"])
    done = done[done["params"] > 0]
    if done.empty:
        raise Skip("parameters vs bpb: no finished run reports its parameter count.")
    ranked = [v for v in ranked_variants(exp) if v in set(done["variant"])]
    markers = "tokenizer" if mixed_tokenizers(exp) else None
    with style():
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        if len(ranked) <= MAX_HUES:
            sns.scatterplot(data=done, x="params", y="final_val_bpb", hue="variant",
                            hue_order=ranked, palette=palette(ranked), style=markers, s=60,
                            alpha=0.8, ax=ax)
        else:                             # too many to colour apart: mark the best one instead
            sns.scatterplot(data=done, x="params", y="final_val_bpb", style=markers, s=40,
                            alpha=0.6, color="C0", ax=ax, label="finished run")
            best = done[done["variant"] == ranked[0]]
            ax.scatter(best["params"], best["final_val_bpb"], marker="*", s=250, color="C3",
                       zorder=3, label=f"best variant: {ranked[0]}")
        if done["params"].max() < 2 * done["params"].min():  # a log axis over a few percent repeats its labels
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos=None: si_ticks(v, digits=4)))
            xlabel = "parameters (count)"
        else:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(si_ticks))
            narrow = done["params"].max() < 10 * done["params"].min()   # within a decade
            ax.xaxis.set_minor_formatter(FuncFormatter(si_ticks) if narrow else NullFormatter())
            xlabel = "parameters (count, log scale)"
        ax.set(xlabel=xlabel, ylabel=axis_label("final_val_bpb"),
               title=f"{exp.name}: model size vs final val bpb (one point per run)")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        fig.tight_layout()
    return save(fig, path)


# ---------------------------------------------------------------------------------------------
# (5) Optuna study

def _storage_url(search: dict[str, Any], exp_dir: Path) -> str:
    """The study's URL (experiments/search/study.py recorded_storage); refusing to go on when its SQLite
    file does not exist, because Optuna would silently create an empty database instead."""
    url = recorded_storage(search, exp_dir)
    db = sqlite_file(url)
    if db is not None and not db.is_file():
        raise Skip(f"Optuna plots: the study database {db} was not found.")
    return url


def load_study(exp: Experiment) -> Any:
    """The experiment's Optuna study; raises Skip when there is none to load."""
    if not exp.search:
        raise Skip("no Optuna study: experiment.json has no search section.")
    if not exp.search.get("storage") or not exp.search.get("study_name"):
        raise Skip("Optuna plots: experiment.json's search names no storage and study_name.")
    url = with_credentials(_storage_url(exp.search, exp.path))
    with quiet_optuna() as optuna:
        try:
            return optuna.load_study(study_name=str(exp.search.get("study_name")), storage=url)
        except KeyError:
            raise Skip(f"Optuna plots: no study named {exp.search.get('study_name')!r} in "
                       f"{exp.search.get('storage')}.") from None


def _objective_label(exp: Experiment) -> str:
    metric = str((exp.search or {}).get("metric", "objective"))
    return f"{LABELS.get(metric, metric)} ({UNITS[metric]})" if metric in UNITS else metric


def _optuna_figure(draw: Callable[[], Any], path: Path, title: str,
                   xlabel: str | None = None, ylabel: str | None = None,
                   legend: str | None = None) -> Path:
    """Optuna draws the axes; we replace its generic titles and labels with ones that name the
    experiment and the objective's unit, and add a legend where it draws none."""
    with style():
        ax = draw()
        ax = ax.flat[0] if isinstance(ax, np.ndarray) else ax
        fig = ax.figure
        fig.set_size_inches(8.5, 4.8)
        for loc in ("left", "right"):     # Optuna titles some plots off-centre
            ax.set_title("", loc=loc)
        ax.set_title(title)
        if xlabel:
            ax.set_xlabel(xlabel)
        if ylabel:
            ax.set_ylabel(ylabel)
        fig.tight_layout()
        if ax.get_legend() is None and legend:
            legend_below(fig, [Line2D([], [], color="#1f4e79", label=legend)])
    return save(fig, path)


def no_white_lines(ax: Any) -> Any:
    """Optuna colours the parallel-coordinate lines on Blues, whose light end is white on the white page,
    so the trials at that end vanish: the same map, in the same direction, without its lightest 30%."""
    for lines in ax.collections:
        if isinstance(lines, LineCollection):
            cmap = lines.get_cmap()
            light_first = sum(cmap(0.0)[:3]) > sum(cmap(1.0)[:3])
            lines.set_cmap(ListedColormap(cmap(np.linspace(0.3, 1, 256) if light_first else np.linspace(0, 0.7, 256))))
    return ax


def plot_search(exp: Experiment, out_dir: Path, plots: PlotSet) -> None:
    """Optimisation history, importances and parallel coordinates; skips are noted."""
    try:
        study = load_study(exp)
    except Skip as skip:
        if exp.search:
            plots.notes.append(str(skip))
        return
    with quiet_optuna() as optuna:
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not complete:
            plots.notes.append("Optuna plots: the study has no completed trial yet.")
            return
        vis = optuna.visualization.matplotlib
        label = _objective_label(exp)
        plots.paths["search_history"] = _optuna_figure(
            lambda: vis.plot_optimization_history(study, target_name=label),
            out_dir / FILES["search_history"], f"{exp.name}: optimisation history",
            "trial number", label)
        names = sorted({p for t in complete for p in t.params})
        # a parameter every completed trial has at one value has no estimable importance (fANOVA says ~0)
        varied = [p for p in names if len({repr(t.params.get(p)) for t in complete}) > 1]
        if fixed := [p for p in names if p not in varied]:
            plots.notes.append(f"Optuna parameter importances leave out {', '.join(fixed)}: every completed trial "
                               "had the same value of it, so its importance cannot be estimated (which is not to "
                               "say it is unimportant).")
        if len(complete) < 2 or len(varied) < 2:
            plots.notes.append(
                f"Optuna parameter importances skipped: {len(complete)} completed trial(s) and "
                f"{len(varied)} parameter(s) that vary among them; importances need at least 2 of each.")
        else:
            plots.paths["search_importances"] = _optuna_figure(
                lambda: vis.plot_param_importances(study, target_name=label, params=varied),
                out_dir / FILES["search_importances"],
                f"{exp.name}: parameter importances", "importance (fraction of total)",
                "hyperparameter")
        plots.paths["search_parallel"] = _optuna_figure(
            lambda: no_white_lines(vis.plot_parallel_coordinate(study, target_name=label)),
            out_dir / FILES["search_parallel"], f"{exp.name}: parallel coordinates",
            "objective and hyperparameters (each on its own scale)", None,
            legend="one line per completed trial; colour = objective")


# ---------------------------------------------------------------------------------------------

PLOTTERS: dict[str, Callable[[Experiment, Path], Path]] = {
    **fair_plots.PLOTTERS, "final_bpb": plot_final_bpb, "effects": plot_effects, "params": plot_params,
}


def make_plots(exp: Experiment, out_dir: Path) -> PlotSet:
    """Draw every plot the experiment supports into out_dir; stale PNGs of ours are removed so
    the folder never shows a plot from an earlier state of the experiment."""
    plots = PlotSet()
    for key, plotter in PLOTTERS.items():
        try:
            plots.paths[key] = plotter(exp, out_dir / FILES[key])
        except Skip as skip:  # an empty message: the plot does not apply to this experiment
            plots.notes += [str(skip)] if str(skip) else []
    plot_search(exp, out_dir, plots)
    remove_stale(out_dir, plots)
    return plots


def remove_stale(out_dir: Path, plots: PlotSet) -> None:
    """Delete our PNGs in out_dir that `plots` does not have (plots an earlier state of the experiment
    drew); files of other names are left alone."""
    for key, name in FILES.items():
        if key not in plots.paths:
            (out_dir / name).unlink(missing_ok=True)
