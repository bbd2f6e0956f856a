/*
 * The TensorRT-LLM shim's request decisions that need no TensorRT-LLM headers (see trtllm_plan.h), and
 * their test entry points mlr_trtllm_sampling_text and mlr_trtllm_logprob_offset (multilora.h).
 */
#include <stdio.h>

#include "trtllm_plan.h"

/*
 * Greedy (temperature 0) is topK 1. Sampling always sets topP: TensorRT-LLM's defaults are topK 0 and
 * topP 0.0 (layers/defaultDecodingParams.h) and its regularizeTopKTopP turns topK == 0 && topP == 0 into
 * topK = 1, so leaving both unset would decode greedily. top_p 1 is the whole distribution; topK is set only
 * when the request limits it (0 = off in both APIs).
 */
void mlr_trtllm_plan_sampling(const mlr_request *q, mlr_trtllm_sampling_plan *out) {
    *out = (mlr_trtllm_sampling_plan){0};
    if (q->temperature == 0) {
        out->set_top_k = 1;
        out->top_k = 1;
        return;
    }
    out->set_temperature = 1;
    out->temperature = q->temperature;
    out->set_top_p = 1;
    out->top_p = q->top_p > 0 && q->top_p <= 1 ? q->top_p : 1.0f;
    if (q->top_k > 0) {
        out->set_top_k = 1;
        out->top_k = q->top_k;
    }
    if (q->min_p > 0) {
        out->set_min_p = 1;
        out->min_p = q->min_p;
    }
}

int32_t mlr_trtllm_sampling_text(const mlr_request *request, char *buf, size_t len) {
    mlr_trtllm_sampling_plan p;
    mlr_trtllm_plan_sampling(request, &p);
    char k[16] = "unset", tp[16] = "unset", t[16] = "unset", mp[16] = "unset";
    if (p.set_top_k) snprintf(k, sizeof k, "%d", p.top_k);
    if (p.set_top_p) snprintf(tp, sizeof tp, "%g", (double)p.top_p);
    if (p.set_temperature) snprintf(t, sizeof t, "%g", (double)p.temperature);
    if (p.set_min_p) snprintf(mp, sizeof mp, "%g", (double)p.min_p);
    return snprintf(buf, len, "topK=%s topP=%s temperature=%s minP=%s", k, tp, t, mp);
}

/*
 * A streaming Result's logProbs hold every logprob of the request so far (LlmRequest::createResult copies
 * getLogProbs() whole), while outputTokenIds hold only the new tokens: the new tokens' logprobs are the last
 * n_tokens of them.
 */
int64_t mlr_trtllm_logprob_offset(int64_t n_logprobs, int64_t n_tokens) {
    return n_logprobs > n_tokens ? n_logprobs - n_tokens : 0;
}
