/*
 * mlr_enum_name: the constants of multilora.h's enums by value, so the TypeScript copies can be checked
 * against the header. Each enum is one switch without a default: -Wall's -Wswitch (an error here) fails the
 * build when the header gains a constant this file does not name. Built into both engine libraries.
 */
#include <stddef.h>
#include <string.h>

#include "multilora.h"

#define NAME(c) \
    case c: return #c

static const char *status_name(mlr_status v) {
    switch (v) {
        NAME(MLR_OK);
        NAME(MLR_INVALID_ARGUMENT);
        NAME(MLR_LORA_NOT_CACHED);
        NAME(MLR_LORA_CACHE_FULL);
        NAME(MLR_LORA_INVALID);
        NAME(MLR_CANCELLED);
        NAME(MLR_UNSUPPORTED);
        NAME(MLR_INTERNAL);
        NAME(MLR_OUT_OF_MEMORY);
        NAME(MLR_NOT_FOUND);
    }
    return NULL;
}

static const char *finish_name(mlr_finish v) {
    switch (v) {
        NAME(MLR_FINISH_NONE);
        NAME(MLR_FINISH_LENGTH);
        NAME(MLR_FINISH_END_ID);
        NAME(MLR_FINISH_STOP_ID);
        NAME(MLR_FINISH_CANCELLED);
        NAME(MLR_FINISH_ERROR);
        NAME(MLR_FINISH_CONSTRAINT);
    }
    return NULL;
}

static const char *dtype_name(mlr_float_dtype v) {
    switch (v) {
        NAME(MLR_DTYPE_F32);
        NAME(MLR_DTYPE_F16);
        NAME(MLR_DTYPE_BF16);
    }
    return NULL;
}

static const char *lora_module_name(mlr_lora_module v) {
    switch (v) {
        NAME(MLR_LORA_ATTN_QKV);
        NAME(MLR_LORA_ATTN_Q);
        NAME(MLR_LORA_ATTN_K);
        NAME(MLR_LORA_ATTN_V);
        NAME(MLR_LORA_ATTN_DENSE);
        NAME(MLR_LORA_MLP_H_TO_4H);
        NAME(MLR_LORA_MLP_4H_TO_H);
        NAME(MLR_LORA_MLP_GATE);
        NAME(MLR_LORA_CROSS_ATTN_QKV);
        NAME(MLR_LORA_CROSS_ATTN_Q);
        NAME(MLR_LORA_CROSS_ATTN_K);
        NAME(MLR_LORA_CROSS_ATTN_V);
        NAME(MLR_LORA_CROSS_ATTN_DENSE);
        NAME(MLR_LORA_MOE_H_TO_4H);
        NAME(MLR_LORA_MOE_4H_TO_H);
        NAME(MLR_LORA_MOE_GATE);
        NAME(MLR_LORA_MOE_ROUTER);
        NAME(MLR_LORA_MLP_ROUTER);
        NAME(MLR_LORA_MLP_GATE_UP);
    }
    return NULL;
}

#undef NAME

const char *mlr_enum_name(const char *enum_name, int32_t value) {
    if (!enum_name) return NULL;
    if (strcmp(enum_name, "mlr_status") == 0) return status_name((mlr_status)value);
    if (strcmp(enum_name, "mlr_finish") == 0) return finish_name((mlr_finish)value);
    if (strcmp(enum_name, "mlr_float_dtype") == 0) return dtype_name((mlr_float_dtype)value);
    if (strcmp(enum_name, "mlr_lora_module") == 0) return lora_module_name((mlr_lora_module)value);
    return NULL;
}
