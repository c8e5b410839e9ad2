"""The C kernels (components/kernels/cpu_kernels.c), compiled once per machine with the system C
compiler and called by ctypes.

Why: on the CPU a chain of torch ops (GELU's tanh form as square/mul/add/sigmoid/mul, a dropout
mask as draw/compare/convert/multiply, softmax then dropout) reads and writes each activation-sized
tensor once per op; these loops do it once. They share torch's OpenMP thread pool (torch ships
libgomp.so.1, which the loader hands to this library too), so they follow torch.set_num_threads.

Each loop has a float32 form and a bf16 one (name_bf16: bf16 in and out, float32 arithmetic), except
the whole-head attention (causal_attn_*), float32 only.

Dropout masks come from a counter-based hash of (seed, element index), the seed drawn from torch's
generator: the same draws whatever the thread count, nothing to store for the backward (the mask is
regenerated), and a checkpoint's torch RNG state still resumes a run exactly.

`load()` returns None when there is no C compiler or the build fails; callers then use torch ops.
Build: `cc -O3 -march=native -fopenmp -fno-trapping-math` (and 512-bit vectors on x86) into
<cache>/kernels/<hash of source, compiler, CPU>.so, written atomically, so concurrent processes and later
runs share it (~1 s, once).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE_FILE = Path(__file__).with_name("cpu_kernels.c")
# -fno-trapping-math lets the compiler if-convert (so vectorise) the loops; NaNs still propagate.
# On x86, 512-bit vectors where the CPU has AVX-512: -march=native alone keeps GCC at 256 bits there, and
# the exp-heavy loops ran ~1.4x faster with 512 (GELU forward 200 -> 142 us per nanogpt-cpu layer; the
# shakespeare-cpu step 1,702 -> 1,586 ms, measured alternating in one process on a 2-core AVX-512 Xeon).
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math",
         *(["-mprefer-vector-width=512"] if platform.machine() in ("x86_64", "AMD64") else [])]
_lib: ctypes.CDLL | None | bool = False  # False: not tried yet


def kernel_dir() -> Path:
    """Shared by every run and test on this machine (a build artifact of the code, not of any data)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "gpt2-ablation-lab" / "kernels"


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build(cc: str) -> Path:
    """The compiled library (built now unless this source, compiler and CPU have one already)."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    source = SOURCE_FILE.read_text(encoding="utf-8")
    key = hashlib.sha256("\n".join([source, " ".join(FLAGS), version, platform.machine(), cpu_flags()]).encode())
    target = kernel_dir() / f"lab-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, out = Path(tmp) / "lab.c", Path(tmp) / "lab.so"
        src.write_text(source, encoding="utf-8")  # the very text the key was made from
        subprocess.run([cc, *FLAGS, str(src), "-o", str(out)], check=True, capture_output=True, timeout=120)
        os.replace(out, target)  # atomic: a concurrent build of the same key writes the same bytes
    return target


def cpu_flags() -> str:
    return cpuinfo_line("flags")


def cpuinfo_line(key: str) -> str:
    """The first line of /proc/cpuinfo that starts with `key` ("flags", "model name"), or ""."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(key)), "")
    except OSError:
        return ""


def openmp_runtimes() -> set[str]:
    """The OpenMP libraries mapped into this process."""
    try:
        with open("/proc/self/maps") as f:
            return {line.split()[-1] for line in f if any(n in line for n in ("libgomp", "libiomp", "libomp"))}
    except OSError:
        return set()


def load() -> ctypes.CDLL | None:
    """The kernels, or None where they cannot be built (no compiler, not Linux/x86, a failed build)."""
    global _lib
    if _lib is not False:
        return _lib or None
    _lib = None
    cc = compiler()
    if cc is None or platform.system() != "Linux":
        return None
    try:
        import torch  # noqa: F401  (its libgomp.so.1 must be loaded first, so the kernels share its threads)
        lib = ctypes.CDLL(str(build(cc)))
    except (OSError, subprocess.SubprocessError):
        return None
    if len(openmp_runtimes()) > 1:  # torch built with another OpenMP: two thread pools would fight
        return None
    f, i64, u64, u32, ptr = ctypes.c_float, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p
    signatures = {"gelu_fwd": [ptr, ptr, i64], "gelu_bwd": [ptr, ptr, ptr, i64],
                  "dropout": [ptr, ptr, i64, u64, u32, f],
                  "attn_softmax": [ptr, ptr, i64, i64, i64, i64, f, u64, u32, f, ctypes.c_int],
                  "attn_softmax_bwd": [ptr, ptr, ptr, i64, i64, f]}
    for name, argtypes in signatures.items():
        for fn in (getattr(lib, name), getattr(lib, f"{name}_bf16")):  # float32's and bf16's, same arguments
            fn.argtypes, fn.restype = argtypes, None
    lib.softmax_xent.argtypes, lib.softmax_xent.restype = [ptr, ptr, ptr, i64, i64], None
    # float32 only; strides as int64 arrays; they return 1 when a work buffer could not be allocated
    dropout = [u64, u32, f, ctypes.c_int]  # seed, threshold, keep scale, on
    lib.causal_attn_fwd.argtypes, lib.causal_attn_fwd.restype = [ptr] * 5 + [i64] * 5 + [ptr, f] + dropout, ctypes.c_int
    lib.causal_attn_bwd.argtypes = [ptr] * 8 + [i64] * 5 + [ptr, ptr, f] + dropout
    lib.causal_attn_bwd.restype = ctypes.c_int
    lib.causal_attn_vector_width.argtypes, lib.causal_attn_vector_width.restype = [], ctypes.c_int
    lib.sum_squares.argtypes, lib.sum_squares.restype = [ptr, ptr, i64], ctypes.c_double  # float32 tensors
    lib.scale_all.argtypes, lib.scale_all.restype = [ptr, ptr, i64, f], None
    _lib = lib
    return lib
