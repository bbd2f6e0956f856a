/* Prefix (KV) reuse: see prefix_cache.h. */
#include "prefix_cache.h"

#include <stdlib.h>
#include <string.h>

#define FIRST_BUCKETS 256

static uint32_t scale_key(uint64_t task_id, float lora_scale) {
    uint32_t bits = 0;
    if (task_id != 0) memcpy(&bits, &lora_scale, sizeof bits);
    return bits;
}

static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdull;
}

static uint64_t key_hash(uint64_t parent_id, uint64_t task_id, uint32_t scale_bits, const int32_t *tokens, int32_t n) {
    uint64_t h = mix(mix(mix(0, parent_id), task_id), scale_bits);
    for (int32_t i = 0; i < n; i++) h = mix(h, (uint32_t)tokens[i]);
    return h ^ (h >> 29);
}

int prefix_cache_init(prefix_cache *c, const model *m, int32_t block_tokens) {
    *c = (prefix_cache){.block_tokens = block_tokens, .num_layers = m->cfg.num_layers, .kv_dim = m->kv_dim,
                        .n_buckets = FIRST_BUCKETS, .next_id = 1};
    c->block_bytes = (int64_t)sizeof(prefix_block) + (int64_t)block_tokens * (int64_t)sizeof(int32_t) +
                     2 * (int64_t)c->num_layers * block_tokens * c->kv_dim * (int64_t)sizeof(float);
    c->buckets = calloc((size_t)c->n_buckets, sizeof *c->buckets);
    return c->buckets != NULL;
}

static void block_free(prefix_block *b) {
    if (!b) return;
    free(b->kv);
    free(b);
}

void prefix_cache_free(prefix_cache *c) {
    for (int64_t i = 0; c->buckets && i < c->n_buckets; i++) {
        for (prefix_block *b = c->buckets[i]; b;) {
            prefix_block *next = b->next;
            block_free(b);
            b = next;
        }
    }
    free(c->buckets);
    c->buckets = NULL;
}

prefix_block *prefix_cache_find(prefix_cache *c, const prefix_block *parent, uint64_t task_id, float lora_scale,
                                const int32_t *tokens) {
    const uint64_t parent_id = parent ? parent->id : 0;
    const uint32_t scale_bits = scale_key(task_id, lora_scale);
    const uint64_t h = key_hash(parent_id, task_id, scale_bits, tokens, c->block_tokens);
    for (prefix_block *b = c->buckets[h & (uint64_t)(c->n_buckets - 1)]; b; b = b->next) {
        if (b->hash != h || b->parent != parent || b->task_id != task_id || b->scale_bits != scale_bits) continue;
        if (memcmp(b->tokens, tokens, (size_t)c->block_tokens * sizeof(int32_t)) != 0) continue;
        b->last_use = ++c->clock;
        return b;
    }
    return NULL;
}

/* The K/V of one layer's positions in a block and in a sequence. */
static float *block_layer(const prefix_cache *c, const prefix_block *b, int kind, int32_t layer) {
    return b->kv + ((int64_t)kind * c->num_layers + layer) * c->block_tokens * c->kv_dim;
}

static float *seq_layer(const prefix_cache *c, const seq_kv *kv, int kind, int32_t layer, int32_t pos) {
    return (kind ? kv->v : kv->k) + ((int64_t)layer * kv->capacity + pos) * c->kv_dim;
}

void prefix_block_load(const prefix_cache *c, const prefix_block *b, seq_kv *kv, int32_t pos) {
    const size_t bytes = (size_t)c->block_tokens * (size_t)c->kv_dim * sizeof(float);
    for (int kind = 0; kind < 2; kind++)
        for (int32_t l = 0; l < c->num_layers; l++)
            memcpy(seq_layer(c, kv, kind, l, pos), block_layer(c, b, kind, l), bytes);
}

/* Doubles the buckets when blocks outnumber them (a failed grow keeps the old ones: chains get longer). */
static void maybe_grow(prefix_cache *c) {
    if (c->counters.blocks < c->n_buckets) return;
    const int64_t n = 2 * c->n_buckets;
    prefix_block **grown = calloc((size_t)n, sizeof *grown);
    if (!grown) return;
    for (int64_t i = 0; i < c->n_buckets; i++) {
        for (prefix_block *b = c->buckets[i]; b;) {
            prefix_block *next = b->next;
            b->next = grown[b->hash & (uint64_t)(n - 1)];
            grown[b->hash & (uint64_t)(n - 1)] = b;
            b = next;
        }
    }
    free(c->buckets);
    c->buckets = grown;
    c->n_buckets = n;
}

prefix_block *prefix_cache_store(prefix_cache *c, prefix_block *parent, uint64_t task_id, float lora_scale,
                                 const int32_t *tokens, const seq_kv *kv, int32_t pos) {
    prefix_block *found = prefix_cache_find(c, parent, task_id, lora_scale, tokens);
    if (found) return found;
    prefix_block *b = malloc(sizeof *b + (size_t)c->block_tokens * sizeof(int32_t));
    const size_t layer_floats = (size_t)c->block_tokens * (size_t)c->kv_dim;
    if (b) b->kv = malloc(2 * (size_t)c->num_layers * layer_floats * sizeof(float));
    if (!b || !b->kv) {
        free(b);
        return NULL;
    }
    b->parent = parent;
    b->id = c->next_id++;
    b->task_id = task_id;
    b->scale_bits = scale_key(task_id, lora_scale);
    b->hash = key_hash(parent ? parent->id : 0, task_id, b->scale_bits, tokens, c->block_tokens);
    b->children = 0;
    b->refs = 0;
    b->last_use = ++c->clock;
    memcpy(b->tokens, tokens, (size_t)c->block_tokens * sizeof(int32_t));
    for (int kind = 0; kind < 2; kind++)
        for (int32_t l = 0; l < c->num_layers; l++)
            memcpy(block_layer(c, b, kind, l), seq_layer(c, kv, kind, l, pos), layer_floats * sizeof(float));
    if (parent) parent->children++;
    maybe_grow(c);
    prefix_block **bucket = &c->buckets[b->hash & (uint64_t)(c->n_buckets - 1)];
    b->next = *bucket;
    *bucket = b;
    c->counters.blocks++;
    c->counters.bytes += c->block_bytes;
    c->counters.stored_blocks++;
    return b;
}

int prefix_cache_evict_one(prefix_cache *c) {
    prefix_block **victim = NULL;
    for (int64_t i = 0; i < c->n_buckets; i++)
        for (prefix_block **p = &c->buckets[i]; *p; p = &(*p)->next)
            if ((*p)->children == 0 && (*p)->refs == 0 && (!victim || (*p)->last_use < (*victim)->last_use)) victim = p;
    if (!victim) return 0;
    prefix_block *b = *victim;
    *victim = b->next;
    if (b->parent) b->parent->children--;
    block_free(b);
    c->counters.blocks--;
    c->counters.bytes -= c->block_bytes;
    c->counters.evicted_blocks++;
    return 1;
}

void prefix_block_hold(prefix_block *b) {
    if (b) b->refs++;
}

void prefix_block_release(prefix_block *b) {
    if (b) b->refs--;
}
