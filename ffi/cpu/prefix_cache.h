/*
 * Prefix (KV) reuse: the keys and values of token blocks that sequences computed, kept after them, so a
 * later prompt that starts with the same tokens, under the same adapter and scale, copies them instead
 * of computing them again.
 *
 * A block holds block_tokens consecutive positions of every layer. Blocks form a tree: a block's key is
 * (the block before it, its tokens, adapter task id, lora_scale), the first block of a sequence having no
 * block before it. A lookup walks the tree from a prompt's first block and compares every key field
 * exactly (the hash only finds the candidates), so a block is reused only by a prompt whose every token
 * before it, adapter and scale are the same: K/V depend on all of them (LoRA on k/v changes them), and
 * the engine computes a position's K/V the same whatever batch it is in, so a reused block holds exactly
 * what the prompt would compute. Task ids name one adapter content (a new version is a new id), so a
 * block never crosses adapter versions.
 *
 * Memory: blocks count against the engine's KV budget beside the running sequences'; the engine evicts
 * least recently used blocks when a request or a new block needs room. Only a leaf (no cached block after
 * it) that no running sequence holds (refs: the sequence's last block, which its next block will extend)
 * is evicted, so a cached block's whole prefix stays cached. A queued request that needs the room makes
 * the running sequences release their blocks (engine.c, kv_room_for_request): cached blocks never keep a
 * request waiting.
 *
 * Threads: only the engine's scheduler thread (and mlr_destroy after it) uses a cache; the engine copies
 * the counters out under its lock for mlr_stats_get.
 */
#ifndef MLR_PREFIX_CACHE_H
#define MLR_PREFIX_CACHE_H

#include <stdint.h>

#include "forward.h"
#include "model.h"

typedef struct prefix_block {
    struct prefix_block *parent;  /* the block before it; NULL for a sequence's first block */
    struct prefix_block *next;    /* hash chain */
    uint64_t hash;                /* of the key (parent id, task, scale, tokens) */
    uint64_t id;                  /* unique in the cache, never reused */
    uint64_t task_id;             /* adapter task id; 0 = the base model */
    uint32_t scale_bits;          /* lora_scale's bits (0 for the base model) */
    int32_t children;             /* cached blocks whose parent this is */
    int32_t refs;                 /* running sequences holding it */
    int64_t last_use;             /* the cache's clock when last found or stored */
    float *kv;                    /* [2 (k, v)][num_layers][block_tokens][kv_dim] */
    int32_t tokens[];             /* [block_tokens] */
} prefix_block;

typedef struct prefix_counters {
    int64_t query_tokens;         /* prompt tokens looked up */
    int64_t hit_tokens;           /* of those, found cached (copied, not computed) */
    int64_t reused_blocks;        /* blocks copied into sequences */
    int64_t stored_blocks;        /* blocks added */
    int64_t evicted_blocks;
    int64_t blocks;               /* cached now */
    int64_t bytes;                /* their memory */
} prefix_counters;

typedef struct prefix_cache {
    int32_t block_tokens;
    int32_t num_layers, kv_dim;
    int64_t block_bytes;          /* one block's memory: header, tokens and K/V */
    prefix_block **buckets;       /* [n_buckets], a power of two */
    int64_t n_buckets;
    int64_t clock;
    uint64_t next_id;
    prefix_counters counters;
} prefix_cache;

/* An empty cache of blocks of block_tokens (> 0) positions. Returns 1, or 0 out of memory. */
int prefix_cache_init(prefix_cache *c, const model *m, int32_t block_tokens);
void prefix_cache_free(prefix_cache *c);

/* The cached block after `parent` (NULL: a first block) holding tokens[0 .. block_tokens) under
 * (task_id, lora_scale), marked used now; NULL when there is none. */
prefix_block *prefix_cache_find(prefix_cache *c, const prefix_block *parent, uint64_t task_id, float lora_scale,
                                const int32_t *tokens);

/* Copies a block's K/V into a sequence's positions pos .. pos + block_tokens - 1 (within its capacity). */
void prefix_block_load(const prefix_cache *c, const prefix_block *b, seq_kv *kv, int32_t pos);

/* Adds the block after `parent` holding tokens[0 .. block_tokens) with the K/V of a sequence's positions
 * pos .. pos + block_tokens - 1, or finds it when it is cached already. Returns the block, or NULL when
 * out of memory (nothing added then). The caller makes room first (prefix_cache_evict_one). */
prefix_block *prefix_cache_store(prefix_cache *c, prefix_block *parent, uint64_t task_id, float lora_scale,
                                 const int32_t *tokens, const seq_kv *kv, int32_t pos);

/* Evicts the least recently used evictable block (a leaf no sequence holds). Returns 1, or 0 when no
 * block is evictable. */
int prefix_cache_evict_one(prefix_cache *c);

/* A running sequence holds b (NULL: nothing) as its last block, so it is not evicted; release lets go. */
void prefix_block_hold(prefix_block *b);
void prefix_block_release(prefix_block *b);

#endif /* MLR_PREFIX_CACHE_H */
