"""Where a run computes and in what precision: the device choice, the device's bf16 units, what
`precision: auto` resolves to (the one place that decides it), autocast."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from experiments import files
from registry import SpecError


def resolve_device(name: str) -> torch.device:
    """A device name (cpu, cuda, cuda:N, mps), or auto: CUDA > MPS > CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def mps_available() -> bool:
    """Whether this machine has an Apple GPU that PyTorch can use."""
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def check_device(name: str) -> str:
    """A --device option: 'auto' -> the best device present; a name that is not a device, or a
    device this machine lacks -> SpecError."""
    try:
        device = resolve_device(name)
    except RuntimeError:
        raise SpecError(f"--device {name!r} is not a device name: use cpu, cuda, cuda:N, mps or auto") from None
    present = {"cpu": True, "cuda": torch.cuda.is_available(),
               "mps": mps_available()}
    if not present.get(device.type, False):
        raise SpecError(f"--device {name!r} is not available on this machine (try cpu or auto)")
    return str(device)


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


def require_present(device: torch.device) -> None:
    """SpecError when a run's device (train.device or --device) is not on this machine: found before any
    run starts, not as a failed run."""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise SpecError(f"device {device} (train.device or --device) is not here: this machine has {count} "
                            "CUDA device(s); use cpu, auto, or cuda:N with N below that count")
    elif device.type == "mps" and not mps_available():
        raise SpecError("device mps (train.device or --device) is not here: this machine has no Apple GPU that "
                        "PyTorch can use; use cpu or auto")


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether the run's GPU (not the current one) multiplies bf16 in hardware: compute capability 8.0
    or later (A100, H100, RTX 30xx on). torch.cuda.is_bf16_supported() also says yes where bf16 is
    emulated (V100, T4: slower than float32) and asks the current device; ROCm GPUs count as it counts them."""
    require_present(device)
    if torch.version.hip:
        return torch.cuda.is_bf16_supported()
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index) >= (8, 0)


def bf16_is_fast(device: torch.device) -> bool:
    """Whether `device` has bf16 matrix units (bf16 may still lose to float32 there on a small model)."""
    if device.type == "cuda":
        return cuda_has_native_bf16(device)
    return device.type == "cpu" and cpu_has_bf16_units()


# -- what `precision: auto` means ----------------------------------------------------------------
PRECISIONS = ("fp32", "bf16")
CPU_PRECISION_ENV = "LAB_CPU_PRECISION"  # fp32 | bf16: what auto means on this CPU, without measuring
BF16_MIN_GAIN = 1.1  # bf16 must be this much faster than float32 (timings on a shared machine vary ~10%)


def resolve_precision(precision: str, device: torch.device) -> str:
    """A run's train.precision as it runs on `device`: fp32 or bf16 as asked, and auto =
    - CUDA: bf16 where the GPU has native bf16 (cuda_has_native_bf16), fp32 where it would be emulated;
    - CPU: bf16 where the CPU has bf16 matrix units and the lab's bf16 training step, timed once per
      machine and cached (cpu_step_times), is BF16_MIN_GAIN times faster than its float32 step; else
      fp32 ($LAB_CPU_PRECISION overrides the measurement);
    - elsewhere (MPS): fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if cuda_has_native_bf16(device) else "fp32"
    if device.type != "cpu":
        return "fp32"
    forced = os.environ.get(CPU_PRECISION_ENV)
    if forced:
        if forced not in PRECISIONS:
            raise SpecError(f"{CPU_PRECISION_ENV} = {forced!r} (what train.precision auto means on this CPU) "
                            f"must be one of {', '.join(PRECISIONS)}; unset it to let the lab measure")
        return forced
    if not cpu_bf16_supported():
        return "fp32"
    times = cpu_step_times()
    return "bf16" if times["fp32_ms"] >= BF16_MIN_GAIN * times["bf16_ms"] else "fp32"


def cpu_bf16_supported() -> bool:
    """bf16 matrix units, and a torch whose oneDNN runs bf16 matmuls on them."""
    try:
        return cpu_has_bf16_units() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# What cpu_step_times times: the smallest recipe the lab ships, where bf16 gains least.
PROBE = {"preset": "nanogpt-cpu", "vocab_size": 65, "batch_size": 12, "warmup": 3, "steps": 8}


def cpu_step_times() -> dict[str, float]:
    """The lab's float32 and bf16 training step on this machine (ms; the PROBE model), measured once and
    cached beside the C kernels, keyed like them by the CPU, torch and the kernels' source: a file lock
    lets one process measure while concurrent ones (torchrun's ranks) wait for its answer."""
    from components.kernels import c_loader, fused

    sources = [Path(f).read_text(encoding="utf-8") for f in (c_loader.SOURCE_FILE, fused.__file__)]
    machine = [c_loader.cpu_flags(), c_loader.cpuinfo_line("model name"), str(os.cpu_count()), torch.__version__]
    key = hashlib.sha256("\n".join([*sources, *machine, json.dumps(PROBE)]).encode()).hexdigest()[:16]
    path = c_loader.kernel_dir() / f"precision-{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if path.exists():
            return files.read_json(path)
        print("precision auto: timing the lab's float32 and bf16 training steps once on this CPU ...",
              file=sys.stderr, flush=True)
        times = time_cpu_steps()
        files.write_json(path, times)
        return times


def time_cpu_steps() -> dict[str, float]:
    """Median ms of the PROBE model's training step (forward, backward, AdamW) in float32 and in bf16
    autocast, timed in turn on random tokens; torch's RNG is left as it was."""
    from components.model import GPT, PRESETS
    from experiments.optim import make_optimizer
    from experiments.schema import ModelConfig, TrainSettings

    cpu, times = torch.device("cpu"), {"fp32": [], "bf16": []}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT(ModelConfig(vocab_size=PROBE["vocab_size"], **PRESETS[PROBE["preset"]]))
        optimizer = make_optimizer(model, TrainSettings(), cpu)
        x, y = torch.randint(PROBE["vocab_size"], (2, PROBE["batch_size"], model.context_length))
        for i in range(PROBE["warmup"] + PROBE["steps"]):
            for precision, ts in times.items():
                start = time.perf_counter()
                with autocast(cpu, torch.bfloat16 if precision == "bf16" else None):
                    loss = model(x, y, return_logits=False)[1]
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                if i >= PROBE["warmup"]:
                    ts.append(time.perf_counter() - start)
    return {f"{p}_ms": round(1e3 * statistics.median(ts), 3) for p, ts in times.items()} | {
        "threads": torch.get_num_threads(), "probe": PROBE}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run's precision on `device` (auto resolved by resolve_precision): bf16 or
    None (float32).

    An explicit bf16 is honoured on any device (its numerics are what one may want to study), with a
    warning where the hardware has no bf16 matrix units and it will run slower than float32."""
    if resolve_precision(precision, device) != "bf16":
        return None
    if precision == "bf16" and not bf16_is_fast(device):
        warnings.warn(f"precision bf16 on {device.type}: this device has no bf16 matrix units, so bf16 "
                      "matmuls are emulated and slower than float32", stacklevel=2)
    return torch.bfloat16


def tf32_enabled(device: torch.device) -> bool:
    """Whether float32 matmuls on `device` may round their inputs to TF32 (CUDA's allow_tf32)."""
    return device.type == "cuda" and bool(torch.backends.cuda.matmul.allow_tf32)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
