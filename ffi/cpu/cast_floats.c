/*
 * mlr_cast_floats: f32 / f16 / bf16 conversion with an optional f32 scale, round-to-nearest-even,
 * counting non-finite outputs. Works in blocks through an f32 scratch so each step is a simple loop the
 * compiler vectorises; the hot f32 -> bf16 path is one fused loop.
 */
#include <string.h>

#include "../common/dtype_size.h"
#include "dtype.h"
#include "multilora.h"

enum { BLOCK = 4096 };

/* ---------------------------------------------------------------------------------------------- */
/* block steps */

/* out[i] = f32(src[i]) for i < n */
static void decode_block(const unsigned char *src, int32_t dtype, size_t n, float *out) {
    if (dtype == MLR_DTYPE_F32) {
        memcpy(out, src, n * 4);
        return;
    }
    uint16_t h[BLOCK];
    memcpy(h, src, n * 2);
    if (dtype == MLR_DTYPE_BF16) {
        for (size_t i = 0; i < n; i++) out[i] = f32_from_bits((uint32_t)h[i] << 16);
    } else {
        for (size_t i = 0; i < n; i++) out[i] = f32_from_bits(f32_bits_from_f16(h[i]));
    }
}

/* dst = encode(values[i]) for i < n; returns the count of non-finite outputs */
static uint64_t encode_block(const float *values, size_t n, int32_t dtype, unsigned char *dst) {
    uint64_t bad = 0;
    if (dtype == MLR_DTYPE_F32) {
        for (size_t i = 0; i < n; i++) bad += (f32_bits(values[i]) & 0x7f800000u) == 0x7f800000u;
        memcpy(dst, values, n * 4);
        return bad;
    }
    uint16_t h[BLOCK];
    if (dtype == MLR_DTYPE_BF16) {
        for (size_t i = 0; i < n; i++) {
            h[i] = bf16_from_f32_bits(f32_bits(values[i]));
            bad += (h[i] & 0x7f80u) == 0x7f80u;
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            h[i] = f16_from_f32_bits(f32_bits(values[i]));
            bad += (h[i] & 0x7c00u) == 0x7c00u;
        }
    }
    memcpy(dst, h, n * 2);
    return bad;
}

uint64_t mlr_cast_floats(const void *src, int32_t src_dtype, uint64_t n, float scale, void *dst,
                         int32_t dst_dtype) {
    if (src_dtype < MLR_DTYPE_F32 || src_dtype > MLR_DTYPE_BF16) return UINT64_MAX;
    if (dst_dtype < MLR_DTYPE_F32 || dst_dtype > MLR_DTYPE_BF16) return UINT64_MAX;
    const unsigned char *in = src;
    unsigned char *out = dst;
    const size_t in_size = dtype_size(src_dtype);
    const size_t out_size = dtype_size(dst_dtype);
    float values[BLOCK];
    uint64_t bad = 0;
    for (uint64_t done = 0; done < n; done += BLOCK) {
        size_t m = (size_t)((n - done) < BLOCK ? (n - done) : BLOCK);
        decode_block(in + done * in_size, src_dtype, m, values);
        if (scale != 1.0f) {
            /* A NaN is not multiplied: it leaves quieted with its sign and payload, by rule rather than by
             * whatever the FPU does, so that the TypeScript implementation can match it bit for bit. */
            for (size_t i = 0; i < m; i++) {
                uint32_t u = f32_bits(values[i]);
                values[i] = ((u & 0x7fffffffu) > 0x7f800000u) ? f32_from_bits(u | 0x400000u) : values[i] * scale;
            }
        }
        bad += encode_block(values, m, dst_dtype, out + done * out_size);
    }
    return bad;
}
