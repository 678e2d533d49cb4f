/* compare.h — tensor comparison metrics, streaming, in double (docs/tolerances.md defines each).
 *
 * `a` is the candidate (the implementation or port under test), `b` the reference (the golden).
 * Elements arrive in blocks through q3n_cmp_feed, in any number of calls, so a tensor of many
 * GB is compared with constant memory: the accumulator holds sums, maxima and a fixed-size
 * histogram of ULP distances, never the data.
 *
 * Per element, NaN/Inf first: a pair where either side is not finite is counted (nan_a, inf_a,
 * nan_b, inf_b) and skipped by every metric; it is `nonfinite_bad` unless both sides hold the
 * same non-finite value (NaN with NaN, +Inf with +Inf). Finite pairs then feed the metrics, with
 * err = |a - b| and the element bound
 *     bound = atol + rtol * max(|b|, small)
 * so elements with |b| below the small-value threshold are judged by absolute error (relative
 * error near zero means nothing). An element is outside when !(err <= bound) (fail-closed). */
#ifndef Q3N_COMPARE_H
#define Q3N_COMPARE_H

#include <stdint.h>

#include "policy.h"
#include "tap.h"

/* ULP histogram: bin 0 holds distance 0, then Q3N_ULP_SUB bins per octave (equal widths, read
 * from the top mantissa bits) from 2^Q3N_ULP_MIN_EXP up to 2^(Q3N_ULP_MIN_EXP + Q3N_ULP_OCTAVES),
 * then one overflow bin. p99 is the upper edge of the bin holding the 99th percentile (at most
 * 1/8 = 12.5 % above the true value), capped at max. */
#define Q3N_ULP_SUB 8
#define Q3N_ULP_MIN_EXP (-16)
#define Q3N_ULP_OCTAVES 80
#define Q3N_ULP_BINS (2 + Q3N_ULP_SUB * Q3N_ULP_OCTAVES)

enum q3n_ulp_kind {
    Q3N_ULP_NONE = 0,
    Q3N_ULP_F32,  /* distance between the float32 roundings of a and b */
    Q3N_ULP_BF16  /* the float32 distance / 2^16: units in the last place of bfloat16 */
};

const char *q3n_ulp_kind_name(enum q3n_ulp_kind kind); /* "none", "float32", "bfloat16" */

struct q3n_metrics {
    int64_t numel;          /* elements seen (finite or not) */
    int64_t finite_pairs;   /* elements where both sides are finite */
    int64_t nan_a, inf_a, nan_b, inf_b;
    int64_t nonfinite_bad;  /* non-finite pairs that do not agree (a NaN where b is finite, ...) */
    int64_t first_nonfinite_bad_index; /* flat index, -1 if none */

    double max_abs;         /* max |a - b| */
    int64_t max_abs_index;  /* flat index of max_abs, -1 if no finite pair */
    double a_at_max, b_at_max;
    double max_rel;         /* max |a - b| / max(|b|, small) */
    int64_t max_rel_index;
    double mean_abs;        /* mean |a - b| */
    double rmse;            /* sqrt(mean (a - b)^2) */
    double rel_l2;          /* ||a - b|| / ||b||  (0 if both zero, +inf if only b is zero) */
    double cosine;          /* <a,b> / (||a|| ||b||) (1 if both zero, 0 if one is) */
    double norm_b;          /* ||b|| */

    enum q3n_ulp_kind ulp_kind;
    double ulp_max, ulp_p99; /* NaN when ulp_kind is NONE */

    int64_t outside;        /* finite elements with !(err <= bound) */
    double frac_outside;    /* outside / finite_pairs (0 if none) */
    double bound_ratio;     /* max over elements of err / bound: the elementwise use of tolerance */
    int64_t bound_ratio_index;
    double min_rtol;        /* smallest rtol that passes every element at the policy's atol and small */
};

/* Streaming accumulator; plain data, no allocation. */
struct q3n_cmp_acc {
    double rtol, atol, small;
    enum q3n_ulp_kind ulp_kind;
    struct q3n_metrics m;
    double sum_abs, sum_sq_err, sum_sq_a, sum_sq_b, sum_ab;
    int64_t hist[Q3N_ULP_BINS];
};

/* Starts a comparison with the element bound of `tol` (rtol, atol, small). */
void q3n_cmp_init(struct q3n_cmp_acc *acc, const struct q3n_tolerance *tol, enum q3n_ulp_kind ulp_kind);

/* Feeds n element pairs whose flat indices in the tensor are index0 ... index0+n-1. */
void q3n_cmp_feed(struct q3n_cmp_acc *acc, const double *a, const double *b, int64_t n, int64_t index0);

/* Final metrics (the accumulator stays usable). */
void q3n_cmp_finish(const struct q3n_cmp_acc *acc, struct q3n_metrics *m);

/* One-shot comparison of two in-memory arrays. */
void q3n_compare_f64(struct q3n_metrics *m, const double *a, const double *b, int64_t n,
                     const struct q3n_tolerance *tol, enum q3n_ulp_kind ulp_kind);

/* ULP distance between two finite values (see enum q3n_ulp_kind; -0 equals +0). */
double q3n_ulp_distance(double a, double b, enum q3n_ulp_kind kind);

/* Verdict of one float tensor under its tolerance.
 *  tolerance mode: fail when nonfinite_bad > 0, any element is outside, or !(rel_l2 <= tol->rel_l2).
 *  oracle mode (budget > 0 given): fail when nonfinite_bad > 0 or !(rel_l2 <= budget); the
 *  elementwise bound is reported but not judged.
 * headroom_pct: the error as a percentage of what the tolerance allows (max of the elementwise
 * use and rel_l2 / allowed); 100 is the edge, NaN/inf when non-finite. Returns 1 for pass. */
int q3n_judge_metrics(const struct q3n_metrics *m, const struct q3n_tolerance *tol, double oracle_budget,
                      double *headroom_pct);

/* Decodes a flat row-major index into coordinates (coords has rank entries). */
void q3n_index_decode(int64_t flat, int rank, const int64_t *dims, int64_t *coords);

/* Converts n elements of a tap buffer (F32, F64, BF16, F16, I64) to double. */
void q3n_to_f64(double *out, const void *data, enum q3n_dtype dtype, int64_t n);

/* --- discrete taps: top-k expert choices, compared as sets per token --------------------
 * For token t with chosen sets A_t (candidate) and B_t (reference): the token has flipped when
 * the sets differ; `swapped` counts experts of B_t missing from A_t. Its router margin is
 *     margin_t = max_{e in B_t \ A_t} p[e] - min_{e in A_t \ B_t} p[e]
 * with p the reference's router probabilities (for one swap at the boundary this is the gap
 * between the k-th and (k+1)-th probability). A flip with margin_t <= the policy's margin is a
 * near-tie flip; others are hard flips. Without probabilities every flip is hard. */
struct q3n_topk_stats {
    int64_t tokens, k;
    int64_t flipped_tokens;     /* tokens whose sets differ */
    int64_t swapped;            /* experts swapped, summed over tokens */
    int64_t near_tie_tokens;    /* flipped tokens at a near-tie */
    int64_t hard_tokens;        /* flipped tokens with a margin above the threshold */
    int64_t first_flip_token;   /* -1 if none */
    int64_t first_hard_token;   /* -1 if none */
    double max_near_tie_margin; /* largest margin among near-tie flips (NaN if none) */
    double min_hard_margin;     /* smallest margin among hard flips (NaN if none) */
    int64_t invalid;            /* indices outside [0, E) on either side */
};

void q3n_topk_init(struct q3n_topk_stats *s, int64_t k);

/* Compares nrows tokens starting at token row0. a_idx, b_idx: [nrows, K]; b_probs: [nrows, E]
 * reference router probabilities or NULL. flipped (optional, nrows bytes) receives 1 for tokens
 * whose sets differ. */
void q3n_topk_feed(struct q3n_topk_stats *s, const int64_t *a_idx, const int64_t *b_idx, const double *b_probs,
                   int64_t row0, int64_t nrows, int64_t E, double margin, uint8_t *flipped);

/* Aligns the routing weights of one token with the same expert set: out_a[j] is the candidate's
 * weight for expert b_idx[j]. Returns 0 if the sets differ. */
int q3n_topk_align_weights(double *out_a, const int64_t *a_idx, const double *a_w, const int64_t *b_idx,
                           int64_t K);

#endif
