"""How long a run trains: its train.budget (experiments/schema.py's BUDGET) turned into its own steps.

One optimizer step consumes tokens_per_step = batch_size x grad_accum x context_length tokens, so

    steps = round(budget / what one step consumes of the budget's unit), at least 1:
      tokens            tokens_per_step
      bytes             tokens_per_step x the bytes per token of the training text, as the run's
                        tokenizer cuts it (so a BPE run reads as much text as a char run, not 3x more)
      flops             tokens_per_step x the run's FLOPs per token (components/model.py, 6N + attention)
      tokens_per_param  tokens_per_step / the run's parameters (Hoffmann et al. 2022: ~20 tokens each)

Rounding to the nearest step puts every run within half a step of its budget. A warm-up given as a
fraction becomes round(fraction x steps). The derived steps and warm-up are part of the run's
resolved train section, so of its id.
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from experiments.schema import TRAIN
from registry import SpecError


def tokens_per_step(train: Any, context_length: int) -> int:
    return train.batch_size * train.grad_accum * context_length


def train_bytes_per_token(dataset: Any) -> float:
    """UTF-8 bytes per token of the training text, as the dataset's tokenizer cut it."""
    text = dataset.texts["train"]
    return text.n_bytes / max(text.n_tokens, 1)


def step_cost(kind: str, per_step: int, bytes_per_token: float, flops_per_token: int, params: int) -> float:
    """What one optimizer step consumes, in the budget's unit."""
    return {"tokens": per_step, "bytes": per_step * bytes_per_token, "flops": per_step * flops_per_token,
            "tokens_per_param": per_step / params}[kind]


def derived_steps(budget: dict[str, float], cost: float) -> int:
    (kind, amount), = budget.items()
    return int(amount) if kind == "steps" else max(1, round(amount / cost))


def warmup_steps(warmup: float, steps: int) -> int:
    """An integer warm-up is steps; a float is a fraction of the run's steps."""
    return round(warmup * steps) if isinstance(warmup, float) else int(warmup)


def warmup_too_long(warmup: float, steps: int, where: str) -> str | None:
    if isinstance(warmup, float) or warmup <= steps:
        return None
    return (f"train.warmup = {warmup} is longer than the {steps} steps the run trains{where}; give the warm-up "
            "as a fraction of the steps (e.g. warmup: 0.05) so that it scales with them")


def fixed_warmups(runs: list) -> list:
    """The runs (not yet bound) whose warm-up is a number of steps while their budget derives their steps."""
    return [run for run in runs if run.train.budget and "steps" not in run.train.budget
            and not isinstance(run.train.warmup, float) and run.train.warmup > 0]


def warmup_shares_note(bound: list) -> str | None:
    """Why runs of fixed_warmups (now bound) with one warm-up in steps warm up for different shares of their
    training, their budgets having given them different steps; None where the shares are within 10%."""
    def share(run: Any) -> float:
        return run.train.warmup / run.train.steps
    by_warmup: dict[int, list] = {}
    for run in bound:  # runs a variant gave a warm-up of its own differ on purpose
        by_warmup.setdefault(run.train.warmup, []).append(run)
    for warmup, runs in sorted(by_warmup.items()):
        low, high = min(runs, key=share), max(runs, key=share)
        if share(high) > 1.1 * share(low):
            fraction = max(0.01, round(statistics.fmean(map(share, runs)), 2))
            return (f"train.warmup = {warmup} steps is {share(low):.1%} of {low.variant}'s {low.train.steps} steps "
                    f"but {share(high):.1%} of {high.variant}'s {high.train.steps}: their budgets give the runs "
                    "different steps, so they warm up for different shares of their training; give the warm-up "
                    f"as a fraction (e.g. warmup: {fraction:g}) so that every run warms up for the same share")
    return None


def bind(run: Any, dataset: Any, params: int, flops_per_token: int) -> None:
    """Give `run` its own steps (and warm-up steps) from its budget; SpecError when they do not fit."""
    train = run.train
    if train.budget is None:
        return
    per_step = tokens_per_step(train, run.model["context_length"])
    kind = next(iter(train.budget))
    steps = derived_steps(train.budget, step_cost(kind, per_step, train_bytes_per_token(dataset),
                                                  flops_per_token, params))
    if not TRAIN["steps"].valid(steps):
        raise SpecError(f"train.budget = {train.budget} gives {run.variant} {steps:,} steps, and its steps must be "
                        f"{TRAIN['steps'].describe()}: give a smaller budget, or a larger batch")
    if problem := warmup_too_long(train.warmup, steps, f" under its budget {train.budget} ({run.variant})"):
        raise SpecError(problem)
    run.train = dataclasses.replace(train, steps=steps, warmup=warmup_steps(train.warmup, steps))


def planned(run: Any, dataset: Any, flops_per_token: int) -> dict[str, float]:
    """What a bound run will see: its steps, tokens, bytes (at the training text's bytes per token;
    summary.json's bytes_seen counts the exact bytes of the windows drawn) and FLOPs."""
    tokens = run.train.steps * tokens_per_step(run.train, run.model["context_length"])
    return {"steps": run.train.steps, "tokens": tokens, "bytes": tokens * train_bytes_per_token(dataset),
            "flops": tokens * flops_per_token}
