/* What the engines need of a matcher beyond the ABI (multilora.h, "Output constraints"). Internal. */
#ifndef MLR_CONSTRAINT_MATCHER_H
#define MLR_CONSTRAINT_MATCHER_H

#include <stdint.h>

#include "multilora.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The size of the vocabulary the matcher's grammar was built over (checked against the model's). */
int32_t constraint_matcher_vocab_size(const mlr_matcher *matcher);

#ifdef __cplusplus
}
#endif

#endif /* MLR_CONSTRAINT_MATCHER_H */
