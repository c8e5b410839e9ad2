"""The exact final evaluation: every token of a text scored once, in non-overlapping windows.

A text of n tokens has n - 1 targets (every token but the first). They are cut into consecutive,
non-overlapping windows of context_length targets (the last one shorter), each window's inputs the
tokens just before its targets, and every target is scored exactly once. Why non-overlapping rather
than a strided sliding window: a target is then predicted from 0 to context_length - 1 tokens of its
own window, the same mix of contexts the model was trained on and the sampled periodic evaluations
measure, so the exact figure is the one those samples estimate (a sliding window gives each target
more context, a lower loss, at twice the cost or more).

    loss = total nats / scored tokens,  bpb = total nats / UTF-8 bytes of the scored tokens / ln 2

Under torchrun each process scores a contiguous share of the windows and the nats are summed across
processes, so every process returns the same score.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments import ddp, files
from experiments.checkpoint import load_model
from experiments.data import load_dataset
from experiments.hardware import autocast_dtype, resolve_device
from registry import SpecError


@dataclasses.dataclass(frozen=True)
class Score:
    """A text's total cross-entropy (nats) over its scored tokens and their UTF-8 bytes."""

    nats: float
    tokens: int
    bytes: int
    seconds: float

    @property
    def loss(self) -> float:
        return self.nats / self.tokens

    @property
    def bpb(self) -> float:
        return self.nats / self.bytes / math.log(2)

    def summary(self, split: str) -> dict[str, Any]:
        """summary.json's keys for this text: final_<split>_{loss, bpb, tokens, bytes}."""
        return {f"final_{split}_loss": self.loss, f"final_{split}_bpb": self.bpb,
                f"final_{split}_tokens": self.tokens, f"final_{split}_bytes": self.bytes}


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def my_windows(n_windows: int) -> tuple[int, int]:
    """This process's contiguous share [lo, hi) of the windows (all of them without torchrun)."""
    rank, world = ddp.rank(), ddp.world()
    return n_windows * rank // world, n_windows * (rank + 1) // world


@torch.no_grad()
def score(model: torch.nn.Module, tokens: np.ndarray, token_bytes: np.ndarray, batch_size: int,
          device: torch.device, dtype: torch.dtype | None = None) -> Score:
    """Score every token of `tokens` but the first, once (see the module's docstring).

    token_bytes: the UTF-8 bytes of each token (same length as tokens); dtype: the autocast dtype
    or None. The model is called through its loss path (model(x, y, return_logits=False)), which on
    the CPU in float32 is the fused output-layer + cross-entropy kernel (components/kernels/fused.py)."""
    start, n_targets, context = time.perf_counter(), len(tokens) - 1, model.context_length
    if n_targets < 1 or len(token_bytes) != len(tokens):
        raise ValueError(f"need at least 2 tokens and one byte count per token, got {len(tokens)} tokens "
                         f"and {len(token_bytes)} byte counts")
    ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    n_full = n_targets // context
    inputs = ids[:n_full * context].view(n_full, context)                     # (windows, T)
    targets = ids[1:n_full * context + 1].view(n_full, context)               # (windows, T)
    lo, hi = my_windows(n_full)
    pieces = [(inputs[i:min(i + batch_size, hi)], targets[i:min(i + batch_size, hi)]) for i in range(lo, hi, batch_size)]
    if n_full * context < n_targets and ddp.rank() == ddp.world() - 1:  # the last, shorter window
        pieces.append((ids[n_full * context:-1][None], ids[n_full * context + 1:][None]))    # (1, < T)
    was_training = model.training
    model.eval()
    means = []
    for x, y in pieces:
        with autocast(device, dtype):
            means.append(model(x.to(device), y.to(device), return_logits=False)[1].float())
    model.train(was_training)
    counts = torch.tensor([y.numel() for _, y in pieces], dtype=torch.float64)
    nats = (torch.stack(means).cpu().double() * counts).sum() if means else torch.zeros((), dtype=torch.float64)
    if ddp.active():
        nats = ddp.summed(nats.to(device)).cpu()
    n_bytes = int(np.asarray(token_bytes[1:]).sum(dtype=np.uint64))
    return Score(float(nats), n_targets, n_bytes, time.perf_counter() - start)


def final_scores(model: torch.nn.Module, dataset, batch_size: int, device: torch.device,
                 dtype: torch.dtype | None = None) -> dict[str, Any]:
    """summary.json's exact scores at the end of a run: the whole validation text, the test text
    too when the spec holds one out, and the seconds they took (final_eval_s)."""
    start, out = time.perf_counter(), {}
    for split in ("val", "test"):
        if dataset.texts[split].n_bytes:
            out |= score(model, *dataset.scored(split), batch_size, device, dtype).summary(split)
    return out | {"final_eval_s": round(time.perf_counter() - start, 3)}


def score_run(run_dir: str | Path, split: str = "test", device: str = "cpu", batch_size: int | None = None) -> Score:
    """Score a finished run's checkpoint on one of its texts ('val' or 'test'), from its folder alone:
    what a selection (a search's best trial, say) needs to be reported on held-out text."""
    run_dir = Path(run_dir)
    model, tokenizer, spec = load_model(run_dir, str(resolve_device(device)))
    data = spec["data"]
    dataset = load_dataset(data["corpus"], data["tokenizer"], data["val_fraction"], data.get("test_fraction", 0.0))
    if dataset.corpus_sha256 != spec["corpus_sha256"] or dataset.tokenizer.spec() != files.read_json(run_dir / "tokenizer.json"):
        raise SpecError(f"run {run_dir}: its corpus {data['corpus']!r} has changed since it was trained "
                        f"(sha256 {dataset.corpus_sha256}, the run's {spec['corpus_sha256']})")
    if not dataset.texts[split].n_bytes:
        raise SpecError(f"run {run_dir} has no {split} text: its data.{split}_fraction is 0")
    device_ = next(model.parameters()).device
    return score(model, *dataset.scored(split), batch_size or spec["train"]["batch_size"], device_,
                 autocast_dtype(spec.get("precision") or spec["train"]["precision"], device_))
