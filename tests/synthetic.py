"""Write a synthetic results/<experiment>/ folder in the layout of results/README.md.

The analysis tests (and anyone wanting to try `python -m analysis` before the runner exists)
describe runs by their final bits per byte; everything else is derived so that it is plausible
and consistent: nats/token = bpb · ln 2 · bytes per token, curves decay to the final values.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

BYTES_PER_TOKEN = {"char": 1.0, "byte": 1.0, "gpt2": 4.0}
VOCAB = {"char": 65, "byte": 256, "gpt2": 50257}
RUNS_COLUMNS_TAIL = ["seed", "status", "params", "flops_per_token", "tokens_seen",
                     "final_train_loss", "final_val_loss", "final_val_bpb", "best_val_loss",
                     "best_val_bpb", "tokens_per_s", "wall_s", "tokenizer", "corpus"]
EVAL_STEPS = (0, 100, 200, 300, 400)
TOKENS_PER_STEP = 32 * 64


@dataclass
class Run:
    variant: str
    seed: int
    bpb: float                                  # final val bits per byte
    axes: dict[str, Any] = field(default_factory=dict)
    status: str = "done"
    tokenizer: str = "char"
    params: int = 100_000
    in_runs_csv: bool = True                    # False: planned, not started (no row, no folder)
    trial: int | None = None
    state: str | None = None                    # the trial's Optuna state (default COMPLETE)
    summary: dict[str, Any] = field(default_factory=dict)   # summary.json keys to set (test scores, FLOPs seen)
    planned: dict[str, Any] = field(default_factory=dict)   # experiment.json keys of its entry (steps, warmup)

    @property
    def run_id(self) -> str:
        key = json.dumps([self.variant, self.axes, self.seed, self.tokenizer], sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:10]


def grid_runs(grid: dict[str, list[Any]], seeds: list[int],
              bpb: Callable[[dict[str, Any], int], float], variant: str | None = None,
              **kw: Any) -> list[Run]:
    """One run per grid cell and seed, labelled as the runner labels them: `block=pre, ...`
    (the key without its first part), or `<variant>, block=pre` under a named variant."""
    runs = []
    for values in itertools.product(*grid.values()):
        axes = dict(zip(grid, values))
        parts = [f"{k.split('.', 1)[-1]}={v}" for k, v in axes.items()]
        name = ", ".join(([variant] if variant else []) + parts)
        runs += [Run(name, s, bpb(axes, s), axes=axes, **kw) for s in seeds]
    return runs


def _nats(bpb: float, tokenizer: str) -> float:
    return bpb * math.log(2) * BYTES_PER_TOKEN[tokenizer]


def _curve(run: Run) -> list[dict[str, Any]]:
    start = math.log(VOCAB[run.tokenizer])
    final = _nats(run.bpb, run.tokenizer)
    steps = EVAL_STEPS if run.status == "done" else EVAL_STEPS[:3]
    rows = []
    for step in steps:
        frac = step / EVAL_STEPS[-1]
        decay = (math.exp(-6 * frac) - math.exp(-6)) / (1 - math.exp(-6))   # 1 → 0 exactly
        loss = final + (start - final) * decay
        if run.status == "diverged" and step >= 200:
            loss = float("nan")
        rows.append({"step": step, "tokens": step * TOKENS_PER_STEP, "lr": 1e-3,
                     "train_loss": loss - 0.01, "val_loss": loss,
                     "val_bpb": loss / math.log(2) / BYTES_PER_TOKEN[run.tokenizer],
                     "elapsed_s": step * 0.05})
    return rows


def _summary(run: Run) -> dict[str, Any]:
    finished = run.status == "done"
    nats = _nats(run.bpb, run.tokenizer) if finished else float("nan")
    tokens = (EVAL_STEPS[-1] if finished else EVAL_STEPS[2]) * TOKENS_PER_STEP
    return {
        "status": run.status, "final_val_loss": nats,
        "final_val_bpb": run.bpb if finished else float("nan"),
        "best_val_loss": nats, "best_val_bpb": run.bpb if finished else float("nan"),
        "final_train_loss": nats - 0.01, "params": run.params, "flops_per_token": 6 * run.params,
        "tokens_seen": tokens, "tokens_per_s": 40_000.0, "wall_s": tokens / 40_000.0,
        "tokenizer": run.tokenizer, "corpus": "embedded", "corpus_sha256": "0" * 64,
        "device": "cpu",
    } | run.summary


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def build_experiment(root: Path, name: str, runs: list[Run], *, axes: list[str] = (),
                     variants: list[str] = (), baseline: str | None = None,
                     search: dict[str, Any] | None = None,
                     spec: dict[str, Any] | None = None, plan: dict[str, Any] | None = None) -> Path:
    """Write results/<name>/ under root for `runs`; returns the experiment folder."""
    exp = root / name
    (exp / "runs").mkdir(parents=True, exist_ok=True)
    seeds = sorted({r.seed for r in runs})
    spec = spec or {
        "experiment": name, "seeds": seeds,
        "data": {"corpus": "embedded", "tokenizer": "char", "val_fraction": 0.1},
        "model": {"preset": "tiny", "positional": "learned", "block": "pre"},
        "train": {"steps": EVAL_STEPS[-1], "batch_size": 32, "lr": 1e-3},
    }
    (exp / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    plan = {"experiment": name, "axes": list(axes), "variants": list(variants), "seeds": seeds,
            "runs": [{"run_id": r.run_id, "variant": r.variant, "axes": r.axes, "seed": r.seed, **r.planned}
                     for r in runs],
            "baseline": baseline, "search": search, **(plan or {})}  # plan: budget, tune, scale
    (exp / "experiment.json").write_text(json.dumps(plan, indent=1))
    rows = []
    for run in (r for r in runs if r.in_runs_csv):
        folder = exp / "runs" / run.run_id
        folder.mkdir(exist_ok=True)
        summary = _summary(run)
        (folder / "summary.json").write_text(json.dumps(summary))
        _write_csv(folder / "metrics.csv", _curve(run), list(_curve(run)[0]))
        (folder / "samples.txt").write_text(f"ROMEO: a sample from {run.variant} seed "
                                            f"{run.seed}.\n```not a fence```\n")
        (folder / "spec.yaml").write_text(yaml.safe_dump(
            {"experiment": name, "variant": run.variant, "axes": run.axes, "seed": run.seed,
             **{k: spec[k] for k in ("data", "model", "train") if k in spec}}))
        rows.append({"run_id": run.run_id, "variant": run.variant, **run.axes, "seed": run.seed,
                     "trial": run.trial,
                     "state": run.state or ("COMPLETE" if run.trial is not None else None),
                     **summary})
    extra = ["trial", "state"] if search else []
    _write_csv(exp / "runs.csv", rows, ["run_id", "variant", *axes, *RUNS_COLUMNS_TAIL, *extra])
    return exp


def build_search_experiment(root: Path, name: str, values: list[float],
                            n_params: int = 2, layers: int | None = None) -> Path:
    """A search experiment: one run per Optuna trial, the study in <exp>/study.db (SQLite).

    Trial i gets lr = 1e-4·2^(i mod 8) (and n_layer = `layers` or 1 + i % 3 when n_params is 2) and objective
    values[i]; runs.csv carries `trial` and `state` as the runner's search writes them.
    """
    import optuna

    exp = root / name
    exp.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{exp / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    runs = []
    for i, value in enumerate(values):
        params: dict[str, Any] = {"train.lr": 1e-4 * 2 ** (i % 8)}
        dists: dict[str, Any] = {"train.lr": optuna.distributions.FloatDistribution(
            1e-5, 1e-1, log=True)}
        if n_params == 2:
            params["model.n_layer"] = layers or 1 + i % 3
            dists["model.n_layer"] = optuna.distributions.IntDistribution(1, 4)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                  value=value))
        runs.append(Run(f"trial-{i}", 0, value, trial=i, params=100_000 * (1 + i % 3)))
    search = {"storage": storage, "study_name": name, "metric": "final_val_bpb",
              "direction": "minimize"}
    return build_experiment(root, name, runs, search=search)
