/*
 * mlr_vocab_create / release / size: the tokens' bytes and their trie (constraint_vocab.h). The trie is
 * built from the allowed tokens sorted by their bytes: consecutive tokens share their longest common
 * prefix, so one pass with the current path as a stack lays the nodes out in DFS preorder.
 */
#include <stdlib.h>
#include <string.h>

#include "constraint_vocab.h"
#include "errbuf.h"

/* qsort context-free comparison: ids are sorted through this file-local view of the vocabulary. */
typedef struct sort_item {
    const uint8_t *bytes;
    int64_t len;
    int32_t id;
} sort_item;

static int by_bytes(const void *a, const void *b) {
    const sort_item *x = a, *y = b;
    const int64_t n = x->len < y->len ? x->len : y->len;
    const int c = n > 0 ? memcmp(x->bytes, y->bytes, (size_t)n) : 0;
    if (c != 0) return c;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->id < y->id ? -1 : (x->id > y->id);
}

static void vocab_free(mlr_vocab *v) {
    constraint_lru_free(&v->shared);
    free(v->bytes);
    free(v->offsets);
    free(v->allowed);
    free(v->nodes);
    free(v->trie_tokens);
    free(v->below);
    free(v);
}

/* Builds nodes and trie_tokens from the sorted allowed tokens. Returns 1, or 0 out of memory. */
static int build_trie(mlr_vocab *v, const sort_item *items, int32_t n_items, int64_t total_bytes) {
    v->nodes = malloc((size_t)(total_bytes + 1) * sizeof *v->nodes);
    v->trie_tokens = malloc((size_t)(n_items > 0 ? n_items : 1) * sizeof *v->trie_tokens);
    int32_t *path = malloc((size_t)(v->max_token_len + 1) * sizeof *path); /* node at each depth */
    if (!v->nodes || !v->trie_tokens || !path) {
        free(path);
        return 0;
    }
    int32_t n = 0;
    v->nodes[n++] = (vocab_trie_node){0, 0, 0, 0, 0, 0};
    path[0] = 0;
    int64_t depth = 0; /* the current path: path[0..depth] */
    const sort_item *prev = NULL;
    for (int32_t t = 0; t < n_items; t++) {
        const sort_item *it = &items[t];
        int64_t common = 0;
        if (prev) {
            const int64_t m = prev->len < it->len ? prev->len : it->len;
            while (common < m && prev->bytes[common] == it->bytes[common]) common++;
        }
        while (depth > common) v->nodes[path[depth--]].end = n; /* close the subtrees left behind */
        while (depth < it->len) {
            const int32_t node = n++;
            v->nodes[node] = (vocab_trie_node){0, t, 0, it->bytes[depth], 0, (uint16_t)(depth + 1)};
            path[++depth] = node;
        }
        vocab_trie_node *at = &v->nodes[path[depth]];
        if (at->n_tokens == 0) at->first_token = t;
        at->n_tokens++;
        v->trie_tokens[t] = it->id;
        prev = it;
    }
    while (depth > 0) v->nodes[path[depth--]].end = n;
    v->nodes[0].end = n;
    free(path);
    v->n_nodes = n;
    v->n_trie_tokens = n_items;
    vocab_trie_node *shrunk = realloc(v->nodes, (size_t)n * sizeof *shrunk);
    if (shrunk) v->nodes = shrunk;
    /* the bytes below each node, children first (reverse preorder) */
    v->below = calloc((size_t)n * 4, sizeof *v->below);
    if (!v->below) return 0;
    for (int32_t i = n - 1; i >= 0; i--) {
        uint64_t *b = v->below + 4 * (int64_t)i;
        for (int32_t c = i + 1; c < v->nodes[i].end; c = v->nodes[c].end) {
            const uint8_t byte = v->nodes[c].byte;
            b[byte >> 6] |= 1ull << (byte & 63);
            for (int k = 0; k < 4; k++) b[k] |= v->below[4 * (int64_t)c + k];
        }
    }
    return 1;
}

int32_t mlr_vocab_create(const uint8_t *bytes, const int64_t *offsets, int32_t n_tokens, const uint8_t *excluded,
                         mlr_vocab **out, char *err, size_t err_len) {
    *out = NULL;
    if (err && err_len) err[0] = '\0';
    if (n_tokens <= 0 || !offsets || (!bytes && offsets[n_tokens] > 0)) {
        errbuf_add(err, err_len, "a vocabulary needs at least one token, its offsets and its bytes");
        return MLR_INVALID_ARGUMENT;
    }
    if (offsets[0] != 0) {
        errbuf_add(err, err_len, "offsets[0] must be 0 (got %lld)", (long long)offsets[0]);
        return MLR_INVALID_ARGUMENT;
    }
    int32_t max_len = 0;
    for (int32_t i = 0; i < n_tokens; i++) {
        const int64_t len = offsets[i + 1] - offsets[i];
        if (len < 0 || len > CONSTRAINT_MAX_TOKEN_BYTES) {
            errbuf_add(err, err_len, "token %d: offsets %lld .. %lld are not a byte range of at most %d bytes", i,
                       (long long)offsets[i], (long long)offsets[i + 1], CONSTRAINT_MAX_TOKEN_BYTES);
            return MLR_INVALID_ARGUMENT;
        }
        if (len > max_len) max_len = (int32_t)len;
    }
    const int64_t total = offsets[n_tokens];
    mlr_vocab *v = calloc(1, sizeof *v);
    if (!v) {
        errbuf_add(err, err_len, "out of memory for the vocabulary");
        return MLR_OUT_OF_MEMORY;
    }
    atomic_init(&v->refs, 1);
    v->n_tokens = n_tokens;
    v->n_words = (n_tokens + 31) / 32;
    v->max_token_len = max_len;
    v->bytes = malloc((size_t)(total > 0 ? total : 1));
    v->offsets = malloc(((size_t)n_tokens + 1) * sizeof *v->offsets);
    v->allowed = calloc((size_t)n_tokens, 1);
    sort_item *items = malloc((size_t)n_tokens * sizeof *items);
    int ok = v->bytes && v->offsets && v->allowed && items && constraint_lru_init(&v->shared, CONSTRAINT_SHARED_CACHE_BYTES);
    int32_t n_items = 0;
    int64_t allowed_bytes = 0;
    if (ok) {
        if (total > 0) memcpy(v->bytes, bytes, (size_t)total);
        memcpy(v->offsets, offsets, ((size_t)n_tokens + 1) * sizeof *v->offsets);
        for (int32_t i = 0; i < n_tokens; i++) {
            const int64_t len = offsets[i + 1] - offsets[i];
            if (len == 0 || (excluded && excluded[i])) continue;
            v->allowed[i] = 1;
            items[n_items++] = (sort_item){v->bytes + offsets[i], len, i};
            allowed_bytes += len;
        }
        qsort(items, (size_t)n_items, sizeof *items, by_bytes);
        ok = build_trie(v, items, n_items, allowed_bytes);
    }
    free(items);
    if (!ok) {
        vocab_free(v);
        errbuf_add(err, err_len, "out of memory for the vocabulary (%d tokens, %lld bytes)", n_tokens, (long long)total);
        return MLR_OUT_OF_MEMORY;
    }
    v->bytes_held = (int64_t)sizeof *v + total + ((int64_t)n_tokens + 1) * 8 + n_tokens +
                    (int64_t)v->n_nodes * ((int64_t)sizeof(vocab_trie_node) + 32) + (int64_t)n_items * 4;
    *out = v;
    return MLR_OK;
}

void constraint_vocab_retain(mlr_vocab *v) { atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed); }

void mlr_vocab_release(mlr_vocab *v) {
    if (v && atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) == 1) vocab_free(v);
}

int32_t mlr_vocab_size(const mlr_vocab *v) { return v ? v->n_tokens : 0; }
