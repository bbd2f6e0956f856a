#include "attention.h"

#include <math.h>
#include <stdlib.h>

#include "multilora.h"

typedef struct attention_job {
    const forward_ctx *ctx;
    const batch_entry *batch;
    int32_t layer;
    int32_t n_tiles;
    int failed; /* a task could not allocate its buffer; atomic */
} attention_job;

/* Asks for the K and V rows of the block of keys at kb (one head's hd floats of each, rows kv_dim apart)
 * into L2: a decode step's K/V were written a whole weight stream ago and come from memory, and the
 * score tiles alone would read them one miss at a time. */
static void prefetch_block(const float *keys, const float *values, int32_t kv_dim, int32_t hd, int32_t kb,
                           int32_t n_keys) {
    const int32_t end = kb + ATTN_KEYS < n_keys ? kb + ATTN_KEYS : n_keys;
    for (int32_t p = kb; p < end; p++)
        for (int32_t d = 0; d < hd + 15; d += 16) { /* every 64-byte line the row touches */
            const int32_t at = d < hd ? d : hd - 1;
            __builtin_prefetch(keys + (size_t)p * kv_dim + at, 0, 2);
            __builtin_prefetch(values + (size_t)p * kv_dim + at, 0, 2);
        }
}

/* The largest of x[0 .. n) (n > 0): eight running maxima, then the largest of them. The maximum of a set
 * does not depend on the order it is taken in (a +0 / -0 tie can come out either way, and subtracting
 * either from the scores gives the same values). */
static float max_floats(const float *x, int32_t n) {
    float m[8];
    for (int i = 0; i < 8; i++) m[i] = x[0];
    int32_t p = 0;
    for (; p + 8 <= n; p += 8)
        for (int i = 0; i < 8; i++) m[i] = x[p + i] > m[i] ? x[p + i] : m[i];
    for (; p < n; p++) m[0] = x[p] > m[0] ? x[p] : m[0];
    float best = m[0];
    for (int i = 1; i < 8; i++) best = m[i] > best ? m[i] : best;
    return best;
}

/* sum[r] += e[r][0] + e[r][1] + ... + e[r][nk - 1] in double, in that order, for each row r < rows (rows
 * ATTN_KEYS apart): eight rows at a time, so that eight independent chains of additions run together
 * instead of one (each row's own sum is the same sequence of additions either way). */
static void add_row_sums(double *sum, const float *e, int32_t rows, int32_t nk) {
    int32_t r = 0;
    for (; r + 8 <= rows; r += 8) {
        double s[8];
        for (int i = 0; i < 8; i++) s[i] = sum[r + i];
        for (int32_t p = 0; p < nk; p++)
            for (int i = 0; i < 8; i++) s[i] += e[(size_t)(r + i) * ATTN_KEYS + p];
        for (int i = 0; i < 8; i++) sum[r + i] = s[i];
    }
    for (; r < rows; r++)
        for (int32_t p = 0; p < nk; p++) sum[r] += e[(size_t)r * ATTN_KEYS + p];
}

static void attention_items(void *arg, int64_t begin, int64_t end) {
    attention_job *j = arg;
    const model *m = j->ctx->m;
    const forward_scratch *s = j->ctx->scratch;
    const int32_t heads = m->cfg.num_heads, kv_heads = m->cfg.num_kv_heads, hd = m->cfg.head_dim;
    const int32_t kv_dim = m->kv_dim, group = heads / kv_heads;
    const int32_t max_rows = ATTN_TILE * group;
    const float scale = 1.0f / sqrtf((float)hd);
    /* per query row: output accumulator [hd], scores of a block [ATTN_KEYS], running max, sum */
    const size_t bytes = (size_t)max_rows * ((size_t)hd + ATTN_KEYS + 1) * sizeof(float) +
                         (size_t)max_rows * (sizeof(double) + 2 * sizeof(int32_t));
    unsigned char *buf = forward_task_alloc(j->ctx->scratch, bytes);
    if (!buf) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    double *sum = (double *)buf;
    float *acc = (float *)(sum + max_rows);
    float *scores = acc + (size_t)max_rows * hd;
    float *row_max = scores + (size_t)max_rows * ATTN_KEYS;
    int32_t *qrow = (int32_t *)(row_max + max_rows);
    int32_t *live = qrow + max_rows; /* keys of the current block each row sums */
    const gemm_x gq = {s->q, hd, NULL, 0}; /* q as [n * heads] rows of hd */

    for (int64_t item = begin; item < end; item++) {
        const int32_t tile = (int32_t)(item / kv_heads), kvh = (int32_t)(item % kv_heads);
        const int32_t t0 = s->tiles[tile], nt = s->tiles[tile + 1] - t0;
        const batch_entry *first = &j->batch[t0];
        const int32_t rows = nt * group;
        for (int32_t i = 0; i < nt; i++)
            for (int32_t g = 0; g < group; g++) qrow[i * group + g] = (t0 + i) * heads + kvh * group + g;
        for (int32_t r = 0; r < rows; r++) {
            sum[r] = 0;
            row_max[r] = -INFINITY;
            for (int32_t d = 0; d < hd; d++) acc[(size_t)r * hd + d] = 0;
        }
        const size_t layer_off = (size_t)j->layer * (size_t)first->kv->capacity * (size_t)kv_dim + (size_t)kvh * hd;
        const float *keys = first->kv->k + layer_off, *values = first->kv->v + layer_off;
        const int32_t n_keys = first->pos + nt; /* the last token's keys 0..pos */
        prefetch_block(keys, values, kv_dim, hd, 0, n_keys);
        for (int32_t kb = 0; kb < n_keys; kb += ATTN_KEYS) {
            const int32_t nk = n_keys - kb < ATTN_KEYS ? n_keys - kb : ATTN_KEYS;
            prefetch_block(keys, values, kv_dim, hd, kb + ATTN_KEYS, n_keys);
            /* scores of every row of the tile against the block (a row uses those up to its position) */
            gemm_block(j->ctx->k, &gq, qrow, rows, keys + (size_t)kb * kv_dim, MLR_DTYPE_F32,
                       (int64_t)kv_dim * (int64_t)sizeof(float), NULL, hd, 0, nk, scores, ATTN_KEYS);
            for (int32_t r = 0; r < rows; r++) {
                const int32_t pos = first->pos + r / group;
                const int32_t valid = pos + 1 - kb < nk ? pos + 1 - kb : nk;
                live[r] = valid > 0 ? valid : 0;
                float *sc = scores + (size_t)r * ATTN_KEYS;
                for (int32_t p = live[r]; p < nk; p++) sc[p] = 0; /* adds nothing to the sum below */
                if (valid <= 0) continue;
                for (int32_t p = 0; p < valid; p++) sc[p] *= scale;
                const float block_max = max_floats(sc, valid);
                const float new_max = block_max > row_max[r] ? block_max : row_max[r];
                float *out = acc + (size_t)r * hd;
                if (new_max != row_max[r]) { /* rescale what was summed under the old max */
                    const float c = expf(row_max[r] - new_max);
                    sum[r] *= c;
                    for (int32_t d = 0; d < hd; d++) out[d] *= c;
                    row_max[r] = new_max;
                }
                for (int32_t p = 0; p < valid; p++) sc[p] -= new_max;
                exp_floats(j->ctx->k, sc, sc, valid); /* expf, bit for bit */
            }
            add_row_sums(sum, scores, rows, nk);
            attention_pv(j->ctx->k, acc, scores, ATTN_KEYS, live, rows, values + (size_t)kb * kv_dim, kv_dim, hd);
        }
        for (int32_t r = 0; r < rows; r++) {
            const float inv = (float)(1.0 / sum[r]);
            float *dst = s->att + (size_t)qrow[r] * hd; /* att has q's layout */
            for (int32_t d = 0; d < hd; d++) dst[d] = acc[(size_t)r * hd + d] * inv;
        }
    }
    free(buf);
}

int attention(const forward_ctx *ctx, const batch_entry *batch, int32_t n, int32_t layer) {
    forward_scratch *s = ctx->scratch;
    /* tiles: runs of one sequence at consecutive positions, at most ATTN_TILE long */
    int32_t n_tiles = 0;
    for (int32_t t = 0; t < n; t++) {
        const int32_t start = n_tiles > 0 ? s->tiles[n_tiles - 1] : -1;
        const int extend = start >= 0 && batch[t].kv == batch[t - 1].kv && batch[t].pos == batch[t - 1].pos + 1 &&
                           t - start < ATTN_TILE;
        if (!extend) s->tiles[n_tiles++] = t;
    }
    s->tiles[n_tiles] = n;
    attention_job job = {ctx, batch, layer, n_tiles, 0};
    thread_pool_run(ctx->pool, (int64_t)n_tiles * ctx->m->cfg.num_kv_heads, 1, attention_items, &job);
    return !__atomic_load_n(&job.failed, __ATOMIC_RELAXED);
}
