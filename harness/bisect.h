/* bisect.h — precision bisection inside one run, and layer bisection between two dumps (issue 10).
 *
 * Precision bisection (q3n bisect-precision), the way Polygraphy's precision debugging works:
 * the operations are the live floating taps an implementation emits (one per op instance, or
 * one per op kind with layer indices wildcarded: "model.layers.*.mlp.out"). A run passes when
 * the final logits' rel_l2 against the golden is <= max. With K the set kept in float32 and
 * everything else in low precision:
 *   1. all low (K = {}) passes  -> nothing needs float32;
 *   2. all float32 (K = all) fails -> the threshold is unreachable, report that;
 *   3. otherwise K starts as everything; recursively, a group of candidates is dropped from K
 *      when the run still passes without it, else split in halves (group testing, ~2k log n
 *      runs for k necessary ops of n); a last pass drops any op that is not needed given the
 *      rest, so the set is 1-minimal: every op in it is necessary;
 *   4. for each op kept: the error with only that op in low precision, and the error when it
 *      alone leaves K (what it contributes).
 * Low precision is either emulated (r->emulate_bf16: ref/cpu taps rounded to bf16 unless they
 * match K) or the implementation's own (cuda bf16 with r->opt.fp32_patterns = K). The same
 * pattern list goes to both, so a CUDA implementation that honours fp32_patterns is bisected
 * exactly like the emulation.
 *
 * Layer bisection (q3n bisect-layers A.h5 B.h5): walks A's /tensors in execution order against
 * B; names the first tap whose rel_l2 exceeds a threshold (0: any bit differs) and ranks taps by
 * error growth = rel_l2(tap) / (the largest error already present when it ran: its layer's
 * input and every earlier tap of the layer), the places where error is created rather than
 * carried (ties, e.g. inf where the input was exact, by rel_l2). */
#ifndef Q3N_BISECT_H
#define Q3N_BISECT_H

#include <stdio.h>

#include "intervene.h"
#include "tensorfile.h"

struct q3n_prec_op {
    char name[Q3N_TAP_NAME_MAX]; /* tap name or kind pattern */
    double err_alone;   /* logits rel_l2 with only this op in low precision (NaN: not measured) */
    double err_without; /* logits rel_l2 with the final set minus this op in float32 */
};

struct q3n_prec_result {
    double max;            /* pass threshold on logits rel_l2 */
    double err_all_low;    /* everything in low precision */
    double err_all_fp32;   /* everything in float32 */
    double err_final;      /* with the kept set in float32 */
    int reachable;         /* all-float32 passes */
    int runs;              /* forward passes spent */
    size_t n_ops;          /* size of the universe */
    char (*ops)[Q3N_TAP_NAME_MAX];
    size_t n_keep;
    struct q3n_prec_op *keep;
    int by_kind;
    int force_routing;
    char *fp32_list;       /* the kept set as concrete tap names, comma-separated (--fp32 input) */
};

/* Runs the bisection. r->golden_logits is required; r->emulate_bf16 (emulation) or
 * r->opt.dtype == Q3N_COMPUTE_BF16 (the implementation's own low precision) selects the mode.
 * by_kind: one operation per kind (layer index wildcarded) instead of per tap.
 * force_routing: every run takes the golden's expert choices (*.mlp.gate.topk_idx/_weight
 * replaced, needs r->golden), so a near-tie router flip - a discontinuity that makes the error
 * jump and the bisection chase whichever op tips the tie - does not mask the precision error
 * of the ops themselves. Flips are what `q3n blame` analyses. */
enum q3n_status q3n_bisect_precision(struct q3n_prec_result *res, const struct q3n_tool_run *r, double max,
                                     int by_kind, int force_routing, struct q3n_error *err);
void q3n_prec_result_free(struct q3n_prec_result *res); /* accepts NULL */

/* Text report; md=1 for Markdown. The kept set is also printed as a pattern list usable with
 * --fp32 (one per line under "fp32 patterns:"). */
void q3n_prec_result_write(FILE *out, const struct q3n_prec_result *res, int md);

/* ---- layer bisection between two dumps ---------------------------------------------------- */

struct q3n_tap_diff {
    char name[Q3N_TAP_NAME_MAX];
    int layer;       /* -1 outside model.layers */
    double rel_l2;   /* A against B */
    double max_abs;
    int bitwise_equal;
    int discrete;    /* integer tap (top-k indices): rel_l2 is the fraction of differing elements */
    double input_rel_l2; /* the largest error present before it in its layer (its input included) */
    double growth;   /* rel_l2 / input_rel_l2 (inf when that was exact and this is not) */
};

struct q3n_layer_bisect {
    size_t n;
    struct q3n_tap_diff *taps; /* in A's execution order, only names B also has */
    long first_diverging;      /* index into taps, -1 when none exceeds the threshold */
    int *rank;                 /* indices into taps by growth, descending (diverging taps only) */
    size_t n_ranked;
    size_t only_a, only_b, shape_mismatch;
    double logits_rel_l2;      /* /logits, NaN when either lacks it */
    double threshold;
};

enum q3n_status q3n_bisect_layers(struct q3n_layer_bisect *res, struct q3n_tensorfile *a, struct q3n_tensorfile *b,
                                  double threshold, struct q3n_error *err);
void q3n_layer_bisect_free(struct q3n_layer_bisect *res); /* accepts NULL */
void q3n_layer_bisect_write(FILE *out, const struct q3n_layer_bisect *res, const char *a_name, const char *b_name,
                            int top, int md);

#endif
