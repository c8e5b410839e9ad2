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
from analysis.plots import PlotSet, plot_search
from analysis.report import build_report, to_markdown, write_report
from analysis.tables import (
    ExperimentError, comparable_metrics, curve_table, factors, load_experiment, main_effects,
    mean_ci,
    paired_deltas, paired_effects, pivot_tables, progress, simple_effects, t_quantile, variant_table,
    consecutive_effects)
from synthetic import Run, build_experiment, build_search_experiment, grid_runs

T2 = 4.302653   # t(0.975, df=2)
T3 = 3.182446   # t(0.975, df=3)
LN2 = math.log(2)


# ---------------------------------------------------------------------------------------------
# Student t

@pytest.mark.parametrize("p, df, expected", [
    (0.975, 1, 12.706205), (0.975, 2, 4.302653), (0.975, 3, 3.182446), (0.975, 4, 2.776445),
    (0.975, 29, 2.045230), (0.975, 1000, 1.962339), (0.995, 2, 9.924843), (0.9, 1, 3.077684),
    (0.025, 2, -4.302653), (0.5, 7, 0.0),
])
def test_t_quantile_matches_table_values(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, abs=2e-6)


def test_t_quantile_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)


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
    assert row["n_pairs"] == 3
    assert row["mean_delta"] == pytest.approx(-0.05)
    assert row["std_delta"] == pytest.approx(0.01)
    assert row["ci_low"] == pytest.approx(-0.0748414, abs=1e-6)
    assert row["ci_high"] == pytest.approx(-0.0251586, abs=1e-6)
    assert bool(row["excludes_zero"]) is True
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
# Grids: partner = same seed, same other-axis values, this axis at its first level

GRID = {("a1", "b1"): (2.00, 2.10), ("a2", "b1"): (1.90, 1.98),
        ("a1", "b2"): (2.20, 2.30), ("a2", "b2"): (2.04, 2.16)}   # (seed 0, seed 1)
AXES = {"model.block": ["a1", "a2"], "model.norm": ["b1", "b2"]}


def _grid(tmp_path: Path, diverged: tuple[str, str, int] | None = None) -> Path:
    def bpb(axes: dict[str, str], seed: int) -> float:
        return GRID[(axes["model.block"], axes["model.norm"])][seed]

    runs = grid_runs(AXES, [0, 1], bpb)
    for run in runs:
        if diverged == (run.axes["model.block"], run.axes["model.norm"], run.seed):
            run.status = "diverged"
    return build_experiment(tmp_path, "grid", runs, axes=list(AXES))


def test_grid_paired_effects_by_hand(tmp_path: Path) -> None:
    exp = load_experiment(_grid(tmp_path))
    assert [f.column for f in factors(exp)] == ["model.block", "model.norm"]  # names aren't one
    effects = paired_effects(exp).set_index("factor")
    block = effects.loc["model.block"]
    # pairs (seed, norm): (0,b1) 1.90-2.00 = -0.10, (0,b2) -0.16, (1,b1) -0.12, (1,b2) -0.14
    # mean -0.13; deviations +.03 -.03 +.01 -.01 → SS = .002, s² = .002/3, s = 0.0258199;
    # half-width = t(0.975, 3)·s/√4 = 3.182446·0.0258199/2 = 0.0410851
    assert block["n_pairs"] == 4 and block["reference"] == "a1"
    assert block["mean_delta"] == pytest.approx(-0.13)
    assert block["ci_low"] == pytest.approx(-0.13 - 0.0410851, abs=1e-6)
    assert block["ci_high"] == pytest.approx(-0.13 + 0.0410851, abs=1e-6)
    norm = effects.loc["model.norm"]
    # pairs (seed, block): +0.20, +0.14, +0.20, +0.18 → mean 0.18; deviations .02 -.04 .02 0
    # → SS = .0024, s² = .0008, s = 0.0282843; half-width = 3.182446·0.0282843/2 = 0.0450061
    assert norm["mean_delta"] == pytest.approx(0.18)
    assert norm["ci_low"] == pytest.approx(0.18 - 0.0450061, abs=1e-6)
    assert bool(norm["excludes_zero"]) is True


def test_grid_main_effects_and_pivot_by_hand(tmp_path: Path) -> None:
    exp = load_experiment(_grid(tmp_path))
    main = main_effects(exp).set_index(["axis", "level"])
    # a1: 2.00, 2.20, 2.10, 2.30 → mean 2.15; deviations ∓.15, ∓.05 → SS = .05, s² = .05/3,
    # s = 0.1290994; half-width = 3.182446·0.1290994/2 = 0.2054260
    a1 = main.loc[("model.block", "a1")]
    assert a1["n"] == 4 and a1["mean"] == pytest.approx(2.15)
    assert a1["ci_low"] == pytest.approx(2.15 - 0.2054260, abs=1e-6)
    # a2: 1.90+2.04+1.98+2.16 = 8.08; b1: 2.00+1.90+2.10+1.98 = 7.98; b2: 2.20+2.04+2.30+2.16
    assert main.loc[("model.block", "a2"), "mean"] == pytest.approx(8.08 / 4)
    assert main.loc[("model.norm", "b1"), "mean"] == pytest.approx(7.98 / 4)
    assert main.loc[("model.norm", "b2"), "mean"] == pytest.approx(8.70 / 4)
    pivot = pivot_tables(exp)[("model.block", "model.norm")]
    # each cell: mean of its two seeds
    expected = pd.DataFrame([[2.05, 2.25], [1.94, 2.10]], index=["a1", "a2"],
                            columns=["b1", "b2"])
    assert pivot.to_numpy() == pytest.approx(expected.to_numpy())
    assert list(pivot.index) == ["a1", "a2"] and list(pivot.columns) == ["b1", "b2"]


def test_grid_diverged_run_loses_its_pairs(tmp_path: Path) -> None:
    exp = load_experiment(_grid(tmp_path, diverged=("a1", "b2", 1)))
    effects = paired_effects(exp).set_index("factor")
    # block: the (seed 1, b2) pair has no finished a1 partner → -0.10, -0.16, -0.12
    assert effects.loc["model.block", "n_pairs"] == 3
    assert effects.loc["model.block", "mean_delta"] == pytest.approx(-0.38 / 3)
    # norm: the (seed 1, a1) pair loses its b2 run → 0.20, 0.14, 0.18
    assert effects.loc["model.norm", "mean_delta"] == pytest.approx(0.52 / 3)
    main = main_effects(exp).set_index(["axis", "level"])
    assert main.loc[("model.block", "a1"), "n"] == 3
    assert main.loc[("model.block", "a1"), "mean"] == pytest.approx(2.10)  # 2.00, 2.20, 2.10


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
    assert "| wide vs baseline | 3 | -0.0500 | [-0.0748, -0.0252] | yes: lower (better) |" in text
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
    assert pd.isna(paired_effects(exp).set_index("level").loc["bpe", "excludes_zero"])

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
    assert "| model.block | a1 | 4 | 2.1500 | [1.9446, 2.3554] |" in text
    assert "### `model.block` × `model.norm`: mean final val bpb (bits/byte)" in text
    assert "| model.block=a2 | 1.9400 | 2.1000 |" in text
    assert "| model.block: a2 vs a1 | 4 | -0.1300 | [-0.1711, -0.0889] |" in text


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


def test_search_with_one_parameter_skips_importances(tmp_path: Path) -> None:
    exp = load_experiment(build_search_experiment(tmp_path, "one", [1.9, 1.7], n_params=1))
    plots = PlotSet()
    plot_search(exp, tmp_path / "plots", plots)       # the Optuna plots alone
    assert sorted(plots.paths) == ["search_history", "search_parallel"]
    assert "importances skipped: 2 completed trial(s) and 1 parameter(s)" in plots.notes[0]
    assert "importances skipped" in build_report(exp, plots)


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


def test_grid_simple_effects_within_each_setting_by_hand(tmp_path: Path) -> None:
    exp = load_experiment(_grid(tmp_path))
    effects = simple_effects(exp).set_index(["factor", "setting"])
    # block a2 vs a1 within norm b1: seeds 0, 1 → -0.10, -0.12: mean -0.11, s = 0.0141421,
    # half-width = t(0.975, 1)·s/√2 = 12.706205·0.0141421/1.4142136 = 0.1270620
    b1 = effects.loc[("model.block", "model.norm=b1")]
    assert b1["n_pairs"] == 2 and b1["mean_delta"] == pytest.approx(-0.11)
    assert b1["ci_low"] == pytest.approx(-0.11 - 0.1270620, abs=1e-6)
    assert bool(b1["excludes_zero"]) is False
    # within b2: -0.16, -0.14 → mean -0.15; norm within block a1: +0.20, +0.20 → s = 0, CI a point
    assert effects.loc[("model.block", "model.norm=b2"), "mean_delta"] == pytest.approx(-0.15)
    assert effects.loc[("model.norm", "model.block=a1"), "mean_delta"] == pytest.approx(0.20)
    assert len(effects) == 4  # one per factor x setting of the other
    text = build_report(exp, PlotSet())
    assert "| model.block: a2 vs a1 (at model.norm=b1) | 2 | -0.1100 | [-0.2371, 0.0171] |" in text


def test_simple_effects_need_two_factors(ladder: Path) -> None:
    assert simple_effects(load_experiment(ladder)).empty


def test_consecutive_effects_compare_each_variant_with_the_one_before(tmp_path: Path) -> None:
    steps = {"a": [2.00, 2.10, 2.20], "b": [1.80, 1.92, 1.98], "c": [1.81, 1.90, 1.99]}
    runs = [Run(name, s, bpb) for name, values in steps.items() for s, bpb in enumerate(values)]
    exp = load_experiment(build_experiment(tmp_path, "steps", runs, variants=list(steps)))
    effects = consecutive_effects(exp).set_index("comparison")
    assert list(effects.index) == ["b vs a", "c vs b"]
    # b - a: -0.20, -0.18, -0.22 → mean -0.20, s = 0.02, half-width 4.302653·0.02/√3 = 0.0496828
    assert effects.loc["b vs a", "mean_delta"] == pytest.approx(-0.20)
    assert effects.loc["b vs a", "ci_high"] == pytest.approx(-0.20 + 0.0496828, abs=1e-6)
    # c - b: +0.01, -0.02, +0.01 → mean 0, within the noise
    assert effects.loc["c vs b", "mean_delta"] == pytest.approx(0.0, abs=1e-9)
    assert bool(effects.loc["c vs b", "excludes_zero"]) is False
    text = build_report(exp, PlotSet(), consecutive=True)
    assert "## Each variant vs the one before it" in text and "| b vs a | 3 | -0.2000 |" in text
    assert "## Each variant vs the one before it" not in build_report(exp, PlotSet())
