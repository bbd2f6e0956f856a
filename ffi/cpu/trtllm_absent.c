/*
 * mlr_trtllm_create in the CPU library: the TensorRT-LLM backend is a separate library
 * (libmultilora-trtllm.so, ffi/trtllm), so both libraries export one symbol set and bind the same way.
 */
#include "../common/errbuf.h"
#include "multilora.h"

int32_t mlr_trtllm_create(const mlr_trtllm_params *params, mlr_engine **engine, char *err, size_t err_len) {
    (void)params;
    if (engine) *engine = NULL;
    if (err && err_len > 0) err[0] = '\0';
    errbuf_add(err, err_len,
               "this is the CPU engine library; TensorRT-LLM engines need libmultilora-trtllm.so "
               "(ffi/trtllm/README.md)");
    return MLR_UNSUPPORTED;
}
