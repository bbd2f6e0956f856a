/*
 * mlr_vocab (multilora.h, "Output constraints"): a tokenizer's tokens as bytes, and the byte trie of the
 * tokens a constraint may allow, which every mask walks. Internal layout, shared by constraint_*.c.
 *
 * The trie is laid out in DFS preorder: node 0 is the root (the empty prefix); a node's children follow it,
 * each child's subtree contiguous, so the children of node i are i + 1, then nodes[i + 1].end, and so on,
 * while below nodes[i].end. Children are in increasing byte order. Several tokens may have identical bytes:
 * a node lists every id that ends there. trie_tokens holds the ids in preorder, so the tokens of a node's
 * whole subtree are one range: trie_tokens[first_token .. first_token of node `end`) (subtree_tokens_end).
 */
#ifndef MLR_CONSTRAINT_VOCAB_H
#define MLR_CONSTRAINT_VOCAB_H

#include <stdatomic.h>
#include <stdint.h>

#include "constraint_cache.h"
#include "multilora.h"

/* Bytes of leaf-rule mask entries the vocabulary keeps for every grammar over it. */
#define CONSTRAINT_SHARED_CACHE_BYTES (64ll << 20)

/* Longest token, in bytes (a node's depth is 16 bits). */
#define CONSTRAINT_MAX_TOKEN_BYTES 65535

typedef struct vocab_trie_node {
    int32_t end;            /* one past the last node of this subtree */
    int32_t first_token;    /* the ids ending here: trie_tokens[first_token .. first_token + n_tokens) */
    int32_t n_tokens;
    uint8_t byte;           /* the byte on the edge from the parent (the root: 0) */
    uint8_t unused;
    uint16_t depth;         /* bytes from the root (the root: 0) */
} vocab_trie_node;

struct mlr_vocab {
    atomic_int refs;
    int32_t n_tokens;
    int32_t n_words;            /* (n_tokens + 31) / 32: a mask's words */
    uint8_t *bytes;             /* every token's bytes, concatenated; owned */
    int64_t *offsets;           /* [n_tokens + 1]: token i is bytes[offsets[i] .. offsets[i + 1]); owned */
    uint8_t *allowed;           /* [n_tokens] 1 = in the trie (not excluded, not empty); owned */
    vocab_trie_node *nodes;     /* [n_nodes], DFS preorder; owned */
    int32_t n_nodes;
    int32_t *trie_tokens;       /* [n_trie_tokens] ids by node, in preorder; owned */
    int32_t n_trie_tokens;
    uint64_t *below;            /* [n_nodes][4] the bytes on the edges strictly below each node (a 256-bit set),
                                 * so a walk can take a whole subtree at once where every one of them loops
                                 * on the state reached; owned */
    int32_t max_token_len;
    int64_t bytes_held;         /* all of the above */
    constraint_lru shared;      /* leaf-rule mask entries (constraint_cache.h) */
};

/* One past the last index in trie_tokens of the tokens in node i's subtree (node i's own included). */
static inline int32_t subtree_tokens_end(const mlr_vocab *v, int32_t i) {
    const int32_t end = v->nodes[i].end;
    return end < v->n_nodes ? v->nodes[end].first_token : v->n_trie_tokens;
}

/* One more reference (grammars keep one); mlr_vocab_release drops one. */
void constraint_vocab_retain(mlr_vocab *vocab);

#endif /* MLR_CONSTRAINT_VOCAB_H */
