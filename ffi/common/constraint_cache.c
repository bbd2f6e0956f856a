/* Mask cache entries and the vocabulary's shared cache of leaf-rule entries: see constraint_cache.h. */
#include "constraint_cache.h"

#include <stdlib.h>
#include <string.h>

void constraint_entry_retain(constraint_entry *e) { atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed); }

void constraint_entry_release(constraint_entry *e) {
    if (!e || atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1) return;
    free(e->bits);
    free(e->ids);
    free(e->frontier);
    free(e->key);
    free(e);
}

uint64_t constraint_hash_words(const int32_t *words, int32_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int32_t i = 0; i < n; i++) {
        uint32_t w = (uint32_t)words[i];
        for (int b = 0; b < 4; b++) {
            h ^= (w >> (8 * b)) & 0xff;
            h *= 0x100000001b3ull;
        }
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

/* ============================================================================================== */
/* the shared cache */

int constraint_lru_init(constraint_lru *c, int64_t capacity) {
    memset(c, 0, sizeof *c);
    c->n_buckets = 1024;
    c->buckets = calloc((size_t)c->n_buckets, sizeof *c->buckets);
    if (!c->buckets) return 0;
    c->capacity = capacity;
    pthread_mutex_init(&c->mu, NULL);
    return 1;
}

void constraint_lru_free(constraint_lru *c) {
    if (!c->buckets) return;
    for (constraint_entry *e = c->head; e;) {
        constraint_entry *next = e->lru_next;
        constraint_entry_release(e);
        e = next;
    }
    free(c->buckets);
    pthread_mutex_destroy(&c->mu);
    memset(c, 0, sizeof *c);
}

static int same_key(const constraint_entry *e, uint64_t hash, const int32_t *key, int32_t key_len) {
    return e->hash == hash && e->key_len == key_len && memcmp(e->key, key, (size_t)key_len * sizeof *key) == 0;
}

static void lru_unlink(constraint_lru *c, constraint_entry *e) {
    if (e->lru_prev) e->lru_prev->lru_next = e->lru_next;
    else c->head = e->lru_next;
    if (e->lru_next) e->lru_next->lru_prev = e->lru_prev;
    else c->tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push_front(constraint_lru *c, constraint_entry *e) {
    e->lru_prev = NULL;
    e->lru_next = c->head;
    if (c->head) c->head->lru_prev = e;
    c->head = e;
    if (!c->tail) c->tail = e;
}

static void hash_unlink(constraint_lru *c, constraint_entry *e) {
    constraint_entry **at = &c->buckets[e->hash & (uint64_t)(c->n_buckets - 1)];
    while (*at && *at != e) at = &(*at)->hash_next;
    if (*at) *at = e->hash_next;
    e->hash_next = NULL;
}

/* Doubles the bucket array when the table is dense; stays as it is when memory is short (chains grow). */
static void maybe_grow(constraint_lru *c) {
    if (c->n_entries < 2 * c->n_buckets || c->n_buckets > (1 << 26)) return;
    const int32_t n = 2 * c->n_buckets;
    constraint_entry **grown = calloc((size_t)n, sizeof *grown);
    if (!grown) return;
    for (int32_t b = 0; b < c->n_buckets; b++) {
        for (constraint_entry *e = c->buckets[b]; e;) {
            constraint_entry *next = e->hash_next;
            constraint_entry **at = &grown[e->hash & (uint64_t)(n - 1)];
            e->hash_next = *at;
            *at = e;
            e = next;
        }
    }
    free(c->buckets);
    c->buckets = grown;
    c->n_buckets = n;
}

constraint_entry *constraint_lru_find(constraint_lru *c, uint64_t hash, const int32_t *key, int32_t key_len) {
    pthread_mutex_lock(&c->mu);
    constraint_entry *e = c->buckets[hash & (uint64_t)(c->n_buckets - 1)];
    while (e && !same_key(e, hash, key, key_len)) e = e->hash_next;
    if (e) {
        lru_unlink(c, e);
        lru_push_front(c, e);
        constraint_entry_retain(e);
    }
    pthread_mutex_unlock(&c->mu);
    return e;
}

constraint_entry *constraint_lru_insert(constraint_lru *c, constraint_entry *e) {
    pthread_mutex_lock(&c->mu);
    constraint_entry **bucket = &c->buckets[e->hash & (uint64_t)(c->n_buckets - 1)];
    constraint_entry *found = *bucket;
    while (found && !same_key(found, e->hash, e->key, e->key_len)) found = found->hash_next;
    if (found) { /* another thread was first */
        lru_unlink(c, found);
        lru_push_front(c, found);
        constraint_entry_retain(found);
        pthread_mutex_unlock(&c->mu);
        return found;
    }
    constraint_entry_retain(e); /* the cache's reference */
    e->hash_next = *bucket;
    *bucket = e;
    lru_push_front(c, e);
    c->n_entries++;
    c->bytes += e->bytes;
    while (c->bytes > c->capacity && c->tail && c->tail != e) {
        constraint_entry *old = c->tail;
        lru_unlink(c, old);
        hash_unlink(c, old);
        c->n_entries--;
        c->bytes -= old->bytes;
        constraint_entry_release(old);
    }
    maybe_grow(c);
    constraint_entry_retain(e); /* the caller's */
    pthread_mutex_unlock(&c->mu);
    return e;
}
