/*
 * The CPU engine behind the ABI: a request queue, a scheduler thread that runs continuous batching
 * (admit while slots and KV budget allow, prefill in chunks beside decodes, sample, answer), the LoRA
 * cache, and the response queue that mlr_await_responses drains.
 *
 * Locking: `mu` guards the queue, the running set's flags, the LoRA cache, responses and counters;
 * `compute_mu` serialises forward passes (the scheduler's steps and mlr_forward_logits). The scheduler
 * never holds `mu` during a forward pass, so enqueue, cancel and await never wait for one.
 *
 * Memory: everything a step needs is allocated at create (the step plan, the finished flags, the sampler's
 * and the forward pass's buffers, the constraint masks, the first response queue), so a step allocates only
 * the forward pass's per-task work buffers (and a constrained request's matcher, its work buffers); when
 * one of those fails, the step's requests end with MLR_OUT_OF_MEMORY. Room for a round's responses is
 * reserved before the round, so no response is ever lost (see response_room).
 *
 * Sampling runs after the forward pass without `mu`, like the pass itself: only the scheduler thread
 * touches a running request's sampler and tokens, and the running set changes only on that thread. The
 * step's responses are pushed under `mu` afterwards (complete_step).
 *
 * Constraint masks (ffi/common/constraint_matcher.c) overlap the forward pass: a row's mask depends only on
 * its matcher's state, which is final once the previous step's token was accepted, so once a step is
 * planned its constrained rows are handed to the engine's mask thread (mask_worker), which fills each
 * row's mask into that row's buffer while the scheduler runs the forward pass. After the pass the
 * scheduler computes the rows the thread has not started yet itself and waits (a condition variable) for
 * the ones it is computing; then it samples. A matcher is used by one thread at a time: by the mask thread
 * only between mask_post and mask_settle, when the scheduler only runs the forward pass (which does not
 * touch requests, nor frees any). Either thread computes a row's mask with the same function, so masks,
 * and tokens, are the same whichever computed it.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/dtype_size.h"
#include "../common/errbuf.h"
#include "../common/constraint_matcher.h"
#include "../common/request_check.h"
#include "forward.h"
#include "kernels.h"
#include "lora_cache.h"
#include "model.h"
#include "multilora.h"
#include "prefix_cache.h"
#include "sampler.h"
#include "thread_pool.h"

/* A request from enqueue to its last response. */
typedef struct request {
    uint64_t id;
    mlr_request p;           /* scalars as given; pointer fields are not used after enqueue */
    int32_t *tokens;         /* prompt then generated, capacity prompt_len + max_new_tokens; owned */
    int32_t n_tokens;
    int32_t *end_ids, *stop_ids; /* owned copies */
    void *lora_weights;      /* owned copy, freed once stored in the cache */
    int32_t *lora_config;    /* owned copy */
    int32_t *bias_ids;       /* owned copies of the logit bias (p.n_logit_bias entries) */
    float *bias_values;
    int cancelled;
    /* once running: */
    seq_kv kv;
    int64_t kv_bytes;
    int32_t n_cached;        /* positions whose K/V are stored */
    prefix_block *prefix_last; /* held: the last of the sequence's blocks in the prefix cache, NULL none */
    int32_t prefix_blocks;   /* its blocks in the prefix cache: positions 0 .. prefix_blocks * block_tokens */
    int32_t prefix_stopped;  /* let its blocks go to make room for a queued request: reuses and stores no more */
    int32_t n_generated;
    lora_adapter *lora;
    sampler_state sampler;
    mlr_matcher *matcher;    /* owned clone of the request's constraint; NULL = unconstrained */
    struct request *next;    /* queue link */
} request;

/* One step: its tokens, and where each logits row and slot stands. Allocated once, at create. */
typedef struct step_plan {
    batch_entry *batch;      /* [max_tokens] */
    int32_t *slot_of_row;    /* [max_batch]: which running slot each logits row belongs to */
    int32_t *in_step;        /* [max_batch]: 1 when the running slot has tokens in the step */
    int32_t *done;           /* [max_batch]: 1 when the running slot finished in the step */
    mlr_response *picked;    /* [max_batch]: each logits row's response, sampled before complete_step */
    uint32_t *masks;         /* [max_batch, mask_words]: each constrained row's allowed tokens (bit id % 32 of
                              * word id / 32) */
    int32_t *mask_status;    /* [max_batch]: constraint_mask's result for the row, once computed */
    int32_t *mask_done;      /* [max_batch]: 1 when the row's mask is computed (by either thread) */
    int32_t *prefill_slot;   /* [max_batch]: the slots whose prompts the step computes, in plan order, */
    int32_t *prefill_from;   /* from which position, */
    int32_t *prefill_take;   /* and how many tokens */
} step_plan;

/*
 * The mask thread: fills the masks of a planned step's constrained rows while the forward pass runs (see
 * the top of this file). Everything below but the thread is guarded by mu.
 */
typedef struct mask_worker {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake;      /* rows posted, or shutdown */
    pthread_cond_t idle;      /* the thread finished the rows it took */
    int shutdown;
    struct request **reqs;    /* [max_batch]: the posted rows' requests */
    int32_t *rows;            /* [max_batch]: the posted rows */
    int32_t n_jobs, next;     /* posted rows; the next one nobody took */
    int32_t busy;             /* rows the thread took and has not finished */
    int32_t mode;             /* 1 overlap (default); 0 every mask inline; 2 the scheduler waits for the thread
                               * to compute every posted row (mlr_cpu_test_mask_overlap) */
    int64_t precomputed;      /* masks the thread computed */
    int64_t computed_inline;  /* masks the scheduler computed */
} mask_worker;

struct mlr_engine {
    mlr_cpu_params params;
    model m;
    kernels k;
    thread_pool pool;
    lora_cache loras;
    forward_scratch scratch;
    float *logits;           /* [max_batch, vocab] */
    sampler_scratch sampling;
    int32_t mask_words;      /* (vocab + 31) / 32 */
    step_plan plan;          /* the scheduler thread's */
    mask_worker masks;
    prefix_cache prefix;     /* the scheduler thread's (see prefix_cache.h); used when params.kv_cache_reuse */
    prefix_counters prefix_seen; /* its counters, copied under mu for mlr_stats_get */

    pthread_t scheduler;
    pthread_mutex_t mu;
    pthread_cond_t work;     /* new request, cancel, shutdown */
    pthread_cond_t answered; /* new responses */
    pthread_mutex_t compute_mu;
    int shutdown;

    request *queue_head, *queue_tail;
    request **running;       /* [max_batch] */
    int32_t n_running;
    uint64_t next_id;
    int64_t kv_used, kv_capacity;

    mlr_response *responses; /* a growable array; [resp_head, resp_head + resp_count) are pending */
    int32_t resp_head, resp_count, resp_cap;

    int64_t steps, tokens_generated;
};

/* ============================================================================================== */
/* defaults */

void mlr_cpu_params_default(mlr_cpu_params *p) {
    memset(p, 0, sizeof *p);
    p->max_batch = 8;
    p->max_seq_len = 0;
    p->kv_cache_bytes = 0;
    p->threads = 0;
    p->prefill_chunk = 256;
    p->max_lora_rank = 64;
    p->lora_cache_bytes = 256ll << 20;
    p->max_loras = 0;
    p->lora_dtype = -1;
    p->kv_cache_reuse = 1;
    p->kv_block_tokens = 32;
    p->copy_weights = 0;
}

/* ============================================================================================== */
/* responses */

/*
 * Makes room for n more pending responses, growing the queue when it must. Returns 1, or 0 when the queue
 * is too full and cannot grow (out of memory): the caller then produces nothing and the scheduler waits
 * for mlr_await_responses to drain the queue (which always makes room: the queue starts larger than one
 * round needs). Every producer reserves first, so push_response never fails. Caller holds mu.
 */
static int response_room(mlr_engine *e, int32_t n) {
    if (e->resp_cap - e->resp_count >= n) return 1;
    const int64_t want = (int64_t)e->resp_count + n;
    int64_t cap = 2 * (int64_t)e->resp_cap;
    if (cap < want) cap = want;
    if (cap > INT32_MAX / 2) return 0;
    mlr_response *grown = realloc(e->responses, (size_t)cap * sizeof *grown);
    if (!grown) return 0;
    e->responses = grown;
    e->resp_cap = (int32_t)cap;
    return 1;
}

/* Appends a response into room reserved with response_room. Caller holds mu. */
static void push_response(mlr_engine *e, const mlr_response *r) {
    if (e->resp_head + e->resp_count == e->resp_cap) { /* room is at the front: move the pending ones down */
        memmove(e->responses, e->responses + e->resp_head, (size_t)e->resp_count * sizeof *r);
        e->resp_head = 0;
    }
    e->responses[e->resp_head + e->resp_count++] = *r;
}

static void respond_error(mlr_engine *e, uint64_t id, int32_t status, int32_t finish, const char *text) {
    mlr_response r = {.request_id = id, .status = status, .finish_reason = finish, .token = -1};
    if (text) snprintf(r.error, sizeof r.error, "%s", text);
    push_response(e, &r);
}

/* ============================================================================================== */
/* request lifetime */

static void request_free(request *r) {
    free(r->tokens);
    free(r->end_ids);
    free(r->stop_ids);
    free(r->lora_weights);
    free(r->lora_config);
    free(r->bias_ids);
    free(r->bias_values);
    seq_kv_free(&r->kv);
    sampler_state_free(&r->sampler);
    mlr_matcher_free(r->matcher);
    free(r);
}

/* Ends a running request: frees its slot, KV, adapter use and hold on the prefix cache. Caller holds mu. */
static void finish_running(mlr_engine *e, int32_t slot) {
    request *r = e->running[slot];
    if (r->lora) lora_cache_release_use(&e->loras, r->lora, e->steps);
    prefix_block_release(r->prefix_last);
    e->kv_used -= r->kv_bytes;
    e->running[slot] = e->running[--e->n_running];
    request_free(r);
}

/* ============================================================================================== */
/* prefix reuse (prefix_cache.h): scheduler thread only */

/* Room for `bytes` more of KV within the budget, evicting cached prefix blocks (least recently used
 * first) while that makes room. Returns 1, or 0 when running sequences and held blocks leave too little. */
static int kv_room(mlr_engine *e, int64_t bytes) {
    while (e->kv_used + e->prefix.counters.bytes + bytes > e->kv_capacity)
        if (!prefix_cache_evict_one(&e->prefix)) return 0;
    return 1;
}

/* kv_room for a queued request: blocks that running sequences hold (each holds the last of the chain it
 * stored or copied, which keeps the whole chain) are let go too, last slot first, each such sequence
 * storing and reusing no more, until the request fits. So cached blocks only ever use room that no
 * request needs: a long generation, storing its blocks as it goes, never keeps another request waiting. */
static int kv_room_for_request(mlr_engine *e, int64_t bytes) {
    int32_t s = e->n_running;
    while (!kv_room(e, bytes)) {
        while (s > 0 && !e->running[s - 1]->prefix_last) s--;
        if (s == 0) return 0;
        request *r = e->running[--s];
        prefix_block_release(r->prefix_last);
        r->prefix_last = NULL;
        r->prefix_stopped = 1;
    }
    return 1;
}

/* The prompt positions a request may take from the cache: whole blocks before its last position (whose
 * logits start the answer, so it is always computed). */
static int32_t reusable_end(const mlr_engine *e, const request *r) {
    const int32_t b = e->prefix.block_tokens;
    return (r->p.prompt_len - 1) / b * b;
}

/* Copies the cached blocks that continue a request's prompt from where its K/V stand, when they stand at
 * the end of its cached blocks. */
static void reuse_prefix(mlr_engine *e, request *r) {
    const int32_t b = e->prefix.block_tokens;
    const uint64_t task = r->p.lora_task_id;
    while (!r->prefix_stopped && r->n_cached == r->prefix_blocks * b && r->n_cached + b <= reusable_end(e, r)) {
        prefix_block *found = prefix_cache_find(&e->prefix, r->prefix_last, task, r->p.lora_scale, r->tokens + r->n_cached);
        if (!found) return;
        prefix_block_load(&e->prefix, found, &r->kv, r->n_cached);
        prefix_block_release(r->prefix_last);
        prefix_block_hold(found);
        r->prefix_last = found;
        r->prefix_blocks++;
        r->n_cached += b;
        e->prefix.counters.hit_tokens += b;
        e->prefix.counters.reused_blocks++;
    }
}

/* Adds a request's whole blocks of stored K/V (prompt and generated positions) that the cache lacks, while
 * the budget has room; what does not fit is tried again after the next step. */
static void publish_prefix(mlr_engine *e, request *r) {
    const int32_t b = e->prefix.block_tokens;
    while (!r->prefix_stopped && (r->prefix_blocks + 1) * b <= r->n_cached && kv_room(e, e->prefix.block_bytes)) {
        const int32_t pos = r->prefix_blocks * b;
        prefix_block *stored = prefix_cache_store(&e->prefix, r->prefix_last, r->p.lora_task_id, r->p.lora_scale,
                                                  r->tokens + pos, &r->kv, pos);
        if (!stored) return;
        prefix_block_release(r->prefix_last);
        prefix_block_hold(stored);
        r->prefix_last = stored;
        r->prefix_blocks++;
    }
}

/* Whether a request should leave its next prompt block to a sequence planned before it in this step
 * (slot o, prefilling from o_from with o_take tokens), which computes the same block (same tokens up to
 * its end, adapter and scale) and will publish it: the request then copies it after the step instead of
 * computing it too, so n > 1 choices of one prompt share one prefill. */
static int leaves_block_to(const mlr_engine *e, const request *r, const request *o, int32_t o_from, int32_t o_take) {
    const int32_t b = e->prefix.block_tokens, end = r->n_cached + b;
    if (r->prefix_stopped || o->prefix_stopped) return 0;
    if (r->n_cached != r->prefix_blocks * b || end > reusable_end(e, r)) return 0;
    if (o->p.lora_task_id != r->p.lora_task_id || (r->p.lora_task_id != 0 && o->p.lora_scale != r->p.lora_scale)) return 0;
    if (o_from < r->n_cached || o_from >= end || o_from + o_take < end || o->prefix_blocks * b != o_from - o_from % b)
        return 0;
    return o->p.prompt_len >= end && memcmp(o->tokens, r->tokens, (size_t)end * sizeof(int32_t)) == 0;
}

static int32_t find_id(const int32_t *ids, int32_t n, int32_t token) {
    for (int32_t i = 0; i < n; i++)
        if (ids[i] == token) return 1;
    return 0;
}

/* Moves queued requests into free slots while the KV budget allows, resolving their adapters.
 * Requests are admitted in order: one that must wait for KV room holds back those behind it. Each may be
 * answered (refused, cancelled) at once: admitting stops while the response queue lacks room for that
 * beside the step's max_batch responses. */
static void admit(mlr_engine *e) {
    while (e->queue_head && e->n_running < e->params.max_batch && response_room(e, e->params.max_batch + 1)) {
        request *r = e->queue_head;
        const int32_t capacity = r->p.prompt_len + r->p.max_new_tokens;
        const int64_t need = seq_kv_bytes(&e->m, capacity);
        if (!r->cancelled && need > e->kv_capacity) {
            char text[200];
            snprintf(text, sizeof text, "the request needs %lld bytes of KV cache (%d tokens) but the budget is %lld",
                     (long long)need, capacity, (long long)e->kv_capacity);
            r->cancelled = 2;
            respond_error(e, r->id, MLR_INVALID_ARGUMENT, MLR_FINISH_ERROR, text);
        }
        if (!r->cancelled && (e->kv_used + need > e->kv_capacity || !kv_room_for_request(e, need))) return; /* waits for room */
        e->queue_head = r->next;
        if (!e->queue_head) e->queue_tail = NULL;
        if (r->cancelled) {
            if (r->cancelled == 1) respond_error(e, r->id, MLR_CANCELLED, MLR_FINISH_CANCELLED, NULL);
            request_free(r);
            continue;
        }
        if (r->p.lora_task_id != 0) {
            char text[256] = "";
            lora_payload payload = {r->lora_weights, r->p.lora_weights_dtype, r->p.lora_rows, r->p.lora_row_len,
                                    r->lora_config, r->p.lora_config_width};
            int32_t status = lora_cache_acquire(&e->loras, &e->m, r->p.lora_task_id, r->lora_weights ? &payload : NULL,
                                                e->steps, &r->lora, text, sizeof text);
            free(r->lora_weights);
            free(r->lora_config);
            r->lora_weights = NULL;
            r->lora_config = NULL;
            if (status != MLR_OK) {
                respond_error(e, r->id, status, MLR_FINISH_ERROR, text);
                request_free(r);
                continue;
            }
        }
        if (!seq_kv_alloc(&r->kv, &e->m, capacity) ||
            !sampler_state_init(&r->sampler, e->m.cfg.vocab_size, r->p.seed, r->tokens, r->p.prompt_len)) {
            if (r->lora) lora_cache_release_use(&e->loras, r->lora, e->steps);
            r->lora = NULL;
            respond_error(e, r->id, MLR_OUT_OF_MEMORY, MLR_FINISH_ERROR, "out of memory for the KV cache");
            request_free(r);
            continue;
        }
        r->kv_bytes = need;
        e->kv_used += need;
        if (e->params.kv_cache_reuse) e->prefix.counters.query_tokens += r->p.prompt_len;
        e->running[e->n_running++] = r;
    }
}

/* ============================================================================================== */
/* the scheduler */

static int plan_alloc(step_plan *plan, int32_t max_tokens, int32_t max_batch, int32_t mask_words) {
    plan->batch = malloc((size_t)max_tokens * sizeof(batch_entry));
    plan->slot_of_row = malloc((size_t)max_batch * sizeof(int32_t));
    plan->in_step = malloc((size_t)max_batch * sizeof(int32_t));
    plan->done = malloc((size_t)max_batch * sizeof(int32_t));
    plan->picked = malloc((size_t)max_batch * sizeof(mlr_response));
    plan->masks = malloc((size_t)max_batch * (size_t)mask_words * sizeof(uint32_t));
    plan->mask_status = malloc((size_t)max_batch * sizeof(int32_t));
    plan->mask_done = calloc((size_t)max_batch, sizeof(int32_t));
    plan->prefill_slot = malloc((size_t)max_batch * sizeof(int32_t));
    plan->prefill_from = malloc((size_t)max_batch * sizeof(int32_t));
    plan->prefill_take = malloc((size_t)max_batch * sizeof(int32_t));
    return plan->batch && plan->slot_of_row && plan->in_step && plan->done && plan->picked && plan->masks &&
           plan->mask_status && plan->mask_done && plan->prefill_slot && plan->prefill_from && plan->prefill_take;
}

static void plan_free(step_plan *plan) {
    free(plan->batch);
    free(plan->slot_of_row);
    free(plan->in_step);
    free(plan->done);
    free(plan->picked);
    free(plan->masks);
    free(plan->mask_status);
    free(plan->mask_done);
    free(plan->prefill_slot);
    free(plan->prefill_from);
    free(plan->prefill_take);
    *plan = (step_plan){0};
}

/* Builds one step: a decode token for every sequence past its prompt, then prompt chunks in slot order
 * within the prefill budget. Returns the token count; *rows = logits rows. Caller holds mu. */
static int32_t plan_step(mlr_engine *e, step_plan *plan, int32_t *rows) {
    int32_t n = 0, budget = e->params.prefill_chunk;
    *rows = 0;
    memset(plan->in_step, 0, (size_t)e->n_running * sizeof(int32_t));
    for (int32_t s = 0; s < e->n_running; s++) {
        request *r = e->running[s];
        if (r->n_cached < r->p.prompt_len) continue;
        plan->in_step[s] = 1;
        plan->slot_of_row[*rows] = s;
        plan->batch[n++] = (batch_entry){r->tokens[r->n_cached], r->n_cached, &r->kv, r->lora, r->p.lora_scale, (*rows)++};
    }
    int32_t n_prefill = 0; /* the prompts planned so far: slots plan->prefill_slot[0 ..) */
    for (int32_t s = 0; s < e->n_running && budget > 0; s++) {
        request *r = e->running[s];
        const int32_t left = r->p.prompt_len - r->n_cached;
        if (left <= 0) continue;
        int waits = 0;
        for (int32_t i = 0; e->params.kv_cache_reuse && i < n_prefill && !waits; i++) {
            const request *o = e->running[plan->prefill_slot[i]];
            waits = leaves_block_to(e, r, o, plan->prefill_from[i], plan->prefill_take[i]);
        }
        if (waits) continue;
        const int32_t take = left < budget ? left : budget;
        plan->prefill_slot[n_prefill] = s;
        plan->prefill_from[n_prefill] = r->n_cached;
        plan->prefill_take[n_prefill++] = take;
        plan->in_step[s] = 1;
        for (int32_t i = 0; i < take; i++) {
            const int32_t pos = r->n_cached + i;
            const int last = pos == r->p.prompt_len - 1;
            if (last) plan->slot_of_row[*rows] = s;
            plan->batch[n++] = (batch_entry){r->tokens[pos], pos, &r->kv, r->lora, r->p.lora_scale, last ? (*rows)++ : -1};
        }
        budget -= take;
    }
    return n;
}

static void row_error(mlr_response *resp, int32_t status, const char *text) {
    resp->status = status;
    resp->finish_reason = MLR_FINISH_ERROR;
    resp->token = -1;
    resp->has_logprob = 0;
    resp->n_top = 0;
    snprintf(resp->error, sizeof resp->error, "%s", text);
}

static uint32_t *row_mask(const mlr_engine *e, const step_plan *plan, int32_t row) {
    return plan->masks + (int64_t)row * e->mask_words;
}

/*
 * The constraint's mask for a request into mask ([mask_words]): its allowed tokens, and the end and stop
 * ids only where the text so far is complete. Reads the request's matcher, ids and nothing else of the
 * engine but its sizes, so either the scheduler or the mask thread may run it. Returns MLR_OK,
 * MLR_OUT_OF_MEMORY, or MLR_INTERNAL when nothing is allowed (mask_error_text says why).
 */
static int32_t constraint_mask(const mlr_engine *e, request *r, uint32_t *mask) {
    int32_t complete = 0;
    if (mlr_matcher_fill_mask(r->matcher, mask, e->mask_words, &complete) != MLR_OK) return MLR_OUT_OF_MEMORY;
    const int32_t vocab = e->m.cfg.vocab_size;
    for (int32_t list = 0; list < 2; list++) {
        const int32_t *ids = list ? r->stop_ids : r->end_ids;
        const int32_t n = list ? r->p.n_stop_ids : r->p.n_end_ids;
        for (int32_t i = 0; i < n; i++) {
            if (ids[i] < 0 || ids[i] >= vocab) continue;
            if (complete) mask[ids[i] >> 5] |= 1u << (ids[i] & 31);
            else mask[ids[i] >> 5] &= ~(1u << (ids[i] & 31));
        }
    }
    uint32_t any = 0;
    for (int32_t w = 0; w < e->mask_words; w++) any |= mask[w];
    return any ? MLR_OK : MLR_INTERNAL;
}

static const char *mask_error_text(int32_t status) {
    return status == MLR_OUT_OF_MEMORY ? "out of memory computing the constraint's token mask"
                                       : "the constraint allows no token here (its grammar has a dead end)";
}

/* ============================================================================================== */
/* the mask thread */

static void *mask_main(void *arg) {
    mlr_engine *e = arg;
    mask_worker *w = &e->masks;
    pthread_mutex_lock(&w->mu);
    while (!w->shutdown) {
        if (w->next >= w->n_jobs) {
            pthread_cond_wait(&w->wake, &w->mu);
            continue;
        }
        const int32_t j = w->next++;
        w->busy++;
        request *r = w->reqs[j];
        const int32_t row = w->rows[j];
        pthread_mutex_unlock(&w->mu);
        const int32_t status = constraint_mask(e, r, row_mask(e, &e->plan, row));
        pthread_mutex_lock(&w->mu);
        e->plan.mask_status[row] = status;
        e->plan.mask_done[row] = 1;
        w->precomputed++;
        if (--w->busy == 0) pthread_cond_broadcast(&w->idle);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Starts the mask thread. Returns 1, or 0 (nothing to free then). */
static int mask_worker_start(mlr_engine *e, int32_t max_batch) {
    mask_worker *w = &e->masks;
    *w = (mask_worker){.mode = 1};
    w->reqs = malloc((size_t)max_batch * sizeof *w->reqs);
    w->rows = malloc((size_t)max_batch * sizeof *w->rows);
    if (!w->reqs || !w->rows) {
        free(w->reqs);
        free(w->rows);
        return 0;
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->wake, NULL);
    pthread_cond_init(&w->idle, NULL);
    if (pthread_create(&w->thread, NULL, mask_main, e) != 0) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->wake);
        pthread_cond_destroy(&w->idle);
        free(w->reqs);
        free(w->rows);
        return 0;
    }
    return 1;
}

/* Stops and joins the mask thread (no rows are posted then: the scheduler settles every step). */
static void mask_worker_stop(mask_worker *w) {
    pthread_mutex_lock(&w->mu);
    w->shutdown = 1;
    pthread_cond_broadcast(&w->wake);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->wake);
    pthread_cond_destroy(&w->idle);
    free(w->reqs);
    free(w->rows);
}

/* Hands the planned step's constrained rows to the mask thread (unless its mode is 0: every mask inline).
 * Scheduler thread, before the forward pass. */
static void mask_post(mlr_engine *e, const step_plan *plan, int32_t rows) {
    mask_worker *w = &e->masks;
    memset(plan->mask_done, 0, (size_t)rows * sizeof(int32_t));
    pthread_mutex_lock(&w->mu);
    w->n_jobs = w->next = 0;
    for (int32_t row = 0; w->mode != 0 && row < rows; row++) {
        request *r = e->running[plan->slot_of_row[row]];
        if (!r->matcher) continue;
        w->reqs[w->n_jobs] = r;
        w->rows[w->n_jobs++] = row;
    }
    if (w->n_jobs > 0) pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->mu);
}

/*
 * After the forward pass: computes the posted rows the thread has not taken (compute 1; with 0, as after
 * a failed pass, they are dropped), then waits for the ones it is computing. Afterwards the mask thread
 * holds no request. Scheduler thread.
 */
static void mask_settle(mlr_engine *e, const step_plan *plan, int compute) {
    mask_worker *w = &e->masks;
    pthread_mutex_lock(&w->mu);
    if (!compute) w->n_jobs = w->next; /* what nobody took is not computed */
    while (compute && w->mode != 2 && w->next < w->n_jobs) { /* (mode 2: the thread computes them all) */
        const int32_t j = w->next++;
        request *r = w->reqs[j];
        const int32_t row = w->rows[j];
        pthread_mutex_unlock(&w->mu);
        const int32_t status = constraint_mask(e, r, row_mask(e, plan, row));
        pthread_mutex_lock(&w->mu);
        plan->mask_status[row] = status;
        plan->mask_done[row] = 1;
        w->computed_inline++;
    }
    while (w->busy > 0 || w->next < w->n_jobs) pthread_cond_wait(&w->idle, &w->mu);
    w->n_jobs = w->next = 0;
    pthread_mutex_unlock(&w->mu);
}

/*
 * Samples every logits row of a step into plan->picked: the token (under the row's constraint), its
 * logprobs, and whether the request finishes with it. Advances the rows' samplers, tokens and matchers.
 * Runs without mu (see the top of this file); rows of requests cancelled meanwhile are sampled too and
 * their responses dropped by complete_step.
 */
static void sample_rows(mlr_engine *e, const step_plan *plan, int32_t rows) {
    const int32_t vocab = e->m.cfg.vocab_size;
    for (int32_t row = 0; row < rows; row++) {
        request *r = e->running[plan->slot_of_row[row]];
        mlr_response *resp = &plan->picked[row];
        *resp = (mlr_response){.request_id = r->id, .status = MLR_OK, .token = -1};
        uint32_t *mask = r->matcher ? row_mask(e, plan, row) : NULL;
        if (mask && !plan->mask_done[row]) { /* not posted (mask thread mode 0): computed here */
            plan->mask_status[row] = constraint_mask(e, r, mask);
            pthread_mutex_lock(&e->masks.mu);
            e->masks.computed_inline++;
            pthread_mutex_unlock(&e->masks.mu);
        }
        if (mask && plan->mask_status[row] != MLR_OK) {
            row_error(resp, plan->mask_status[row], mask_error_text(plan->mask_status[row]));
            continue;
        }
        const sampler_params sp = {r->p.temperature, r->p.top_p, r->p.min_p, r->p.top_k,
                                   r->p.repetition_penalty, r->p.frequency_penalty, r->p.presence_penalty};
        const sampler_bias bias = {r->bias_ids, r->bias_values, r->p.n_logit_bias};
        const int32_t token = sampler_pick(&sp, &r->sampler, e->logits + (int64_t)row * vocab, vocab, r->p.top_logprobs,
                                           &bias, mask, &e->sampling, resp);
        if (token < 0) {
            row_error(resp, MLR_INVALID_ARGUMENT,
                      mask ? "logit_bias bans every token the constraint allows here"
                           : "logit_bias bans every token of the vocabulary");
            continue;
        }
        sampler_state_record(&r->sampler, token);
        r->tokens[r->n_tokens++] = token;
        r->n_generated++;
        if (find_id(r->end_ids, r->p.n_end_ids, token)) {
            resp->finish_reason = MLR_FINISH_END_ID;
        } else if (find_id(r->stop_ids, r->p.n_stop_ids, token)) {
            resp->finish_reason = MLR_FINISH_STOP_ID;
        } else if (r->matcher) {
            const int32_t status = mlr_matcher_accept(r->matcher, token);
            if (status != MLR_OK) {
                char text[160];
                snprintf(text, sizeof text, status == MLR_OUT_OF_MEMORY ? "out of memory advancing the constraint"
                                                                        : "the constraint refused token %d, which its mask allowed",
                         token);
                row_error(resp, status == MLR_OUT_OF_MEMORY ? MLR_OUT_OF_MEMORY : MLR_INTERNAL, text);
                continue;
            }
            if (mlr_matcher_state(r->matcher) == MLR_MATCHER_COMPLETE) resp->finish_reason = MLR_FINISH_CONSTRAINT;
        }
        if (resp->finish_reason == MLR_FINISH_NONE && r->n_generated >= r->p.max_new_tokens)
            resp->finish_reason = MLR_FINISH_LENGTH;
    }
}

/* After a step and its sampling: advance every sequence, answer, end finished ones.
 * Caller holds mu and reserved room for max_batch responses. */
static void complete_step(mlr_engine *e, const step_plan *plan, int32_t rows) {
    int32_t *done = plan->done;
    memset(done, 0, (size_t)e->n_running * sizeof(int32_t));
    for (int32_t row = 0; row < rows; row++) {
        const int32_t s = plan->slot_of_row[row];
        if (e->running[s]->cancelled) continue;
        const mlr_response *resp = &plan->picked[row];
        if (resp->token >= 0) e->tokens_generated++;
        push_response(e, resp);
        if (resp->finish_reason != MLR_FINISH_NONE) done[s] = 1;
    }
    /* End finished sequences (from the highest slot down: finish_running moves the last slot). */
    for (int32_t s = e->n_running - 1; s >= 0; s--)
        if (done[s]) finish_running(e, s);
}

/* After a step that ran: counts each sequence's stored positions, and adds its new whole blocks to the
 * prefix cache. Scheduler thread, without mu (only this thread reads n_cached and the cache). */
static void store_step(mlr_engine *e, const step_plan *plan, int32_t n) {
    for (int32_t t = 0; t < n; t++) {
        for (int32_t s = 0; s < e->n_running; s++) {
            if (&e->running[s]->kv == plan->batch[t].kv) {
                e->running[s]->n_cached = plan->batch[t].pos + 1;
                break;
            }
        }
    }
    for (int32_t s = 0; e->params.kv_cache_reuse && s < e->n_running; s++)
        if (plan->in_step[s]) publish_prefix(e, e->running[s]);
}

/* After a step that failed (status: why, MLR_OUT_OF_MEMORY): every request with tokens in it ends with an
 * error response, its slot and KV freed; its K/V and logits from this step are not valid. Requests not in
 * the step are untouched; cancelled ones are answered CANCELLED by drop_cancelled. Caller holds mu and
 * reserved room for max_batch responses. */
static void fail_step(mlr_engine *e, const step_plan *plan, int32_t status) {
    for (int32_t s = e->n_running - 1; s >= 0; s--) { /* highest slot down, as in complete_step */
        if (!plan->in_step[s] || e->running[s]->cancelled) continue;
        respond_error(e, e->running[s]->id, status, MLR_FINISH_ERROR,
                      "out of memory in a forward step: the request ended (its earlier tokens stand)");
        finish_running(e, s);
    }
}

/* Cancelled sequences leave before the next step. Caller holds mu and reserved room for max_batch
 * responses. */
static void drop_cancelled(mlr_engine *e) {
    for (int32_t s = e->n_running - 1; s >= 0; s--) {
        if (!e->running[s]->cancelled) continue;
        respond_error(e, e->running[s]->id, MLR_CANCELLED, MLR_FINISH_CANCELLED, NULL);
        finish_running(e, s);
    }
}

/* Cancelled requests still in the queue are answered at once, not when a slot frees up for them (a
 * drain answers its queued requests while the running ones go on). Caller holds mu. */
static void drop_cancelled_queued(mlr_engine *e) {
    request *prev = NULL;
    for (request *r = e->queue_head; r;) {
        request *next = r->next;
        if (r->cancelled == 1 && response_room(e, e->params.max_batch + 1)) {
            if (prev) prev->next = next;
            else e->queue_head = next;
            if (e->queue_tail == r) e->queue_tail = prev;
            respond_error(e, r->id, MLR_CANCELLED, MLR_FINISH_CANCELLED, NULL);
            request_free(r);
        } else {
            prev = r;
        }
        r = next;
    }
}

static void *scheduler_main(void *arg) {
    mlr_engine *e = arg;
    step_plan *plan = &e->plan;
    pthread_mutex_lock(&e->mu);
    while (!e->shutdown) {
        /* Room for this round's responses: the cancels' (max_batch) and the step's (max_batch); admit
         * reserves its own. No room and no memory to grow: wait for mlr_await_responses to drain. */
        if (!response_room(e, 2 * e->params.max_batch)) {
            pthread_cond_broadcast(&e->answered);
            pthread_cond_wait(&e->work, &e->mu);
            continue;
        }
        drop_cancelled(e);
        admit(e);
        drop_cancelled_queued(e);
        if (e->n_running == 0) {
            pthread_cond_broadcast(&e->answered);
            pthread_cond_wait(&e->work, &e->mu);
            continue;
        }
        if (e->params.kv_cache_reuse) {
            /* the prompts that continue cached blocks copy them (without mu: only this thread uses the cache) */
            pthread_mutex_unlock(&e->mu);
            for (int32_t s = 0; s < e->n_running; s++)
                if (e->running[s]->n_cached < e->running[s]->p.prompt_len) reuse_prefix(e, e->running[s]);
            pthread_mutex_lock(&e->mu);
        }
        int32_t rows = 0;
        const int32_t n = plan_step(e, plan, &rows);
        pthread_mutex_unlock(&e->mu);
        mask_post(e, plan, rows); /* the constrained rows' masks, computed while the pass runs */
        pthread_mutex_lock(&e->compute_mu);
        forward_ctx ctx = {&e->m, &e->k, &e->pool, &e->scratch};
        const int32_t status = forward(&ctx, plan->batch, n, e->logits);
        pthread_mutex_unlock(&e->compute_mu);
        mask_settle(e, plan, status == MLR_OK);
        if (status == MLR_OK) {
            sample_rows(e, plan, rows);
            store_step(e, plan, n);
        }
        pthread_mutex_lock(&e->mu);
        e->steps++;
        e->prefix_seen = e->prefix.counters;
        if (status == MLR_OK) complete_step(e, plan, rows);
        else fail_step(e, plan, status);
        pthread_cond_broadcast(&e->answered);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* ============================================================================================== */
/* API */

static int online_cores(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int32_t mlr_cpu_create(const mlr_cpu_params *params, mlr_engine **out, char *err, size_t err_len) {
    *out = NULL;
    if (err && err_len) err[0] = '\0';
    mlr_engine *e = calloc(1, sizeof *e);
    if (!e) {
        errbuf_add(err, err_len, "out of memory");
        return MLR_OUT_OF_MEMORY;
    }
    e->params = *params;
    mlr_cpu_params *p = &e->params;
    int32_t status = model_init(&e->m, &p->model, p->tensors, p->n_tensors, err, err_len);
    if (status != MLR_OK) {
        free(e);
        return status;
    }
    p->tensors = NULL; /* borrowed for this call only */
    const int32_t max_pos = p->model.max_position > 0 ? p->model.max_position : 4096;
    if (p->max_seq_len <= 0) p->max_seq_len = max_pos < 4096 ? max_pos : 4096;
    if (p->max_batch <= 0 || p->prefill_chunk <= 0 || p->max_lora_rank <= 0 || p->lora_cache_bytes < 0 ||
        p->max_loras < 0 || p->kv_cache_bytes < 0 || p->threads < 0 || p->kv_block_tokens < 1 ||
        p->kv_block_tokens > 4096 || (p->kv_cache_reuse != 0 && p->kv_cache_reuse != 1) ||
        (p->copy_weights != 0 && p->copy_weights != 1)) {
        errbuf_add(err, err_len,
                   "max_batch, prefill_chunk and max_lora_rank must be positive; sizes and counts not negative; "
                   "kv_block_tokens 1..4096; kv_cache_reuse and copy_weights 0 or 1");
        model_free(&e->m);
        free(e);
        return MLR_INVALID_ARGUMENT;
    }
    if (p->threads == 0) p->threads = online_cores();
    if (p->lora_dtype < 0) p->lora_dtype = e->m.dtype;
    e->kv_capacity = p->kv_cache_bytes > 0 ? p->kv_cache_bytes : p->max_batch * seq_kv_bytes(&e->m, p->max_seq_len);
    kernels_select(&e->k);
    lora_cache_init(&e->loras, &e->m, p->lora_cache_bytes, p->max_loras, p->max_lora_rank, p->lora_dtype);
    const int32_t vocab = e->m.cfg.vocab_size;
    const int32_t max_tokens = p->max_batch + p->prefill_chunk;
    e->running = calloc((size_t)p->max_batch, sizeof(request *));
    e->logits = malloc((size_t)p->max_batch * (size_t)vocab * sizeof(float));
    e->mask_words = (vocab + 31) / 32;
    /* The response queue starts with room for a round (cancels, step, answered admits) and more. */
    e->resp_cap = 2 * p->max_batch + 64;
    e->responses = malloc((size_t)e->resp_cap * sizeof(mlr_response));
    int ok = e->running && e->logits && e->responses && sampler_scratch_alloc(&e->sampling, vocab);
    ok = ok && plan_alloc(&e->plan, max_tokens, p->max_batch, e->mask_words);
    ok = ok && forward_scratch_alloc(&e->scratch, &e->m, max_tokens, p->max_lora_rank);
    ok = ok && prefix_cache_init(&e->prefix, &e->m, p->kv_block_tokens);
    const int pool_ok = ok && thread_pool_init(&e->pool, p->threads) == 0;
    ok = pool_ok && (!e->k.panels || model_pack_panels(&e->m, &e->pool) == MLR_OK);
    ok = ok && (!p->copy_weights || model_own_weights(&e->m) == MLR_OK);
    ok = ok && mask_worker_start(e, p->max_batch);
    if (pool_ok && !ok) thread_pool_free(&e->pool);
    pthread_mutex_init(&e->mu, NULL);
    pthread_mutex_init(&e->compute_mu, NULL);
    pthread_cond_init(&e->work, NULL);
    pthread_cond_init(&e->answered, NULL);
    if (ok && pthread_create(&e->scheduler, NULL, scheduler_main, e) != 0) {
        mask_worker_stop(&e->masks);
        thread_pool_free(&e->pool);
        ok = 0;
    }
    if (!ok) {
        errbuf_add(err, err_len, "out of memory or threads while creating the engine");
        forward_scratch_free(&e->scratch);
        prefix_cache_free(&e->prefix);
        plan_free(&e->plan);
        sampler_scratch_free(&e->sampling);
        free(e->running);
        free(e->logits);
        free(e->responses);
        lora_cache_free(&e->loras);
        model_free(&e->m);
        free(e);
        return MLR_OUT_OF_MEMORY;
    }
    e->next_id = 1;
    *out = e;
    return MLR_OK;
}

void mlr_destroy(mlr_engine *e) {
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->shutdown = 1;
    pthread_cond_broadcast(&e->work);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->scheduler, NULL);
    mask_worker_stop(&e->masks); /* idle: the scheduler settled its last step */
    while (e->n_running > 0) finish_running(e, e->n_running - 1);
    while (e->queue_head) {
        request *r = e->queue_head;
        e->queue_head = r->next;
        request_free(r);
    }
    thread_pool_free(&e->pool);
    forward_scratch_free(&e->scratch);
    prefix_cache_free(&e->prefix);
    lora_cache_free(&e->loras);
    model_free(&e->m);
    plan_free(&e->plan);
    sampler_scratch_free(&e->sampling);
    free(e->running);
    free(e->logits);
    free(e->responses);
    pthread_mutex_destroy(&e->mu);
    pthread_mutex_destroy(&e->compute_mu);
    pthread_cond_destroy(&e->work);
    pthread_cond_destroy(&e->answered);
    free(e);
}

static int32_t *copy_ints(const int32_t *src, int64_t n) {
    if (n <= 0) return NULL;
    int32_t *dst = malloc((size_t)n * sizeof(int32_t));
    if (dst) memcpy(dst, src, (size_t)n * sizeof(int32_t));
    return dst;
}

int32_t mlr_enqueue(mlr_engine *e, const mlr_request *q, uint64_t *request_id, char *err, size_t err_len) {
    if (err && err_len) err[0] = '\0';
    const mlr_request_limits limits = {e->m.cfg.vocab_size, e->params.max_seq_len};
    if (mlr_request_check(q, &limits, err, err_len) > 0) return MLR_INVALID_ARGUMENT;
    if (q->constraint && constraint_matcher_vocab_size(q->constraint) > e->m.cfg.vocab_size) {
        errbuf_add(err, err_len, "the constraint's vocabulary (%d tokens) is larger than the model's (%d)",
                   constraint_matcher_vocab_size(q->constraint), e->m.cfg.vocab_size);
        return MLR_INVALID_ARGUMENT;
    }

    request *r = calloc(1, sizeof *r);
    if (!r) return MLR_OUT_OF_MEMORY;
    r->p = *q;
    r->tokens = malloc(((size_t)q->prompt_len + (size_t)q->max_new_tokens) * sizeof(int32_t));
    r->end_ids = copy_ints(q->end_ids, q->n_end_ids);
    r->stop_ids = copy_ints(q->stop_ids, q->n_stop_ids);
    r->bias_ids = copy_ints(q->logit_bias_ids, q->n_logit_bias);
    if (q->n_logit_bias > 0 && (r->bias_values = malloc((size_t)q->n_logit_bias * sizeof(float))))
        memcpy(r->bias_values, q->logit_bias_values, (size_t)q->n_logit_bias * sizeof(float));
    int ok = r->tokens && (q->n_end_ids == 0 || r->end_ids) && (q->n_stop_ids == 0 || r->stop_ids) &&
             (q->n_logit_bias == 0 || (r->bias_ids && r->bias_values));
    if (ok && q->constraint) ok = mlr_matcher_clone(q->constraint, &r->matcher, NULL, 0) == MLR_OK;
    if (ok && q->lora_weights) {
        const size_t bytes = (size_t)q->lora_rows * (size_t)q->lora_row_len * (size_t)dtype_size(q->lora_weights_dtype);
        r->lora_weights = malloc(bytes);
        r->lora_config = copy_ints(q->lora_config, q->lora_rows * q->lora_config_width);
        ok = r->lora_weights && r->lora_config;
        if (ok) memcpy(r->lora_weights, q->lora_weights, bytes);
    }
    if (!ok) {
        request_free(r);
        errbuf_add(err, err_len, "out of memory copying the request");
        return MLR_OUT_OF_MEMORY;
    }
    memcpy(r->tokens, q->prompt, (size_t)q->prompt_len * sizeof(int32_t));
    r->n_tokens = q->prompt_len;
    r->p.prompt = r->p.end_ids = r->p.stop_ids = r->p.lora_config = NULL;
    r->p.lora_weights = NULL;
    r->p.constraint = NULL;
    r->p.logit_bias_ids = NULL;
    r->p.logit_bias_values = NULL;

    pthread_mutex_lock(&e->mu);
    r->id = e->next_id++;
    if (e->queue_tail) e->queue_tail->next = r;
    else e->queue_head = r;
    e->queue_tail = r;
    *request_id = r->id;
    pthread_cond_signal(&e->work);
    pthread_mutex_unlock(&e->mu);
    return MLR_OK;
}

int32_t mlr_await_responses(mlr_engine *e, mlr_response *out, int32_t capacity, int32_t timeout_ms, int32_t *n_out) {
    *n_out = 0;
    if (capacity <= 0) return MLR_INVALID_ARGUMENT;
    pthread_mutex_lock(&e->mu);
    if (e->resp_count == 0 && timeout_ms > 0) {
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
        while (e->resp_count == 0 && !e->shutdown)
            if (pthread_cond_timedwait(&e->answered, &e->mu, &deadline) == ETIMEDOUT) break;
    }
    const int32_t n = e->resp_count < capacity ? e->resp_count : capacity;
    if (n > 0) memcpy(out, e->responses + e->resp_head, (size_t)n * sizeof *out);
    e->resp_head += n;
    e->resp_count -= n;
    if (e->resp_count == 0) e->resp_head = 0;
    if (n > 0) pthread_cond_signal(&e->work); /* a scheduler waiting for queue room may go on */
    *n_out = n;
    pthread_mutex_unlock(&e->mu);
    return MLR_OK;
}

int32_t mlr_cancel(mlr_engine *e, uint64_t id) {
    int32_t status = MLR_NOT_FOUND;
    pthread_mutex_lock(&e->mu);
    for (request *r = e->queue_head; r; r = r->next)
        if (r->id == id && !r->cancelled) r->cancelled = 1, status = MLR_OK;
    for (int32_t s = 0; s < e->n_running; s++)
        if (e->running[s]->id == id && !e->running[s]->cancelled) e->running[s]->cancelled = 1, status = MLR_OK;
    pthread_cond_signal(&e->work);
    pthread_mutex_unlock(&e->mu);
    return status;
}

int32_t mlr_capabilities_get(mlr_engine *e, mlr_capabilities *out) {
    *out = (mlr_capabilities){.lora_pin = 1,
                              .lora_release = 1,
                              .lora_task_listing = 1,
                              .top_logprobs = 1,
                              .lora_scale = 1,
                              .max_top_logprobs = MLR_MAX_TOP_LOGPROBS,
                              .max_lora_rank = e->params.max_lora_rank,
                              .lora_dtype = e->params.lora_dtype,
                              .raw_logprobs = 1,
                              .constraints = 1,
                              .logit_bias = 1};
    return MLR_OK;
}

int32_t mlr_lora_pin(mlr_engine *e, uint64_t task_id, int32_t on, char *err, size_t err_len) {
    if (err && err_len) err[0] = '\0';
    pthread_mutex_lock(&e->mu);
    int32_t status = lora_cache_pin(&e->loras, task_id, on, err, err_len);
    pthread_mutex_unlock(&e->mu);
    return status;
}

int32_t mlr_lora_release(mlr_engine *e, uint64_t task_id, char *err, size_t err_len) {
    if (err && err_len) err[0] = '\0';
    pthread_mutex_lock(&e->mu);
    int32_t status = lora_cache_release(&e->loras, task_id, err, err_len);
    pthread_mutex_unlock(&e->mu);
    return status;
}

static int by_last_use_desc(const void *a, const void *b) {
    const mlr_lora_task_stats *x = a, *y = b;
    if (x->last_use != y->last_use) return x->last_use > y->last_use ? -1 : 1;
    return x->task_id < y->task_id ? -1 : (x->task_id > y->task_id);
}

int32_t mlr_stats_get(mlr_engine *e, mlr_stats *out, mlr_lora_task_stats *tasks, int32_t capacity, int32_t *n_tasks) {
    int32_t status = MLR_OK;
    pthread_mutex_lock(&e->mu);
    int32_t queued = 0;
    for (request *r = e->queue_head; r; r = r->next) queued++;
    const lora_cache *c = &e->loras;
    *out = (mlr_stats){.running = e->n_running,
                       .queued = queued,
                       .kv_bytes_used = e->kv_used,
                       .kv_bytes_capacity = e->kv_capacity,
                       .lora_bytes_used = c->used,
                       .lora_bytes_capacity = c->capacity,
                       .lora_tasks = c->n_tasks,
                       .max_loras = c->max_loras,
                       .lora_puts = c->puts,
                       .lora_hits = c->hits,
                       .lora_misses = c->misses,
                       .lora_evictions = c->evictions,
                       .steps = e->steps,
                       .tokens_generated = e->tokens_generated,
                       .prefix_query_tokens = e->prefix_seen.query_tokens,
                       .prefix_hit_tokens = e->prefix_seen.hit_tokens,
                       .prefix_reused_blocks = e->prefix_seen.reused_blocks,
                       .prefix_blocks = e->prefix_seen.blocks,
                       .prefix_bytes = e->prefix_seen.bytes};
    int32_t n = 0;
    if (tasks && capacity > 0) {
        mlr_lora_task_stats *all = malloc((size_t)(c->n_tasks > 0 ? c->n_tasks : 1) * sizeof *all);
        for (int32_t i = 0; all && i < c->n_tasks; i++) {
            const lora_adapter *a = c->tasks[i];
            all[i] = (mlr_lora_task_stats){a->task_id, a->bytes, a->active, a->pinned, a->release_pending, a->n_rows, a->last_use};
        }
        if (all) {
            qsort(all, (size_t)c->n_tasks, sizeof *all, by_last_use_desc);
            n = c->n_tasks < capacity ? c->n_tasks : capacity;
            memcpy(tasks, all, (size_t)n * sizeof *all);
            free(all);
        } else {
            status = MLR_OUT_OF_MEMORY; /* *out is filled; the task listing is not */
        }
    }
    if (n_tasks) *n_tasks = n;
    pthread_mutex_unlock(&e->mu);
    return status;
}

int32_t mlr_forward_logits(mlr_engine *e, const int32_t *tokens, int32_t n, uint64_t task_id, float lora_scale,
                           float *logits, char *err, size_t err_len) {
    if (err && err_len) err[0] = '\0';
    if (n <= 0 || n > e->params.max_seq_len) {
        errbuf_add(err, err_len, "token count %d is outside 1..%d", n, e->params.max_seq_len);
        return MLR_INVALID_ARGUMENT;
    }
    for (int32_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= e->m.cfg.vocab_size) {
            errbuf_add(err, err_len, "token %d at position %d is outside the vocabulary", tokens[i], i);
            return MLR_INVALID_ARGUMENT;
        }
    }
    lora_adapter *lora = NULL;
    pthread_mutex_lock(&e->mu);
    int32_t status = task_id == 0 ? MLR_OK : lora_cache_acquire(&e->loras, &e->m, task_id, NULL, e->steps, &lora, err, err_len);
    pthread_mutex_unlock(&e->mu);
    if (status != MLR_OK) return status;

    seq_kv kv = {0};
    const int32_t chunk = e->scratch.max_tokens;
    batch_entry *batch = malloc((size_t)chunk * sizeof *batch);
    float *chunk_logits = malloc((size_t)chunk * (size_t)e->m.cfg.vocab_size * sizeof(float));
    if (batch && chunk_logits && seq_kv_alloc(&kv, &e->m, n)) {
        pthread_mutex_lock(&e->compute_mu);
        forward_ctx ctx = {&e->m, &e->k, &e->pool, &e->scratch};
        for (int32_t start = 0; start < n && status == MLR_OK; start += chunk) {
            const int32_t m = n - start < chunk ? n - start : chunk;
            for (int32_t i = 0; i < m; i++) batch[i] = (batch_entry){tokens[start + i], start + i, &kv, lora, lora_scale, i};
            status = forward(&ctx, batch, m, chunk_logits);
            if (status == MLR_OK)
                memcpy(logits + (int64_t)start * e->m.cfg.vocab_size, chunk_logits, (size_t)m * (size_t)e->m.cfg.vocab_size * sizeof(float));
            else
                errbuf_add(err, err_len, "out of memory in the forward pass (positions %d..%d)", start, start + m - 1);
        }
        pthread_mutex_unlock(&e->compute_mu);
    } else {
        errbuf_add(err, err_len, "out of memory");
        status = MLR_OUT_OF_MEMORY;
    }
    seq_kv_free(&kv);
    free(batch);
    free(chunk_logits);
    if (lora) {
        pthread_mutex_lock(&e->mu);
        lora_cache_release_use(&e->loras, lora, e->steps);
        pthread_mutex_unlock(&e->mu);
    }
    return status;
}

int32_t mlr_cpu_test_fail_allocs(mlr_engine *e, int32_t n) {
    if (n < 0) return MLR_INVALID_ARGUMENT;
    forward_scratch_fail_next(&e->scratch, n);
    return MLR_OK;
}

int32_t mlr_cpu_test_mask_overlap(mlr_engine *e, int32_t mode, int64_t *precomputed, int64_t *computed_inline) {
    if (mode < -1 || mode > 2) return MLR_INVALID_ARGUMENT;
    pthread_mutex_lock(&e->masks.mu);
    if (mode >= 0) e->masks.mode = mode;
    if (precomputed) *precomputed = e->masks.precomputed;
    if (computed_inline) *computed_inline = e->masks.computed_inline;
    pthread_mutex_unlock(&e->masks.mu);
    return MLR_OK;
}
