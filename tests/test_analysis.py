"""analysis: statistics checked against hand-worked numbers, reports and the CLI.

The experiments are synthetic (tests/synthetic.py writes the results/README.md layout), so these
tests need neither torch nor the runner.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from analysis.__main__ import main
from analysis.effects import (
    consecutive_effects, factors, main_effects, paired_deltas, paired_effects, simple_effects)
from analysis.plots import PlotSet, plot_search
from experiments.search.study import quiet_optuna
from analysis.report import build_report, to_markdown, write_report
from analysis.stats import mean_ci
from analysis.tables import (
    ExperimentError, comparable_metrics, curve_table, load_experiment, pivot_tables, progress,
    variant_table)
from synthetic import Run, build_experiment, build_search_experiment, grid_runs

T2 = 4.302653   # t(0.975, df=2)
LN2 = math.log(2)


# ---------------------------------------------------------------------------------------------
# Variants: unpaired CIs overlap, the paired CI excludes 0

BASE = [1.50, 1.60, 1.70]      # seeds 0, 1, 2
WIDE = [1.45, 1.56, 1.64]      # each seed a little better than its baseline partner


@pytest.fixture
def ladder(tmp_path: Path) -> Path:
    runs = [Run("baseline", s, BASE[s]) for s in range(3)]
    runs += [Run("wide", s, WIDE[s], params=300_000) for s in range(3)]
    return build_experiment(tmp_path, "ladder", runs, variants=["baseline", "wide"],
                            baseline="baseline")


def test_variant_table_by_hand(ladder: Path) -> None:
    table = variant_table(load_experiment(ladder)).set_index("variant")
    base, wide = table.loc["baseline"], table.loc["wide"]
    assert base["n"] == 3 and wide["params"] == 300_000
    # baseline: mean 1.6, s = 0.1, half-width 0.2484138 (see test_mean_ci_by_hand)
    assert base["final_val_bpb_ci_low"] == pytest.approx(1.3515862, abs=1e-6)
    assert base["final_val_bpb_ci_high"] == pytest.approx(1.8484138, abs=1e-6)
    # wide: mean 4.65/3 = 1.55; deviations -0.10, +0.01, +0.09 → SS = 0.0182, s² = 0.0091,
    # s = 0.0953939; half-width = 4.302653·0.0953939/√3 = 0.2369722
    assert wide["final_val_bpb_mean"] == pytest.approx(1.55)
    assert wide["final_val_bpb_std"] == pytest.approx(0.0953939, abs=1e-6)
    assert wide["final_val_bpb_ci_low"] == pytest.approx(1.55 - 0.2369722, abs=1e-6)
    # nats/token of a char run = bpb·ln 2 (1 byte per token in the synthetic data)
    assert base["final_val_loss_mean"] == pytest.approx(1.6 * LN2)
    # The two unpaired intervals overlap widely ...
    assert wide["final_val_bpb_ci_high"] > base["final_val_bpb_ci_low"]


def test_paired_effect_excludes_zero_by_hand(ladder: Path) -> None:
    effects = paired_effects(load_experiment(ladder), "final_val_bpb")
    assert list(effects["comparison"]) == ["wide vs baseline"]
    row = effects.iloc[0]
    # ... but seed by seed: Δ = -0.05, -0.04, -0.06 → mean -0.05; deviations 0, +0.01, -0.01
    # → s² = 0.0002/2 = 0.0001, s = 0.01; half-width = 4.302653·0.01/√3 = 0.0248414.
    # t = -0.05/(0.01/√3) = -8.660254 on 2 df, where P(|T| <= t) = t/√(2 + t²) = 0.9869275,
    # so p = 0.0130725; one comparison, so Holm leaves it as it is.
    assert (row["n_seeds"], row["n_settings"], row["df"]) == (3, 1, 2)
    assert row["mean_delta"] == pytest.approx(-0.05)
    assert row["std_delta"] == pytest.approx(0.01)
    assert row["ci_low"] == pytest.approx(-0.0748414, abs=1e-6)
    assert row["ci_high"] == pytest.approx(-0.0251586, abs=1e-6)
    assert row["p"] == pytest.approx(0.0130725, abs=1e-6)
    assert row["p_holm"] == row["p"]
    assert bool(row["significant"]) is True
    # In nats/token every Δ scales by ln 2.
    nats = paired_effects(load_experiment(ladder), "final_val_loss").iloc[0]
    assert nats["mean_delta"] == pytest.approx(-0.05 * LN2)


def test_pairs_are_matched_by_seed(ladder: Path) -> None:
    deltas = paired_deltas(load_experiment(ladder)).sort_values("seed")
    assert list(deltas["seed"]) == [0, 1, 2]
    assert list(deltas["delta"]) == pytest.approx([-0.05, -0.04, -0.06])


@pytest.mark.parametrize("variants, baseline, expected", [
    (["small", "baseline", "big"], None, "baseline"),   # the variant named baseline
    (["small", "big"], None, "small"),                   # else the first listed
    (["small", "baseline", "big"], "big", "big"),        # experiment.json's choice wins
])
def test_baseline_choice(tmp_path: Path, variants: list[str], baseline: str | None,
                         expected: str) -> None:
    runs = [Run(v, s, 1.5 + 0.01 * i + 0.001 * s) for i, v in enumerate(variants)
            for s in (0, 1)]
    exp = load_experiment(build_experiment(tmp_path, "b", runs, variants=variants,
                                           baseline=baseline))
    effects = paired_effects(exp)
    assert set(effects["reference"]) == {expected}
    assert sorted(effects["level"]) == sorted(v for v in variants if v != expected)


# ---------------------------------------------------------------------------------------------
# Grids: partner = same seed, same other-axis values, this axis at its first level; the unit of
# inference is the seed (each seed's pairs are averaged over the settings first: df = seeds − 1)

GRID = {("a1", "b1"): (2.00, 2.10, 2.05), ("a2", "b1"): (1.90, 1.98, 1.97),
        ("a1", "b2"): (2.20, 2.30, 2.25), ("a2", "b2"): (2.04, 2.16, 2.09)}   # seeds 0, 1, 2
AXES = {"model.block": ["a1", "a2"], "model.norm": ["b1", "b2"]}


def _grid(tmp_path: Path, diverged: tuple[str, str, int] | None = None) -> Path:
    def bpb(axes: dict[str, str], seed: int) -> float:
        return GRID[(axes["model.block"], axes["model.norm"])][seed]

    runs = grid_runs(AXES, [0, 1, 2], bpb)
    for run in runs:
        if diverged == (run.axes["model.block"], run.axes["model.norm"], run.seed):
            run.status = "diverged"
    return build_experiment(tmp_path, "grid", runs, axes=list(AXES))


def test_grid_paired_effects_by_hand(tmp_path: Path) -> None:
    exp = load_experiment(_grid(tmp_path))
    assert [f.column for f in factors(exp)] == ["model.block", "model.norm"]  # names aren't one
    effects = paired_effects(exp).set_index("factor")
    block = effects.loc["model.block"]
    # Δ (a2 − a1) at b1: -0.10, -0.12, -0.08; at b2: -0.16, -0.14, -0.16 (seeds 0, 1, 2).
    # Seed means: -0.13, -0.13, -0.12 → mean -0.1266667; deviations -1/300, -1/300, +2/300
    # → SS = 6/90000, s² = 3.333e-5, s = 0.0057735; half-width = 4.302653·0.0057735/√3 =
    # 0.0143422 (df = 3 seeds − 1 = 2, not 6 pairs − 1 = 5).
    assert (block["n_seeds"], block["n_settings"], block["n_pairs"]) == (3, 2, 6)
    assert block["df"] == 2 and block["reference"] == "a1"
    assert block["mean_delta"] == pytest.approx(-0.38 / 3)
    assert block["std_delta"] == pytest.approx(0.0057735, abs=1e-7)
    assert block["ci_low"] == pytest.approx(-0.38 / 3 - 0.0143422, abs=1e-6)
    assert block["ci_high"] == pytest.approx(-0.38 / 3 + 0.0143422, abs=1e-6)
    # t = -0.1266667/(0.0057735/√3) = -38; p = 1 − 38/√(2 + 38²) = 0.0006918
    assert block["p"] == pytest.approx(0.0006918, abs=1e-7)
    norm = effects.loc["model.norm"]
    # Δ (b2 − b1) at a1: +0.20, +0.20, +0.20; at a2: +0.14, +0.18, +0.12 → seed means 0.17,
    # 0.19, 0.16; mean 0.1733333; deviations -1/300, +5/300, -4/300 → SS = 42/90000,
    # s² = 2.3333e-4, s = 0.0152753; half-width = 4.302653·0.0152753/√3 = 0.0379459
    assert norm["mean_delta"] == pytest.approx(0.52 / 3)
    assert norm["ci_low"] == pytest.approx(0.52 / 3 - 0.0379459, abs=1e-6)
    # t = 0.1733333/(0.0152753/√3) = 19.654; p = 1 − 19.654/√(2 + 19.654²) = 0.0025787
    assert norm["p"] == pytest.approx(0.0025787, abs=1e-6)
    # Holm over the table's two comparisons: 2 · 0.0006918 = 0.0013836, then
    # max(0.0013836, 1 · 0.0025787) = 0.0025787.
    assert block["p_holm"] == pytest.approx(2 * block["p"])
    assert norm["p_holm"] == pytest.approx(norm["p"])
    assert bool(block["significant"]) is True and bool(norm["significant"]) is True


def test_issue_example_pooled_pairs_are_not_independent(tmp_path: Path) -> None:
    """Issue 12's example: 3 seeds whose Δ is +0.10, 0.00, +0.05 in every one of 4 settings."""
    seed_delta = {0: 0.10, 1: 0.00, 2: 0.05}
    settings = ["n1", "n2", "n3", "n4"]

    def bpb(axes: dict[str, str], seed: int) -> float:
        level = 2.0 + 0.1 * settings.index(axes["model.norm"]) + 0.03 * seed
        return level + (seed_delta[seed] if axes["model.block"] == "pre" else 0.0)

    runs = grid_runs({"model.block": ["post", "pre"], "model.norm": settings}, [0, 1, 2], bpb)
    exp = load_experiment(build_experiment(tmp_path, "ex", runs,
                                           axes=["model.block", "model.norm"]))
    row = paired_effects(exp).set_index("factor").loc["model.block"]
    # Seed means +0.10, 0.00, +0.05: mean 0.05, s = 0.05, half-width 4.302653·0.05/√3 = 0.1242069
    # → [-0.0742069, +0.1742069]; t = 0.05/(0.05/√3) = √3, p = 1 − √3/√5 = 0.2254033.
    assert (row["n_seeds"], row["n_settings"], row["df"]) == (3, 4, 2)
    assert row["ci_low"] == pytest.approx(-0.0742069, abs=1e-6)
    assert row["ci_high"] == pytest.approx(0.1742069, abs=1e-6)
    assert row["p"] == pytest.approx(1 - math.sqrt(3 / 5), abs=1e-9)
    assert bool(row["significant"]) is False
    # The 12 pairs taken as independent (df = 11) would have excluded 0: [+0.0229, +0.0771].
    pooled = mean_ci(paired_deltas(exp).query("factor == 'model.block'")["delta"])
    assert (pooled.n, round(pooled.low, 4), round(pooled.high, 4)) == (12, 0.0229, 0.0771)
    text = build_report(exp, PlotSet())
    assert ("| model.block: pre vs post | 3 | 4 | 0.0500 | [-0.0742, 0.1742] | 0.2254 |"
            in text)
    assert "model.block: pre vs post | 3 | 4 | 0.0500 | [-0.0742, 0.1742] | 0.2254 | " \
           "0.2254 | no: within seed noise |" in text


def test_grid_main_effects_and_pivot_by_hand(tmp_path: Path) -> None:
    exp = load_experiment(_grid(tmp_path))
    main = main_effects(exp).set_index(["axis", "level"])
    # a1, each seed's mean over b1 and b2: (2.00+2.20)/2 = 2.10, 2.20, 2.15 → mean 2.15,
    # s = 0.05, half-width = 4.302653·0.05/√3 = 0.1242069 (n = 3 seeds, not 6 runs)
    a1 = main.loc[("model.block", "a1")]
    assert a1["n"] == 3 and a1["mean"] == pytest.approx(2.15)
    assert a1["std"] == pytest.approx(0.05)
    assert a1["ci_low"] == pytest.approx(2.15 - 0.1242069, abs=1e-6)
    # a2: 1.97, 2.07, 2.03; b1: 1.95, 2.04, 2.01; b2: 2.12, 2.23, 2.17
    assert main.loc[("model.block", "a2"), "mean"] == pytest.approx(6.07 / 3)
    assert main.loc[("model.norm", "b1"), "mean"] == pytest.approx(6.00 / 3)
    assert main.loc[("model.norm", "b2"), "mean"] == pytest.approx(6.52 / 3)
    pivot = pivot_tables(exp)[("model.block", "model.norm")]
    # each cell: mean of its three seeds
    expected = pd.DataFrame([[6.15 / 3, 6.75 / 3], [5.85 / 3, 6.29 / 3]], index=["a1", "a2"],
                            columns=["b1", "b2"])
    assert pivot.to_numpy() == pytest.approx(expected.to_numpy())
    assert list(pivot.index) == ["a1", "a2"] and list(pivot.columns) == ["b1", "b2"]


def test_grid_diverged_run_leaves_out_a_seed_or_a_setting(tmp_path: Path) -> None:
    exp = load_experiment(_grid(tmp_path, diverged=("a1", "b2", 1)))
    effects = paired_effects(exp).set_index("factor")
    # block: seed 1 has no pair at b2. The complete blocks are seeds {0, 2} × {b1, b2} (4 pairs)
    # and seeds {0, 1, 2} × {b1} (3 pairs): the larger one is used, so seed 1 is left out and
    # the seed means are -0.13 and -0.12 → mean -0.125 on 1 df.
    block = effects.loc["model.block"]
    assert (block["n_seeds"], block["n_settings"], block["df"]) == (2, 2, 1)
    assert block["mean_delta"] == pytest.approx(-0.125)
    assert block["left_out"] == "seed 1"
    # norm: seed 1 loses its pair at a1 → seeds 0, 2: 0.17, 0.16
    assert effects.loc["model.norm", "mean_delta"] == pytest.approx(0.165)
    main = main_effects(exp).set_index(["axis", "level"])
    assert main.loc[("model.block", "a1"), "n"] == 2
    assert main.loc[("model.block", "a1"), "mean"] == pytest.approx(2.125)  # 2.10, 2.15
    text = build_report(exp, PlotSet())
    assert "model.block: a2 vs a1: seed 1; model.norm: b2 vs b1: seed 1." in text
    # and why: the run that ended without a score is named beside the comparisons it touches
    diverged = exp.runs.loc[exp.runs["status"] == "diverged", "variant"].item()
    assert set(effects["unfinished"]) == {f"{diverged} seed 1 diverged"}
    simple = simple_effects(exp).set_index("comparison")["unfinished"]
    assert simple["model.block: a2 vs a1 (at model.norm=b2)"] == f"{diverged} seed 1 diverged"
    assert simple["model.block: a2 vs a1 (at model.norm=b1)"] == ""


def test_a_variant_that_diverged_is_flagged_beside_its_verdict(tmp_path: Path) -> None:
    """post diverges on seed 2; on the seeds that survive it looks clearly better."""
    runs = [Run("baseline", s, 1.50 + 0.01 * s) for s in range(3)] + \
           [Run("post", s, 1.40 + 0.01 * s + 0.001 * (s == 1), status="diverged" if s == 2 else "done")
            for s in range(3)] + [Run("pre", s, 1.50 + 0.01 * s - 0.002 * (s == 1)) for s in range(3)]
    exp = load_experiment(build_experiment(tmp_path, "d", runs, variants=["baseline", "post", "pre"],
                                           baseline="baseline"))
    effects = paired_effects(exp).set_index("level")
    assert effects.loc["post", "n_seeds"] == 2 and effects.loc["post", "unfinished"] == "post seed 2 diverged"
    assert effects.loc["pre", "unfinished"] == ""
    consecutive = consecutive_effects(exp).set_index("level")
    assert consecutive.loc["post", "unfinished"] == consecutive.loc["pre", "unfinished"] == "post seed 2 diverged"
    text = build_report(exp, PlotSet())
    assert "**Runs that did not finish** (marked † above)" in text and "post vs baseline: post seed 2 diverged" in text
    post_row = next(line for line in text.splitlines() if line.startswith("| post vs baseline |"))
    pre_row = next(line for line in text.splitlines() if line.startswith("| pre vs baseline |"))
    assert post_row.endswith(" † |") and not pre_row.endswith(" † |")


def test_numeric_axis_values_match_the_plan(tmp_path: Path) -> None:
    runs = grid_runs({"model.n_layer": [4, 2]}, [0, 1], lambda a, s: 2.0 - 0.1 * a["model.n_layer"]
                     + 0.01 * s)
    exp = load_experiment(build_experiment(tmp_path, "n", runs, axes=["model.n_layer"]))
    assert exp.levels == {"model.n_layer": ["4", "2"]}   # spec order, first level = reference
    row = paired_effects(exp).iloc[0]
    assert (row["level"], row["reference"], row["n_pairs"]) == ("2", "4", 2)
    assert row["mean_delta"] == pytest.approx(0.2)


def test_variants_and_grid_together(tmp_path: Path) -> None:
    def bpb(variant: str) -> Callable[[dict[str, str], int], float]:
        return lambda axes, seed: (1.5 + (0.1 if variant == "wide" else 0)
                                   + (0.02 if axes["model.block"] == "pre" else 0) + 0.01 * seed)

    runs = [run for v in ("baseline", "wide")            # labels like "wide, block=pre"
            for run in grid_runs({"model.block": ["post", "pre"]}, [0, 1], bpb(v), variant=v)]
    exp = load_experiment(build_experiment(tmp_path, "vg", runs, axes=["model.block"],
                                           variants=["baseline", "wide"]))
    assert exp.variant_order[:2] == ["baseline, block=post", "baseline, block=pre"]
    effects = paired_effects(exp).set_index("factor")
    # each variant pair shares seed and block (4 pairs), each block pair seed and variant
    assert effects.loc["variant", "n_pairs"] == 4
    assert effects.loc["variant", "mean_delta"] == pytest.approx(0.1)
    assert effects.loc["model.block", "mean_delta"] == pytest.approx(0.02)


# ---------------------------------------------------------------------------------------------
# Reports

def test_write_report_writes_markdown_and_plots(ladder: Path, capsys: pytest.CaptureFixture
                                                ) -> None:
    assert main([str(ladder)]) == 0                # the CLI is write_report plus a print
    path = Path(capsys.readouterr().out.strip())
    assert path == ladder / "report.md"
    text = path.read_text()
    pngs = sorted((ladder / "plots").glob("*.png"))
    assert len(pngs) >= 4
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](plots/{png.name})" in text      # linked relative to the report
    assert not list(ladder.rglob("*.tmp"))         # atomic writes leave no temp files
    assert "**6 of 6 runs done**" in text
    assert ("| wide vs baseline | 3 | -0.0500 | [-0.0748, -0.0252] | 0.0131 | 0.0131 | "
            "yes: lower (better) |") in text
    assert "The family is this table's one tested comparison" in text
    assert "ROMEO: a sample from wide seed 0." in text     # the best run's sample
    assert "```not a fence```" in text.split("## Sample")[1]  # the sample cannot close its fence
    assert "- **variants**: `baseline`; `wide`" in text
    assert write_report(ladder) == path            # rerunning replaces, never appends


def test_edge_cases_one_seed_diverged_unfinished_mixed_tokenizers(tmp_path: Path) -> None:
    runs = [Run("char", 0, 1.60), Run("bpe", 0, 1.40, tokenizer="gpt2", params=5_000_000),
            Run("bpe-big", 0, 1.20, tokenizer="gpt2", status="diverged"),
            Run("char-big", 0, 1.50, status="running"),
            Run("char-huge", 0, 1.50, in_runs_csv=False)]       # planned, not started
    exp_dir = build_experiment(tmp_path, "edge", runs,
                               variants=["char", "bpe", "bpe-big", "char-big", "char-huge"])
    exp = load_experiment(exp_dir)
    # unfinished: N comes from experiment.json (5), not from runs.csv (4 rows)
    assert progress(exp) == {"done": 2, "diverged": 1, "running": 1, "pending": 1,
                             "planned": 5}
    # one seed: numbers but no interval
    table = variant_table(exp).set_index("variant")
    assert table.loc["char", "n"] == 1 and math.isnan(table.loc["char", "final_val_bpb_ci_low"])
    # diverged: not in the statistics
    assert table.loc["bpe-big", "n"] == 0 and math.isnan(table.loc["bpe-big",
                                                                   "final_val_bpb_mean"])
    # mixed tokenizers: only bits per byte are comparable
    assert comparable_metrics(exp) == ["final_val_bpb"]
    assert pd.isna(paired_effects(exp).set_index("level").loc["bpe", "significant"])

    text = write_report(exp_dir).read_text()
    assert "**2 of 5 runs done** (1 diverged, 1 running, 1 pending)" in text
    assert "One seed: no confidence interval" in text
    assert "| bpe | gpt2 | 1 | 1.4000 | n=1: no CI | — |" in text
    assert "nats/token are not compared" in text
    assert "loss mean" not in text and "(nats/token)" not in text
    left_out = text.split("## Runs left out of the statistics")[1].split("##")[0]
    assert "bpe-big" in left_out and "diverged" in left_out
    assert "1 running, 1 pending" in left_out
    assert len(list((exp_dir / "plots").glob("*.png"))) >= 4   # plots cope with all of it


def test_report_of_an_experiment_with_nothing_finished(tmp_path: Path) -> None:
    runs = [Run("baseline", 0, 1.5, status="running"), Run("wide", 0, 1.4, in_runs_csv=False)]
    exp_dir = build_experiment(tmp_path, "early", runs, variants=["baseline", "wide"])
    text = write_report(exp_dir).read_text()
    assert "**0 of 2 runs done**" in text
    assert "no finished run" in text
    assert not list((exp_dir / "plots").glob("*.png"))
    assert "## Sample" not in text


def test_grid_report_has_main_effects_and_pivot(tmp_path: Path) -> None:
    exp = load_experiment(_grid(tmp_path))
    text = build_report(exp, PlotSet())          # tables only: the plots are tested elsewhere
    assert "| model.block | a1 | 3 | 2.1500 | [2.0258, 2.2742] |" in text
    assert "### `model.block` × `model.norm`: mean final val bpb (bits/byte)" in text
    assert "| model.block=a2 | 1.9500 | 2.0967 |" in text
    assert ("| model.block: a2 vs a1 | 3 | 2 | -0.1267 | [-0.1410, -0.1123] | 0.0007 | 0.0014 | "
            "yes: lower (better) |") in text
    assert ("The family is this table's 2 tested comparisons: Holm's correction holds the "
            "chance of any false \"yes\" among them at 5%") in text


def test_search_report_and_optuna_plots(tmp_path: Path) -> None:
    exp = load_experiment(build_search_experiment(tmp_path, "search", [1.9, 1.7, 1.8, 1.6]))
    plots = PlotSet()
    plot_search(exp, exp.path / "plots", plots)       # the other plots: see the ladder test
    text = build_report(exp, plots)
    for name in ("search_history", "search_importances", "search_parallel"):
        assert (exp.path / "plots" / f"{name}.png").is_file()
        assert f"](plots/{name}.png)" in text
    assert "Best trial: **#3**" in text and "variant: trial-3" in text   # its resolved spec
    assert "| train.lr | 0.0008 |" in text                               # the study's params


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_no_parallel_coordinate_line_is_drawn_white_on_the_page(direction: str) -> None:
    import optuna
    from matplotlib.collections import LineCollection

    from analysis.plots import no_white_lines
    study = optuna.create_study(direction=direction)
    for x in range(8):
        study.add_trial(optuna.trial.create_trial(params={"x": x, "y": 7 - x}, value=float(x), distributions={
            "x": optuna.distributions.IntDistribution(0, 7), "y": optuna.distributions.IntDistribution(0, 7)}))

    def lightness() -> tuple[float, float]:  # of the best and of the lightest line (white: 3)
        [lines] = [c for c in ax.collections if isinstance(c, LineCollection)]
        rgb = lines.to_rgba(lines.get_array())[:, :3].sum(axis=1)
        best = study.best_trial.number
        return rgb[best], rgb.max()
    with quiet_optuna():
        ax = optuna.visualization.matplotlib.plot_parallel_coordinate(study)
    best_before, lightest_before = lightness()
    assert lightest_before > 2.9          # Optuna's own map ends on white
    no_white_lines(ax)
    best_after, lightest_after = lightness()
    assert lightest_after < 2.6 and (best_after < lightest_after) == (best_before < lightest_before)


def test_search_with_one_parameter_skips_importances(tmp_path: Path) -> None:
    exp = load_experiment(build_search_experiment(tmp_path, "one", [1.9, 1.7], n_params=1))
    plots = PlotSet()
    plot_search(exp, tmp_path / "plots", plots)       # the Optuna plots alone
    assert sorted(plots.paths) == ["search_history", "search_parallel"]
    assert "importances skipped: 2 completed trial(s) and 1 parameter(s) that vary" in plots.notes[0]
    assert "importances skipped" in build_report(exp, plots)


def test_a_parameter_no_completed_trial_varied_is_left_out_of_the_importances(tmp_path: Path) -> None:
    """fANOVA gives a parameter every completed trial had at one value an importance of ~0: not estimable."""
    exp = load_experiment(build_search_experiment(tmp_path, "fixed", [1.9, 1.7, 1.8], layers=2))
    plots = PlotSet()
    plot_search(exp, tmp_path / "plots", plots)
    assert "search_importances" not in plots.paths
    assert plots.notes[0].startswith("Optuna parameter importances leave out model.n_layer: every completed trial "
                                     "had the same value of it, so its importance cannot be estimated")
    assert "3 completed trial(s) and 1 parameter(s) that vary among them" in plots.notes[1]


def test_to_markdown_escapes_and_marks_missing() -> None:
    df = pd.DataFrame({"a|b": ["x|y", None], "v": [1.23456, float("nan")]})
    assert to_markdown(df).splitlines() == [
        "| a\\|b | v |", "|---|---:|", "| x\\|y | 1.2346 |", "| — | — |"]


# ---------------------------------------------------------------------------------------------
# Bad input

def test_cli_missing_folder_exits_2_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "analysis", str(tmp_path / "nope")],
                            capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_folder_without_runs_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "has no runs.csv" in err and len(err.strip().splitlines()) == 1


def test_runs_csv_without_required_columns(tmp_path: Path) -> None:
    (tmp_path / "runs.csv").write_text("run_id,loss\nabc,1.0\n")
    with pytest.raises(ExperimentError, match="lacks the column"):
        load_experiment(tmp_path)
    (tmp_path / "runs.csv").write_text("run_id,variant,seed,status\nabc,base,0,done\n")
    (tmp_path / "experiment.json").write_text("{not json")
    with pytest.raises(ExperimentError, match="not valid JSON"):
        load_experiment(tmp_path)


@pytest.mark.parametrize("field, value, says", [
    ("seeds", ["x"], "'seeds' = ['x'] must be a list of integer seeds"),
    ("runs", "zzz", "'runs' = 'zzz' must be a list of the planned runs"),
    ("runs", [1, 2], "'runs' = [1, 2] must be a list of the planned runs"),
    ("runs", [{"run_id": "a", "axes": []}], "'runs' = [{'axes': [], 'run_id': 'a'}] has entry 0 = {'axes': [], "
                                            "'run_id': 'a'}; it must be"),   # brief() sorts a dict's keys
    ("variants", 5, "'variants' = 5 must be a list of variant names"),
    ("axes", [1, None], "'axes' = [1, None] must be a list of the grid's keys"),
    ("tune", "zzz", "'tune' = 'zzz' must be null or {\"key\": a spec key"),
    ("tune", {"key": 5, "values": 3}, "'tune' = {'key': 5, 'values': 3} has 'key' = 5; it must be"),
    ("scale", "zzz", "'scale' = 'zzz' must be null or {\"axis\""),
    ("scale", {"keys": 1}, "'scale' = {'keys': 1} lacks 'axis'; it must be"),
    ("budget", {"flops": "x"}, "'budget' = {'flops': 'x'} has flops = 'x', not a positive number; it must be"),
    ("search", "yes", "'search' = 'yes' must be null or an object"),
])
def test_a_wrongly_typed_experiment_json_field_is_one_error_line(ladder: Path, capsys: pytest.CaptureFixture,
                                                                  field: str, value: object, says: str) -> None:
    plan = json.loads((ladder / "experiment.json").read_text())
    (ladder / "experiment.json").write_text(json.dumps(plan | {field: value}))
    before = sorted(ladder.rglob("*"))
    with pytest.raises(ExperimentError, match="run the experiment's spec again"):
        load_experiment(ladder)
    assert main([str(ladder)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: cannot analyse {ladder}: {ladder / 'experiment.json'}: {says}")
    assert err.count("\n") == 1 and sorted(ladder.rglob("*")) == before


def test_experiment_json_is_optional(tmp_path: Path, ladder: Path) -> None:
    (ladder / "experiment.json").unlink()
    exp = load_experiment(ladder)          # axes and variants fall back to runs.csv
    assert exp.variant_order == ["baseline", "wide"] and exp.axes == []
    assert json.loads(json.dumps(progress(exp))) == {"done": 6, "planned": 6}


def test_missing_runs_csv_columns_come_from_summary_json(ladder: Path) -> None:
    runs = pd.read_csv(ladder / "runs.csv")
    runs[["run_id", "variant", "seed", "status"]].to_csv(ladder / "runs.csv", index=False)
    table = variant_table(load_experiment(ladder)).set_index("variant")
    assert table.loc["wide", "final_val_bpb_mean"] == pytest.approx(1.55)
    assert table.loc["wide", "params"] == 300_000


def test_curve_table_ends_at_the_final_values(ladder: Path) -> None:
    curves = curve_table(load_experiment(ladder), "val_bpb")
    last = curves[curves["tokens"] == curves["tokens"].max()].set_index("variant")
    # the synthetic curves end at each run's final bpb, so the last point is the seed CI above
    assert last.loc["baseline", "n"] == 3
    assert last.loc["baseline", "mean"] == pytest.approx(1.6)
    assert last.loc["baseline", "ci_low"] == pytest.approx(1.3515862, abs=1e-6)


def test_best_trial_is_scored_by_its_mean_over_seeds(tmp_path: Path) -> None:
    from analysis.report import best_trial
    from analysis.tables import load_experiment

    # Trial 0: seeds 1.00 and 2.00 (mean 1.50); trial 1: 1.20 and 1.30 (mean 1.25). The best single
    # run belongs to trial 0, but Optuna (mean over seeds) ranks trial 1 first, and so must the report.
    runs = [Run("trial-0", 0, 1.00, trial=0), Run("trial-0", 1, 2.00, trial=0),
            Run("trial-1", 0, 1.20, trial=1), Run("trial-1", 1, 1.30, trial=1)]
    exp = build_experiment(tmp_path, "s", runs, search={"storage": "sqlite:///none.db", "study_name": "s",
                                                        "metric": "val_bpb", "direction": "minimize"})
    best = best_trial(load_experiment(exp))
    assert int(best["trial"]) == 1 and best["objective"] == pytest.approx(1.25)


def test_search_ranks_only_trials_with_every_seed_finished(tmp_path: Path) -> None:
    from analysis.report import best_trial

    # Trial 1's second seed diverged (Optuna: PRUNED); its first seed alone would rank it first.
    # Trial 2 was pruned on its first seed. Only trial 0 has every seed finished.
    runs = [Run("trial-0", 0, 1.50, trial=0), Run("trial-0", 1, 1.60, trial=0),
            Run("trial-1", 0, 1.20, trial=1, state="PRUNED"),
            Run("trial-1", 1, 1.30, trial=1, state="PRUNED", status="diverged"),
            Run("trial-2", 0, 1.10, trial=2, state="PRUNED", status="pruned")]
    exp = load_experiment(build_experiment(
        tmp_path, "s", runs, search={"storage": "sqlite:///none.db", "study_name": "s",
                                     "metric": "val_bpb", "direction": "minimize"}))
    assert int(best_trial(exp)["trial"]) == 0
    text = build_report(exp, PlotSet())
    ranked = text.split("## Results per variant")[1].split("###")[0]
    assert "| trial-0 | 2 | 1.5500 |" in ranked
    assert "trial-1" not in ranked and "trial-2" not in ranked
    partial = text.split("### Trials with unfinished seeds (not ranked)")[1].split("###")[0]
    assert "| trial-1 | PRUNED | 1 of 2 | seed 0: done, seed 1: diverged | 1.2000 |" in partial
    assert "| trial-2 | PRUNED | 0 of 2 | seed 0: pruned | — |" in partial
    assert "Best trial: **#0**" in text


def test_grid_simple_effects_within_each_setting_by_hand(tmp_path: Path) -> None:
    exp = load_experiment(_grid(tmp_path))
    effects = simple_effects(exp).set_index(["factor", "setting"])
    # block a2 vs a1 within norm b1: seeds 0, 1, 2 → -0.10, -0.12, -0.08: mean -0.10, s = 0.02,
    # half-width = 4.302653·0.02/√3 = 0.0496828; t = -5√3, p = 1 − 5√3/√77 = 0.0130725
    b1 = effects.loc[("model.block", "model.norm=b1")]
    assert (b1["n_seeds"], b1["n_settings"], b1["df"]) == (3, 1, 2)
    assert b1["mean_delta"] == pytest.approx(-0.10)
    assert b1["ci_low"] == pytest.approx(-0.10 - 0.0496828, abs=1e-6)
    assert b1["p"] == pytest.approx(0.0130725, abs=1e-6)
    # within b2: -0.16, -0.14, -0.16 (p = 0.0018850); norm within a1: +0.20 × 3 (s = 0, p = 0);
    # norm within a2: +0.14, +0.18, +0.12 (p = 0.0141564). Holm over these 4: 0 · 4, then
    # 3 · 0.0018850 = 0.0056550, 2 · 0.0130725 = 0.0261450, max(0.0261450, 0.0141564).
    assert effects.loc[("model.block", "model.norm=b2"), "mean_delta"] == pytest.approx(-0.46 / 3)
    assert effects.loc[("model.norm", "model.block=a1"), "mean_delta"] == pytest.approx(0.20)
    holm = effects["p_holm"].to_numpy()
    assert holm == pytest.approx([0.0261450, 0.0056550, 0.0, 0.0261450], abs=1e-6)
    assert len(effects) == 4  # one per factor x setting of the other
    text = build_report(exp, PlotSet())
    assert ("| model.block: a2 vs a1 (at model.norm=b1) | 3 | -0.1000 | [-0.1497, -0.0503] | "
            "0.0131 | 0.0261 | yes: lower (better) |") in text


def test_simple_effects_need_two_factors(ladder: Path) -> None:
    assert simple_effects(load_experiment(ladder)).empty


def test_consecutive_effects_compare_each_variant_with_the_one_before(tmp_path: Path) -> None:
    steps = {"a": [2.00, 2.10, 2.20], "b": [1.95, 2.06, 2.14], "c": [2.05, 2.11, 2.215],
             "d": [2.07, 2.12, 2.245]}
    runs = [Run(name, s, bpb) for name, values in steps.items() for s, bpb in enumerate(values)]
    exp = load_experiment(build_experiment(tmp_path, "steps", runs, variants=list(steps)))
    effects = consecutive_effects(exp).set_index("comparison")
    assert list(effects.index) == ["b vs a", "c vs b", "d vs c"]
    # b - a: -0.05, -0.04, -0.06 → mean -0.05, s = 0.01, half-width 4.302653·0.01/√3 = 0.0248414,
    # t = -5√3, p = 0.0130725 (on 2 df, P(|T| > t) = 1 − t/√(2 + t²))
    assert effects.loc["b vs a", "mean_delta"] == pytest.approx(-0.05)
    assert effects.loc["b vs a", "ci_high"] == pytest.approx(-0.05 + 0.0248414, abs=1e-6)
    # c - b: +0.10, +0.05, +0.075 → mean 0.075, s = 0.025, t = 3√3, p = 1 − 3√3/√29 = 0.0350987
    # d - c: +0.02, +0.01, +0.03 → mean 0.02, s = 0.01, t = 2√3, p = 1 − 2√3/√14 = 0.0741799
    assert effects["p"].to_numpy() == pytest.approx([0.0130725, 0.0350987, 0.0741799], abs=1e-6)
    # Holm over the 3 steps: 3 · 0.0130725 = 0.0392175 < 0.05: yes; 2 · 0.0350987 = 0.0701974:
    # no, although its own interval excludes 0; then max(0.0701974, 0.0741799): no.
    assert effects["p_holm"].to_numpy() == pytest.approx([0.0392175, 0.0701974, 0.0741799],
                                                         abs=1e-6)
    assert effects.loc["c vs b", "ci_low"] > 0
    assert list(effects["significant"]) == [True, False, False]
    text = build_report(exp, PlotSet(), consecutive=True)
    assert "## Each variant vs the one before it" in text
    assert "| b vs a | 3 | -0.0500 | [-0.0748, -0.0252] | 0.0131 | 0.0392 | yes: lower (better) |" \
        in text
    assert "| c vs b | 3 | 0.0750 | [0.0129, 0.1371] | 0.0351 | 0.0702 | no: not after Holm's " \
        "correction |" in text
    assert "| d vs c | 3 | 0.0200 | [-0.0048, 0.0448] | 0.0742 | 0.0742 | no: within seed noise |" \
        in text
    assert "The family is this table's 3 tested comparisons" in text
    assert "## Each variant vs the one before it" not in build_report(exp, PlotSet())


# ---------------------------------------------------------------------------------------------
# Bad input: an "error: " paragraph naming the file, exit status 2, nothing written; Ctrl-C
# leaves the previous report and plots as they were

def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder` (hidden ones too): its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("content, says", [
    (b"garbage\n1\n2\n", "lacks the column(s) step, tokens: its header is 'garbage'"),
    (b"step,loss\n0,4.1\n", "lacks the column(s) tokens: its header is 'step,loss'"),
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "its first line is not UTF-8 text"),   # a plot copied over it
    (b'step,tokens\n"0,1\n', "could not be parsed as CSV"),
])
def test_a_metrics_csv_without_its_columns_is_named_with_exit_status_2(
        ladder: Path, capsys: pytest.CaptureFixture, content: bytes, says: str) -> None:
    metrics = next((ladder / "runs").glob("*/metrics.csv"))
    metrics.write_bytes(content)
    before = _snapshot(ladder)
    assert main([str(ladder)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert f"{metrics} " in err and says in err
    assert _snapshot(ladder) == before                        # nothing written
    with pytest.raises(ExperimentError, match="metrics.csv"):
        load_experiment(ladder)


def test_damaged_cells_of_a_metrics_csv_are_still_read_past(ladder: Path) -> None:
    metrics = next((ladder / "runs").glob("*/metrics.csv"))
    metrics.write_bytes(metrics.read_bytes() + b"500,\xff\xfe,1,2,3,4,5,6,7,8,9,10,11,12\n")  # too many cells
    exp = load_experiment(ladder)
    assert exp.metrics["run_id"].nunique() == 6 and 500 not in set(exp.metrics["step"])


@pytest.mark.parametrize("previous", [False, True])
def test_ctrl_c_during_the_analysis_leaves_the_folder_as_it_was(
        ladder: Path, monkeypatch: pytest.MonkeyPatch, previous: bool) -> None:
    import analysis.report

    if previous:                                  # an earlier report, from an earlier state of the runs
        write_report(ladder)
        runs_csv = ladder / "runs.csv"
        runs_csv.write_text(runs_csv.read_text().replace(",done,", ",diverged,", 1))
    before = _snapshot(ladder)
    drawn = []
    real_make_plots = analysis.report.make_plots

    def make_plots_then_ctrl_c(exp, out_dir):
        plots = real_make_plots(exp, out_dir)
        drawn.extend(plots.paths)
        raise KeyboardInterrupt                   # Ctrl-C after the plots, before report.md

    monkeypatch.setattr(analysis.report, "make_plots", make_plots_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        write_report(ladder)
    assert len(drawn) >= 4                        # the interruption came late: plots had been drawn
    assert _snapshot(ladder) == before            # ... and none of them, nor a temporary file, is left
    assert not list(ladder.glob(".analysis*")) and (ladder / "plots").is_dir() == previous

    monkeypatch.setattr(analysis.report, "build_report",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    monkeypatch.setattr(analysis.report, "make_plots", real_make_plots)
    with pytest.raises(KeyboardInterrupt):
        write_report(ladder)
    assert _snapshot(ladder) == before


def test_ctrl_c_while_the_new_files_move_into_place_waits_until_they_are_all_there(
        ladder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    real_replace, moved = os.replace, []

    def replace_pressing_ctrl_c(src, dst):
        if Path(dst).parent == ladder / "plots" and not any(m.parent == ladder / "plots" for m in moved):
            signal.raise_signal(signal.SIGINT)    # Ctrl-C as the first plot moves into place
        moved.append(Path(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_pressing_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        write_report(ladder)
    monkeypatch.setattr(os, "replace", real_replace)
    assert moved[-1] == ladder / "report.md"      # delivered once the report was in place too
    text = (ladder / "report.md").read_text()
    pngs = sorted((ladder / "plots").glob("*.png"))
    assert len(pngs) >= 4 and all(f"](plots/{png.name})" in text for png in pngs)
    assert not list(ladder.rglob("*.tmp"))


# ---------------------------------------------------------------------------------------------
# Runs not finished yet, and searches: what the report must not overstate

def test_a_variant_with_no_finished_seed_is_not_called_a_row_over_fewer_seeds(tmp_path: Path) -> None:
    runs = [Run("baseline", s, 1.50 + 0.10 * s) for s in range(3)]
    runs += [Run("post", s, 1.52 + 0.10 * s, status="pending" if s == 2 else "done") for s in range(3)]
    runs += [Run("sandwich", s, 1.5, status="pending") for s in range(3)]     # not started: no mean to mislead
    exp = load_experiment(build_experiment(tmp_path, "p", runs, variants=["baseline", "post", "sandwich"],
                                           baseline="baseline"))
    assert "**Rows over fewer seeds than the spec's**: `post` (2 of 3). Their" in build_report(exp, PlotSet())


def test_a_finished_run_worse_than_a_uniform_guess_is_named(tmp_path: Path) -> None:
    runs = [Run("baseline", s, 1.5, summary={"vocab_size": 65}) for s in range(2)]
    runs += [Run("hot", s, 1.5 if s else 9.0, summary={"vocab_size": 65}) for s in range(2)]   # seed 0 did not train
    exp = load_experiment(build_experiment(tmp_path, "u", runs, variants=["baseline", "hot"], baseline="baseline"))
    note = [line for line in build_report(exp, PlotSet()).splitlines() if line.startswith("**Worse than a uniform")]
    loss = exp.runs.loc[(exp.runs["variant"] == "hot") & (exp.runs["seed"] == 0), "final_val_loss"].item()
    assert note == [f"**Worse than a uniform guess**: hot seed 0 ({loss:.2f} nats/token; ln 65 = 4.17). These runs "
                    "finished, but predicting every token as equally likely would have scored better: they did "
                    "not train (a learning rate too high, say), and count as they are in every table."]


def test_a_pending_run_is_named_and_its_row_flagged(tmp_path: Path) -> None:
    """post's seed 2 has not run yet: on seeds 0-1 alone it looks better than the baseline's three
    seeds, but seed by seed it is worse. The report must say which run is missing, wherever it counts."""
    runs = [Run("baseline", s, 1.50 + 0.10 * s) for s in range(3)]
    runs += [Run("post", s, 1.52 + 0.10 * s, status="pending" if s == 2 else "done") for s in range(3)]
    exp = load_experiment(build_experiment(tmp_path, "p", runs, variants=["baseline", "post"],
                                           baseline="baseline"))
    effects = paired_effects(exp).set_index("level")
    assert effects.loc["post", "unfinished"] == "post seed 2 pending" and effects.loc["post", "n_seeds"] == 2
    text = build_report(exp, PlotSet())
    assert "**Rows over fewer seeds than the spec's**: `post` (2 of 3)" in text
    assert "a row with runs still pending or running changes when they finish" in text
    assert "post vs baseline: post seed 2 pending" in text
    assert "Not finished: 1 pending: post seed 2 (pending)." in text
    assert "Assumed: the seeds' mean Δ are independent" in text


def test_main_effects_average_the_same_seeds_at_every_level(tmp_path: Path) -> None:
    """a1 loses seed 2 (the hardest seed) in one setting: both levels of the axis then average seeds
    0 and 1, so a1 does not look better for the missing seed."""
    bpb = {0: 1.0, 1: 1.1, 2: 1.6}
    runs = grid_runs({"model.block": ["a1", "a2"], "model.norm": ["b1", "b2"]}, [0, 1, 2],
                     lambda a, s: bpb[s] + 0.01 * (a["model.block"] == "a1"))
    for r in runs:
        if r.axes == {"model.block": "a1", "model.norm": "b2"} and r.seed == 2:
            r.status = "failed"
    exp = load_experiment(build_experiment(tmp_path, "g", runs, axes=["model.block", "model.norm"]))
    main = main_effects(exp).set_index(["axis", "level"])
    assert main.loc[("model.block", "a1"), "n"] == main.loc[("model.block", "a2"), "n"] == 2
    assert main.loc[("model.block", "a1"), "mean"] - main.loc[("model.block", "a2"), "mean"] == pytest.approx(0.01)
    assert main.loc[("model.block", "a1"), "left_out"] == "seed 2"
    text = build_report(exp, PlotSet())
    assert "every level of an axis averages the same seeds and settings" in text and "`model.block`: seed 2" in text


def test_main_effects_average_the_same_settings_at_every_level(tmp_path: Path) -> None:
    """With two seeds, losing (pre, norm=c) drops the setting rather than a seed; it must be dropped at
    both levels, or pre would be spared the worst setting and look 0.15 better where the effect is 0.05."""
    runs = grid_runs({"model.block": ["pre", "post"], "model.norm": ["a", "b", "c"]}, [0, 1],
                     lambda a, s: 1.5 + 0.05 * (a["model.block"] == "post") + {"a": 0, "b": 0.2, "c": 0.4}[a["model.norm"]]
                     + 0.03 * s)
    for r in runs:
        if r.axes == {"model.block": "pre", "model.norm": "c"} and r.seed == 1:
            r.status = "diverged"
    main = main_effects(load_experiment(build_experiment(tmp_path, "g", runs, axes=["model.block", "model.norm"])))
    block = main[main["axis"] == "model.block"].set_index("level")
    assert block.loc["post", "mean"] - block.loc["pre", "mean"] == pytest.approx(0.05)
    assert (block["n"] == 2).all() and (block["left_out"] == "model.norm=c").all()


def _search(tmp_path: Path, direction: str = "minimize", metric: str = "final_val_bpb", mode: str = "search",
            runs: list[Run] | None = None) -> Path:
    runs = runs if runs is not None else [
        Run(f"trial-{t}", s, 1.50 - 0.05 * t + 0.01 * s, trial=t, params=1000 * (3 - t),
            summary={"final_test_bpb": 1.56 - 0.05 * t + 0.012 * s + 0.003 * (s == 1)})
        for t in range(3) for s in range(3)]
    return build_experiment(tmp_path, "s", runs, variants=sorted({r.variant for r in runs}), baseline="trial-0",
                            search={"storage": "sqlite:///none.db", "study_name": "s", "metric": metric,
                                    "direction": direction, "mode": mode})


def test_a_search_report_ranks_by_its_objective_and_compares_nothing_against_trial_0(tmp_path: Path) -> None:
    text = build_report(load_experiment(_search(tmp_path)), PlotSet())
    ranked = text.split("## Results per variant")[1].split("###")[0]
    rows = [line.split(" | ")[0] for line in ranked.splitlines() if line.startswith("| trial-")]
    assert rows == ["| trial-2", "| trial-1", "| trial-0"]
    assert "**The top rows were chosen on these same validation scores**" in ranked
    assert "## Paired effects" not in text and "## Main effects" not in text
    from analysis.plots import Skip, plot_effects
    with pytest.raises(Skip):  # nor a plot of effects against trial 0
        plot_effects(load_experiment(tmp_path / "s"), tmp_path / "effects.png")
    # the search's own objective and direction decide the order, not bpb
    text = build_report(load_experiment(_search(tmp_path / "m", "maximize", "params")), PlotSet())
    ranked = text.split("## Results per variant")[1].split("###")[0]
    rows = [line.split(" | ")[0] for line in ranked.splitlines() if line.startswith("| trial-")]
    assert rows == ["| trial-0", "| trial-1", "| trial-2"] and "objective (params)" in ranked
    assert "chosen on these same validation scores" not in ranked  # chosen on params: the bpb was not selected on
    assert "The objective, `params`, is not a score on the validation text" in text


def test_a_grid_run_as_a_study_keeps_its_comparisons(tmp_path: Path) -> None:
    text = build_report(load_experiment(_search(tmp_path, mode="grid")), PlotSet())
    assert "## Paired effects" in text and "chosen on these same validation scores" not in text


def test_the_best_trial_on_the_test_text_with_its_interval_and_the_runner_up(tmp_path: Path) -> None:
    text = build_report(load_experiment(_search(tmp_path)), PlotSet())
    search = text.split("## Search")[1]
    # trial-2 test: 1.46, 1.475, 1.484 -> mean 1.473, s = 0.0121244, half-width 4.302653·s/√3 = 0.0301189
    assert "| test (held out) | final_test_bpb = 1.4730 | 3 | [1.4429, 1.5031] |" in search
    # best − runner-up (trial-1) on test: -0.05 on every seed -> no spread, p = 0
    assert "Best − runner-up (`trial-1`) on the test text, seed by seed: Δ = -0.0500" in search
    assert "this interval leans toward the chosen trial" in search


def test_a_best_val_objective_shows_the_final_validation_score_beside_the_test_score(tmp_path: Path) -> None:
    text = build_report(load_experiment(_search(tmp_path, metric="best_val_bpb")), PlotSet())
    search = text.split("## Search")[1]
    assert "| validation, final (same runs) | final_val_bpb = " in search
    assert "| test (held out) | final_test_bpb = 1.4730 |" in search


@pytest.mark.parametrize("runs", [[], [Run("trial-0", 0, 1.5, trial=0, state="PRUNED", status="pruned")]])
def test_a_search_with_no_finished_trial_still_gets_a_report(tmp_path: Path, runs: list[Run]) -> None:
    text = build_report(load_experiment(_search(tmp_path, runs=runs)), PlotSet())
    assert "No trial has finished yet." in text


def test_a_pooled_comparison_that_lost_a_whole_setting_says_so(tmp_path: Path) -> None:
    """post diverged at norm=b in every seed: no seed has a pair there, so the pooled rows compare at
    norm=a alone, which their left-out note must name (it stayed empty, the settings column hidden)."""
    runs = grid_runs({"model.block": ["pre", "post"], "model.norm": ["a", "b"]}, [0, 1, 2],
                     lambda a, s: 1.5 + 0.05 * (a["model.block"] == "post") + 0.2 * (a["model.norm"] == "b") + 0.03 * s)
    for r in runs:
        if r.axes == {"model.block": "post", "model.norm": "b"}:
            r.status = "diverged"
    exp = load_experiment(build_experiment(tmp_path, "g", runs, axes=["model.block", "model.norm"]))
    effects = paired_effects(exp).set_index("factor")
    assert effects.loc["model.block", "n_settings"] == 1
    assert effects.loc["model.block", "mean_delta"] == pytest.approx(0.05)
    assert effects.loc["model.block", "left_out"] == "model.norm=b"
    assert effects.loc["model.norm", "left_out"] == "model.block=post"
    assert "model.block: post vs pre: model.norm=b" in build_report(exp, PlotSet())


def test_out_never_takes_another_experiments_folder_or_the_current_one(tmp_path: Path, capsys, monkeypatch) -> None:
    """--out into another experiment replaced its report for good (a rerun thought it fresh); an empty --out
    (an unset shell variable) wrote into the current folder."""
    one = build_experiment(tmp_path, "one", [Run("a", s, 1.5 + 0.01 * s) for s in range(2)])
    two = build_experiment(tmp_path, "two", [Run("b", s, 1.6 + 0.01 * s) for s in range(2)])
    (tmp_path / "file").write_text("x")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in two.iterdir())
    for out, says in ((str(two), "is a folder of the lab's results (it holds experiment.json)"), ("", "is empty"),
                      (str(tmp_path / "file"), "is a file, not a folder"),
                      (str(two / "runs" / sorted(p.name for p in (two / "runs").iterdir())[0]), "holds spec.yaml")):
        assert main([str(one), "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --out ") and says in err and "Traceback" not in err
    assert sorted(p.name for p in two.iterdir()) == before and not (tmp_path / "report.md").exists()
    assert main([str(one), "--out", str(one)]) == 0 and main([str(one), "--out", str(tmp_path / "new")]) == 0
    assert (tmp_path / "new" / "report.md").read_text().startswith("# one")


def test_a_run_that_finishes_while_the_report_is_drawn_leaves_it_stale(tmp_path: Path, monkeypatch) -> None:
    """The report was dated by its publication, after the runs were read: a run finished in between was in
    no report, yet the report looked newer than every summary and a rerun never wrote it again."""
    import os
    import time

    from analysis import report
    from experiments.records import report_is_stale

    exp_dir = build_experiment(tmp_path, "late", [Run("a", s, 1.5 + 0.01 * s) for s in range(2)])
    summary = next(exp_dir.glob("runs/*/summary.json"))
    real = report.load_experiment

    def read_then_a_run_finishes(path):
        exp = real(path)
        time.sleep(0.05)
        os.utime(summary)  # a runner writes a summary now
        return exp
    monkeypatch.setattr(report, "load_experiment", read_then_a_run_finishes)
    write_report(exp_dir)
    assert report_is_stale(exp_dir)
    monkeypatch.setattr(report, "load_experiment", real)
    write_report(exp_dir)
    assert not report_is_stale(exp_dir)


def test_a_killed_analysis_staging_folder_is_removed_by_the_next_at_once(tmp_path: Path) -> None:
    """They piled up for an hour each; one whose writer lives (or that names none) is left alone."""
    import os
    import socket
    import subprocess
    import sys

    from experiments import files

    exp_dir = build_experiment(tmp_path, "k", [Run("a", s, 1.5 + 0.01 * s) for s in range(2)])
    ended = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                               text=True).stdout)
    for name, pid in ((".analysis.dead.tmp", ended), (".analysis.live.tmp", os.getpid()), (".analysis.old.tmp", None)):
        (exp_dir / name).mkdir()
        if pid is not None:  # None: no owner named (an older lab's), left to the hour rule
            files.write_json(exp_dir / name / files.OWNER, {"host": socket.gethostname(),
                                                            "pid_ns": files.pid_namespace(), "pid": pid})
    write_report(exp_dir)
    assert sorted(p.name for p in exp_dir.glob(".analysis.*.tmp")) == [".analysis.live.tmp", ".analysis.old.tmp"]
