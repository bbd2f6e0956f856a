/*
 * Register-blocked matrix products of the CPU engine (kernels.h says what each path does and the
 * guarantee they keep).
 *
 * A tile computes T tokens x R output rows with T*R vector accumulators (at most 16 on AVX-512, 8 on
 * AVX2): per chunk of k it loads T activation vectors and R weight vectors (converted to f32 once, or fed
 * as bf16 pairs to vdpbf16ps) and does T*R multiply-adds. Tile shapes by how many tokens there are:
 *
 *             n = 1                  n = 2               n >= 3
 *   AVX-512   1x16, then 1x8/1x4/1x1  2x8, then 2x4/2x1   4x4 over row quads (last tile 3x4/2x4/1x4), then Tx1
 *   AVX2      1x8, then 1x4/1x1       2x4, then 2x2/2x1   4x2 over row pairs (last tile 3x2/2x2/1x2), then Tx1
 *
 * Whatever the shape, an output's accumulator sees the same chunks in the same order and is reduced by
 * the same tree, so its value never depends on the tile (the unused accumulators of a tile are zero and
 * reduced apart).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../common/dtype_size.h"
#include "dtype.h"
#include "kernels.h"
#include "multilora.h"

/* A tile: out[t * R + r] = dot(x[t], w row r) for t < T, r < R; x rows are f32 (or bf16 for the dp
 * kernels), w rows w_stride bytes apart. pf: pf_rows rows (same stride; 0 for none) to prefetch alongside,
 * one 64-byte line of each per 64 bytes of k, rows a later tile will read, so a matrix streamed from memory
 * arrives ahead of its use. The prefetches go to L2 (T1): a prefetch into L1 holds one of its few fill
 * buffers until the line arrives, which caps the misses in flight below what the memory bandwidth needs. */
typedef void (*tile_fn)(const void *const *x, const unsigned char *w, int64_t w_stride, int64_t n_in, float *out,
                        const unsigned char *pf, int pf_rows);

typedef struct tile_set {
    tile_fn f[5][17];     /* [T][R] */
    int r_one[5];         /* row chunks for n = 1, descending, 0-terminated */
    int r_two[4];         /* for n = 2 */
    int rq;               /* rows per tile for n >= 3 (then 1) */
    int x_bf16;           /* the tiles read the bf16 activations */
} tile_set;

/* ---------------------------------------------------------------------------------------------- */
/* AVX-512 */

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

/* 16 accumulators -> one vector, lane j = the sum of v[j]'s lanes by the tree
 * s8[i] = v[i] + v[i+8], s4[i] = s8[i] + s8[i+4], s2[i] = s4[i] + s4[i+2], s = s2[0] + s2[1]
 * (a transpose done by the additions themselves: 15 adds and a final permute for 16 sums). */
INLINE AVX512 __m512 reduce16(const __m512 *v) {
    __m512 c[8], d[4], f[2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
        d[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0xDD));
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++)
        f[i] = _mm512_add_ps(_mm512_shuffle_ps(d[2 * i], d[2 * i + 1], 0x44), _mm512_shuffle_ps(d[2 * i], d[2 * i + 1], 0xEE));
    const __m512 h = _mm512_add_ps(_mm512_shuffle_ps(f[0], f[1], 0x88), _mm512_shuffle_ps(f[0], f[1], 0xDD));
    /* h[4b + m] holds vector 4m + b */
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), h);
}

/* 16 weights from k as f32; m selects the lanes read (the others are 0). */
INLINE AVX512 __m512 load512(int32_t dtype, const unsigned char *row, int64_t k, __mmask16 m) {
    if (dtype == MLR_DTYPE_F32) return _mm512_maskz_loadu_ps(m, (const float *)row + k);
    const __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + k);
    if (dtype == MLR_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* The full chunks of k, then the last one masked (the masked lanes read as 0); every loop over the tile
 * is unrolled, so the accumulators stay in registers. */
INLINE AVX512 void tile512_body(const int T, const int R, const int32_t dtype, const void *const *xv,
                                const unsigned char *w, int64_t ws, int64_t n, float *out, const unsigned char *pf, int pf_rows) {
    const float *x[4];
    for (int t = 0; t < T; t++) x[t] = xv[t];
    __m512 acc[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        __m512 xs[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) xs[t] = _mm512_loadu_ps(x[t] + k);
        if (pf_rows && ((k * dtype_size(dtype)) & 63) == 0) /* one prefetch per 64-byte line */
            for (int r = 0; r < pf_rows; r++) _mm_prefetch((const char *)(pf + r * ws + k * dtype_size(dtype)), _MM_HINT_T1);
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            const __m512 wv = load512(dtype, w + r * ws, k, 0xFFFF);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) acc[t * R + r] = _mm512_fmadd_ps(xs[t], wv, acc[t * R + r]);
        }
    }
    if (k < n) {
        const __mmask16 m = (__mmask16)((1u << (n - k)) - 1);
        __m512 xs[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) xs[t] = _mm512_maskz_loadu_ps(m, x[t] + k);
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            const __m512 wv = load512(dtype, w + r * ws, k, m);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) acc[t * R + r] = _mm512_fmadd_ps(xs[t], wv, acc[t * R + r]);
        }
    }
    _mm512_storeu_ps(out, reduce16(acc));
}

/* vdpbf16ps: x rows are bf16, zero padded to a multiple of 32; w rows bf16 (the last chunk masked). Loops
 * unrolled as in tile512_body. */
INLINE AVX512BF16 void tiledp_body(const int T, const int R, const void *const *xv, const unsigned char *w, int64_t ws,
                                   int64_t n, float *out, const unsigned char *pf, int pf_rows) {
    const uint16_t *x[4];
    for (int t = 0; t < T; t++) x[t] = xv[t];
    __m512 acc[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= n; k += 32) {
        __m512i xs[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) xs[t] = _mm512_loadu_si512(x[t] + k);
        for (int r = 0; r < pf_rows; r++) _mm_prefetch((const char *)(pf + r * ws + k * 2), _MM_HINT_T1);
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            const __m512i wv = _mm512_loadu_si512((const uint16_t *)(w + r * ws) + k);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++)
                acc[t * R + r] = _mm512_dpbf16_ps(acc[t * R + r], (__m512bh)xs[t], (__m512bh)wv);
        }
    }
    if (k < n) {
        const __mmask32 m = (__mmask32)((1ull << (n - k)) - 1);
        __m512i xs[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) xs[t] = _mm512_loadu_si512(x[t] + k);
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            const __m512i wv = _mm512_maskz_loadu_epi16(m, (const uint16_t *)(w + r * ws) + k);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++)
                acc[t * R + r] = _mm512_dpbf16_ps(acc[t * R + r], (__m512bh)xs[t], (__m512bh)wv);
        }
    }
    _mm512_storeu_ps(out, reduce16(acc));
}

#define TILE512(DT, DTYPE, T, R)                                                                            \
    AVX512 static void tile512_##DT##_##T##x##R(const void *const *x, const unsigned char *w, int64_t ws, \
                                                 int64_t n, float *out, const unsigned char *pf, int pf_rows) {        \
        tile512_body(T, R, DTYPE, x, w, ws, n, out, pf, pf_rows);                                                  \
    }
#define TILEDP(T, R)                                                                                      \
    AVX512BF16 static void tiledp_##T##x##R(const void *const *x, const unsigned char *w, int64_t ws, int64_t n, \
                                            float *out, const unsigned char *pf, int pf_rows) {                       \
        tiledp_body(T, R, x, w, ws, n, out, pf, pf_rows);                                                         \
    }
#define SHAPES512(M, ...)                                                                                 \
    M(__VA_ARGS__ 1, 1) M(__VA_ARGS__ 1, 4) M(__VA_ARGS__ 1, 8) M(__VA_ARGS__ 1, 16) M(__VA_ARGS__ 2, 1)   \
    M(__VA_ARGS__ 2, 4) M(__VA_ARGS__ 2, 8) M(__VA_ARGS__ 3, 1) M(__VA_ARGS__ 3, 4) M(__VA_ARGS__ 4, 1)    \
    M(__VA_ARGS__ 4, 4)

SHAPES512(TILE512, f32, MLR_DTYPE_F32,)
SHAPES512(TILE512, f16, MLR_DTYPE_F16,)
SHAPES512(TILE512, bf16, MLR_DTYPE_BF16,)
SHAPES512(TILEDP, )

#define SET512(P)                                                                                         \
    {.f = {[1] = {[1] = P##1x1, [4] = P##1x4, [8] = P##1x8, [16] = P##1x16},                              \
           [2] = {[1] = P##2x1, [4] = P##2x4, [8] = P##2x8},                                             \
           [3] = {[1] = P##3x1, [4] = P##3x4},                                                           \
           [4] = {[1] = P##4x1, [4] = P##4x4}},                                                          \
     .r_one = {16, 8, 4, 1, 0},                                                                           \
     .r_two = {8, 4, 1, 0},                                                                               \
     .rq = 4}

static const tile_set set512[3] = {[MLR_DTYPE_F32] = SET512(tile512_f32_), [MLR_DTYPE_F16] = SET512(tile512_f16_),
                                   [MLR_DTYPE_BF16] = SET512(tile512_bf16_)};
static const tile_set setdp = {.f = {[1] = {[1] = tiledp_1x1, [4] = tiledp_1x4, [8] = tiledp_1x8, [16] = tiledp_1x16},
                                     [2] = {[1] = tiledp_2x1, [4] = tiledp_2x4, [8] = tiledp_2x8},
                                     [3] = {[1] = tiledp_3x1, [4] = tiledp_3x4},
                                     [4] = {[1] = tiledp_4x1, [4] = tiledp_4x4}},
                               .r_one = {16, 8, 4, 1, 0},
                               .r_two = {8, 4, 1, 0},
                               .rq = 4,
                               .x_bf16 = 1};

/* ---------------------------------------------------------------------------------------------- */
/* AVX2 + FMA + F16C */

#define AVX2 __attribute__((target("avx2,fma,f16c")))

/* The 8-lane tree: s4[i] = v[i] + v[i+4], s2[i] = s4[i] + s4[i+2], s = s2[0] + s2[1]. */
INLINE AVX2 float reduce8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

INLINE AVX2 __m256 load256(int32_t dtype, const unsigned char *row, int64_t k) {
    if (dtype == MLR_DTYPE_F32) return _mm256_loadu_ps((const float *)row + k);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + k));
    if (dtype == MLR_DTYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* The last chunk of a row (left < 8 elements) as f32, zero padded. */
INLINE AVX2 __m256 load256_tail(int32_t dtype, const unsigned char *row, int64_t k, int64_t left) {
    unsigned char tmp[32] = {0};
    memcpy(tmp, row + k * dtype_size(dtype), (size_t)(left * dtype_size(dtype)));
    return load256(dtype, tmp, 0);
}

INLINE AVX2 void tile256_body(const int T, const int R, const int32_t dtype, const void *const *xv,
                              const unsigned char *w, int64_t ws, int64_t n, float *out, const unsigned char *pf, int pf_rows) {
    const float *x[4];
    for (int t = 0; t < T; t++) x[t] = xv[t];
    __m256 acc[8];
    for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        __m256 xs[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) xs[t] = _mm256_loadu_ps(x[t] + k);
        if (pf_rows && ((k * dtype_size(dtype)) & 63) == 0) /* one prefetch per 64-byte line */
            for (int r = 0; r < pf_rows; r++) _mm_prefetch((const char *)(pf + r * ws + k * dtype_size(dtype)), _MM_HINT_T1);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const __m256 wv = load256(dtype, w + r * ws, k);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) acc[t * R + r] = _mm256_fmadd_ps(xs[t], wv, acc[t * R + r]);
        }
    }
    if (k < n) {
        __m256 xs[4];
        for (int t = 0; t < T; t++) xs[t] = load256_tail(MLR_DTYPE_F32, (const unsigned char *)x[t], k, n - k);
        for (int r = 0; r < R; r++) {
            const __m256 wv = load256_tail(dtype, w + r * ws, k, n - k);
            for (int t = 0; t < T; t++) acc[t * R + r] = _mm256_fmadd_ps(xs[t], wv, acc[t * R + r]);
        }
    }
    for (int j = 0; j < T * R; j++) out[j] = reduce8(acc[j]);
}

#define TILE256(DT, DTYPE, T, R)                                                                            \
    AVX2 static void tile256_##DT##_##T##x##R(const void *const *x, const unsigned char *w, int64_t ws,   \
                                               int64_t n, float *out, const unsigned char *pf, int pf_rows) {          \
        tile256_body(T, R, DTYPE, x, w, ws, n, out, pf, pf_rows);                                                  \
    }
#define SHAPES256(M, ...)                                                                                 \
    M(__VA_ARGS__ 1, 1) M(__VA_ARGS__ 1, 2) M(__VA_ARGS__ 1, 4) M(__VA_ARGS__ 1, 8) M(__VA_ARGS__ 2, 1)    \
    M(__VA_ARGS__ 2, 2) M(__VA_ARGS__ 2, 4) M(__VA_ARGS__ 3, 1) M(__VA_ARGS__ 3, 2) M(__VA_ARGS__ 4, 1)    \
    M(__VA_ARGS__ 4, 2)

SHAPES256(TILE256, f32, MLR_DTYPE_F32,)
SHAPES256(TILE256, f16, MLR_DTYPE_F16,)
SHAPES256(TILE256, bf16, MLR_DTYPE_BF16,)

#define SET256(P)                                                                                         \
    {.f = {[1] = {[1] = P##1x1, [2] = P##1x2, [4] = P##1x4, [8] = P##1x8},                                \
           [2] = {[1] = P##2x1, [2] = P##2x2, [4] = P##2x4},                                             \
           [3] = {[1] = P##3x1, [2] = P##3x2},                                                           \
           [4] = {[1] = P##4x1, [2] = P##4x2}},                                                          \
     .r_one = {8, 4, 1, 0},                                                                               \
     .r_two = {4, 2, 1, 0},                                                                               \
     .rq = 2}

static const tile_set set256[3] = {[MLR_DTYPE_F32] = SET256(tile256_f32_), [MLR_DTYPE_F16] = SET256(tile256_f16_),
                                   [MLR_DTYPE_BF16] = SET256(tile256_bf16_)};

/* ---------------------------------------------------------------------------------------------- */
/* the driver: tiles over a block of rows */

static const tile_set *tiles_for(const kernels *k, const gemm_x *x, int32_t w_dtype) {
    if (k->level >= KERNELS_AVX512_BF16 && w_dtype == MLR_DTYPE_BF16 && x->bf16) return &setdp;
    if (k->level >= KERNELS_AVX512) return &set512[w_dtype];
    if (k->level >= KERNELS_AVX2) return &set256[w_dtype];
    return NULL;
}

typedef struct block_args {
    const tile_set *ts;
    const unsigned char *x; /* f32 or bf16 rows */
    int64_t x_row_bytes;
    const int32_t *xi;
    const unsigned char *w;
    int64_t ws;
    int32_t w_dtype;
    const void *bias;
    int64_t n_in;
    float *y;
    int64_t ldy;
} block_args;

static void run_tile(const block_args *a, int T, int R, int64_t i, int64_t o, int64_t pf, int pf_rows) {
    const void *xp[4] = {0};
    for (int t = 0; t < T; t++) {
        const int64_t row = a->xi ? a->xi[i + t] : i + t;
        xp[t] = a->x + row * a->x_row_bytes;
    }
    float out[16];
    a->ts->f[T][R](xp, a->w + o * a->ws, a->ws, a->n_in, out, pf_rows > 0 ? a->w + pf * a->ws : NULL, pf_rows);
    for (int t = 0; t < T; t++) {
        float *y = a->y + (i + t) * a->ldy + o;
        if (a->bias) {
            for (int r = 0; r < R; r++) y[r] = out[t * R + r] + weight_at(a->bias, a->w_dtype, o + r);
        } else {
            for (int r = 0; r < R; r++) y[r] = out[t * R + r];
        }
    }
}

/* Tiles over rows [o0, o1). n <= 2: each row chunk's tile prefetches the next chunk's rows. 3 <= n <= 16:
 * the ceil(n / 4) token tiles of a row quad share out the prefetch of the next quad, tile j taking
 * rows [j R / nt, (j + 1) R / nt) of it, so the lines stream in evenly while the quad's tiles compute
 * from L1 (each weight row is read from memory once per step and reused by every token). n > 16: rows in
 * blocks of about BLOCK_BYTES, every token tile over a block's quads (the block stays in L1 / L2 while the
 * token tiles, too many to stay near, stream past it once each), and the token tiles share out the
 * prefetch of the next block the same way. */
#define BLOCKED_TOKENS 16
#define BLOCK_BYTES (64 << 10)

static void drive(const block_args *a, int64_t n, int64_t o0, int64_t o1) {
    const tile_set *ts = a->ts;
    int64_t o = o0;
    if (n <= 2) {
        const int *chunks = n == 1 ? ts->r_one : ts->r_two;
        for (int c = 0; chunks[c]; c++)
            for (const int R = chunks[c]; o + R <= o1; o += R)
                run_tile(a, (int)n, R, 0, o, o + R, o + 2 * R <= o1 ? R : 0);
        return;
    }
    const int R = ts->rq;
    const int64_t nt = (n + 3) / 4;
    int64_t rb = R;
    if (n > BLOCKED_TOKENS) {
        rb = BLOCK_BYTES / a->ws / R * R;
        if (rb < R) rb = R;
    }
    while (o + R <= o1) {
        const int64_t be = o + rb <= o1 ? o + rb : o + (o1 - o) / R * R;
        for (int64_t j = 0; j < nt; j++) {
            const int64_t lo = be + j * rb / nt, hi = be + (j + 1) * rb / nt;
            const int rows = hi <= o1 ? (int)(hi - lo) : lo < o1 ? (int)(o1 - lo) : 0;
            const int64_t i = 4 * j;
            for (int64_t q = o; q < be; q += R)
                run_tile(a, n - i < 4 ? (int)(n - i) : 4, R, i, q, lo, q == o ? rows : 0);
        }
        o = be;
    }
    for (; o < o1; o++) {
        int64_t i = 0;
        for (; i + 4 <= n; i += 4) run_tile(a, 4, 1, i, o, 0, 0);
        if (i < n) run_tile(a, (int)(n - i), 1, i, o, 0, 0);
    }
}

void gemm_block(const kernels *k, const gemm_x *x, const int32_t *xi, int64_t n, const void *w, int32_t w_dtype,
                int64_t w_stride, const void *bias, int64_t n_in, int64_t o_begin, int64_t o_end, float *y,
                int64_t ldy) {
    if (n <= 0 || o_begin >= o_end) return;
    const tile_set *ts = tiles_for(k, x, w_dtype);
    if (!ts) { /* portable: one dot product per output */
        const dot_fn dot = k->dot[w_dtype];
        for (int64_t o = o_begin; o < o_end; o++) {
            const void *row = (const unsigned char *)w + o * w_stride;
            const float b = bias ? weight_at(bias, w_dtype, o) : 0.0f;
            for (int64_t i = 0; i < n; i++) {
                const float *xr = x->f32 + (xi ? xi[i] : i) * x->ld;
                const float d = dot(xr, row, n_in);
                y[i * ldy + o] = bias ? d + b : d;
            }
        }
        return;
    }
    const block_args a = {
        ts,
        ts->x_bf16 ? (const unsigned char *)x->bf16 : (const unsigned char *)x->f32,
        ts->x_bf16 ? x->ldb * 2 : x->ld * 4,
        xi,
        w,
        w_stride,
        w_dtype,
        bias,
        n_in,
        y,
        ldy,
    };
    drive(&a, n, o_begin, o_end);
}

/* ---------------------------------------------------------------------------------------------- */
/* activations */

int64_t gemm_prepare_elems(int64_t n, int64_t n_in) { return n * ((n_in + 31) / 32 * 32); }

AVX512BF16 static void round_bf16_rows(uint16_t *out, int64_t ldb, const float *x, int64_t n, int64_t n_in) {
    for (int64_t t = 0; t < n; t++) {
        const float *row = x + t * n_in;
        uint16_t *dst = out + t * ldb;
        for (int64_t k = 0; k < ldb; k += 32) {
            const int64_t left = n_in - k;
            const __mmask16 lo = left >= 16 ? 0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
            const __mmask16 hi = left >= 32 ? 0xFFFF : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0;
            const __m512 a = _mm512_maskz_loadu_ps(lo, row + k);
            const __m512 b = _mm512_maskz_loadu_ps(hi, row + k + 16);
            _mm512_storeu_si512(dst + k, (__m512i)_mm512_cvtne2ps_pbh(b, a));
        }
    }
}

void gemm_view(const kernels *k, gemm_x *gx, uint16_t *buf, const float *x, int64_t n_in) {
    *gx = (gemm_x){x, n_in, k->level >= KERNELS_AVX512_BF16 ? buf : NULL, (n_in + 31) / 32 * 32};
}

void gemm_round(const gemm_x *gx, int64_t t0, int64_t t1) {
    if (!gx->bf16 || t0 >= t1) return;
    round_bf16_rows((uint16_t *)gx->bf16 + t0 * gx->ldb, gx->ldb, gx->f32 + t0 * gx->ld, t1 - t0, gx->ld);
}

void gemm_prepare(const kernels *k, gemm_x *gx, uint16_t *buf, const float *x, int64_t n, int64_t n_in) {
    gemm_view(k, gx, buf, x, n_in);
    gemm_round(gx, 0, n);
}

/* ---------------------------------------------------------------------------------------------- */
/* matmul over the pool */

#define GROUP 16 /* rows per item: a multiple of every tile's rows, and one panel */
#define GRAIN_MACS (1 << 20) /* multiply-adds per hand-off, at least */

typedef struct matmul_job {
    const kernels *k;
    const gemm_x *x;
    int64_t n_tokens, n_in;
    const matmul_part *parts;
    int n_parts;
    int64_t first[MATMUL_MAX_PARTS + 1]; /* first item of each part */
} matmul_job;

static void matmul_rows(void *ctx, int64_t begin, int64_t end) {
    const matmul_job *j = ctx;
    for (int p = 0; p < j->n_parts && begin < end; p++) {
        const int64_t lo = begin > j->first[p] ? begin : j->first[p];
        const int64_t hi = end < j->first[p + 1] ? end : j->first[p + 1];
        if (lo >= hi) continue;
        const matmul_part *part = &j->parts[p];
        const int64_t o0 = (lo - j->first[p]) * GROUP;
        const int64_t o1 = (hi - j->first[p]) * GROUP < part->n_out ? (hi - j->first[p]) * GROUP : part->n_out;
        if (part->panels && j->k->panels)
            gemm_panels_block(j->x, j->n_tokens, part->panels, part->bias, part->dtype, j->n_in, part->n_out,
                              o0 / GROUP, (o1 + GROUP - 1) / GROUP, part->y, part->n_out);
        else
            gemm_block(j->k, j->x, NULL, j->n_tokens, part->w, part->dtype, j->n_in * dtype_size(part->dtype),
                       part->bias, j->n_in, o0, o1, part->y, part->n_out);
    }
}

void matmul_parts(const kernels *k, thread_pool *pool, const gemm_x *x, int64_t n_tokens, int64_t n_in,
                  const matmul_part *parts, int n_parts) {
    matmul_job job = {k, x, n_tokens, n_in, parts, n_parts, {0}};
    for (int p = 0; p < n_parts; p++) job.first[p + 1] = job.first[p] + (parts[p].n_out + GROUP - 1) / GROUP;
    const int64_t groups = job.first[n_parts];
    /* The smallest block (the pool's guided blocks shrink to it at the end): ~1M multiply-adds, a batch
     * under 16 tokens counted as 16 (its rows cost about as long to stream as 16 tokens' to compute), so
     * that a block's first rows, which have no prefetch ahead of them, are a small part of it; and at
     * least four blocks per thread where there are enough rows. */
    int64_t grain = (int64_t)GRAIN_MACS / (GROUP * n_in * (n_tokens > 16 ? n_tokens : 16) + 1) + 1;
    const int64_t most = groups / (4 * (int64_t)pool->n_threads);
    if (grain > most) grain = most > 0 ? most : 1;
    thread_pool_run(pool, groups, grain, matmul_rows, &job);
}

void matmul(const kernels *k, thread_pool *pool, float *y, const gemm_x *x, const void *w, int32_t w_dtype,
            const uint16_t *panels, const void *bias, int64_t n_tokens, int64_t n_in, int64_t n_out) {
    const matmul_part part = {y, w, w_dtype, bias, n_out, panels};
    matmul_parts(k, pool, x, n_tokens, n_in, &part, 1);
}

/* ---------------------------------------------------------------------------------------------- */
/* LoRA expansion */

/* T tokens x V vectors of 16 outputs from o, the last vector's lanes masked by m: T V accumulators
 * (T V <= 8), each a chain of rank multiply-adds; the tile shapes below keep eight chains in flight. */
INLINE AVX512 void expand512_body(const int T, const int V, float *const *yr, const float *scale, const float *mid,
                                  int64_t ldm, int32_t rank, const unsigned char *bt, int32_t dtype, int64_t bs,
                                  int64_t o, __mmask16 m) {
    __m512 acc[8];
#pragma GCC unroll 8
    for (int j = 0; j < T * V; j++) acc[j] = _mm512_setzero_ps();
    for (int32_t r = 0; r < rank; r++) {
        __m512 wv[8];
#pragma GCC unroll 8
        for (int v = 0; v < V; v++) wv[v] = load512(dtype, bt + r * bs, o + 16 * v, v == V - 1 ? m : 0xFFFF);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const __m512 c = _mm512_set1_ps(mid[t * ldm + r]);
#pragma GCC unroll 8
            for (int v = 0; v < V; v++) acc[t * V + v] = _mm512_fmadd_ps(c, wv[v], acc[t * V + v]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        const __m512 s = _mm512_set1_ps(scale[t]);
#pragma GCC unroll 8
        for (int v = 0; v < V; v++) {
            const __mmask16 mv = v == V - 1 ? m : 0xFFFF;
            float *y = yr[t] + o + 16 * v;
            _mm512_mask_storeu_ps(y, mv, _mm512_add_ps(_mm512_maskz_loadu_ps(mv, y), _mm512_mul_ps(s, acc[t * V + v])));
        }
    }
}

#define EXPAND512(T, V)                                                                                      \
    AVX512 static void expand512_##T##x##V(float *const *yr, const float *scale, const float *mid, int64_t ldm, \
                                           int32_t rank, const unsigned char *bt, int32_t dtype, int64_t bs,     \
                                           int64_t o, __mmask16 m) {                                             \
        expand512_body(T, V, yr, scale, mid, ldm, rank, bt, dtype, bs, o, m);                                 \
    }
EXPAND512(8, 1) EXPAND512(4, 1) EXPAND512(4, 2) EXPAND512(2, 1) EXPAND512(2, 2) EXPAND512(2, 3) EXPAND512(2, 4)
EXPAND512(1, 1) EXPAND512(1, 2) EXPAND512(1, 3) EXPAND512(1, 4) EXPAND512(1, 5) EXPAND512(1, 6) EXPAND512(1, 7)
EXPAND512(1, 8)

typedef void (*expand512_fn)(float *const *, const float *, const float *, int64_t, int32_t, const unsigned char *,
                             int32_t, int64_t, int64_t, __mmask16);
static const expand512_fn expand512_tiles[9][9] = {
    [1] = {[1] = expand512_1x1, [2] = expand512_1x2, [3] = expand512_1x3, [4] = expand512_1x4, [5] = expand512_1x5,
           [6] = expand512_1x6, [7] = expand512_1x7, [8] = expand512_1x8},
    [2] = {[1] = expand512_2x1, [2] = expand512_2x2, [3] = expand512_2x3, [4] = expand512_2x4},
    [4] = {[1] = expand512_4x1, [2] = expand512_4x2},
    [8] = {[1] = expand512_8x1},
};

/* n <= 8 tokens in tiles of 8, 4, 2, 1 tokens, each over the outputs in steps of 8 / T vectors. */
AVX512 static void expand512(float *const *yr, const float *scale, const float *mid, int64_t ldm, int32_t rank,
                             const unsigned char *bt, int32_t dtype, int64_t bs, int64_t n, int64_t o0, int64_t o1) {
    for (int64_t i = 0; i < n;) {
        const int T = n - i >= 8 ? 8 : n - i >= 4 ? 4 : n - i >= 2 ? 2 : 1;
        for (int64_t o = o0; o < o1; o += 16 * (8 / T)) {
            const int64_t left = (o1 - o + 15) / 16;
            const int V = left < 8 / T ? (int)left : 8 / T;
            const int64_t last = o1 - (o + 16 * (V - 1));
            const __mmask16 m = last >= 16 ? 0xFFFF : (__mmask16)((1u << last) - 1);
            expand512_tiles[T][V](yr + i, scale + i, mid + i * ldm, ldm, rank, bt, dtype, bs, o, m);
        }
        i += T;
    }
}

/* T tokens x V vectors of 8 outputs from o (whole vectors): T V accumulators (T V <= 8), each a chain of
 * rank multiply-adds; with the weight vector and T broadcasts they fit AVX2's 16 registers. */
INLINE AVX2 void expand256_body(const int T, const int V, float *const *yr, const float *scale, const float *mid,
                                int64_t ldm, int32_t rank, const unsigned char *bt, int32_t dtype, int64_t bs,
                                int64_t o) {
    __m256 acc[8];
#pragma GCC unroll 8
    for (int j = 0; j < T * V; j++) acc[j] = _mm256_setzero_ps();
    for (int32_t r = 0; r < rank; r++) {
        __m256 c[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) c[t] = _mm256_set1_ps(mid[t * ldm + r]);
#pragma GCC unroll 8
        for (int v = 0; v < V; v++) {
            const __m256 wv = load256(dtype, bt + r * bs, o + 8 * v);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) acc[t * V + v] = _mm256_fmadd_ps(c[t], wv, acc[t * V + v]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        const __m256 sc = _mm256_set1_ps(scale[t]);
#pragma GCC unroll 8
        for (int v = 0; v < V; v++) {
            float *y = yr[t] + o + 8 * v;
            _mm256_storeu_ps(y, _mm256_add_ps(_mm256_loadu_ps(y), _mm256_mul_ps(sc, acc[t * V + v])));
        }
    }
}

#define EXPAND256(T, V)                                                                                      \
    AVX2 static void expand256_##T##x##V(float *const *yr, const float *scale, const float *mid, int64_t ldm, \
                                         int32_t rank, const unsigned char *bt, int32_t dtype, int64_t bs,     \
                                         int64_t o) {                                                          \
        expand256_body(T, V, yr, scale, mid, ldm, rank, bt, dtype, bs, o);                                    \
    }
EXPAND256(4, 1) EXPAND256(4, 2) EXPAND256(2, 1) EXPAND256(2, 2) EXPAND256(2, 3) EXPAND256(2, 4) EXPAND256(1, 1)
EXPAND256(1, 2) EXPAND256(1, 3) EXPAND256(1, 4) EXPAND256(1, 5) EXPAND256(1, 6) EXPAND256(1, 7) EXPAND256(1, 8)

typedef void (*expand256_fn)(float *const *, const float *, const float *, int64_t, int32_t, const unsigned char *,
                             int32_t, int64_t, int64_t);
static const expand256_fn expand256_tiles[5][9] = {
    [1] = {[1] = expand256_1x1, [2] = expand256_1x2, [3] = expand256_1x3, [4] = expand256_1x4, [5] = expand256_1x5,
           [6] = expand256_1x6, [7] = expand256_1x7, [8] = expand256_1x8},
    [2] = {[1] = expand256_2x1, [2] = expand256_2x2, [3] = expand256_2x3, [4] = expand256_2x4},
    [4] = {[1] = expand256_4x1, [2] = expand256_4x2},
};

/* n <= 8 tokens in tiles of 4, 2, 1 tokens over the whole vectors of outputs (8 / T at a time), then the
 * outputs past the last whole vector one at a time with the same lane arithmetic. */
AVX2 static void expand256(float *const *yr, const float *scale, const float *mid, int64_t ldm, int32_t rank,
                           const unsigned char *bt, int32_t dtype, int64_t bs, int64_t n, int64_t o0, int64_t o1) {
    const int64_t whole = o0 + (o1 - o0) / 8 * 8;
    for (int64_t i = 0; i < n;) {
        const int T = n - i >= 4 ? 4 : n - i >= 2 ? 2 : 1;
        for (int64_t o = o0; o < whole; o += 8 * (8 / T)) {
            const int64_t left = (whole - o) / 8;
            const int V = left < 8 / T ? (int)left : 8 / T;
            expand256_tiles[T][V](yr + i, scale + i, mid + i * ldm, ldm, rank, bt, dtype, bs, o);
        }
        i += T;
    }
    for (int64_t o = whole; o < o1; o++) {
        for (int64_t i = 0; i < n; i++) {
            float acc = 0.0f;
            for (int32_t r = 0; r < rank; r++) acc = fmaf(mid[i * ldm + r], weight_at(bt + r * bs, dtype, o), acc);
            yr[i][o] = yr[i][o] + scale[i] * acc;
        }
    }
}

static void expand_portable(float *const *yr, const float *scale, const float *mid, int64_t ldm, int32_t rank,
                            const unsigned char *bt, int32_t dtype, int64_t bs, int64_t n, int64_t o0, int64_t o1) {
    float acc[64];
    for (int64_t o = o0; o < o1; o += 64) {
        const int64_t m = o1 - o < 64 ? o1 - o : 64;
        for (int64_t i = 0; i < n; i++) {
            for (int64_t j = 0; j < m; j++) acc[j] = 0.0f;
            for (int32_t r = 0; r < rank; r++) {
                const float c = mid[i * ldm + r];
                const unsigned char *row = bt + r * bs;
                for (int64_t j = 0; j < m; j++) acc[j] += c * weight_at(row, dtype, o + j);
            }
            for (int64_t j = 0; j < m; j++) yr[i][o + j] = yr[i][o + j] + scale[i] * acc[j];
        }
    }
}

void lora_expand(const kernels *k, float *y, int64_t ldy, const int32_t *yi, int64_t n, const float *scale,
                 const float *mid, int64_t ldm, int32_t rank, const void *bt, int32_t w_dtype, int64_t bt_stride,
                 int64_t o_begin, int64_t o_end) {
    float *rows[8];
    for (int64_t i0 = 0; i0 < n; i0 += 8) { /* eight tokens at a time: their output rows */
        const int64_t m = n - i0 < 8 ? n - i0 : 8;
        for (int64_t i = 0; i < m; i++) rows[i] = y + (yi ? yi[i0 + i] : i0 + i) * ldy;
        const float *md = mid + i0 * ldm;
        if (k->level >= KERNELS_AVX512)
            expand512(rows, scale + i0, md, ldm, rank, bt, w_dtype, bt_stride, m, o_begin, o_end);
        else if (k->level >= KERNELS_AVX2)
            expand256(rows, scale + i0, md, ldm, rank, bt, w_dtype, bt_stride, m, o_begin, o_end);
        else
            expand_portable(rows, scale + i0, md, ldm, rank, bt, w_dtype, bt_stride, m, o_begin, o_end);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* exp */

/* glibc's expf (sysdeps/ieee754/flt-32/e_expf.c, the FMA build every AVX-512 CPU runs), 8 lanes at a time
 * in double: x N/ln2 = k + r, exp(x) = 2^(k/N) (C0 r^3 + C1 r^2 + C2 r + 1) with N = 32, the same
 * operations, fused the same way, on the same constants, so each lane is bit-identical to expf (checked
 * over every float). Lanes with |x| >= 88 (overflow, underflow, inf, NaN) are left to expf itself. */
static const uint64_t exp_tab[32] = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51, 0x3fef72b83c7d517b,
    0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1, 0x3fef06fe0a31b715, 0x3feef1a7373aa9cb,
    0x3feedea64c123422, 0x3feece086061892d, 0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429,
    0x3feea47eb03a5585, 0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d, 0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069, 0x3fef5818dcfba487, 0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
};

INLINE AVX512 __m256 exp8(__m256 x) {
    const __m512d xd = _mm512_cvtps_pd(x);
    const __m512d shift = _mm512_set1_pd(0x1.8p52), invln2n = _mm512_set1_pd(0x1.71547652b82fep+5);
    const __m512d kds = _mm512_fmadd_pd(invln2n, xd, shift);
    const __m512i ki = _mm512_castpd_si512(kds);
    const __m512d r = _mm512_fmsub_pd(invln2n, xd, _mm512_sub_pd(kds, shift));
    const __m512i idx = _mm512_and_si512(ki, _mm512_set1_epi64(31));
    const __m512i lo = _mm512_permutex2var_epi64(_mm512_loadu_si512(exp_tab), idx, _mm512_loadu_si512(exp_tab + 8));
    const __m512i hi =
        _mm512_permutex2var_epi64(_mm512_loadu_si512(exp_tab + 16), idx, _mm512_loadu_si512(exp_tab + 24));
    const __m512i t = _mm512_mask_blend_epi64(_mm512_test_epi64_mask(idx, _mm512_set1_epi64(16)), lo, hi);
    const __m512d sc = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64(ki, 47)));
    const __m512d z = _mm512_fmadd_pd(_mm512_set1_pd(0x1.c6af84b912394p-20), r, _mm512_set1_pd(0x1.ebfce50fac4f3p-13));
    const __m512d r2 = _mm512_mul_pd(r, r);
    __m512d y = _mm512_fmadd_pd(_mm512_set1_pd(0x1.62e42ff0c52d6p-6), r, _mm512_set1_pd(1.0));
    y = _mm512_fmadd_pd(z, r2, y);
    return _mm512_cvtpd_ps(_mm512_mul_pd(y, sc));
}

AVX512 static void exp512(float *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        const __m512i top = _mm512_and_si512(_mm512_srli_epi32(_mm512_castps_si512(v), 20), _mm512_set1_epi32(0x7ff));
        const __mmask16 odd = _mm512_mask_cmpge_epi32_mask(m, top, _mm512_set1_epi32(0x42b));
        float keep[16];
        if (odd) _mm512_storeu_ps(keep, v);
        const __m512 e = _mm512_insertf32x8(_mm512_castps256_ps512(exp8(_mm512_castps512_ps256(v))),
                                            exp8(_mm512_extractf32x8_ps(v, 1)), 1);
        _mm512_mask_storeu_ps(out + i, m, e);
        for (int j = 0; odd >> j; j++)
            if ((odd >> j) & 1) out[i + j] = expf(keep[j]);
    }
}

void exp_floats(const kernels *k, float *out, const float *x, int64_t n) {
    if (k->level >= KERNELS_AVX512) {
        exp512(out, x, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) out[i] = expf(x[i]);
}

/* ---------------------------------------------------------------------------------------------- */
/* attention: out[r] += sum_p e[r][p] * V[p] */

/* R rows (R <= 4) against one 64-wide slice of V: each key's slice is loaded once for the R rows; a row
 * past its own count of keys leaves its accumulators as they are (a masked multiply-add). */
/* Key p (its slice of V at row) into R rows' accumulators; ragged: a row past its count n[r] is left as
 * it is (a masked multiply-add), else every row takes it. */
INLINE AVX512 void pv512_key(const int R, const int ragged, __m512 acc[4][4], const __mmask16 *m, const float *e,
                             int64_t lde, const int32_t *n, const float *row, int32_t p) {
    __m512 vs[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) vs[c] = _mm512_maskz_loadu_ps(m[c], row + 16 * c);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        const __mmask16 live = !ragged || p < n[r] ? 0xFFFF : 0;
        const __m512 ep = _mm512_set1_ps(e[r * lde + p]);
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) acc[r][c] = _mm512_mask3_fmadd_ps(ep, vs[c], acc[r][c], m[c] & live);
    }
}

INLINE AVX512 void pv512_tile(const int R, float *out, const float *e, int64_t lde, const int32_t *n, const float *v,
                              int64_t stride, int32_t d, int32_t hd) {
    __mmask16 m[4];
    __m512 acc[4][4];
    int32_t most = 0, fewest = n[0];
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        const int32_t left = hd - d - 16 * c;
        m[c] = left >= 16 ? 0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        most = n[r] > most ? n[r] : most;
        fewest = n[r] < fewest ? n[r] : fewest;
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) acc[r][c] = _mm512_maskz_loadu_ps(m[c], out + (int64_t)r * hd + d + 16 * c);
    }
    /* the keys every row sums (no per-row mask), then the rest (a row past its count is left as it is) */
    for (int32_t p = 0; p < fewest; p++) pv512_key(R, 0, acc, m, e, lde, n, v + (int64_t)p * stride + d, p);
    for (int32_t p = fewest; p < most; p++) pv512_key(R, 1, acc, m, e, lde, n, v + (int64_t)p * stride + d, p);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) _mm512_mask_storeu_ps(out + (int64_t)r * hd + d + 16 * c, m[c], acc[r][c]);
}

AVX512 static void pv512(float *out, const float *e, int64_t lde, const int32_t *n, int32_t n_rows, const float *v,
                         int64_t stride, int32_t hd) {
    for (int32_t r = 0; r < n_rows; r += 4) {
        float *o = out + (int64_t)r * hd;
        const float *er = e + r * lde;
        for (int32_t d = 0; d < hd; d += 64) {
            switch (n_rows - r < 4 ? n_rows - r : 4) {
            case 1: pv512_tile(1, o, er, lde, n + r, v, stride, d, hd); break;
            case 2: pv512_tile(2, o, er, lde, n + r, v, stride, d, hd); break;
            case 3: pv512_tile(3, o, er, lde, n + r, v, stride, d, hd); break;
            default: pv512_tile(4, o, er, lde, n + r, v, stride, d, hd); break;
            }
        }
    }
}

void attention_pv(const kernels *k, float *out, const float *e, int64_t lde, const int32_t *n, int32_t n_rows,
                  const float *v, int64_t stride, int32_t hd) {
    if (k->level >= KERNELS_AVX512) {
        pv512(out, e, lde, n, n_rows, v, stride, hd);
        return;
    }
    const axpy_fn axpy = k->axpy[MLR_DTYPE_F32]; /* the same sums, one row and one key at a time */
    for (int32_t r = 0; r < n_rows; r++)
        for (int32_t p = 0; p < n[r]; p++) axpy(out + (int64_t)r * hd, e[r * lde + p], v + (int64_t)p * stride, hd);
}
