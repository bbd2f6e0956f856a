/*
 * Compute kernels of the CPU engine, chosen once from cpuid (kernels_select):
 *
 *   path          BF16 weights                                     F32 / F16 weights
 *   avx512_bf16   vdpbf16ps, activations rounded to bf16            AVX-512 f32 FMA (weights converted in registers)
 *   avx512        AVX-512 f32 FMA over weights packed in panels     AVX-512 f32 FMA
 *   avx2          AVX2 f32 FMA (F16C for F16)                       AVX2 f32 FMA
 *   portable      plain C, f32                                      plain C, f32
 *
 * The widest path the CPU runs is chosen, except that an Intel CPU with AVX512_BF16 gets avx512: Intel's
 * cores (Cooper Lake to Emerald Rapids) issue one vdpbf16ps every two cycles or so against two f32 FMAs a
 * cycle, so 16 f32 products beat 32 bf16 ones there; on AMD's (Zen 4, Zen 5) vdpbf16ps issues as often as
 * an FMA, twice the products.
 *
 * The matrix products are register-blocked: a tile of T tokens x R output rows keeps T*R vector
 * accumulators and loads each weight vector once per tile. Weights in their file's row layout (gemm.c):
 * dot products, an accumulator per output being a vector over k. BF16 weights on the avx512 path
 * (gemm_panels.c): packed once at engine creation in panels of 16 rows, an outer product, an accumulator
 * lane per output. Threads split the output rows in blocks (never split-K).
 *
 * The guarantee every path keeps: each output element y[t, o] is computed by the same sequence of
 * operations whatever tile, batch position, batch size or thread its token lands in. Row layout: its
 * accumulator is a vector over k (lanes of 16 on AVX-512, 8 on AVX2), fed in k order one chunk at a time
 * (a masked, or zero-padded, last chunk), then reduced by one fixed tree (lane i + i+8, + i+4, + i+2,
 * + i+1; AVX2 the same from i+4). Panels: one fused multiply-add per k, in k order, from zero. So a
 * sequence gets the same numbers alone or batched, on any thread count.
 *
 * MULTILORA_CPU_KERNELS=portable|avx2|avx512|avx512_bf16 picks the path, when the CPU runs it (else the
 * widest below it that it runs): avx512 keeps BF16 models in f32 arithmetic on a CPU with fast vdpbf16ps,
 * avx512_bf16 uses vdpbf16ps on an Intel CPU.
 */
#ifndef MLR_KERNELS_H
#define MLR_KERNELS_H

#include <stdint.h>

#include "thread_pool.h"

/* sum_i x[i] * w[i], w in the kernel's dtype. */
typedef float (*dot_fn)(const float *x, const void *w, int64_t n);

/* y[i] += c * w[i], w in the kernel's dtype. */
typedef void (*axpy_fn)(float *y, float c, const void *w, int64_t n);

typedef enum kernel_level {
    KERNELS_PORTABLE = 0,
    KERNELS_AVX2 = 1,
    KERNELS_AVX512 = 2,
    KERNELS_AVX512_BF16 = 3,
} kernel_level;

typedef struct kernels {
    dot_fn dot[3];       /* by mlr_float_dtype */
    axpy_fn axpy[3];
    int32_t level;       /* kernel_level */
    int32_t panels;      /* BF16 matrices are packed in panels (gemm_panels.c) and multiplied in f32 */
    const char *isa;     /* "avx512_bf16", "avx512", "avx2", "portable" */
} kernels;

/* The widest path this CPU runs (the most kernels_select_named accepts). */
kernel_level kernels_cpu_most(void);

/* The path the engine uses on this CPU (above), or the one MULTILORA_CPU_KERNELS picks. */
kernel_level kernels_cpu_level(void);

/* The kernels of kernels_cpu_level(). */
void kernels_select(kernels *k);

/* The kernels of one path; 0 when the CPU cannot run it (or the name is unknown). */
int kernels_select_named(kernels *k, const char *isa);

/* One element of a weight vector as f32. */
float weight_at(const void *w, int32_t dtype, int64_t i);

/* ---------------------------------------------------------------------------------------------- */
/* matrix products (gemm.c) */

/*
 * Activations prepared for the matrix kernels: the f32 rows, and on the avx512_bf16 path the same rows
 * rounded to bf16 (round to nearest even) and zero padded to ldb, a multiple of 32. One preparation
 * serves every product over the same input (q, k, v and their LoRA).
 */
typedef struct gemm_x {
    const float *f32;    /* [rows, ld] */
    int64_t ld;
    const uint16_t *bf16; /* [rows, ldb], or NULL: the path does not use it */
    int64_t ldb;
} gemm_x;

/* Elements of bf16 buffer gemm_prepare needs for n rows of n_in. */
int64_t gemm_prepare_elems(int64_t n, int64_t n_in);

/* Fills *gx for x ([n, n_in], ld n_in); buf holds gemm_prepare_elems(n, n_in) elements (or NULL when the
 * path does not round: then gx->bf16 stays NULL). */
void gemm_prepare(const kernels *k, gemm_x *gx, uint16_t *buf, const float *x, int64_t n, int64_t n_in);

/* gemm_prepare in two parts, for callers that fill and round the rows in parallel: gemm_view fills *gx
 * without touching buf (gx->bf16 = buf on the rounding path, else NULL); gemm_round then rounds rows
 * [t0, t1) of gx->f32 into it (nothing when gx->bf16 is NULL). Rows are independent. */
void gemm_view(const kernels *k, gemm_x *gx, uint16_t *buf, const float *x, int64_t n_in);
void gemm_round(const gemm_x *gx, int64_t t0, int64_t t1);

/*
 * y[i * ldy + o] = dot(x row xi[i], W[o, :]) (+ bias[o]) for i < n, o in [o_begin, o_end); xi NULL means
 * row i. W: rows of n_in elements of w_dtype, w_stride bytes apart; bias: [o_end] of w_dtype or NULL.
 * One thread.
 */
void gemm_block(const kernels *k, const gemm_x *x, const int32_t *xi, int64_t n, const void *w, int32_t w_dtype,
                int64_t w_stride, const void *bias, int64_t n_in, int64_t o_begin, int64_t o_end, float *y,
                int64_t ldy);

/* y[t, o] = dot(x[t, :], W[o, :]) (+ bias[o]) for t < n_tokens, o < n_out: row blocks over the pool.
 * W: [n_out, n_in] of w_dtype; panels: the same W packed by panels_pack, or NULL (used when k->panels);
 * bias: [n_out] of w_dtype or NULL; y: [n_tokens, n_out]. */
void matmul(const kernels *k, thread_pool *pool, float *y, const gemm_x *x, const void *w, int32_t w_dtype,
            const uint16_t *panels, const void *bias, int64_t n_tokens, int64_t n_in, int64_t n_out);

/* One of several products over the same activations, run as one parallel-for (q, k and v; gate and up). */
typedef struct matmul_part {
    float *y;              /* [n_tokens, n_out] */
    const void *w;         /* [n_out, n_in] of dtype */
    int32_t dtype;
    const void *bias;      /* [n_out] of dtype, or NULL */
    int64_t n_out;
    const uint16_t *panels; /* W packed by panels_pack, or NULL */
} matmul_part;

#define MATMUL_MAX_PARTS 3

/* matmul for each part (at most MATMUL_MAX_PARTS), their row blocks handed out together. */
void matmul_parts(const kernels *k, thread_pool *pool, const gemm_x *x, int64_t n_tokens, int64_t n_in,
                  const matmul_part *parts, int n_parts);

/* ---------------------------------------------------------------------------------------------- */
/* BF16 matrices in panels of 16 rows (gemm_panels.c) */

/* Elements (uint16) between panels, and in all ceil(n_out / 16) panels of a [n_out, n_in] matrix. */
int64_t panel_stride(int64_t n_in);
int64_t panels_elems(int64_t n_out, int64_t n_in);

/* Packs panels [p_begin, p_end) of the BF16 matrix w [n_out, n_in] into dst (panels_elems elements). */
void panels_pack(uint16_t *dst, const uint16_t *w, int64_t n_out, int64_t n_in, int64_t p_begin, int64_t p_end);

/* y[i * ldy + o] = dot(x row i, W[o, :]) (+ bias[o]) for i < n and the rows o of panels [p_begin, p_end)
 * below n_out; bias [n_out] of bias_dtype or NULL. AVX-512 only. One thread. */
void gemm_panels_block(const gemm_x *x, int64_t n, const uint16_t *panels, const void *bias, int32_t bias_dtype,
                       int64_t n_in, int64_t n_out, int64_t p_begin, int64_t p_end, float *y, int64_t ldy);

/*
 * The LoRA expansion: y[xi[i]][o] += scale[i] * sum_r mid[i * ldm + r] * Bt[r, o] for i < n and o in
 * [o_begin, o_end), the sum in r order; y rows ldy apart, Bt rows (of w_dtype) bt_stride bytes apart.
 * One thread.
 */
void lora_expand(const kernels *k, float *y, int64_t ldy, const int32_t *yi, int64_t n, const float *scale,
                 const float *mid, int64_t ldm, int32_t rank, const void *bt, int32_t w_dtype, int64_t bt_stride,
                 int64_t o_begin, int64_t o_end);

/* Attention's weighted sums for n_rows query rows: out[r * hd + d] += sum_{p < n[r]} e[r * lde + p] * V[p][d]
 * for d < hd, in p order (a multiply-add per term, fused on the AVX paths); V rows `stride` floats apart,
 * each read once for up to four rows on AVX-512. A row's sums are the same whatever rows it runs with.
 * One thread. */
void attention_pv(const kernels *k, float *out, const float *e, int64_t lde, const int32_t *n, int32_t n_rows,
                  const float *v, int64_t stride, int32_t hd);

/* out[i] = expf(x[i]) for i < n (on AVX-512 a vector copy of glibc's expf, gemm.c: bit-identical to
 * glibc 2.27+ on every float; whatever the libc, an element's value depends on its input alone); out may
 * be x. One thread. */
void exp_floats(const kernels *k, float *out, const float *x, int64_t n);

/* ---------------------------------------------------------------------------------------------- */
/* per-row operations */

/* out = x / sqrt(mean(x^2) + eps) * w, for one row of n values. */
void rmsnorm(float *out, const float *x, const void *w, int32_t w_dtype, int64_t n, float eps);

#endif /* MLR_KERNELS_H */
