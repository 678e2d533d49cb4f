/* model.h — the scalar reference: its scalar type, caches and whole-model forward.
 *
 * ref_real is float by default and double in the ref64 build (-DQ3N_REF64, `make ref64`),
 * so the reference doubles as a float64 oracle. Weights are always float (see
 * harness/weights.h); activations, accumulators and caches are ref_real. */
#ifndef Q3N_REF_MODEL_H
#define Q3N_REF_MODEL_H

#include <stdint.h>

#include "../harness/impl.h"
#include "../harness/tap.h"
#include "../harness/weights.h"

#ifdef Q3N_REF64
typedef double ref_real;
#define REF_REAL_DTYPE Q3N_DTYPE_F64
#else
typedef float ref_real;
#define REF_REAL_DTYPE Q3N_DTYPE_F32
#endif

/* Per-layer caches for token-by-token decode, shaped as transformers keeps them. */
struct ref_layer_cache {
    ref_real *conv_state;      /* linear: [conv_dim, K] last K pre-conv columns, zero-padded */
    ref_real *recurrent_state; /* linear: [NV, DK, DV] delta-rule state S */
    ref_real *key_cache;       /* full:   [max_tokens, NKV, HD] keys after norm + RoPE */
    ref_real *value_cache;     /* full:   [max_tokens, NKV, HD] */
};

struct ref_cache {
    int64_t len;               /* tokens processed so far (the next position) */
    int64_t max_tokens;
    int has_previous_state;    /* linear layers have a state to continue from */
    struct ref_layer_cache *layers; /* num_hidden_layers entries */
    struct ref_layer_cache mtp; /* the MTP layer's KV cache */
    int64_t mtp_len;           /* positions in the MTP layer's KV cache */
};

/* The reference implementation as the harness sees it (harness/impl.h). Named "ref", or
 * "ref64" in the float64 build. */
extern const struct q3n_impl ref_impl;

/* The caches of a ref session (from ref_impl.open), for tests and cache dumps; valid until the
 * session's next call. Layer i's linear-attention fields are NULL for full-attention layers
 * and vice versa. */
const struct ref_cache *ref_session_cache(const void *session);

#endif
