/* The matcher's hash-consed stack arena: see constraint_stacks.h. */
#include "constraint_stacks.h"

#include <stdlib.h>
#include <string.h>

#define FIRST_CAP 256

int stack_arena_init(stack_arena *a) {
    memset(a, 0, sizeof *a);
    a->nodes = malloc(FIRST_CAP * sizeof *a->nodes);
    a->buckets = malloc(FIRST_CAP * sizeof *a->buckets);
    if (!a->nodes || !a->buckets) {
        stack_arena_free(a);
        return 0;
    }
    a->cap = FIRST_CAP;
    a->n_buckets = FIRST_CAP;
    memset(a->buckets, 0xff, FIRST_CAP * sizeof *a->buckets);
    return 1;
}

void stack_arena_free(stack_arena *a) {
    free(a->nodes);
    free(a->buckets);
    memset(a, 0, sizeof *a);
}

static inline uint32_t bucket_of(const stack_arena *a, int32_t state, int32_t parent) {
    uint64_t h = (uint64_t)(uint32_t)state * 0x9E3779B97F4A7C15ull ^ (uint64_t)(uint32_t)parent * 0xC2B2AE3D27D4EB4Full;
    h ^= h >> 29;
    return (uint32_t)h & (uint32_t)(a->n_buckets - 1);
}

/* Rebuilds the buckets at twice the size, oldest node first so chains stay newest-first. */
static int grow_buckets(stack_arena *a) {
    const int32_t n = 2 * a->n_buckets;
    int32_t *b = malloc((size_t)n * sizeof *b);
    if (!b) return 0;
    free(a->buckets);
    a->buckets = b;
    a->n_buckets = n;
    memset(b, 0xff, (size_t)n * sizeof *b);
    for (int32_t i = 0; i < a->n; i++) {
        const uint32_t k = bucket_of(a, a->nodes[i].state, a->nodes[i].parent);
        a->nodes[i].chain = b[k];
        b[k] = i;
    }
    return 1;
}

int32_t stack_intern(stack_arena *a, int32_t state, int32_t parent) {
    uint32_t k = bucket_of(a, state, parent);
    for (int32_t i = a->buckets[k]; i >= 0; i = a->nodes[i].chain)
        if (a->nodes[i].state == state && a->nodes[i].parent == parent) return i;
    if (a->n == a->cap) {
        if (a->cap > INT32_MAX / 4) return -1;
        stack_node *grown = realloc(a->nodes, 2 * (size_t)a->cap * sizeof *grown);
        if (!grown) return -1;
        a->nodes = grown;
        a->cap *= 2;
    }
    if (a->n >= 2 * a->n_buckets) {
        if (!grow_buckets(a)) return -1;
        k = bucket_of(a, state, parent);
    }
    const int32_t id = a->n++;
    a->nodes[id] = (stack_node){state, parent, parent >= 0 ? a->nodes[parent].depth + 1 : 0, a->buckets[k], 0, 0};
    a->buckets[k] = id;
    return id;
}

void stack_rewind(stack_arena *a, int32_t mark) {
    while (a->n > mark) {
        const stack_node *node = &a->nodes[--a->n];
        a->buckets[bucket_of(a, node->state, node->parent)] = node->chain;
    }
}

void stack_clear(stack_arena *a) {
    a->n = 0;
    memset(a->buckets, 0xff, (size_t)a->n_buckets * sizeof *a->buckets);
}

int stack_copy(stack_arena *to, const stack_arena *from, int32_t *ids, int32_t n, int32_t *remap) {
    stack_clear(to);
    for (int32_t i = 0; i < from->n; i++) remap[i] = -1;
    int32_t path_cap = 64, *path = malloc((size_t)path_cap * sizeof *path);
    if (!path) return 0;
    for (int32_t k = 0; k < n; k++) {
        /* the frames not copied yet, top first */
        int32_t len = 0;
        for (int32_t at = ids[k]; at >= 0 && remap[at] < 0; at = from->nodes[at].parent) {
            if (len == path_cap) {
                int32_t *grown = realloc(path, 2 * (size_t)path_cap * sizeof *grown);
                if (!grown) goto fail;
                path = grown;
                path_cap *= 2;
            }
            path[len++] = at;
        }
        while (len > 0) {
            const int32_t old = path[--len];
            const int32_t parent = from->nodes[old].parent;
            const int32_t id = stack_intern(to, from->nodes[old].state, parent >= 0 ? remap[parent] : parent);
            if (id < 0) goto fail;
            remap[old] = id;
        }
    }
    for (int32_t k = 0; k < n; k++) ids[k] = remap[ids[k]];
    free(path);
    return 1;
fail:
    free(path);
    stack_clear(to);
    return 0;
}
