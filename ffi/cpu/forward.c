#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/dtype_size.h"

int64_t seq_kv_bytes(const model *m, int32_t capacity) {
    return 2 * (int64_t)m->cfg.num_layers * capacity * m->kv_dim * (int64_t)sizeof(float);
}

int seq_kv_alloc(seq_kv *kv, const model *m, int32_t capacity) {
    const size_t n = (size_t)m->cfg.num_layers * (size_t)capacity * (size_t)m->kv_dim;
    kv->k = malloc(n * sizeof(float));
    kv->v = malloc(n * sizeof(float));
    kv->capacity = capacity;
    if (!kv->k || !kv->v) {
        seq_kv_free(kv);
        return 0;
    }
    return 1;
}

void seq_kv_free(seq_kv *kv) {
    free(kv->k);
    free(kv->v);
    kv->k = kv->v = NULL;
}

int forward_scratch_alloc(forward_scratch *s, const model *m, int32_t max_tokens, int32_t max_rank) {
    const size_t t = (size_t)max_tokens;
    const size_t h = (size_t)m->cfg.hidden_size, inter = (size_t)m->cfg.intermediate_size;
    *s = (forward_scratch){.max_tokens = max_tokens, .max_rank = max_rank > 0 ? max_rank : 1};
    s->x = malloc(t * h * sizeof(float));
    s->xn = malloc(t * (inter > h ? inter : h) * sizeof(float));
    s->q = malloc(t * (size_t)m->q_dim * sizeof(float));
    s->k = malloc(t * (size_t)m->kv_dim * sizeof(float));
    s->v = malloc(t * (size_t)m->kv_dim * sizeof(float));
    s->att = malloc(t * (size_t)m->q_dim * sizeof(float));
    s->o = malloc(t * h * sizeof(float));
    s->gate = malloc(t * inter * sizeof(float));
    s->up = malloc(t * inter * sizeof(float));
    s->lora_mid = malloc(t * (size_t)s->max_rank * sizeof(float));
    if (!s->x || !s->xn || !s->q || !s->k || !s->v || !s->att || !s->o || !s->gate || !s->up || !s->lora_mid) {
        forward_scratch_free(s);
        return 0;
    }
    return 1;
}

void *forward_task_alloc(forward_scratch *s, size_t bytes) {
    int32_t left = __atomic_load_n(&s->fail_allocs, __ATOMIC_RELAXED);
    while (left > 0) { /* the test hook: take one failure */
        if (__atomic_compare_exchange_n(&s->fail_allocs, &left, left - 1, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return NULL;
    }
    return malloc(bytes);
}

void forward_scratch_fail_next(forward_scratch *s, int32_t n) { __atomic_store_n(&s->fail_allocs, n, __ATOMIC_RELAXED); }

void forward_scratch_free(forward_scratch *s) {
    free(s->x);
    free(s->xn);
    free(s->q);
    free(s->k);
    free(s->v);
    free(s->att);
    free(s->o);
    free(s->gate);
    free(s->up);
    free(s->lora_mid);
    *s = (forward_scratch){0};
}

/* ---------------------------------------------------------------------------------------------- */
/* LoRA: y[t] += scale[t] * B (A x[t]) for the tokens whose adapter has this (module, layer) */

/* Where the rows of B land: consecutive slices of B's output go to consecutive targets. */
typedef struct lora_target {
    float *y;          /* [n_tokens, stride] */
    int64_t stride;
    int64_t rows;      /* how many outputs of B go here */
} lora_target;

typedef struct lora_job {
    const forward_ctx *ctx;
    const batch_entry *batch;
    int32_t module, layer;
    const float *x;    /* [n, in] */
    int64_t in;
    const lora_target *targets;
    int n_targets;
    int failed;        /* a task could not allocate its buffer; atomic */
} lora_job;

static void lora_tokens(void *arg, int64_t begin, int64_t end) {
    lora_job *j = arg;
    const model *m = j->ctx->m;
    int64_t out = 0;
    for (int i = 0; i < j->n_targets; i++) out += j->targets[i].rows;
    float *delta = forward_task_alloc(j->ctx->scratch, (size_t)out * sizeof(float)); /* B (A x[t]) */
    if (!delta) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t t = begin; t < end; t++) {
        const lora_adapter *a = j->batch[t].lora;
        if (!a) continue;
        const lora_row *row = &a->rows[(size_t)j->module * (size_t)m->cfg.num_layers + (size_t)j->layer];
        if (row->rank == 0) continue;
        const dot_fn dot = j->ctx->k->dot[a->dtype];
        const axpy_fn axpy = j->ctx->k->axpy[a->dtype];
        const int64_t elem = dtype_size(a->dtype);
        float *mid = j->ctx->scratch->lora_mid + t * j->ctx->scratch->max_rank; /* [rank] = A x[t] */
        for (int32_t r = 0; r < row->rank; r++)
            mid[r] = dot(j->x + t * j->in, (const unsigned char *)row->a + (int64_t)r * j->in * elem, j->in);
        /* delta = sum_r mid[r] * Bt[r, :], in r order */
        for (int64_t o = 0; o < out; o++) delta[o] = 0;
        for (int32_t r = 0; r < row->rank; r++) axpy(delta, mid[r], (const unsigned char *)row->bt + (int64_t)r * out * elem, out);
        const float scale = j->batch[t].lora_scale;
        int64_t at = 0;
        for (int i = 0; i < j->n_targets; i++) {
            float *y = j->targets[i].y + t * j->targets[i].stride;
            for (int64_t o = 0; o < j->targets[i].rows; o++) y[o] += scale * delta[at + o];
            at += j->targets[i].rows;
        }
    }
    free(delta);
}

/* Returns 1, or 0 when a task ran out of memory (the outputs are then incomplete). */
static int apply_lora(const forward_ctx *ctx, const batch_entry *batch, int32_t n, int any_lora, int32_t module,
                      int32_t layer, const float *x, int64_t in, const lora_target *targets, int n_targets) {
    if (!any_lora) return 1;
    lora_job job = {ctx, batch, module, layer, x, in, targets, n_targets, 0};
    thread_pool_run(ctx->pool, n, 1, lora_tokens, &job);
    return !__atomic_load_n(&job.failed, __ATOMIC_RELAXED);
}

/* ---------------------------------------------------------------------------------------------- */
/* attention */

typedef struct attention_job {
    const forward_ctx *ctx;
    const batch_entry *batch;
    int32_t layer;
    int failed;        /* a task could not allocate its scores; atomic */
} attention_job;

static void attention_heads(void *arg, int64_t begin, int64_t end) {
    attention_job *j = arg;
    const model *m = j->ctx->m;
    const int32_t heads = m->cfg.num_heads, hd = m->cfg.head_dim, kv_dim = m->kv_dim;
    const int32_t group = heads / m->cfg.num_kv_heads;
    const float scale = 1.0f / sqrtf((float)hd);
    const dot_fn dot = j->ctx->k->dot[MLR_DTYPE_F32];
    float *scores = NULL;
    int32_t scores_cap = 0;
    for (int64_t item = begin; item < end; item++) {
        const int64_t t = item / heads;
        const int32_t h = (int32_t)(item % heads);
        const batch_entry *e = &j->batch[t];
        const int32_t n_keys = e->pos + 1;
        if (n_keys > scores_cap) {
            free(scores);
            scores = forward_task_alloc(j->ctx->scratch, (size_t)n_keys * sizeof(float));
            scores_cap = scores ? n_keys : 0;
            if (!scores) {
                __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
                return;
            }
        }
        const float *q = j->ctx->scratch->q + t * m->q_dim + (int64_t)h * hd;
        const size_t layer_off = (size_t)j->layer * (size_t)e->kv->capacity * (size_t)kv_dim;
        const float *keys = e->kv->k + layer_off + (size_t)(h / group) * (size_t)hd;
        const float *values = e->kv->v + layer_off + (size_t)(h / group) * (size_t)hd;
        for (int32_t p = 0; p < n_keys; p++) scores[p] = dot(q, keys + (size_t)p * kv_dim, hd) * scale;
        softmax(scores, n_keys);
        float *out = j->ctx->scratch->att + t * m->q_dim + (int64_t)h * hd;
        for (int32_t d = 0; d < hd; d++) out[d] = 0;
        for (int32_t p = 0; p < n_keys; p++) {
            const float w = scores[p];
            const float *v = values + (size_t)p * kv_dim;
            for (int32_t d = 0; d < hd; d++) out[d] += w * v[d];
        }
    }
    free(scores);
}

/* HF rotate_half RoPE on each head of x[t] ([n_heads * hd]) at position pos. */
static void rope(const model *m, float *x, int32_t n_heads, int32_t pos) {
    const int32_t hd = m->cfg.head_dim, half = hd / 2;
    for (int32_t j = 0; j < half; j++) {
        const double angle = (double)pos * (double)m->inv_freq[j];
        const float c = (float)cos(angle), s = (float)sin(angle);
        for (int32_t h = 0; h < n_heads; h++) {
            float *v = x + (int64_t)h * hd;
            const float x1 = v[j], x2 = v[j + half];
            v[j] = x1 * c - x2 * s;
            v[j + half] = x2 * c + x1 * s;
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */

int32_t forward(const forward_ctx *ctx, const batch_entry *batch, int32_t n, float *logits) {
    const model *m = ctx->m;
    const kernels *k = ctx->k;
    forward_scratch *s = ctx->scratch;
    const int64_t h = m->cfg.hidden_size, inter = m->cfg.intermediate_size;
    const int64_t q_dim = m->q_dim, kv_dim = m->kv_dim;
    const float eps = m->cfg.rms_norm_eps;
    const int64_t embed_row = h * dtype_size(m->embed.dtype);
    int any_lora = 0;
    for (int32_t t = 0; t < n; t++) any_lora |= batch[t].lora != NULL;

    for (int32_t t = 0; t < n; t++) {
        const void *row = (const unsigned char *)m->embed.data + (int64_t)batch[t].token * embed_row;
        for (int64_t i = 0; i < h; i++) s->x[t * h + i] = weight_at(row, m->embed.dtype, i);
    }

    for (int32_t l = 0; l < m->cfg.num_layers; l++) {
        const layer_weights *w = &m->layers[l];
        /* attention */
        for (int32_t t = 0; t < n; t++) rmsnorm(s->xn + t * h, s->x + t * h, w->attn_norm.data, w->attn_norm.dtype, h, eps);
        matmul(k, ctx->pool, s->q, s->xn, w->q.data, w->q.dtype, w->q_bias.data, n, h, q_dim);
        matmul(k, ctx->pool, s->k, s->xn, w->k.data, w->k.dtype, w->k_bias.data, n, h, kv_dim);
        matmul(k, ctx->pool, s->v, s->xn, w->v.data, w->v.dtype, w->v_bias.data, n, h, kv_dim);
        const lora_target qkv[3] = {{s->q, q_dim, q_dim}, {s->k, kv_dim, kv_dim}, {s->v, kv_dim, kv_dim}};
        if (!apply_lora(ctx, batch, n, any_lora, MLR_LORA_ATTN_QKV, l, s->xn, h, qkv, 3) ||
            !apply_lora(ctx, batch, n, any_lora, MLR_LORA_ATTN_Q, l, s->xn, h, &qkv[0], 1) ||
            !apply_lora(ctx, batch, n, any_lora, MLR_LORA_ATTN_K, l, s->xn, h, &qkv[1], 1) ||
            !apply_lora(ctx, batch, n, any_lora, MLR_LORA_ATTN_V, l, s->xn, h, &qkv[2], 1))
            return MLR_OUT_OF_MEMORY;
        for (int32_t t = 0; t < n; t++) {
            rope(m, s->q + t * q_dim, m->cfg.num_heads, batch[t].pos);
            rope(m, s->k + t * kv_dim, m->cfg.num_kv_heads, batch[t].pos);
            const size_t at = ((size_t)l * (size_t)batch[t].kv->capacity + (size_t)batch[t].pos) * (size_t)kv_dim;
            memcpy(batch[t].kv->k + at, s->k + t * kv_dim, (size_t)kv_dim * sizeof(float));
            memcpy(batch[t].kv->v + at, s->v + t * kv_dim, (size_t)kv_dim * sizeof(float));
        }
        attention_job aj = {ctx, batch, l, 0};
        thread_pool_run(ctx->pool, (int64_t)n * m->cfg.num_heads, 1, attention_heads, &aj);
        if (__atomic_load_n(&aj.failed, __ATOMIC_RELAXED)) return MLR_OUT_OF_MEMORY;
        matmul(k, ctx->pool, s->o, s->att, w->o.data, w->o.dtype, NULL, n, q_dim, h);
        const lora_target dense = {s->o, h, h};
        if (!apply_lora(ctx, batch, n, any_lora, MLR_LORA_ATTN_DENSE, l, s->att, q_dim, &dense, 1))
            return MLR_OUT_OF_MEMORY;
        for (int64_t i = 0; i < (int64_t)n * h; i++) s->x[i] += s->o[i];

        /* MLP */
        for (int32_t t = 0; t < n; t++) rmsnorm(s->xn + t * h, s->x + t * h, w->ffn_norm.data, w->ffn_norm.dtype, h, eps);
        matmul(k, ctx->pool, s->gate, s->xn, w->gate.data, w->gate.dtype, NULL, n, h, inter);
        matmul(k, ctx->pool, s->up, s->xn, w->up.data, w->up.dtype, NULL, n, h, inter);
        const lora_target gate = {s->gate, inter, inter}, up = {s->up, inter, inter};
        const lora_target up_gate[2] = {up, gate}; /* mlp_gate_up: B is [up; gate] */
        if (!apply_lora(ctx, batch, n, any_lora, MLR_LORA_MLP_H_TO_4H, l, s->xn, h, &gate, 1) ||
            !apply_lora(ctx, batch, n, any_lora, MLR_LORA_MLP_GATE, l, s->xn, h, &up, 1) ||
            !apply_lora(ctx, batch, n, any_lora, MLR_LORA_MLP_GATE_UP, l, s->xn, h, up_gate, 2))
            return MLR_OUT_OF_MEMORY;
        for (int64_t i = 0; i < (int64_t)n * inter; i++) {
            const float g = s->gate[i];
            s->gate[i] = g / (1.0f + expf(-g)) * s->up[i];
        }
        matmul(k, ctx->pool, s->o, s->gate, w->down.data, w->down.dtype, NULL, n, inter, h);
        const lora_target down = {s->o, h, h};
        if (!apply_lora(ctx, batch, n, any_lora, MLR_LORA_MLP_4H_TO_H, l, s->gate, inter, &down, 1))
            return MLR_OUT_OF_MEMORY;
        for (int64_t i = 0; i < (int64_t)n * h; i++) s->x[i] += s->o[i];
    }

    /* logits for the rows that want them */
    int32_t rows = 0;
    for (int32_t t = 0; t < n; t++) {
        if (batch[t].logits_row < 0) continue;
        rmsnorm(s->xn + (int64_t)batch[t].logits_row * h, s->x + t * h, m->final_norm.data, m->final_norm.dtype, h, eps);
        rows++;
    }
    if (rows > 0) matmul(k, ctx->pool, logits, s->xn, m->lm_head.data, m->lm_head.dtype, NULL, rows, h, m->cfg.vocab_size);
    return MLR_OK;
}
