"""What a run needs in memory, estimated before anything is built, and the check that refuses a run
its device cannot hold ("needs ~X GiB, this machine has Y").

The estimate is a floor, so that only runs that cannot fit are refused:

* state: fp32 weights, their gradients and AdamW's two moments, 16 bytes a parameter (bf16
  autocast adds a 2-byte copy of the weights);
* activations: what one micro-batch keeps for the backward pass, about (6 + 2 * mult) * d_model
  values a token per block (norm inputs and outputs, q/k/v, the attention output, the MLP's hidden
  layer before and after its activation), plus the n_heads x T x T scores and weights with
  `impl: naive` (the fused kernels never hold them); the output layer's logits are left out (the
  CPU path computes the loss in blocks of rows);
* batches: the step's global batch and the evaluation windows, which are made once per run and
  kept (eval_batches x EVAL_ROWS per split, train and val), int64 inputs and targets.

The parameters are counted exactly, on a model built on the meta device (no memory).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from components.model import GPT
from experiments.schema import EVAL_ROWS, ModelConfig
from registry import SpecError, cut

GIB = 1 << 30
STATE_BYTES = 16     # per parameter: fp32 weight, gradient, exp_avg, exp_avg_sq
INDEX_BYTES = 16     # per token of a batch: int64 input and int64 target


def meta_model(model: dict[str, Any], vocab_size: int) -> GPT:
    """The run's model on the meta device: its shapes, no memory and no initial values (torch's normal_
    on a meta tensor imports torch._dynamo, ~2 s, and a size needs no values)."""
    normal = torch.nn.init.normal_
    torch.nn.init.normal_ = lambda tensor, *args, **kwargs: tensor
    try:
        with torch.device("meta"):
            return GPT(ModelConfig(vocab_size=vocab_size, **model))
    finally:
        torch.nn.init.normal_ = normal


def param_count(model: dict[str, Any], vocab_size: int, cache: dict[str, int | None]) -> int | None:
    """Parameters of the model (None when it is too large even to describe), one meta build per config."""
    key = json.dumps([model, vocab_size], sort_keys=True, default=str)
    if key not in cache:
        try:
            cache[key] = meta_model(model, vocab_size).num_params()
        except (RuntimeError, OverflowError, ValueError, MemoryError):
            cache[key] = None  # sizes beyond what torch can index: certainly too large
    return cache[key]


def activation_values(model: dict[str, Any], tokens: int, sequences: int) -> int:
    """Values one micro-batch of `sequences` x context_length tokens keeps for the backward pass."""
    d, layers, heads, t = model["d_model"], model["n_layers"], model["n_heads"], model["context_length"]
    hidden = int(float(model["feedforward"].get("mult", 4.0)) * d)
    per_token = layers * (6 * d + 2 * hidden) + 2 * d
    attention = model["attention"]
    scores = 0
    if attention.get("name") != "none" and attention.get("impl") == "naive":
        scores = layers * sequences * heads * t * t * 2                        # (B, n_heads, T, T) twice
    return tokens * per_token + scores


def needs(run, vocab_size: int, world: int = 1, cache: dict | None = None) -> dict[str, int] | None:
    """{part: bytes} a run needs at least on its device; None when its model cannot even be described."""
    params = param_count(run.model, vocab_size, {} if cache is None else cache)
    if params is None:
        return None
    train, t = run.train, run.model["context_length"]
    bf16 = train.precision == "bf16"
    micro = max(1, train.batch_size // world)  # sequences one process holds at a time
    global_batch = train.batch_size * train.grad_accum
    return {
        "weights and AdamW state": params * (STATE_BYTES + (2 if bf16 else 0)),
        f"activations of a micro-batch of {micro:,} x {t:,} tokens":
            activation_values(run.model, micro * t, micro) * (2 if bf16 else 4),
        "the step's batch and the evaluation batches":
            (global_batch + 2 * train.eval_batches * EVAL_ROWS) * t * INDEX_BYTES,  # train and val windows
    }


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory the device has (for the CPU and MPS: the machine's RAM, or the container's
    limit when lower); None when it cannot be told."""
    if device.type == "cuda":
        try:
            return torch.cuda.get_device_properties(device.index or 0).total_memory
        except (RuntimeError, AssertionError):
            return None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    return min(total, cgroup_limit() or total)


def cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 1 << 60:  # "max" or a huge number: no limit
            return int(value)
    return None


def gib(n: int) -> str:
    """A size as people read it: '12 MiB', '3.5 GiB', '460,000 GiB'."""
    if n < GIB:
        return f"{n / (1 << 20):,.0f} MiB"
    return f"{n / GIB:,.1f} GiB" if n < 100 * GIB else f"{n / GIB:,.0f} GiB"


def problem(run, vocab_size: int, device: torch.device, memory: int | None, world: int = 1,
            cache: dict | None = None) -> str | None:
    """Why `run` cannot fit on `device` (None when it can, or when the device's memory is unknown)."""
    parts = needs(run, vocab_size, world, cache)
    if parts is None:
        return (f"run {cut(run.variant)} (seed {run.seed}): the model is too large to build at all "
                f"(d_model {run.model['d_model']:,}, {run.model['n_layers']:,} layers): make it smaller")
    total = sum(parts.values())
    if memory is None or total <= memory:
        return None
    detail = ", ".join(f"{name} {gib(size)}" for name, size in parts.items())
    return (f"run {cut(run.variant)} (seed {run.seed}) needs ~{gib(total)}, this machine has {gib(memory)} "
            f"({device.type} memory): {detail}. Make the model smaller, lower train.batch_size (train.grad_accum "
            "keeps the global batch while holding fewer sequences at a time) or train.eval_batches, or train "
            "on a device with more memory")


def check_fits(runs: list, datasets: dict, device_of, data_key, world: int = 1) -> None:
    """SpecError listing every run that cannot fit its device, before anything is built or written.
    `device_of(run)` is the torch.device the run will train on; `data_key(run)` finds its dataset."""
    problems, cache, memory = [], {}, {}
    for run in runs:
        device = device_of(run)
        if str(device) not in memory:
            memory[str(device)] = device_memory(device)
        found = problem(run, datasets[data_key(run)].vocab_size, device, memory[str(device)], world, cache)
        if found and found not in problems:
            problems.append(found)
        if len(problems) >= 3:  # the same advice fits the rest
            problems.append("(further runs not checked)")
            break
    if problems:
        raise SpecError(problems)


# -- this process's memory (the bench reports a run's peak growth) -------------------------------
def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM) since reset_peak_rss: ru_maxrss would also count the peak of
    the parent that started it (the bench's, after its 4096^2 peak matmuls), which Linux carries over."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
