"""train.budget: each run derives its own steps from steps, tokens, bytes, FLOPs or tokens per parameter,
the dry run shows what each run will see, and summary.json records what it saw."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from experiments import run as runner
from experiments.budget import train_bytes_per_token
from experiments.runner import bind_data, data_key, model_size
from experiments.spec import parse_spec

TINY = {"experiment": "b", "seeds": [0], "data": {"corpus": "embedded", "tokenizer": "char"},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 4, "context_length": 16},
        "train": {"batch_size": 8, "lr": 3.0e-3, "warmup": 0.1, "eval_every": 1000, "eval_batches": 2},
        "sample": {"tokens": 0}}
TOKENS_PER_STEP = 8 * 16


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def spec_with(**train) -> dict:
    return {**TINY, "train": {**TINY["train"], **train}}


def bound(raw: dict):
    spec = parse_spec(raw)
    return spec, bind_data(spec.runs)


def test_train_steps_is_shorthand_for_a_steps_budget_and_a_fraction_is_steps():
    a = parse_spec(spec_with(steps=100, warmup=10)).runs[0]
    b = parse_spec(spec_with(budget={"steps": 100}, warmup=0.1)).runs[0]
    assert a.run_id == b.run_id and a.train == b.train
    assert (a.train.steps, a.train.warmup, a.train.budget) == (100, 10, None)


def test_tokens_and_bytes_budgets_follow_the_tokenizer():
    """Equal bytes of text: a tokenizer with more bytes per token takes fewer steps to read them."""
    raw = {**spec_with(budget={"bytes": 400_000}), "grid": {"data.tokenizer": ["char", "byte"]}}
    spec, datasets = bound(raw)
    for run in spec.runs:
        ds = datasets[data_key(run)]
        want = 400_000 / (TOKENS_PER_STEP * train_bytes_per_token(ds))
        assert abs(run.train.steps - want) <= 0.5 and run.train.warmup == round(0.1 * run.train.steps)
    char, byte = (r.train.steps for r in spec.runs)
    assert char < byte  # a character of this text is 1 or more bytes
    spec, _ = bound(spec_with(budget={"tokens": 25_600}))
    assert spec.runs[0].train.steps == 200


def test_flops_and_tokens_per_param_budgets_follow_the_model_size():
    raw = {**spec_with(budget={"flops": 1.0e+11}), "grid": {"model.d_model": [32, 64]}}
    spec, datasets = bound(raw)
    per_run = []
    for run in spec.runs:
        params, flops = model_size(run, next(iter(datasets.values())).vocab_size)
        steps = run.train.steps
        assert abs(steps * TOKENS_PER_STEP * flops - 1.0e11) <= TOKENS_PER_STEP * flops / 2
        per_run.append(steps)
    assert per_run[0] > 2 * per_run[1]
    spec, datasets = bound(spec_with(budget={"tokens_per_param": 20}))
    params, _ = model_size(spec.runs[0], next(iter(datasets.values())).vocab_size)
    assert spec.runs[0].train.steps == round(20 * params / TOKENS_PER_STEP)


def test_dry_run_shows_each_runs_steps_tokens_bytes_and_flops(tmp_path, capsys):
    raw = {**spec_with(budget={"flops": 2.0e+9}), "grid": {"model.d_model": [32, 64]}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert runner.main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = out[0].split()
    assert {"steps", "warmup", "tokens", "bytes", "FLOPs"} <= set(header)
    steps = [int(line.split()[header.index("steps") + 1].replace(",", "")) for line in out[1:]]
    assert steps[0] > steps[1] > 0  # two words in the variant label before the columns line up
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("warmup, warned", [(20, True), (0.1, False)])
def test_a_warm_up_in_steps_that_budgets_make_unequal_shares_is_named(tmp_path, capsys, warmup, warned):
    raw = {**spec_with(budget={"flops": 2.0e+9}, warmup=warmup), "grid": {"model.d_model": [32, 64]}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert runner.main([str(path), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert ("warning: train.warmup = 20 steps is 13.2% of d_model=32's 152 steps but 45.5% of "
            "d_model=64's 44: their budgets give the runs different steps, so they warm up for different "
            "shares of their training; give the warm-up as a fraction (e.g. warmup: 0.29)" in err) == warned


def test_variants_with_warm_ups_of_their_own_are_not_warned_about(tmp_path, capsys):
    raw = {**spec_with(budget={"flops": 2.0e+9}, warmup=20), "variants": {"a": {}, "b": {"train.warmup": 60}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert runner.main([str(path), "--dry-run"]) == 0
    assert "warning" not in capsys.readouterr().err                   # the same steps: shares differ on purpose


def test_a_flops_budget_trains_each_width_to_within_one_step_of_it(tmp_path):
    """issue 13's test: a grid over two widths under {flops: F}: tokens_seen x flops_per_token within one step of F."""
    budget = 1.0e+9
    raw = {**spec_with(budget={"flops": budget}), "grid": {"model.d_model": [32, 64]}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert runner.main([str(path), "--results", str(tmp_path / "r"), "--no-report"]) == 0
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "r" / "b" / "runs").glob("*/summary.json"))]
    assert len(summaries) == 2 and len({s["steps"] for s in summaries}) == 2
    for s in summaries:
        one_step = TOKENS_PER_STEP * s["flops_per_token"]
        assert s["flops_seen"] == s["tokens_seen"] * s["flops_per_token"]
        assert abs(s["flops_seen"] - budget) <= one_step
        assert s["budget"] == {"flops": budget}
        # the exact bytes of the targets trained on: close to tokens x the text's bytes per token
        assert 0.9 < s["bytes_seen"] / s["tokens_seen"] < 1.2
    metrics = (Path(tmp_path / "r" / "b" / "runs").glob("*/metrics.csv"))
    last = [line.split(",") for line in next(metrics).read_text().splitlines()]
    assert last[0][:4] == ["step", "tokens", "bytes", "flops"] and int(last[-1][3]) > 0
