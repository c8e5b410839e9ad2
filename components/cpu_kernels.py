"""Single-pass CPU kernels in C, compiled once per machine with the system C compiler, called by ctypes.

Why: on the CPU a chain of torch ops (GELU's tanh form as square/mul/add/sigmoid/mul, a dropout
mask as draw/compare/convert/multiply, softmax then dropout) reads and writes each activation-sized
tensor once per op; these loops do it once. They share torch's OpenMP thread pool (torch ships
libgomp.so.1, which the loader hands to this library too), so they follow torch.set_num_threads.

Dropout masks come from a counter-based hash of (seed, element index), the seed drawn from torch's
generator: the same draws whatever the thread count, nothing to store for the backward (the mask is
regenerated), and a checkpoint's torch RNG state still resumes a run exactly.

`load()` returns None when there is no C compiler or the build fails; callers then use torch ops.
Build: `cc -O3 -march=native -fopenmp -fno-trapping-math` into <cache>/kernels/<hash of source, compiler, CPU>.so,
written atomically, so concurrent processes and later runs share it (~1 s, once).
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

SOURCE = r"""
#include <stdint.h>
#include <math.h>

/* exp(x) to ~2 ulp for the whole float range (Cephes' polynomial after Cody-Waite reduction);
   written without library calls so that loops over it vectorise. NaN stays NaN (the comparisons
   below are false for NaN and the polynomial propagates it), which the divergence check relies on. */
static inline float lab_exp(float x) {
    x = x > 88.3762626647949f ? 88.3762626647949f : x;
    x = x < -87.3365447504019f ? -87.3365447504019f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } s;
    s.i = ((int32_t)n + 127) << 23;
    return p * s.f;
}

/* A 32-bit integer hash (Wellons' lowbias32), applied twice with the seed's halves mixed in. */
static inline uint32_t lab_hash(uint32_t x) {
    x ^= x >> 16; x *= 0x7feb352dU; x ^= x >> 15; x *= 0x846ca68bU; x ^= x >> 16;
    return x;
}
static inline uint32_t lab_draw(uint64_t seed, uint64_t i) {
    return lab_hash(lab_hash((uint32_t)i ^ (uint32_t)seed) ^ (uint32_t)(seed >> 32) ^ (uint32_t)(i >> 32));
}

#define GELU_C 1.5957691216057308f   /* 2 sqrt(2/pi): 0.5 x (1 + tanh(u)) = x sigmoid(2u) */
#define GELU_A 0.044715f
#define PAR_MIN 32768                 /* below this many elements one thread does it all */

/* GCC vectorises a long loop body around lab_exp poorly (2.5x slower, measured), so each kernel
   works through tiles of TILE elements: the exp in one short loop into a buffer, the rest in another. */
#define TILE 1024
#define TILED(n, ...)                                                                   \
    int64_t tiles = ((n) + TILE - 1) / TILE;                                             \
    _Pragma("omp parallel for schedule(static) if ((n) > PAR_MIN)")                      \
    for (int64_t t = 0; t < tiles; t++) {                                                \
        int64_t lo = t * TILE, m = (n) - lo < TILE ? (n) - lo : TILE;                    \
        float e[TILE];                                                                   \
        __VA_ARGS__                                                                      \
    }

void gelu_fwd(const float *x, float *y, int64_t n) {
    TILED(n, {
        const float *xs = x + lo; float *ys = y + lo;
        _Pragma("omp simd")
        for (int64_t i = 0; i < m; i++) { float v = xs[i]; e[i] = lab_exp(-GELU_C * v * (1.0f + GELU_A * v * v)); }
        _Pragma("omp simd")
        for (int64_t i = 0; i < m; i++) ys[i] = xs[i] / (1.0f + e[i]);
    })
}

void gelu_bwd(const float *x, const float *g, float *dx, int64_t n) {
    TILED(n, {
        const float *xs = x + lo, *gs = g + lo; float *ds = dx + lo;
        _Pragma("omp simd")
        for (int64_t i = 0; i < m; i++) { float v = xs[i]; e[i] = lab_exp(-GELU_C * v * (1.0f + GELU_A * v * v)); }
        _Pragma("omp simd")
        for (int64_t i = 0; i < m; i++) {
            float v = xs[i], s = 1.0f / (1.0f + e[i]);
            float dz = GELU_C * (1.0f + 3.0f * GELU_A * v * v);
            ds[i] = gs[i] * (s + v * s * (1.0f - s) * dz);           /* d/dx x s(z) = s + x s (1 - s) dz/dx */
        }
    })
}

/* y = x * keep / (1 - p), keep = draw >= threshold; the same function serves the backward (g -> dx). */
void dropout(const float *x, float *y, int64_t n, uint64_t seed, uint32_t threshold, float scale) {
    #pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        y[i] = lab_draw(seed, (uint64_t)i) >= threshold ? x[i] * scale : 0.0f;
    }
}

/* Causal softmax over rows of s (rows x len), scaled, in place -> probabilities; row r of a block of
   `chunk` query rows sits at query position start + r % chunk and sees keys 0 .. that position.
   With p > 0, dropped = probs * keep / (1 - p) (keep from (seed, row * len + key)). */
void attn_softmax(float *s, float *dropped, int64_t rows, int64_t chunk, int64_t len, int64_t start,
                  float scale, uint64_t seed, uint32_t threshold, float keep_scale, int dropout) {
    #pragma omp parallel for schedule(static) if (rows * len > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        float *row = s + r * len;
        int64_t seen = start + r % chunk + 1;
        if (seen > len) seen = len;
        float m = -INFINITY;
        #pragma omp simd reduction(max:m)
        for (int64_t j = 0; j < seen; j++) m = row[j] > m ? row[j] : m;
        m *= scale;
        #pragma omp simd
        for (int64_t j = 0; j < seen; j++) row[j] = lab_exp(row[j] * scale - m);
        float sum = 0.0f;
        #pragma omp simd reduction(+:sum)
        for (int64_t j = 0; j < seen; j++) sum += row[j];
        float inv = 1.0f / sum;
        #pragma omp simd
        for (int64_t j = 0; j < seen; j++) row[j] *= inv;
        for (int64_t j = seen; j < len; j++) row[j] = 0.0f;
        if (dropout) {
            float *d = dropped + r * len;
            uint64_t base = (uint64_t)r * (uint64_t)len;
            #pragma omp simd
            for (int64_t j = 0; j < len; j++)
                d[j] = lab_draw(seed, base + (uint64_t)j) >= threshold ? row[j] * keep_scale : 0.0f;
        }
    }
}

/* Cross-entropy over rows of logits (rows x len), in place: s becomes its gradient, softmax(s) minus
   one at the row's target, and loss[r] = logsumexp(row) - row[target]. */
void softmax_xent(float *s, const int64_t *targets, float *loss, int64_t rows, int64_t len) {
    #pragma omp parallel for schedule(static) if (rows * len > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        float *row = s + r * len;
        float target = row[targets[r]], m = -INFINITY;
        #pragma omp simd reduction(max:m)
        for (int64_t j = 0; j < len; j++) m = row[j] > m ? row[j] : m;
        #pragma omp simd
        for (int64_t j = 0; j < len; j++) row[j] = lab_exp(row[j] - m);
        float sum = 0.0f;
        #pragma omp simd reduction(+:sum)
        for (int64_t j = 0; j < len; j++) sum += row[j];
        float inv = 1.0f / sum;
        #pragma omp simd
        for (int64_t j = 0; j < len; j++) row[j] *= inv;
        row[targets[r]] -= 1.0f;
        loss[r] = m + logf(sum) - target;
    }
}

/* Softmax backward through the dropout, in place: ds = scale * (dropped * dd - probs * rowsum(dropped * dd)). */
void attn_softmax_bwd(float *dd, const float *probs, const float *dropped, int64_t rows, int64_t len, float scale) {
    #pragma omp parallel for schedule(static) if (rows * len > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        float *g = dd + r * len;
        const float *p = probs + r * len, *d = dropped + r * len;
        float sum = 0.0f;
        #pragma omp simd reduction(+:sum)
        for (int64_t j = 0; j < len; j++) { g[j] *= d[j]; sum += g[j]; }
        #pragma omp simd
        for (int64_t j = 0; j < len; j++) g[j] = scale * (g[j] - p[j] * sum);
    }
}
"""

# -fno-trapping-math lets the compiler if-convert (so vectorise) the loops; NaNs still propagate.
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
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
    key = hashlib.sha256("\n".join([SOURCE, " ".join(FLAGS), version, platform.machine(), cpu_flags()]).encode())
    target = kernel_dir() / f"lab-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, out = Path(tmp) / "lab.c", Path(tmp) / "lab.so"
        src.write_text(SOURCE)
        subprocess.run([cc, *FLAGS, str(src), "-o", str(out)], check=True, capture_output=True, timeout=120)
        os.replace(out, target)  # atomic: a concurrent build of the same key writes the same bytes
    return target


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
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
    if cc is None or os.environ.get("LAB_NO_C_KERNELS") or platform.system() != "Linux":
        return None
    try:
        import torch  # noqa: F401  (its libgomp.so.1 must be loaded first, so the kernels share its threads)
        lib = ctypes.CDLL(str(build(cc)))
    except (OSError, subprocess.SubprocessError):
        return None
    if len(openmp_runtimes()) > 1:  # torch built with another OpenMP: two thread pools would fight
        return None
    f, i64, u64, u32, ptr = ctypes.c_float, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p
    lib.gelu_fwd.argtypes = [ptr, ptr, i64]
    lib.gelu_bwd.argtypes = [ptr, ptr, ptr, i64]
    lib.dropout.argtypes = [ptr, ptr, i64, u64, u32, f]
    lib.attn_softmax.argtypes = [ptr, ptr, i64, i64, i64, i64, f, u64, u32, f, ctypes.c_int]
    lib.attn_softmax_bwd.argtypes = [ptr, ptr, ptr, i64, i64, f]
    lib.softmax_xent.argtypes = [ptr, ptr, ptr, i64, i64]
    for fn in (lib.gelu_fwd, lib.gelu_bwd, lib.dropout, lib.attn_softmax, lib.attn_softmax_bwd, lib.softmax_xent):
        fn.restype = None
    _lib = lib
    return lib
