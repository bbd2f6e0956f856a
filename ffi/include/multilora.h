/*
 * multilora.h: the one C ABI between multilora's TypeScript side (bun:ffi) and its native code.
 *
 * Conventions: every symbol starts with mlr_; no global state; no exceptions or exit() cross this
 * boundary; every buffer's owner and lifetime is written beside the parameter that takes it.
 *
 * This first part holds the dtype conversion kernels the LoRA converter uses. The engine ABI (create,
 * enqueue, await_responses, cancel, stats, destroy) joins it in the engine's own section.
 */
#ifndef MULTILORA_H
#define MULTILORA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Float element types. The values are part of the ABI (src/engine/native.ts mirrors them). */
typedef enum mlr_float_dtype {
    MLR_DTYPE_F32 = 0,
    MLR_DTYPE_F16 = 1,
    MLR_DTYPE_BF16 = 2,
} mlr_float_dtype;

/*
 * Converts n elements from src (dtype src_dtype) to dst (dtype dst_dtype), multiplying each by scale in
 * f32 arithmetic first (pass 1.0f for none). Rounding is IEEE round-to-nearest-even; NaN stays NaN (quiet,
 * sign and leading payload bits kept; NaNs are never multiplied), +-Inf stays +-Inf, values beyond the destination's range
 * become +-Inf. Bit for bit the same as castFloats in src/formats/dtypes.ts.
 *
 * src: borrowed, read only during the call; n elements, any alignment.
 * dst: borrowed, written during the call; n elements, any alignment; must not overlap src.
 * Returns the number of NaN or +-Inf values written to dst, or UINT64_MAX for an unknown dtype.
 */
uint64_t mlr_cast_floats(const void *src, int32_t src_dtype, uint64_t n, float scale, void *dst,
                         int32_t dst_dtype);

#ifdef __cplusplus
}
#endif

#endif /* MULTILORA_H */
