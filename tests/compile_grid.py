"""A grid of 6 tiny configurations with train.compile: true, trained in one process through the runner:
the CPU tests (test_compile.py) and the GPU check (test_gpu.py) both use it."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from experiments import run
from experiments.data import Embedded

GRID = {"model.positional": ["learned", "rope", "alibi"], "model.attention": ["multi_head", "grouped_query"]}
SMALL_GRID = {"model.positional": ["learned", "rope", "alibi"]}  # 3 configurations


def grid_spec(device: str, corpus: Path, steps: int = 8, grid: dict = GRID, batch_size: int = 4) -> dict:
    return {"experiment": "compile-grid", "seeds": [0], "data": {"corpus": str(corpus), "tokenizer": "char"},
            "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context_length": 16},
            "train": {"steps": steps, "batch_size": batch_size, "warmup": 1, "eval_every": 4, "eval_batches": 1,
                      "compile": True, "device": device},
            "sample": {"tokens": 0}, "grid": grid}


def small_corpus(folder: Path, n_bytes: int = 20_000) -> Path:
    """The first bytes of the embedded corpus: the final evaluation of each run stays short."""
    path = folder / "corpus.txt"
    path.write_bytes(Embedded().read()[:n_bytes])
    return path


def train_grid(root: Path, device: str, steps: int = 8, grid: dict = GRID, batch_size: int = 4) -> list[dict]:
    """Train the grid's runs (6 by default) in this process; their summaries, in the order they ran."""
    spec_path = root / "grid.yaml"
    spec_path.write_text(yaml.safe_dump(grid_spec(device, small_corpus(root), steps, grid, batch_size)))
    assert run.main([str(spec_path), "--results", str(root / "results"), "--no-report"]) == 0
    exp = root / "results" / "compile-grid"
    plan = json.loads((exp / "experiment.json").read_text())
    return [json.loads((exp / "runs" / r["run_id"] / "summary.json").read_text()) for r in plan["runs"]]
