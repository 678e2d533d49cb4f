/* verify.h — the streaming comparison engine behind `q3n verify` and `q3n compare`.
 *
 * Tensors are judged one at a time in execution order, never two whole dumps in memory:
 *  - verify runs an implementation on a golden's checkpoint and inputs with a tap sink that
 *    compares each tap, while the implementation emits it, against /tensors/<tap> of the golden;
 *    then /logits, /mtp_logits (impl->forward_mtp) and /decode/logits (prefill of
 *    /decode@prefill_tokens tokens, then one token at a time) when the golden has them.
 *  - compare walks A's /tensors in creation (= execution) order and reads B's counterpart;
 *    then /logits, /mtp_logits, /decode/logits when both have them.
 * The reference side (the golden, or B) is read in blocks of rows (q3n_tensorfile_read_rows),
 * so memory stays flat however large the tensors are. Names present on one side only are
 * listed in the result, not fatal.
 *
 * Router flips: a top-k tap (policy kind=topk) is compared as sets per token; the first token
 * with a flip marks every later tensor's rows from that token on (and whole non-per-token
 * tensors such as final states), so errors there are classified "explained" when the tensor
 * passes on the unmarked tokens. mlp.gate.topk_weight is compared only on tokens whose sets
 * agree, expert by expert.
 *
 * Oracle mode judges against a float64 reference (/oracle/<tap> of a bf16 golden, or the
 * tensors of a float64 golden): a tensor fails only when
 *     rel_l2 > oracle_k * lowp_rel_l2 + oracle_floor
 * with lowp_rel_l2 (else noise_rel_l2) read from the golden's attributes on /tensors/<tap> (for
 * /logits: its own lowp_rel_l2, else the root's audit_f32_vs_f64_logits_rel_l2). */
#ifndef Q3N_VERIFY_H
#define Q3N_VERIFY_H

#include <stddef.h>

#include "impl.h"
#include "policy.h"
#include "result.h"
#include "status.h"

struct q3n_verify_options {
    const char *impl;              /* "ref", "cpu", "cuda", ... */
    enum q3n_compute_dtype dtype;  /* run dtype; also the policy's dtype column */
    const struct q3n_policy *policy;
    const char *policy_path;       /* for the report header */
    int oracle;                    /* 1: oracle mode */
    int isolated;                  /* 1: every live tap is judged, then replaced by the golden's, so each
                                      operation runs on golden inputs (harness/intervene.h) */
    int skip_decode, skip_mtp;     /* 1: do not check /decode/logits or /mtp_logits */
    const char *test_bug;          /* test-only planted bug passed to the implementation (impl.h) */
};

/* The golden's checkpoint folder: its root "checkpoint" attribute, relative to the file's folder. */
enum q3n_status q3n_verify_checkpoint(char *buf, size_t cap, const char *golden_path, struct q3n_error *err);

/* Runs opt->impl on `model` (normally q3n_model_open of q3n_verify_checkpoint) with the golden's
 * inputs and judges every tap. Returns non-OK only for usage/input errors (bad file, no such
 * impl, policy not covering a tensor); numerical failures are verdicts inside *result. */
enum q3n_status q3n_verify_model(struct q3n_result **result, const char *golden_path, const struct q3n_model *model,
                                 const struct q3n_verify_options *opt, struct q3n_error *err);

struct q3n_compare_options {
    const struct q3n_policy *policy;
    const char *policy_path;
    const char *dtype;             /* policy column; NULL: A's root "dtype" attribute, else float32 */
    int oracle;
};

/* Compares candidate dump A against reference B (the golden). */
enum q3n_status q3n_compare_files(struct q3n_result **result, const char *a_path, const char *b_path,
                                  const struct q3n_compare_options *opt, struct q3n_error *err);

/* The policy's dtype column for a compute dtype: "float32", "bfloat16", "float64". */
const char *q3n_compute_dtype_name(enum q3n_compute_dtype dtype);

#endif
