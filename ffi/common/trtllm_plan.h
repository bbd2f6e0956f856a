/*
 * What the TensorRT-LLM shim asks of the executor for one request, decided in plain C so that it is built
 * into libmultilora.so too and tested where no TensorRT-LLM exists (tests/engine/trtllm-plan.test.ts).
 */
#ifndef MLR_TRTLLM_PLAN_H
#define MLR_TRTLLM_PLAN_H

#include <stdint.h>

#include "multilora.h"

/* SamplingConfig fields: each set_* says whether the shim sets it (else it stays std::nullopt). */
typedef struct mlr_trtllm_sampling_plan {
    int32_t set_top_k;
    int32_t top_k;
    int32_t set_top_p;
    float top_p;
    int32_t set_temperature;
    float temperature;
    int32_t set_min_p;
    float min_p;
} mlr_trtllm_sampling_plan;

void mlr_trtllm_plan_sampling(const mlr_request *request, mlr_trtllm_sampling_plan *out);

#endif
