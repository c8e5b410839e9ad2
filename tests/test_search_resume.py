"""The search's draws and its count: a resumed study draws fresh points, a finite space is capped at
its size and a repeated point is recorded as a repeat (not counted), a space with no valid point is
refused, keys that change the scored text are refused, and the last line quotes the test score."""
from __future__ import annotations

import json
import statistics
import types

import optuna
import pytest

from experiments.run import main
from experiments.search import plan as search_plan
from experiments.search.worker import Worker
from test_search import load, log_events, make, one_thread, problems, write  # noqa: F401 (a fixture)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def short(block: dict, **extra) -> dict:
    raw = make(block, **extra)
    raw["train"] |= {"steps": 10}
    return raw


def queue(results, points: list[dict]) -> None:
    """Create the study as the search would and queue these points first (what a sampler may propose)."""
    (results / "srch").mkdir(parents=True)
    study = optuna.create_study(study_name="srch", storage=f"sqlite:///{results / 'srch' / 'study.db'}")
    for point in points:
        study.enqueue_trial(point)


def test_a_resumed_search_draws_fresh_points_and_a_fresh_one_is_reproducible(tmp_path, one_thread):
    raw = short({"trials": 2, "sampler": "random", "pruner": "none",
                 "space": {"model.n_heads": [1, 2, 4], "train.lr": {"float": [1e-4, 3e-3], "log": True}}})
    spec, results = write(tmp_path, raw), tmp_path / "results"
    assert main([str(spec), "--results", str(results), "--no-report"]) == 0
    first = [t.params for t in load(f"sqlite:///{results / 'srch' / 'study.db'}", "srch").trials]
    assert main([str(spec), "--results", str(results), "--no-report", "search.trials=4"]) == 0
    params = [t.params for t in load(f"sqlite:///{results / 'srch' / 'study.db'}", "srch").trials]
    assert params[:2] == first and len(params) == 4
    assert params[2]["train.lr"] not in {p["train.lr"] for p in first}   # not the same draws again
    assert params[3]["train.lr"] not in {p["train.lr"] for p in first}
    again = tmp_path / "again"                                          # a fresh study: the same draws
    assert main([str(spec), "--results", str(again), "--no-report"]) == 0
    assert [t.params for t in load(f"sqlite:///{again / 'srch' / 'study.db'}", "srch").trials] == first


def test_sampler_seeds_differ_by_worker_and_by_how_far_the_study_is():
    assert search_plan.sampler_seed(7, None, False, 0) == 7
    seeds = {search_plan.sampler_seed(7, role, False, n) for role in (None, "0", "1") for n in (0, 3)}
    assert len(seeds) == 6


def test_a_worker_skips_a_point_an_earlier_trial_is_training(tmp_path):
    study = optuna.create_study()
    study.enqueue_trial({"model.n_heads": 1})
    running = study.ask()  # an earlier trial, still training point 1
    running.suggest_categorical("model.n_heads", [1, 2])
    study.enqueue_trial({"model.n_heads": 1})
    mine = study.ask()
    mine.suggest_categorical("model.n_heads", [1, 2])
    plan = types.SimpleNamespace(points=None, space_size=2, trials=2,
                                 point_key=lambda p: tuple(sorted(p.items())))
    worker = types.SimpleNamespace(plan=plan, study=study)
    assert Worker.surplus(worker, mine, {"model.n_heads": 1})
    assert not Worker.surplus(worker, mine, {"model.n_heads": 2})


def test_trials_beyond_a_finite_space_are_capped_with_a_warning(tmp_path, capsys, lab_cache):
    spec = write(tmp_path, short({"trials": 5, "space": {"model.n_heads": [1, 2]}}))
    assert main([str(spec), "--results", str(tmp_path / "results"), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "warning: search.trials = 5 but the space has only 2 distinct point(s)" in captured.err
    assert "2 finished trials wanted" in captured.out


def test_a_repeated_point_reuses_its_result_is_marked_and_does_not_count(tmp_path, one_thread, capsys):
    raw = short({"trials": 3, "sampler": "random", "pruner": "none", "space": {"model.n_heads": [2, 3, 4]}})
    results = tmp_path / "results"
    queue(results, [{"model.n_heads": 2}, {"model.n_heads": 3}, {"model.n_heads": 2}, {"model.n_heads": 3}])
    assert main([str(write(tmp_path, raw)), "--results", str(results), "--no-report"]) == 0
    trials = load(f"sqlite:///{results / 'srch' / 'study.db'}", "srch").trials
    assert [(t.params["model.n_heads"], t.state.name, t.user_attrs.get("repeat_of")) for t in trials] == [
        (2, "COMPLETE", None), (3, "PRUNED", None), (2, "FAIL", 0), (3, "FAIL", 1), (4, "COMPLETE", None)]
    assert "run_ids" not in trials[2].user_attrs  # out of the sampler's history, and of the records
    starts = [e["run_id"] for e in log_events(results / "srch") if e["event"] == "start"]
    assert len(starts) == len(set(starts)) == 2                       # a repeat trains nothing, not even a skip
    out = capsys.readouterr().out
    assert "3 finished trials (2 complete; 2 repeated point(s), not counted) of 3 wanted" in out


def test_a_space_with_no_valid_point_is_refused_before_anything_is_written(tmp_path, capsys, lab_cache):
    raw = short({"trials": 3, "space": {"model.n_heads": [3, 5]}})          # d_model 32
    assert main([str(write(tmp_path, raw)), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no point of the search space can run (search.space.model.n_heads = one of 3, 5)")
    assert "model.d_model = 32 must be divisible by model.n_heads = 5" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_a_search_where_no_trial_ran_exits_non_zero(tmp_path, capsys, lab_cache):
    raw = short({"trials": 1, "sampler": "random", "space": {"model.n_heads": [2, 3]}})
    results = tmp_path / "results"
    queue(results, [{"model.n_heads": 3}])                              # the sampler picks the invalid one
    assert main([str(write(tmp_path, raw)), "--results", str(results), "--no-report"]) == 1
    captured = capsys.readouterr()
    assert "no trial completed" in captured.out
    assert "error: none of the 1 finished trial(s) ran: every point tried broke the spec's rules" in captured.err


@pytest.mark.parametrize("block, expected", [
    ({"space": {"data.val_fraction": {"float": [0.05, 0.5]}}},
     "search.space.data.val_fraction = {'float': [0.05, 0.5]} cannot be searched: it changes the validation text"),
    ({"space": {"data.test_fraction": [0.0, 0.1]}}, "search.space.data.test_fraction = [0.0, 0.1] cannot be searched"),
    ({"space": {"data.corpus": ["embedded", "shakespeare"]}}, "search.space.data.corpus = "),
    ({"metric": "val_loss", "space": {"data.tokenizer": ["char", "byte"]}},
     "search.space.data.tokenizer = ['char', 'byte'] cannot be searched: it changes the unit of val_loss"),
    ({"metric": "best_val_bpb", "space": {"train.eval_batches": [2, 4]}},
     "best_val_bpb is read off the periodic evaluations' sampled windows, and it changes how many there are"),
    ({"metric": "train_loss", "space": {"model.context_length": [8, 16]}}, "and it changes how long they are"),
    ({"metric": "best_val_bpb", "space": {"data.tokenizer": ["char", "byte"]}},
     "which tokens they hold, so the trials would not be scored alike; search it with metric: val_bpb (each"),
    ({"space": {"model.attention.impl": ["sdpa", "bogus"]}}, "search.space.model.attention.impl = 'bogus'"),
])
def test_keys_that_change_the_scored_text_are_refused(block, expected):
    message = problems(block)
    assert expected in message and "impl.impl" not in message


def test_a_preset_counts_as_the_context_length_it_brings_unless_the_spec_sets_its_own():
    from experiments.search import space

    presets = {"model.preset": ["tiny", "small"]}                       # context 64 and 128
    [problem] = space.scored_text_problems(presets, "best_val_loss", {"model": {}})
    assert problem.startswith("search.space.model.preset = ['tiny', 'small'] cannot be searched (through "
                              "model.context_length): best_val_loss is read off the periodic evaluations'")
    block, problems = space.parse_block({"space": presets, "pruner": "median"}, {})
    assert problems == ["search.pruner = 'median' compares trials at the same optimizer step, but search.space."
                        "model.preset (through model.context_length) changes how much text one step trains on, so "
                        "the pruner would favour the trials that had seen more text by then: use pruner: none"]
    own = {"model": {"context_length": 32}}
    assert space.scored_text_problems(presets, "best_val_loss", own) == []
    assert space.parse_block({"space": presets}, own)[0]["pruner"] == "median"
    assert space.parse_block({"space": {"model.preset": ["tiny", "nanogpt-cpu"]}}, {})[0]["pruner"] == "median"


def test_bits_per_byte_may_compare_tokenizers():
    from experiments.search import space

    assert space.scored_text_problems({"data.tokenizer": ["char", "byte"]}, "val_bpb") == []


@pytest.mark.parametrize("key", ["train.eval_batches", "model.context_length", "train.batch_size", "train.grad_accum"])
def test_the_exact_final_score_may_search_what_changes_the_sampled_windows(key):
    from experiments.search import space

    assert space.scored_text_problems({key: [2, 4]}, "val_bpb") == []


def test_the_last_line_quotes_the_test_score(tmp_path, one_thread, capsys):
    raw = short({"trials": 1, "sampler": "grid", "pruner": "none", "space": {"model.n_heads": [2]}},
                seeds=[0, 1])
    raw["data"]["test_fraction"] = 0.1
    results = tmp_path / "results"
    assert main([str(write(tmp_path, raw)), "--results", str(results), "--no-report"]) == 0
    out = capsys.readouterr().out
    [trial] = load(f"sqlite:///{results / 'srch' / 'study.db'}", "srch").trials
    tests = [json.loads((results / "srch" / "runs" / rid / "summary.json").read_text())["final_test_bpb"]
             for rid in trial.user_attrs["run_ids"]]
    assert "caveat: final_val_bpb is the score this trial was chosen on, so it is optimistic" in out
    assert (f"test: final_test_bpb {statistics.fmean(tests):.4f} (mean over 2 seed(s), sd "
            f"{statistics.stdev(tests):.4f}; report.md gives its 95% interval" in out)


def test_trials_log_gives_no_resume_step_for_a_skipped_run(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    runner = types.SimpleNamespace(execute=lambda run, on_eval: ("skipped", {"status": "done", "resumed_at_step": 10}))
    worker = types.SimpleNamespace(plan=types.SimpleNamespace(exp_dir=exp), runner=runner)
    Worker.execute(worker, types.SimpleNamespace(number=0), types.SimpleNamespace(run_id="r", seed=0), None)
    [_, end] = log_events(exp)
    assert end["trained"] is False and end["resumed_at_step"] is None


def test_a_stepped_float_has_one_key_however_optuna_rounds_it():
    """Optuna proposes 0.30000000000000004 where the grid of the steps holds 0.3: one point, one key, so it
    is neither queued again as untried nor trained twice."""
    from experiments.search.plan import Plan
    from experiments.search.space import Param

    plan = types.SimpleNamespace(params=[Param("train.lr", "float", low=0.1, high=0.5, step=0.1)])
    assert Plan.point_key(plan, {"train.lr": 0.1 + 0.2}) == Plan.point_key(plan, {"train.lr": 0.3})
    assert Plan.point_key(plan, {"train.lr": 0.3}) != Plan.point_key(plan, {"train.lr": 0.4})


def test_no_pruner_compares_trials_whose_steps_mean_different_things():
    """The pruner compares trials at the same optimizer step; with the batch (or the context, the
    accumulation, the tokenizer) searched, a step is more text for some trials than for others, and with
    the run's length searched, a step is a different point of each trial's learning-rate schedule."""
    from experiments.search import space

    for key, values, why in (("train.batch_size", [8, 16], "how much text one step trains on"),
                             ("model.context_length", [16, 32], "how much text one step trains on"),
                             ("data.tokenizer", ["char", "byte"], "how much text one step trains on"),
                             ("train.steps", [10, 40], "how many steps a trial trains"),
                             ("train.budget", [{"tokens": 1000}, {"tokens": 4000}], "how many steps a trial trains")):
        block, problems = space.parse_block({"space": {key: values}}, {})
        assert block["pruner"] == "none" and problems == []           # the default: no pruning
        block, problems = space.parse_block({"space": {key: values}, "pruner": "median"}, {})
        assert len(problems) == 1 and f"search.space.{key} changes {why}" in problems[0]
    block, problems = space.parse_block({"space": {"model.n_heads": [1, 2]}}, {})
    assert block["pruner"] == "median" and problems == []


def test_a_search_where_no_trial_completed_exits_non_zero_and_says_why_each_ended(tmp_path, capsys, lab_cache):
    raw = short({"trials": 3, "sampler": "grid", "pruner": "none", "space": {"model.n_heads": [2, 3, 4]}})
    raw["train"] |= {"lr": 1e30, "warmup": 0}                          # every trial's loss turns NaN
    assert main([str(write(tmp_path, raw)), "--results", str(tmp_path / "results"), "--no-report"]) == 1
    captured = capsys.readouterr()
    assert "no trial completed" in captured.out
    assert captured.err.startswith("error: no trial completed (2 diverged: lower train.lr or lengthen train.warmup; "
                                   "1 invalid: give the searched keys values that fit (the note column says why)), so "
                                   "the search has no best trial")


def test_a_choice_no_completed_trial_had_is_named_under_the_best(tmp_path, one_thread, capsys):
    raw = short({"trials": 2, "sampler": "random", "pruner": "none", "space": {"model.n_heads": [2, 3, 4]}})
    results = tmp_path / "results"
    queue(results, [{"model.n_heads": 2}, {"model.n_heads": 3}])      # 3 is invalid (d_model 32), 4 never drawn
    assert main([str(write(tmp_path, raw)), "--results", str(results), "--no-report"]) == 0
    assert ("caveat: no completed trial had model.n_heads = 3, 4 (pruned, diverged or not drawn): the best trial "
            "was not compared with it") in capsys.readouterr().out
