/*
 * mlr_request_check: the checks of a request's own arguments that mlr_enqueue makes on every backend (the
 * CPU engine and the TensorRT-LLM shim), in one place so both refuse the same requests with the same
 * texts. Internal to the libraries: not part of the ABI (multilora.h). Plain C, callable from C++.
 */
#ifndef MLR_REQUEST_CHECK_H
#define MLR_REQUEST_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "multilora.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a backend knows about its limits; 0 = unknown there, not checked. */
typedef struct mlr_request_limits {
    int32_t vocab_size;  /* prompt token ids must be in 0..vocab_size-1 */
    int32_t max_seq_len; /* prompt_len + max_new_tokens must not exceed it */
} mlr_request_limits;

/*
 * Appends one line per problem of q to err (caller's buffer, may be NULL; appended to, not cleared) and
 * returns how many there are (0: the request may be enqueued). q and limits: borrowed for the call.
 * LoRA content (modules, ranks, shapes against the model) is not checked here: those problems arrive as
 * responses (MLR_LORA_INVALID), on every backend.
 */
int32_t mlr_request_check(const mlr_request *q, const mlr_request_limits *limits, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* MLR_REQUEST_CHECK_H */
