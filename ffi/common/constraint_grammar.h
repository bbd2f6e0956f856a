/*
 * mlr_grammar (multilora.h, "Output constraints"): a checked program and the tables the matcher steps with.
 * Internal layout, shared by constraint_grammar.c and constraint_matcher.c.
 *
 * Tables: bytes fall into equivalence classes (bytes no edge tells apart share one), so stepping a state by
 * a byte is next[state * n_classes + class_of[byte]]. States that can never end their rule (no path to an
 * accepting state, through calls of rules that can end) are pruned: no edge of the tables leads to one,
 * and calls of such rules, or returning to such states, are left out of `calls`. That keeps every stack a
 * matcher holds alive, so a token is allowed only when something can follow it.
 */
#ifndef MLR_CONSTRAINT_GRAMMAR_H
#define MLR_CONSTRAINT_GRAMMAR_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "constraint_cache.h"
#include "constraint_vocab.h"
#include "multilora.h"

#define CONSTRAINT_ACCEPTING 1   /* the program's state flag: the rule may end here */
#define CONSTRAINT_HAS_BYTES 2   /* (tables) some byte edge leads to a live state */
#define CONSTRAINT_HAS_CALLS 4   /* (tables) some call is kept */

/* A call edge: the callee rule's start state, and the state the caller goes on at. */
typedef struct grammar_call {
    int32_t start;
    int32_t ret;
} grammar_call;

struct mlr_grammar {
    atomic_int refs;
    mlr_vocab *vocab;            /* one reference */
    int32_t n_rules, n_states, root_start; /* root_start: -1 when the root rule can never end */
    int32_t *rule_of;            /* [n_states]; owned */
    uint8_t *flags;              /* [n_states] CONSTRAINT_*; owned */
    int32_t *call_first;         /* [n_states + 1]: state s's kept calls are calls[call_first[s] .. call_first[s + 1]); owned */
    grammar_call *calls;         /* owned */
    uint8_t class_of[256];
    int32_t n_classes;
    int32_t *next;               /* [n_states * n_classes] target state, -1 none; owned */
    /* 256-bit byte sets per state, for taking whole trie subtrees at once (constraint_matcher.c): */
    uint64_t *loops;             /* [n_states][4] the bytes on which the state goes to itself; owned */
    uint64_t *stays;             /* [n_states][4] the bytes on which it goes to a state that neither accepts nor calls; owned */
    /* leaf rules' shared-cache keys: a state with leaf_key[s] >= 0 is canonical state leaf_key[s] of rule
     * rule_of[s], whose canonical serialization is rule_key[rule] (NULL: not shareable) */
    int32_t **rule_key;          /* [n_rules] each [rule_key_len[r] + 1] (room for the state index); owned */
    int32_t *rule_key_len;       /* [n_rules]; owned */
    uint64_t *rule_key_hash;     /* [n_rules] hash of the serialization; owned */
    int32_t *leaf_key;           /* [n_states]; owned */
    uint8_t *leaf_rule;          /* [n_rules] 1 = no state of the rule keeps a call; owned */
    int64_t table_bytes;
    /* the mask cache: one entry per top state, computed on first use */
    _Atomic(constraint_entry *) *entries; /* [n_states], one reference each; owned */
    pthread_mutex_t mu;          /* installs entries */
    atomic_llong cache_bytes;
};

/* One more reference (matchers keep one); mlr_grammar_release drops one. */
void constraint_grammar_retain(mlr_grammar *grammar);

/* The cached entry of a state, or NULL when none yet (lock-free). */
static inline constraint_entry *constraint_grammar_entry(mlr_grammar *g, int32_t state) {
    return atomic_load_explicit(&g->entries[state], memory_order_acquire);
}

/*
 * Installs e (computed by the caller; the caller's reference is given up) as the state's entry, through the
 * vocabulary's shared cache when the state is a leaf rule's, and returns the installed entry (e, or one
 * another thread or grammar had computed; then e is released). Never fails: out of memory, e is kept
 * in this grammar only.
 */
constraint_entry *constraint_grammar_install(mlr_grammar *g, int32_t state, constraint_entry *e);

/* The shared cache's entry for a leaf state, if another grammar computed it (installed here too), or NULL. */
constraint_entry *constraint_grammar_shared(mlr_grammar *g, int32_t state);

#endif /* MLR_CONSTRAINT_GRAMMAR_H */
