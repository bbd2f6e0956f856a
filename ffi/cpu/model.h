/*
 * A Llama-family model over weights that stay where the caller mapped them: a table of pointers into
 * the memory-mapped safetensors files, checked for presence, dtype and shape once at creation.
 */
#ifndef MLR_MODEL_H
#define MLR_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "multilora.h"
#include "thread_pool.h"

/* One weight: borrowed data (the mapped file) and its dtype; a BF16 matrix on a path that packs them
 * (kernels.h) also has its panels, owned. */
typedef struct weight {
    const void *data;
    int32_t dtype;    /* mlr_float_dtype */
    uint16_t *panels; /* panels_pack of data, or NULL */
} weight;

typedef struct layer_weights {
    weight attn_norm;             /* [hidden] */
    weight q, k, v;               /* [heads*hd, hidden], [kv_heads*hd, hidden] x2 */
    weight q_bias, k_bias, v_bias; /* [heads*hd], [kv*hd] x2, or data NULL */
    weight o;                     /* [hidden, heads*hd] */
    weight ffn_norm;              /* [hidden] */
    weight gate, up;              /* [intermediate, hidden] */
    weight down;                  /* [hidden, intermediate] */
} layer_weights;

typedef struct model {
    mlr_model_config cfg;
    int32_t q_dim;                /* heads * head_dim */
    int32_t kv_dim;               /* kv_heads * head_dim */
    weight embed;                 /* [vocab, hidden] */
    weight final_norm;            /* [hidden] */
    weight lm_head;               /* [vocab, hidden] (embed when tied) */
    layer_weights *layers;        /* [num_layers], owned */
    float *inv_freq;              /* [head_dim / 2] rotary frequencies, llama3 scaling applied; owned */
    int32_t dtype;                /* the matrices' dtype (the default dtype adapters must have) */
    void *owned;                  /* model_own_weights: the copies the weights point into; owned */
} model;

/* Resolves every tensor by name and checks it; on failure writes every problem to err and returns
 * MLR_INVALID_ARGUMENT. */
int32_t model_init(model *m, const mlr_model_config *cfg, const mlr_tensor *tensors, int32_t n_tensors, char *err,
                   size_t err_len);
void model_free(model *m);

/* Packs every BF16 matrix (the layers' projections and lm_head) in panels, over the pool; MLR_OK, or
 * MLR_OUT_OF_MEMORY (then none is kept). */
int32_t model_pack_panels(model *m, thread_pool *pool);

/* Copies every tensor the engine reads into memory of its own (one buffer, m->owned) and points the
 * weights there; a matrix packed in panels keeps only its panels (its data becomes NULL: never read on
 * the panel path). After it nothing points into the caller's tensors. MLR_OK, or MLR_OUT_OF_MEMORY (then
 * nothing is changed). */
int32_t model_own_weights(model *m);

/* Input and output width of a LoRA module id (mlr_lora_module) in this model; 0 when the model has no such
 * module. */
int32_t model_lora_shape(const model *m, int32_t module_id, int64_t *in, int64_t *out);

#endif /* MLR_MODEL_H */
