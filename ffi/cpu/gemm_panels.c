/*
 * The avx512 path's matrix product for BF16 weights: the weights packed in panels of 16 output rows, an
 * outer product in f32 FMA (kernels.h says when this path is chosen, and why).
 *
 * Layout: panel p holds rows 16p .. 16p + 15 (rows past n_out are zero) as [pairs][16 rows][2]: one
 * 64-byte line per pair of k holds w[row][k] and w[row][k + 1] for the 16 rows, so a shift and a mask turn
 * it into two f32 vectors, one per k. n_in is padded to an even count with zeros; a panel is
 * panel_stride(n_in) elements.
 *
 * A tile computes T tokens x RV panels (T <= 12, RV panels of 16 rows) with T * RV vector accumulators,
 * each lane one output: per pair of k it loads RV lines, converts them (2 RV integer operations) and does
 * 2 T RV multiply-adds with x[t][k] and x[t][k + 1] broadcast. Tile shapes by the number of tokens T in
 * it (RV as many as the registers hold, fewer for the last panels of a block):
 *
 *   T    1   2   3-4   5-6   7-12
 *   RV   8   6   4     3     2
 *
 * Reduction order: an output's lane is fed x[t][k] w[o][k] for k = 0, 1, ..., n_in - 1, one fused
 * multiply-add each, in that order, from zero; nothing else touches it. So its value is the same in every
 * tile shape, batch position, batch size and thread count (the guarantee of kernels.h).
 */
#include <immintrin.h>
#include <string.h>

#include "dtype.h"
#include "kernels.h"
#include "multilora.h"

#define AHEAD 192 /* elements a tile prefetches ahead in its own panels: 6 lines */
#define TQ 12                    /* tokens per tile */
#define PANEL_BLOCK_BYTES (256 << 10) /* panels per block: a block stays in L2 while every token tile runs */

int64_t panel_stride(int64_t n_in) { return (n_in + 1) / 2 * 32; }

int64_t panels_elems(int64_t n_out, int64_t n_in) { return (n_out + 15) / 16 * panel_stride(n_in); }

void panels_pack(uint16_t *dst, const uint16_t *w, int64_t n_out, int64_t n_in, int64_t p_begin, int64_t p_end) {
    const int64_t pairs = (n_in + 1) / 2, ps = panel_stride(n_in);
    for (int64_t p = p_begin; p < p_end; p++) {
        uint16_t *panel = dst + p * ps;
        for (int r = 0; r < 16; r++) {
            const int64_t o = p * 16 + r;
            const uint16_t *row = o < n_out ? w + o * n_in : NULL;
            for (int64_t j = 0; j < pairs; j++) {
                uint16_t *cell = panel + (j * 16 + r) * 2;
                cell[0] = row ? row[2 * j] : 0;
                cell[1] = row && 2 * j + 1 < n_in ? row[2 * j + 1] : 0;
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* tiles */

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define INLINE static inline __attribute__((always_inline))

/* out[(t * RV + r) * 16 + i] = output row 16 r + i of the tile for token t. Prefetches into L2, per pair
 * of k: each of its own panels AHEAD elements on (the last runs on into the panel after it, the next
 * tile's), and one line of each of pf_panels panels (ps apart) a later tile reads. */
typedef void (*panel_fn)(const float *const *x, const uint16_t *w, int64_t ps, int64_t n_in, float *out,
                         const uint16_t *pf, int pf_panels);

INLINE AVX512 void panel_body(const int T, const int RV, const float *const *xv, const uint16_t *w, int64_t ps,
                              int64_t n_in, float *out, const uint16_t *pf, int pf_panels) {
    const float *x[TQ];
    for (int t = 0; t < T; t++) x[t] = xv[t];
    __m512 acc[24];
#pragma GCC unroll 24
    for (int j = 0; j < T * RV; j++) acc[j] = _mm512_setzero_ps();
    const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
    int64_t k = 0;
    for (; k + 2 <= n_in; k += 2) {
        const uint16_t *line = w + k * 16;
        for (int p = 0; p < pf_panels; p++) _mm_prefetch((const char *)(pf + p * ps + k * 16), _MM_HINT_T1);
#pragma GCC unroll 8
        for (int r = 0; r < RV; r++) _mm_prefetch((const char *)(line + r * ps + AHEAD), _MM_HINT_T1);
        __m512 even[8], odd[8];
#pragma GCC unroll 8
        for (int r = 0; r < RV; r++) {
            const __m512i v = _mm512_loadu_si512(line + r * ps);
            even[r] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            odd[r] = _mm512_castsi512_ps(_mm512_and_si512(v, high));
        }
#pragma GCC unroll 12
        for (int t = 0; t < T; t++) {
            const __m512 a = _mm512_set1_ps(x[t][k]);
#pragma GCC unroll 8
            for (int r = 0; r < RV; r++) acc[t * RV + r] = _mm512_fmadd_ps(a, even[r], acc[t * RV + r]);
        }
#pragma GCC unroll 12
        for (int t = 0; t < T; t++) {
            const __m512 b = _mm512_set1_ps(x[t][k + 1]);
#pragma GCC unroll 8
            for (int r = 0; r < RV; r++) acc[t * RV + r] = _mm512_fmadd_ps(b, odd[r], acc[t * RV + r]);
        }
    }
    if (k < n_in) { /* odd n_in: the last k alone */
        const uint16_t *line = w + k * 16;
#pragma GCC unroll 8
        for (int r = 0; r < RV; r++) {
            const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_loadu_si512(line + r * ps), 16));
#pragma GCC unroll 12
            for (int t = 0; t < T; t++)
                acc[t * RV + r] = _mm512_fmadd_ps(_mm512_set1_ps(x[t][k]), even, acc[t * RV + r]);
        }
    }
#pragma GCC unroll 24
    for (int j = 0; j < T * RV; j++) _mm512_storeu_ps(out + j * 16, acc[j]);
}

#define PANEL(T, RV)                                                                                      \
    AVX512 static void panel_##T##x##RV(const float *const *x, const uint16_t *w, int64_t ps, int64_t n_in, \
                                        float *out, const uint16_t *pf, int pf_panels) {                   \
        panel_body(T, RV, x, w, ps, n_in, out, pf, pf_panels);                                            \
    }
#define UP_TO_2(T) PANEL(T, 1) PANEL(T, 2)
#define UP_TO_3(T) UP_TO_2(T) PANEL(T, 3)
#define UP_TO_4(T) UP_TO_3(T) PANEL(T, 4)
#define UP_TO_6(T) UP_TO_4(T) PANEL(T, 5) PANEL(T, 6)
UP_TO_6(2) UP_TO_4(3) UP_TO_4(4) UP_TO_3(5) UP_TO_3(6) UP_TO_2(7) UP_TO_2(8) UP_TO_2(9) UP_TO_2(10) UP_TO_2(11)
UP_TO_2(12) UP_TO_6(1) PANEL(1, 7) PANEL(1, 8)

#define ROW2(T) {[1] = panel_##T##x1, [2] = panel_##T##x2}
#define ROW3(T) {[1] = panel_##T##x1, [2] = panel_##T##x2, [3] = panel_##T##x3}
#define ROW4(T) {[1] = panel_##T##x1, [2] = panel_##T##x2, [3] = panel_##T##x3, [4] = panel_##T##x4}
static const panel_fn tiles[TQ + 1][9] = {
    [1] = {[1] = panel_1x1, [2] = panel_1x2, [3] = panel_1x3, [4] = panel_1x4, [5] = panel_1x5, [6] = panel_1x6,
           [7] = panel_1x7, [8] = panel_1x8},
    [2] = {[1] = panel_2x1, [2] = panel_2x2, [3] = panel_2x3, [4] = panel_2x4, [5] = panel_2x5, [6] = panel_2x6},
    [3] = ROW4(3), [4] = ROW4(4), [5] = ROW3(5), [6] = ROW3(6), [7] = ROW2(7), [8] = ROW2(8), [9] = ROW2(9),
    [10] = ROW2(10), [11] = ROW2(11), [12] = ROW2(12),
};
static const int tile_panels[TQ + 1] = {0, 8, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2};

static int panels_per_tile(int64_t n) { return tile_panels[n < TQ ? n : TQ]; }

/* ---------------------------------------------------------------------------------------------- */
/* the driver */

typedef struct panel_args {
    const float *x;
    int64_t ld;
    const uint16_t *w;
    int64_t ps;
    const void *bias;
    int32_t bias_dtype;
    int64_t n_in, n_out;
    float *y;
    int64_t ldy;
} panel_args;

/* Tokens [i, i + T) x panels [q, q + RV); prefetches panels [pf, pf + pf_panels). */
static void run_tile(const panel_args *a, int T, int RV, int64_t i, int64_t q, int64_t pf, int pf_panels) {
    const float *xp[TQ];
    for (int t = 0; t < T; t++) xp[t] = a->x + (i + t) * a->ld;
    float out[24 * 16];
    tiles[T][RV](xp, a->w + q * a->ps, a->ps, a->n_in, out, pf_panels > 0 ? a->w + pf * a->ps : NULL, pf_panels);
    const int64_t o0 = q * 16, o1 = o0 + RV * 16 <= a->n_out ? o0 + RV * 16 : a->n_out;
    for (int t = 0; t < T; t++) {
        float *y = a->y + (i + t) * a->ldy;
        const float *src = out + (int64_t)t * RV * 16;
        if (a->bias) {
            for (int64_t o = o0; o < o1; o++) y[o] = src[o - o0] + weight_at(a->bias, a->bias_dtype, o);
        } else {
            memcpy(y + o0, src, (size_t)(o1 - o0) * sizeof(float));
        }
    }
}

/* Panels [p0, p1) in blocks of about PANEL_BLOCK_BYTES; within a block every token tile runs over the
 * block's panels (the block is read from memory once and stays in L2 for the others), and with n > 1 the
 * tiles share out the prefetch of the next block, a few panels each. With n = 1 (a block is one tile, a
 * stream from memory) a tile's own prefetch alone is faster: the next tile's eight panels prefetched
 * beside it were sixteen streams at once (measured 28 ms a 724 MB decode step against 25.5). */
static void drive(const panel_args *a, int64_t n, int64_t p0, int64_t p1) {
    const int64_t nt = (n + TQ - 1) / TQ;
    const int first = panels_per_tile(n);
    int64_t bp = PANEL_BLOCK_BYTES / (a->ps * 2);
    bp = (bp + first - 1) / first * first; /* whole tiles */
    if (bp < first) bp = first;
    for (int64_t b = p0; b < p1; b += bp) {
        const int64_t be = b + bp < p1 ? b + bp : p1;
        const int64_t pf_end = be + bp < p1 ? be + bp : p1;
        int64_t calls = 0;
        for (int64_t j = 0; j < nt; j++) {
            const int rv = panels_per_tile(n - j * TQ);
            calls += (be - b + rv - 1) / rv;
        }
        const int64_t share = n > 1 ? (pf_end - be + calls - 1) / calls : 0;
        int64_t pf = be;
        for (int64_t j = 0; j < nt; j++) {
            const int64_t i = j * TQ;
            const int T = n - i < TQ ? (int)(n - i) : TQ;
            const int rv = tile_panels[T];
            for (int64_t q = b; q < be; q += rv) {
                const int r = be - q < rv ? (int)(be - q) : rv;
                const int take = pf_end - pf < share ? (int)(pf_end - pf) : (int)share;
                run_tile(a, T, r, i, q, pf, take);
                pf += take;
            }
        }
    }
}

void gemm_panels_block(const gemm_x *x, int64_t n, const uint16_t *panels, const void *bias, int32_t bias_dtype,
                       int64_t n_in, int64_t n_out, int64_t p_begin, int64_t p_end, float *y, int64_t ldy) {
    if (n <= 0 || p_begin >= p_end) return;
    const panel_args a = {x->f32, x->ld, panels, panel_stride(n_in), bias, bias_dtype, n_in, n_out, y, ldy};
    drive(&a, n, p_begin, p_end);
}
