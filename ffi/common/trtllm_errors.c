/*
 * mlr_trtllm_error_status: the one place where TensorRT-LLM executor error texts become mlr_status codes.
 *
 * The executor reports a request's LoRA problems only as a Response whose getErrorMsg() is the text of the
 * exception it caught (TLLM_CHECK_WITH_INFO texts arrive wrapped: "[TensorRT-LLM][ERROR] Assertion failed:
 * <text> (<file>:<line>)" plus a stack trace), so each rule below is a substring of the original text.
 * Texts are copied verbatim from NVIDIA/TensorRT-LLM at the blobs named in ffi/trtllm/README.md; when the
 * pinned version changes, re-read those files and update this table and tests/engine/trtllm-errors.test.ts.
 *
 * Plain C, no TensorRT-LLM headers: it is built into libmultilora.so as well, so it is tested everywhere.
 */
#include <stddef.h>
#include <string.h>

#include "multilora.h"

typedef struct error_rule {
    const char *needle; /* a substring of the executor's text */
    int32_t status;
} error_rule;

/* First match wins: the cache texts come before the validation texts. */
static const error_rule RULES[] = {
    /* cpp/tensorrt_llm/batch_manager/peftCacheManager.cpp, PeftCacheManager::addRequestPeft:
     *   "LoRA task " + std::to_string(taskId) + " not found in cache. Please send LoRA weights with request" */
    {"not found in cache. Please send LoRA weights with request", MLR_LORA_NOT_CACHED},

    /* peftCacheManager.cpp, addRequestPeft (rethrown LoraCacheFullException):
     *   "PEFT Cache is full. Could not store taskId=" + std::to_string(taskId) */
    {"PEFT Cache is full. Could not store taskId=", MLR_LORA_CACHE_FULL},
    /* cpp/tensorrt_llm/runtime/loraCache.cpp, LoraCache::claimPagesWithEvict */
    {"Cache is full. There are no done tasks to evict", MLR_LORA_CACHE_FULL},

    /* cpp/tensorrt_llm/runtime/loraUtils.cpp, loraValidateRequestTensorDims / loraValidateRequestTensors */
    {"lora_task_id must be set for LoRA inference", MLR_LORA_INVALID},
    {"Request for LoRA inference must have both lora_weights and lora_keys", MLR_LORA_INVALID},
    {"Invalid shape for lora_weights tensor", MLR_LORA_INVALID},
    {"Invalid shape for lora_keys tensor", MLR_LORA_INVALID},
    {"Expected batch dimension to be 1 for each lora request", MLR_LORA_INVALID},
    {"Expected lora weights to be in CPU memory", MLR_LORA_INVALID},
    /* the original has two spaces: "Expected  lora keys to have TYPE_INT32 but was " + dtype name */
    {"lora keys to have TYPE_INT32 but was", MLR_LORA_INVALID},
    {"Expected dim1 lora_weights and lora_keys to have the same size", MLR_LORA_INVALID},
    {"Expected dim2 of lora_keys to have a size in [", MLR_LORA_INVALID},
    {"Expected lora weights to be the same data type as base model", MLR_LORA_INVALID},
    {"Expected layerId to be in the range [0, numModelLayers)", MLR_LORA_INVALID},
    {"Expected adapterSize to be > 0", MLR_LORA_INVALID},
    /* "lora module " + moduleName + " not enabled for this model" */
    {" not enabled for this model", MLR_LORA_INVALID},
    /* "lora_weights has to few values for " + moduleName (sic) */
    {"lora_weights has to few values for ", MLR_LORA_INVALID},
    /* "Invalid low_rank (" + r + "). low_rank must be smaller than mMaxLowRank (" + max + ")" */
    {"low_rank must be smaller than mMaxLowRank", MLR_LORA_INVALID},

    /* peftCacheManager.cpp, PeftCacheManager::configureDataType (newer blob than the executor headers; see
     * ffi/trtllm/README.md): the adapter's dtype is not the engine's. */
    {"Unsupported LoRA weights dtype ", MLR_LORA_INVALID},
    {"PEFT cache supports one homogeneous LoRA dtype", MLR_LORA_INVALID},
};

int32_t mlr_trtllm_error_status(const char *text) {
    if (text == NULL || text[0] == '\0') return MLR_INTERNAL;
    for (size_t i = 0; i < sizeof RULES / sizeof RULES[0]; i++)
        if (strstr(text, RULES[i].needle) != NULL) return RULES[i].status;
    return MLR_INTERNAL;
}
