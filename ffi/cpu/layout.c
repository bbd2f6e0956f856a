/*
 * mlr_layout: sizeof and offsetof of every ABI struct, so the TypeScript view can be checked against the
 * compiler's. Every field of multilora.h's structs is listed; a new field needs its line here.
 */
#include <stddef.h>
#include <string.h>

#include "multilora.h"

typedef struct layout_entry {
    const char *struct_name;
    const char *field; /* NULL: the struct itself */
    int64_t value;
} layout_entry;

#define SIZE(s) {#s, NULL, (int64_t)sizeof(s)}
#define FIELD(s, f) {#s, #f, (int64_t)offsetof(s, f)}

static const layout_entry LAYOUT[] = {
    SIZE(mlr_tensor),
    FIELD(mlr_tensor, name),
    FIELD(mlr_tensor, data),
    FIELD(mlr_tensor, dtype),
    FIELD(mlr_tensor, ndim),
    FIELD(mlr_tensor, shape),
    SIZE(mlr_model_config),
    FIELD(mlr_model_config, hidden_size),
    FIELD(mlr_model_config, intermediate_size),
    FIELD(mlr_model_config, num_layers),
    FIELD(mlr_model_config, num_heads),
    FIELD(mlr_model_config, num_kv_heads),
    FIELD(mlr_model_config, head_dim),
    FIELD(mlr_model_config, vocab_size),
    FIELD(mlr_model_config, max_position),
    FIELD(mlr_model_config, rms_norm_eps),
    FIELD(mlr_model_config, rope_theta),
    FIELD(mlr_model_config, rope_scaling),
    FIELD(mlr_model_config, rope_factor),
    FIELD(mlr_model_config, rope_low_freq_factor),
    FIELD(mlr_model_config, rope_high_freq_factor),
    FIELD(mlr_model_config, rope_original_max_position),
    FIELD(mlr_model_config, tie_word_embeddings),
    FIELD(mlr_model_config, attention_bias),
    SIZE(mlr_cpu_params),
    FIELD(mlr_cpu_params, model),
    FIELD(mlr_cpu_params, tensors),
    FIELD(mlr_cpu_params, n_tensors),
    FIELD(mlr_cpu_params, max_batch),
    FIELD(mlr_cpu_params, max_seq_len),
    FIELD(mlr_cpu_params, kv_cache_bytes),
    FIELD(mlr_cpu_params, threads),
    FIELD(mlr_cpu_params, prefill_chunk),
    FIELD(mlr_cpu_params, max_lora_rank),
    FIELD(mlr_cpu_params, lora_cache_bytes),
    FIELD(mlr_cpu_params, max_loras),
    FIELD(mlr_cpu_params, lora_dtype),
    SIZE(mlr_request),
    FIELD(mlr_request, prompt),
    FIELD(mlr_request, prompt_len),
    FIELD(mlr_request, max_new_tokens),
    FIELD(mlr_request, temperature),
    FIELD(mlr_request, top_k),
    FIELD(mlr_request, top_p),
    FIELD(mlr_request, min_p),
    FIELD(mlr_request, repetition_penalty),
    FIELD(mlr_request, frequency_penalty),
    FIELD(mlr_request, presence_penalty),
    FIELD(mlr_request, seed),
    FIELD(mlr_request, end_ids),
    FIELD(mlr_request, n_end_ids),
    FIELD(mlr_request, stop_ids),
    FIELD(mlr_request, n_stop_ids),
    FIELD(mlr_request, top_logprobs),
    FIELD(mlr_request, lora_task_id),
    FIELD(mlr_request, lora_weights),
    FIELD(mlr_request, lora_weights_dtype),
    FIELD(mlr_request, lora_rows),
    FIELD(mlr_request, lora_row_len),
    FIELD(mlr_request, lora_config),
    FIELD(mlr_request, lora_config_width),
    FIELD(mlr_request, lora_scale),
    SIZE(mlr_response),
    FIELD(mlr_response, request_id),
    FIELD(mlr_response, status),
    FIELD(mlr_response, finish_reason),
    FIELD(mlr_response, token),
    FIELD(mlr_response, logprob),
    FIELD(mlr_response, n_top),
    FIELD(mlr_response, top_ids),
    FIELD(mlr_response, top_logprobs),
    FIELD(mlr_response, error),
    SIZE(mlr_capabilities),
    FIELD(mlr_capabilities, lora_pin),
    FIELD(mlr_capabilities, lora_release),
    FIELD(mlr_capabilities, lora_task_listing),
    FIELD(mlr_capabilities, top_logprobs),
    FIELD(mlr_capabilities, lora_scale),
    FIELD(mlr_capabilities, max_top_logprobs),
    FIELD(mlr_capabilities, max_lora_rank),
    FIELD(mlr_capabilities, lora_dtype),
    SIZE(mlr_stats),
    FIELD(mlr_stats, running),
    FIELD(mlr_stats, queued),
    FIELD(mlr_stats, kv_bytes_used),
    FIELD(mlr_stats, kv_bytes_capacity),
    FIELD(mlr_stats, lora_bytes_used),
    FIELD(mlr_stats, lora_bytes_capacity),
    FIELD(mlr_stats, lora_tasks),
    FIELD(mlr_stats, max_loras),
    FIELD(mlr_stats, lora_puts),
    FIELD(mlr_stats, lora_hits),
    FIELD(mlr_stats, lora_misses),
    FIELD(mlr_stats, lora_evictions),
    FIELD(mlr_stats, steps),
    FIELD(mlr_stats, tokens_generated),
    SIZE(mlr_lora_task_stats),
    FIELD(mlr_lora_task_stats, task_id),
    FIELD(mlr_lora_task_stats, bytes),
    FIELD(mlr_lora_task_stats, active),
    FIELD(mlr_lora_task_stats, pinned),
    FIELD(mlr_lora_task_stats, release_pending),
    FIELD(mlr_lora_task_stats, rows),
    FIELD(mlr_lora_task_stats, last_use),
};

int64_t mlr_layout(const char *struct_name, const char *field) {
    for (size_t i = 0; i < sizeof LAYOUT / sizeof LAYOUT[0]; i++) {
        const layout_entry *e = &LAYOUT[i];
        if (strcmp(e->struct_name, struct_name) != 0) continue;
        if (field == NULL ? e->field == NULL : (e->field != NULL && strcmp(e->field, field) == 0)) return e->value;
    }
    return -1;
}
