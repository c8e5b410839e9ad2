"""Gradient-norm clipping in two C calls for all of a model's gradients (cpu_kernels.c: sum_squares,
scale_all): torch's CPU foreach ops run one op per tensor (a norm, then a multiply: ~100 ops a step
for a 4-layer model). With AdamW's step counts advanced by one op (experiments/optim.py), nanogpt-cpu's
clipping + AdamW went 2.58 -> 1.86 ms a step (2-core AVX-512 Xeon). The sum is also more exact: float
blocks of 4,096 squares summed in float64, where torch's float32 norm of a 3.2 M-element tensor was
off by 6e-5.

Served where the C loops serve (settings.py) and every gradient is a contiguous float32 CPU tensor;
elsewhere `pointers` says None and the caller keeps torch's ops.
"""
from __future__ import annotations

import ctypes

import torch

from components.kernels import c_loader, settings


def pointers(tensors: list[torch.Tensor]):
    """(the C library, an array of the tensors' data pointers, an array of their sizes), or None where
    the C loops do not serve these tensors."""
    current = settings.current()
    if not (current.fused and current.c_loops) or not all(
            t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors):
        return None
    lib = c_loader.load()
    if lib is None:
        return None
    n = len(tensors)
    return lib, (ctypes.c_void_p * n)(*(t.data_ptr() for t in tensors)), (ctypes.c_int64 * n)(*(t.numel() for t in tensors))


def clip_(tensors: list[torch.Tensor], max_norm: float) -> float | None:
    """The tensors' joint 2-norm, and each scaled in place by max_norm / (norm + 1e-6) where that is
    below 1 (torch.nn.utils.clip_grad_norm_'s rule); None, with nothing done, where C does not serve."""
    found = pointers(tensors)
    if found is None:
        return None
    lib, ptrs, sizes = found
    norm = lib.sum_squares(ptrs, sizes, len(tensors)) ** 0.5
    scale = max_norm / (norm + 1e-6)
    if not scale >= 1.0:  # a NaN norm scales too, as torch's clamp passes NaN on
        lib.scale_all(ptrs, sizes, len(tensors), scale)
    return norm
