/*
 * libmultilora-trtllm.so: the ABI of ffi/include/multilora.h over tensorrt_llm::executor::Executor.
 *
 * Written against the TensorRT-LLM headers named in ffi/trtllm/README.md (executor.h, types.h, tensor.h as
 * stored at the blobs listed there). NEVER COMPILED OR RUN: no TensorRT-LLM or GPU where it was written.
 *
 * Shape of the shim:
 *   - mlr_engine owns the Executor, the requests still alive (for cancel's NOT_FOUND, end-id bookkeeping
 *     and top-k logprobs) and the responses already unpacked but not yet handed out;
 *   - request ids are the executor's own IdType (uint64), passed through unchanged;
 *   - every entry point catches every exception; no exception crosses the C boundary.
 * One thread at a time should call mlr_await_responses (the server's worker does).
 */
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <dlfcn.h>
#include <exception>
#include <limits>
#include <list>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "tensorrt_llm/executor/executor.h"

#include "multilora.h"
#include "../common/dtype_size.h"     /* dtype_size */
#include "../common/request_check.h"  /* mlr_request_check, shared with the CPU engine */
#include "../common/constraint_matcher.h" /* constraint_matcher_vocab_size */
#include "../common/trtllm_plan.h"     /* mlr_trtllm_plan_sampling, mlr_trtllm_logprob_offset */

/* Where CMake found libnvinfer_plugin_tensorrt_llm.so (ffi/trtllm/CMakeLists.txt). */
#ifndef MULTILORA_TRTLLM_PLUGIN_PATH
#define MULTILORA_TRTLLM_PLUGIN_PATH "libnvinfer_plugin_tensorrt_llm.so"
#endif

namespace tle = tensorrt_llm::executor;

static_assert(std::is_same_v<tle::IdType, uint64_t>, "request and task ids cross the ABI as uint64_t");
static_assert(std::is_same_v<tle::TokenIdType, int32_t>, "token ids cross the ABI as int32_t");

/* ============================================================================================== */
/* helpers */

namespace {

void set_text(char *buf, size_t len, std::string const &text) {
    if (!buf || len == 0) return;
    std::snprintf(buf, len, "%s", text.c_str());
}

void clear_text(char *buf, size_t len) {
    if (buf && len) buf[0] = '\0';
}

tle::DataType to_tle_dtype(int32_t dtype) {
    switch (dtype) {
    case MLR_DTYPE_F32: return tle::DataType::kFP32;
    case MLR_DTYPE_F16: return tle::DataType::kFP16;
    case MLR_DTYPE_BF16: return tle::DataType::kBF16;
    default: throw std::invalid_argument("unknown mlr_float_dtype " + std::to_string(dtype));
    }
}

/* A CPU tensor owning a copy of [rows, cols] elements: the executor reads LoRA weights later, on its own
 * thread, after the caller's buffer may be gone (llgtrt does the same with Tensor::of(...).copyToCpu()). */
tle::Tensor copied_tensor(tle::DataType dtype, void const *data, int64_t rows, int64_t cols, size_t elem_size) {
    tle::Tensor t = tle::Tensor::cpu(dtype, {rows, cols});
    std::memcpy(t.getData(), data, static_cast<size_t>(rows) * static_cast<size_t>(cols) * elem_size);
    return t;
}

int32_t finish_of(tle::FinishReason reason) {
    switch (reason) {
    case tle::FinishReason::kEND_ID: return MLR_FINISH_END_ID;
    case tle::FinishReason::kSTOP_WORDS: return MLR_FINISH_STOP_ID;
    case tle::FinishReason::kLENGTH: return MLR_FINISH_LENGTH;
    case tle::FinishReason::kCANCELLED: return MLR_FINISH_CANCELLED;
    case tle::FinishReason::kTIMED_OUT: return MLR_FINISH_LENGTH; /* allottedTimeMs is never set by the shim */
    case tle::FinishReason::kNOT_FINISHED: return MLR_FINISH_NONE;
    }
    return MLR_FINISH_NONE;
}

/* log-softmax of one logits row: the chosen token's value (has_logprob set) and the k most likely (ids,
 * values). */
void row_logprobs(float const *row, int64_t vocab, int32_t token, int32_t k, mlr_response *out) {
    float max = -INFINITY;
    for (int64_t i = 0; i < vocab; i++) max = std::max(max, row[i]);
    double sum = 0;
    for (int64_t i = 0; i < vocab; i++) sum += std::exp(static_cast<double>(row[i] - max));
    float const log_z = max + static_cast<float>(std::log(sum));
    if (token >= 0 && token < vocab) {
        out->logprob = row[token] - log_z;
        out->has_logprob = 1;
    }
    if (k <= 0) return;
    k = static_cast<int32_t>(std::min<int64_t>({k, vocab, MLR_MAX_TOP_LOGPROBS}));
    std::vector<int32_t> ids(static_cast<size_t>(vocab));
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                      [row](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
    out->n_top = k;
    for (int32_t i = 0; i < k; i++) {
        out->top_ids[i] = ids[static_cast<size_t>(i)];
        out->top_logprobs[i] = row[ids[static_cast<size_t>(i)]] - log_z;
    }
}

/* Generation logits of a streaming response as f32 on the host: [n_tokens, beam (1), vocab_padded]. */
std::vector<float> logits_as_f32(tle::Tensor logits, int64_t *vocab) {
    if (logits.getMemoryType() == tle::MemoryType::kGPU) logits = logits.copyToCpu();
    auto const shape = logits.getShape();
    *vocab = shape.size() > 0 ? shape[shape.size() - 1] : 0;
    std::vector<float> out(logits.getSize());
    int32_t src_dtype;
    switch (logits.getDataType()) {
    case tle::DataType::kFP32: src_dtype = MLR_DTYPE_F32; break;
    case tle::DataType::kFP16: src_dtype = MLR_DTYPE_F16; break;
    case tle::DataType::kBF16: src_dtype = MLR_DTYPE_BF16; break;
    default: throw std::runtime_error("generation logits have an unsupported data type");
    }
    mlr_cast_floats(logits.getData(), src_dtype, out.size(), 1.0f, out.data(), MLR_DTYPE_F32);
    return out;
}

/*
 * Registers TensorRT-LLM's TensorRT plugins. The plugin library is opened at run time by its full path, not
 * linked: its SONAME is libnvinfer_plugin_tensorrt_llm.so.<TensorRT major> (SOVERSION in TensorRT-LLM's
 * cpp/tensorrt_llm/plugins/CMakeLists.txt) while the wheel ships only the unversioned file, so a link-time
 * dependency would leave a NEEDED entry nothing satisfies. The bare names are searched through this
 * library's RUNPATH. initTrtLlmPlugins is extern "C" (plugins/api/tllmPlugin.h); a null logger keeps
 * TensorRT-LLM's own. The handle stays open: the registered creators live as long as the process.
 */
bool init_plugins(std::string *why) {
    char const *const candidates[] = {MULTILORA_TRTLLM_PLUGIN_PATH, "libnvinfer_plugin_tensorrt_llm.so",
                                      "libnvinfer_plugin_tensorrt_llm.so.10"};
    void *lib = nullptr;
    for (char const *name : candidates) {
        lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
        if (lib) break;
        char const *e = dlerror();
        *why += std::string(name) + ": " + (e ? e : "not found") + "; ";
    }
    if (!lib) {
        *why = "cannot open TensorRT-LLM's plugin library (" + *why + "rebuild with -DTRTLLM_ROOT=...)";
        return false;
    }
    using InitPlugins = bool (*)(void *, char const *);
    auto const init = reinterpret_cast<InitPlugins>(dlsym(lib, "initTrtLlmPlugins"));
    if (!init) {
        *why = "libnvinfer_plugin_tensorrt_llm.so has no initTrtLlmPlugins";
        return false;
    }
    if (!init(nullptr, "tensorrt_llm")) {
        *why = "initTrtLlmPlugins failed";
        return false;
    }
    return true;
}

} // namespace

/* ============================================================================================== */
/* output constraints: the matcher's masks through the executor's batched logits post-processor */

/*
 * The same matcher as the CPU engine's (ffi/common/constraint_*.c), applied where TensorRT-LLM lets a
 * client change logits before sampling: a constrained request names the batched logits post-processor
 * (Request::kBatchedPostProcessorName), and the executor calls it each step with every such request's
 * logits, its tokens so far (prompt included) and the decoder's stream. There the matcher reads the tokens
 * generated since the last call, fills its mask, and every token it does not allow gets -inf (end ids and
 * stop ids only where the constraint is complete), so the executor's own sampling (temperature, top-k/p,
 * penalties) picks among allowed tokens only. Why not the executor's guided decoding (xgrammar): one
 * compiler and one matcher for both backends means one set of accepted schemas and one behaviour, tested
 * here on the CPU engine (see ffi/trtllm/README.md).
 *
 * The logits row is copied to pageable host memory and back on the decoder's stream: a device-to-pageable
 * copy returns once complete and a pageable-to-device copy once staged, so no CUDA call is needed here.
 * (About 2 x 4 bytes x the vocabulary per constrained request per step; a GPU kernel applying a bitmask
 * would avoid it.)
 */
struct constrained_request {
    mlr_matcher *matcher;        /* the engine's copy; freed when the request ends */
    size_t prompt_len;
    size_t read = 0;             /* generated tokens the matcher has accepted */
    std::vector<int32_t> enders; /* end ids and stop ids: allowed only where the constraint is complete */
    bool failed = false;         /* the matcher refused a sampled token or allowed none: ends with an error */
};

struct constraint_table {
    std::mutex mu; /* guards everything below; taken by the executor's thread in the callback */
    std::unordered_map<tle::IdType, constrained_request> requests; /* by executor request id */
    std::vector<uint32_t> mask;                                     /* scratch of the callback */

    ~constraint_table() {
        for (auto &entry : requests) mlr_matcher_free(entry.second.matcher);
    }

    /* Ends the bookkeeping of a request; true when its constraint failed. Caller holds mu. */
    bool finish(tle::IdType id) {
        auto const it = requests.find(id);
        if (it == requests.end()) return false;
        bool const failed = it->second.failed;
        mlr_matcher_free(it->second.matcher);
        requests.erase(it);
        return failed;
    }
};

namespace {

/* -inf in the logits' own element type, at every position the mask does not allow. */
void mask_row(void *row, tle::DataType dtype, int64_t vocab, std::vector<uint32_t> const &mask) {
    auto const allowed = [&](int64_t k) {
        size_t const w = static_cast<size_t>(k >> 5);
        return w < mask.size() && ((mask[w] >> (k & 31)) & 1u);
    };
    switch (dtype) {
    case tle::DataType::kFP32: {
        float *x = static_cast<float *>(row);
        for (int64_t k = 0; k < vocab; k++)
            if (!allowed(k)) x[k] = -INFINITY;
        return;
    }
    case tle::DataType::kFP16:
    case tle::DataType::kBF16: {
        uint16_t const minus_inf = dtype == tle::DataType::kFP16 ? 0xFC00 : 0xFF80;
        uint16_t *x = static_cast<uint16_t *>(row);
        for (int64_t k = 0; k < vocab; k++)
            if (!allowed(k)) x[k] = minus_inf;
        return;
    }
    default: throw std::runtime_error("logits of an unsupported data type for output constraints");
    }
}

/* The batched logits post-processor (runs on the executor's thread). */
void apply_constraints(constraint_table &t, std::vector<tle::IdType> const &ids, std::vector<tle::Tensor> &logits,
                       std::vector<std::reference_wrapper<tle::BeamTokens const>> const &tokens,
                       tle::StreamPtr const &stream) {
    std::lock_guard<std::mutex> lock(t.mu);
    for (size_t i = 0; i < ids.size() && i < logits.size() && i < tokens.size(); i++) {
        auto const it = t.requests.find(ids[i]);
        if (it == t.requests.end()) continue;
        constrained_request &c = it->second;
        tle::BeamTokens const &beams = tokens[i].get();
        if (!beams.empty()) {
            tle::VecTokens const &seen = beams[0];
            while (!c.failed && c.prompt_len + c.read < seen.size()) {
                if (mlr_matcher_accept(c.matcher, seen[c.prompt_len + c.read]) != MLR_OK) c.failed = true;
                else c.read++;
            }
        }
        auto const shape = logits[i].getShape();
        int64_t const vocab = shape.size() > 0 ? shape[shape.size() - 1] : 0;
        if (vocab <= 0) continue;
        t.mask.assign(static_cast<size_t>((vocab + 31) / 32), 0u);
        int32_t complete = 0;
        if (!c.failed) {
            int32_t const words = static_cast<int32_t>(std::min<size_t>(t.mask.size(), INT32_MAX));
            int32_t const n_words = (constraint_matcher_vocab_size(c.matcher) + 31) / 32;
            if (n_words > words || mlr_matcher_fill_mask(c.matcher, t.mask.data(), n_words, &complete) != MLR_OK)
                c.failed = true;
        }
        uint32_t any = 0;
        for (uint32_t w : t.mask) any |= w;
        if (!any && !complete) c.failed = true; /* nothing allowed: end it (an error at its last response) */
        if (c.failed) std::fill(t.mask.begin(), t.mask.end(), 0u);
        if (complete || c.failed) {
            for (int32_t id : c.enders)
                if (id >= 0 && id < vocab) t.mask[static_cast<size_t>(id) >> 5] |= 1u << (id & 31);
        }
        tle::Tensor host = logits[i].copyToCpu(stream);
        int64_t const rows = vocab > 0 ? static_cast<int64_t>(host.getSize()) / vocab : 0;
        size_t const elem = host.getSizeInBytes() / std::max<size_t>(host.getSize(), 1);
        for (int64_t r = 0; r < rows; r++)
            mask_row(static_cast<char *>(host.getData()) + static_cast<size_t>(r * vocab) * elem, host.getDataType(),
                     vocab, t.mask);
        logits[i].setFrom(host, stream);
    }
}

} // namespace

/* ============================================================================================== */
/* the engine */

struct live_request {
    std::vector<int32_t> end_ids; /* all of the request's end ids; the first is the executor's endId */
    int32_t top_logprobs;
};

struct mlr_engine {
    mlr_engine(std::string const &dir, tle::ExecutorConfig const &config, mlr_trtllm_params const &p,
               std::shared_ptr<constraint_table> table)
        : constraints(std::move(table)), executor(dir, tle::ModelType::kDECODER_ONLY, config), params(p) {
        params.engine_dir = nullptr;  /* borrowed for the create call only */
        params.worker_path = nullptr;
    }

    /* Before the executor: built first, destroyed after it (the executor's callback holds it too). */
    std::shared_ptr<constraint_table> constraints;
    tle::Executor executor;
    mlr_trtllm_params params;

    std::mutex mu; /* guards everything below */
    std::unordered_map<tle::IdType, live_request> live;
    std::deque<mlr_response> pending;
    std::optional<tle::IterationStats> last_stats;
    int64_t tokens_generated = 0;
    int64_t lora_misses = 0;
    int64_t lora_puts = 0;
};

/* ============================================================================================== */
/* create / destroy */

int32_t mlr_trtllm_create(const mlr_trtllm_params *p, mlr_engine **engine, char *err, size_t err_len) {
    clear_text(err, err_len);
    if (engine) *engine = nullptr;
    try {
        if (!p || !engine || !p->engine_dir) {
            set_text(err, err_len, "mlr_trtllm_create needs params, an engine_dir and an engine out-parameter");
            return MLR_INVALID_ARGUMENT;
        }
        if (p->world_size > 1 && (!p->worker_path || !p->worker_path[0])) {
            /* OrchestratorConfig's workerExecutablePath defaults to "": the executor would spawn nothing */
            set_text(err, err_len,
                     "a multi-GPU engine (world_size > 1) needs worker_path: TensorRT-LLM's executorWorker "
                     "(<site-packages>/tensorrt_llm/bin/executorWorker)");
            return MLR_INVALID_ARGUMENT;
        }
        std::string why;
        if (!init_plugins(&why)) {
            set_text(err, err_len, why);
            return MLR_INTERNAL;
        }

        tle::KvCacheConfig kv;
        if (p->kv_cache_reuse >= 0) kv.setEnableBlockReuse(p->kv_cache_reuse != 0);
        if (p->kv_cache_free_gpu_mem_fraction >= 0) kv.setFreeGpuMemoryFraction(p->kv_cache_free_gpu_mem_fraction);

        tle::ExecutorConfig config(/*maxBeamWidth=*/1);
        config.setKvCacheConfig(kv);
        config.setNormalizeLogProbs(false);
        if (p->max_batch_size >= 0) config.setMaxBatchSize(p->max_batch_size);
        if (p->max_num_tokens >= 0) config.setMaxNumTokens(p->max_num_tokens);
        if (p->gather_generation_logits) config.setGatherGenerationLogits(true);
        /* Output constraints: one batched post-processor; constrained requests name it. Not replicated on
         * other tensor-parallel ranks (the matchers live in this process only). */
        auto table = std::make_shared<constraint_table>();
        tle::LogitsPostProcessorBatched const post = [table](std::vector<tle::IdType> const &ids,
                                                             std::vector<tle::Tensor> &logits,
                                                             std::vector<std::reference_wrapper<tle::BeamTokens const>> const &tokens,
                                                             tle::StreamPtr const &stream,
                                                             std::vector<std::optional<tle::IdType>> const &) {
            apply_constraints(*table, ids, logits, tokens, stream);
        };
        config.setLogitsPostProcessorConfig(tle::LogitsPostProcessorConfig(std::nullopt, post, /*replicate=*/false));

        if (p->max_lora_rank > 0) {
            int32_t device_module_layers = 0; /* 0 = sized by deviceCachePercent */
            if (p->max_loras > 0) {
                int64_t const n = static_cast<int64_t>(p->max_lora_rank) * p->num_layers * p->num_lora_modules * p->max_loras;
                if (n <= 0 || n > std::numeric_limits<int32_t>::max()) {
                    set_text(err, err_len, "max_loras x max_lora_rank x num_layers x num_lora_modules is out of range");
                    return MLR_INVALID_ARGUMENT;
                }
                device_module_layers = static_cast<int32_t>(n);
            }
            using Peft = tle::PeftCacheConfig;
            config.setPeftCacheConfig(Peft(
                /*numHostModuleLayer=*/0, device_module_layers,
                p->lora_optimal_adapter_size >= 0 ? p->lora_optimal_adapter_size : Peft::kDefaultOptimalAdapterSize,
                p->lora_max_adapter_size >= 0 ? p->lora_max_adapter_size : Peft::kDefaultMaxAdapterSize,
                /*numPutWorkers=*/1, /*numEnsureWorkers=*/1, /*numCopyStreams=*/1, Peft::kDefaultMaxPagesPerBlockHost,
                Peft::kDefaultMaxPagesPerBlockDevice,
                p->lora_device_cache_percent >= 0 ? std::optional<float>(p->lora_device_cache_percent) : std::nullopt,
                p->lora_host_cache_bytes >= 0 ? std::optional<size_t>(static_cast<size_t>(p->lora_host_cache_bytes))
                                              : std::nullopt));
        }

        if (p->world_size > 1) {
            tle::OrchestratorConfig orchestrator(/*isOrchestrator=*/true, p->worker_path);
            config.setParallelConfig(tle::ParallelConfig(tle::CommunicationType::kMPI,
                                                         tle::CommunicationMode::kORCHESTRATOR, std::nullopt,
                                                         std::nullopt, orchestrator));
        }

        *engine = new mlr_engine(p->engine_dir, config, *p, std::move(table));
        return MLR_OK;
    } catch (std::bad_alloc const &) {
        set_text(err, err_len, "out of memory creating the TensorRT-LLM executor");
        return MLR_OUT_OF_MEMORY;
    } catch (std::exception const &e) {
        set_text(err, err_len, e.what());
        return MLR_INTERNAL;
    } catch (...) {
        set_text(err, err_len, "unknown exception creating the TensorRT-LLM executor");
        return MLR_INTERNAL;
    }
}

void mlr_destroy(mlr_engine *e) {
    if (!e) return;
    try {
        /* shutdown() queues its terminate request behind every queued and active request and waits for
         * them to finish generating: cancel them first, so running requests end now (the ABI's promise)
         * and a drain timeout before destroy is real. */
        std::lock_guard<std::mutex> lock(e->mu);
        for (auto const &entry : e->live) e->executor.cancelRequest(entry.first);
        e->live.clear();
    } catch (...) {
    }
    try {
        e->executor.shutdown();
    } catch (...) {
        /* nothing can be reported from here; the executor is freed below regardless */
    }
    try {
        delete e;
    } catch (...) {
    }
}

/* ============================================================================================== */
/* requests */

/* mlr_request_default: ffi/common/request_default.c */

int32_t mlr_enqueue(mlr_engine *e, const mlr_request *q, uint64_t *request_id, char *err, size_t err_len) {
    clear_text(err, err_len);
    try {
        /* The checks both backends make, with the same texts (ffi/common/request_check.c). The vocabulary
         * and the sequence limit are the executor's to check (it answers with an error response). A LoRA
         * config width other than 3 or 4 is LoRA content: the executor refuses it as a response ("Expected
         * dim2 of lora_keys to have a size in [...]", MLR_LORA_INVALID by ffi/common/trtllm_errors.c), as
         * the CPU engine's cache does. */
        mlr_request_limits const limits{/*vocab_size=*/0, /*max_seq_len=*/0};
        if (mlr_request_check(q, &limits, err, err_len) > 0) return MLR_INVALID_ARGUMENT;
        if (q->top_logprobs > 0 && !e->params.gather_generation_logits) {
            set_text(err, err_len, "top logprobs need an engine built with --gather_generation_logits");
            return MLR_UNSUPPORTED;
        }
        if (q->lora_scale != 1.0f) {
            set_text(err, err_len, "TensorRT-LLM has no per-request LoRA scale (fold it into the weights)");
            return MLR_UNSUPPORTED;
        }
        if (q->n_logit_bias > 0) {
            /* The executor's per-request bias (Request::setEmbeddingBias) is a dense tensor over the padded
             * vocabulary, whose size the shim does not know (ffi/trtllm/README.md, ABI gaps). */
            set_text(err, err_len, "this backend cannot apply logit_bias (TensorRT-LLM's embedding bias needs the engine's padded vocabulary size, which the shim does not know)");
            return MLR_UNSUPPORTED;
        }
        /* The engine's own copy of the constraint (the caller's is borrowed for the call). */
        std::unique_ptr<mlr_matcher, void (*)(mlr_matcher *)> matcher(nullptr, mlr_matcher_free);
        if (q->constraint && e->params.world_size > 1) {
            /* the post-processor runs where the matchers are: in this process, not in executorWorker's */
            set_text(err, err_len, "output constraints need a single-GPU engine (world_size 1): the logits post-processor runs in this process");
            return MLR_UNSUPPORTED;
        }
        if (q->constraint) {
            mlr_matcher *copy = nullptr;
            int32_t const status = mlr_matcher_clone(q->constraint, &copy, err, err_len);
            if (status != MLR_OK) return status;
            matcher.reset(copy);
        }

        /* Sampling: setters rather than the 19-argument constructor; nullopt = TensorRT-LLM's default. What
         * is set is decided in ffi/common/trtllm_plan.c (topP always set when sampling: unset topK and topP
         * would decode greedily), tested without TensorRT-LLM. */
        tle::SamplingConfig sampling(/*beamWidth=*/1);
        mlr_trtllm_sampling_plan plan;
        mlr_trtllm_plan_sampling(q, &plan);
        if (plan.set_top_k) sampling.setTopK(plan.top_k);
        if (plan.set_top_p) sampling.setTopP(plan.top_p);
        if (plan.set_temperature) sampling.setTemperature(plan.temperature);
        if (plan.set_min_p) sampling.setMinP(plan.min_p);
        sampling.setSeed(q->seed);
        if (q->repetition_penalty != 1) sampling.setRepetitionPenalty(q->repetition_penalty);
        if (q->presence_penalty != 0) sampling.setPresencePenalty(q->presence_penalty);
        if (q->frequency_penalty != 0) sampling.setFrequencyPenalty(q->frequency_penalty);

        tle::OutputConfig output;
        output.excludeInputFromOutput = true;
        output.returnLogProbs = q->top_logprobs >= 0;
        /* With generation logits the shim computes every logprob itself, as the raw log-softmax the ABI
         * promises; the executor's own logProbs are the sampling layer's (after temperature, penalties). */
        output.returnGenerationLogits = q->top_logprobs >= 0 && e->params.gather_generation_logits;

        tle::Request request(tle::VecTokens(q->prompt, q->prompt + q->prompt_len), q->max_new_tokens,
                             /*streaming=*/true, sampling, output);

        /* The executor takes one endId; further end ids and the stop ids become one-token stop words
         * (a stop word hit on an end id is reported as END_ID again in mlr_await_responses). */
        live_request entry{std::vector<int32_t>(q->end_ids, q->end_ids + q->n_end_ids), q->top_logprobs};
        if (q->n_end_ids > 0) request.setEndId(q->end_ids[0]);
        std::list<tle::VecTokens> stop_words;
        for (int32_t i = 1; i < q->n_end_ids; i++) stop_words.push_back({q->end_ids[i]});
        for (int32_t i = 0; i < q->n_stop_ids; i++) stop_words.push_back({q->stop_ids[i]});
        if (!stop_words.empty()) request.setStopWords(stop_words);

        if (q->lora_task_id != 0) {
            std::optional<tle::Tensor> weights, config;
            if (q->lora_weights) {
                weights = copied_tensor(to_tle_dtype(q->lora_weights_dtype), q->lora_weights, q->lora_rows,
                                        q->lora_row_len, static_cast<size_t>(dtype_size(q->lora_weights_dtype)));
                config = copied_tensor(tle::DataType::kINT32, q->lora_config, q->lora_rows, q->lora_config_width,
                                       sizeof(int32_t));
            }
            request.setLoraConfig(tle::LoraConfig(q->lora_task_id, weights, config));
        }

        constrained_request constrained{nullptr, static_cast<size_t>(q->prompt_len), 0, {}, false};
        if (matcher) {
            request.setLogitsPostProcessorName(tle::Request::kBatchedPostProcessorName);
            constrained.enders.assign(q->end_ids, q->end_ids + q->n_end_ids);
            constrained.enders.insert(constrained.enders.end(), q->stop_ids, q->stop_ids + q->n_stop_ids);
        }

        /* Held across enqueue so a response (or a post-processor call) can never arrive before the request
         * is known to be live. */
        std::lock_guard<std::mutex> lock(e->mu);
        std::lock_guard<std::mutex> constraints_lock(e->constraints->mu);
        tle::IdType const id = e->executor.enqueueRequest(request);
        e->live.emplace(id, std::move(entry));
        if (matcher) {
            constrained.matcher = matcher.release();
            e->constraints->requests.emplace(id, std::move(constrained));
        }
        if (q->lora_weights) e->lora_puts++;
        *request_id = id;
        return MLR_OK;
    } catch (std::bad_alloc const &) {
        set_text(err, err_len, "out of memory copying the request");
        return MLR_OUT_OF_MEMORY;
    } catch (std::exception const &ex) {
        set_text(err, err_len, ex.what());
        return MLR_INTERNAL;
    } catch (...) {
        set_text(err, err_len, "unknown exception enqueueing the request");
        return MLR_INTERNAL;
    }
}

/* The end of a constrained request's bookkeeping (its last response): true when its constraint failed. */
static bool end_constraint(mlr_engine *e, tle::IdType id) {
    std::lock_guard<std::mutex> lock(e->constraints->mu);
    return e->constraints->finish(id);
}

/* Appends the mlr_responses for one executor Response to e->pending (e->mu held). */
static void unpack(mlr_engine *e, tle::Response const &response) {
    tle::IdType const id = response.getRequestId();
    auto const it = e->live.find(id);
    if (response.hasError()) {
        end_constraint(e, id);
        std::string const &text = response.getErrorMsg();
        mlr_response r{};
        r.request_id = id;
        r.status = mlr_trtllm_error_status(text.c_str());
        r.finish_reason = MLR_FINISH_ERROR;
        r.token = -1;
        set_text(r.error, sizeof r.error, text);
        if (r.status == MLR_LORA_NOT_CACHED) e->lora_misses++;
        e->pending.push_back(r);
        if (it != e->live.end()) e->live.erase(it); /* an error response is the request's last */
        return;
    }

    tle::Result const &result = response.getResult();
    int32_t const top_k = it != e->live.end() ? it->second.top_logprobs : -1; /* -1: no logprobs */
    tle::VecTokens const no_tokens;
    tle::VecTokens const &tokens = result.outputTokenIds.empty() ? no_tokens : result.outputTokenIds[0];
    tle::VecLogProbs const *logprobs =
        result.logProbs && !result.logProbs->empty() ? &(*result.logProbs)[0] : nullptr;
    /* a streaming Result's logProbs hold every logprob so far; the new tokens' are the last |tokens| */
    size_t const first_logprob =
        logprobs ? static_cast<size_t>(mlr_trtllm_logprob_offset(static_cast<int64_t>(logprobs->size()),
                                                                 static_cast<int64_t>(tokens.size())))
                 : 0;

    std::vector<float> logits;
    int64_t vocab = 0;
    if (top_k >= 0 && result.generationLogits) logits = logits_as_f32(*result.generationLogits, &vocab);

    int32_t finish = MLR_FINISH_NONE;
    if (result.isFinal) {
        finish = result.finishReasons.empty() ? MLR_FINISH_LENGTH : finish_of(result.finishReasons[0]);
        if (finish == MLR_FINISH_NONE) finish = MLR_FINISH_LENGTH;
        /* a one-token stop word that is one of the request's end ids ended it as an end id */
        if (finish == MLR_FINISH_STOP_ID && !tokens.empty() && it != e->live.end()) {
            auto const &ends = it->second.end_ids;
            if (std::find(ends.begin(), ends.end(), tokens.back()) != ends.end()) finish = MLR_FINISH_END_ID;
        }
    }

    for (size_t j = 0; j < tokens.size(); j++) {
        mlr_response r{};
        r.request_id = id;
        r.status = MLR_OK;
        r.token = tokens[j];
        if (logprobs && first_logprob + j < logprobs->size()) { /* asked for (top_logprobs >= 0) and given */
            r.logprob = (*logprobs)[first_logprob + j];
            r.has_logprob = 1;
        }
        if (!logits.empty() && vocab > 0 && static_cast<int64_t>(j + 1) * vocab <= static_cast<int64_t>(logits.size()))
            row_logprobs(logits.data() + static_cast<int64_t>(j) * vocab, vocab, r.token, top_k, &r);
        r.finish_reason = j + 1 == tokens.size() ? finish : MLR_FINISH_NONE;
        e->pending.push_back(r);
        e->tokens_generated++;
    }
    if (result.isFinal && end_constraint(e, id)) {
        /* its constraint refused a token or allowed none (MLR_CONSTRAINT_MAX_DEPTH and the stack caps):
         * never a "stop" whose text may not parse */
        mlr_response r{};
        r.request_id = id;
        r.status = MLR_INTERNAL;
        r.finish_reason = MLR_FINISH_ERROR;
        r.token = -1;
        set_text(r.error, sizeof r.error, "the output constraint allowed no token here (nesting too deep?)");
        if (!e->pending.empty() && e->pending.back().request_id == id) e->pending.back().finish_reason = MLR_FINISH_NONE;
        e->pending.push_back(r);
        if (it != e->live.end()) e->live.erase(it);
        return;
    }
    if (tokens.empty() && result.isFinal) {
        mlr_response r{};
        r.request_id = id;
        r.finish_reason = finish;
        r.token = -1;
        r.status = finish == MLR_FINISH_CANCELLED ? MLR_CANCELLED : MLR_OK;
        if (finish == MLR_FINISH_END_ID && it != e->live.end() && !it->second.end_ids.empty())
            r.token = it->second.end_ids[0]; /* the executor does not return the end id itself */
        e->pending.push_back(r);
    } else if (finish == MLR_FINISH_CANCELLED) {
        e->pending.back().status = MLR_CANCELLED;
    }
    if (result.isFinal && it != e->live.end()) e->live.erase(it);
}

int32_t mlr_await_responses(mlr_engine *e, mlr_response *out, int32_t capacity, int32_t timeout_ms, int32_t *n_out) {
    *n_out = 0;
    if (capacity <= 0) return MLR_INVALID_ARGUMENT;
    try {
        bool have_pending;
        {
            std::lock_guard<std::mutex> lock(e->mu);
            have_pending = !e->pending.empty();
        }
        /* not under mu: enqueue and cancel must not wait for this */
        auto const wait = std::chrono::milliseconds(have_pending ? 0 : std::max(timeout_ms, 0));
        std::vector<tle::Response> responses = e->executor.awaitResponses(wait);

        std::lock_guard<std::mutex> lock(e->mu);
        for (auto const &response : responses) unpack(e, response);
        int32_t n = 0;
        while (n < capacity && !e->pending.empty()) {
            out[n++] = e->pending.front();
            e->pending.pop_front();
        }
        *n_out = n;
        return MLR_OK;
    } catch (std::bad_alloc const &) {
        return MLR_OUT_OF_MEMORY;
    } catch (...) {
        return MLR_INTERNAL;
    }
}

/* A request still queued in the executor is cancelled when the executor next looks at it: it may get one
 * prefill before its CANCELLED response (the executor has no call that drops a queued request unrun). */
int32_t mlr_cancel(mlr_engine *e, uint64_t request_id) {
    try {
        std::lock_guard<std::mutex> lock(e->mu);
        if (e->live.find(request_id) == e->live.end()) return MLR_NOT_FOUND;
        e->executor.cancelRequest(request_id);
        return MLR_OK;
    } catch (...) {
        return MLR_INTERNAL;
    }
}

/* ============================================================================================== */
/* capabilities, LoRA cache control, statistics */

int32_t mlr_capabilities_get(mlr_engine *e, mlr_capabilities *out) {
    bool const logits = e->params.gather_generation_logits != 0;
    *out = mlr_capabilities{};
    out->lora_pin = 0;
    out->lora_release = 0;
    out->lora_task_listing = 0;
    out->top_logprobs = logits ? 1 : 0;
    out->lora_scale = 0;
    out->max_top_logprobs = logits ? MLR_MAX_TOP_LOGPROBS : 0;
    out->max_lora_rank = e->params.max_lora_rank;
    out->lora_dtype = e->params.engine_dtype;
    out->raw_logprobs = logits ? 1 : 0; /* else the executor's logProbs: the sampling layer's */
    out->constraints = e->params.world_size > 1 ? 0 : 1; /* the batched logits post-processor (apply_constraints) */
    out->logit_bias = 0; /* see mlr_enqueue */
    return MLR_OK;
}

int32_t mlr_lora_pin(mlr_engine *, uint64_t, int32_t, char *err, size_t err_len) {
    clear_text(err, err_len);
    set_text(err, err_len, "TensorRT-LLM's executor has no call to pin a LoRA task");
    return MLR_UNSUPPORTED;
}

int32_t mlr_lora_release(mlr_engine *, uint64_t, char *err, size_t err_len) {
    clear_text(err, err_len);
    set_text(err, err_len, "TensorRT-LLM's executor has no call to evict a LoRA task");
    return MLR_UNSUPPORTED;
}

int32_t mlr_stats_get(mlr_engine *e, mlr_stats *out, mlr_lora_task_stats *, int32_t, int32_t *n_tasks) {
    if (n_tasks) *n_tasks = 0; /* the executor does not list its cached tasks */
    try {
        /* getLatestIterationStats hands out each iteration once; keep the newest for later calls */
        std::deque<tle::IterationStats> latest = e->executor.getLatestIterationStats();
        std::lock_guard<std::mutex> lock(e->mu);
        if (!latest.empty()) e->last_stats = latest.back();
        *out = mlr_stats{};
        if (e->last_stats) {
            tle::IterationStats const &s = *e->last_stats;
            out->running = s.numActiveRequests;
            out->queued = s.numQueuedRequests;
            out->steps = static_cast<int64_t>(s.iter) + 1;
            /* KvCacheStats counts blocks, not bytes; bytes per block is not known here (see README) */
            if (s.kvCacheStats) {
                /* block reuse: the block manager's running totals of reused and missed blocks, in tokens
                 * as whole blocks (a partly matched last block counts as missed) */
                tle::KvCacheStats const &kv = *s.kvCacheStats;
                out->prefix_reused_blocks = kv.reusedBlocks;
                out->prefix_hit_tokens = static_cast<int64_t>(kv.reusedBlocks) * kv.tokensPerBlock;
                out->prefix_query_tokens = static_cast<int64_t>(kv.reusedBlocks + kv.missedBlocks) * kv.tokensPerBlock;
            }
        }
        out->lora_bytes_capacity = e->params.lora_host_cache_bytes > 0 ? e->params.lora_host_cache_bytes : 0;
        out->max_loras = e->params.max_loras > 0 ? e->params.max_loras : 0;
        out->lora_puts = e->lora_puts;
        out->lora_misses = e->lora_misses;
        out->tokens_generated = e->tokens_generated;
        return MLR_OK;
    } catch (...) {
        return MLR_INTERNAL;
    }
}

int32_t mlr_forward_logits(mlr_engine *, const int32_t *, int32_t, uint64_t, float, float *, char *err,
                           size_t err_len) {
    clear_text(err, err_len);
    set_text(err, err_len, "forward_logits is not available on the TensorRT-LLM backend");
    return MLR_UNSUPPORTED;
}

/* ============================================================================================== */
/* the CPU engine's entry points, present so the TypeScript side binds one symbol set */

void mlr_cpu_params_default(mlr_cpu_params *params) { std::memset(params, 0, sizeof *params); }

int32_t mlr_cpu_create(const mlr_cpu_params *, mlr_engine **engine, char *err, size_t err_len) {
    if (engine) *engine = nullptr;
    clear_text(err, err_len);
    set_text(err, err_len, "this is libmultilora-trtllm.so: the CPU engine is in libmultilora.so");
    return MLR_UNSUPPORTED;
}

int32_t mlr_cpu_test_fail_allocs(mlr_engine *, int32_t) { return MLR_UNSUPPORTED; }
int32_t mlr_cpu_test_mask_overlap(mlr_engine *, int32_t, int64_t *, int64_t *) { return MLR_UNSUPPORTED; }
