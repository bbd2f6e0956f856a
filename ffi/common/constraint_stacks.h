/*
 * The matcher's stacks (constraint_matcher.c): persistent nodes {state, parent} in an arena, hash-consed
 * (one node per (state, parent) pair), so readings share their lower frames, a stack is one node id, and
 * equal stacks are equal ids. Nodes are added at the end and removed only by rewinding to a mark (newest
 * first), which also undoes their hash-table entries: the table's chains are LIFO, so a rewound node is
 * always at the head of its chain.
 */
#ifndef MLR_CONSTRAINT_STACKS_H
#define MLR_CONSTRAINT_STACKS_H

#include <stdint.h>

#define STACK_NONE (-1)   /* parent of the root rule's frame: nothing below */
#define STACK_BOTTOM (-2) /* parent of a cache computation's frame: frames unknown (constraint_matcher.c) */

typedef struct stack_node {
    int32_t state;   /* the frame's state: the top's current state, or a lower frame's return state */
    int32_t parent;  /* node below, STACK_NONE or STACK_BOTTOM */
    int32_t depth;   /* frames below (0 for the bottom frame) */
    int32_t chain;   /* next node in the hash bucket, -1 = end */
    uint32_t mark;   /* visit stamp (the matcher's epochs) */
    uint32_t done;   /* a second stamp, for a whole mask */
} stack_node;

typedef struct stack_arena {
    stack_node *nodes;  /* [cap]; owned */
    int32_t n, cap;
    int32_t *buckets;   /* [n_buckets] head node, -1 = empty; owned */
    int32_t n_buckets;  /* power of two */
} stack_arena;

/* Returns 1, or 0 out of memory. */
int stack_arena_init(stack_arena *a);
void stack_arena_free(stack_arena *a);

/* The node for (state, parent), added when new. -1 out of memory. */
int32_t stack_intern(stack_arena *a, int32_t state, int32_t parent);

/* Removes every node from `mark` (an earlier a->n) on. */
void stack_rewind(stack_arena *a, int32_t mark);

/* Removes every node. */
void stack_clear(stack_arena *a);

/*
 * Copies the stacks ids[0..n) from `from` into `to` (cleared first) and rewrites ids to the copies.
 * remap: [from->n] scratch. Returns 1, or 0 out of memory (to is then cleared, ids unchanged).
 */
int stack_copy(stack_arena *to, const stack_arena *from, int32_t *ids, int32_t n, int32_t *remap);

#endif /* MLR_CONSTRAINT_STACKS_H */
