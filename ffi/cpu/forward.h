/*
 * One forward step over a batch of tokens from many sequences (prefill chunks and decode tokens mixed),
 * each sequence with its own KV cache, position and LoRA adapter (or none) at its own scale.
 *
 * Per layer, for tokens t of the batch (HF Llama semantics):
 *   xn = rmsnorm(x)                        q,k,v = xn Wq,Wk,Wv (+bias) + LoRA;  rope(q, k) at pos[t]
 *   K/V[seq][pos[t]] = k, v                att = softmax(q K^T / sqrt(hd)) V over the sequence's 0..pos[t]
 *   x += att Wo + LoRA                     x += down(silu(gate(xn2)) * up(xn2)) (+ LoRA on each), xn2 = rmsnorm(x)
 * LoRA grouped by adapter (Punica's SGMV idea): the tokens of one adapter are one small product, mid = A x
 * for all of them, then y[t] += scale[t] * B mid[t], so each adapter's weights are read once per step.
 * Attention is blocked over keys (attention.c): online softmax, no score matrix.
 */
#ifndef MLR_FORWARD_H
#define MLR_FORWARD_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "lora_cache.h"
#include "model.h"
#include "thread_pool.h"

/* A sequence's keys and values: [num_layers][capacity][kv_dim] each, f32. */
typedef struct seq_kv {
    float *k;
    float *v;
    int32_t capacity;
} seq_kv;

int seq_kv_alloc(seq_kv *kv, const model *m, int32_t capacity);
void seq_kv_free(seq_kv *kv);
int64_t seq_kv_bytes(const model *m, int32_t capacity);

typedef struct batch_entry {
    int32_t token;
    int32_t pos;
    seq_kv *kv;
    const lora_adapter *lora; /* NULL: the base model */
    float lora_scale;
    int32_t logits_row;       /* row of the logits output (rows numbered 0, 1, ... in batch order), or -1 */
} batch_entry;

/* Work buffers for up to max_tokens tokens per step, allocated once; owned. */
typedef struct lora_chunk {
    int32_t group;           /* index into group_adapter */
    int32_t begin, end;      /* positions in group_tokens */
} lora_chunk;

typedef struct forward_scratch {
    int32_t max_tokens;
    int32_t max_rank;
    float *x, *xn, *q, *k, *v, *att, *o, *gate, *up;
    float *lora_mid;         /* [LORA_SITE_MODULES][max_tokens][max_rank]: A x per module of a site */
    uint16_t *xb;            /* the bf16 activations of the current input (gemm_prepare) */
    /* this step's LoRA groups: tokens by adapter (batch order within a group) */
    int32_t n_groups, n_chunks;
    const lora_adapter **group_adapter; /* [max_tokens] */
    int32_t *group_tokens;   /* [max_tokens] batch indices, grouped */
    float *group_scale;      /* [max_tokens] the scale of group_tokens[p] */
    lora_chunk *chunks;      /* [max_tokens] runs of at most LORA_CHUNK positions of one group */
    int32_t *tiles;          /* [max_tokens + 1] attention tiles: batch index where each begins */
    float *rope;             /* [max_tokens][head_dim] this step's rotations: cos then sin (rope_table) */
    int32_t fail_allocs;     /* test hook: the next fail_allocs forward_task_alloc calls fail; atomic */
} forward_scratch;

#define LORA_SITE_MODULES 4 /* the most LoRA modules reading one input (q/k/v: qkv, q, k, v) */

int forward_scratch_alloc(forward_scratch *s, const model *m, int32_t max_tokens, int32_t max_rank);
void forward_scratch_free(forward_scratch *s);

/* A parallel task's own work buffer (attention scores, a LoRA delta), freed with free() by the task; NULL
 * when out of memory, or when the test hook (forward_scratch_fail_next) says so. Any thread. */
void *forward_task_alloc(forward_scratch *s, size_t bytes);

/* Test hook behind mlr_cpu_test_fail_allocs: the next n forward_task_alloc calls fail (0 clears). */
void forward_scratch_fail_next(forward_scratch *s, int32_t n);

typedef struct forward_ctx {
    const model *m;
    const kernels *k;
    thread_pool *pool;
    forward_scratch *scratch;
} forward_ctx;

/*
 * Runs n tokens (n <= scratch->max_tokens); logits: [rows wanted, vocab]. Returns MLR_OK, or
 * MLR_OUT_OF_MEMORY when a task's work buffer could not be allocated: the pass stops there, the logits and
 * the K/V written for this batch's positions are not valid, and the caller must end (or not use) the
 * sequences of the batch. Nothing else is changed.
 */
int32_t forward(const forward_ctx *ctx, const batch_entry *batch, int32_t n, float *logits);

#endif /* MLR_FORWARD_H */
