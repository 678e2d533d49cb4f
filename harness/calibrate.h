/* calibrate.h — tolerances from a measured noise floor (issue 9, `q3n calibrate`).
 *
 * Evidence is a pool of per-tap error samples, each the error of one benign run against a
 * reference that should agree up to float rounding (or, for the bfloat16 column, up to bf16
 * rounding: the same runs with every live tap rounded to bf16, q3n_tool_run.emulate_bf16):
 *   - an implementation (ref, cpu at several thread counts and chunk sizes) against a float32
 *     or float64 golden from transformers;
 *   - on synthetic models (harness/synth.h, several seeds), cpu variants against the ref run
 *     (a benign change of summation order, GEMM blocking, thread count).
 * Samples are pooled per tap kind (the name with the layer index wildcarded:
 * "model.layers.*.linear_attn.core_out") and over all taps. From a pool:
 *     rel_l2 = step125(2 x Q_q(rel_l2 samples) x margin)
 *     rtol   = step125(2 x Q_q(max_rel samples) x margin)   (|b| floored at `small`)
 * where Q_q is the q-quantile (q = 1: the maximum), 2 accounts for both sides carrying noise,
 * and step125 rounds up to the next 1-2-5 value - the rule the committed default policy
 * states - so calibrate reproduces it when fed the same evidence.
 * The policy is written in harness/policy.h's format with its provenance (samples, sources,
 * machine, versions, date) as comments, and can be checked against a committed policy: a
 * committed number is "reproduced" when calibrated / margin <= committed <= calibrated x margin
 * (within the stated margin either way). */
#ifndef Q3N_CALIBRATE_H
#define Q3N_CALIBRATE_H

#include <stdio.h>

#include "intervene.h"
#include "policy.h"

struct q3n_calib_pool {
    char kind[Q3N_TAP_NAME_MAX]; /* "*" for all taps */
    size_t n, cap;
    double *rel_l2;
    double *max_rel;
};

struct q3n_calib {
    double quantile, margin, small;
    char dtype[16];               /* the policy column written and checked ("float32" by default) */
    size_t n_pools;
    struct q3n_calib_pool *pools; /* pools[0] is "*" */
    size_t runs;                  /* runs whose records were added */
    char sources[4096];           /* one line per source, for the provenance */
};

void q3n_calib_init(struct q3n_calib *c, double quantile, double margin, double small);
void q3n_calib_free(struct q3n_calib *c); /* accepts NULL */

/* Adds the float taps of one recorded run (records with in_golden and a finite rel_l2) and
 * notes `source` in the provenance. */
enum q3n_status q3n_calib_add(struct q3n_calib *c, const struct q3n_intervene *iv, const char *source,
                              struct q3n_error *err);

/* One benign variant run: r against its golden, records added under `source`. */
enum q3n_status q3n_calib_add_run(struct q3n_calib *c, const struct q3n_tool_run *r, const char *source,
                                  struct q3n_error *err);

/* One benign variant on a synthetic model: builds `preset` with `seed` (harness/synth.h), draws
 * T tokens from the same seed, records every tap of `ref` as the reference and adds the errors of
 * `variant` run with `variant_opt` (its live taps rounded to bf16 when emulate_bf16) against it. */
enum q3n_status q3n_calib_add_synth(struct q3n_calib *c, const struct q3n_impl *ref, const struct q3n_impl *variant,
                                    const struct q3n_run_options *variant_opt, int emulate_bf16, const char *preset,
                                    uint64_t seed, int64_t T, const char *source, struct q3n_error *err);

/* Derived numbers of a pool (NaN when empty). */
void q3n_calib_pool_numbers(const struct q3n_calib *c, const struct q3n_calib_pool *p, double *q_rel_l2,
                            double *q_max_rel, double *tol_rel_l2, double *tol_rtol);

/* The next 1-2-5 value >= x (x > 0). */
double q3n_step125(double x);

/* Writes the policy: header with provenance (`provenance` lines are the caller's: machine,
 * versions, date, command), the global float32 rule, per-kind rules when per_kind, the topk rule. */
void q3n_calib_write_policy(FILE *out, const struct q3n_calib *c, const char *provenance, int per_kind);

/* Compares with a committed policy at dtype c->dtype: for the global pool and (per_kind) every
 * kind, looks up the committed tolerance of a representative tap and prints calibrated,
 * committed and their ratio. *reproduced = 1 when every number is within the margin. */
enum q3n_status q3n_calib_check(FILE *out, const struct q3n_calib *c, const struct q3n_policy *committed,
                                int per_kind, int *reproduced, struct q3n_error *err);

#endif
