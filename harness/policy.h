/* policy.h — the tolerance policy: which numbers judge which tensor (docs/tolerances.md).
 *
 * A policy file is line-based text:
 *     <glob> <dtype> key=value ... [# reason]
 * <glob> matches the tensor name with fnmatch(3) ('*' crosses dots), e.g.
 * "model.layers.*.mlp.gate.topk_idx"; <dtype> is the compute dtype of the run under test
 * (float32, bfloat16, float64) or '*'. Blank lines and lines starting with '#' are comments.
 * Every rule matching a (name, dtype) applies in file order, each setting only the keys it
 * names, so a later, narrower rule overrides an earlier default. Keys:
 *   kind=float|topk|exact|skip   how the tensor is compared (default float)
 *   rtol= atol= small=           element bound atol + rtol*max(|b|, small)
 *   rel_l2=                      tensor bound on ||a-b||/||b||
 *   margin=                      topk: router-probability gap that counts as a near-tie
 *   near_tie=report|fail         topk: near-tie flips reported (not failed) or failed
 *   oracle_k= oracle_floor=      oracle mode: fail when rel_l2 > oracle_k*lowp_rel_l2 + oracle_floor
 * A float tensor must end up with rtol, atol, small and rel_l2 set, or lookup fails naming the
 * tensor: there is no silent default. */
#ifndef Q3N_POLICY_H
#define Q3N_POLICY_H

#include <stddef.h>

#include "status.h"

enum q3n_tensor_kind {
    Q3N_KIND_FLOAT = 0, /* metrics and bounds */
    Q3N_KIND_TOPK,      /* chosen expert indices, compared as sets per token */
    Q3N_KIND_EXACT,     /* integers that must match exactly */
    Q3N_KIND_SKIP       /* listed, not judged */
};

const char *q3n_tensor_kind_name(enum q3n_tensor_kind kind); /* "float", "topk", "exact", "skip" */

#define Q3N_POLICY_REASON_MAX 200

struct q3n_tolerance {
    enum q3n_tensor_kind kind;
    double rtol, atol, small, rel_l2;
    double margin;       /* topk near-tie threshold on the probability gap */
    int near_tie_report; /* 1: near-tie flips are reported, not failed */
    double oracle_k, oracle_floor;
    int line;            /* line of the last rule that matched (0: none) */
    char reason[Q3N_POLICY_REASON_MAX]; /* that rule's reason comment */
};

struct q3n_policy;

/* Parses policy text; `source` names it in messages ("default.policy:12: unknown key 'rtl'"). */
enum q3n_status q3n_policy_parse(struct q3n_policy **policy, const char *text, size_t len, const char *source,
                                 struct q3n_error *err);

/* Reads and parses a policy file. */
enum q3n_status q3n_policy_load(struct q3n_policy **policy, const char *path, struct q3n_error *err);

void q3n_policy_free(struct q3n_policy *policy); /* accepts NULL */

/* The file or source name the policy came from (lives as long as the policy). */
const char *q3n_policy_source(const struct q3n_policy *policy);

/* Number of rules (non-comment lines). */
int q3n_policy_rule_count(const struct q3n_policy *policy);

/* Resolves the tolerance for a tensor name under a compute dtype ("float32", ...).
 * Q3N_ERR_CONFIG naming the tensor, the dtype and the missing key when a float tensor is not
 * fully covered, or when no rule matches at all. */
enum q3n_status q3n_policy_lookup(const struct q3n_policy *policy, const char *name, const char *dtype,
                                  struct q3n_tolerance *tol, struct q3n_error *err);

/* Finds the default policy: harness/policy/default.policy under the current directory, else
 * beside the q3n binary's source tree (../harness/policy/default.policy and
 * ../../harness/policy/default.policy from /proc/self/exe). Writes the path into buf and returns
 * 1, or returns 0 if none exists. */
int q3n_policy_default_path(char *buf, size_t cap);

#endif
