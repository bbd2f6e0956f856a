/*
 * A stand-in for the TensorRT-LLM shim's mlr_trtllm_create, linked with the CPU engine's other sources into
 * a test library: it writes every mlr_trtllm_params field it receives into err, so a test can check what
 * the TypeScript side passes across the ABI where no TensorRT-LLM exists.
 */
#include <stdio.h>

#include "multilora.h"

int32_t mlr_trtllm_create(const mlr_trtllm_params *p, mlr_engine **engine, char *err, size_t err_len) {
    *engine = NULL;
    snprintf(err, err_len,
             "engine_dir=%s engine_dtype=%d max_lora_rank=%d num_layers=%d num_lora_modules=%d world_size=%d "
             "max_batch_size=%d max_num_tokens=%d gather_generation_logits=%d "
             "kv_cache_free_gpu_mem_fraction=%g kv_cache_reuse=%d lora_host_cache_bytes=%lld "
             "lora_device_cache_percent=%g lora_optimal_adapter_size=%d lora_max_adapter_size=%d max_loras=%d "
             "worker_path=%s",
             p->engine_dir, p->engine_dtype, p->max_lora_rank, p->num_layers, p->num_lora_modules, p->world_size,
             p->max_batch_size, p->max_num_tokens, p->gather_generation_logits,
             (double)p->kv_cache_free_gpu_mem_fraction, p->kv_cache_reuse, (long long)p->lora_host_cache_bytes,
             (double)p->lora_device_cache_percent, p->lora_optimal_adapter_size, p->lora_max_adapter_size,
             p->max_loras, p->worker_path ? p->worker_path : "(null)");
    return MLR_UNSUPPORTED;
}
