/* fuzz_policy.c — libFuzzer target: the tolerance-policy parser (harness/policy.c).
 *
 * Any text must parse or fail with a message (fuzz_msg.h); a parsed policy is then
 * looked up for the tap names of every kind (float, top-k indices, logits) under each
 * dtype, which must return OK or a one-line error, never crash. Built by fuzz/fuzz.mk. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../harness/policy.h"
#include "fuzz_msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const names[] = {"logits", "model.layers.0.linear_attn.core_out",
                                        "model.layers.3.mlp.gate.topk_idx", "model.layers.12.self_attn.q_rope",
                                        "mtp.layers.0.mlp.out", ""};
    static const char *const dtypes[] = {"float32", "bfloat16", "float64"};
    struct q3n_policy *policy = NULL;
    struct q3n_error err;
    q3n_error_clear(&err);
    if (q3n_policy_parse(&policy, (const char *)data, size, "fuzz.policy", &err) != Q3N_OK) {
        fuzz_check_msg(&err);
        if (policy != NULL) abort(); /* a failed parse leaves nothing to free */
        return 0;
    }
    (void)q3n_policy_source(policy);
    if (q3n_policy_rule_count(policy) < 0) abort();
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        for (size_t j = 0; j < sizeof dtypes / sizeof dtypes[0]; j++) {
            struct q3n_tolerance tol;
            if (q3n_policy_lookup(policy, names[i], dtypes[j], &tol, &err) != Q3N_OK) fuzz_check_msg(&err);
        }
    q3n_policy_free(policy);
    return 0;
}
