/* mlr_request_default: one definition of a request's defaults, built into both engine libraries. */
#include <string.h>

#include "multilora.h"

void mlr_request_default(mlr_request *r) {
    memset(r, 0, sizeof *r);
    r->max_new_tokens = 16;
    r->temperature = 1.0f;
    r->top_p = 1.0f;
    r->repetition_penalty = 1.0f;
    r->top_logprobs = -1;
    r->lora_config_width = 3;
    r->lora_scale = 1.0f;
}
