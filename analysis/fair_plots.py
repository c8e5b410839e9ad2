"""The plots of fair comparisons: curves against what the budget counts (tokens, bytes of text or
FLOPs) and against all three, the sensitivity of a tuned key, and loss against compute with the
scaling fits. analysis/plots.py draws them with the others (its FILES, CAPTIONS and PLOTTERS)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullLocator

from analysis import scaling, tuning
from analysis.figures import (
    MAX_LINES, Skip, axis_label, ci_legend, legend_below, n_seeds, palette, plt, ranked_variants, save, si_ticks,
    style, t_interval, y_range)
from analysis.stats import mean_ci
from analysis.tables import LABELS, X_AXES, Experiment, mixed_tokenizers
from experiments import metrics as m

FILES = {"curves": "curves.png", "curves_seen": "curves_tokens_bytes_flops.png",
         "sensitivity": "sensitivity.png", "scaling": "scaling.png"}
CAPTIONS = {
    "curves": "Validation loss and bits per byte against what the budget counts (tokens, bytes of "
              "training text or FLOPs: the budget section says which); band = 95% CI over seeds.",
    "curves_seen": "Validation bits per byte against tokens seen, bytes of training text seen and "
                   "training FLOPs (each point at the mean over seeds of its x); band = 95% CI over seeds.",
    "sensitivity": "Final validation bits per byte against the tuned value, one line per variant, "
                   "mean over seeds with its 95% CI; a star marks each variant's best value.",
    "scaling": "Final validation bits per byte against training FLOPs (log-log), one colour per variant: "
               "points are the sizes (mean over seeds, 95% CI), lines the fits L(C) = E + A·C^-α.",
}
UNIT = {m.TOKENS: "tokens", m.BYTES: "bytes", m.FLOPS: "FLOPs"}


def _curve_data(exp: Experiment, x: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The finished runs' curves with `x` at each evaluation's mean over seeds, the variants drawn, all ranked."""
    data = exp.metrics
    data = data[(data["status"] == "done") & data[x].notna()].copy()
    ranked = [v for v in ranked_variants(exp) if v in set(data["variant"])]
    if not ranked:
        raise Skip(f"curves against {X_AXES[x]}: no finished run has them in its metrics.csv.")
    shown = ranked[:MAX_LINES]
    data = data[data["variant"].isin(shown)]
    # bytes seen differ a little between seeds (their windows differ): one x per variant and step
    data[x] = data.groupby(["variant", m.STEP])[x].transform("mean")
    return data, shown, ranked


def _x_scale(ax: plt.Axes, data: pd.DataFrame, x: str) -> pd.DataFrame:
    """Log x when the runs' final x span more than a decade (sizes under a tokens-per-parameter budget)."""
    finals = data.groupby("variant")[x].max()
    if finals.min() > 0 and finals.max() > 10 * finals.min():
        ax.set_xscale("log")
        return data[data[x] > 0]
    ax.xaxis.set_major_formatter(FuncFormatter(si_ticks))
    return data


def _curve_panel(ax: plt.Axes, data: pd.DataFrame, x: str, metric: str, shown: list[str]) -> None:
    data = _x_scale(ax, data, x)
    sns.lineplot(data=data, x=x, y=metric, hue="variant", hue_order=shown, palette=palette(shown),
                 errorbar=t_interval, err_kws={"alpha": 0.12}, ax=ax, legend=False)
    low, high = y_range(data.dropna(subset=[metric]), metric, x)
    if math.isfinite(low) and math.isfinite(high):
        ax.set_ylim(low, high)
    ax.set(xlabel=f"{X_AXES[x]} ({UNIT[x]})", ylabel=axis_label(metric), title=f"{LABELS[metric]} vs {X_AXES[x]}")


def _finish_curves(fig: plt.Figure, exp: Experiment, shown: list[str], ranked: list[str], title: str) -> None:
    handles = [Line2D([], [], color=c, lw=2, label=v) for v, c in palette(shown).items()]
    handles.append(ci_legend(n_seeds(exp), "band"))
    if len(ranked) > len(shown):
        title += f" ({len(shown)} best of {len(ranked)} variants)"
    fig.suptitle(title)
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), title="variant", frameon=False)
    fig.tight_layout()


def plot_curves(exp: Experiment, path: Path) -> Path:
    """Val loss (nats/token) and val bpb (bits/byte) against what the budget counts, one colour per
    variant, band = seed CI. With mixed tokenizers only bpb is drawn."""
    x = exp.x_axis
    data, shown, ranked = _curve_data(exp, x)
    curves = [m.VAL_BPB] if mixed_tokenizers(exp) else [m.VAL_LOSS, m.VAL_BPB]
    with style():
        fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves) + 2, 4.2), squeeze=False)
        for ax, metric in zip(axes[0], curves):
            _curve_panel(ax, data, x, metric, shown)
        title = f"{exp.name}: validation curves against {X_AXES[x]} (the budget's unit)"
        if len(curves) == 1:
            title += " — bits/byte only: runs use different tokenizers"
        _finish_curves(fig, exp, shown, ranked, title)
    return save(fig, path)


def plot_curves_seen(exp: Experiment, path: Path) -> Path:
    """Val bpb against tokens, bytes of text and FLOPs: what each comparison is equal in, side by side."""
    axes_drawn = [x for x in X_AXES if exp.metrics[x].notna().any()]
    if len(axes_drawn) < 2:
        raise Skip("curves against bytes and FLOPs: the runs' metrics.csv predate those columns.")
    with style():
        fig, axes = plt.subplots(1, len(axes_drawn), figsize=(4.6 * len(axes_drawn) + 2, 4.0), squeeze=False)
        for ax, x in zip(axes[0], axes_drawn):
            data, shown, ranked = _curve_data(exp, x)
            _curve_panel(ax, data, x, m.VAL_BPB, shown)
        _finish_curves(fig, exp, shown, ranked, f"{exp.name}: validation bits per byte against what was seen")
    return save(fig, path)


def plot_sensitivity(exp: Experiment, path: Path) -> Path:
    """Final val bpb against the tuned value, one line per arm, log x for positive numbers."""
    if not exp.tune:
        raise Skip("")
    table = tuning.sensitivity(exp).dropna(subset=["mean"])
    if table.empty:
        raise Skip("sensitivity: no tuned run has finished yet.")
    values = tuning.numeric_values(exp)
    positions = values or {v: i for i, v in enumerate(exp.levels[exp.tune["key"]])}
    best = tuning.best_values(exp).set_index("arm")["best"]
    arms = list(dict.fromkeys(table["arm"]))
    colours = palette(arms)
    with style():
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for i, (arm, rows) in enumerate(table.groupby("arm", sort=False)):
            # side by side, so that the intervals of arms at one value do not hide each other
            shift = (i - (len(arms) - 1) / 2) * 0.02
            xs = np.array([positions[v] * (1 + shift) if values else positions[v] + shift for v in rows["value"]])
            err = np.vstack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]])
            ax.errorbar(xs, rows["mean"], yerr=np.nan_to_num(err), color=colours[arm], marker="o", capsize=3, label=arm)
            if isinstance(best.get(arm), str):
                chosen = rows[rows["value"] == best[arm]]
                ax.scatter(xs[list(rows["value"]).index(best[arm])], chosen["mean"], marker="*", s=220,
                           color=colours[arm], zorder=3)
        if values and min(values.values()) > 0:
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(NullLocator())  # ticks at the tried values, not only at powers of ten
        ax.set_xticks(list(positions.values()), list(positions))
        key = exp.tune["key"]
        ax.set(xlabel=f"{key} ({'log scale' if values and min(values.values()) > 0 else 'value'})",
               ylabel=axis_label(m.FINAL_VAL_BPB), title=f"{exp.name}: final val bpb against {key}")
        fig.tight_layout()
        legend_below(fig, ax.get_legend_handles_labels()[0] + [
            Line2D([], [], marker="*", ls="none", color="grey", markersize=12, label="best value (lowest mean)")])
    return save(fig, path)


def plot_scaling(exp: Experiment, path: Path) -> Path:
    """Loss against compute, log-log: the sizes (mean over seeds, 95% CI) and each arm's fitted law."""
    fits = scaling.scale_fits(exp, draws=0) if exp.scale else None
    if fits is None:
        raise Skip("")
    if not fits.arms:
        raise Skip("scaling: no size has a finished run in every variant yet.")
    tables = scaling.point_tables(exp)
    colours = palette([f.arm for f in fits.arms])
    with style():
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for fit in fits.arms:
            intervals = [mean_ci(tables[(fit.arm, z)].set_index("seed").loc[fits.seeds, "loss"]) for z in fit.sizes]
            err = np.array([[s.mean - s.low, s.high - s.mean] for s in intervals]).T
            ax.errorbar(fit.compute, fit.loss, yerr=np.nan_to_num(err), fmt="o", color=colours[fit.arm],
                        capsize=3, label=fit.arm)
            if fit.law is not None:
                grid = np.geomspace(fit.compute.min() / 1.5, fit.compute.max() * 1.5, 100)
                ax.plot(grid, fit.law.loss(grid), color=colours[fit.arm], lw=1.5,
                        label=f"fit: E={fit.law.E:.3f}, α={fit.law.alpha:.3f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        seeds = f"{len(fits.seeds)} seed{'s' if len(fits.seeds) != 1 else ''} per size"
        ax.set(xlabel="training FLOPs (tokens seen × FLOPs per token)", ylabel=axis_label(m.FINAL_VAL_BPB),
               title=f"{exp.name}: loss against compute, {seeds}")
        fig.tight_layout()
        legend_below(fig, ax.get_legend_handles_labels()[0])
    return save(fig, path)


PLOTTERS: dict[str, Callable[[Experiment, Path], Path]] = {
    "curves": plot_curves, "curves_seen": plot_curves_seen, "sensitivity": plot_sensitivity,
    "scaling": plot_scaling,
}
