/*
 * mlr_matcher: one sequence's position in a constraint grammar, and the masks of the tokens allowed next.
 *
 * Configurations. A reading of the text so far is a stack of states: the bottom frame is in the root rule,
 * the top frame holds the current state, each frame below holds the state its rule returns to. Stacks are
 * hash-consed persistent nodes {state, parent} (constraint_stacks.h): readings share their lower frames and
 * a stack is one id. The matcher holds the set of stacks reached by the bytes accepted so far ("unclosed":
 * calls and returns not taken yet).
 *
 * Stepping a set by one byte b. First its closure: from every stack, (a) keep it when its top state has
 * byte edges; (b) for each call edge (R, ret) of the top state: the top frame becomes ret and R's start is
 * pushed (at most MLR_CONSTRAINT_MAX_DEPTH frames below the top: deeper readings are dropped); (c) when the
 * top state is accepting and a frame is below: pop, and explore that frame (it holds the return state);
 * with nothing below, the text is complete. A visit stamp per node makes epsilon cycles terminate. Then
 * every kept stack whose top has an edge on b gives the stack with the top replaced by the target;
 * duplicates are one id. "Complete" = the closure reached an accepting root frame; "can continue" = the
 * closure kept a stack. The grammar's tables leave out states that can never end (constraint_grammar.h),
 * so every stack is alive and a token is allowed exactly when stepping its bytes leaves a stack.
 * After each accept the live stacks are copied into a fresh arena (compaction), so memory stays bounded.
 *
 * Caps (they only ever restrict: a reading dropped is a text not allowed): at most MAX_STACKS stacks per
 * set after a step, at most CLOSURE_BUDGET stacks explored per closure. Grammars the TypeScript compiler
 * makes stay far below both; left-recursive or hugely ambiguous programs would hit them, and there a mask
 * (computed per stack, below) may differ from what accept (on the whole set) lets through: the engine
 * then ends the request with an error rather than emit a token its constraint refuses.
 *
 * Masks. The baseline is a DFS over the vocabulary's token trie (constraint_vocab.h) stepping the set of
 * stacks byte by byte, with the arena and set buffers rewound on backtrack and empty sets pruning whole
 * subtrees: a token is allowed when the set at its trie node is not empty. Closures are computed once per
 * trie node and shared by all its children; a step is then a table lookup per kept stack.
 *
 * The cache (xgrammar's "context-independent tokens"). What a stack allows depends on its top state q and,
 * only through pops of q's own frame, on the frames below. So for each state q, once: a DFS from the
 * stack [q] over an unknown bottom (STACK_BOTTOM). Pushes are fine; a closure that pops q's frame records
 * the trie node as a "frontier" (the text so far is consumed; what follows depends on the real frames
 * below) and does not go further that way, while the other readings go on. The entry for q = the bitset of
 * tokens fully consumed without popping q's frame (tokens at a frontier included) + the frontier nodes
 * that have children (a frontier leaf needs nothing more). At run time, for each live stack n = [.., p, q]:
 *     mask |= entry(q).bits                                          (once per distinct q)
 *     frontier at the root (q's rule can end right away): mask |= mask of the stack p (recursively cached)
 *     frontier at node f: DFS over f's children, fully stepping from the closure of {p} (mid-token: no cache)
 * The frontier walks are grouped: the stacks of one top state share its frontiers, so each is walked once
 * from the union of their parents (one closure per top state). Frames above q's are part of the cached
 * readings, so the split is exact. An entry computed with a cap hit is marked inexact, and one whose
 * readings went max_depth calls deep is used only for stacks at a depth where none of them would have been
 * dropped (d + max_depth <= MLR_CONSTRAINT_MAX_DEPTH, or d = 0); the other stacks take the full DFS
 * (together), so cached and uncached masks are the same. For a state of a leaf rule the cache DFS is just
 * the rule's DFA over the trie (one frame, no stacks): a linear scan of the preorder nodes.
 *
 * Whole subtrees at once. Inside a string almost every token is allowed, so a walk would visit most of the
 * ~100k trie nodes. The vocabulary keeps, per node, the set of bytes below it, and the grammar, per state,
 * the bytes it loops on and the bytes on which it goes to a state that neither accepts nor calls: where a
 * walk holds one stack whose top state t keeps every byte below a node inside such states (t loops on all
 * of them, or the few states reachable from t over them all do: subtree_closed), the node's whole subtree
 * is allowed, with no frontier in it, and its tokens are one range of trie_tokens. The first mask of a new
 * string shape over SmolLM2's 49k tokens then takes tens to hundreds of microseconds, not milliseconds.
 *
 * Where entries live (constraint_grammar.c): per grammar, a lock-free table [state] -> entry, set under the
 * grammar's mutex (matchers of one grammar may run on several threads; two threads computing one entry
 * keep the first). Entries of leaf rules (no call edges: JSON strings, numbers, literals; the compiler
 * makes every string value its own rule for this) depend only on the rule's bytes, so they are also kept
 * in the vocabulary's shared cache (constraint_cache.h), keyed by the rule's canonical serialization and
 * the state's canonical index, least recently used dropped beyond 64 MiB: a new grammar reuses them.
 *
 * mlr_matcher_fill_mask ORs the allowed tokens into the caller's words (cleared first); the trie holds no
 * excluded token, so none is ever set; words and bits past the vocabulary stay clear.
 */
#include <stdlib.h>
#include <string.h>

#include "constraint_grammar.h"
#include "constraint_matcher.h"
#include "constraint_stacks.h"
#include "constraint_vocab.h"
#include "errbuf.h"
#include "multilora.h"

#define MAX_STACKS 1024
#define CLOSURE_BUDGET (1 << 16)

/* A growable int32 buffer. */
typedef struct int_vec {
    int32_t *v;
    int32_t n, cap;
} int_vec;

/* One level of the trie DFS: a trie node, its closure, the next child to try, and where to rewind after it. */
typedef struct dfs_frame {
    int32_t node, child;
    int32_t a, b;            /* the node's closure: sets.v[a .. b) */
    int32_t amark, smark;    /* arena and sets sizes before the current child's step */
} dfs_frame;

/* What a closure found besides the stacks it kept. */
typedef struct closure_flags {
    int complete;            /* an accepting root frame */
    int popped_bottom;       /* a pop of a cache computation's own frame */
} closure_flags;

struct mlr_matcher {
    mlr_grammar *g;          /* one reference */
    stack_arena arena;       /* the stacks */
    stack_arena spare;       /* the compaction target, swapped with arena after each accept */
    int_vec current;         /* the live stacks (node ids in arena) */
    int32_t complete, can_continue;
    /* work buffers, never copied */
    int_vec sets;            /* stack sets and closures of the DFS levels, as a stack of segments */
    int_vec work;            /* a closure's worklist */
    int_vec frontier;        /* a cache computation's frontier nodes */
    int_vec pairs;           /* a mask's (top state, parent stack) pairs whose frontiers are left to the frames below */
    int_vec full;            /* a mask's stacks whose cache entry cannot be used at their depth */
    int_vec remap;           /* compaction */
    dfs_frame *frames;       /* [vocab max_token_len + 2] */
    int32_t *state_at;       /* [vocab max_token_len + 1]: a leaf walk's state by depth */
    uint32_t *scratch_bits;  /* [vocab n_words]: a cache computation's tokens */
    uint32_t *state_done;    /* [n_states]: fill stamp of the states whose bits are in the mask */
    uint32_t *state_mark;    /* [n_states]: subtree_closed's visit stamp */
    uint32_t epoch, fill_epoch, mark_epoch;
    int truncated;           /* a cap was hit since it was cleared */
    int32_t max_depth;       /* deepest call depth reached or tried since it was cleared */
};

/* ============================================================================================== */
/* buffers */

static int vec_push(int_vec *v, int32_t x) {
    if (v->n == v->cap) {
        const int32_t cap = v->cap ? 2 * v->cap : 256;
        int32_t *grown = realloc(v->v, (size_t)cap * sizeof *grown);
        if (!grown) return 0;
        v->v = grown;
        v->cap = cap;
    }
    v->v[v->n++] = x;
    return 1;
}

static void vec_free(int_vec *v) {
    free(v->v);
    *v = (int_vec){0};
}

static uint32_t next_epoch(mlr_matcher *m) {
    if (++m->epoch == 0) { /* wrapped: clear every stamp */
        for (int32_t i = 0; i < m->arena.n; i++) m->arena.nodes[i].mark = 0;
        m->epoch = 1;
    }
    return m->epoch;
}

static uint32_t next_fill_epoch(mlr_matcher *m) {
    if (++m->fill_epoch == 0) {
        for (int32_t i = 0; i < m->arena.n; i++) m->arena.nodes[i].done = 0;
        memset(m->state_done, 0, (size_t)m->g->n_states * sizeof *m->state_done);
        m->fill_epoch = 1;
    }
    return m->fill_epoch;
}

/* ============================================================================================== */
/* stepping */

#define OOM (-1)

/*
 * The closure of the stacks sets[a .. b): appends those whose top has byte edges to sets, sets f.
 * Returns 0, or OOM.
 */
static int closure(mlr_matcher *m, int32_t a, int32_t b, closure_flags *f) {
    const mlr_grammar *g = m->g;
    const uint32_t ep = next_epoch(m);
    int32_t explored = 0;
    m->work.n = 0;
    for (int32_t i = a; i < b; i++) {
        const int32_t n = m->sets.v[i];
        if (m->arena.nodes[n].mark == ep) continue;
        m->arena.nodes[n].mark = ep;
        if (!vec_push(&m->work, n)) return OOM;
    }
    while (m->work.n > 0) {
        const int32_t n = m->work.v[--m->work.n];
        const stack_node node = m->arena.nodes[n]; /* a copy: interning may move the nodes */
        const uint8_t flags = g->flags[node.state];
        if ((flags & CONSTRAINT_HAS_BYTES) && !vec_push(&m->sets, n)) return OOM;
        if (flags & CONSTRAINT_HAS_CALLS) {
            if (node.depth + 1 > MLR_CONSTRAINT_MAX_DEPTH) {
                m->max_depth = MLR_CONSTRAINT_MAX_DEPTH + 1; /* dropped */
            } else {
                if (node.depth + 1 > m->max_depth) m->max_depth = node.depth + 1;
                for (int32_t c = g->call_first[node.state]; c < g->call_first[node.state + 1]; c++) {
                    const int32_t below = stack_intern(&m->arena, g->calls[c].ret, node.parent);
                    if (below < 0) return OOM;
                    const int32_t pushed = stack_intern(&m->arena, g->calls[c].start, below);
                    if (pushed < 0) return OOM;
                    if (m->arena.nodes[pushed].mark == ep) continue;
                    if (++explored > CLOSURE_BUDGET) {
                        m->truncated = 1;
                        continue;
                    }
                    m->arena.nodes[pushed].mark = ep;
                    if (!vec_push(&m->work, pushed)) return OOM;
                }
            }
        }
        if (flags & CONSTRAINT_ACCEPTING) {
            if (node.parent == STACK_NONE) {
                f->complete = 1;
            } else if (node.parent == STACK_BOTTOM) {
                f->popped_bottom = 1;
            } else if (m->arena.nodes[node.parent].mark != ep) {
                if (++explored > CLOSURE_BUDGET) {
                    m->truncated = 1;
                    continue;
                }
                m->arena.nodes[node.parent].mark = ep;
                if (!vec_push(&m->work, node.parent)) return OOM;
            }
        }
    }
    return 0;
}

/* Steps the closure sets[a .. b) by byte class cls: appends the distinct resulting stacks to sets and
 * returns their count, or OOM. */
static int32_t step(mlr_matcher *m, int32_t a, int32_t b, int32_t cls) {
    const mlr_grammar *g = m->g;
    const int32_t nc = g->n_classes;
    const int32_t start = m->sets.n;
    if (b - a == 1) { /* the common case: one stack, nothing to deduplicate */
        const stack_node *node = &m->arena.nodes[m->sets.v[a]];
        const int32_t t = g->next[(int64_t)node->state * nc + cls];
        if (t < 0) return 0;
        const int32_t r = stack_intern(&m->arena, t, node->parent);
        if (r < 0 || !vec_push(&m->sets, r)) return OOM;
        return 1;
    }
    const uint32_t ep = next_epoch(m);
    for (int32_t i = a; i < b; i++) {
        const stack_node *node = &m->arena.nodes[m->sets.v[i]];
        const int32_t t = g->next[(int64_t)node->state * nc + cls];
        if (t < 0) continue;
        const int32_t r = stack_intern(&m->arena, t, node->parent);
        if (r < 0) return OOM;
        if (m->arena.nodes[r].mark == ep) continue;
        m->arena.nodes[r].mark = ep;
        if (m->sets.n - start >= MAX_STACKS) {
            m->truncated = 1;
            continue;
        }
        if (!vec_push(&m->sets, r)) return OOM;
    }
    return m->sets.n - start;
}

static inline void rewind_to(mlr_matcher *m, int32_t amark, int32_t smark) {
    stack_rewind(&m->arena, amark);
    m->sets.n = smark;
}

/* ============================================================================================== */
/* the trie walk */

static inline void set_range(const mlr_vocab *v, int32_t from, int32_t to, uint32_t *bits) {
    for (int32_t k = from; k < to; k++) {
        const int32_t id = v->trie_tokens[k];
        bits[id >> 5] |= 1u << (id & 31);
    }
}

static inline void set_tokens(const mlr_vocab *v, const vocab_trie_node *node, uint32_t *bits) {
    set_range(v, node->first_token, node->first_token + node->n_tokens, bits);
}

/* x within y, as 256-bit sets. */
static inline int within(const uint64_t *x, const uint64_t *y) {
    return !((x[0] & ~y[0]) | (x[1] & ~y[1]) | (x[2] & ~y[2]) | (x[3] & ~y[3]));
}

/*
 * Whether the whole subtree below trie node i is allowed from state t alone, with no frontier in it: over
 * the bytes B that occur below i, in any order, every state reached from t has an edge on each byte of B
 * to a state that neither accepts nor calls. Cheap tests first (B within t's self-loops: yes; B not within
 * the bytes t stays on: no); then, for subtrees of at least CLOSED_MIN_NODES nodes, the states reachable
 * from t over B (at most CLOSED_MAX_STATES of them), each tested the same way. 1 yes, 0 no, OOM.
 * Uses m->work and m->state_mark.
 */
#define CLOSED_MIN_NODES 8
#define CLOSED_MAX_STATES 8
static int subtree_closed(mlr_matcher *m, int32_t i, int32_t t) {
    const mlr_grammar *g = m->g;
    if (g->flags[t] & (CONSTRAINT_ACCEPTING | CONSTRAINT_HAS_CALLS)) return 0;
    const uint64_t *below = g->vocab->below + 4 * (int64_t)i;
    if (within(below, g->loops + 4 * (int64_t)t)) return 1;
    if (!within(below, g->stays + 4 * (int64_t)t) || g->vocab->nodes[i].end - i < CLOSED_MIN_NODES) return 0;
    if (++m->mark_epoch == 0) {
        memset(m->state_mark, 0, (size_t)g->n_states * sizeof *m->state_mark);
        m->mark_epoch = 1;
    }
    const int32_t nc = g->n_classes;
    m->work.n = 0;
    if (!vec_push(&m->work, t)) return OOM;
    m->state_mark[t] = m->mark_epoch;
    for (int32_t k = 0; k < m->work.n; k++) {
        const int32_t s = m->work.v[k];
        const uint64_t *stays = g->stays + 4 * (int64_t)s, *loops = g->loops + 4 * (int64_t)s;
        if (!within(below, stays)) return 0;
        for (int w = 0; w < 4; w++) { /* the states s moves to over B (its self-loops stay) */
            for (uint64_t x = below[w] & ~loops[w]; x; x &= x - 1) {
                const int32_t u = g->next[(int64_t)s * nc + g->class_of[w * 64 + __builtin_ctzll(x)]];
                if (m->state_mark[u] == m->mark_epoch) continue;
                if (m->work.n == CLOSED_MAX_STATES) return 0;
                m->state_mark[u] = m->mark_epoch;
                if (!vec_push(&m->work, u)) return OOM;
            }
        }
    }
    return 1;
}

/*
 * The tokens below trie node `start` (not its own) reachable from its closure sets[a .. b): sets their bits.
 * record: also push the trie nodes where a closure popped the bottom frame (cache computations) to frontier.
 * Leaves the arena and sets as it found them. Returns 0, or OOM.
 */
static int walk(mlr_matcher *m, int32_t start, int32_t a, int32_t b, uint32_t *bits, int record) {
    const mlr_vocab *v = m->g->vocab;
    const vocab_trie_node *T = v->nodes;
    const uint8_t *class_of = m->g->class_of;
    dfs_frame *frames = m->frames;
    int32_t depth = 0;
    frames[0] = (dfs_frame){start, start + 1, a, b, 0, 0};
    for (;;) {
        dfs_frame *F = &frames[depth];
        if (F->child >= T[F->node].end) {
            if (depth == 0) return 0;
            depth--;
            rewind_to(m, frames[depth].amark, frames[depth].smark);
            continue;
        }
        const int32_t c = F->child;
        F->child = T[c].end;
        const int32_t amark = m->arena.n, smark = m->sets.n;
        const int32_t k = step(m, F->a, F->b, class_of[T[c].byte]);
        if (k < 0) return OOM;
        if (k == 0) {
            rewind_to(m, amark, smark);
            continue;
        }
        if (T[c].end > c + 1 && k == 1) { /* one stack: maybe its top takes the whole subtree */
            const int whole = subtree_closed(m, c, m->arena.nodes[m->sets.v[smark]].state);
            if (whole < 0) return OOM;
            if (whole) {
                set_range(v, T[c].first_token, subtree_tokens_end(v, c), bits);
                rewind_to(m, amark, smark);
                continue;
            }
        }
        set_tokens(v, &T[c], bits);
        if (T[c].end > c + 1) { /* children */
            closure_flags f = {0, 0};
            const int32_t cb = m->sets.n;
            if (closure(m, smark, smark + k, &f) < 0) return OOM;
            if (f.popped_bottom && record && !vec_push(&m->frontier, c)) return OOM;
            if (m->sets.n > cb) {
                F->amark = amark;
                F->smark = smark;
                frames[++depth] = (dfs_frame){c, c + 1, cb, m->sets.n, 0, 0};
                continue;
            }
        }
        rewind_to(m, amark, smark);
    }
}

/* ============================================================================================== */
/* the mask cache */

static constraint_entry *build_entry(mlr_matcher *m) {
    const int32_t n_words = m->g->vocab->n_words;
    const uint32_t *bits = m->scratch_bits;
    int32_t count = 0;
    for (int32_t w = 0; w < n_words; w++) count += __builtin_popcount(bits[w]);
    constraint_entry *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    atomic_init(&e->refs, 1);
    e->exact = !m->truncated;
    e->max_depth = m->max_depth;
    e->n_words = n_words;
    e->n_frontier = m->frontier.n;
    e->frontier = malloc((size_t)(e->n_frontier > 0 ? e->n_frontier : 1) * sizeof *e->frontier);
    if (count < n_words) {
        e->n_ids = count;
        e->ids = malloc((size_t)(count > 0 ? count : 1) * sizeof *e->ids);
        if (e->ids) {
            int32_t k = 0;
            for (int32_t w = 0; w < n_words; w++)
                for (uint32_t x = bits[w]; x; x &= x - 1) e->ids[k++] = w * 32 + __builtin_ctz(x);
        }
    } else {
        e->n_ids = -1;
        e->bits = malloc((size_t)n_words * sizeof *e->bits);
        if (e->bits) memcpy(e->bits, bits, (size_t)n_words * sizeof *e->bits);
    }
    if (!e->frontier || (!e->ids && !e->bits)) {
        constraint_entry_release(e);
        return NULL;
    }
    if (e->n_frontier > 0) memcpy(e->frontier, m->frontier.v, (size_t)e->n_frontier * sizeof *e->frontier);
    e->bytes = (int64_t)sizeof *e + (int64_t)e->n_frontier * 4 + (e->n_ids >= 0 ? (int64_t)e->n_ids * 4 : (int64_t)n_words * 4);
    return e;
}

/*
 * The trie walk of a cache computation for a state of a leaf rule: its one frame is the only reading, so
 * the walk is the rule's DFA over the trie (no stacks, no closures): a node is a frontier where the state
 * reached is accepting. A linear scan of the preorder nodes with the state at each depth, jumping over
 * dead subtrees. Returns 0, or OOM.
 */
static int walk_leaf(mlr_matcher *m, int32_t q) {
    const mlr_grammar *g = m->g;
    const mlr_vocab *v = g->vocab;
    const vocab_trie_node *T = v->nodes;
    const int32_t nc = g->n_classes, n_nodes = v->n_nodes;
    const int32_t *next = g->next;
    const uint8_t *class_of = g->class_of, *flags = g->flags;
    int32_t *state_at = m->state_at; /* [depth]: the state after the path's bytes */
    uint32_t *bits = m->scratch_bits;
    if ((flags[q] & CONSTRAINT_ACCEPTING) && !vec_push(&m->frontier, 0)) return OOM;
    if (!(flags[q] & CONSTRAINT_HAS_BYTES)) return 0;
    state_at[0] = q;
    for (int32_t i = 1; i < n_nodes;) {
        const vocab_trie_node *node = &T[i];
        const int32_t t = next[(int64_t)state_at[node->depth - 1] * nc + class_of[node->byte]];
        if (t < 0) {
            i = node->end;
            continue;
        }
        if (node->end > i + 1) { /* maybe the whole subtree at once */
            const int whole = subtree_closed(m, i, t);
            if (whole < 0) return OOM;
            if (whole) {
                set_range(v, node->first_token, subtree_tokens_end(v, i), bits);
                i = node->end;
                continue;
            }
        }
        set_tokens(v, node, bits);
        if (node->end > i + 1) { /* children */
            if ((flags[t] & CONSTRAINT_ACCEPTING) && !vec_push(&m->frontier, i)) return OOM;
            if (!(flags[t] & CONSTRAINT_HAS_BYTES)) {
                i = node->end;
                continue;
            }
            state_at[node->depth] = t;
        }
        i++;
    }
    return 0;
}

/* The entry of state q computed now: the trie walk from [q] over an unknown bottom. NULL out of memory. */
static constraint_entry *compute_entry(mlr_matcher *m, int32_t q) {
    const int32_t amark = m->arena.n, smark = m->sets.n;
    m->truncated = 0;
    m->max_depth = 0;
    m->frontier.n = 0;
    memset(m->scratch_bits, 0, (size_t)m->g->vocab->n_words * sizeof *m->scratch_bits);
    if (m->g->leaf_rule[m->g->rule_of[q]]) return walk_leaf(m, q) == 0 ? build_entry(m) : NULL;
    int ok = 0;
    const int32_t n = stack_intern(&m->arena, q, STACK_BOTTOM);
    if (n >= 0 && vec_push(&m->sets, n)) {
        closure_flags f = {0, 0};
        const int32_t cb = m->sets.n;
        ok = closure(m, smark, smark + 1, &f) == 0 && (!f.popped_bottom || vec_push(&m->frontier, 0));
        if (ok && m->sets.n > cb) ok = walk(m, 0, cb, m->sets.n, m->scratch_bits, 1) == 0;
    }
    rewind_to(m, amark, smark);
    return ok ? build_entry(m) : NULL;
}

static constraint_entry *entry_for(mlr_matcher *m, int32_t q) {
    constraint_entry *e = constraint_grammar_entry(m->g, q);
    if (e) return e;
    e = constraint_grammar_shared(m->g, q);
    if (e) return e;
    e = compute_entry(m, q);
    return e ? constraint_grammar_install(m->g, q, e) : NULL;
}

/* ============================================================================================== */
/* masks */

/*
 * Phase 1 of a mask, for the (unclosed) stack n: ORs its top state's cached tokens into mask, and notes
 * what the cache leaves to the frames below: a (top state, parent) pair in m->pairs when the entry has
 * frontiers inside the trie, the stack in m->full when its entry cannot be used at its depth. A frontier
 * at the root recurses into the parent (the frame may end before any byte: whatever the frame below
 * allows). Returns 0, or OOM.
 */
static int mask_stack(mlr_matcher *m, int32_t n, uint32_t *mask) {
    if (m->arena.nodes[n].done == m->fill_epoch) return 0;
    m->arena.nodes[n].done = m->fill_epoch;
    const stack_node node = m->arena.nodes[n];
    const constraint_entry *e = entry_for(m, node.state);
    if (!e) return OOM;
    if (!e->exact || (node.depth > 0 && node.depth + e->max_depth > MLR_CONSTRAINT_MAX_DEPTH))
        return vec_push(&m->full, n) ? 0 : OOM;
    if (m->state_done[node.state] != m->fill_epoch) {
        m->state_done[node.state] = m->fill_epoch;
        if (e->n_ids < 0) {
            for (int32_t w = 0; w < e->n_words; w++) mask[w] |= e->bits[w];
        } else {
            for (int32_t k = 0; k < e->n_ids; k++) mask[e->ids[k] >> 5] |= 1u << (e->ids[k] & 31);
        }
    }
    if (node.parent < 0 || e->n_frontier == 0) return 0; /* the root frame ending: complete, nothing follows */
    const int root = e->frontier[0] == 0;
    if (root && mask_stack(m, node.parent, mask) < 0) return OOM;
    if (e->n_frontier > root && (!vec_push(&m->pairs, node.state) || !vec_push(&m->pairs, node.parent))) return OOM;
    return 0;
}

/* Walks the frontiers of the entry of state q (those inside the trie) from the union of the stacks
 * ids[0..n) (unclosed), their closure computed once. Returns 0, or OOM. */
static int walk_frontiers(mlr_matcher *m, int32_t q, const int32_t *ids, int32_t n, uint32_t *mask) {
    const constraint_entry *e = constraint_grammar_entry(m->g, q); /* (installed by phase 1) */
    const int32_t amark = m->arena.n, smark = m->sets.n;
    int status = 0;
    for (int32_t i = 0; i < n && status == 0; i++) status = vec_push(&m->sets, ids[i]) ? 0 : OOM;
    closure_flags f = {0, 0};
    const int32_t cb = m->sets.n;
    if (status == 0) status = closure(m, smark, cb, &f);
    const int32_t ce = m->sets.n;
    for (int32_t i = 0; status == 0 && ce > cb && i < e->n_frontier; i++)
        if (e->frontier[i] != 0) status = walk(m, e->frontier[i], cb, ce, mask, 0);
    rewind_to(m, amark, smark);
    return status;
}

static int by_pair(const void *a, const void *b) {
    const int32_t *x = a, *y = b;
    if (x[0] != y[0]) return x[0] < y[0] ? -1 : 1;
    return x[1] < y[1] ? -1 : (x[1] > y[1]);
}

/*
 * Phase 2: the readings the cache left to the frames below. The stacks without a usable entry are walked
 * once from the root, together; the stacks of one top state share their frontiers, so those are walked
 * once from the union of the stacks' parents (many stacks often share one top state). Returns 0, or OOM.
 */
static int mask_frames_below(mlr_matcher *m, uint32_t *mask) {
    if (m->full.n > 0) {
        const int32_t amark = m->arena.n, smark = m->sets.n;
        int status = 0;
        for (int32_t i = 0; i < m->full.n && status == 0; i++) status = vec_push(&m->sets, m->full.v[i]) ? 0 : OOM;
        closure_flags f = {0, 0};
        const int32_t cb = m->sets.n;
        if (status == 0) status = closure(m, smark, cb, &f);
        if (status == 0 && m->sets.n > cb) status = walk(m, 0, cb, m->sets.n, mask, 0);
        rewind_to(m, amark, smark);
        if (status < 0) return OOM;
    }
    int32_t *pairs = m->pairs.v;
    const int32_t n = m->pairs.n / 2;
    if (n == 1) return walk_frontiers(m, pairs[0], &pairs[1], 1, mask); /* the common case: one stack */
    if (n > 1) qsort(pairs, (size_t)n, 2 * sizeof *pairs, by_pair);
    for (int32_t i = 0; i < n;) { /* per top state: its stacks' distinct parents, gathered in m->full */
        const int32_t q = pairs[2 * i];
        m->full.n = 0;
        int32_t j = i;
        for (; j < n && pairs[2 * j] == q; j++)
            if ((j == i || pairs[2 * j + 1] != pairs[2 * j - 1]) && !vec_push(&m->full, pairs[2 * j + 1])) return OOM;
        if (walk_frontiers(m, q, m->full.v, m->full.n, mask) < 0) return OOM;
        i = j;
    }
    return 0;
}

/* ============================================================================================== */
/* API */

/* Sets complete and can_continue from the closure of the current stacks. Returns 0, or OOM. */
static int update_state(mlr_matcher *m) {
    const int32_t amark = m->arena.n, smark = m->sets.n;
    int status = 0;
    for (int32_t i = 0; i < m->current.n && status == 0; i++) status = vec_push(&m->sets, m->current.v[i]) ? 0 : OOM;
    closure_flags f = {0, 0};
    const int32_t cb = m->sets.n;
    if (status == 0) status = closure(m, smark, cb, &f);
    m->complete = f.complete;
    m->can_continue = m->sets.n > cb;
    rewind_to(m, amark, smark);
    return status;
}

static void matcher_free(mlr_matcher *m) {
    stack_arena_free(&m->arena);
    stack_arena_free(&m->spare);
    vec_free(&m->current);
    vec_free(&m->sets);
    vec_free(&m->work);
    vec_free(&m->frontier);
    vec_free(&m->pairs);
    vec_free(&m->full);
    vec_free(&m->remap);
    free(m->frames);
    free(m->state_at);
    free(m->scratch_bits);
    free(m->state_done);
    free(m->state_mark);
    if (m->g) mlr_grammar_release(m->g);
    free(m);
}

/* A matcher over g with no stacks and its work buffers. NULL out of memory. */
static mlr_matcher *matcher_new(mlr_grammar *g) {
    mlr_matcher *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    const mlr_vocab *v = g->vocab;
    m->frames = malloc(((size_t)v->max_token_len + 2) * sizeof *m->frames);
    m->state_at = malloc(((size_t)v->max_token_len + 1) * sizeof *m->state_at);
    m->scratch_bits = malloc((size_t)(v->n_words > 0 ? v->n_words : 1) * sizeof *m->scratch_bits);
    m->state_done = calloc((size_t)g->n_states, sizeof *m->state_done);
    m->state_mark = calloc((size_t)g->n_states, sizeof *m->state_mark);
    const int ok = m->frames && m->state_at && m->scratch_bits && m->state_done && m->state_mark && stack_arena_init(&m->arena) && stack_arena_init(&m->spare);
    constraint_grammar_retain(g);
    m->g = g;
    if (!ok) {
        matcher_free(m);
        return NULL;
    }
    return m;
}

int32_t mlr_matcher_create(mlr_grammar *g, mlr_matcher **out, char *err, size_t err_len) {
    *out = NULL;
    if (err && err_len) err[0] = '\0';
    if (!g) {
        errbuf_add(err, err_len, "a matcher needs a grammar");
        return MLR_INVALID_ARGUMENT;
    }
    mlr_matcher *m = matcher_new(g);
    int ok = m != NULL;
    if (ok && g->root_start >= 0) {
        const int32_t n = stack_intern(&m->arena, g->root_start, STACK_NONE);
        ok = n >= 0 && vec_push(&m->current, n);
    }
    ok = ok && update_state(m) == 0;
    if (!ok) {
        if (m) matcher_free(m);
        errbuf_add(err, err_len, "out of memory for the matcher");
        return MLR_OUT_OF_MEMORY;
    }
    *out = m;
    return MLR_OK;
}

int32_t mlr_matcher_clone(const mlr_matcher *src, mlr_matcher **out, char *err, size_t err_len) {
    *out = NULL;
    if (err && err_len) err[0] = '\0';
    if (!src) {
        errbuf_add(err, err_len, "no matcher to clone");
        return MLR_INVALID_ARGUMENT;
    }
    mlr_matcher *m = matcher_new(src->g);
    int32_t *remap = m ? malloc((size_t)(src->arena.n > 0 ? src->arena.n : 1) * sizeof *remap) : NULL;
    int ok = remap != NULL;
    for (int32_t i = 0; ok && i < src->current.n; i++) ok = vec_push(&m->current, src->current.v[i]);
    ok = ok && stack_copy(&m->arena, &src->arena, m->current.v, m->current.n, remap);
    free(remap);
    if (!ok) {
        if (m) matcher_free(m);
        errbuf_add(err, err_len, "out of memory cloning the matcher");
        return MLR_OUT_OF_MEMORY;
    }
    m->complete = src->complete;
    m->can_continue = src->can_continue;
    *out = m;
    return MLR_OK;
}

void mlr_matcher_free(mlr_matcher *m) {
    if (m) matcher_free(m);
}

int32_t mlr_matcher_fill_mask(mlr_matcher *m, uint32_t *mask, int32_t n_words, int32_t *complete) {
    const mlr_vocab *v = m->g->vocab;
    if (complete) *complete = 0;
    if (!mask || n_words < v->n_words) return MLR_INVALID_ARGUMENT;
    memset(mask, 0, (size_t)n_words * sizeof *mask);
    next_fill_epoch(m);
    const int32_t amark = m->arena.n;
    m->pairs.n = 0;
    m->full.n = 0;
    int status = 0;
    for (int32_t i = 0; i < m->current.n && status == 0; i++) status = mask_stack(m, m->current.v[i], mask);
    if (status == 0) status = mask_frames_below(m, mask);
    if (status < 0) { /* what was half done is dropped; the matcher is as it was */
        memset(mask, 0, (size_t)n_words * sizeof *mask);
        rewind_to(m, amark, 0);
        return MLR_OUT_OF_MEMORY;
    }
    if (v->n_tokens % 32) mask[v->n_tokens / 32] &= (1u << (v->n_tokens % 32)) - 1; /* (never set: kept clear) */
    if (complete) *complete = m->complete;
    return MLR_OK;
}

int32_t mlr_matcher_accept(mlr_matcher *m, int32_t token) {
    const mlr_vocab *v = m->g->vocab;
    if (token < 0 || token >= v->n_tokens || !v->allowed[token]) return MLR_INVALID_ARGUMENT;
    const uint8_t *bytes = v->bytes + v->offsets[token];
    const int64_t len = v->offsets[token + 1] - v->offsets[token];
    const int32_t amark = m->arena.n;
    m->sets.n = 0;
    int32_t status = MLR_OK;
    for (int32_t i = 0; i < m->current.n && status == MLR_OK; i++)
        if (!vec_push(&m->sets, m->current.v[i])) status = MLR_OUT_OF_MEMORY;
    int32_t a = 0, b = m->sets.n;
    for (int64_t i = 0; i < len && status == MLR_OK; i++) {
        closure_flags f = {0, 0};
        const int32_t cb = m->sets.n;
        if (closure(m, a, b, &f) < 0) {
            status = MLR_OUT_OF_MEMORY;
            break;
        }
        const int32_t ce = m->sets.n;
        const int32_t k = step(m, cb, ce, m->g->class_of[bytes[i]]);
        if (k < 0) status = MLR_OUT_OF_MEMORY;
        else if (k == 0) status = MLR_INVALID_ARGUMENT;
        else { /* keep only the new set, at the front */
            memmove(m->sets.v, m->sets.v + ce, (size_t)k * sizeof *m->sets.v);
            m->sets.n = k;
            a = 0;
            b = k;
        }
    }
    if (status == MLR_OK && m->current.cap < b) { /* room for the new stacks, before anything changes */
        int32_t *grown = realloc(m->current.v, (size_t)b * sizeof *grown);
        if (grown) m->current.v = grown, m->current.cap = b;
        else status = MLR_OUT_OF_MEMORY;
    }
    if (status != MLR_OK) { /* unchanged */
        rewind_to(m, amark, 0);
        return status;
    }
    /* compaction: the new stacks into the spare arena, which becomes the arena */
    int32_t *remap = NULL;
    if (m->remap.cap < m->arena.n) {
        remap = realloc(m->remap.v, (size_t)m->arena.n * sizeof *remap);
        if (remap) m->remap.v = remap, m->remap.cap = m->arena.n;
    }
    if (m->remap.cap >= m->arena.n && stack_copy(&m->spare, &m->arena, m->sets.v, b, m->remap.v)) {
        const stack_arena t = m->arena;
        m->arena = m->spare;
        m->spare = t;
        stack_clear(&m->spare);
    } /* else (out of memory): the stacks stay where they are, uncompacted but correct */
    memcpy(m->current.v, m->sets.v, (size_t)b * sizeof *m->current.v);
    m->current.n = b;
    m->sets.n = 0;
    if (update_state(m) < 0) { /* out of memory for the closure: say only what is certain */
        m->complete = 0;
        m->can_continue = 1;
    }
    return MLR_OK;
}

int32_t mlr_matcher_state(const mlr_matcher *m) {
    return (m->complete ? MLR_MATCHER_COMPLETE : 0) | (m->can_continue ? MLR_MATCHER_CAN_CONTINUE : 0);
}

int32_t constraint_matcher_vocab_size(const mlr_matcher *m) { return m->g->vocab->n_tokens; }
