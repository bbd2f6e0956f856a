#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A uniform double in [0, 1) with 53 random bits. */
static double uniform(uint64_t *state) { return (double)(splitmix64(state) >> 11) * (1.0 / 9007199254740992.0); }

int sampler_state_init(sampler_state *s, int32_t vocab, uint64_t seed, const int32_t *prompt, int32_t prompt_len) {
    s->rng = seed;
    s->counts = calloc((size_t)vocab, sizeof(int32_t));
    s->seen = calloc((size_t)vocab, 1);
    if (!s->counts || !s->seen) {
        sampler_state_free(s);
        return 0;
    }
    for (int32_t i = 0; i < prompt_len; i++) s->seen[prompt[i]] = 1;
    return 1;
}

void sampler_state_free(sampler_state *s) {
    free(s->counts);
    free(s->seen);
    s->counts = NULL;
    s->seen = NULL;
}

void sampler_state_record(sampler_state *s, int32_t token) {
    s->counts[token]++;
    s->seen[token] = 1;
}

/* log-softmax into out; returns nothing. Computed in double for stable small probabilities. */
static void log_softmax(const float *logits, int32_t n, float *out) {
    float max = logits[0];
    for (int32_t i = 1; i < n; i++) max = logits[i] > max ? logits[i] : max;
    double sum = 0;
    for (int32_t i = 0; i < n; i++) sum += exp((double)logits[i] - max);
    const double lse = max + log(sum);
    for (int32_t i = 0; i < n; i++) out[i] = (float)((double)logits[i] - lse);
}

struct sampler_key {
    float key;
    int32_t id;
};

int sampler_scratch_alloc(sampler_scratch *s, int32_t vocab) {
    s->values = malloc(2 * (size_t)vocab * sizeof(float));
    s->ids = malloc((size_t)vocab * sizeof(int32_t));
    s->keys = malloc((size_t)vocab * sizeof(struct sampler_key));
    if (!s->values || !s->ids || !s->keys) {
        sampler_scratch_free(s);
        return 0;
    }
    return 1;
}

void sampler_scratch_free(sampler_scratch *s) {
    free(s->values);
    free(s->ids);
    free(s->keys);
    *s = (sampler_scratch){0};
}

/* Descending key, ties by ascending id (deterministic). */
static int by_key_desc(const void *a, const void *b) {
    const struct sampler_key *x = a, *y = b;
    if (x->key != y->key) return x->key > y->key ? -1 : 1;
    return x->id < y->id ? -1 : (x->id > y->id);
}

/* ids[0..n) sorted by descending keys[id]; pairs: [n] scratch. */
static void sort_ids(const float *keys, int32_t n, int32_t *ids, struct sampler_key *pairs) {
    for (int32_t i = 0; i < n; i++) pairs[i] = (struct sampler_key){keys[i], i};
    qsort(pairs, (size_t)n, sizeof *pairs, by_key_desc);
    for (int32_t i = 0; i < n; i++) ids[i] = pairs[i].id;
}

static int32_t argmax(const float *x, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* The k largest entries of keys, sorted (partial selection, then a sort of k). */
static int32_t top_ids(const float *keys, int32_t n, int32_t k, int32_t *ids) {
    if (k > n) k = n;
    if (k <= 0) return 0; /* (top_logprobs 0: the chosen token's logprob only) */
    int32_t count = 0;
    for (int32_t i = 0; i < n; i++) {
        if (count < k) {
            ids[count++] = i;
        } else {
            int32_t worst = 0; /* smallest key among kept (ties: largest id) */
            for (int32_t j = 1; j < count; j++)
                if (keys[ids[j]] < keys[ids[worst]] || (keys[ids[j]] == keys[ids[worst]] && ids[j] > ids[worst])) worst = j;
            if (keys[i] > keys[ids[worst]]) ids[worst] = i;
        }
    }
    for (int32_t a = 1; a < count; a++) { /* insertion sort: k is small */
        int32_t v = ids[a], b = a - 1;
        while (b >= 0 && (keys[ids[b]] < keys[v] || (keys[ids[b]] == keys[v] && ids[b] > v))) {
            ids[b + 1] = ids[b];
            b--;
        }
        ids[b + 1] = v;
    }
    return count;
}

int32_t sampler_pick(const sampler_params *p, sampler_state *s, float *logits, int32_t vocab, int32_t top_logprobs,
                     const sampler_bias *bias, const uint32_t *allowed, sampler_scratch *scratch,
                     mlr_response *response) {
    float *logprobs = scratch->values;
    float *probs = scratch->values + vocab;
    if (top_logprobs >= 0) log_softmax(logits, vocab, logprobs);
    int banned = 0;
    for (int32_t i = 0; bias && i < bias->n; i++) { /* the request's logit bias, on the raw logits */
        const int32_t id = bias->ids[i];
        if (id < 0 || id >= vocab) continue;
        if (bias->values[i] <= -100.0f) {
            logits[id] = -INFINITY;
            banned = 1;
        } else {
            logits[id] += bias->values[i];
        }
    }
    if (allowed) { /* a constraint: what it does not allow can never be picked, whatever its bias */
        for (int32_t w = 0; w < (vocab + 31) / 32; w++) {
            for (uint32_t off = ~allowed[w]; off; off &= off - 1) {
                const int32_t i = w * 32 + __builtin_ctz(off);
                if (i < vocab) logits[i] = -INFINITY;
            }
        }
    }
    if (banned) { /* the bans may have left nothing to pick */
        int32_t i = 0;
        while (i < vocab && logits[i] == -INFINITY) i++;
        if (i == vocab) return -1;
    }

    /* Penalties: repetition on prompt and output (divide positive logits, multiply negative ones),
     * frequency and presence on the output. */
    if (p->repetition_penalty != 1.0f || p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f) {
        for (int32_t i = 0; i < vocab; i++) {
            if (s->seen[i] && p->repetition_penalty != 1.0f)
                logits[i] = logits[i] > 0 ? logits[i] / p->repetition_penalty : logits[i] * p->repetition_penalty;
            if (s->counts[i] > 0) logits[i] -= p->frequency_penalty * (float)s->counts[i] + p->presence_penalty;
        }
    }

    int32_t token;
    if (p->temperature <= 0.0f) {
        token = argmax(logits, vocab);
    } else {
        for (int32_t i = 0; i < vocab; i++) probs[i] = logits[i] / p->temperature;
        /* Candidates: all tokens, or the top k, sorted by probability when a cut needs the order. */
        int32_t n = vocab;
        int32_t *ids = scratch->ids;
        const int need_order = p->top_k > 0 || p->top_p < 1.0f;
        if (p->top_k > 0 && p->top_k < vocab) {
            n = top_ids(probs, vocab, p->top_k, ids);
        } else {
            for (int32_t i = 0; i < vocab; i++) ids[i] = i;
            if (need_order) sort_ids(probs, vocab, ids, scratch->keys);
        }
        float max = probs[ids[0]];
        for (int32_t i = 1; i < n; i++) max = probs[ids[i]] > max ? probs[ids[i]] : max;
        double total = 0;
        for (int32_t i = 0; i < n; i++) {
            probs[ids[i]] = (float)exp((double)probs[ids[i]] - max);
            total += probs[ids[i]];
        }
        if (p->top_p < 1.0f) { /* the smallest prefix whose mass reaches top_p */
            double cumulative = 0;
            int32_t keep = 0;
            while (keep < n) {
                cumulative += probs[ids[keep++]] / total;
                if (cumulative >= p->top_p) break;
            }
            n = keep;
        }
        if (p->min_p > 0.0f) { /* drop tokens below min_p times the most likely one */
            float top = 0;
            for (int32_t i = 0; i < n; i++) top = probs[ids[i]] > top ? probs[ids[i]] : top;
            int32_t kept = 0;
            for (int32_t i = 0; i < n; i++)
                if (probs[ids[i]] >= p->min_p * top) ids[kept++] = ids[i];
            n = kept;
        }
        double mass = 0;
        for (int32_t i = 0; i < n; i++) mass += probs[ids[i]];
        double u = uniform(&s->rng) * mass;
        token = -1;
        for (int32_t i = 0; i < n; i++) {
            u -= probs[ids[i]];
            if (u < 0) {
                token = ids[i];
                break;
            }
        }
        /* rounding left u >= 0: the last candidate of positive probability (never a disallowed one, whose
         * probability is 0) */
        for (int32_t i = n - 1; token < 0 && i >= 0; i--)
            if (probs[ids[i]] > 0) token = ids[i];
        if (token < 0) token = ids[0];
    }

    response->token = token;
    response->n_top = 0;
    response->logprob = 0;
    response->has_logprob = top_logprobs >= 0;
    if (top_logprobs >= 0) {
        response->logprob = logprobs[token];
        int32_t k = top_logprobs > MLR_MAX_TOP_LOGPROBS ? MLR_MAX_TOP_LOGPROBS : top_logprobs;
        int32_t ids[MLR_MAX_TOP_LOGPROBS];
        response->n_top = top_ids(logprobs, vocab, k, ids);
        for (int32_t i = 0; i < response->n_top; i++) {
            response->top_ids[i] = ids[i];
            response->top_logprobs[i] = logprobs[ids[i]];
        }
    }
    return token;
}
