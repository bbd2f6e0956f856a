/*
 * Choosing the next token from a sequence's logits: penalties, greedy or temperature with top-k, top-p
 * and min-p, drawn from the sequence's own random stream (so batching never changes a sequence's tokens),
 * and the log-probabilities reported to the client (log-softmax of the raw logits, before any transform).
 */
#ifndef MLR_SAMPLER_H
#define MLR_SAMPLER_H

#include <stdint.h>

#include "multilora.h"

typedef struct sampler_params {
    float temperature, top_p, min_p;
    int32_t top_k;
    float repetition_penalty, frequency_penalty, presence_penalty;
} sampler_params;

/* Per-sequence state: its random stream and what it has produced. */
typedef struct sampler_state {
    uint64_t rng;       /* splitmix64 state, from the request's seed */
    int32_t *counts;    /* [vocab] times each token was generated; owned */
    uint8_t *seen;      /* [vocab] token appears in prompt or output; owned */
} sampler_state;

int sampler_state_init(sampler_state *s, int32_t vocab, uint64_t seed, const int32_t *prompt, int32_t prompt_len);
void sampler_state_free(sampler_state *s);
void sampler_state_record(sampler_state *s, int32_t token);

/* Work buffers for picking one token over a vocabulary, allocated once (per engine) so that picking never
 * allocates; owned. One pick at a time uses them. */
typedef struct sampler_scratch {
    float *values;          /* [2 * vocab]: log-probabilities, then transformed probabilities */
    int32_t *ids;           /* [vocab] candidate ids */
    struct sampler_key *keys; /* [vocab] (key, id) pairs for sorting */
} sampler_scratch;

/* Returns 1, or 0 out of memory (nothing to free then). */
int sampler_scratch_alloc(sampler_scratch *s, int32_t vocab);
void sampler_scratch_free(sampler_scratch *s);

/* A sequence's logit bias (mlr_request.logit_bias_*): values[i] added to the logit of ids[i]; a value of
 * -100 (or less) bans the token (-inf). Ids outside the vocabulary are skipped (mlr_enqueue refuses them). */
typedef struct sampler_bias {
    const int32_t *ids;
    const float *values;
    int32_t n;
} sampler_bias;

/*
 * Picks a token from logits[vocab] (modified in place) and fills the response's token and logprob fields:
 * top_logprobs -1 = none (has_logprob 0), else the chosen token's logprob and that many alternatives
 * (has_logprob 1). bias: NULL or n 0 = none; else added to the logits first. allowed: NULL = every token;
 * else a bitset over vocab (bit id % 32 of word id / 32) of the tokens a constraint allows, at least one
 * set: the others are -inf (whatever their bias) before penalties, temperature, top-k, top-p and min-p, so
 * they are never picked. Logprobs stay the raw logits' log-softmax (mlr_response). Returns the token, or -1
 * when the bias banned every token left (nothing can be picked; the response's token fields are then not
 * set). Never allocates.
 */
int32_t sampler_pick(const sampler_params *p, sampler_state *s, float *logits, int32_t vocab, int32_t top_logprobs,
                     const sampler_bias *bias, const uint32_t *allowed, sampler_scratch *scratch,
                     mlr_response *response);

#endif /* MLR_SAMPLER_H */
