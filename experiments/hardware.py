"""Where a run computes and in what precision: the device choice, the CPU's bf16 units, autocast."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch


def resolve_device(name: str) -> torch.device:
    """A device name (cpu, cuda, cuda:N, mps), or auto: CUDA > MPS > CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


BF16_CPU_FLAGS = {"amx_bf16", "avx512_bf16", "bf16"}  # x86 AMX / AVX512-BF16; aarch64 FEAT_BF16


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where there is no such file."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / aarch64
            return set(value.split())
    return set()


def cpu_has_bf16_units(flags: set[str] | None = None) -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16, AMX or Arm BF16). Without such
    units bf16 matmuls are emulated: ~20x slower than float32 on an AVX2 EPYC, ~4x on an AVX-512
    Xeon without AVX512-BF16 (where oneDNN still reports bf16 as supported, so its flag is not used)."""
    flags = cpu_flags() if flags is None else flags
    if flags is not None:
        return bool(flags & BF16_CPU_FLAGS)
    try:  # no /proc/cpuinfo (macOS, Windows): oneDNN's own check is the best there is
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_is_fast(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16_units()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where asked; auto = bf16 on CUDA (with bf16 support), float32 elsewhere.

    An explicit bf16 is honoured on any device (its numerics are what one may want to study), with a
    warning where the hardware has no bf16 matrix units and it will run slower than float32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if precision != "bf16":
        return None
    if not bf16_is_fast(device):
        warnings.warn(f"precision bf16 on {device.type}: this device has no bf16 matrix units, so bf16 "
                      "matmuls are emulated and slower than float32", stacklevel=2)
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
