/* goldenrun.h — a golden HDF5 file opened for the intervention tools (blame, bisect-precision,
 * routing analysis, determinism): its checkpoint loaded, its tokens and logits read, and its
 * /tensors exposed as a struct q3n_golden_src (harness/intervene.h).
 *
 * The model is the golden's "checkpoint" attribute (relative to the file's folder), unless
 * model_dir is given. Everything lives until q3n_golden_run_close. */
#ifndef Q3N_GOLDENRUN_H
#define Q3N_GOLDENRUN_H

#include "intervene.h"
#include "tensorfile.h"
#include "weights.h"

struct q3n_golden_run {
    char path[4096];
    struct q3n_tensorfile *tf;
    struct q3n_model *model;
    int64_t *tokens;
    int64_t T;
    float *logits; /* [T,V] the golden's /logits */
    int64_t V;
    char dtype[32]; /* the golden's root "dtype" attribute ("float32" when absent) */
    struct q3n_golden_src src;
    /* the golden's routing as run_options.forced_routing (every sparse layer the golden has
     * mlp.gate.topk_idx/topk_weight for; NULL entries elsewhere), for implementations that do
     * not emit the top-k taps live (cuda) */
    struct q3n_forced_routing routing;
    int64_t *routing_idx[Q3N_MAX_LAYERS];
    float *routing_w[Q3N_MAX_LAYERS];
    int routing_layers; /* layers with golden routing */
};

enum q3n_status q3n_golden_run_open(struct q3n_golden_run **g, const char *golden_path, const char *model_dir,
                                    struct q3n_error *err);
void q3n_golden_run_close(struct q3n_golden_run *g); /* accepts NULL */

/* A golden source over any open tensor file's /tensors group (no model needed). */
void q3n_golden_src_tensorfile(struct q3n_golden_src *src, struct q3n_tensorfile *tf);

/* The set-up every tool command repeats: finds implementation `impl_name` (Q3N_ERR_USAGE naming it
 * when it is not built in), opens the golden (its checkpoint, or model_dir when non-NULL) into *g and
 * fills r from it (q3n_golden_run_tool) with n_threads and test_bug. *g is the caller's to close,
 * also on failure (it may be NULL). */
enum q3n_status q3n_golden_run_tool_open(struct q3n_golden_run **g, struct q3n_tool_run *r, const char *golden_path,
                                         const char *model_dir, const char *impl_name, int n_threads,
                                         const char *test_bug, struct q3n_error *err);

/* Fills r (impl, model, tokens, logits, golden, golden_routing) from g, with default run options. */
void q3n_golden_run_tool(struct q3n_tool_run *r, const struct q3n_golden_run *g, const struct q3n_impl *impl);

#endif
