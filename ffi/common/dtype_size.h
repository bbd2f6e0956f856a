/*
 * dtype_size: bytes per element of an mlr_float_dtype, the one definition every part of ffi/ uses (the CPU
 * engine, the float converter and the TensorRT-LLM shim). Callers check that the dtype is one of the three.
 */
#ifndef MLR_DTYPE_SIZE_H
#define MLR_DTYPE_SIZE_H

#include <stdint.h>

#include "multilora.h"

/* 4 for MLR_DTYPE_F32, 2 for MLR_DTYPE_F16 and MLR_DTYPE_BF16. */
static inline int32_t dtype_size(int32_t dtype) { return dtype == MLR_DTYPE_F32 ? 4 : 2; }

#endif /* MLR_DTYPE_SIZE_H */
