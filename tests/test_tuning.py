"""tune: every variant x seed x value runs; the report compares the variants each at its own best value,
never scoring a choice on the text or the seed that made it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from analysis import tuning
from analysis.plots import PlotSet
from analysis.fair_plots import plot_sensitivity
from analysis.report import build_report
from analysis.tables import load_experiment
from experiments import run as runner
from experiments.spec import parse_spec
from synthetic import Run, build_experiment

LRS = ["0.001", "0.003", "0.01"]
TUNE = {"tune": {"key": "train.lr", "values": [1e-3, 3e-3, 1e-2]}}
# baseline is best at 0.003 (inside the range), post at 0.01 (the edge): a U and a falling line
SHAPE = {"baseline": {"0.001": 1.60, "0.003": 1.50, "0.01": 1.58},
         "post": {"0.001": 1.70, "0.003": 1.56, "0.01": 1.45}}


def tuned_experiment(root: Path, seeds=range(4), test_offset: float = 0.02, flip_seed: int | None = None) -> Path:
    rng = np.random.default_rng(7)
    runs = []
    for variant, curve in SHAPE.items():
        for lr in LRS:
            for seed in seeds:
                bpb = curve[lr] + 0.004 * seed + rng.normal(0, 0.002)
                if seed == flip_seed and variant == "baseline" and lr == "0.01":
                    bpb -= 0.5        # one seed that loves the high value
                runs.append(Run(f"{variant}, lr={lr}", seed, bpb, axes={"train.lr": lr},
                                summary={"final_test_bpb": bpb + test_offset}))
    return build_experiment(root, "tuned", runs, axes=["train.lr"], variants=["baseline", "post"],
                            baseline="baseline", plan=TUNE)


def test_each_variant_gets_its_best_value_and_the_edge_is_flagged(tmp_path):
    exp = load_experiment(tuned_experiment(tmp_path))
    best = tuning.best_values(exp).set_index("arm")
    assert best.loc["baseline", "best"] == "0.003" and best.loc["baseline", "edge"] == ""
    assert best.loc["post", "best"] == "0.01" and best.loc["post", "edge"] == "highest"
    assert best.loc["post", "stable"] == "4 of 4"
    text = build_report(exp, PlotSet())
    assert "## Each variant at its best train.lr" in text
    paired = text.split("## Paired effects vs the baseline")[1].split("###")[0]
    assert "these comparisons pool every value of it tried" in paired and "\"Each variant at its best train.lr\"" in paired
    assert "| baseline | 0.003 |" in text and "| post | 0.01 |" in text
    assert "**Widen the range** for post" in text and "**Widen the range** for baseline" not in text
    assert "every score below is on the test text" in text


def test_the_comparison_is_on_test_scores_at_each_variants_own_value(tmp_path):
    exp = load_experiment(tuned_experiment(tmp_path, seeds=range(6), test_offset=0.02))
    effects = tuning.tuned_effects(exp)
    runs = exp.runs.set_index(["variant", "seed"])
    want = np.mean([runs.loc[("post, lr=0.01", s), "final_test_bpb"] - runs.loc[("baseline, lr=0.003", s), "final_test_bpb"]
                    for s in range(6)])
    assert effects.loc[0, "comparison"] == "post vs baseline"
    assert effects.loc[0, "mean_delta"] == pytest.approx(want)
    # every seed's Δ is negative: only the identity and the swap of all six seeds reach it, p = 2 / 64
    assert effects.loc[0, "n_seeds"] == 6 and effects.loc[0, "p"] == pytest.approx(2 / 64)
    assert bool(effects.loc[0, "significant"]) and effects.loc[0, "ci_high"] < 0


def test_with_four_seeds_the_swap_test_cannot_say_yes(tmp_path):
    """The same clear difference: 4 seeds have 16 swaps, so p is at least 2 / 16 and the interval open."""
    effects = tuning.tuned_effects(load_experiment(tuned_experiment(tmp_path, seeds=range(4))))
    assert effects.loc[0, "p"] == pytest.approx(2 / 16) and not bool(effects.loc[0, "significant"])
    assert effects.loc[0, "ci_low"] == -np.inf and effects.loc[0, "ci_high"] == np.inf
    text = build_report(load_experiment(tmp_path / "tuned"), PlotSet())
    assert "[−∞, +∞]" in text and "needs at least 6 seeds" in text


def sign_flips(n: int) -> np.ndarray:
    return 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)


def test_with_one_value_the_swap_test_is_the_paired_sign_flip_test():
    """Nothing to choose: swapping a seed's runs flips the sign of its Δ. p and the interval against
    a direct sign-flip test of the mean and a grid inversion of it (sign flips keep the sum of squares,
    so the test's |t| ranks them as |mean| does)."""
    rng = np.random.default_rng(3)
    a, r = rng.normal(0.7, 1, (7, 1)), rng.normal(0, 1, (7, 1))
    e = tuning.swap_effect((a, a), (r, r))
    d = (a - r)[:, 0]
    assert e.mean == pytest.approx(d.mean())
    assert e.p == pytest.approx(np.mean(np.abs((sign_flips(7) * d).mean(1)) >= abs(d.mean()) * (1 - 1e-12)))
    grid = np.linspace(d.mean() - 4, d.mean() + 4, 8001)
    p = [np.mean(np.abs((sign_flips(7) * (d - g)).mean(1)) >= abs((d - g).mean()) * (1 - 1e-12)) for g in grid]
    accepted = grid[np.array(p) > 0.05]
    assert e.low == pytest.approx(accepted.min(), abs=2e-3) and e.high == pytest.approx(accepted.max(), abs=2e-3)


def simulated(rng, n: int, shift: float, values: int = 4):
    """Two arms with no difference but `shift`: per seed a level, a seed x value interaction the choice
    can chase, and test scores that share it."""
    arms = []
    for _ in range(2):
        val = rng.normal(0, 1, (n, 1)) + rng.normal(0, 1, (n, values))
        arms.append((val, val + rng.normal(0, 0.3, (n, values))))
    return (arms[0][0] + shift, arms[0][1] + shift), arms[1]


def test_the_swap_test_holds_its_level_where_a_t_test_over_seeds_did_not():
    from analysis.stats import seed_level_effect
    rng, trials = np.random.default_rng(11), 400
    swap_yes = t_yes = covered = 0
    for _ in range(trials):
        arm, reference = simulated(rng, n=6, shift=0.0)
        e = tuning.swap_effect(arm, reference)
        swap_yes += e.p < 0.05
        t_yes += seed_level_effect(tuning.loo_scores(*arm) - tuning.loo_scores(*reference)).p < 0.05
        arm, reference = simulated(rng, n=6, shift=0.4)
        e = tuning.swap_effect(arm, reference)
        covered += e.low <= 0.4 <= e.high
    assert swap_yes / trials <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / trials)     # its level, within sampling error
    assert t_yes > swap_yes                                                   # the t test over Δ runs hot here
    assert covered / trials >= 0.95 - 2 * np.sqrt(0.05 * 0.95 / trials)


def test_variants_whose_best_values_differ_are_told_apart():
    """The case tune: exists for: the reference is best at the middle value, the variant at the last, 0.10
    bpb better there. A swap that mixes the two scores some seeds far from their best; ranked by |mean Δ|
    such swaps hid the difference (p 0.45 at 8 seeds), ranked by the paired t they do not."""
    rng = np.random.default_rng(5)
    called = covered = 0
    for _ in range(20):
        level = rng.normal(0, 0.01, (8, 1))

        def runs(curve: list[float]) -> tuple[np.ndarray, np.ndarray]:
            val = np.array(curve)[None, :] + level + rng.normal(0, 0.005, (8, 3))
            return val, val + 0.02 + rng.normal(0, 0.002, (8, 3))
        e = tuning.swap_effect(runs([1.70, 1.56, 1.40]), runs([1.60, 1.50, 1.58]))
        called += e.p < 0.05 and e.high < 0
        covered += e.low <= -0.10 <= e.high
    assert called == 20 and covered >= 18


@pytest.mark.parametrize("compared, seeds", [(1, 6), (2, 7), (3, 7), (4, 8), (6, 8), (7, 9)])
def test_the_seeds_a_yes_needs_count_holms_factor(compared, seeds):
    assert compared * 2 / 2 ** seeds < 0.05 <= compared * 2 / 2 ** (seeds - 1)
    assert tuning.seeds_for_a_yes(compared) == seeds


def test_a_seed_is_scored_at_the_value_the_other_seeds_chose(tmp_path):
    """Seed 0 alone makes 0.01 look best for the baseline; the other seeds choose 0.003 for it."""
    exp = load_experiment(tuned_experiment(tmp_path, flip_seed=0))
    val, score = tuning.matrices(exp, "baseline")
    assert tuning.choose(val, [0, 1, 2, 3]) == "0.01"          # the mean over all seeds is fooled
    choices = tuning.loo_choices(val)
    assert choices[0] == "0.003" and all(choices[s] == "0.01" for s in (1, 2, 3))
    scores = tuning.seed_scores(exp, "baseline")
    assert scores[0] == pytest.approx(score.loc[0, "0.003"]) and scores[1] == pytest.approx(score.loc[1, "0.01"])
    assert tuning.best_values(exp).set_index("arm").loc["baseline", "stable"] == "3 of 4"


def test_without_a_test_text_the_report_says_the_scores_chose(tmp_path):
    root = tuned_experiment(tmp_path)
    for summary in root.glob("runs/*/summary.json"):
        summary.write_text(summary.read_text().replace('"final_test_bpb"', '"unused"'))
    text = build_report(load_experiment(root), PlotSet())
    assert "holds out no test text" in text and "test bpb at best" not in text


def test_a_tune_spec_runs_every_value_and_writes_a_report_naming_each_best(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    raw = {"experiment": "tune", "seeds": [0], "data": {"corpus": "embedded", "tokenizer": "char",
                                                       "val_fraction": 0.03, "test_fraction": 0.03},
           "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "context_length": 16},
           "train": {"steps": 8, "batch_size": 4, "warmup": 0.25, "eval_every": 8, "eval_batches": 1},
           "sample": {"tokens": 0}, "variants": {"baseline": {}, "post": {"model.block": "post"}},
           "tune": {"train.lr": [3.0e-3, 1.0e-2]}}
    spec = parse_spec(raw)
    assert len(spec.runs) == 4 and spec.axes == ["train.lr"]
    assert {r.variant for r in spec.runs} == {"baseline, lr=0.003", "baseline, lr=0.01", "post, lr=0.003", "post, lr=0.01"}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert runner.main([str(path), "--results", str(tmp_path / "r"), "--no-report"]) == 0
    exp = load_experiment(tmp_path / "r" / "tune")
    text = build_report(exp, PlotSet())             # the tables; of the plots, the sensitivity one
    best = tuning.best_values(exp)
    assert list(best["arm"]) == ["baseline", "post"] and best["best"].isin(["0.003", "0.01"]).all()
    for row in best.itertuples():
        assert f"| {row.arm} | {row.best} |" in text
    assert plot_sensitivity(exp, tmp_path / "sensitivity.png").is_file()


@pytest.mark.parametrize("tune, message", [
    ({"train.lr": [1e-3]}, "at least 2 values"),
    ({"train.lr": [1e-3, 1e-2], "train.warmup": [1, 2]}, "exactly one spec key"),
    ({"train.lrr": [1e-3, 1e-2]}, "did you mean 'lr'"),
    ({"train.lr": [1e-3, -1.0]}, "train.lr = -1.0 must be a positive number"),
    ({"data.corpus": ["embedded", "shakespeare"]}, "cannot be tuned: a tune picks each variant's best value by its validation bpb, and it changes the text itself"),
    ({"data.test_fraction": [0.0, 0.1]}, "the held-out test text, so the values would not be scored alike"),
])
def test_bad_tune_blocks_are_refused(tune, message):
    from registry import SpecError

    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_spec({"experiment": "t", "tune": tune})


def test_a_variant_that_sets_the_tuned_key_is_refused():
    from registry import SpecError

    with pytest.raises(SpecError, match="variants.fast sets train.lr, which tune runs over"):
        parse_spec({"experiment": "t", "variants": {"fast": {"train.lr": 1e-2}}, "tune": {"train.lr": [1e-3, 3e-3]}})


@pytest.mark.parametrize("key, values", [("data.tokenizer", ["char", "byte"]), ("model.context_length", [32, 64])])
def test_a_tune_may_vary_what_bits_per_byte_compare_fairly(key, values):
    """As a search of val_bpb may: each run's whole validation text, in bits per byte."""
    assert parse_spec({"experiment": "t", "tune": {key: values}}).sweeps.tune["values"] == values
