/* mlr_request_check: see request_check.h. Built into both engine libraries. */
#include "request_check.h"

#include "errbuf.h"

int32_t mlr_request_check(const mlr_request *q, const mlr_request_limits *limits, char *err, size_t err_len) {
    int32_t problems = 0;
#define CHECK(cond, ...)                           \
    if (!(cond)) {                                 \
        errbuf_add(err, err_len, __VA_ARGS__);     \
        problems++;                                \
    }
    CHECK(q->prompt && q->prompt_len > 0, "the prompt is empty");
    CHECK(q->max_new_tokens > 0, "max_new_tokens must be at least 1 (got %d)", q->max_new_tokens);
    if (limits->max_seq_len > 0) {
        CHECK((int64_t)q->prompt_len + q->max_new_tokens <= limits->max_seq_len,
              "prompt (%d tokens) + max_new_tokens (%d) exceeds max_seq_len %d", q->prompt_len, q->max_new_tokens,
              limits->max_seq_len);
    }
    for (int32_t i = 0; q->prompt && i < q->prompt_len; i++) {
        if (q->prompt[i] < 0 || (limits->vocab_size > 0 && q->prompt[i] >= limits->vocab_size)) {
            if (limits->vocab_size > 0) {
                CHECK(0, "prompt token %d at position %d is outside the vocabulary (0..%d)", q->prompt[i], i,
                      limits->vocab_size - 1);
            } else {
                CHECK(0, "prompt token %d at position %d is negative", q->prompt[i], i);
            }
            break;
        }
    }
    CHECK(q->temperature >= 0, "temperature must not be negative");
    CHECK(q->top_p > 0 && q->top_p <= 1, "top_p must be in (0, 1]");
    CHECK(q->min_p >= 0 && q->min_p <= 1, "min_p must be in [0, 1]");
    CHECK(q->top_k >= 0, "top_k must not be negative");
    CHECK(q->repetition_penalty > 0, "repetition_penalty must be positive");
    CHECK(q->top_logprobs >= -1 && q->top_logprobs <= MLR_MAX_TOP_LOGPROBS, "top_logprobs must be in -1..%d",
          MLR_MAX_TOP_LOGPROBS);
    CHECK(q->n_end_ids >= 0 && q->n_stop_ids >= 0 && (q->n_end_ids == 0 || q->end_ids) && (q->n_stop_ids == 0 || q->stop_ids),
          "end_ids / stop_ids are inconsistent");
    CHECK(q->n_logit_bias >= 0 && (q->n_logit_bias == 0 || (q->logit_bias_ids && q->logit_bias_values)),
          "logit_bias ids / values are inconsistent");
    for (int32_t i = 0; q->logit_bias_ids && q->logit_bias_values && i < q->n_logit_bias; i++) {
        const int32_t id = q->logit_bias_ids[i];
        const float value = q->logit_bias_values[i];
        if (id < 0 || (limits->vocab_size > 0 && id >= limits->vocab_size)) {
            if (limits->vocab_size > 0) {
                CHECK(0, "logit_bias token %d is outside the vocabulary (0..%d)", id, limits->vocab_size - 1);
            } else {
                CHECK(0, "logit_bias token %d is negative", id);
            }
            break;
        }
        if (!(value >= -100.0f && value <= 100.0f)) { /* also NaN and infinities */
            CHECK(0, "logit_bias value %g of token %d is not a number in [-100, 100]", (double)value, id);
            break;
        }
    }
    if (q->lora_weights) {
        /* A config of no columns is no config (its copy would be empty). Widths other than 3 or 4 are LoRA
         * content: they arrive as MLR_LORA_INVALID responses (the CPU cache's validation, the executor's
         * "Expected dim2 of lora_keys to have a size in [...]"). */
        CHECK(q->lora_config && q->lora_config_width > 0 && q->lora_rows > 0 && q->lora_row_len > 0 &&
                  (q->lora_weights_dtype >= MLR_DTYPE_F32 && q->lora_weights_dtype <= MLR_DTYPE_BF16),
              "LoRA weights need a config, rows, row length and a float dtype");
        CHECK(q->lora_task_id != 0, "LoRA weights need a task id other than 0");
    }
#undef CHECK
    return problems;
}
