/* fuzz_cases.h — the shape fuzzer's cases: random valid configs, delta-rule inputs, and the
 * checks run on them (issue 8). Used by `q3n fuzz` (harness/cmd_fuzz.c) and fuzz/test_*.c.
 *
 * Every case is a pure function of one 64-bit case seed: q3n_fuzz_case_draw(seed) gives the
 * same config, weights seed, tokens and split points on every machine (harness/rng.h), so a
 * failure is reproduced by `q3n fuzz --case-seed 0x...`. Case seeds of a run are derived
 * from the run seed and the case index (q3n_fuzz_case_seed).
 *
 * Library code: no printing, no globals; results come back in structs the caller prints. */
#ifndef Q3N_FUZZ_CASES_H
#define Q3N_FUZZ_CASES_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "status.h"

/* ---- model cases ------------------------------------------------------------------ */

enum q3n_fuzz_family {
    Q3N_FUZZ_SMALL = 0,  /* small random config: any head counts, ratios, dims, patterns */
    Q3N_FUZZ_ODD,        /* odd and non-power-of-two head dims (24, 60, 100, odd), odd rotary splits */
    Q3N_FUZZ_REAL_HEADS, /* the 80B-A3B head shapes (16/2 x 256, 16/32 x 128, rot 64, conv 4), few layers/experts */
    Q3N_FUZZ_FAMILY_COUNT
};

const char *q3n_fuzz_family_name(enum q3n_fuzz_family family); /* "small", "odd", "real-heads" */

struct q3n_fuzz_case {
    uint64_t seed;                 /* the case seed everything below was drawn from */
    enum q3n_fuzz_family family;
    struct q3n_config cfg;         /* valid: q3n_config_validate accepts it */
    uint64_t weight_seed;          /* for q3n_synth_model_create */
    int64_t T;                     /* tokens of the full forward, >= 1 */
    int64_t chunk_size;            /* delta-rule chunk C for this case */
    int64_t prefill;               /* P in [1, T]: P tokens in one forward, then T-P single tokens */
    int64_t split1, split2;        /* split prefill: split1 tokens, then split2, then singles; split1+split2 <= T */
};

/* Seed of case `index` of a run seeded with `run_seed` (a splitmix64 hash of the pair). */
uint64_t q3n_fuzz_case_seed(uint64_t run_seed, int64_t index);

/* Draws case `seed`. `family` < 0 picks the family from the seed (about 1 in 8 real-heads,
 * 1 in 4 odd, the rest small). The config is built field by field within the ranges of
 * docs/fuzzing.md, its derived per-layer arrays filled the way config.c derives them. */
void q3n_fuzz_case_draw(struct q3n_fuzz_case *c, uint64_t seed, int family);

/* The case's tokens [T] in [0, V), drawn from the case seed. */
void q3n_fuzz_case_tokens(const struct q3n_fuzz_case *c, int64_t *tokens);

/* One line describing the case: family, L and the layer pattern, D, heads, dims, E/K, T, C,
 * splits. Truncated to cap. */
void q3n_fuzz_case_describe(const struct q3n_fuzz_case *c, char *buf, size_t cap);

/* Sets rotary_dim = int(HD * partial_rotary_factor) exactly as transformers computes it.
 * Returns 1 if it is a usable rotary dim (even, 2 <= rot <= HD), else 0. */
int q3n_fuzz_set_rotary(struct q3n_config *cfg, double partial_rotary_factor);

/* Derives layer_is_sparse from E, decoder_sparse_step and a bit mask of mlp_only_layers
 * (bit l set: layer l is dense), as transformers' decoder layer decides. */
void q3n_fuzz_set_sparse_layers(struct q3n_config *cfg, uint64_t mlp_only_mask);

/* ---- model checks (fuzz_model.c) ---------------------------------------------------- */

struct q3n_policy;
struct q3n_model;

struct q3n_fuzz_model_options {
    const char *impl;                 /* implementation under test: "cpu", "cuda", "ref" */
    const struct q3n_policy *policy;  /* judges ref vs impl tap by tap (harness/verify.h compare engine) */
    const char *policy_path;
    const char *test_bug;             /* planted bug for the impl under test (NULL: none) */
    const char *work_dir;             /* existing folder for the case's two dumps (overwritten per case) */
    double self_rel_l2;               /* bound on rel_l2 for the self-consistency checks (0: default 3e-4) */
};

struct q3n_fuzz_model_result {
    int failed;                       /* some check failed */
    int explained;                    /* ref vs impl differed only after a near-tie router flip (not failed) */
    int near_tie;                     /* some token has a router near-tie (k-th vs (k+1)-th prob <= 1e-5 in
                                       * ref): logits after it are not compared across paths */
    int checks;                       /* checks made */
    double worst_self_rel_l2;         /* largest rel_l2 of the self-consistency checks */
    char what[512];                   /* the first failing check, one line */
};

/* Builds the case's synthetic model (harness/synth.h) into *model (caller closes). */
enum q3n_status q3n_fuzz_model_build(struct q3n_model **model, const struct q3n_fuzz_case *c, struct q3n_error *err);

/* Writes one run of `impl_name` on the case to `path` in the golden schema: every tap of the
 * full forward, /inputs/input_ids, /logits, /mtp_logits (when the config has MTP and T > 1),
 * /decode/logits (prefill of c->prefill tokens, then one at a time; attribute
 * /decode@prefill_tokens). Root "checkpoint" is "." (the golden sits in its checkpoint). */
enum q3n_status q3n_fuzz_write_dump(const char *path, const struct q3n_model *model, const struct q3n_fuzz_case *c,
                                    const char *impl_name, const char *test_bug, struct q3n_error *err);

/* Runs every model-level check on case c (docs/fuzzing.md):
 *  1. ref vs opt->impl, tap by tap, logits, MTP logits and prefill+decode logits, judged by
 *     the harness's compare engine (q3n_compare_files) under opt->policy;
 *  2. on the impl under test: prefill P + decode ≡ full; split prefill P1, P2, singles ≡ full
 *     (logits and final delta-rule states); the state after a P-token prefill ≡ the state after
 *     P single-token steps; conv state after prompts of 1..K+1 tokens; a reset session and a
 *     session reused after another sequence ≡ fresh; two sessions of different lengths run
 *     interleaved ≡ each alone with the same schedule (the batch emulation: impl.h sessions are
 *     single-sequence).
 * Router near-ties: from the first token where ref's k-th and (k+1)-th router probabilities are
 * within 1e-5 (any MoE layer), logits rows are not compared across different paths (prefill vs
 * decode, ref vs impl decode) and final states after it are skipped: the paths may pick
 * different experts there legitimately. Counted in res->near_tie / res->explained.
 * Non-OK only for errors that are not findings (out of memory, an unwritable work_dir). */
enum q3n_status q3n_fuzz_model_check(const struct q3n_fuzz_case *c, const struct q3n_fuzz_model_options *opt,
                                     struct q3n_fuzz_model_result *res, struct q3n_error *err);

/* ---- delta-rule cases ------------------------------------------------------------- */

/* How beta is drawn. */
enum q3n_fuzz_beta {
    Q3N_FUZZ_BETA_MID = 0, /* sigmoid(N(0,1)) */
    Q3N_FUZZ_BETA_NEAR0,   /* sigmoid(b), b in [-12, -6]: beta ~ 6e-6 .. 2.5e-3 */
    Q3N_FUZZ_BETA_NEAR1,   /* sigmoid(b), b in [6, 12]:  1 - beta ~ 6e-6 .. 2.5e-3 */
    Q3N_FUZZ_BETA_MIXED,   /* each token one of the above */
    Q3N_FUZZ_BETA_COUNT
};

struct q3n_fuzz_delta_case {
    uint64_t seed;
    int64_t T, NK, NV, DK, DV;
    int64_t chunks[6];      /* chunk sizes tried on this case (always includes 64) */
    int n_chunks;
    double g_min_mag;       /* per-head decay magnitudes |g| are drawn log-uniform in [g_min_mag, g_max_mag] */
    double g_max_mag;
    enum q3n_fuzz_beta beta_mode;
    int zero_gates;         /* some tokens get g = 0 (no decay) and/or beta = 0 (no write) */
    int initial_state;      /* start from a non-zero state (as a decode continuing a prefix) */
};

/* Draws a delta-rule case: T around chunk boundaries (1, 63, 64, 65, 75, 127, 128, 129, C+-1,
 * 2C+-1, random), head dims including 60 and 100, GQA ratios 1-4. */
void q3n_fuzz_delta_case_draw(struct q3n_fuzz_delta_case *c, uint64_t seed);

void q3n_fuzz_delta_case_describe(const struct q3n_fuzz_delta_case *c, char *buf, size_t cap);

/* In-distribution inputs of a delta-rule case, as double (the caller converts to ref_real):
 * q,k [T,NK,DK] L2-normalised (q also scaled by 1/sqrt(DK)), v [T,NV,DV] ~ N(0,1),
 * g [T,NV] = -exp(A_log) * softplus(a + dt_bias) (the model's path, A_log set per head from
 * the drawn decay range), beta [T,NV] = sigmoid(b), state0 [NV,DK,DV] (zeros unless
 * initial_state). Arrays are caller-allocated with the sizes above. */
void q3n_fuzz_delta_inputs(const struct q3n_fuzz_delta_case *c, double *q, double *k, double *v, double *g,
                           double *beta, double *state0);

/* The delta rule in double, recurrent form, value head h reading key head h/(NV/NK): the
 * oracle the float forms are judged against. o [T,NV,DV]; state [NV,DK,DV] in/out. */
void q3n_fuzz_delta_oracle(double *o, double *state, const double *q, const double *k, const double *v,
                           const double *g, const double *beta, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                           int64_t DV);

/* The conditioning of the chunked form's triangular solve: over every chunk of C tokens and
 * every value head, the infinity norm of (I + A)^-1 with A_ij = beta_i (k_i . k_j)
 * exp(G_i - G_j), i > j (the matrix the chunked form inverts), computed in double. 1 for
 * C = 1; in distribution it stays near 1-10; tolerances are multiplied by it. */
double q3n_fuzz_delta_conditioning(const double *k, const double *g, const double *beta, int64_t T, int64_t NK,
                                   int64_t NV, int64_t DK, int64_t C);

/* The three forms under test, so a test can plant a broken one (fuzz/test_fuzz_delta.c).
 * Signatures are ref/ops.h's with ref_real passed as void (float, or double in ref64). */
struct q3n_fuzz_delta_forms {
    void (*recurrent)(void *o, void *state, const void *q, const void *k, const void *v, const void *g,
                      const void *beta, int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV);
    void (*chunked)(void *o, void *state, const void *q, const void *k, const void *v, const void *g,
                    const void *beta, void *scratch, int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV,
                    int64_t C);
    void (*naive)(void *o, void *state, const void *q, const void *k, const void *v, const void *g,
                  const void *beta, void *scratch, int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV);
};

/* The reference's forms (ref_delta_rule_recurrent / _chunked / _naive). */
void q3n_fuzz_delta_ref_forms(struct q3n_fuzz_delta_forms *forms);

/* Size in bytes of ref_real in this build (4, or 8 in ref64). */
size_t q3n_fuzz_real_size(void);

struct q3n_fuzz_delta_result {
    int failed;              /* 1: some comparison was outside its tolerance (or non-finite) */
    int checks;              /* comparisons made */
    double cond;             /* q3n_fuzz_delta_conditioning at the largest chunk */
    double worst_ratio;      /* max over comparisons of rel_l2 / tolerance (fail-closed: > 1 fails) */
    char worst[256];         /* the comparison with the worst ratio: "chunked(C=65) o vs oracle: rel_l2=... tol=..." */
};

/* Runs case c through `forms` and checks, against the double oracle, with tolerance
 * base * cond (base 2e-5 float, 1e-11 double; docs/fuzzing.md):
 *  - recurrent over all T; recurrent one token per call (the decode path); naive; chunked
 *    at every chunk size of the case: outputs o and the final state;
 *  - state after a prefix: chunked on tokens [0, p) then chunked on [p, T) from that state
 *    gives the full run's o and final state, and the state at p equals the oracle's there.
 * Scratch is filled with NaN before each call and every buffer has guard values after its
 * end, checked after each call (a write past the end is a failure naming the buffer). */
enum q3n_status q3n_fuzz_delta_run(const struct q3n_fuzz_delta_case *c, const struct q3n_fuzz_delta_forms *forms,
                                   struct q3n_fuzz_delta_result *res, struct q3n_error *err);

#endif
