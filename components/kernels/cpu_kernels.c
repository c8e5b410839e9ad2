/* Single-pass CPU training kernels, called from components/kernels/fused.py through ctypes.

   Built once per machine by components/kernels/c_loader.py:
       cc -O3 -march=native -fopenmp -fPIC -shared -fno-math-errno -fno-trapping-math
          [-mprefer-vector-width=512 on x86]
   The loops share torch's OpenMP thread pool, so they follow torch.set_num_threads.
   -fno-trapping-math lets the compiler if-convert (so vectorise) the loops; NaNs still propagate.

   Each kernel but the whole-head attention (causal_attn_*, float32 only) has a float32 and a
   bfloat16 form (suffix _bf16). The bf16 forms read and write bf16
   (torch's storage: the high 16 bits of a float) and compute in float32: loads widen exactly,
   every sum and exp is a float, and each result is rounded once, to nearest even as torch rounds. */
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <omp.h>

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

/* Gradient clipping over n float32 tensors xs[t] of sizes[t] elements, in one parallel region for all
   of them (torch's CPU foreach ops run one op per tensor). Each thread takes an equal share of the
   elements of the concatenation: SPAN walks the pieces (tensor t, elements [lo, hi)) of that share,
   with a double acc_ per thread, stored to out[thread] when out is not NULL. */
#define SPAN(n, sizes, out, ...)                                                                     \
    int64_t total_ = 0;                                                                               \
    for (int64_t t = 0; t < (n); t++) total_ += (sizes)[t];                                           \
    _Pragma("omp parallel if (total_ > PAR_MIN)")                                                    \
    {                                                                                                 \
        int64_t threads_ = omp_get_num_threads(), me_ = omp_get_thread_num();                         \
        int64_t from_ = total_ * me_ / threads_, to_ = total_ * (me_ + 1) / threads_, start_ = 0;     \
        double acc_ = 0.0;                                                                            \
        for (int64_t t = 0; t < (n) && start_ < to_; start_ += (sizes)[t], t++) {                     \
            int64_t lo = from_ > start_ ? from_ - start_ : 0;                                         \
            int64_t hi = to_ - start_ < (sizes)[t] ? to_ - start_ : (sizes)[t];                       \
            if (lo < hi) { __VA_ARGS__ }                                                              \
        }                                                                                             \
        if (out) (out)[me_] = acc_;                                                                   \
    }
#define SQUARES_BLOCK 4096  /* summed in float, the blocks in double: ~1e-7 relative at any size */

/* The sum of the squares of every element of every tensor; the threads' sums are added in thread
   order, so a given thread count gives the same bits every call. */
double sum_squares(float *const *xs, const int64_t *sizes, int64_t n) {
    int slots = omp_get_max_threads();
    double partial[slots], *out = partial, sum = 0.0;
    for (int i = 0; i < slots; i++) partial[i] = 0.0;
    SPAN(n, sizes, out, {
        const float *x = xs[t];
        for (int64_t b = lo; b < hi; b += SQUARES_BLOCK) {
            int64_t e = b + SQUARES_BLOCK < hi ? b + SQUARES_BLOCK : hi;
            float s = 0.0f;
            _Pragma("omp simd reduction(+:s)")
            for (int64_t i = b; i < e; i++) s += x[i] * x[i];
            acc_ += s;
        }
    })
    for (int i = 0; i < slots; i++) sum += partial[i];
    return sum;
}

/* Every element of every tensor multiplied by scale, in place. */
void scale_all(float *const *xs, const int64_t *sizes, int64_t n, float scale) {
    double *none = NULL;
    SPAN(n, sizes, none, {
        float *x = xs[t];
        _Pragma("omp simd")
        for (int64_t i = lo; i < hi; i++) x[i] *= scale;
    })
}

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

/* ---- Causal attention without a bias, whole heads at a time (float32) -------------------------------
   One task per (batch row, key/value head): its keys and values are loaded once and serve the R query
   heads of its group (so grouped and multi-query heads need no repeated copies), and dK, dV sum over
   those heads without races. Per head everything (T x head_dim operands, the T x T scores) stays in
   L1/L2: scores are held transposed, keys as rows and queries as columns, so the causal softmax runs
   down the columns in full vectors, with no horizontal reductions. The matmuls are register tiles of
   4 rows x 2 vectors. Only the log-sum-exp of each query is kept for the backward, which recomputes
   the probabilities (O(T) memory, as SDPA's flash kernel), and the dropout mask, a hash of (seed, index)
   as in the other kernels with index ((b H + h) T + query) T + key, so nothing T x T is stored.
   Operands are copied into zero-padded buffers whose rows are whole vectors (LAB_W floats), so every
   tile is whole and every load aligned. Strides: st = [b, h, t] of q, k, v, o and
   gst = [b, h, t] of dO, dQ, dK, dV, in elements; the head dimension is contiguous. */
/* LAB_W floats: one vector register of the target (GCC splits wider generic vectors into slow pieces). */
#if defined(__AVX512F__)
#define LAB_W 16
#elif defined(__AVX__)
#define LAB_W 8
#else
#define LAB_W 4
#endif
typedef float lab_vf __attribute__((vector_size(LAB_W * 4)));

static inline int64_t lab_up(int64_t n) { return (n + LAB_W - 1) / LAB_W * LAB_W; }
static inline int64_t lab_min(int64_t a, int64_t b) { return a < b ? a : b; }

/* Rows c[0..4) (row stride ldc) (+)= sum over k in [k0, k1) of a(r, k) * b[k][0..n), with
   a(r, k) = a[r * ars + k * aks] (any layout) and b row-major (ldb); n a multiple of LAB_W. */
static inline void lab_mm4(float *c, int64_t ldc, const float *a, int64_t ars, int64_t aks, const float *b,
                           int64_t ldb, int64_t k0, int64_t k1, int64_t n, int accumulate) {
    int64_t col = 0;
    for (; col + 2 * LAB_W <= n; col += 2 * LAB_W) {
        lab_vf c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};
        for (int64_t k = k0; k < k1; k++) {
            const lab_vf b0 = *(const lab_vf *)(b + k * ldb + col), b1 = *(const lab_vf *)(b + k * ldb + col + LAB_W);
            const float *ak = a + k * aks;
            const float a0 = ak[0], a1 = ak[ars], a2 = ak[2 * ars], a3 = ak[3 * ars];
            c00 += a0 * b0; c01 += a0 * b1; c10 += a1 * b0; c11 += a1 * b1;
            c20 += a2 * b0; c21 += a2 * b1; c30 += a3 * b0; c31 += a3 * b1;
        }
        lab_vf *r0 = (lab_vf *)(c + col), *r1 = (lab_vf *)(c + ldc + col);
        lab_vf *r2 = (lab_vf *)(c + 2 * ldc + col), *r3 = (lab_vf *)(c + 3 * ldc + col);
        if (!accumulate) { r0[0] = r0[1] = r1[0] = r1[1] = r2[0] = r2[1] = r3[0] = r3[1] = (lab_vf){0}; }
        r0[0] += c00; r0[1] += c01; r1[0] += c10; r1[1] += c11; r2[0] += c20; r2[1] += c21; r3[0] += c30; r3[1] += c31;
    }
    for (; col < n; col += LAB_W) {
        lab_vf c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0};
        for (int64_t k = k0; k < k1; k++) {
            const lab_vf b0 = *(const lab_vf *)(b + k * ldb + col);
            const float *ak = a + k * aks;
            c0 += ak[0] * b0; c1 += ak[ars] * b0; c2 += ak[2 * ars] * b0; c3 += ak[3 * ars] * b0;
        }
        lab_vf *r0 = (lab_vf *)(c + col), *r1 = (lab_vf *)(c + ldc + col);
        lab_vf *r2 = (lab_vf *)(c + 2 * ldc + col), *r3 = (lab_vf *)(c + 3 * ldc + col);
        if (!accumulate) { *r0 = *r1 = *r2 = *r3 = (lab_vf){0}; }
        *r0 += c0; *r1 += c1; *r2 += c2; *r3 += c3;
    }
}

/* src's T rows of D (row stride st) into dst, Tp x Dp, zero-padded */
static void lab_load_rows(float *dst, const float *src, int64_t T, int64_t D, int64_t st, int64_t Tp, int64_t Dp) {
    for (int64_t t = 0; t < T; t++) {
        float *row = dst + t * Dp;
        const float *s = src + t * st;
        #pragma omp simd
        for (int64_t d = 0; d < D; d++) row[d] = s[d];
        for (int64_t d = D; d < Dp; d++) row[d] = 0.0f;
    }
    for (int64_t x = T * Dp; x < Tp * Dp; x++) dst[x] = 0.0f;
}

/* the same, transposed: dst is Dp x Tp */
static void lab_load_cols(float *dst, const float *src, int64_t T, int64_t D, int64_t st, int64_t Tp, int64_t Dp) {
    if (T < Tp || D < Dp)
        for (int64_t x = 0; x < Tp * Dp; x++) dst[x] = 0.0f;
    for (int64_t t = 0; t < T; t++)
        for (int64_t d = 0; d < D; d++) dst[d * Tp + t] = src[t * st + d];
}

static void lab_store_rows(float *dst, const float *src, int64_t T, int64_t D, int64_t st, int64_t Dp) {
    for (int64_t t = 0; t < T; t++) {
        #pragma omp simd
        for (int64_t d = 0; d < D; d++) dst[t * st + d] = src[t * Dp + d];
    }
}

/* sT[j][i] = rows[j] . cols[.][i] (Tp x Tp) on the column blocks that reach the diagonal or pass it
   (i >= j somewhere); rows: Tp x Dp, cols: Dp x Tp. The blocks left of them are never read. */
static void lab_causal_products(float *sT, const float *rows, const float *cols, int64_t Tp, int64_t Dp) {
    for (int64_t j = 0; j < Tp; j += 4) {
        int64_t c0 = j / LAB_W * LAB_W;
        lab_mm4(sT + j * Tp + c0, Tp, rows + j * Dp, Dp, 1, cols + c0, Tp, 0, Dp, Tp - c0, 0);
    }
}

/* Key/value head g of batch row b (strides st, as below) into padded rows kp, vp (Tp x Dp each). */
static void lab_load_kv(float *kp, float *vp, const float *k, const float *v, int64_t b, int64_t g, int64_t T,
                        int64_t D, const int64_t *st, int64_t Tp, int64_t Dp) {
    lab_load_rows(kp, k + b * st[3] + g * st[4], T, D, st[5], Tp, Dp);
    lab_load_rows(vp, v + b * st[6] + g * st[7], T, D, st[8], Tp, Dp);
}

/* The dropout factor of probability (query i, key j) of head bh: keep_scale where kept, else 0. */
static inline float lab_attn_keep(uint64_t seed, int64_t bh, int64_t T, int64_t i, int64_t j, uint32_t threshold,
                                  float keep_scale) {
    return lab_draw(seed, (uint64_t)((bh * T + i) * T + j)) >= threshold ? keep_scale : 0.0f;
}

/* o = dropout(softmax(q k^T * scale, causal)) v and lse = each query's log-sum-exp of its scaled scores;
   with dropout == 0 the seed, threshold and keep_scale are unused. q: (B, H, T, D), k, v: (B, KV, T, D),
   o: (B, H, T, D) by the strides st; lse: (B, H, T) contiguous.
   Returns 0, or 1 when a work buffer could not be allocated. */
int causal_attn_fwd(const float *q, const float *k, const float *v, float *o, float *lse, int64_t B, int64_t H,
                    int64_t KV, int64_t T, int64_t D, const int64_t *st, float scale, uint64_t seed,
                    uint32_t threshold, float keep_scale, int dropout) {
    const int64_t R = H / KV, Tp = lab_up(T), Dp = lab_up(D);
    int failed = 0;
    #pragma omp parallel if (B * KV > 1)
    {
        float *kp = aligned_alloc(64, sizeof(float) * (4 * Tp * Dp + Tp * Tp));
        float *vp = kp + Tp * Dp, *qT = vp + Tp * Dp, *ob = qT + Tp * Dp, *pT = ob + Tp * Dp;
        if (!kp) { _Pragma("omp atomic write") failed = 1; }
        #pragma omp for schedule(static)
        for (int64_t task = 0; task < B * KV; task++) {
            if (!kp) continue;
            const int64_t b = task / KV, g = task % KV;
            lab_load_kv(kp, vp, k, v, b, g, T, D, st, Tp, Dp);
            for (int64_t h = g * R; h < (g + 1) * R; h++) {
                lab_load_cols(qT, q + b * st[0] + h * st[1], T, D, st[2], Tp, Dp);
                lab_causal_products(pT, kp, qT, Tp, Dp);                      /* scores, transposed */
                float *lh = lse + (b * H + h) * T;
                for (int64_t i0 = 0; i0 < Tp; i0 += LAB_W) {  /* softmax down a block of query columns, keys j <= i */
                    const int64_t jn = lab_min(i0 + LAB_W, Tp);
                    float m[LAB_W], sum[LAB_W], inv[LAB_W];
                    for (int l = 0; l < LAB_W; l++) { m[l] = -INFINITY; sum[l] = 0.0f; }
                    for (int64_t j = 0; j < jn; j++) {
                        const float *r = pT + j * Tp + i0;
                        #pragma omp simd
                        for (int l = 0; l < LAB_W; l++) {
                            float x = j <= i0 + l ? r[l] * scale : -INFINITY;
                            m[l] = x > m[l] ? x : m[l];
                        }
                    }
                    for (int64_t j = 0; j < jn; j++) {
                        float *r = pT + j * Tp + i0;
                        #pragma omp simd
                        for (int l = 0; l < LAB_W; l++) {
                            float e = j <= i0 + l ? lab_exp(r[l] * scale - m[l]) : 0.0f;
                            r[l] = e;
                            sum[l] += e;
                        }
                    }
                    #pragma omp simd
                    for (int l = 0; l < LAB_W; l++) inv[l] = 1.0f / sum[l];
                    for (int64_t j = 0; j < jn; j++) {
                        float *r = pT + j * Tp + i0;
                        if (dropout) {
                            #pragma omp simd
                            for (int l = 0; l < LAB_W; l++)
                                r[l] *= inv[l] * lab_attn_keep(seed, b * H + h, T, i0 + l, j, threshold, keep_scale);
                        } else {
                            #pragma omp simd
                            for (int l = 0; l < LAB_W; l++) r[l] *= inv[l];
                        }
                    }
                    for (int l = 0; l < LAB_W && i0 + l < T; l++) lh[i0 + l] = m[l] + logf(sum[l]);
                }
                for (int64_t i = 0; i < Tp; i += 4)          /* o = p v: query rows i.., keys j < i + 4 */
                    lab_mm4(ob + i * Dp, Dp, pT + i, 1, Tp, vp, Dp, 0, lab_min(i + 4, Tp), Dp, 0);
                lab_store_rows(o + b * st[9] + h * st[10], ob, T, D, st[11], Dp);
            }
        }
        free(kp);
    }
    return failed;
}

/* The gradients of causal_attn_fwd (the same seed: the same mask): dq (like q), dk, dv (like k, v) from
   dout (like o), by gst. */
int causal_attn_bwd(const float *q, const float *k, const float *v, const float *lse, const float *dout, float *dq,
                    float *dk, float *dv, int64_t B, int64_t H, int64_t KV, int64_t T, int64_t D, const int64_t *st,
                    const int64_t *gst, float scale, uint64_t seed, uint32_t threshold, float keep_scale,
                    int dropout) {
    const int64_t R = H / KV, Tp = lab_up(T), Dp = lab_up(D);
    int failed = 0;
    #pragma omp parallel if (B * KV > 1)
    {
        float *kp = aligned_alloc(64, sizeof(float) * (9 * Tp * Dp + (dropout ? 3 : 2) * Tp * Tp));
        float *vp = kp + Tp * Dp, *qp = vp + Tp * Dp, *qT = qp + Tp * Dp, *dop = qT + Tp * Dp, *doT = dop + Tp * Dp;
        float *dK = doT + Tp * Dp, *dV = dK + Tp * Dp, *dQ = dV + Tp * Dp, *pT = dQ + Tp * Dp, *dsT = pT + Tp * Tp;
        float *uT = dropout ? dsT + Tp * Tp : pT;  /* the probabilities before dropout (pT holds them after it) */
        if (!kp) { _Pragma("omp atomic write") failed = 1; }
        #pragma omp for schedule(static)
        for (int64_t task = 0; task < B * KV; task++) {
            if (!kp) continue;
            const int64_t b = task / KV, g = task % KV;
            lab_load_kv(kp, vp, k, v, b, g, T, D, st, Tp, Dp);
            for (int64_t x = 0; x < 2 * Tp * Dp; x++) dK[x] = 0.0f;                 /* dK and dV */
            for (int64_t h = g * R; h < (g + 1) * R; h++) {
                const float *qh = q + b * st[0] + h * st[1], *doh = dout + b * gst[0] + h * gst[1];
                lab_load_rows(qp, qh, T, D, st[2], Tp, Dp);
                lab_load_cols(qT, qh, T, D, st[2], Tp, Dp);
                lab_load_rows(dop, doh, T, D, gst[2], Tp, Dp);
                lab_load_cols(doT, doh, T, D, gst[2], Tp, Dp);
                lab_causal_products(pT, kp, qT, Tp, Dp);                      /* scores, transposed */
                lab_causal_products(dsT, vp, doT, Tp, Dp);                    /* dp^T = v do^T */
                const float *lh = lse + (b * H + h) * T;
                /* p from the saved lse; dropped = p f with f the dropout factor; dp = f d(dropped) (dsT held
                   d(dropped)); ds = p (dp - sum_j p dp) scale */
                for (int64_t i0 = 0; i0 < Tp; i0 += LAB_W) {
                    const int64_t jn = lab_min(i0 + LAB_W, Tp);
                    float l_[LAB_W], dsum[LAB_W];
                    for (int l = 0; l < LAB_W; l++) { l_[l] = i0 + l < T ? lh[i0 + l] : 0.0f; dsum[l] = 0.0f; }
                    for (int64_t j = 0; j < jn; j++) {
                        float *r = pT + j * Tp + i0, *dr = dsT + j * Tp + i0;
                        #pragma omp simd
                        for (int l = 0; l < LAB_W; l++) {
                            float e = j <= i0 + l && i0 + l < T ? lab_exp(r[l] * scale - l_[l]) : 0.0f;
                            if (dropout) {
                                float f = lab_attn_keep(seed, b * H + h, T, i0 + l, j, threshold, keep_scale);
                                uT[j * Tp + i0 + l] = e;
                                dr[l] *= f;
                                r[l] = e * f;
                            } else {
                                r[l] = e;
                            }
                            dsum[l] += e * dr[l];
                        }
                    }
                    for (int64_t j = 0; j < jn; j++) {
                        const float *u = uT + j * Tp + i0;
                        float *dr = dsT + j * Tp + i0;
                        #pragma omp simd
                        for (int l = 0; l < LAB_W; l++) dr[l] = u[l] * (dr[l] - dsum[l]) * scale;
                    }
                }
                for (int64_t i = 0; i < Tp; i += 4)          /* dq = ds k */
                    lab_mm4(dQ + i * Dp, Dp, dsT + i, 1, Tp, kp, Dp, 0, lab_min(i + 4, Tp), Dp, 0);
                lab_store_rows(dq + b * gst[3] + h * gst[4], dQ, T, D, gst[5], Dp);
                for (int64_t j = 0; j < Tp; j += 4) {        /* dk += ds^T q, dv += p^T do, over queries i >= j */
                    const int64_t i0 = j / LAB_W * LAB_W;
                    lab_mm4(dK + j * Dp, Dp, dsT + j * Tp, Tp, 1, qp, Dp, i0, Tp, Dp, 1);
                    lab_mm4(dV + j * Dp, Dp, pT + j * Tp, Tp, 1, dop, Dp, i0, Tp, Dp, 1);
                }
            }
            lab_store_rows(dk + b * gst[6] + g * gst[7], dK, T, D, gst[8], Dp);
            lab_store_rows(dv + b * gst[9] + g * gst[10], dV, T, D, gst[11], Dp);
        }
        free(kp);
    }
    return failed;
}

/* The vector width the attention kernels were built with: below 8 floats (no AVX) they lose to SDPA. */
int causal_attn_vector_width(void) { return LAB_W; }
