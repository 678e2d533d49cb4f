/* baseline.c — slow-drift check between two saved results; see baseline.h. */
#include "baseline.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void q3n_drift_report_free(struct q3n_drift_report *rep)
{
    if (!rep) return;
    free(rep->items);
    memset(rep, 0, sizeof *rep);
}

static const struct q3n_tensor_result *find(const struct q3n_result *r, const char *name)
{
    for (int64_t i = 0; i < r->n_tensors; i++)
        if (strcmp(r->tensors[i].name, name) == 0) return &r->tensors[i];
    return NULL;
}

enum q3n_status q3n_baseline_compare(struct q3n_drift_report *rep, const struct q3n_result *old_r,
                                     const struct q3n_result *new_r, double max_growth, double floor,
                                     struct q3n_error *err)
{
    memset(rep, 0, sizeof *rep);
    rep->max_growth = max_growth;
    rep->floor = floor;
    rep->worst = -1;
    if (!(max_growth >= 1.0))
        return q3n_error_set(err, Q3N_ERR_USAGE, "baseline: --max-growth must be >= 1 (got %g)", max_growth);
    rep->items = calloc(old_r->n_tensors ? (size_t)old_r->n_tensors : 1, sizeof *rep->items);
    if (!rep->items) return q3n_error_set(err, Q3N_ERR_NOMEM, "baseline: out of memory");
    for (int64_t i = 0; i < old_r->n_tensors; i++) {
        const struct q3n_tensor_result *o = &old_r->tensors[i];
        const struct q3n_tensor_result *n = find(new_r, o->name);
        struct q3n_drift *d = &rep->items[rep->n++];
        snprintf(d->name, sizeof d->name, "%s", o->name);
        d->old_rel_l2 = o->m.rel_l2;
        d->old_verdict = o->verdict;
        d->growth = NAN;
        if (!n) {
            d->missing = 1;
            d->fail = 1;
            rep->n_fail++;
            continue;
        }
        d->new_rel_l2 = n->m.rel_l2;
        d->new_verdict = n->verdict;
        if (o->tol.kind == Q3N_KIND_SKIP) continue;
        int regressed = !q3n_verdict_is_failure(o->verdict) && q3n_verdict_is_failure(n->verdict);
        if (o->tol.kind == Q3N_KIND_FLOAT) {
            double fl = floor;
            if (!isnan(o->noise_rel_l2) && o->noise_rel_l2 > fl) fl = o->noise_rel_l2;
            d->floor = fl;
            double den = d->old_rel_l2 > fl ? d->old_rel_l2 : fl;
            d->growth = den > 0 ? d->new_rel_l2 / den : (d->new_rel_l2 > 0 ? INFINITY : 1.0);
            if (d->new_rel_l2 <= fl) d->growth = d->growth < 1.0 ? d->growth : 1.0; /* at the noise floor */
            if (!(d->growth <= max_growth)) d->fail = 1;
            if (rep->worst < 0 || d->growth > rep->items[rep->worst].growth) rep->worst = (int)(rep->n - 1);
        }
        if (regressed) d->fail = 1;
        rep->n_fail += d->fail;
    }
    for (int64_t i = 0; i < new_r->n_tensors; i++) rep->n_new_only += find(old_r, new_r->tensors[i].name) == NULL;
    return Q3N_OK;
}

void q3n_drift_report_write(FILE *out, const struct q3n_drift_report *rep, int verbose)
{
    for (size_t i = 0; i < rep->n; i++) {
        const struct q3n_drift *d = &rep->items[i];
        if (!d->fail && !verbose) continue;
        if (d->missing) {
            fprintf(out, "  FAIL %-56s missing from the new result\n", d->name);
            continue;
        }
        fprintf(out, "  %-4s %-56s rel_l2 %10.4g -> %10.4g  growth %8.3g  (%s -> %s)\n", d->fail ? "FAIL" : "ok",
                d->name, d->old_rel_l2, d->new_rel_l2, d->growth, q3n_verdict_name(d->old_verdict),
                q3n_verdict_name(d->new_verdict));
    }
    fprintf(out, "%s: %zu of %zu tensors drifted beyond x%g (floor %g)", rep->n_fail ? "FAIL" : "PASS", rep->n_fail,
            rep->n, rep->max_growth, rep->floor);
    if (rep->worst >= 0)
        fprintf(out, "; largest growth x%.3g at %s", rep->items[rep->worst].growth, rep->items[rep->worst].name);
    if (rep->n_new_only) fprintf(out, "; %zu tensors new", rep->n_new_only);
    fputc('\n', out);
}
