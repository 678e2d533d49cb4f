/* result.h — the outcome of one verify or compare run: per tensor metrics and verdicts, the
 * first divergence, the NaN origin, and where everything came from. Reports render it
 * (report.h); it round-trips through JSON (schema "q3n-result", version Q3N_RESULT_SCHEMA_VERSION,
 * documented in docs/reports.md). All strings are owned by the result. */
#ifndef Q3N_RESULT_H
#define Q3N_RESULT_H

#include <stdint.h>
#include <stdio.h>

#include "compare.h"
#include "policy.h"
#include "status.h"
#include "tap.h"

#define Q3N_RESULT_SCHEMA_VERSION 1
#define Q3N_RESULT_STR 256
#define Q3N_RESULT_NOTE 512

enum q3n_verdict {
    Q3N_VERDICT_PASS = 0,
    Q3N_VERDICT_FAIL,      /* outside tolerance, NaN where finite expected, hard router flip */
    Q3N_VERDICT_EXPLAINED, /* fails only on tokens after a near-tie router flip; passes on the others */
    Q3N_VERDICT_REPORTED,  /* a top-k tap with near-tie flips only, reported not failed */
    Q3N_VERDICT_SKIPPED,   /* policy kind=skip */
    Q3N_VERDICT_ERROR      /* shape or dtype mismatch: cannot be compared (counts as a failure) */
};

const char *q3n_verdict_name(enum q3n_verdict v); /* "pass", "FAIL", "explained", "reported", "skipped", "ERROR" */
int q3n_verdict_parse(const char *s, enum q3n_verdict *v);
int q3n_verdict_is_failure(enum q3n_verdict v); /* FAIL or ERROR */

struct q3n_tensor_result {
    char name[Q3N_TAP_NAME_MAX];
    int rank;
    int64_t dims[Q3N_MAX_RANK];
    char dtype_a[16], dtype_b[16];
    enum q3n_verdict verdict;
    int layer;                  /* from "model.layers.<i>." (-1 otherwise; mtp taps -2) */
    struct q3n_tolerance tol;   /* resolved from the policy */
    double oracle_budget;       /* oracle mode: k * lowp_rel_l2 + floor; 0 in tolerance mode */
    double noise_rel_l2;        /* the golden's recorded float32-vs-float64 noise (NaN if absent) */
    struct q3n_metrics m;       /* over every element */
    int has_clean;              /* metrics on the tokens before any router flip, when some were marked */
    struct q3n_metrics clean;
    int64_t marked_from_token;  /* first token marked by a router flip upstream (-1: none) */
    double headroom_pct;        /* error as % of the allowed (100 = at the edge) */
    struct q3n_topk_stats topk; /* kind topk only */
    char note[Q3N_RESULT_NOTE]; /* one line for humans: why it failed, what explains it */
};

struct q3n_result {
    int schema_version;
    char command[16];           /* "verify" or "compare" */
    char mode[16];              /* "tolerance" or "oracle" */
    char golden_path[Q3N_RESULT_STR];    /* the reference file (b side) */
    char candidate[Q3N_RESULT_STR];      /* the file under test (compare) or "impl:<name>" (verify) */
    char impl[32];              /* implementation name (verify), "" for compare */
    char kernels[Q3N_RESULT_STR];        /* impl->describe() or the dump's "kernels" attribute */
    char dtype[16];             /* compute dtype judged (policy column) */
    char policy_path[Q3N_RESULT_STR];
    /* golden provenance (root attributes; "" when absent) */
    char golden_generator[64], golden_transformers[32], golden_torch[32], golden_dtype[16], golden_preset[32];
    int64_t golden_format_version, golden_seed;

    struct q3n_tensor_result *tensors; /* execution order */
    int64_t n_tensors, cap_tensors;
    char **only_a;              /* names only in the candidate */
    int64_t n_only_a;
    char **only_b;              /* names only in the reference */
    int64_t n_only_b;

    int64_t first_divergence;   /* index into tensors of the first failure, -1 if none */
    int64_t nan_origin;         /* index of the first tensor with a non-finite where b is finite, -1 if none */
    int64_t flip_layer_first;   /* index of the first top-k tensor with any flip, -1 if none */
};

/* Allocates an empty result (first_divergence etc. = -1). */
enum q3n_status q3n_result_create(struct q3n_result **r, struct q3n_error *err);
void q3n_result_free(struct q3n_result *r); /* accepts NULL */

/* Appends a zeroed tensor entry named `name`; *out points into r->tensors until the next append. */
enum q3n_status q3n_result_add(struct q3n_result *r, const char *name, struct q3n_tensor_result **out,
                               struct q3n_error *err);
enum q3n_status q3n_result_add_only(struct q3n_result *r, int side_a, const char *name, struct q3n_error *err);

/* Recomputes first_divergence, nan_origin and flip_layer_first from the tensors. */
void q3n_result_finalize(struct q3n_result *r);

/* Counts per verdict (array of 6 indexed by enum q3n_verdict). */
void q3n_result_counts(const struct q3n_result *r, int64_t counts[6]);

/* 0 pass, 1 numerical failure (any FAIL or ERROR tensor). */
int q3n_result_exit_code(const struct q3n_result *r);

/* Layer index of a tap name: "model.layers.12.x" -> 12; "mtp.*" -> -2; others -1. */
int q3n_tap_layer(const char *name);

/* Shape as "[4,64]" into buf. */
void q3n_shape_str(char *buf, size_t cap, int rank, const int64_t *dims);

/* JSON (libcjson). Non-finite numbers are written as the strings "nan", "inf", "-inf". */
enum q3n_status q3n_result_write_json(FILE *out, const struct q3n_result *r, struct q3n_error *err);
enum q3n_status q3n_result_save(const struct q3n_result *r, const char *path, struct q3n_error *err);
enum q3n_status q3n_result_parse_json(struct q3n_result **r, const char *text, const char *source,
                                      struct q3n_error *err);
enum q3n_status q3n_result_load(struct q3n_result **r, const char *path, struct q3n_error *err);

#endif
