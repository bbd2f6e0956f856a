/*
 * multilora.h: the one C ABI between multilora's TypeScript side (bun:ffi, src/engine/native.ts) and its
 * engines: the reference CPU engine (ffi/cpu) and the TensorRT-LLM shim (ffi/trtllm).
 *
 * Modelled on TensorRT-LLM's executor so the shim stays thin: an opaque engine, requests enqueued and
 * answered asynchronously by id, LoRA adapters named by integer task ids whose weights travel with a
 * request. Conventions:
 *   - every symbol starts with mlr_ / MLR_; calls return an mlr_status and write results to out-parameters;
 *   - no global state, no exceptions, no exit() cross this boundary;
 *   - every pointer parameter says who owns it and for how long ("borrowed for the call" = the callee
 *     copies what it keeps before returning);
 *   - LoRA cache and validation errors arrive only as responses, never from mlr_enqueue, on every backend;
 *   - mlr_layout() exports sizeof / offsetof of every struct here, and mlr_enum_name() the constants of every
 *     enum, so the TypeScript side can check its view (tests/engine/abi-layout.test.ts).
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
 * LoRA module ids: the first column of an adapter's config rows (TensorRT-LLM's LoraModule::ModuleType,
 * ARCHITECTURE.md section 2). Stable values, part of the ABI (src/formats/lora-modules.ts mirrors them).
 * The CPU engine runs the Llama ones (attn_q/k/v/dense, mlp_h_to_4h/4h_to_h/gate, attn_qkv, mlp_gate_up).
 */
typedef enum mlr_lora_module {
    MLR_LORA_ATTN_QKV = 0,        /* fused q, k, v: B's outputs are [q; k; v] */
    MLR_LORA_ATTN_Q = 1,          /* q_proj */
    MLR_LORA_ATTN_K = 2,          /* k_proj */
    MLR_LORA_ATTN_V = 3,          /* v_proj */
    MLR_LORA_ATTN_DENSE = 4,      /* o_proj */
    MLR_LORA_MLP_H_TO_4H = 5,     /* gate_proj */
    MLR_LORA_MLP_4H_TO_H = 6,     /* down_proj */
    MLR_LORA_MLP_GATE = 7,        /* up_proj */
    MLR_LORA_CROSS_ATTN_QKV = 8,
    MLR_LORA_CROSS_ATTN_Q = 9,
    MLR_LORA_CROSS_ATTN_K = 10,
    MLR_LORA_CROSS_ATTN_V = 11,
    MLR_LORA_CROSS_ATTN_DENSE = 12,
    MLR_LORA_MOE_H_TO_4H = 13,
    MLR_LORA_MOE_4H_TO_H = 14,
    MLR_LORA_MOE_GATE = 15,
    MLR_LORA_MOE_ROUTER = 16,
    MLR_LORA_MLP_ROUTER = 17,
    MLR_LORA_MLP_GATE_UP = 18,    /* fused gate_up_proj: B's outputs are [up; gate] */
} mlr_lora_module;

#define MLR_LORA_MODULE_COUNT 19 /* module ids are 0 .. MLR_LORA_MODULE_COUNT - 1 */

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

/* ============================================================================================== */
/* Status codes (stable values: part of the ABI)                                                    */

typedef enum mlr_status {
    MLR_OK = 0,
    MLR_INVALID_ARGUMENT = 1, /* the request or parameter is wrong; the text says which */
    MLR_LORA_NOT_CACHED = 2,  /* a task id without weights whose adapter is not in the cache */
    MLR_LORA_CACHE_FULL = 3,  /* no room: every cached adapter is active or pinned */
    MLR_LORA_INVALID = 4,     /* the adapter does not fit the model (or could never fit the cache); the text lists every problem */
    MLR_CANCELLED = 5,
    MLR_UNSUPPORTED = 6,      /* this backend cannot do it (see mlr_capabilities) */
    MLR_INTERNAL = 7,         /* a bug */
    MLR_OUT_OF_MEMORY = 8,    /* an allocation failed; as a response: the request ended, the engine serves on */
    MLR_NOT_FOUND = 9,        /* unknown request id or task id */
} mlr_status;

/* Why a request ended (mlr_response.finish_reason). */
typedef enum mlr_finish {
    MLR_FINISH_NONE = 0,      /* more responses follow */
    MLR_FINISH_LENGTH = 1,    /* max_new_tokens reached (or the sequence length limit) */
    MLR_FINISH_END_ID = 2,    /* generated one of end_ids (included as the last token) */
    MLR_FINISH_STOP_ID = 3,   /* generated one of stop_ids (included as the last token) */
    MLR_FINISH_CANCELLED = 4,
    MLR_FINISH_ERROR = 5,     /* status and error say why */
    MLR_FINISH_CONSTRAINT = 6, /* the request's constraint is complete and allows nothing more (the last
                                * token is the constraint's, not an end id) */
} mlr_finish;

/*
 * The name of a constant of an ABI enum, so other languages' copies of the values can be checked against
 * this header (tests/engine/abi-layout.test.ts checks src/engine/native.ts and src/formats/lora-modules.ts).
 * enum_name: "mlr_status", "mlr_finish", "mlr_float_dtype" or "mlr_lora_module"; borrowed for the call.
 * Returns the constant's name ("MLR_LORA_NOT_CACHED" for ("mlr_status", 2)), or NULL when value is not a
 * constant of that enum or the enum is unknown. The string is static: never freed, valid while the
 * library is loaded. In both libraries (ffi/common/enum_names.c).
 */
const char *mlr_enum_name(const char *enum_name, int32_t value);

/* ============================================================================================== */
/* Creating an engine                                                                               */

typedef struct mlr_engine mlr_engine; /* opaque */

/* One weight tensor of the model, as Hugging Face names it ("model.layers.0.self_attn.q_proj.weight"). */
typedef struct mlr_tensor {
    const char *name;  /* borrowed for the call */
    const void *data;  /* borrowed until mlr_destroy (for the call only with copy_weights); never written */
    int32_t dtype;     /* mlr_float_dtype */
    int32_t ndim;      /* 1 or 2 */
    int64_t shape[2];
} mlr_tensor;

/* A Llama-family architecture (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM). */
typedef struct mlr_model_config {
    int32_t hidden_size;
    int32_t intermediate_size;
    int32_t num_layers;
    int32_t num_heads;
    int32_t num_kv_heads;
    int32_t head_dim;
    int32_t vocab_size;
    int32_t max_position;        /* max_position_embeddings */
    float rms_norm_eps;
    float rope_theta;
    int32_t rope_scaling;        /* 0 none, 1 llama3 */
    float rope_factor;           /* llama3 scaling parameters */
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    int32_t rope_original_max_position;
    int32_t tie_word_embeddings; /* lm_head is embed_tokens */
    int32_t attention_bias;      /* q/k/v projections carry biases (Qwen2) */
} mlr_model_config;

typedef struct mlr_cpu_params {
    mlr_model_config model;
    const mlr_tensor *tensors;   /* borrowed for the call (the data they point to: see mlr_tensor) */
    int32_t n_tensors;
    int32_t max_batch;           /* sequences decoded together; default 8 */
    int32_t max_seq_len;         /* prompt + generated tokens; default min(4096, max_position) */
    int64_t kv_cache_bytes;      /* KV budget; default 0 = max_batch sequences of max_seq_len */
    int32_t threads;             /* default 0 = every online core */
    int32_t prefill_chunk;       /* prompt tokens per step, shared by new requests; default 256 */
    int32_t max_lora_rank;       /* default 64 */
    int64_t lora_cache_bytes;    /* adapter cache capacity; default 256 MiB */
    int32_t max_loras;           /* most adapters cached at once; default 0 = limited by bytes only */
    int32_t lora_dtype;          /* dtype adapters must have; default -1 = the model weights' dtype */
    int32_t kv_cache_reuse;      /* prefix reuse: 1 (default) keeps the K/V of whole blocks of sequences in the
                                  * KV budget's free room for later prompts that start with the same tokens,
                                  * adapter and lora_scale; 0 off */
    int32_t kv_block_tokens;     /* positions per reused block, 1..4096; default 32 */
    int32_t copy_weights;        /* 1: the tensors' data is borrowed for the call only: the engine copies what
                                  * it reads later (every tensor it does not repack into its own layout), so
                                  * the caller may release that memory, or the file under it may change, once
                                  * mlr_cpu_create returns; default 0: borrowed until mlr_destroy */
} mlr_cpu_params;

void mlr_cpu_params_default(mlr_cpu_params *params);

/*
 * Builds a CPU engine over the tensors (no copy unless copy_weights) and starts its scheduler thread.
 * engine: set on success; owned by the caller, freed with mlr_destroy.
 * err: caller's buffer, filled with every problem found (missing tensors, wrong shapes, unsupported
 * settings) when the status is not MLR_OK.
 */
int32_t mlr_cpu_create(const mlr_cpu_params *params, mlr_engine **engine, char *err, size_t err_len);

/*
 * The TensorRT-LLM backend: ffi/trtllm, a separate library (libmultilora-trtllm.so, CMake -DWITH_TRTLLM=ON)
 * built only where TensorRT-LLM is installed. The TypeScript side reads the engine's config.json
 * (src/formats/trtllm-engine-config.ts) and fills these fields; negative values mean "TensorRT-LLM's own
 * default" (std::nullopt, or the constructor's default argument).
 */
typedef struct mlr_trtllm_params {
    const char *engine_dir;      /* trtllm-build output (config.json, rank<N>.engine); borrowed for the call */
    int32_t engine_dtype;        /* mlr_float_dtype of the engine (adapters must have it) */
    int32_t max_lora_rank;       /* build_config.lora_config.max_lora_rank (0 = engine built without LoRA) */
    int32_t num_layers;          /* for max_loras sizing */
    int32_t num_lora_modules;    /* len(lora_target_modules) */
    int32_t world_size;          /* tp_size x pp_size; > 1 runs the executor in orchestrator mode */
    int32_t max_batch_size;      /* < 0 = the engine's */
    int32_t max_num_tokens;      /* < 0 = the engine's */
    int32_t gather_generation_logits; /* engine built with --gather_generation_logits: top-k logprobs work */
    float kv_cache_free_gpu_mem_fraction; /* < 0 = TensorRT-LLM's default (0.9) */
    int32_t kv_cache_reuse;      /* block reuse: 0 off, 1 on (serve's default), < 0 = TensorRT-LLM's default */
    int64_t lora_host_cache_bytes;  /* PeftCacheConfig hostCacheSize; < 0 = default (1 GiB) */
    float lora_device_cache_percent; /* PeftCacheConfig deviceCachePercent; < 0 = default */
    int32_t lora_optimal_adapter_size; /* < 0 = default (8) */
    int32_t lora_max_adapter_size;     /* < 0 = default (64) */
    int32_t max_loras;           /* > 0: numDeviceModuleLayer = max_lora_rank x layers x modules x max_loras */
    const char *worker_path;     /* orchestrator worker executable (<tensorrt_llm>/bin/executorWorker); required
                                  * when world_size > 1: the executor has no default */
} mlr_trtllm_params;

/* Builds the executor over engine_dir. Every exception is caught; err says what went wrong. */
int32_t mlr_trtllm_create(const mlr_trtllm_params *params, mlr_engine **engine, char *err, size_t err_len);

/*
 * Maps an executor error text to an mlr_status ("LoRA task <id> not found in cache..." ->
 * MLR_LORA_NOT_CACHED, "...Cache is full..." -> MLR_LORA_CACHE_FULL, LoRA validation texts ->
 * MLR_LORA_INVALID, anything else -> MLR_INTERNAL). In libmultilora.so too (no TensorRT-LLM headers), so it
 * is unit-tested everywhere.
 */
int32_t mlr_trtllm_error_status(const char *text);

/* Stops the scheduler (running requests end without further responses) and frees everything. */
void mlr_destroy(mlr_engine *engine);

/* ============================================================================================== */
/* Requests and responses                                                                           */

#define MLR_MAX_TOP_LOGPROBS 20

typedef struct mlr_request {
    const int32_t *prompt;       /* borrowed for the call; used as given (no BOS added) */
    int32_t prompt_len;
    int32_t max_new_tokens;      /* default 16 */
    float temperature;           /* 0 = greedy; default 1 */
    int32_t top_k;               /* 0 = off */
    float top_p;                 /* 1 = off */
    float min_p;                 /* 0 = off */
    float repetition_penalty;    /* 1 = off; on prompt and generated tokens (Hugging Face's rule) */
    float frequency_penalty;     /* 0 = off; on generated tokens (OpenAI's rule) */
    float presence_penalty;      /* 0 = off; on generated tokens */
    uint64_t seed;               /* the same seed gives the same tokens, whatever else is batched */
    const int32_t *end_ids;      /* borrowed for the call */
    int32_t n_end_ids;
    const int32_t *stop_ids;     /* borrowed for the call */
    int32_t n_stop_ids;
    int32_t top_logprobs;        /* -1 = no logprobs; 0 = the chosen token's; k = also the k most likely */
    uint64_t lora_task_id;       /* 0 = the base model */
    const void *lora_weights;    /* NULL = the id alone; else [lora_rows, lora_row_len], copied before return */
    int32_t lora_weights_dtype;  /* mlr_float_dtype */
    int64_t lora_rows;
    int64_t lora_row_len;
    const int32_t *lora_config;  /* [lora_rows, lora_config_width] int32, copied before return */
    int32_t lora_config_width;   /* 3, or 4 with is_dora last */
    float lora_scale;            /* multiplies B's contribution; default 1 */
    const struct mlr_matcher *constraint; /* NULL = none; else borrowed for the call: the engine copies it
                                  * (mlr_matcher_clone) and samples only tokens it allows; end_ids and
                                  * stop_ids only where it is complete. Its grammar's vocab must not be larger
                                  * than the model's vocabulary. MLR_UNSUPPORTED where capabilities.constraints
                                  * is 0 */
    const int32_t *logit_bias_ids;   /* borrowed for the call (the engine copies them): token ids whose logits */
    const float *logit_bias_values;  /* get logit_bias_values[i] added before sampling (before penalties,
                                  * temperature, top-k/p and min-p; logprobs stay the raw model's, see
                                  * mlr_response). Values in [-100, 100]; -100 bans the token (-inf). An id may
                                  * repeat: its values add. A token the constraint disallows stays disallowed
                                  * whatever its bias; where the bias bans every allowed token, the request ends
                                  * with MLR_INVALID_ARGUMENT. MLR_UNSUPPORTED where capabilities.logit_bias is 0 */
    int32_t n_logit_bias;        /* 0 = none */
} mlr_request;

void mlr_request_default(mlr_request *request);

/*
 * The shim's sampling decision for a request, as text ("topK=1 topP=unset temperature=unset minP=unset"),
 * and where a streaming result's new tokens' logprobs start. Plain C (ffi/common/trtllm_plan.c), in
 * libmultilora.so too, so both are tested where no TensorRT-LLM exists. Returns snprintf's count.
 */
int32_t mlr_trtllm_sampling_text(const mlr_request *request, char *buf, size_t len);
int64_t mlr_trtllm_logprob_offset(int64_t n_logprobs, int64_t n_tokens);

/* One generated token, or the end of a request. Log-probabilities are the log-softmax of the model's
 * logits before any sampling transform (temperature, penalties, top-k/p, min-p), where the backend's
 * mlr_capabilities.raw_logprobs is 1; where it is 0 they are the sampling layer's (see there).
 * A failed forward step (out of memory) ends every request that had tokens in it with one response of
 * status MLR_OUT_OF_MEMORY and finish_reason ERROR; tokens answered before it stand, their slots and KV are
 * freed, and the engine goes on with the other requests and later ones. */
typedef struct mlr_response {
    uint64_t request_id;
    int32_t status;              /* MLR_OK, or why the request failed (then finish_reason is ERROR) */
    int32_t finish_reason;       /* mlr_finish */
    int32_t token;               /* -1 when the response carries no token */
    int32_t has_logprob;         /* 1: logprob (and n_top, top_*) are set: the request asked for logprobs
                                  * (top_logprobs >= 0) and this response carries its token's (on the CPU
                                  * engine, every token response of such a request). 0: no logprob (logprob
                                  * is then 0 and means nothing; 0.0 itself is a valid logprob, that of a
                                  * token of probability 1) */
    float logprob;
    int32_t n_top;
    int32_t top_ids[MLR_MAX_TOP_LOGPROBS];
    float top_logprobs[MLR_MAX_TOP_LOGPROBS];
    char error[256];             /* set when status is not MLR_OK */
} mlr_response;

/*
 * Queues a request and returns its id at once. Checks only the request's own arguments (empty prompt,
 * token ids out of range, a prompt longer than max_seq_len, ...); LoRA problems arrive as responses.
 */
int32_t mlr_enqueue(mlr_engine *engine, const mlr_request *request, uint64_t *request_id, char *err,
                    size_t err_len);

/*
 * Waits up to timeout_ms (0 = do not wait) for responses and copies up to capacity of them into out
 * (caller's buffer). *n_out receives the count. Blocks only the calling thread.
 * No response is ever dropped: the CPU engine reserves queue room for a step's responses before it runs the
 * step, and when the queue cannot grow (out of memory) it waits for this call to drain it first.
 */
int32_t mlr_await_responses(mlr_engine *engine, mlr_response *out, int32_t capacity, int32_t timeout_ms,
                            int32_t *n_out);

/* Cancels a queued or running request; its slot is free before the next step; a final CANCELLED response
 * follows. MLR_NOT_FOUND when the request already ended. */
int32_t mlr_cancel(mlr_engine *engine, uint64_t request_id);

/* ============================================================================================== */
/* What a backend can do, LoRA cache control, statistics                                           */

typedef struct mlr_capabilities {
    int32_t lora_pin;            /* mlr_lora_pin works */
    int32_t lora_release;        /* mlr_lora_release works */
    int32_t lora_task_listing;   /* mlr_stats lists cached tasks exactly */
    int32_t top_logprobs;        /* top_logprobs > 0 works */
    int32_t lora_scale;          /* per-request lora_scale works */
    int32_t max_top_logprobs;
    int32_t max_lora_rank;
    int32_t lora_dtype;          /* mlr_float_dtype adapters must have */
    int32_t raw_logprobs;        /* 1: logprobs are the log-softmax of the raw logits, as mlr_response says;
                                  * 0: they are the sampling layer's (after temperature and penalties):
                                  * TensorRT-LLM engines built without --gather_generation_logits */
    int32_t constraints;         /* 1: mlr_request.constraint works */
    int32_t logit_bias;          /* 1: mlr_request.logit_bias_* works */
} mlr_capabilities;

int32_t mlr_capabilities_get(mlr_engine *engine, mlr_capabilities *out);

/* Pins (on = 1) or unpins a cached task. Pinned tasks are never evicted; pinned bytes are capped at the
 * capacity minus one max-size adapter (MLR_LORA_CACHE_FULL beyond). */
int32_t mlr_lora_pin(mlr_engine *engine, uint64_t task_id, int32_t on, char *err, size_t err_len);

/* Evicts a task now, or as soon as no request uses it (and unpins it). */
int32_t mlr_lora_release(mlr_engine *engine, uint64_t task_id, char *err, size_t err_len);

typedef struct mlr_stats {
    int32_t running;
    int32_t queued;
    int64_t kv_bytes_used;
    int64_t kv_bytes_capacity;
    int64_t lora_bytes_used;
    int64_t lora_bytes_capacity;
    int32_t lora_tasks;
    int32_t max_loras;           /* 0 = no count limit */
    int64_t lora_puts;           /* adapters stored */
    int64_t lora_hits;           /* requests whose task was cached */
    int64_t lora_misses;         /* requests whose task was not (with or without weights) */
    int64_t lora_evictions;
    int64_t steps;               /* forward steps run */
    int64_t tokens_generated;
    int64_t prefix_query_tokens; /* prompt tokens looked up in the prefix cache */
    int64_t prefix_hit_tokens;   /* of those, reused (their K/V copied, not computed) */
    int64_t prefix_reused_blocks;
    int64_t prefix_blocks;       /* blocks cached now (TensorRT-LLM: 0, it does not say) */
    int64_t prefix_bytes;        /* their memory, within kv_bytes_capacity beside kv_bytes_used */
} mlr_stats;

typedef struct mlr_lora_task_stats {
    uint64_t task_id;
    int64_t bytes;
    int32_t active;              /* requests using it now */
    int32_t pinned;
    int32_t release_pending;     /* released while active: goes when the last request ends */
    int32_t rows;
    int64_t last_use;            /* step at which a request last used it (LRU order) */
} mlr_lora_task_stats;

/* Fills *out, and up to capacity task entries (most recently used first; *n_tasks = how many).
 * MLR_OUT_OF_MEMORY when the task listing could not be built (*out is filled, *n_tasks = 0). */
int32_t mlr_stats_get(mlr_engine *engine, mlr_stats *out, mlr_lora_task_stats *tasks, int32_t capacity,
                      int32_t *n_tasks);

/* ============================================================================================== */
/* Direct scoring (tests, prompt logprobs)                                                          */

/*
 * Runs the model over tokens[0..n) as one fresh sequence, with an adapter that is cached (task 0 = none),
 * and writes the logits of every position to logits (caller's buffer of n x vocab_size floats). Waits for
 * the current step to finish; does not disturb running requests. MLR_OUT_OF_MEMORY (err says so) when its
 * buffers or a forward pass's scratch could not be allocated; logits are then not valid.
 */
int32_t mlr_forward_logits(mlr_engine *engine, const int32_t *tokens, int32_t n, uint64_t lora_task_id,
                           float lora_scale, float *logits, char *err, size_t err_len);

/*
 * TEST ONLY (nothing in production calls it): makes the next n scratch allocations of this engine's
 * forward passes fail as if memory were exhausted (n = 0 clears). Scratch allocations are the work buffers
 * a forward pass takes per parallel task (attention scores, LoRA deltas), whether the pass is a scheduler
 * step or mlr_forward_logits; so a failure ends the requests of that step (see mlr_response) or fails that
 * mlr_forward_logits call. Per engine (a counter in the engine, no global state); safe to call from any
 * thread. MLR_INVALID_ARGUMENT for n < 0; MLR_UNSUPPORTED on the TensorRT-LLM library.
 */
int32_t mlr_cpu_test_fail_allocs(mlr_engine *engine, int32_t n);

/*
 * TEST ONLY: the CPU engine's constraint masks and its mask thread. A step's constrained rows are handed to
 * the engine's mask thread, which fills their masks while the forward pass runs; after the pass the
 * scheduler computes those the thread has not started (ffi/cpu/engine.c). mode: 1 that (the default);
 * 0 every mask computed by the scheduler after the pass (no overlap); 2 the scheduler waits for the thread
 * to compute every one; -1 leaves the mode. *precomputed / *computed_inline (may be NULL): masks computed
 * by the mask thread / by the scheduler since the engine was created. Per engine; any thread. The tokens
 * never depend on the mode. MLR_INVALID_ARGUMENT for another mode; MLR_UNSUPPORTED on the TensorRT-LLM
 * library.
 */
int32_t mlr_cpu_test_mask_overlap(mlr_engine *engine, int32_t mode, int64_t *precomputed, int64_t *computed_inline);

/* ============================================================================================== */
/* Benchmark kernels (CPU library only: bench/engine.ts, bench/native-yardstick.ts, the kernel tests)   */
/*
 * Yardsticks measured on the machine itself, and the CPU engine's matrix product on its own. Not part of
 * serving; the TensorRT-LLM library does not have them. Paths: "portable", "avx2", "avx512",
 * "avx512_bf16" (ffi/cpu/kernels.h).
 */

/* The kernel path a CPU engine created now uses (the widest this CPU runs, but avx512 rather than
 * avx512_bf16 on Intel CPUs, whose vdpbf16ps is slower than two f32 FMAs; or the one the environment
 * variable MULTILORA_CPU_KERNELS picks). A static string. */
const char *mlr_cpu_kernel_path(void);

/* Read bandwidth in bytes/s: `threads` threads read a buffer of `bytes` (filled first) `rounds` times with
 * the widest vector loads; the best round. 0 when the buffer could not be allocated. */
double mlr_bench_read_bandwidth(int32_t threads, int64_t bytes, int32_t rounds);

/* Peak multiply-add rate in FLOP/s on `threads` threads (independent accumulators in registers, best of
 * three ~0.1 s runs): kind 0 f32 FMA on the widest vectors, kind 1 vdpbf16ps (a bf16 pair product-sum
 * per f32 lane counts 4 FLOP). 0 when this CPU has no such instruction. */
double mlr_bench_peak_flops(int32_t threads, int32_t kind);

/* y[t, o] = dot(x[t, :], W[o, :]) for t < n_tokens, o < n_out as the CPU engine computes it, on kernel path
 * `path` (NULL: mlr_cpu_kernel_path()) and `threads` threads. x [n_tokens, n_in] f32, W [n_out, n_in] of
 * w_dtype, y [n_tokens, n_out]. MLR_OK; MLR_UNSUPPORTED when this CPU cannot run the path;
 * MLR_INVALID_ARGUMENT for bad sizes or dtype; MLR_OUT_OF_MEMORY. */
int32_t mlr_bench_matmul(const char *path, int32_t threads, float *y, const float *x, const void *w, int32_t w_dtype,
                         int64_t n_tokens, int64_t n_in, int64_t n_out);

/* The LoRA expansion as the CPU engine computes it (one thread), on kernel path `path` (NULL: the
 * engine's): y[t, o] += scale[t] * sum_r mid[t, r] * Bt[r, o] for t < n_tokens, o < n_out, the sum in r
 * order. y [n_tokens, n_out], mid [n_tokens, rank] f32, Bt [rank, n_out] of w_dtype. MLR_OK;
 * MLR_UNSUPPORTED when this CPU cannot run the path; MLR_INVALID_ARGUMENT for bad sizes or dtype. */
int32_t mlr_bench_lora_expand(const char *path, float *y, const float *mid, const float *scale, const void *bt,
                              int32_t w_dtype, int64_t n_tokens, int32_t rank, int64_t n_out);

/* ============================================================================================== */
/* Output constraints (structured output): a vocabulary as bytes, compiled programs, matchers      */
/*
 * A constraint limits a sequence's output, token by token, to a language described by a program that the
 * TypeScript side compiles (JSON Schema, regex, choices: src/structured/). Code in ffi/common/constraint_*.c,
 * in both libraries. The CPU engine applies a request's matcher in its sampler; the TensorRT-LLM shim
 * through the executor's logits post-processor (ffi/trtllm/README.md).
 *
 * The program (int32 words, little endian as in memory) is a set of rules, each a DFA over bytes whose
 * states may also call other rules (a recursive transition network):
 *   header  [0] MLR_CONSTRAINT_MAGIC  [1] MLR_CONSTRAINT_VERSION  [2] n_rules  [3] n_states
 *           [4] n_byte_edges  [5] n_call_edges  [6] root rule
 *   rules   n_rules x 1: the rule's start state
 *   states  n_states x 6: rule, flags (bit 0: accepting = the rule may end here), first byte edge,
 *           byte edge count, first call edge, call edge count
 *   bytes   n_byte_edges x 3: lo, hi (0..255, lo <= hi), target state (same rule); a state's byte edges are
 *           sorted by lo and do not overlap (deterministic over bytes)
 *   calls   n_call_edges x 2: callee rule, return state (same rule as the calling state): from the state,
 *           the callee runs from its start; when it ends, the caller goes on at the return state
 * A text is in the language when the root rule, run from its start over the text's bytes, can end with
 * every call returned. Several readings may be alive at once (calls make it nondeterministic); a matcher
 * follows them all. Readings deeper than MLR_CONSTRAINT_MAX_DEPTH calls are dropped (never accepted), and
 * so are readings beyond a matcher's caps (1024 live stacks, 65536 stacks explored per byte: only
 * left-recursive or hugely ambiguous programs reach them; ffi/common/constraint_matcher.c). States from
 * which their rule can never end are pruned when the program is prepared, so a byte is accepted only when
 * some text of the language may still follow it.
 */
#define MLR_CONSTRAINT_MAGIC 0x47524C4D /* "MLRG" */
#define MLR_CONSTRAINT_VERSION 1
#define MLR_CONSTRAINT_MAX_DEPTH 256

typedef struct mlr_vocab mlr_vocab;     /* a tokenizer's tokens as bytes and their trie; reference counted */
typedef struct mlr_grammar mlr_grammar; /* a program checked and ready over a vocab; reference counted */
typedef struct mlr_matcher mlr_matcher; /* one sequence's position in a grammar; one thread at a time */

/*
 * Builds a vocabulary: token i's bytes are bytes[offsets[i] .. offsets[i+1]). excluded[i] = 1 marks a token
 * never allowed inside a constraint (special and added tokens, end ids); tokens with no bytes are never
 * allowed either. All borrowed for the call. *out has one reference (mlr_vocab_release).
 */
int32_t mlr_vocab_create(const uint8_t *bytes, const int64_t *offsets, int32_t n_tokens, const uint8_t *excluded,
                         mlr_vocab **out, char *err, size_t err_len);
void mlr_vocab_release(mlr_vocab *vocab);
int32_t mlr_vocab_size(const mlr_vocab *vocab);

/*
 * Checks a program (every index in range, edges sorted, targets in their rule) and prepares it over vocab
 * (which it keeps a reference to). MLR_INVALID_ARGUMENT with the first problem in err. program borrowed for
 * the call. Thread-safe: matchers of one grammar may run on different threads (the grammar's mask cache is
 * locked).
 */
int32_t mlr_grammar_create(mlr_vocab *vocab, const int32_t *program, int64_t program_len, mlr_grammar **out,
                           char *err, size_t err_len);
void mlr_grammar_release(mlr_grammar *grammar);
/* Bytes the grammar holds now (tables and mask cache), for the caller's cache budget. */
int64_t mlr_grammar_bytes(const mlr_grammar *grammar);

/* A matcher at the start of the grammar's language (keeps a grammar reference), or a copy of one. */
int32_t mlr_matcher_create(mlr_grammar *grammar, mlr_matcher **out, char *err, size_t err_len);
int32_t mlr_matcher_clone(const mlr_matcher *matcher, mlr_matcher **out, char *err, size_t err_len);
void mlr_matcher_free(mlr_matcher *matcher);

/*
 * The tokens allowed next: bit (id % 32) of mask[id / 32] is set for each token whose bytes can follow
 * what was accepted so far; words and bits past the vocabulary are cleared (mask has n_words words).
 * *complete = 1 when the text so far is in the language (the sequence may end here: the caller allows its
 * end tokens), else 0. Never allows an excluded token. MLR_OUT_OF_MEMORY if its work buffers could not grow
 * (mask is then cleared); MLR_INVALID_ARGUMENT when n_words < (vocab size + 31) / 32.
 */
int32_t mlr_matcher_fill_mask(mlr_matcher *matcher, uint32_t *mask, int32_t n_words, int32_t *complete);

/* Accepts one token's bytes: MLR_OK, or MLR_INVALID_ARGUMENT (the token is not allowed here, or not a token
 * of the vocabulary; the matcher is unchanged), or MLR_OUT_OF_MEMORY (unchanged too). */
int32_t mlr_matcher_accept(mlr_matcher *matcher, int32_t token);

/* Bit 0: complete (the text so far is in the language); bit 1: some byte may follow. */
#define MLR_MATCHER_COMPLETE 1
#define MLR_MATCHER_CAN_CONTINUE 2
int32_t mlr_matcher_state(const mlr_matcher *matcher);

/* ============================================================================================== */
/* Layout check                                                                                     */

/* sizeof(struct_name) when field is NULL, else offsetof(struct_name, field); -1 when unknown. */
int64_t mlr_layout(const char *struct_name, const char *field);

#ifdef __cplusplus
}
#endif

#endif /* MULTILORA_H */
