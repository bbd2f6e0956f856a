#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/dtype_size.h"
#include "../common/errbuf.h"
#include "kernels.h"

/* Finds `name` in the table and checks its shape; records a problem and returns a NULL weight otherwise. */
static weight find(const mlr_tensor *tensors, int32_t n, const char *name, int64_t d0, int64_t d1, int required,
                   char *err, size_t err_len, int *problems) {
    for (int32_t i = 0; i < n; i++) {
        const mlr_tensor *t = &tensors[i];
        if (!t->name || strcmp(t->name, name) != 0) continue;
        int ndim = d1 > 0 ? 2 : 1;
        if (t->dtype < MLR_DTYPE_F32 || t->dtype > MLR_DTYPE_BF16) {
            errbuf_add(err, err_len, "%s: dtype %d is not F32, F16 or BF16", name, t->dtype);
        } else if (t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1)) {
            if (ndim == 2) {
                errbuf_add(err, err_len, "%s: shape [%lld, %lld], expected [%lld, %lld]", name, (long long)t->shape[0],
                           (long long)(t->ndim > 1 ? t->shape[1] : 0), (long long)d0, (long long)d1);
            } else {
                errbuf_add(err, err_len, "%s: shape [%lld%s], expected [%lld]", name, (long long)t->shape[0],
                           t->ndim > 1 ? ", ..." : "", (long long)d0);
            }
        } else if (!t->data) {
            errbuf_add(err, err_len, "%s: no data", name);
        } else {
            return (weight){t->data, t->dtype, NULL};
        }
        (*problems)++;
        return (weight){NULL, 0, NULL};
    }
    if (required) {
        errbuf_add(err, err_len, "%s: missing", name);
        (*problems)++;
    }
    return (weight){NULL, 0, NULL};
}

static int check_config(const mlr_model_config *c, char *err, size_t err_len) {
    int problems = 0;
#define REQUIRE(cond, ...)                          \
    if (!(cond)) {                                  \
        errbuf_add(err, err_len, __VA_ARGS__);      \
        problems++;                                 \
    }
    REQUIRE(c->hidden_size > 0, "hidden_size must be positive");
    REQUIRE(c->intermediate_size > 0, "intermediate_size must be positive");
    REQUIRE(c->num_layers > 0, "num_hidden_layers must be positive");
    REQUIRE(c->num_heads > 0, "num_attention_heads must be positive");
    REQUIRE(c->num_kv_heads > 0 && c->num_heads % (c->num_kv_heads > 0 ? c->num_kv_heads : 1) == 0,
            "num_key_value_heads (%d) must divide num_attention_heads (%d)", c->num_kv_heads, c->num_heads);
    REQUIRE(c->head_dim > 0 && c->head_dim % 2 == 0, "head_dim (%d) must be positive and even", c->head_dim);
    REQUIRE(c->vocab_size > 0, "vocab_size must be positive");
    REQUIRE(c->rms_norm_eps > 0, "rms_norm_eps must be positive");
    REQUIRE(c->rope_theta > 0, "rope_theta must be positive");
    REQUIRE(c->rope_scaling == 0 || c->rope_scaling == 1, "rope_scaling type %d is not supported (none or llama3)",
            c->rope_scaling);
    if (c->rope_scaling == 1) {
        REQUIRE(c->rope_factor > 0 && c->rope_low_freq_factor > 0 && c->rope_high_freq_factor > c->rope_low_freq_factor &&
                    c->rope_original_max_position > 0,
                "llama3 rope_scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and "
                "original_max_position_embeddings > 0");
    }
#undef REQUIRE
    return problems;
}

/* inv_freq[j] = theta^(-2j/d), with transformers' llama3 scaling when configured. */
static void rope_frequencies(const mlr_model_config *c, float *inv_freq) {
    const int half = c->head_dim / 2;
    for (int j = 0; j < half; j++) {
        double f = 1.0 / pow(c->rope_theta, (2.0 * j) / c->head_dim);
        if (c->rope_scaling == 1) {
            const double pi = 3.14159265358979323846;
            double wavelen = 2 * pi / f;
            double low_wavelen = c->rope_original_max_position / c->rope_low_freq_factor;
            double high_wavelen = c->rope_original_max_position / c->rope_high_freq_factor;
            if (wavelen > low_wavelen) {
                f = f / c->rope_factor;
            } else if (wavelen >= high_wavelen) {
                double smooth = (c->rope_original_max_position / wavelen - c->rope_low_freq_factor) /
                                (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1 - smooth) * f / c->rope_factor + smooth * f;
            }
        }
        inv_freq[j] = (float)f;
    }
}

int32_t model_init(model *m, const mlr_model_config *cfg, const mlr_tensor *tensors, int32_t n_tensors, char *err,
                   size_t err_len) {
    *m = (model){0};
    if (err && err_len) err[0] = '\0';
    if (check_config(cfg, err, err_len) > 0) return MLR_INVALID_ARGUMENT;
    m->cfg = *cfg;
    const int64_t h = cfg->hidden_size, inter = cfg->intermediate_size, v = cfg->vocab_size;
    m->q_dim = cfg->num_heads * cfg->head_dim;
    m->kv_dim = cfg->num_kv_heads * cfg->head_dim;
    m->layers = calloc((size_t)cfg->num_layers, sizeof(layer_weights));
    m->inv_freq = calloc((size_t)cfg->head_dim / 2, sizeof(float));
    if (!m->layers || !m->inv_freq) {
        model_free(m);
        errbuf_add(err, err_len, "out of memory");
        return MLR_OUT_OF_MEMORY;
    }
    rope_frequencies(cfg, m->inv_freq);

    int problems = 0;
#define FIND(name, d0, d1, required) find(tensors, n_tensors, name, d0, d1, required, err, err_len, &problems)
    m->embed = FIND("model.embed_tokens.weight", v, h, 1);
    m->final_norm = FIND("model.norm.weight", h, 0, 1);
    m->lm_head = cfg->tie_word_embeddings ? m->embed : FIND("lm_head.weight", v, h, 1);
    char name[128];
    for (int i = 0; i < cfg->num_layers; i++) {
        layer_weights *l = &m->layers[i];
#define LAYER(field, suffix, d0, d1, required)                                  \
    snprintf(name, sizeof name, "model.layers.%d.%s", i, suffix);              \
    l->field = FIND(name, d0, d1, required);
        LAYER(attn_norm, "input_layernorm.weight", h, 0, 1);
        LAYER(q, "self_attn.q_proj.weight", m->q_dim, h, 1);
        LAYER(k, "self_attn.k_proj.weight", m->kv_dim, h, 1);
        LAYER(v, "self_attn.v_proj.weight", m->kv_dim, h, 1);
        LAYER(q_bias, "self_attn.q_proj.bias", m->q_dim, 0, cfg->attention_bias);
        LAYER(k_bias, "self_attn.k_proj.bias", m->kv_dim, 0, cfg->attention_bias);
        LAYER(v_bias, "self_attn.v_proj.bias", m->kv_dim, 0, cfg->attention_bias);
        LAYER(o, "self_attn.o_proj.weight", h, m->q_dim, 1);
        LAYER(ffn_norm, "post_attention_layernorm.weight", h, 0, 1);
        LAYER(gate, "mlp.gate_proj.weight", inter, h, 1);
        LAYER(up, "mlp.up_proj.weight", inter, h, 1);
        LAYER(down, "mlp.down_proj.weight", h, inter, 1);
#undef LAYER
    }
#undef FIND
    if (problems > 0) {
        model_free(m);
        return MLR_INVALID_ARGUMENT;
    }
    m->dtype = m->layers[0].q.dtype;
    return MLR_OK;
}

/* The matrices model_pack_panels packs: 7 per layer, then lm_head (i = 7 num_layers); their shapes. */
static weight *matrix_at(model *m, int i, int64_t *rows, int64_t *cols) {
    const int64_t h = m->cfg.hidden_size, inter = m->cfg.intermediate_size;
    if (i == 7 * m->cfg.num_layers) {
        *rows = m->cfg.vocab_size, *cols = h;
        return &m->lm_head;
    }
    layer_weights *l = &m->layers[i / 7];
    switch (i % 7) {
    case 0: *rows = m->q_dim, *cols = h; return &l->q;
    case 1: *rows = m->kv_dim, *cols = h; return &l->k;
    case 2: *rows = m->kv_dim, *cols = h; return &l->v;
    case 3: *rows = h, *cols = m->q_dim; return &l->o;
    case 4: *rows = inter, *cols = h; return &l->gate;
    case 5: *rows = inter, *cols = h; return &l->up;
    default: *rows = h, *cols = inter; return &l->down;
    }
}

static void free_panels(model *m) {
    int64_t rows, cols;
    for (int i = 0; m->layers && i <= 7 * m->cfg.num_layers; i++) {
        weight *w = matrix_at(m, i, &rows, &cols);
        free(w->panels);
        w->panels = NULL;
    }
}

typedef struct pack_job {
    uint16_t *dst;
    const uint16_t *src;
    int64_t rows, cols;
} pack_job;

static void pack_panels(void *ctx, int64_t begin, int64_t end) {
    const pack_job *j = ctx;
    panels_pack(j->dst, j->src, j->rows, j->cols, begin, end);
}

int32_t model_pack_panels(model *m, thread_pool *pool) {
    for (int i = 0; i <= 7 * m->cfg.num_layers; i++) {
        int64_t rows, cols;
        weight *w = matrix_at(m, i, &rows, &cols);
        if (w->dtype != MLR_DTYPE_BF16 || w->panels) continue;
        /* whole 64-byte lines, aligned: a panel holds one line per pair of k */
        w->panels = aligned_alloc(64, (size_t)panels_elems(rows, cols) * sizeof(uint16_t));
        if (!w->panels) {
            free_panels(m);
            return MLR_OUT_OF_MEMORY;
        }
        pack_job job = {w->panels, w->data, rows, cols};
        thread_pool_run(pool, (rows + 15) / 16, 16, pack_panels, &job);
    }
    return MLR_OK;
}

/* Every weight the model reads and its element count: embed, final_norm, lm_head, then 12 per layer (the
 * 7 matrices of matrix_at, 2 norms, 3 biases). */
static int32_t weight_count(const model *m) { return 3 + 12 * m->cfg.num_layers; }

static weight *weight_entry(model *m, int32_t i, int64_t *elems) {
    const int64_t h = m->cfg.hidden_size, v = m->cfg.vocab_size;
    if (i < 3) {
        *elems = i == 1 ? h : v * h;
        return i == 0 ? &m->embed : i == 1 ? &m->final_norm : &m->lm_head;
    }
    const int32_t layer = (i - 3) / 12, j = (i - 3) % 12;
    if (j < 7) {
        int64_t rows, cols;
        weight *w = matrix_at(m, 7 * layer + j, &rows, &cols);
        *elems = rows * cols;
        return w;
    }
    layer_weights *l = &m->layers[layer];
    switch (j) {
    case 7: *elems = h; return &l->attn_norm;
    case 8: *elems = h; return &l->ffn_norm;
    case 9: *elems = m->q_dim; return &l->q_bias;
    case 10: *elems = m->kv_dim; return &l->k_bias;
    default: *elems = m->kv_dim; return &l->v_bias;
    }
}

/* What a weight needs copied: its bytes rounded to whole lines, or 0 (absent, packed, or a tied lm_head,
 * which shares the embedding's copy). */
static size_t copy_bytes(const model *m, const weight *w, int64_t elems) {
    if (!w->data || w->panels || (w == &m->lm_head && m->cfg.tie_word_embeddings)) return 0;
    return ((size_t)elems * (size_t)dtype_size(w->dtype) + 63) & ~(size_t)63;
}

int32_t model_own_weights(model *m) {
    size_t total = 0;
    int64_t elems;
    for (int32_t i = 0; i < weight_count(m); i++) {
        const weight *w = weight_entry(m, i, &elems);
        total += copy_bytes(m, w, elems);
    }
    unsigned char *copy = aligned_alloc(64, total > 0 ? total : 64);
    if (!copy) return MLR_OUT_OF_MEMORY;
    size_t at = 0;
    for (int32_t i = 0; i < weight_count(m); i++) {
        weight *w = weight_entry(m, i, &elems);
        const size_t bytes = copy_bytes(m, w, elems);
        if (bytes > 0) {
            memcpy(copy + at, w->data, (size_t)elems * (size_t)dtype_size(w->dtype));
            w->data = copy + at;
            at += bytes;
        } else if (w->panels) {
            w->data = NULL;
        }
    }
    if (m->cfg.tie_word_embeddings && !m->lm_head.panels) m->lm_head.data = m->embed.data;
    m->owned = copy;
    return MLR_OK;
}

void model_free(model *m) {
    free_panels(m);
    free(m->owned);
    m->owned = NULL;
    free(m->layers);
    free(m->inv_freq);
    m->layers = NULL;
    m->inv_freq = NULL;
}

int32_t model_lora_shape(const model *m, int32_t module_id, int64_t *in, int64_t *out) {
    const int64_t h = m->cfg.hidden_size, inter = m->cfg.intermediate_size;
    switch (module_id) {
    case MLR_LORA_ATTN_QKV: *in = h; *out = m->q_dim + 2 * m->kv_dim; return 1;
    case MLR_LORA_ATTN_Q: *in = h; *out = m->q_dim; return 1;
    case MLR_LORA_ATTN_K:
    case MLR_LORA_ATTN_V: *in = h; *out = m->kv_dim; return 1;
    case MLR_LORA_ATTN_DENSE: *in = m->q_dim; *out = h; return 1;
    case MLR_LORA_MLP_H_TO_4H: /* gate_proj */
    case MLR_LORA_MLP_GATE: *in = h; *out = inter; return 1; /* up_proj */
    case MLR_LORA_MLP_4H_TO_H: *in = inter; *out = h; return 1; /* down_proj */
    case MLR_LORA_MLP_GATE_UP: *in = h; *out = 2 * inter; return 1; /* [up; gate] */
    default: return 0;
    }
}
