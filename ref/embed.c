/* embed.c — token embedding lookup. */
#include "ops.h"

/* out[t,:] = embed[tokens[t],:]   out [T,D], embed [V,D] (nn.Embedding). Tokens are range-checked
 * by the caller (the model forward reports a bad id with its position). Exact: a copy. */
void ref_embed_forward(ref_real *out, const int64_t *tokens, const float *embed, int64_t T, int64_t D)
{
    Q3N_REQUIRE(T >= 0 && D > 0);
    for (int64_t t = 0; t < T; t++) {
        Q3N_REQUIRE(tokens[t] >= 0);
        const float *row = embed + tokens[t] * D;
        for (int64_t d = 0; d < D; d++) out[t * D + d] = (ref_real)row[d];
    }
}
