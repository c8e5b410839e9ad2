"""Where a training step's time goes: torch.profiler's per-op self times, summed into kinds of work.

The bench's `--breakdown` profiles a few steps of each combination and prints, per kind, the time per
step and its share of the profiled step. On the CPU each op's self time is the wall time the calling
thread spent in it (its parallel regions included), and "between ops" is the rest of the step: Python,
the autograd engine and the dispatcher. On CUDA the kinds sum the GPU's own kernel time (self device
time) and "between ops" is the step's wall time the GPU was not busy with them. The profiler's own
overhead (a few microseconds per op) lands in the kinds with many small ops: read the table for
proportions, and the bench's step_ms for speed.
"""
from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any, Callable

# (kind, substrings of an op's name, lower case): the first kind that matches takes the op.
KINDS = [
    ("attention", ("attention", "flash", "efficient_attention")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "_addmm_activation",
                "aten::matmul", "aten::linear", "gemm")),
    ("output layer + loss", ("crossentropy", "cross_entropy", "log_softmax", "nll_loss")),
    ("norms", ("norm",)),  # layer_norm, rms_norm; the clip's linalg_vector_norm is claimed below first
    ("activation + dropout", ("gelu", "relu", "silu", "swiglu", "dropout", "sigmoid", "tanh")),
    ("casts + copies", ("copy", "clone", "contiguous", "aten::cat", "aten::to", "aten::stack")),
    ("reductions (bias gradients)", ("aten::sum", "aten::mean")),
    ("embeddings", ("embedding", "index_select", "index_add")),
    ("elementwise", ("aten::add", "aten::mul", "aten::sub", "aten::div", "aten::fill_", "aten::zero",
                     "aten::where", "aten::masked_fill")),
]
OPTIMIZER = ("adam", "foreach", "vector_norm", "clamp")  # the optimizer step and gradient clipping
# No arithmetic of their own: views, allocations, and torch's autograd nodes (their names end in a digit;
# the work they start is an op of its own), unlike the lab's autograd Functions, which do theirs in C.
FRAMEWORK = re.compile(r"autograd::|Backward\d+$|^detach|^aten::(view|t|transpose|as_strided|empty\w*|reshape|"
                       r"_reshape_alias|slice|split\w*|select|expand\w*|unsqueeze|squeeze|permute|unbind|chunk|"
                       r"narrow|alias|lift_fresh|resolve_\w+|result_type|_unsafe_view)$")
FRAMEWORK_KIND = "framework (views, allocations, autograd nodes)"
BETWEEN_OPS = "between ops (Python, dispatch)"


def kind_of(name: str) -> str:
    low = name.lower()
    if FRAMEWORK.search(name):
        return FRAMEWORK_KIND
    if any(s in low for s in OPTIMIZER):
        return "optimizer + clipping"
    return next((kind for kind, parts in KINDS if any(p in low for p in parts)), "other")


def profile_steps(step: Callable[[], Any], steps: int, cuda: bool) -> dict[str, Any]:
    """Run `step` `steps` times under torch.profiler: {"step_ms": profiled wall time per step,
    "kinds": {kind: ms per step}, "top": [(op, kind, ms per step)] of the ten costliest ops}."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1e3 / steps
    per_op: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if us > 0:
            per_op[event.key] += us / 1e3 / steps
    return summarize(per_op, wall_ms)


def summarize(per_op: dict[str, float], wall_ms: float) -> dict[str, Any]:
    """Kinds from per-op milliseconds per step; what the ops leave of the step is BETWEEN_OPS."""
    kinds: dict[str, float] = defaultdict(float)
    for op, ms in per_op.items():
        kinds[kind_of(op)] += ms
    kinds[BETWEEN_OPS] = max(0.0, wall_ms - sum(per_op.values()))
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:10]
    return {"step_ms": wall_ms, "kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
            "top": [(op, kind_of(op), ms) for op, ms in top]}


def format_breakdown(title: str, profile: dict[str, Any]) -> str:
    """The kinds (ms per step, share of the profiled step) and the costliest ops, as text."""
    total = profile["step_ms"]
    lines = [f"{title}: {total:.2f} ms per profiled step"]
    lines += [f"  {kind:42s} {ms:9.2f} ms  {100 * ms / total:5.1f}%" for kind, ms in profile["kinds"].items()]
    lines.append("  costliest ops:")
    lines += [f"    {op[:60]:60s} {ms:9.2f} ms  ({kind})" for op, kind, ms in profile["top"]]
    return "\n".join(lines)
