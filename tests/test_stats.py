"""analysis.stats checked against scipy.stats and hand-worked numbers: t quantiles, p values,
intervals, seed-level paired effects, the complete block a comparison uses, Holm's correction.

scipy is a dev dependency only: the lab computes these itself (analysis/stats.py).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from analysis.effects import consecutive_effects, main_effects, paired_effects, simple_effects
from analysis.stats import (
    family_verdicts, holm, mean_ci, seed_block, seed_level_effect, t_quantile, t_two_sided_p)
from analysis.tables import load_experiment
from synthetic import Run, build_experiment, grid_runs

DFS = list(range(1, 31)) + [40, 99, 100, 101, 1000, 10_000]


# ---------------------------------------------------------------------------------------------
# Student t

@pytest.mark.parametrize("p, df, expected", [
    (0.975, 1, 12.706205), (0.975, 2, 4.302653), (0.975, 3, 3.182446), (0.975, 4, 2.776445),
    (0.975, 29, 2.045230), (0.975, 1000, 1.962339), (0.995, 2, 9.924843), (0.9, 1, 3.077684),
    (0.025, 2, -4.302653), (0.5, 7, 0.0),
])
def test_t_quantile_matches_table_values(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, abs=2e-6)


def test_t_quantile_and_p_reject_bad_arguments() -> None:
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)
    with pytest.raises(ValueError):
        t_two_sided_p(2.0, 1.5)


@pytest.mark.parametrize("df", DFS)
def test_t_quantile_matches_scipy(df: int) -> None:
    for p in (0.0005, 0.025, 0.3, 0.6, 0.9, 0.975, 0.995, 0.9995, 0.99995):
        assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("df", DFS)
def test_two_sided_p_matches_scipy(df: int) -> None:
    for t in (0.0, 1e-6, 0.1, 0.5, 1.0, 1.96, 2.5, 4.0, 10.0, 30.0, 1e4, -2.5):
        expected = 2 * scipy_stats.t.sf(abs(t), df)
        assert t_two_sided_p(t, df) == pytest.approx(expected, rel=1e-6, abs=1e-10)
    assert t_two_sided_p(math.inf, df) == 0.0 and math.isnan(t_two_sided_p(math.nan, df))


def test_beyond_1e5_df_the_normal_is_used() -> None:
    # documented: past 1e5 df the t is replaced by the normal (they agree to ~1e-5)
    assert t_quantile(0.975, 10**6) == pytest.approx(scipy_stats.t.ppf(0.975, 10**6), abs=1e-5)
    assert t_two_sided_p(2.0, 10**6) == pytest.approx(2 * scipy_stats.t.sf(2.0, 10**6), abs=1e-5)


def test_mean_ci_by_hand() -> None:
    # 1.5, 1.6, 1.7: mean 1.6; deviations ∓0.1, 0 → s² = 0.02/2 = 0.01, s = 0.1;
    # half-width = t(0.975, 2)·s/√3 = 4.302653·0.1/1.7320508 = 0.2484138.
    s = mean_ci([1.5, 1.6, 1.7])
    assert (s.n, s.mean, s.std) == (3, pytest.approx(1.6), pytest.approx(0.1))
    assert s.low == pytest.approx(1.6 - 0.2484138, abs=1e-6)
    assert s.high == pytest.approx(1.6 + 0.2484138, abs=1e-6)


def test_mean_ci_one_value_has_no_interval() -> None:
    s = mean_ci([1.7, float("nan")])   # NaN (a diverged value) is not a value
    assert s.n == 1 and s.mean == 1.7
    assert math.isnan(s.std) and math.isnan(s.low) and math.isnan(s.high)


def test_mean_ci_and_seed_effect_match_scipy_on_random_samples() -> None:
    rng = np.random.default_rng(3)
    for n in list(range(2, 12)) + [30, 100]:
        for _ in range(5):
            x = rng.normal(rng.normal(), rng.uniform(0.1, 3), size=n)
            ref = scipy_stats.ttest_1samp(x, 0.0)
            ci = ref.confidence_interval(0.95)
            s = mean_ci(x)
            assert (s.low, s.high) == (pytest.approx(ci.low, abs=1e-9),
                                       pytest.approx(ci.high, abs=1e-9))
            e = seed_level_effect(x)                        # one setting: the same test
            assert (e.low, e.high) == (pytest.approx(ci.low, abs=1e-9),
                                       pytest.approx(ci.high, abs=1e-9))
            assert e.p == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-10) and e.df == n - 1
            assert (e.p < 0.05) == (e.low > 0 or e.high < 0)   # p and interval agree


def test_seed_effect_averages_each_seed_first_matches_scipy() -> None:
    rng = np.random.default_rng(4)
    for seeds, settings in [(2, 3), (3, 2), (3, 4), (5, 4), (8, 2)]:
        d = rng.normal(0.1, 1, size=(seeds, 1)) + rng.normal(0, 0.5, size=(seeds, settings))
        ref = scipy_stats.ttest_1samp(d.mean(axis=1), 0.0)
        e = seed_level_effect(d)
        assert (e.n_seeds, e.n_settings, e.df) == (seeds, settings, seeds - 1)
        assert e.p == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-10)
        ci = ref.confidence_interval(0.95)
        assert e.low == pytest.approx(ci.low, abs=1e-9) and e.high == pytest.approx(ci.high, abs=1e-9)


def test_seed_effect_with_one_or_no_seed_has_no_test() -> None:
    one = seed_level_effect([[0.1, 0.2]])
    assert one.n_seeds == 1 and one.mean == pytest.approx(0.15)
    assert math.isnan(one.p) and math.isnan(one.low) and one.df == 0
    none = seed_level_effect(np.empty((0, 0)))
    assert none.n_seeds == 0 and math.isnan(none.mean)


def test_identical_differences_give_a_point_interval() -> None:
    e = seed_level_effect([0.2, 0.2, 0.2])
    assert (e.low, e.high, e.p) == (pytest.approx(0.2), pytest.approx(0.2), 0.0)
    assert seed_level_effect([0.0, 0.0, 0.0]).p == 1.0


# ---------------------------------------------------------------------------------------------
# Missing pairs: the complete block

def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[c == "x" for c in row] for row in rows])


@pytest.mark.parametrize("present, seeds, settings", [
    (["xxxx", "xxxx", "xxxx"], "111", "1111"),      # nothing missing
    (["xxxx", "xx.x", "xxxx"], "111", "1101"),      # one run lost: drop its setting (9 > 8 pairs)
    (["xxxx", "xxxx", "x..."], "110", "1111"),      # seed 2 under way: drop the seed (8 > 3)
    (["xx", "x."], "11", "10"),                     # a tie (2 = 2): keep the seeds
    (["xxx", "xxx", "..."], "110", "111"),          # seed 2 not started: it has no pair at all
    (["x.", ".x"], "11", "00"),                     # nothing complete: no block
])
def test_seed_block(present: list[str], seeds: str, settings: str) -> None:
    used_seeds, used_settings = seed_block(_mask(present))
    assert "".join(str(int(v)) for v in used_seeds) == seeds
    assert "".join(str(int(v)) for v in used_settings) == settings


def test_seed_effect_uses_the_complete_block() -> None:
    d = np.array([[0.1, 0.3, 0.2], [0.0, np.nan, 0.1], [0.2, 0.2, 0.3]])
    e = seed_level_effect(d)             # setting 1 is dropped: seeds average settings 0 and 2
    ref = scipy_stats.ttest_1samp([0.15, 0.05, 0.25], 0.0)
    assert (e.n_seeds, e.n_settings) == (3, 2)
    assert list(e.settings) == [True, False, True]
    assert e.mean == pytest.approx(0.15) and e.p == pytest.approx(ref.pvalue, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Holm

def test_holm_by_hand() -> None:
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, then max(0.06, 0.04·1) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is no comparison: the family is the other two; adjusted p never exceeds 1
    out = holm([0.2, math.nan, 0.7])
    assert out[0] == pytest.approx(0.4) and math.isnan(out[1]) and out[2] == pytest.approx(0.7)
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]).shape == (0,)


def test_holm_matches_its_definition_on_random_p() -> None:
    # Holm rejects H_(1..k) for the largest k with p_(j) <= α/(m − j + 1) for all j <= k; so the
    # adjusted p is below α exactly for the hypotheses that the step-down procedure rejects.
    rng = np.random.default_rng(5)
    for _ in range(200):
        p = rng.uniform(0, 0.1, size=rng.integers(1, 8))
        m, order = len(p), np.argsort(p)
        rejected = np.zeros(m, bool)
        for j, i in enumerate(order):
            if p[i] > 0.05 / (m - j):
                break
            rejected[i] = True
        assert list(holm(p) <= 0.05) == list(rejected)


def test_family_verdicts_read_the_adjusted_p() -> None:
    effects = [seed_level_effect(d) for d in ([-0.05, -0.04, -0.06], [0.10, 0.05, 0.075],
                                              [0.02, 0.01, 0.03], [0.1])]
    adjusted, verdicts = family_verdicts(effects)
    # raw p: 0.0130725, 0.0350987, 0.0741799 and none (one seed): Holm over the three
    assert adjusted[:3] == pytest.approx([0.0392175, 0.0701974, 0.0741799], abs=1e-6)
    assert verdicts == [True, False, False, None]


# ---------------------------------------------------------------------------------------------
# The report's tables, recomputed independently from the runs with scipy

def test_report_tables_match_scipy(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    seeds = [0, 1, 2, 3]
    seed_noise = rng.normal(0, 0.05, size=(2, 3, 4))  # (block, norm, seed): interaction

    def bpb(axes: dict[str, str], seed: int) -> float:
        i, j = ["post", "pre"].index(axes["model.block"]), "abc".index(axes["model.norm"])
        return 2.0 + 0.03 * i + 0.02 * j + seed_noise[i, j, seed] + rng.normal(0, 0.02)

    grid = {"model.block": ["post", "pre"], "model.norm": ["a", "b", "c"]}
    runs = grid_runs(grid, seeds, bpb)
    exp = load_experiment(build_experiment(tmp_path, "g", runs, axes=list(grid)))
    cells = pd.DataFrame([{**r.axes, "seed": r.seed, "bpb": r.bpb} for r in runs])

    def check(row: pd.Series, seed_means: pd.Series) -> None:
        ref = scipy_stats.ttest_1samp(seed_means.to_numpy(), 0.0)
        ci = ref.confidence_interval(0.95)
        assert row["df"] == len(seed_means) - 1
        assert row["mean_delta"] == pytest.approx(seed_means.mean(), abs=1e-12)
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(ci.low, abs=1e-9),
                                                   pytest.approx(ci.high, abs=1e-9))
        assert row["p"] == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-10)

    wide = cells.pivot_table(index=["seed", "model.norm"], columns="model.block", values="bpb")
    delta = wide["pre"] - wide["post"]                       # per seed and norm
    pooled = paired_effects(exp).set_index("factor")
    check(pooled.loc["model.block"], delta.groupby(level="seed").mean())
    within = simple_effects(exp).set_index(["factor", "setting"])
    for norm in "abc":
        check(within.loc[("model.block", f"model.norm={norm}")], delta.xs(norm, level=1))
    # Holm over the table's rows, against the definition
    raw = within["p"].to_numpy()
    assert within["p_holm"].to_numpy() == pytest.approx(holm(raw))
    for table in (pooled, within):     # a "yes" always has a seed-level interval without 0
        for row in table.itertuples():
            assert not row.significant or row.ci_low > 0 or row.ci_high < 0
    means = main_effects(exp).set_index(["axis", "level"])
    for level in ("post", "pre"):
        per_seed = cells[cells["model.block"] == level].groupby("seed")["bpb"].mean()
        ci = scipy_stats.t.interval(0.95, len(per_seed) - 1, loc=per_seed.mean(),
                                    scale=scipy_stats.sem(per_seed))
        got = means.loc[("model.block", level)]
        assert (got["ci_low"], got["ci_high"]) == (pytest.approx(ci[0], abs=1e-9),
                                                   pytest.approx(ci[1], abs=1e-9))


def test_consecutive_effects_in_a_grid_pool_by_seed(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    values = {(v, b, s): 2.0 + 0.05 * i + rng.normal(0, 0.03)
              for i, v in enumerate(["a", "b", "c"]) for b in ("post", "pre") for s in range(3)}
    runs = [run for v in ("a", "b", "c")
            for run in grid_runs({"model.block": ["post", "pre"]}, [0, 1, 2],
                                 lambda axes, s, v=v: values[(v, axes["model.block"], s)],
                                 variant=v)]
    exp = load_experiment(build_experiment(tmp_path, "cg", runs, axes=["model.block"],
                                           variants=["a", "b", "c"]))
    effects = consecutive_effects(exp).set_index("comparison")
    for before, after in (("a", "b"), ("b", "c")):
        seed_means = [np.mean([values[(after, b, s)] - values[(before, b, s)]
                               for b in ("post", "pre")]) for s in range(3)]
        ref = scipy_stats.ttest_1samp(seed_means, 0.0)
        row = effects.loc[f"{after} vs {before}"]
        assert (row["n_seeds"], row["n_settings"], row["df"]) == (3, 2, 2)
        assert row["p"] == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-10)
        assert row["ci_low"] == pytest.approx(ref.confidence_interval().low, abs=1e-9)
    assert effects["p_holm"].to_numpy() == pytest.approx(holm(effects["p"]))


def test_an_experiment_without_factors_has_empty_tables(tmp_path: Path) -> None:
    # an experiment without factors has no comparisons, and its tables are empty, not errors
    exp = load_experiment(build_experiment(tmp_path, "solo", [Run("only", 0, 1.5),
                                                              Run("only", 1, 1.6)]))
    assert paired_effects(exp).empty and simple_effects(exp).empty
    assert consecutive_effects(exp).empty and main_effects(exp).empty
