"""Train tiny real runs through the runner, once per test process, for the generate and export tests.

The runs are small (d_model 32, 2 layers, context 16) but trained long enough (300 steps, about two
seconds each) that greedy decoding no longer repeats one character: a generation test that compares
two decoders on a run of spaces would pass whatever they did. (At 200 steps and lr 1e-2 a change of
float rounding alone, another attention kernel, left the baseline greedy on spaces.)
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

SPEC = {
    "experiment": "tiny",
    "seeds": [0],
    "data": {"corpus": "embedded", "tokenizer": "char"},
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "context_length": 16,
              "positional": "learned", "attention": "multi_head", "norm": "layernorm", "block": "pre",
              "feedforward": "gelu_mlp", "head": "tied"},
    "train": {"steps": 300, "batch_size": 16, "lr": 5.0e-3, "warmup": 10, "eval_every": 300, "eval_batches": 2,
              "device": "cpu"},  # pinned: the tests compare float32 CPU results
    "sample": {"tokens": 0},
    "variants": {
        "baseline": {},
        # Every other GPT-2 mapping at once: untied head, exact GELU, naive attention, another eps, dropout.
        "untied": {"model.head": "untied", "model.feedforward.approximate": "none",
                   "model.attention.impl": "naive", "model.norm.eps": 1.0e-6, "model.dropout": 0.1},
    },
}


@functools.cache
def tiny_runs() -> dict[str, Path]:
    """{variant: run folder}, trained on first call into a folder removed when the process exits."""
    from experiments import run

    root = Path(tempfile.mkdtemp(prefix="lab-tiny-runs-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    spec_path = root / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC), encoding="utf-8")
    previous, threads = os.environ.get("LAB_CACHE_DIR"), torch.get_num_threads()
    os.environ["LAB_CACHE_DIR"] = str(root / "cache")  # never read or fill the user's token cache
    # One thread: a model this small gains nothing from more, and on a busy 2-core machine two
    # threads contending with other processes made training 4x slower.
    torch.set_num_threads(1)
    try:
        code = run.main([str(spec_path), "--results", str(root / "results"), "--no-report"])
    finally:
        torch.set_num_threads(threads)
        if previous is None:
            os.environ.pop("LAB_CACHE_DIR")
        else:
            os.environ["LAB_CACHE_DIR"] = previous
    assert code == 0, "the tiny runs did not train"
    plan = json.loads((root / "results" / "tiny" / "experiment.json").read_text(encoding="utf-8"))
    return {entry["variant"]: root / "results" / "tiny" / "runs" / entry["run_id"] for entry in plan["runs"]}
