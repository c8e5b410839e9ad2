"""The exact final evaluation: every token but the first scored once, bits per byte over the scored bytes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from components.model import GPT
from experiments.schema import EVAL_ROWS, ModelConfig
from experiments import ddp, evaluate
from experiments import run, runner
from experiments.data import load_dataset
from registry import SpecError


class Recorder(torch.nn.Module):
    """Stands in for a model: records what it is asked to score; its 'loss' is the mean target id."""

    def __init__(self, context_length: int):
        super().__init__()
        self.context_length, self.inputs, self.targets = context_length, [], []

    def forward(self, x, y, return_logits=True):
        assert x.shape == y.shape and 1 <= x.shape[1] <= self.context_length and not self.training
        assert torch.equal(x[:, 1:], y[:, :-1])  # inputs are the tokens just before the targets
        self.inputs.append(x.flatten())
        self.targets.append(y.flatten())
        return None, y.double().mean().float()


@pytest.mark.parametrize("n", [2, 8, 9, 43])
@pytest.mark.parametrize("batch_size", [1, 2, 7])
def test_every_token_but_the_first_is_scored_once_in_order(n: int, batch_size: int) -> None:
    tokens = np.arange(n) % 10
    token_bytes = 1 + np.arange(n) % 3
    model = Recorder(context_length=8).train()
    score = evaluate.score(model, tokens, token_bytes, batch_size, torch.device("cpu"))
    assert torch.equal(torch.cat(model.targets), torch.from_numpy(tokens[1:]))
    assert torch.equal(torch.cat(model.inputs), torch.from_numpy(tokens[:-1]))
    assert (score.tokens, score.bytes) == (n - 1, token_bytes[1:].sum())
    assert score.nats == pytest.approx(tokens[1:].sum(), rel=1e-6)
    assert score.bpb == pytest.approx(score.nats / score.bytes / math.log(2), rel=1e-12)
    assert model.training  # put back as it was found


def test_processes_under_torchrun_share_the_windows_without_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens, world = np.arange(100) % 10, 3
    shares = []
    for rank in range(world):
        monkeypatch.setattr(ddp, "rank", lambda rank=rank: rank)
        monkeypatch.setattr(ddp, "world", lambda: world)
        model = Recorder(context_length=8)
        evaluate.score(model, tokens, np.ones(100), 4, torch.device("cpu"))
        shares.append(torch.cat(model.targets) if model.targets else torch.zeros(0, dtype=torch.int64))
    assert all(len(s) for s in shares)
    assert torch.equal(torch.cat(shares), torch.from_numpy(tokens[1:]))  # contiguous, in rank order, the tail last


def reference_nats(model: GPT, tokens: np.ndarray) -> float:
    """Plain logits and F.cross_entropy, one non-overlapping window at a time, summed in float64."""
    ids, T, total = torch.from_numpy(tokens.astype(np.int64)), model.context_length, 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, T):
            x, y = ids[start:start + T], ids[start + 1:start + T + 1]
            x = x[:len(y)]
            logits = model(x[None])[0][0]                                      # (len, vocab)
            total += F.cross_entropy(logits.double(), y, reduction="sum").item()
    return total


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_the_score_is_the_plain_cross_entropy_of_the_whole_text(lab_cache: Path, tokenizer: str) -> None:
    ds = load_dataset("embedded", tokenizer)
    tokens, token_bytes = ds.scored("val")
    tokens, token_bytes = tokens[:700], token_bytes[:700]
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=ds.vocab_size, d_model=32, n_layers=1, n_heads=2, context_length=16))
    expected = reference_nats(model.eval(), tokens)
    for batch_size in (1, 5, 64):  # the fused output-layer kernel on the CPU, however the windows are batched
        score = evaluate.score(model, tokens, token_bytes, batch_size, torch.device("cpu"))
        assert score.nats == pytest.approx(expected, rel=1e-5)
        assert score.bpb == pytest.approx(expected / token_bytes[1:].sum() / math.log(2), rel=1e-5)
    again = evaluate.score(model, tokens, token_bytes, 5, torch.device("cpu"))
    assert again.nats == evaluate.score(model, tokens, token_bytes, 5, torch.device("cpu")).nats  # deterministic


def test_too_short_a_text_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 tokens"):
        evaluate.score(Recorder(8), np.array([3]), np.array([1]), 4, torch.device("cpu"))


SPEC = {"experiment": "t", "seeds": [0], "data": {"corpus": "embedded", "tokenizer": "char", "test_fraction": 0.1},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context_length": 16},
        "train": {"steps": 10, "batch_size": 4, "lr": 3e-3, "warmup": 2, "eval_every": 10, "eval_batches": 2,
                  "device": "cpu"},
        "sample": {"tokens": 0}}


def test_a_run_with_a_test_text_scores_it_and_its_checkpoint_can_be_scored_again(lab_cache: Path, tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    assert run.main([str(spec), "--results", str(tmp_path / "r"), "--no-report"]) == 0
    run_dir = next((tmp_path / "r" / "t" / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    ds = load_dataset("embedded", "char", 0.1, 0.1)
    for split in ("val", "test"):
        tokens = ds.split(split)
        assert summary[f"final_{split}_tokens"] == len(tokens) - 1
        assert summary[f"final_{split}_bytes"] == ds.token_bytes[tokens[1:]].sum()
        again = evaluate.score_run(run_dir, split)  # what a search needs to report its best trial on held-out text
        assert again.loss == pytest.approx(summary[f"final_{split}_loss"], rel=1e-6)
        assert again.bpb == pytest.approx(summary[f"final_{split}_bpb"], rel=1e-6)
    assert summary["final_test_loss"] != summary["final_val_loss"] and summary["final_eval_s"] > 0

    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(SPEC | {"data": {"corpus": "embedded", "tokenizer": "char"}}))
    assert run.main([str(plain), "--results", str(tmp_path / "p"), "--no-report"]) == 0
    with pytest.raises(SpecError, match="no test text"):
        evaluate.score_run(next((tmp_path / "p" / "t" / "runs").iterdir()), "test")


def test_every_run_of_a_seed_samples_the_same_periodic_windows(lab_cache: Path, tmp_path: Path) -> None:
    """Runs of one seed that differ in their components, dropout, init, global batch or how it is
    accumulated see the same evaluation windows (another context length or tokenizer cannot; the final
    figures score the same whole text for every run)."""
    from experiments.spec import parse_spec
    from experiments.train import Trainer

    raw = SPEC | {"data": {"corpus": "embedded", "tokenizer": "char"}, "seeds": [3], "variants": {
        "a": {}, "b": {"model.block": "post", "model.positional": "rope", "model.dropout": 0.2, "model.init": "torch",
                       "model.n_layers": 2, "train.batch_size": 3, "train.grad_accum": 2, "train.lr": 1e-2}}}
    runs = parse_spec(raw).runs
    ds = runner.bind_data(runs)[runner.data_key(runs[0])]
    sets = [Trainer(run, ds, tmp_path / run.variant, torch.device("cpu")).eval_sets for run in runs]
    for split in ("train", "val"):
        (xa, ya), (xb, yb) = sets[0][split], sets[1][split]
        assert len(xa) == SPEC["train"]["eval_batches"] * EVAL_ROWS
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
