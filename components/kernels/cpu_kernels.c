/* Single-pass CPU training kernels, called from components/kernels/fused.py through ctypes.

   Built once per machine by components/kernels/c_loader.py:
       cc -O3 -march=native -fopenmp -fPIC -shared -fno-math-errno -fno-trapping-math
          [-mprefer-vector-width=512 on x86]
   The loops share torch's OpenMP thread pool, so they follow torch.set_num_threads.
   -fno-trapping-math lets the compiler if-convert (so vectorise) the loops; NaNs still propagate.

   Each kernel has a float32 and a bfloat16 form (suffix _bf16). The bf16 forms read and write bf16
   (torch's storage: the high 16 bits of a float) and compute in float32: loads widen exactly,
   every sum and exp is a float, and each result is rounded once, to nearest even as torch rounds. */
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

/* bfloat16 <-> float32. Widening is exact; narrowing rounds to nearest even, and a NaN stays a
   (quiet) NaN instead of rounding into infinity. Written as integer ops so the loops vectorise. */
typedef uint16_t bf16;
static inline float bf16_load(bf16 h) {
    union { uint32_t i; float f; } u;
    u.i = (uint32_t)h << 16;
    return u.f;
}
static inline bf16 bf16_round(float f) {
    union { float f; uint32_t i; } u;
    u.f = f;
    uint32_t rounded = (u.i + 0x7fffu + ((u.i >> 16) & 1u)) >> 16;
    return (bf16)((u.i & 0x7fffffffu) > 0x7f800000u ? (u.i >> 16) | 0x40u : rounded);
}
#define F32_LOAD(v) (v)
#define F32_ROUND(v) (v)

/* Softmax of row[0 .. n) scaled by `scale` (> 0), in place: row[j] = exp(scale row[j] - m) / sum,
   m = scale max(row). Returns m + log(sum), the scaled row's log-sum-exp. Serves the attention
   (scale 1/sqrt(head_dim)) and the cross-entropy (scale 1). */
static inline float lab_softmax_row(float *row, int64_t n, float scale) {
    float m = -INFINITY;
    #pragma omp simd reduction(max:m)
    for (int64_t j = 0; j < n; j++) m = row[j] > m ? row[j] : m;
    m *= scale;
    #pragma omp simd
    for (int64_t j = 0; j < n; j++) row[j] = lab_exp(row[j] * scale - m);
    float sum = 0.0f;
    #pragma omp simd reduction(+:sum)
    for (int64_t j = 0; j < n; j++) sum += row[j];
    float inv = 1.0f / sum;
    #pragma omp simd
    for (int64_t j = 0; j < n; j++) row[j] *= inv;
    return m + logf(sum);
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

/* The elementwise kernels, defined once for each storage type T (LOAD widens an element to float,
   ROUND narrows a float result to T). */
#define GELU_KERNELS(FWD, BWD, T, LOAD, ROUND)                                                       \
void FWD(const T *x, T *y, int64_t n) {                                                               \
    TILED(n, {                                                                                        \
        const T *xs = x + lo; T *ys = y + lo;                                                         \
        _Pragma("omp simd")                                                                           \
        for (int64_t i = 0; i < m; i++) { float v = LOAD(xs[i]); e[i] = lab_exp(-GELU_C * v * (1.0f + GELU_A * v * v)); } \
        _Pragma("omp simd")                                                                           \
        for (int64_t i = 0; i < m; i++) ys[i] = ROUND(LOAD(xs[i]) / (1.0f + e[i]));                   \
    })                                                                                                \
}                                                                                                     \
void BWD(const T *x, const T *g, T *dx, int64_t n) {                                                  \
    TILED(n, {                                                                                        \
        const T *xs = x + lo, *gs = g + lo; T *ds = dx + lo;                                          \
        _Pragma("omp simd")                                                                           \
        for (int64_t i = 0; i < m; i++) { float v = LOAD(xs[i]); e[i] = lab_exp(-GELU_C * v * (1.0f + GELU_A * v * v)); } \
        _Pragma("omp simd")                                                                           \
        for (int64_t i = 0; i < m; i++) {                                                             \
            float v = LOAD(xs[i]), s = 1.0f / (1.0f + e[i]);                                          \
            float dz = GELU_C * (1.0f + 3.0f * GELU_A * v * v);                                       \
            ds[i] = ROUND(LOAD(gs[i]) * (s + v * s * (1.0f - s) * dz)); /* d/dx x s(z) = s + x s (1 - s) dz/dx */ \
        }                                                                                             \
    })                                                                                                \
}

/* y = x * keep / (1 - p), keep = draw >= threshold; the same function serves the backward (g -> dx). */
#define DROPOUT_KERNEL(NAME, T, LOAD, ROUND)                                                          \
void NAME(const T *x, T *y, int64_t n, uint64_t seed, uint32_t threshold, float scale) {              \
    _Pragma("omp parallel for simd schedule(static) if (n > PAR_MIN)")                               \
    for (int64_t i = 0; i < n; i++) {                                                                 \
        y[i] = lab_draw(seed, (uint64_t)i) >= threshold ? ROUND(LOAD(x[i]) * scale) : (T)0;           \
    }                                                                                                 \
}

GELU_KERNELS(gelu_fwd, gelu_bwd, float, F32_LOAD, F32_ROUND)
GELU_KERNELS(gelu_fwd_bf16, gelu_bwd_bf16, bf16, bf16_load, bf16_round)
DROPOUT_KERNEL(dropout, float, F32_LOAD, F32_ROUND)
DROPOUT_KERNEL(dropout_bf16, bf16, bf16_load, bf16_round)

/* Row r of attn_softmax's scores, in place: the softmax over the keys its query sees, zeros after. */
static inline void lab_causal_softmax_row(float *row, int64_t r, int64_t chunk, int64_t len, int64_t start,
                                          float scale) {
    int64_t seen = start + r % chunk + 1;
    if (seen > len) seen = len;
    lab_softmax_row(row, seen, scale);
    for (int64_t j = seen; j < len; j++) row[j] = 0.0f;
}

/* Causal softmax over rows of s (rows x len), scaled, in place -> probabilities; row r of a block of
   `chunk` query rows sits at query position start + r % chunk and sees keys 0 .. that position.
   With p > 0, dropped = probs * keep / (1 - p) (keep from (seed, row * len + key)). */
void attn_softmax(float *s, float *dropped, int64_t rows, int64_t chunk, int64_t len, int64_t start,
                  float scale, uint64_t seed, uint32_t threshold, float keep_scale, int dropout) {
    #pragma omp parallel for schedule(static) if (rows * len > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        float *row = s + r * len;
        lab_causal_softmax_row(row, r, chunk, len, start, scale);
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
        float target = row[targets[r]];
        loss[r] = lab_softmax_row(row, len, 1.0f) - target;
        row[targets[r]] -= 1.0f;
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

/* attn_softmax for bf16 scores: each row widened into a float buffer, the softmax and the dropout
   computed there, probabilities and dropped probabilities rounded to bf16 once. */
void attn_softmax_bf16(bf16 *s, bf16 *dropped, int64_t rows, int64_t chunk, int64_t len, int64_t start,
                       float scale, uint64_t seed, uint32_t threshold, float keep_scale, int dropout) {
    #pragma omp parallel for schedule(static) if (rows * len > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        bf16 *row = s + r * len;
        float p[len];
        #pragma omp simd
        for (int64_t j = 0; j < len; j++) p[j] = bf16_load(row[j]);
        lab_causal_softmax_row(p, r, chunk, len, start, scale);
        #pragma omp simd
        for (int64_t j = 0; j < len; j++) row[j] = bf16_round(p[j]);
        if (dropout) {
            bf16 *d = dropped + r * len;
            uint64_t base = (uint64_t)r * (uint64_t)len;
            #pragma omp simd
            for (int64_t j = 0; j < len; j++)
                d[j] = lab_draw(seed, base + (uint64_t)j) >= threshold ? bf16_round(p[j] * keep_scale) : (bf16)0;
        }
    }
}

/* attn_softmax_bwd for bf16: the products and the row sum in float, each gradient rounded once. */
void attn_softmax_bwd_bf16(bf16 *dd, const bf16 *probs, const bf16 *dropped, int64_t rows, int64_t len, float scale) {
    #pragma omp parallel for schedule(static) if (rows * len > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        bf16 *g = dd + r * len;
        const bf16 *p = probs + r * len, *d = dropped + r * len;
        float gd[len];
        float sum = 0.0f;
        #pragma omp simd reduction(+:sum)
        for (int64_t j = 0; j < len; j++) { gd[j] = bf16_load(g[j]) * bf16_load(d[j]); sum += gd[j]; }
        #pragma omp simd
        for (int64_t j = 0; j < len; j++) g[j] = bf16_round(scale * (gd[j] - bf16_load(p[j]) * sum));
    }
}
