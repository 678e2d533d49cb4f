/* blame.h — blame by intervention, and routing flips as events (issue 9).
 *
 * Blame: one baseline run gives the final logits' error e0 = rel_l2(logits, golden logits);
 * then, per layer i, a run whose `model.layers.{i}.out` is replaced by the golden's gives e_i.
 *     removed_i = e0 - e_i        (how much of the final error layer i and everything before
 *                                  it caused, minus what i-1 already accounts for below)
 *     own_i     = e_{i-1} - e_i   (e_{-1} = e0): the share attributable to layer i alone,
 *                                  because replacing i's output also removes all upstream error
 * Layers are ranked by own_i: the first entry is the culprit, even when every layer is inside
 * its tolerance. The replacement is done by an intervening sink (harness/intervene.h), so any
 * implementation that emits its layer outputs with q3n_tap_emit_live can be blamed.
 *
 * Routing: the baseline run records flips (top-k sets differing from the golden's, with the
 * golden's router margin); then one run with the golden's routing forced everywhere, and one
 * per flip (up to max_flip_runs) forcing only that (layer, token), give how much of the final
 * error each flip causes. When forcing all routing removes (almost) all the error, the flips
 * were near-ties amplified downstream; when it does not, a kernel is wrong. */
#ifndef Q3N_BLAME_H
#define Q3N_BLAME_H

#include <stdio.h>

#include "intervene.h"

struct q3n_blame_layer {
    int layer;
    double err_after;  /* logits rel_l2 with this layer's output replaced */
    double removed;    /* e0 - err_after */
    double own;        /* err_after(previous layer) - err_after; e0 - err_after for layer 0 */
    double share;      /* own / e0 (0 when e0 is 0) */
};

struct q3n_flip_effect {
    struct q3n_flip flip;
    double err_forced; /* logits rel_l2 with only this flip forced to the golden's routing */
    double removed;    /* e0 - err_forced; NaN when not measured (beyond max_flip_runs) */
};

struct q3n_blame_result {
    char impl[32];
    char dtype[32];
    double e0;                     /* baseline logits rel_l2 */
    int n_layers;
    struct q3n_blame_layer *layers; /* in layer order */
    int *rank;                      /* indices into layers, by own descending */
    int replaced_missing;           /* layers whose .out the run did not replace (not live / not in golden) */
    /* routing */
    int routing_checked;
    size_t n_flips;
    struct q3n_flip_effect *flips;
    double err_forced_all;          /* all routing forced (NaN when there were no flips) */
    int forced_applied;             /* routing taps the sink replaced in that run */
    int forced_by_options;          /* forced through run_options.forced_routing instead (taps not live) */
};

/* Runs the baseline, one replacement per layer (num_hidden_layers of r->model, or n_layers
 * when r->model is NULL, e.g. a fake in tests), and, when `routing` is set, the flip analysis.
 * r->golden and r->golden_logits are required. The result is freed with q3n_blame_free. */
enum q3n_status q3n_blame_run(struct q3n_blame_result *res, const struct q3n_tool_run *r, int n_layers, int routing,
                              int max_flip_runs, struct q3n_error *err);

/* Only the routing analysis (what `verify` can call when it sees flips): fills res->e0,
 * res->flips, res->err_forced_all. */
enum q3n_status q3n_routing_analyze(struct q3n_blame_result *res, const struct q3n_tool_run *r, int max_flip_runs,
                                    struct q3n_error *err);

void q3n_blame_free(struct q3n_blame_result *res); /* accepts NULL */

/* Writes the report: format "text", "md" or "html" (html and md carry an SVG bar plot of
 * each layer's share; md embeds it inline as an <svg> block GitHub renders only in html, so
 * md also gets a text bar). Q3N_ERR_USAGE for another format, Q3N_ERR_IO on a write error. */
enum q3n_status q3n_blame_write(FILE *out, const struct q3n_blame_result *res, const char *format,
                                const char *golden_name, struct q3n_error *err);

/* The SVG bar plot alone (horizontal bars, one per layer, ranked). */
void q3n_blame_svg(FILE *out, const struct q3n_blame_result *res);

/* ---- chained and isolated errors side by side (`q3n isolate`, `verify --isolated`) ----------
 * Chained: the implementation runs on its own outputs (how error grows). Isolated: every live
 * tap the golden holds is compared and then replaced by the golden's value, so each operation
 * runs on golden inputs (which module is wrong). `worst` is the tap with the largest isolated
 * error relative to its chained error's floor: the module to look at first. */
struct q3n_isolation_row {
    char name[Q3N_TAP_NAME_MAX];
    double chained;   /* rel_l2, NaN when the golden lacks the tap */
    double isolated;  /* rel_l2 on golden inputs; NaN when not compared */
    int live;         /* replaced in the isolated run (its consumers ran on golden values) */
};

struct q3n_isolation {
    size_t n;
    struct q3n_isolation_row *rows; /* execution order */
    long worst;                     /* index of the largest isolated rel_l2, -1 if none */
    double logits_chained, logits_isolated;
    size_t not_live;                /* taps emitted without a writable buffer */
};

enum q3n_status q3n_isolation_run(struct q3n_isolation *iso, const struct q3n_tool_run *r, struct q3n_error *err);
void q3n_isolation_free(struct q3n_isolation *iso); /* accepts NULL */
/* format "text", "md" or "html" (html draws both curves, log10 rel_l2 per tap, as SVG). */
enum q3n_status q3n_isolation_write(FILE *out, const struct q3n_isolation *iso, const char *format, int top,
                                    struct q3n_error *err);

#endif
