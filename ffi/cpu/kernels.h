/*
 * Compute kernels of the CPU engine: dot products of f32 activations with f32 / f16 / bf16 weight rows
 * (the AVX-512, AVX2+FMA+F16C or portable version, chosen once from cpuid), a multi-threaded matrix
 * product, and the small per-row operations of a transformer layer.
 *
 * Every output element is one dot product in a fixed order that depends only on the vector length, never
 * on the batch or the thread count (no split-K): a sequence gets the same numbers alone or batched.
 */
#ifndef MLR_KERNELS_H
#define MLR_KERNELS_H

#include <stdint.h>

#include "thread_pool.h"

/* sum_i x[i] * w[i], w in the kernel's dtype. */
typedef float (*dot_fn)(const float *x, const void *w, int64_t n);

/* y[i] += c * w[i], w in the kernel's dtype. */
typedef void (*axpy_fn)(float *y, float c, const void *w, int64_t n);

typedef struct kernels {
    dot_fn dot[3];       /* by mlr_float_dtype */
    axpy_fn axpy[3];
    const char *isa;     /* "avx512", "avx2", "portable" */
} kernels;

/* Picks the widest kernels this CPU runs. */
void kernels_select(kernels *k);

/* One element of a weight vector as f32. */
float weight_at(const void *w, int32_t dtype, int64_t i);

/* y[t, o] = dot(x[t, :], W[o, :]) (+ bias[o]) for t < n_tokens, o < n_out.
 * x: [n_tokens, n_in] f32; W: [n_out, n_in] of w_dtype; bias: [n_out] of w_dtype or NULL; y: [n_tokens, n_out]. */
void matmul(const kernels *k, thread_pool *pool, float *y, const float *x, const void *w, int32_t w_dtype,
            const void *bias, int64_t n_tokens, int64_t n_in, int64_t n_out);

/* out = x / sqrt(mean(x^2) + eps) * w, for one row of n values. */
void rmsnorm(float *out, const float *x, const void *w, int32_t w_dtype, int64_t n, float eps);

/* In-place softmax over n values. */
void softmax(float *x, int64_t n);

#endif /* MLR_KERNELS_H */
