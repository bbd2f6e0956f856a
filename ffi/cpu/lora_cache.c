#include "lora_cache.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../common/dtype_size.h"
#include "../common/errbuf.h"

/* TensorRT-LLM's names of the module ids, as error texts use them. */
static const char *MODULE_NAMES[MLR_LORA_MODULE_COUNT] = {
    [MLR_LORA_ATTN_QKV] = "attn_qkv",
    [MLR_LORA_ATTN_Q] = "attn_q",
    [MLR_LORA_ATTN_K] = "attn_k",
    [MLR_LORA_ATTN_V] = "attn_v",
    [MLR_LORA_ATTN_DENSE] = "attn_dense",
    [MLR_LORA_MLP_H_TO_4H] = "mlp_h_to_4h",
    [MLR_LORA_MLP_4H_TO_H] = "mlp_4h_to_h",
    [MLR_LORA_MLP_GATE] = "mlp_gate",
    [MLR_LORA_CROSS_ATTN_QKV] = "cross_attn_qkv",
    [MLR_LORA_CROSS_ATTN_Q] = "cross_attn_q",
    [MLR_LORA_CROSS_ATTN_K] = "cross_attn_k",
    [MLR_LORA_CROSS_ATTN_V] = "cross_attn_v",
    [MLR_LORA_CROSS_ATTN_DENSE] = "cross_attn_dense",
    [MLR_LORA_MOE_H_TO_4H] = "moe_h_to_4h",
    [MLR_LORA_MOE_4H_TO_H] = "moe_4h_to_h",
    [MLR_LORA_MOE_GATE] = "moe_gate",
    [MLR_LORA_MOE_ROUTER] = "moe_router",
    [MLR_LORA_MLP_ROUTER] = "mlp_router",
    [MLR_LORA_MLP_GATE_UP] = "mlp_gate_up",
};

static int32_t num_layers(const lora_cache *c, const model *m) {
    (void)c;
    return m->cfg.num_layers;
}

void lora_cache_init(lora_cache *c, const model *m, int64_t capacity, int32_t max_loras, int32_t max_rank, int32_t dtype) {
    *c = (lora_cache){0};
    c->capacity = capacity;
    c->max_loras = max_loras;
    c->max_rank = max_rank;
    c->dtype = dtype;
    /* The largest adapter: max_rank on every module a Llama layer has (q, k, v, o, gate, up, down). */
    const int32_t ids[] = {MLR_LORA_ATTN_Q,      MLR_LORA_ATTN_K,      MLR_LORA_ATTN_V,   MLR_LORA_ATTN_DENSE,
                           MLR_LORA_MLP_H_TO_4H, MLR_LORA_MLP_4H_TO_H, MLR_LORA_MLP_GATE};
    int64_t per_layer = 0;
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        int64_t in, out;
        model_lora_shape(m, ids[i], &in, &out);
        per_layer += (int64_t)max_rank * (in + out);
    }
    c->max_adapter_bytes = per_layer * m->cfg.num_layers * dtype_size(dtype);
}

static void adapter_free(lora_adapter *a) {
    if (!a) return;
    free(a->data);
    free(a->rows);
    free(a);
}

void lora_cache_free(lora_cache *c) {
    for (int32_t i = 0; i < c->n_tasks; i++) adapter_free(c->tasks[i]);
    free(c->tasks);
    *c = (lora_cache){0};
}

lora_adapter *lora_cache_find(lora_cache *c, uint64_t task_id) {
    for (int32_t i = 0; i < c->n_tasks; i++)
        if (c->tasks[i]->task_id == task_id) return c->tasks[i];
    return NULL;
}

static void remove_at(lora_cache *c, int32_t i) {
    c->used -= c->tasks[i]->bytes;
    adapter_free(c->tasks[i]);
    c->tasks[i] = c->tasks[--c->n_tasks];
}

static int32_t index_of(lora_cache *c, const lora_adapter *a) {
    for (int32_t i = 0; i < c->n_tasks; i++)
        if (c->tasks[i] == a) return i;
    return -1;
}

/* Every problem of the payload against the model, in err; returns how many. seen: [MLR_LORA_MODULE_COUNT *
 * num_layers] bytes, zeroed (which (module, layer) rows were met). */
static int validate(const lora_cache *c, const model *m, const lora_payload *p, uint8_t *seen, char *err,
                    size_t err_len) {
    int problems = 0;
#define PROBLEM(...)                         \
    do {                                     \
        errbuf_add(err, err_len, __VA_ARGS__); \
        problems++;                          \
    } while (0)
    if (p->dtype != c->dtype) PROBLEM("weights dtype %d, but this engine's adapters must have dtype %d", p->dtype, c->dtype);
    if (p->config_width != 3 && p->config_width != 4) PROBLEM("config has %d columns; expected 3 or 4", p->config_width);
    if (p->rows <= 0 || p->row_len <= 0) PROBLEM("weights are [%lld, %lld]; expected at least one row", (long long)p->rows, (long long)p->row_len);
    if (!p->weights || !p->config) PROBLEM("weights or config missing");
    if (problems > 0) return problems;
    const int32_t layers = num_layers(c, m);
    for (int64_t r = 0; r < p->rows; r++) {
        const int32_t *row = p->config + r * p->config_width;
        const int32_t module = row[0], layer = row[1], rank = row[2];
        int64_t in = 0, out = 0;
        if (module < 0 || module >= MLR_LORA_MODULE_COUNT) {
            PROBLEM("row %lld: unknown module id %d", (long long)r, module);
            continue;
        }
        if (!model_lora_shape(m, module, &in, &out)) {
            PROBLEM("row %lld: module %s does not exist in this model", (long long)r, MODULE_NAMES[module]);
            continue;
        }
        if (layer < 0 || layer >= layers) PROBLEM("row %lld: %s layer %d does not exist (the model has %d layers)", (long long)r, MODULE_NAMES[module], layer, layers);
        if (rank < 1 || rank > c->max_rank) PROBLEM("row %lld: %s rank %d is outside 1..%d (max_lora_rank)", (long long)r, MODULE_NAMES[module], rank, c->max_rank);
        else if ((int64_t)rank * (in + out) > p->row_len)
            PROBLEM("row %lld: %s rank %d needs %lld values but rows hold %lld", (long long)r, MODULE_NAMES[module], rank, (long long)rank * (in + out), (long long)p->row_len);
        if (p->config_width == 4 && row[3] != 0) PROBLEM("row %lld: DoRA rows are not supported", (long long)r);
        if (layer >= 0 && layer < layers) {
            uint8_t *s = &seen[(size_t)module * (size_t)layers + (size_t)layer];
            if (*s) PROBLEM("row %lld: a second row for %s layer %d", (long long)r, MODULE_NAMES[module], layer);
            *s = 1;
        }
    }
#undef PROBLEM
    return problems;
}

/* dst[k][o] = src[o][k] for an [rows, cols] matrix of 2- or 4-byte elements (src may be unaligned). */
static void transpose(unsigned char *dst, const unsigned char *src, int64_t rows, int64_t cols, int64_t elem) {
    if (elem == 2) {
        uint16_t *d = (uint16_t *)dst;
        for (int64_t o = 0; o < rows; o++) {
            for (int64_t k = 0; k < cols; k++) {
                uint16_t v;
                memcpy(&v, src + (o * cols + k) * 2, 2);
                d[k * rows + o] = v;
            }
        }
    } else {
        float *d = (float *)dst;
        for (int64_t o = 0; o < rows; o++) {
            for (int64_t k = 0; k < cols; k++) {
                float v;
                memcpy(&v, src + (o * cols + k) * 4, 4);
                d[k * rows + o] = v;
            }
        }
    }
}

static lora_adapter *build(const model *m, uint64_t task_id, const lora_payload *p) {
    const int32_t layers = m->cfg.num_layers;
    lora_adapter *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->task_id = task_id;
    a->n_rows = (int32_t)p->rows;
    a->rows = calloc((size_t)MLR_LORA_MODULE_COUNT * (size_t)layers, sizeof(lora_row));
    int64_t floats = 0;
    for (int64_t r = 0; r < p->rows; r++) {
        const int32_t *row = p->config + r * p->config_width;
        int64_t in, out;
        model_lora_shape(m, row[0], &in, &out);
        floats += (int64_t)row[2] * (in + out);
    }
    const int64_t elem = dtype_size(p->dtype);
    a->dtype = p->dtype;
    a->data = malloc((size_t)(floats * elem));
    if (!a->rows || !a->data) {
        adapter_free(a);
        return NULL;
    }
    a->bytes = floats * elem;
    unsigned char *dst = a->data;
    for (int64_t r = 0; r < p->rows; r++) {
        const int32_t *row = p->config + r * p->config_width;
        int64_t in, out;
        model_lora_shape(m, row[0], &in, &out);
        const int32_t rank = row[2];
        const unsigned char *src = (const unsigned char *)p->weights + r * p->row_len * elem;
        /* A as given ([rank, in]); B ([out, rank]) transposed to [rank, out]. */
        memcpy(dst, src, (size_t)(rank * in * elem));
        unsigned char *bt = dst + (int64_t)rank * in * elem;
        const unsigned char *b = src + (int64_t)rank * in * elem;
        transpose(bt, b, out, rank, elem);
        a->rows[(size_t)row[0] * (size_t)layers + (size_t)row[1]] = (lora_row){rank, dst, bt};
        dst += (int64_t)rank * (in + out) * elem;
    }
    return a;
}

/* Frees room for `bytes` more (and one more task), least recently used first. */
static int make_room(lora_cache *c, int64_t bytes) {
    for (;;) {
        int fits = c->used + bytes <= c->capacity && (c->max_loras == 0 || c->n_tasks < c->max_loras);
        if (fits) return 1;
        int32_t victim = -1;
        for (int32_t i = 0; i < c->n_tasks; i++) {
            const lora_adapter *t = c->tasks[i];
            if (t->active > 0 || t->pinned) continue;
            if (victim < 0 || t->last_use < c->tasks[victim]->last_use) victim = i;
        }
        if (victim < 0) return 0;
        remove_at(c, victim);
        c->evictions++;
    }
}

int32_t lora_cache_acquire(lora_cache *c, const model *m, uint64_t task_id, const lora_payload *payload, int64_t now,
                           lora_adapter **out, char *err, size_t err_len) {
    *out = NULL;
    lora_adapter *a = lora_cache_find(c, task_id);
    if (a) {
        c->hits++;
        a->active++;
        a->last_use = now;
        *out = a;
        return MLR_OK;
    }
    c->misses++;
    if (!payload || !payload->weights) {
        errbuf_add(err, err_len, "LoRA task %" PRIu64 " not found in cache. Please send LoRA weights with request", task_id);
        return MLR_LORA_NOT_CACHED;
    }
    uint8_t *seen = calloc((size_t)MLR_LORA_MODULE_COUNT * (size_t)num_layers(c, m), 1);
    if (!seen) {
        errbuf_add(err, err_len, "out of memory validating LoRA task %" PRIu64, task_id);
        return MLR_OUT_OF_MEMORY;
    }
    const int problems = validate(c, m, payload, seen, err, err_len);
    free(seen);
    if (problems > 0) return MLR_LORA_INVALID;
    a = build(m, task_id, payload);
    if (!a) {
        errbuf_add(err, err_len, "out of memory storing LoRA task %" PRIu64, task_id);
        return MLR_OUT_OF_MEMORY;
    }
    if (a->bytes > c->capacity) { /* would never fit: waiting for room cannot help */
        errbuf_add(err, err_len,
                   "LoRA task %" PRIu64 " needs %lld bytes, more than the whole adapter cache holds (%lld bytes): "
                   "raise the adapter cache capacity",
                   task_id, (long long)a->bytes, (long long)c->capacity);
        adapter_free(a);
        return MLR_LORA_INVALID;
    }
    if (!make_room(c, a->bytes)) {
        errbuf_add(err, err_len,
                   "LoRA cache is full: task %" PRIu64 " needs %lld bytes; %lld of %lld used by %d adapters, none of them evictable",
                   task_id, (long long)a->bytes, (long long)c->used, (long long)c->capacity, c->n_tasks);
        adapter_free(a);
        return MLR_LORA_CACHE_FULL;
    }
    if (c->n_tasks == c->cap_tasks) {
        int32_t cap = c->cap_tasks ? 2 * c->cap_tasks : 8;
        lora_adapter **grown = realloc(c->tasks, (size_t)cap * sizeof *grown);
        if (!grown) {
            adapter_free(a);
            errbuf_add(err, err_len, "out of memory");
            return MLR_OUT_OF_MEMORY;
        }
        c->tasks = grown;
        c->cap_tasks = cap;
    }
    c->tasks[c->n_tasks++] = a;
    c->used += a->bytes;
    c->puts++;
    a->active = 1;
    a->last_use = now;
    *out = a;
    return MLR_OK;
}

void lora_cache_release_use(lora_cache *c, lora_adapter *a, int64_t now) {
    a->active--;
    a->last_use = now;
    if (a->active == 0 && a->release_pending) {
        int32_t i = index_of(c, a);
        if (i >= 0) remove_at(c, i);
    }
}

int32_t lora_cache_pin(lora_cache *c, uint64_t task_id, int32_t on, char *err, size_t err_len) {
    lora_adapter *a = lora_cache_find(c, task_id);
    if (!a) {
        errbuf_add(err, err_len, "LoRA task %" PRIu64 " is not cached", task_id);
        return MLR_NOT_FOUND;
    }
    if (on && !a->pinned) {
        int64_t pinned = 0;
        for (int32_t i = 0; i < c->n_tasks; i++)
            if (c->tasks[i]->pinned) pinned += c->tasks[i]->bytes;
        const int64_t cap = c->capacity - c->max_adapter_bytes;
        if (pinned + a->bytes > cap) {
            errbuf_add(err, err_len,
                       "pinning task %" PRIu64 " would pin %lld bytes; at most %lld may be pinned (the capacity minus one max-size adapter)",
                       task_id, (long long)(pinned + a->bytes), (long long)(cap > 0 ? cap : 0));
            return MLR_LORA_CACHE_FULL;
        }
    }
    a->pinned = on ? 1 : 0;
    if (on) a->release_pending = 0;
    return MLR_OK;
}

int32_t lora_cache_release(lora_cache *c, uint64_t task_id, char *err, size_t err_len) {
    lora_adapter *a = lora_cache_find(c, task_id);
    if (!a) {
        errbuf_add(err, err_len, "LoRA task %" PRIu64 " is not cached", task_id);
        return MLR_NOT_FOUND;
    }
    a->pinned = 0;
    if (a->active > 0) {
        a->release_pending = 1;
    } else {
        remove_at(c, index_of(c, a));
        c->evictions++;
    }
    return MLR_OK;
}
