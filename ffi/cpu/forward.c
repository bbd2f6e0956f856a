#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/dtype_size.h"
#include "attention.h"

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
    s->lora_mid = malloc(LORA_SITE_MODULES * t * (size_t)s->max_rank * sizeof(float));
    const int64_t widest = inter > h ? (int64_t)inter : (int64_t)h;
    s->xb = malloc((size_t)gemm_prepare_elems(max_tokens, widest > m->q_dim ? widest : m->q_dim) * sizeof(uint16_t));
    s->group_adapter = malloc(t * sizeof *s->group_adapter);
    s->group_tokens = malloc(t * sizeof(int32_t));
    s->group_scale = malloc(t * sizeof(float));
    s->chunks = malloc(t * sizeof(lora_chunk));
    s->tiles = malloc((t + 1) * sizeof(int32_t));
    s->rope = malloc(t * (size_t)m->cfg.head_dim * sizeof(float));
    if (!s->x || !s->xn || !s->q || !s->k || !s->v || !s->att || !s->o || !s->gate || !s->up || !s->lora_mid || !s->xb ||
        !s->group_adapter || !s->group_tokens || !s->group_scale || !s->chunks || !s->tiles ||
        !s->rope) {
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
    free(s->xb);
    free(s->group_adapter);
    free(s->group_tokens);
    free(s->group_scale);
    free(s->chunks);
    free(s->tiles);
    free(s->rope);
    *s = (forward_scratch){0};
}

/* ---------------------------------------------------------------------------------------------- */
/* LoRA, grouped by adapter */

#define LORA_CHUNK 32  /* group positions per A task */
#define LORA_BLOCK 256 /* outputs per B task */

/* Groups this step's tokens by adapter (first appearance order; batch order within a group) and cuts the
 * groups into chunks. Returns 0 when no token has an adapter. */
static int lora_groups(forward_scratch *s, const batch_entry *batch, int32_t n) {
    s->n_groups = 0;
    s->n_chunks = 0;
    int32_t at = 0;
    for (int32_t t = 0; t < n; t++) {
        const lora_adapter *a = batch[t].lora;
        if (!a) continue;
        int32_t g = 0;
        while (g < s->n_groups && s->group_adapter[g] != a) g++;
        if (g < s->n_groups) continue; /* placed with its group's first token */
        s->group_adapter[s->n_groups++] = a;
        const int32_t begin = at;
        for (int32_t u = t; u < n; u++) {
            if (batch[u].lora != a) continue;
            s->group_tokens[at] = u;
            s->group_scale[at] = batch[u].lora_scale;
            at++;
        }
        for (int32_t c = begin; c < at; c += LORA_CHUNK)
            s->chunks[s->n_chunks++] = (lora_chunk){g, c, c + LORA_CHUNK < at ? c + LORA_CHUNK : at};
    }
    return s->n_groups > 0;
}

/* Where a module's B lands: its outputs are columns [at, at + rows) of the site's output space. */
typedef struct lora_mod {
    int32_t module;
    int64_t at, rows;
} lora_mod;

/* A slice of the output space: columns [at, at + rows) are y[t][0 .. rows), rows ld apart. */
typedef struct lora_out {
    float *y;
    int64_t ld;
    int64_t at, rows;
} lora_out;

/* The LoRA modules reading one input, applied in the listed order to every output. */
typedef struct lora_site {
    const forward_ctx *ctx;
    int32_t layer;
    const gemm_x *x;
    int64_t in;
    const lora_mod *mods;
    int n_mods;
    const lora_out *outs;
    int n_outs;
    int64_t space;     /* width of the output space */
} lora_site;

static const lora_row *site_row(const lora_site *site, const lora_adapter *a, int m) {
    const model *mdl = site->ctx->m;
    const lora_row *row = &a->rows[(size_t)site->mods[m].module * (size_t)mdl->cfg.num_layers + (size_t)site->layer];
    return row->rank > 0 ? row : NULL;
}

static float *site_mid(const lora_site *site, int m, int32_t pos) {
    const forward_scratch *s = site->ctx->scratch;
    return s->lora_mid + ((size_t)m * (size_t)s->max_tokens + (size_t)pos) * (size_t)s->max_rank;
}

/* mid = A x for a chunk of a group, per module: item = chunk * n_mods + module. */
static void lora_shrink(void *arg, int64_t begin, int64_t end) {
    const lora_site *site = arg;
    const forward_scratch *s = site->ctx->scratch;
    for (int64_t item = begin; item < end; item++) {
        const lora_chunk *c = &s->chunks[item / site->n_mods];
        const int m = (int)(item % site->n_mods);
        const lora_adapter *a = s->group_adapter[c->group];
        const lora_row *row = site_row(site, a, m);
        if (!row) continue;
        gemm_block(site->ctx->k, site->x, s->group_tokens + c->begin, c->end - c->begin, row->a, a->dtype,
                   site->in * dtype_size(a->dtype), NULL, site->in, 0, row->rank, site_mid(site, m, c->begin),
                   s->max_rank);
    }
}

/* y += scale B mid for a chunk and a block of the output space, every module in order: item = chunk *
 * blocks + block. Blocks never share an output, so no two tasks write the same element. */
static void lora_expand_items(void *arg, int64_t begin, int64_t end) {
    const lora_site *site = arg;
    const forward_scratch *s = site->ctx->scratch;
    const int64_t blocks = (site->space + LORA_BLOCK - 1) / LORA_BLOCK;
    for (int64_t item = begin; item < end; item++) {
        const lora_chunk *c = &s->chunks[item / blocks];
        const int64_t lo = (item % blocks) * LORA_BLOCK;
        const int64_t hi = lo + LORA_BLOCK < site->space ? lo + LORA_BLOCK : site->space;
        const lora_adapter *a = s->group_adapter[c->group];
        const int64_t elem = dtype_size(a->dtype);
        for (int m = 0; m < site->n_mods; m++) {
            const lora_row *row = site_row(site, a, m);
            if (!row) continue;
            const lora_mod *mod = &site->mods[m];
            const int64_t mlo = lo > mod->at ? lo : mod->at, mhi = hi < mod->at + mod->rows ? hi : mod->at + mod->rows;
            for (int o = 0; o < site->n_outs && mlo < mhi; o++) {
                const lora_out *out = &site->outs[o];
                const int64_t from = mlo > out->at ? mlo : out->at;
                const int64_t to = mhi < out->at + out->rows ? mhi : out->at + out->rows;
                if (from >= to) continue;
                lora_expand(site->ctx->k, out->y + (from - out->at), out->ld, s->group_tokens + c->begin,
                            c->end - c->begin, s->group_scale + c->begin, site_mid(site, m, c->begin), s->max_rank,
                            row->rank, (const unsigned char *)row->bt + (from - mod->at) * elem, a->dtype,
                            mod->rows * elem, 0, to - from);
            }
        }
    }
}

static void apply_lora(const lora_site *site) {
    const forward_scratch *s = site->ctx->scratch;
    if (s->n_groups == 0) return;
    thread_pool_run(site->ctx->pool, (int64_t)s->n_chunks * site->n_mods, 1, lora_shrink, (void *)site);
    const int64_t blocks = (site->space + LORA_BLOCK - 1) / LORA_BLOCK;
    thread_pool_run(site->ctx->pool, (int64_t)s->n_chunks * blocks, 1, lora_expand_items, (void *)site);
}

/* cs[j] = cos(pos * inv_freq[j]), cs[half + j] = sin(..) for j < hd / 2: one token's rotation, the same
 * for every layer (angle in double, each value rounded to f32). */
static void rope_table(const model *m, float *cs, int32_t pos) {
    const int32_t half = m->cfg.head_dim / 2;
    for (int32_t j = 0; j < half; j++) {
        const double angle = (double)pos * (double)m->inv_freq[j];
        cs[j] = (float)cos(angle);
        cs[half + j] = (float)sin(angle);
    }
}

/* HF rotate_half RoPE on each head of x[t] ([n_heads * hd]), rotation cs (rope_table). */
static void rope(const model *m, float *x, int32_t n_heads, const float *cs) {
    const int32_t hd = m->cfg.head_dim, half = hd / 2;
    for (int32_t j = 0; j < half; j++) {
        const float c = cs[j], s = cs[half + j];
        for (int32_t h = 0; h < n_heads; h++) {
            float *v = x + (int64_t)h * hd;
            const float x1 = v[j], x2 = v[j + half];
            v[j] = x1 * c - x2 * s;
            v[j + half] = x2 * c + x1 * s;
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* per-token row work between the products, one parallel-for each (rows are independent, and each row's
 * arithmetic is the same whichever thread runs it) */

typedef struct row_job {
    const forward_ctx *ctx;
    const batch_entry *batch;
    int32_t layer;
    const weight *norm;  /* norm_rows: the norm's weight */
    int residual;        /* norm_rows: x += o first */
    const gemm_x *gx;    /* the rows to round to bf16 after (xn, or gate for silu_rows) */
} row_job;

/* x[t] += o[t] (when residual), xn[t] = rmsnorm(x[t]), then row t of gx rounded. */
static void norm_rows(void *arg, int64_t begin, int64_t end) {
    const row_job *j = arg;
    forward_scratch *s = j->ctx->scratch;
    const int64_t h = j->ctx->m->cfg.hidden_size;
    for (int64_t t = begin; t < end; t++) {
        float *x = s->x + t * h;
        if (j->residual) {
            const float *o = s->o + t * h;
            for (int64_t i = 0; i < h; i++) x[i] += o[i];
        }
        rmsnorm(s->xn + t * h, x, j->norm->data, j->norm->dtype, h, j->ctx->m->cfg.rms_norm_eps);
    }
    gemm_round(j->gx, begin, end);
}

/* gate[t] = silu(gate[t]) * up[t], then row t of gx (over gate) rounded. */
static void silu_rows(void *arg, int64_t begin, int64_t end) {
    const row_job *j = arg;
    forward_scratch *s = j->ctx->scratch;
    const int64_t inter = j->ctx->m->cfg.intermediate_size;
    float e[256];
    for (int64_t i = begin * inter; i < end * inter; i += 256) {
        const int64_t m = end * inter - i < 256 ? end * inter - i : 256;
        for (int64_t q = 0; q < m; q++) e[q] = -s->gate[i + q];
        exp_floats(j->ctx->k, e, e, m); /* expf(-g), bit for bit */
        for (int64_t q = 0; q < m; q++) {
            const float g = s->gate[i + q];
            s->gate[i + q] = g / (1.0f + e[q]) * s->up[i + q];
        }
    }
    gemm_round(j->gx, begin, end);
}

/* RoPE on q[t] and k[t] at the token's position, then k[t] and v[t] into its sequence's cache. */
static void rope_rows(void *arg, int64_t begin, int64_t end) {
    const row_job *j = arg;
    const model *m = j->ctx->m;
    forward_scratch *s = j->ctx->scratch;
    const int64_t q_dim = m->q_dim, kv_dim = m->kv_dim;
    for (int64_t t = begin; t < end; t++) {
        const batch_entry *b = &j->batch[t];
        const float *cs = s->rope + t * m->cfg.head_dim;
        rope(m, s->q + t * q_dim, m->cfg.num_heads, cs);
        rope(m, s->k + t * kv_dim, m->cfg.num_kv_heads, cs);
        const size_t at = ((size_t)j->layer * (size_t)b->kv->capacity + (size_t)b->pos) * (size_t)kv_dim;
        memcpy(b->kv->k + at, s->k + t * kv_dim, (size_t)kv_dim * sizeof(float));
        memcpy(b->kv->v + at, s->v + t * kv_dim, (size_t)kv_dim * sizeof(float));
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
    lora_groups(s, batch, n);

    for (int32_t t = 0; t < n; t++) {
        const void *row = (const unsigned char *)m->embed.data + (int64_t)batch[t].token * embed_row;
        for (int64_t i = 0; i < h; i++) s->x[t * h + i] = weight_at(row, m->embed.dtype, i);
    }

    /* The LoRA sites: the modules reading each input, their outputs as one space. */
    const lora_mod qkv_mods[4] = {{MLR_LORA_ATTN_QKV, 0, q_dim + 2 * kv_dim},
                                  {MLR_LORA_ATTN_Q, 0, q_dim},
                                  {MLR_LORA_ATTN_K, q_dim, kv_dim},
                                  {MLR_LORA_ATTN_V, q_dim + kv_dim, kv_dim}};
    const lora_out qkv_outs[3] = {{s->q, q_dim, 0, q_dim}, {s->k, kv_dim, q_dim, kv_dim}, {s->v, kv_dim, q_dim + kv_dim, kv_dim}};
    const lora_mod dense_mod = {MLR_LORA_ATTN_DENSE, 0, h};
    const lora_out o_out = {s->o, h, 0, h};
    /* mlp_gate_up's B is [up; gate]: the space is up then gate */
    const lora_mod mlp_mods[3] = {{MLR_LORA_MLP_H_TO_4H, inter, inter}, {MLR_LORA_MLP_GATE, 0, inter},
                                  {MLR_LORA_MLP_GATE_UP, 0, 2 * inter}};
    const lora_out mlp_outs[2] = {{s->up, inter, 0, inter}, {s->gate, inter, inter, inter}};
    const lora_mod down_mod = {MLR_LORA_MLP_4H_TO_H, 0, h};
    gemm_x gx;

    for (int32_t t = 0; t < n; t++) rope_table(m, s->rope + (int64_t)t * m->cfg.head_dim, batch[t].pos);

    for (int32_t l = 0; l < m->cfg.num_layers; l++) {
        const layer_weights *w = &m->layers[l];
        /* attention (x += o of the previous layer's MLP first) */
        gemm_view(k, &gx, s->xb, s->xn, h);
        thread_pool_run(ctx->pool, n, 1, norm_rows, &(row_job){ctx, batch, l, &w->attn_norm, l > 0, &gx});
        const matmul_part qkv[3] = {{s->q, w->q.data, w->q.dtype, w->q_bias.data, q_dim, w->q.panels},
                                    {s->k, w->k.data, w->k.dtype, w->k_bias.data, kv_dim, w->k.panels},
                                    {s->v, w->v.data, w->v.dtype, w->v_bias.data, kv_dim, w->v.panels}};
        matmul_parts(k, ctx->pool, &gx, n, h, qkv, 3);
        apply_lora(&(lora_site){ctx, l, &gx, h, qkv_mods, 4, qkv_outs, 3, q_dim + 2 * kv_dim});
        thread_pool_run(ctx->pool, n, 1, rope_rows, &(row_job){ctx, batch, l, NULL, 0, NULL});
        if (!attention(ctx, batch, n, l)) return MLR_OUT_OF_MEMORY;
        gemm_prepare(k, &gx, s->xb, s->att, n, q_dim);
        matmul(k, ctx->pool, s->o, &gx, w->o.data, w->o.dtype, w->o.panels, NULL, n, q_dim, h);
        apply_lora(&(lora_site){ctx, l, &gx, q_dim, &dense_mod, 1, &o_out, 1, h});

        /* MLP (x += o first) */
        gemm_view(k, &gx, s->xb, s->xn, h);
        thread_pool_run(ctx->pool, n, 1, norm_rows, &(row_job){ctx, batch, l, &w->ffn_norm, 1, &gx});
        const matmul_part gate_up[2] = {{s->gate, w->gate.data, w->gate.dtype, NULL, inter, w->gate.panels},
                                        {s->up, w->up.data, w->up.dtype, NULL, inter, w->up.panels}};
        matmul_parts(k, ctx->pool, &gx, n, h, gate_up, 2);
        apply_lora(&(lora_site){ctx, l, &gx, h, mlp_mods, 3, mlp_outs, 2, 2 * inter});
        gemm_view(k, &gx, s->xb, s->gate, inter);
        thread_pool_run(ctx->pool, n, 1, silu_rows, &(row_job){ctx, batch, l, NULL, 0, &gx});
        matmul(k, ctx->pool, s->o, &gx, w->down.data, w->down.dtype, w->down.panels, NULL, n, inter, h);
        apply_lora(&(lora_site){ctx, l, &gx, inter, &down_mod, 1, &o_out, 1, h});
    }
    for (int64_t i = 0; i < (int64_t)n * h; i++) s->x[i] += s->o[i];

    /* logits for the rows that want them */
    int32_t rows = 0;
    for (int32_t t = 0; t < n; t++) {
        if (batch[t].logits_row < 0) continue;
        rmsnorm(s->xn + (int64_t)batch[t].logits_row * h, s->x + t * h, m->final_norm.data, m->final_norm.dtype, h, eps);
        rows++;
    }
    if (rows > 0) {
        gemm_prepare(k, &gx, s->xb, s->xn, rows, h);
        matmul(k, ctx->pool, logits, &gx, m->lm_head.data, m->lm_head.dtype, m->lm_head.panels, NULL, rows, h,
               m->cfg.vocab_size);
    }
    return MLR_OK;
}
