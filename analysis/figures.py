"""What every plot of the analysis shares: the headless backend, the 95% Student t interval the
tables report (handed to seaborn as its error-bar function), the style, atomic PNG writes, colours,
legends and tick labels. The plots are in analysis/plots.py and analysis/fair_plots.py."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on the machines that run experiments

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from analysis.stats import mean_ci  # noqa: E402
from analysis.tables import LABELS, UNITS, Experiment, complete_variants, done_runs  # noqa: E402

MAX_LINES = 10          # more curves than this is a tangle: the best ones are drawn
DPI = 110


class Skip(Exception):
    """A plot that cannot honestly be drawn; the message goes into the report."""


@dataclass
class PlotSet:
    paths: dict[str, Path] = field(default_factory=dict)   # key -> PNG written
    notes: list[str] = field(default_factory=list)         # why a plot is missing or partial


def t_interval(values: pd.Series) -> tuple[float, float]:
    """Seaborn error-bar function: the tables' 95% Student t interval."""
    s = mean_ci(values)
    return s.low, s.high


@contextlib.contextmanager
def style() -> Iterator[None]:
    # Scoped, so importing this module leaves other people's matplotlib settings alone.
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        yield


def save(fig: plt.Figure, path: Path) -> Path:
    """Write the PNG next to its final name, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def palette(variants: list[str]) -> dict[str, Any]:
    colours = sns.color_palette("colorblind" if len(variants) <= 10 else "husl", len(variants))
    return dict(zip(variants, colours))


def ranked_variants(exp: Experiment, metric: str = "final_val_bpb") -> list[str]:
    """Variants with at least one finished run, best (lowest mean) first; in a search, only the
    trials with every seed finished (as the report ranks them)."""
    done = done_runs(exp)
    if exp.search:
        done = done[done["variant"].isin(complete_variants(exp))]
    means = done.groupby("variant")[metric].mean().dropna()
    return list(means.sort_values(kind="stable").index)


def ci_legend(n_max: int, what: str) -> Any:
    if n_max >= 3:
        return Patch(alpha=0.3, color="grey", label=f"{what}: 95% CI over seeds (Student t)")
    if n_max == 2:                        # say why the bands look alarming
        return Patch(alpha=0.3, color="grey", label=f"{what}: 95% CI over 2 seeds\n"
                     "(Student t, t = 12.7: wide)")
    return Line2D([], [], color="none", label="one seed: no confidence interval")


def n_seeds(exp: Experiment) -> int:
    done = done_runs(exp)
    return int(done.groupby("variant")["seed"].nunique().max()) if len(done) else 0


def legend_below(fig: plt.Figure, handles: list[Any]) -> None:
    """Legend under the x labels (after tight_layout; bbox_inches="tight" makes room for it)."""
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(handles), 4), frameon=False)


def axis_label(metric: str) -> str:
    return f"{LABELS[metric]} ({UNITS[metric]})"



def y_range(data: pd.DataFrame, metric: str, x: str = "tokens") -> tuple[float, float]:
    """Y limits from the mean curves: the top is the worst mean after the first 10% of training,
    so the start (loss near log(vocab)) does not squash the differences that matter. Bands
    may run off the axes: with two seeds t(0.975, 1) = 12.7 makes them very wide."""
    means = data.groupby(["variant", x])[metric].mean()
    late = means[means.index.get_level_values(x) >= 0.1 * data[x].max()]
    top, bottom = float(late.max()), float(means.min())
    pad = max(top - bottom, 1e-6)
    return bottom - 0.1 * pad, top + 0.05 * pad


def si_ticks(value: float, _pos: Any = None, digits: int = 3) -> str:
    """Tick label 204800 -> '205k': token and parameter counts read better without 1e5."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g}{prefix}"
    return f"{value:.{digits}g}"
