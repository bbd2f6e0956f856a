/*
 * mlr_grammar_create / release / bytes: checks a constraint program (multilora.h, "Output constraints"),
 * then prepares its tables (constraint_grammar.h): which states can still end their rule, byte classes,
 * the dense next-state table, the kept calls, and the keys under which leaf rules' mask entries are shared
 * across grammars through the vocabulary.
 */
#include <stdlib.h>
#include <string.h>

#include "constraint_grammar.h"
#include "errbuf.h"

#define HEADER 7
#define STATE_WORDS 6
#define BYTE_WORDS 3
#define CALL_WORDS 2
/* Most next-table cells (4 bytes each) a grammar may have: 1 GiB. */
#define MAX_TABLE_CELLS (1ll << 28)

/* The program's sections, as pointers into the caller's words. */
typedef struct program_view {
    int32_t n_rules, n_states, n_bytes, n_calls, root;
    const int32_t *rules;  /* [n_rules] start state */
    const int32_t *states; /* [n_states][6] */
    const int32_t *bytes;  /* [n_bytes][3] */
    const int32_t *calls;  /* [n_calls][2] */
} program_view;

#define ST(v, s, k) ((v)->states[(int64_t)(s) * STATE_WORDS + (k)])
enum { S_RULE, S_FLAGS, S_BYTE_FIRST, S_BYTE_COUNT, S_CALL_FIRST, S_CALL_COUNT };

/* ============================================================================================== */
/* checking */

#define FAIL(...)                                  \
    do {                                           \
        errbuf_add(err, err_len, __VA_ARGS__);     \
        return 0;                                  \
    } while (0)

/* Reads the header and the section bounds. Returns 1, or 0 with the problem in err. */
static int read_header(const int32_t *p, int64_t len, program_view *v, char *err, size_t err_len) {
    if (!p || len < HEADER) FAIL("the program has %lld words; its header alone has %d", (long long)len, HEADER);
    if (p[0] != MLR_CONSTRAINT_MAGIC) FAIL("word 0 is 0x%08x, not the magic 0x%08x", (unsigned)p[0], MLR_CONSTRAINT_MAGIC);
    if (p[1] != MLR_CONSTRAINT_VERSION) FAIL("version %d; this library reads version %d", p[1], MLR_CONSTRAINT_VERSION);
    *v = (program_view){.n_rules = p[2], .n_states = p[3], .n_bytes = p[4], .n_calls = p[5], .root = p[6]};
    if (v->n_rules < 1 || v->n_states < 1 || v->n_bytes < 0 || v->n_calls < 0)
        FAIL("counts: %d rules, %d states, %d byte edges, %d call edges (at least one rule and one state)", v->n_rules,
             v->n_states, v->n_bytes, v->n_calls);
    const int64_t want = HEADER + (int64_t)v->n_rules + (int64_t)STATE_WORDS * v->n_states +
                         (int64_t)BYTE_WORDS * v->n_bytes + (int64_t)CALL_WORDS * v->n_calls;
    if (want != len) FAIL("the header's counts need %lld words; the program has %lld", (long long)want, (long long)len);
    if (v->root < 0 || v->root >= v->n_rules) FAIL("root rule %d is not one of the %d rules", v->root, v->n_rules);
    v->rules = p + HEADER;
    v->states = v->rules + v->n_rules;
    v->bytes = v->states + (int64_t)STATE_WORDS * v->n_states;
    v->calls = v->bytes + (int64_t)BYTE_WORDS * v->n_bytes;
    return 1;
}

/* Every index in range, edges sorted and disjoint, targets in their rule. Returns 1, or 0 (err). */
static int check_program(const program_view *v, char *err, size_t err_len) {
    for (int32_t r = 0; r < v->n_rules; r++) {
        const int32_t s = v->rules[r];
        if (s < 0 || s >= v->n_states) FAIL("rule %d: start state %d is not one of the %d states", r, s, v->n_states);
    }
    for (int32_t s = 0; s < v->n_states; s++) {
        const int32_t rule = ST(v, s, S_RULE), flags = ST(v, s, S_FLAGS);
        const int32_t bf = ST(v, s, S_BYTE_FIRST), bc = ST(v, s, S_BYTE_COUNT);
        const int32_t cf = ST(v, s, S_CALL_FIRST), cc = ST(v, s, S_CALL_COUNT);
        if (rule < 0 || rule >= v->n_rules) FAIL("state %d: rule %d is not one of the %d rules", s, rule, v->n_rules);
        if (flags & ~CONSTRAINT_ACCEPTING) FAIL("state %d: unknown flags 0x%x (only bit 0, accepting)", s, (unsigned)flags);
        if (bf < 0 || bc < 0 || (int64_t)bf + bc > v->n_bytes)
            FAIL("state %d: byte edges %d .. %lld are outside the %d byte edges", s, bf, (long long)bf + bc - 1, v->n_bytes);
        if (cf < 0 || cc < 0 || (int64_t)cf + cc > v->n_calls)
            FAIL("state %d: call edges %d .. %lld are outside the %d call edges", s, cf, (long long)cf + cc - 1, v->n_calls);
    }
    for (int32_t r = 0; r < v->n_rules; r++) {
        const int32_t s = v->rules[r];
        if (ST(v, s, S_RULE) != r) FAIL("rule %d: start state %d belongs to rule %d", r, s, ST(v, s, S_RULE));
    }
    for (int32_t s = 0; s < v->n_states; s++) {
        const int32_t rule = ST(v, s, S_RULE);
        const int32_t bf = ST(v, s, S_BYTE_FIRST), bc = ST(v, s, S_BYTE_COUNT);
        for (int32_t i = bf; i < bf + bc; i++) {
            const int32_t lo = v->bytes[3 * (int64_t)i], hi = v->bytes[3 * (int64_t)i + 1], t = v->bytes[3 * (int64_t)i + 2];
            if (lo < 0 || hi > 255 || lo > hi) FAIL("byte edge %d (of state %d): range %d..%d is not within 0..255, lo <= hi", i, s, lo, hi);
            if (t < 0 || t >= v->n_states) FAIL("byte edge %d (of state %d): target %d is not one of the %d states", i, s, t, v->n_states);
            if (ST(v, t, S_RULE) != rule)
                FAIL("byte edge %d (of state %d, rule %d): target state %d belongs to rule %d", i, s, rule, t, ST(v, t, S_RULE));
            if (i > bf && lo <= v->bytes[3 * (int64_t)(i - 1) + 1])
                FAIL("byte edge %d (of state %d): range %d..%d is not after the previous edge's (..%d): a state's edges "
                     "must be sorted by lo and disjoint",
                     i, s, lo, hi, v->bytes[3 * (int64_t)(i - 1) + 1]);
        }
        const int32_t cf = ST(v, s, S_CALL_FIRST), cc = ST(v, s, S_CALL_COUNT);
        for (int32_t i = cf; i < cf + cc; i++) {
            const int32_t callee = v->calls[2 * (int64_t)i], ret = v->calls[2 * (int64_t)i + 1];
            if (callee < 0 || callee >= v->n_rules) FAIL("call edge %d (of state %d): callee %d is not one of the %d rules", i, s, callee, v->n_rules);
            if (ret < 0 || ret >= v->n_states) FAIL("call edge %d (of state %d): return state %d is not one of the %d states", i, s, ret, v->n_states);
            if (ST(v, ret, S_RULE) != rule)
                FAIL("call edge %d (of state %d, rule %d): return state %d belongs to rule %d", i, s, rule, ret, ST(v, ret, S_RULE));
        }
    }
    return 1;
}

#undef FAIL

/* ============================================================================================== */
/* tables */

/* live[s] = 1 when state s can reach an accepting state of its rule (through calls of rules that can end).
 * Sweeps in reverse state order until nothing changes (compilers number targets after sources, so a few
 * sweeps do). */
static void find_live(const program_view *v, uint8_t *live) {
    for (int32_t s = 0; s < v->n_states; s++) live[s] = (uint8_t)(ST(v, s, S_FLAGS) & CONSTRAINT_ACCEPTING);
    for (int changed = 1; changed;) {
        changed = 0;
        for (int32_t s = v->n_states - 1; s >= 0; s--) {
            if (live[s]) continue;
            int ok = 0;
            const int32_t bf = ST(v, s, S_BYTE_FIRST), bc = ST(v, s, S_BYTE_COUNT);
            for (int32_t i = bf; i < bf + bc && !ok; i++) ok = live[v->bytes[3 * (int64_t)i + 2]];
            const int32_t cf = ST(v, s, S_CALL_FIRST), cc = ST(v, s, S_CALL_COUNT);
            for (int32_t i = cf; i < cf + cc && !ok; i++)
                ok = live[v->rules[v->calls[2 * (int64_t)i]]] && live[v->calls[2 * (int64_t)i + 1]];
            if (ok) live[s] = 1, changed = 1;
        }
    }
}

/* Classes: a new class starts at every edge's lo and after every edge's hi. */
static void byte_classes(const program_view *v, mlr_grammar *g) {
    uint8_t starts[257] = {0};
    for (int32_t i = 0; i < v->n_bytes; i++) {
        starts[v->bytes[3 * (int64_t)i]] = 1;
        starts[v->bytes[3 * (int64_t)i + 1] + 1] = 1;
    }
    int32_t c = 0;
    for (int b = 0; b < 256; b++) {
        if (b > 0 && starts[b]) c++;
        g->class_of[b] = (uint8_t)c;
    }
    g->n_classes = c + 1;
}

/*
 * A leaf rule's canonical serialization: its live states renumbered in breadth-first order from its start
 * (edges in program order), each as [accepting, edge count, (lo, hi, target)...] over live targets, after
 * one word with the state count. Equal serializations step alike over every byte, so their mask entries
 * are equal. Sets rule_key* for the rule and leaf_key for its states reached; 0 out of memory.
 */
static int leaf_key(const program_view *v, mlr_grammar *g, const uint8_t *live, int32_t rule, int32_t *order) {
    const int32_t start = v->rules[rule];
    if (!live[start]) return 1;
    int32_t n = 0, words = 1;
    order[n++] = start;
    g->leaf_key[start] = 0;
    for (int32_t k = 0; k < n; k++) {
        const int32_t s = order[k];
        const int32_t bf = ST(v, s, S_BYTE_FIRST), bc = ST(v, s, S_BYTE_COUNT);
        words += 2;
        for (int32_t i = bf; i < bf + bc; i++) {
            const int32_t t = v->bytes[3 * (int64_t)i + 2];
            if (!live[t]) continue;
            words += 3;
            if (g->leaf_key[t] < 0) {
                g->leaf_key[t] = n;
                order[n++] = t;
            }
        }
    }
    int32_t *key = malloc(((size_t)words + 1) * sizeof *key);
    if (!key) return 0;
    int32_t w = 0;
    key[w++] = n;
    for (int32_t k = 0; k < n; k++) {
        const int32_t s = order[k];
        const int32_t bf = ST(v, s, S_BYTE_FIRST), bc = ST(v, s, S_BYTE_COUNT);
        key[w++] = ST(v, s, S_FLAGS) & CONSTRAINT_ACCEPTING;
        const int32_t count_at = w++;
        int32_t edges = 0;
        for (int32_t i = bf; i < bf + bc; i++) {
            const int32_t t = v->bytes[3 * (int64_t)i + 2];
            if (!live[t]) continue;
            key[w++] = v->bytes[3 * (int64_t)i];
            key[w++] = v->bytes[3 * (int64_t)i + 1];
            key[w++] = g->leaf_key[t];
            edges++;
        }
        key[count_at] = edges;
    }
    g->rule_key[rule] = key;
    g->rule_key_len[rule] = words;
    return 1;
}

static void grammar_free(mlr_grammar *g) {
    if (g->entries) {
        for (int32_t s = 0; s < g->n_states; s++) constraint_entry_release(atomic_load(&g->entries[s]));
        free((void *)g->entries);
    }
    if (g->rule_key)
        for (int32_t r = 0; r < g->n_rules; r++) free(g->rule_key[r]);
    free(g->rule_key);
    free(g->rule_key_len);
    free(g->rule_key_hash);
    free(g->leaf_key);
    free(g->leaf_rule);
    free(g->rule_of);
    free(g->flags);
    free(g->call_first);
    free(g->calls);
    free(g->next);
    free(g->loops);
    free(g->stays);
    if (g->vocab) mlr_vocab_release(g->vocab);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

/* Fills the tables of a checked program. Returns 1, or 0 out of memory. */
static int prepare(const program_view *v, mlr_grammar *g) {
    const int32_t n = v->n_states;
    uint8_t *live = calloc((size_t)n, 1);
    int32_t *order = malloc((size_t)n * sizeof *order);
    g->rule_of = malloc((size_t)n * sizeof *g->rule_of);
    g->flags = calloc((size_t)n, 1);
    g->call_first = calloc((size_t)n + 1, sizeof *g->call_first);
    g->calls = malloc((size_t)(v->n_calls > 0 ? v->n_calls : 1) * sizeof *g->calls);
    g->next = malloc((size_t)n * (size_t)g->n_classes * sizeof *g->next);
    g->loops = calloc((size_t)n * 4, sizeof *g->loops);
    g->stays = calloc((size_t)n * 4, sizeof *g->stays);
    g->rule_key = calloc((size_t)v->n_rules, sizeof *g->rule_key);
    g->rule_key_len = calloc((size_t)v->n_rules, sizeof *g->rule_key_len);
    g->rule_key_hash = calloc((size_t)v->n_rules, sizeof *g->rule_key_hash);
    g->leaf_key = malloc((size_t)n * sizeof *g->leaf_key);
    g->leaf_rule = malloc((size_t)v->n_rules);
    g->entries = calloc((size_t)n, sizeof *g->entries);
    int ok = live && order && g->rule_of && g->flags && g->call_first && g->calls && g->next && g->loops && g->stays && g->rule_key &&
             g->rule_key_len && g->rule_key_hash && g->leaf_key && g->leaf_rule && g->entries;
    if (ok) {
        find_live(v, live);
        for (int64_t i = 0; i < (int64_t)n * g->n_classes; i++) g->next[i] = -1;
        int32_t kept = 0;
        for (int32_t s = 0; s < n; s++) {
            g->rule_of[s] = ST(v, s, S_RULE);
            g->leaf_key[s] = -1;
            uint8_t f = (uint8_t)(ST(v, s, S_FLAGS) & CONSTRAINT_ACCEPTING);
            const int32_t bf = ST(v, s, S_BYTE_FIRST), bc = ST(v, s, S_BYTE_COUNT);
            for (int32_t i = bf; i < bf + bc; i++) {
                const int32_t lo = v->bytes[3 * (int64_t)i], hi = v->bytes[3 * (int64_t)i + 1], t = v->bytes[3 * (int64_t)i + 2];
                if (!live[t]) continue;
                f |= CONSTRAINT_HAS_BYTES;
                for (int32_t c = g->class_of[lo]; c <= g->class_of[hi]; c++) g->next[(int64_t)s * g->n_classes + c] = t;
                if (t == s)
                    for (int32_t b = lo; b <= hi; b++) g->loops[4 * (int64_t)s + (b >> 6)] |= 1ull << (b & 63);
            }
            g->call_first[s] = kept;
            const int32_t cf = ST(v, s, S_CALL_FIRST), cc = ST(v, s, S_CALL_COUNT);
            for (int32_t i = cf; i < cf + cc; i++) {
                const int32_t start = v->rules[v->calls[2 * (int64_t)i]], ret = v->calls[2 * (int64_t)i + 1];
                if (!live[start] || !live[ret]) continue;
                g->calls[kept++] = (grammar_call){start, ret};
                f |= CONSTRAINT_HAS_CALLS;
            }
            g->flags[s] = f;
        }
        g->call_first[n] = kept;
        for (int32_t s = 0; s < n; s++) { /* (needs every state's flags) */
            const int32_t bf = ST(v, s, S_BYTE_FIRST), bc = ST(v, s, S_BYTE_COUNT);
            for (int32_t i = bf; i < bf + bc; i++) {
                const int32_t lo = v->bytes[3 * (int64_t)i], hi = v->bytes[3 * (int64_t)i + 1], t = v->bytes[3 * (int64_t)i + 2];
                if (!live[t] || (g->flags[t] & (CONSTRAINT_ACCEPTING | CONSTRAINT_HAS_CALLS))) continue;
                for (int32_t b = lo; b <= hi; b++) g->stays[4 * (int64_t)s + (b >> 6)] |= 1ull << (b & 63);
            }
        }
        const int32_t root = v->rules[v->root];
        g->root_start = live[root] ? root : -1;
        /* leaf rules: no state keeps a call */
        for (int32_t r = 0; r < v->n_rules; r++) g->leaf_rule[r] = 1;
        for (int32_t s = 0; s < n; s++)
            if (g->flags[s] & CONSTRAINT_HAS_CALLS) g->leaf_rule[g->rule_of[s]] = 0;
        for (int32_t r = 0; ok && r < v->n_rules; r++) {
            if (!g->leaf_rule[r]) continue;
            ok = leaf_key(v, g, live, r, order);
            if (ok && g->rule_key[r]) g->rule_key_hash[r] = constraint_hash_words(g->rule_key[r], g->rule_key_len[r]);
        }
        int64_t key_words = 0;
        for (int32_t r = 0; ok && r < v->n_rules; r++) key_words += g->rule_key_len[r];
        g->table_bytes = (int64_t)sizeof *g + (int64_t)n * (4 + 1 + 4 + 4 + 8 + 64) + (int64_t)kept * (int64_t)sizeof(grammar_call) +
                         (int64_t)n * g->n_classes * 4 + (int64_t)v->n_rules * (8 + 4 + 8 + 1) + key_words * 4;
    }
    free(live);
    free(order);
    return ok;
}

int32_t mlr_grammar_create(mlr_vocab *vocab, const int32_t *program, int64_t program_len, mlr_grammar **out, char *err,
                           size_t err_len) {
    *out = NULL;
    if (err && err_len) err[0] = '\0';
    if (!vocab) {
        errbuf_add(err, err_len, "a grammar needs a vocabulary");
        return MLR_INVALID_ARGUMENT;
    }
    program_view v;
    if (!read_header(program, program_len, &v, err, err_len) || !check_program(&v, err, err_len))
        return MLR_INVALID_ARGUMENT;
    mlr_grammar *g = calloc(1, sizeof *g);
    if (!g) {
        errbuf_add(err, err_len, "out of memory for the grammar");
        return MLR_OUT_OF_MEMORY;
    }
    atomic_init(&g->refs, 1);
    pthread_mutex_init(&g->mu, NULL);
    g->n_rules = v.n_rules;
    g->n_states = v.n_states;
    byte_classes(&v, g);
    if ((int64_t)v.n_states * g->n_classes > MAX_TABLE_CELLS) {
        errbuf_add(err, err_len, "the program's next-state table (%d states x %d byte classes) exceeds %lld cells",
                   v.n_states, g->n_classes, (long long)MAX_TABLE_CELLS);
        grammar_free(g);
        return MLR_INVALID_ARGUMENT;
    }
    if (!prepare(&v, g)) {
        errbuf_add(err, err_len, "out of memory for the grammar's tables (%d states)", v.n_states);
        grammar_free(g);
        return MLR_OUT_OF_MEMORY;
    }
    constraint_vocab_retain(vocab);
    g->vocab = vocab;
    *out = g;
    return MLR_OK;
}

void constraint_grammar_retain(mlr_grammar *g) { atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed); }

void mlr_grammar_release(mlr_grammar *g) {
    if (g && atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) == 1) grammar_free(g);
}

int64_t mlr_grammar_bytes(const mlr_grammar *g) {
    if (!g) return 0;
    return g->table_bytes + atomic_load_explicit(&((mlr_grammar *)g)->cache_bytes, memory_order_relaxed);
}

/* ============================================================================================== */
/* the mask cache */

/* A leaf state's shared key: its rule's serialization, then its canonical index. NULL: not shareable or
 * out of memory. */
static int32_t *shared_key(const mlr_grammar *g, int32_t state, int32_t *len, uint64_t *hash) {
    const int32_t rule = g->rule_of[state];
    if (g->leaf_key[state] < 0 || !g->rule_key[rule]) return NULL;
    const int32_t n = g->rule_key_len[rule];
    int32_t *key = malloc(((size_t)n + 1) * sizeof *key);
    if (!key) return NULL;
    memcpy(key, g->rule_key[rule], (size_t)n * sizeof *key);
    key[n] = g->leaf_key[state];
    *len = n + 1;
    *hash = g->rule_key_hash[rule] ^ ((uint64_t)(uint32_t)key[n] * 0x9E3779B97F4A7C15ull);
    return key;
}

/* Sets the grammar's slot to e (taking the caller's reference) unless one is there; returns the slot's. */
static constraint_entry *set_slot(mlr_grammar *g, int32_t state, constraint_entry *e) {
    pthread_mutex_lock(&g->mu);
    constraint_entry *had = atomic_load_explicit(&g->entries[state], memory_order_relaxed);
    if (!had) {
        atomic_store_explicit(&g->entries[state], e, memory_order_release);
        atomic_fetch_add_explicit(&g->cache_bytes, e->bytes, memory_order_relaxed);
    }
    pthread_mutex_unlock(&g->mu);
    if (had) {
        constraint_entry_release(e);
        return had;
    }
    return e;
}

constraint_entry *constraint_grammar_shared(mlr_grammar *g, int32_t state) {
    int32_t len = 0;
    uint64_t hash = 0;
    int32_t *key = shared_key(g, state, &len, &hash);
    if (!key) return NULL;
    constraint_entry *e = constraint_lru_find(&g->vocab->shared, hash, key, len);
    free(key);
    return e ? set_slot(g, state, e) : NULL;
}

constraint_entry *constraint_grammar_install(mlr_grammar *g, int32_t state, constraint_entry *e) {
    int32_t len = 0;
    uint64_t hash = 0;
    int32_t *key = shared_key(g, state, &len, &hash);
    if (key) {
        e->key = key;
        e->key_len = len;
        e->hash = hash;
        e->bytes += (int64_t)len * 4;
        constraint_entry *listed = constraint_lru_insert(&g->vocab->shared, e);
        constraint_entry_release(e);
        e = listed;
    }
    return set_slot(g, state, e);
}
