/*
 * Mask cache entries of the output constraints (constraint_matcher.c explains what an entry holds and why),
 * and the vocabulary's shared cache of them: entries of leaf rules (rules without call edges), whose
 * masks depend only on the rule's own bytes, so grammars that contain the same rule (every JSON string of
 * the same shape) share them. Internal to the libraries, not part of the ABI.
 *
 * Ownership: an entry is reference counted (atomic). The shared cache holds one reference per entry it
 * lists; a grammar holds one per entry in its per-state table. The shared cache is bounded by bytes and
 * drops its least recently used entries beyond the bound (an entry a grammar still uses lives on until
 * that grammar is released).
 */
#ifndef MLR_CONSTRAINT_CACHE_H
#define MLR_CONSTRAINT_CACHE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

/* What the tokens allowed from one top state are, independent of the frames below it. */
typedef struct constraint_entry {
    atomic_int refs;
    int32_t exact;          /* 0: a cap was hit while computing it: callers step those stacks fully */
    int32_t max_depth;      /* deepest relative call depth a reading reached or tried (MAX_DEPTH + 1: dropped) */
    int32_t n_ids;          /* >= 0: the tokens are ids[0..n_ids); -1: they are bits[n_words] */
    int32_t n_words;
    uint32_t *bits;         /* [n_words] when dense; owned */
    int32_t *ids;           /* [n_ids] when sparse, ascending; owned */
    int32_t *frontier;      /* [n_frontier] trie nodes (with children) where the state's own frame may end;
                             * node 0 (the root) first when present; owned */
    int32_t n_frontier;
    int64_t bytes;          /* everything above, for the caches' budgets */
    /* the shared cache's key and links (leaf-rule entries only) */
    uint64_t hash;
    int32_t *key;           /* [key_len]: the rule's canonical serialization, then the state's canonical index; owned */
    int32_t key_len;
    struct constraint_entry *hash_next, *lru_prev, *lru_next;
} constraint_entry;

/* One more reference; constraint_entry_release drops one and frees the entry at zero. */
void constraint_entry_retain(constraint_entry *e);
void constraint_entry_release(constraint_entry *e);

/* The shared cache: a hash table over keys and a most-recently-used-first list, under one mutex. */
typedef struct constraint_lru {
    pthread_mutex_t mu;
    constraint_entry **buckets; /* [n_buckets]; owned (the entries: one reference each) */
    int32_t n_buckets;          /* power of two */
    int32_t n_entries;
    constraint_entry *head, *tail; /* most recently used first */
    int64_t bytes, capacity;
} constraint_lru;

/* Returns 1, or 0 out of memory. capacity: bytes. */
int constraint_lru_init(constraint_lru *c, int64_t capacity);
void constraint_lru_free(constraint_lru *c);

/* The entry under key (with a new reference for the caller, moved to the front), or NULL. */
constraint_entry *constraint_lru_find(constraint_lru *c, uint64_t hash, const int32_t *key, int32_t key_len);

/*
 * Lists e (which carries its key) and returns the listed entry with a new reference for the caller: e,
 * or the entry another thread listed under the same key first. The caller's own reference to e is left as
 * it was (release it). Drops least recently used entries beyond the capacity (never the one returned).
 */
constraint_entry *constraint_lru_insert(constraint_lru *c, constraint_entry *e);

/* 64-bit hash of int32 words (FNV-1a over the bytes, then a final mix). */
uint64_t constraint_hash_words(const int32_t *words, int32_t n);

#endif /* MLR_CONSTRAINT_CACHE_H */
