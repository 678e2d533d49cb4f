/* impl.h — the interface every implementation (ref, cpu, cuda) offers the harness.
 *
 * A session holds one implementation's caches for one sequence. forward() consumes T new
 * tokens continuing from what the session has seen (positions cache_len ... cache_len+T-1)
 * and writes their logits. Path choice mirrors transformers: T > 1 or an empty cache uses
 * the chunked delta rule and a full conv; T == 1 with a previous state uses the recurrent
 * step and the conv-state update. describe() names the kernels that actually ran. */
#ifndef Q3N_IMPL_H
#define Q3N_IMPL_H

#include <stdint.h>

#include "status.h"
#include "tap.h"
#include "weights.h"

enum q3n_compute_dtype { Q3N_COMPUTE_F32 = 0, Q3N_COMPUTE_BF16, Q3N_COMPUTE_F64 };

/* Routing forced from a golden (issue 9): for layer l, token t, the chosen experts and
 * weights. NULL entries mean "route normally". */
struct q3n_forced_routing {
    const int64_t *const *topk_idx;  /* [L] -> [T, K] */
    const float *const *topk_weight; /* [L] -> [T, K] */
    int64_t tokens;                  /* T the arrays cover */
};

struct q3n_run_options {
    enum q3n_compute_dtype dtype;    /* cuda: f32 or bf16; ref/cpu: f32 (ref64 build: f64) */
    int64_t chunk_size;              /* delta-rule chunk C (default 64) */
    int64_t max_tokens;              /* capacity of the caches (prompt + decode) */
    int n_threads;                   /* cpu: 0 = library default */
    const struct q3n_forced_routing *forced_routing; /* NULL: normal routing */
    const char *fp32_patterns;       /* cuda bf16: ops forced to fp32 (issue 10); NULL none */
    const char *test_bug;            /* test-only planted bug name; NULL in normal use */
    int pack_experts;                /* cuda bf16 on sm_90a: 1 = re-lay the routed experts at open for grouped
                                      * GEMM v5's packed tensor copies (every prefill) and read them packed in
                                      * decode (fast/cuda/moe_pack.h); 0 = checkpoint layout */
};

void q3n_run_options_default(struct q3n_run_options *opt);

struct q3n_impl {
    const char *name; /* "ref", "ref64", "cpu", "cuda" */
    enum q3n_status (*open)(void **session, const struct q3n_model *model, const struct q3n_run_options *opt,
                            struct q3n_error *err);
    /* logits: [T, V] float32, host memory, written for every new token. */
    enum q3n_status (*forward)(void *session, float *logits, const int64_t *tokens, int64_t T,
                               const struct q3n_tap_sink *taps, struct q3n_error *err);
    /* MTP head on the last forward's positions: mtp_logits [T-1, V] for the T tokens of that
     * forward when next tokens are known (tokens[1..T-1]). Q3N_ERR_UNSUPPORTED without MTP. */
    enum q3n_status (*forward_mtp)(void *session, float *mtp_logits, const int64_t *tokens, int64_t T,
                                   const struct q3n_tap_sink *taps, struct q3n_error *err);
    void (*reset)(void *session);           /* forget the sequence; caches as if fresh */
    const char *(*describe)(void *session); /* e.g. "deltanet=chunked(C=64) attn=naive moe=loop" */
    void (*close)(void *session);           /* accepts NULL */
};

/* Looks up an implementation by name; NULL if unknown or not built (cuda without nvcc). */
const struct q3n_impl *q3n_impl_find(const char *name);

/* Names of every implementation built into this binary, NULL-terminated. */
const char *const *q3n_impl_names(void);

#endif
