/*
 * The CPU engine's LoRA cache, with TensorRT-LLM's PEFT cache rules (ARCHITECTURE.md section 4):
 *   - capacity in bytes, and optionally a most number of adapters;
 *   - a task used by a running request is active and never evicted; pinned tasks stay too (pinned bytes
 *     capped at the capacity minus one max-size adapter);
 *   - other tasks are evicted least recently used first, when a put needs room; none evictable: CACHE_FULL;
 *   - putting a task id that is cached does not overwrite it: an id names one exact content.
 * Adapters are stored in their own dtype (the engine's adapter dtype), A as given and B transposed, so a
 * rank-r update reads each weight once: r dot products over A, then r axpys over B's rows.
 */
#ifndef MLR_LORA_CACHE_H
#define MLR_LORA_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* One (module, layer) of an adapter: y += scale * B (A x). Elements in the adapter's dtype. */
typedef struct lora_row {
    int32_t rank;
    const void *a;  /* [rank, in] */
    const void *bt; /* B transposed: [rank, out]; for mlp_gate_up the outputs are [up; gate] */
} lora_row;

typedef struct lora_adapter {
    uint64_t task_id;
    int64_t bytes;             /* storage, what the capacity counts */
    int32_t n_rows;
    int32_t dtype;             /* mlr_float_dtype of the stored rows */
    unsigned char *data;       /* owned: every row's A then B transposed */
    lora_row *rows;            /* [MLR_LORA_MODULE_COUNT * num_layers], by module id then layer; rank 0 = absent; owned */
    int32_t active;            /* running requests using it */
    int32_t pinned;
    int32_t release_pending;
    int64_t last_use;          /* LRU clock */
} lora_adapter;

typedef struct lora_cache {
    lora_adapter **tasks;      /* owned */
    int32_t n_tasks, cap_tasks;
    int64_t capacity;          /* bytes */
    int64_t used;
    int32_t max_loras;         /* 0 = no count limit */
    int64_t max_adapter_bytes; /* one adapter of max_lora_rank on every module and layer */
    int32_t max_rank;
    int32_t dtype;             /* the dtype adapters must arrive in */
    int64_t puts, hits, misses, evictions;
} lora_cache;

void lora_cache_init(lora_cache *c, const model *m, int64_t capacity, int32_t max_loras, int32_t max_rank, int32_t dtype);
void lora_cache_free(lora_cache *c);

lora_adapter *lora_cache_find(lora_cache *c, uint64_t task_id);

/* The weights of a request, as the caller gave them. */
typedef struct lora_payload {
    const void *weights;
    int32_t dtype;
    int64_t rows, row_len;
    const int32_t *config;
    int32_t config_width;
} lora_payload;

/*
 * Looks up task_id for a request, storing the payload when the task is not cached (payload may be NULL:
 * then a miss is MLR_LORA_NOT_CACHED). On success *out is the adapter, already counted active.
 * err receives every problem for MLR_LORA_INVALID, or why the cache is full, or MLR_OUT_OF_MEMORY's cause.
 */
int32_t lora_cache_acquire(lora_cache *c, const model *m, uint64_t task_id, const lora_payload *payload, int64_t now,
                           lora_adapter **out, char *err, size_t err_len);

/* A request using the adapter ended. */
void lora_cache_release_use(lora_cache *c, lora_adapter *a, int64_t now);

int32_t lora_cache_pin(lora_cache *c, uint64_t task_id, int32_t on, char *err, size_t err_len);
int32_t lora_cache_release(lora_cache *c, uint64_t task_id, char *err, size_t err_len);

#endif /* MLR_LORA_CACHE_H */
