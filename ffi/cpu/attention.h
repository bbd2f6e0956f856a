/*
 * Causal attention of one layer over a batch (prefill chunks and decode tokens mixed), blocked over keys
 * (flash-attention style): per query row a running max, sum and output, updated one block of keys at a
 * time, so no score matrix is formed and memory stays O(tile) whatever the prompt length.
 *
 * Work items are (tile, kv head): a tile is up to ATTN_TILE consecutive batch tokens of one sequence at
 * consecutive positions; its query rows (tokens x the heads sharing the kv head) score each block of keys
 * together, so a block of K and V is read once per tile instead of once per query. A query row only ever
 * looks at its own keys 0..pos, blocks at fixed key offsets (0, ATTN_KEYS, ...): its result depends on
 * its position and the keys, never on the tile or batch it is in.
 */
#ifndef MLR_ATTENTION_H
#define MLR_ATTENTION_H

#include <stdint.h>

#include "forward.h"

#define ATTN_TILE 16 /* tokens per tile */
#define ATTN_KEYS 64 /* keys per block */

/* att[t] = softmax(q[t] K^T / sqrt(hd)) V for every head, from scratch q into scratch att. Returns 1, or 0
 * when a task's work buffer could not be allocated (att is then incomplete). */
int attention(const forward_ctx *ctx, const batch_entry *batch, int32_t n, int32_t layer);

#endif /* MLR_ATTENTION_H */
