"""Loss against compute across model sizes (a spec's `scale:` block): per variant a fit of

    L(C) = E + A * C^(-alpha)            (Kaplan et al. 2020; Hoffmann et al. 2022)

over its sizes, a bootstrap over seeds, and each variant's compute multiplier against the baseline.

Points. An arm is everything a run is but its size (analysis/tables.arm_labels). For each arm and
size, C = the training FLOPs a run saw (tokens seen x FLOPs per token: the same for every seed of a
size) and L = its final validation bits per byte, both averaged over the seeds.

Fit. For a fixed alpha the model is linear in (E, A), so least squares with E >= 0 and A >= 0 has a
closed form (the interior solution, else the best on either boundary); alpha is the best of a grid
over [ALPHAS[0], ALPHAS[-1]], refined around it. C is divided by the largest C first (A's unit is
then a loss). With 3 sizes the 3 parameters pass through the 3 means exactly.

Multiplier. C* = the largest compute the variant was measured at, L* = its fitted loss there. The
baseline reaches L* at C_b = C_ref * ((L* - E_b) / A_b)^(-1/alpha_b), or never when L* <= E_b (an
infinite multiplier). The multiplier is C_b / C*: above 1 the change is worth that many times the
baseline's compute; below 1 it costs compute.

Bootstrap. Seeds are drawn with replacement, the same draw for every arm (runs of one seed share
their batches, so arms are paired by seed); the size means are recomputed, every arm refitted and
the multiplier recomputed. With n seeds there are only C(2n-1, n) distinct draws (10 for 3 seeds, 126
for 5): up to DRAWS of them, every one is fitted once and weighted by its multinomial probability
(the exact bootstrap distribution, no Monte Carlo noise); beyond, DRAWS random draws. The 95%
interval is the estimate +- t(0.975, n-1) sqrt(n/(n-1)) x the bootstrap standard deviation (of log
multiplier; of alpha), which for a mean over seeds is exactly the t interval of the rest of the lab.
Percentile intervals are too narrow over few seeds: in 200 simulated experiments of
tests/test_scaling.py's design they covered the true multiplier 72% of the time with 3 seeds (no
resample of 3 seeds reaches beyond the range of the one-seed fits) and 86.5% with 5; this interval
covered it 92% and 95% of the time.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pandas as pd

from analysis.stats import seed_block, t_quantile
from analysis.tables import Experiment, arm_labels, done_runs, ordered_arms
from experiments import metrics

ALPHAS = np.geomspace(1e-3, 4.0, 200)     # the exponents tried first (then twice 100 between the best one's neighbours)
DRAWS = 2000
LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """L(C) = E + A (C / c_ref)^-alpha."""

    E: float
    A: float
    alpha: float
    c_ref: float

    def loss(self, compute: float | np.ndarray) -> float | np.ndarray:
        return self.E + self.A * (np.asarray(compute, dtype=float) / self.c_ref) ** -self.alpha

    def compute_for(self, loss: float) -> float:
        """The compute at which the law reaches `loss` (inf when it never does)."""
        if self.A <= 0 or loss <= self.E:
            return math.inf
        return self.c_ref * ((loss - self.E) / self.A) ** (-1 / self.alpha)

    @property
    def at_bound(self) -> bool:
        """alpha at an end of the range searched: the sizes do not pin the exponent down."""
        return self.alpha <= ALPHAS[0] * 1.01 or self.alpha >= ALPHAS[-1] / 1.01


def _least_squares(x: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row of x (alphas x sizes): (E, A, squared error) of loss ~ E + A x with E, A >= 0."""
    xm, lm = x.mean(axis=1, keepdims=True), loss.mean()
    sxx = ((x - xm) ** 2).sum(axis=1)
    a_free = ((x - xm) * (loss - lm)).sum(axis=1) / np.where(sxx > 0, sxx, np.inf)
    e_free = lm - a_free * xm[:, 0]
    a_zero_e = np.maximum(0.0, (x * loss).sum(axis=1) / (x * x).sum(axis=1))   # on the boundary E = 0
    e_zero_a = np.full(len(x), max(0.0, lm))                                     # on the boundary A = 0
    candidates = [(np.zeros(len(x)), a_zero_e), (e_zero_a, np.zeros(len(x)))]
    feasible = (a_free >= 0) & (e_free >= 0)
    candidates.append((np.where(feasible, e_free, np.nan), np.where(feasible, a_free, np.nan)))
    best_e, best_a, best_sse = None, None, None
    for e, a in candidates:
        sse = ((loss - e[:, None] - a[:, None] * x) ** 2).sum(axis=1)
        sse = np.where(np.isfinite(sse), sse, np.inf)
        if best_sse is None:
            best_e, best_a, best_sse = e, a, sse
        else:
            better = sse < best_sse
            best_e, best_a, best_sse = (np.where(better, e, best_e), np.where(better, a, best_a),
                                        np.minimum(sse, best_sse))
    return best_e, best_a, best_sse


def fit_power_law(compute: np.ndarray, loss: np.ndarray) -> PowerLaw:
    """Least-squares L(C) = E + A C^-alpha (E, A >= 0) through points (C_i, L_i); needs 3 distinct C."""
    compute, loss = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    if len(np.unique(compute)) < 3:
        raise ValueError(f"a fit of L(C) = E + A C^-alpha needs at least 3 distinct computes, got {len(np.unique(compute))}")
    c_ref = float(compute.max())
    scaled = compute / c_ref
    alphas = ALPHAS
    for _ in range(3):                   # the grid, then finer ones around its best
        e, a, sse = _least_squares(scaled[None, :] ** -alphas[:, None], loss)
        i = int(np.argmin(sse))
        lo, hi = alphas[max(i - 1, 0)], alphas[min(i + 1, len(alphas) - 1)]
        best = (float(e[i]), float(a[i]), float(alphas[i]))
        alphas = np.geomspace(lo, hi, 100)
    return PowerLaw(best[0], best[1], best[2], c_ref)


def multiplier(variant: PowerLaw, baseline: PowerLaw, c_star: float) -> float:
    """How many times c_star the baseline needs to reach the variant's fitted loss at c_star."""
    return baseline.compute_for(float(variant.loss(c_star))) / c_star


# ---------------------------------------------------------------------------------------------
# From an experiment

@dataclasses.dataclass
class ArmFit:
    arm: str
    sizes: list[str]
    compute: np.ndarray               # mean FLOPs per size (over the seeds used)
    loss: np.ndarray                  # mean final val bpb per size
    law: PowerLaw | None
    alpha_ci: tuple[float, float] = (math.nan, math.nan)
    c_star: float = math.nan
    multiplier: float = math.nan      # vs the reference arm (1 for the reference)
    multiplier_ci: tuple[float, float] = (math.nan, math.nan)
    never: float = 0.0                # share of draws in which the baseline never reaches the loss
    boot_alpha: np.ndarray = dataclasses.field(default_factory=lambda: np.empty((0, 2)))   # (value, weight) rows
    boot_multiplier: np.ndarray = dataclasses.field(default_factory=lambda: np.empty((0, 2)))


@dataclasses.dataclass
class ScaleFits:
    reference: str
    arms: list[ArmFit]
    seeds: list[int]                  # the seeds every arm finished at every size used
    left_out: str                     # what the complete block left out ('' when nothing)
    draws: int                        # resamples fitted (every distinct one, when that is at most DRAWS)


def point_tables(exp: Experiment, metric: str = metrics.FINAL_VAL_BPB) -> dict[tuple[str, str], pd.DataFrame]:
    """(arm, size) -> the finished runs' seed, compute (FLOPs seen) and loss."""
    axis = (exp.scale or {}).get("axis")
    done = done_runs(exp).copy()
    if done.empty or axis not in done.columns:
        return {}
    flops = done[metrics.FLOPS_SEEN] if metrics.FLOPS_SEEN in done.columns else pd.Series(np.nan, index=done.index)
    done["compute"] = flops.fillna(done[metrics.TOKENS_SEEN] * done[metrics.FLOPS_PER_TOKEN])
    done["arm"] = arm_labels(exp, done, axis)
    done = done.dropna(subset=["compute", metric])
    return {(arm, str(size)): group[["seed", "compute", metric]].rename(columns={metric: "loss"})
            for (arm, size), group in done.groupby(["arm", axis], sort=False)}


def _complete_block(exp: Experiment, tables: dict) -> tuple[list[int], list[tuple[str, str]], str]:
    """The seeds and (arm, size) columns of the largest complete block (analysis/stats.seed_block)."""
    columns = list(tables)
    seeds = list(exp.seeds)
    present = np.array([[s in set(tables[c]["seed"]) for c in columns] for s in seeds], dtype=bool)
    if present.size == 0:
        return [], [], ""
    rows, cols = seed_block(present)
    left = [f"seed {s}" for s, used, any_ in zip(seeds, rows, present.any(axis=1)) if any_ and not used]
    left += [f"{a} at {exp.scale['axis']}={z}" for (a, z), used in zip(columns, cols) if not used]
    return [s for s, u in zip(seeds, rows) if u], [c for c, u in zip(columns, cols) if u], "; ".join(left)


def _matrices(tables: dict, columns: list[tuple[str, str]], seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(compute, loss), each seeds x columns, for the complete block."""
    shape = (len(seeds), len(columns))
    compute, loss = np.empty(shape), np.empty(shape)
    for j, column in enumerate(columns):
        table = tables[column].drop_duplicates("seed").set_index("seed").loc[seeds]
        compute[:, j], loss[:, j] = table["compute"].to_numpy(), table["loss"].to_numpy()
    return compute, loss


def _means(matrices: tuple[np.ndarray, np.ndarray], columns: list, draw: np.ndarray) -> dict:
    """(arm, size) -> (mean compute, mean loss) over the drawn seeds (rows, with repeats)."""
    compute, loss = (m[draw].mean(axis=0) for m in matrices)
    return {column: (compute[j], loss[j]) for j, column in enumerate(columns)}


def _fit_all(means: dict, arms: list[str], sizes: dict[str, list[str]]) -> dict[str, PowerLaw | None]:
    laws = {}
    for arm in arms:
        points = np.array([means[(arm, z)] for z in sizes[arm]])
        laws[arm] = fit_power_law(points[:, 0], points[:, 1]) if len(points) >= 3 else None
    return laws


def scale_fits(exp: Experiment, draws: int = DRAWS, seed: int = 0) -> ScaleFits | None:
    """Every arm's fit, its alpha interval and its multiplier vs the reference arm (None without a scale: block)."""
    if not exp.scale:
        return None
    tables = point_tables(exp)
    seeds, columns, left_out = _complete_block(exp, tables)
    done = done_runs(exp)
    arms = [a for a in ordered_arms(exp, arm_labels(exp, done, exp.scale["axis"])) if any(c[0] == a for c in columns)]
    sizes = {a: [z for z in map(str, (s[exp.scale["axis"]] for s in exp.scale["sizes"])) if (a, z) in columns]
             for a in arms}
    if not arms or not seeds:
        return ScaleFits("", [], seeds, left_out, 0)
    matrices = _matrices(tables, columns, seeds)
    means = _means(matrices, columns, np.arange(len(seeds)))
    laws = _fit_all(means, arms, sizes)
    fits = [ArmFit(a, sizes[a], np.array([means[(a, z)][0] for z in sizes[a]]),
                   np.array([means[(a, z)][1] for z in sizes[a]]), laws[a]) for a in arms]
    for fit in fits:
        fit.c_star = float(fit.compute.max()) if len(fit.compute) else math.nan
    reference = fits[0]
    fitted = _bootstrap(fits, reference, matrices, columns, sizes, draws, seed)
    return ScaleFits(reference.arm, fits, seeds, left_out, fitted)


def resamples(n: int, draws: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Bootstrap resamples of n seeds (row indices) and their probabilities: all C(2n-1, n) distinct
    ones, each weighted by its multinomial probability (the exact bootstrap distribution), when there
    are at most `draws` of them; else `draws` random ones, equally weighted."""
    if math.comb(2 * n - 1, n) <= draws:
        combos = [np.array(c) for c in itertools.combinations_with_replacement(range(n), n)]
        weights = np.array([math.factorial(n) / math.prod(math.factorial(k) for k in np.bincount(c)) / n ** n
                            for c in combos])
        return combos, weights
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, n) for _ in range(draws)], np.full(draws, 1 / draws)


def _bootstrap(fits: list[ArmFit], reference: ArmFit, matrices: tuple[np.ndarray, np.ndarray], columns: list,
               sizes: dict, draws: int, seed: int) -> int:
    """Point multipliers, then every arm refitted on each seed resample: the intervals of alpha and of
    the multiplier. Returns how many resamples were fitted."""
    for fit in fits:
        if fit.law is not None and reference.law is not None:
            fit.multiplier = multiplier(fit.law, reference.law, fit.c_star)
    n_seeds = len(matrices[0])
    if n_seeds < 2 or draws == 0:
        return 0
    arms = [f.arm for f in fits]
    alphas: dict[str, list] = {a: [] for a in arms}       # (value, weight) per resample
    mults: dict[str, list] = {a: [] for a in arms}
    draws_, weights = resamples(n_seeds, draws, seed)
    for draw, weight in zip(draws_, weights):
        laws = _fit_all(_means(matrices, columns, draw), arms, sizes)
        for fit in fits:
            law, ref = laws[fit.arm], laws[reference.arm]
            if law is not None:
                alphas[fit.arm].append((law.alpha, weight))
            if law is not None and ref is not None:
                mults[fit.arm].append((multiplier(law, ref, fit.c_star), weight))
    for fit in fits:
        fit.boot_alpha, fit.boot_multiplier = np.array(alphas[fit.arm]), np.array(mults[fit.arm])
        if fit.law is not None:
            fit.alpha_ci = boot_t_interval(fit.law.alpha, fit.boot_alpha, n_seeds)
        if len(fit.boot_multiplier) and fit.arm != reference.arm:
            fit.multiplier_ci = boot_t_interval(fit.multiplier, fit.boot_multiplier, n_seeds, log=True)
            values, w = fit.boot_multiplier.T
            fit.never = float(w[np.isinf(values)].sum() / w.sum())
    return len(draws_)


def boot_t_interval(point: float, draws: np.ndarray, n: int, log: bool = False,
                    level: float = LEVEL) -> tuple[float, float]:
    """point ± t(1 - a/2, n - 1) * sqrt(n / (n - 1)) * the bootstrap standard deviation, over the
    (value, weight) rows of `draws` (on the log scale for a ratio). For the mean of n seeds this is
    exactly the Student t interval the rest of the lab reports (the bootstrap spread of a mean is
    sqrt((n - 1) / n) s / sqrt(n)); percentiles of so few seeds cannot be that wide (with 3 seeds
    no resample falls outside the range of the one-seed fits, which misses the truth 1 time in 4).
    A draw in which the baseline never reaches the loss makes the upper end infinite."""
    values, weights = draws[:, 0], draws[:, 1]
    finite = np.isfinite(values) & (values > 0 if log else True)
    if not math.isfinite(point) or finite.sum() < 2:
        return (float(np.min(values)) if len(values) else math.nan), math.inf
    x = np.log(values[finite]) if log else values[finite]
    w = weights[finite] / weights[finite].sum()
    sd = math.sqrt(float(np.sum(w * (x - np.sum(w * x)) ** 2)))
    half = t_quantile(0.5 + level / 2, n - 1) * math.sqrt(n / (n - 1)) * sd
    centre = math.log(point) if log else point
    low, high = centre - half, centre + half
    if log:
        low, high = math.exp(low), math.exp(high)
    return low, (math.inf if not finite.all() else high)
