/* bisect.c — precision bisection and layer bisection; see bisect.h. */
#include "bisect.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- precision bisection ------------------------------------------------------------- */

struct prec_ctx {
    struct q3n_tool_run run; /* a copy whose fp32 patterns we rewrite */
    struct q3n_prec_result *res;
    float *logits;
    char *patterns;          /* joined pattern list */
    size_t patterns_cap;
    unsigned char *keep;     /* per op: 1 = float32 */
    char (*taps)[Q3N_TAP_NAME_MAX]; /* every live floating tap */
    size_t *tap_op;          /* the op (index into res->ops) each tap belongs to */
    size_t n_taps;
};

void q3n_prec_result_free(struct q3n_prec_result *res)
{
    if (!res) return;
    free(res->ops);
    free(res->keep);
    free(res->fp32_list);
    memset(res, 0, sizeof *res);
}

/* "model.layers.12.mlp.out" -> "model.layers.*.mlp.out" */
static void kind_of(char *out, size_t cap, const char *name)
{
    static const char pre[] = "model.layers.";
    size_t n = strlen(pre);
    if (strncmp(name, pre, n) != 0 || name[n] < '0' || name[n] > '9') {
        snprintf(out, cap, "%s", name);
        return;
    }
    const char *p = name + n;
    while (*p >= '0' && *p <= '9') p++;
    snprintf(out, cap, "%s*%s", pre, p);
}

/* Runs with the ops flagged in `flags` (1 = float32) and returns the logits error in *e. */
static enum q3n_status run_with(struct prec_ctx *c, const unsigned char *flags, double *e, struct q3n_error *err)
{
    size_t len = 0;
    c->patterns[0] = '\0';
    for (size_t i = 0; i < c->n_taps; i++) {
        if (!flags[c->tap_op[i]]) continue;
        size_t n = strlen(c->taps[i]);
        if (len + n + 2 > c->patterns_cap) {
            size_t ncap = (c->patterns_cap + n + 2) * 2;
            char *np = realloc(c->patterns, ncap);
            if (!np) return q3n_error_set(err, Q3N_ERR_NOMEM, "bisect-precision: out of memory for patterns");
            c->patterns = np;
            c->patterns_cap = ncap;
        }
        memcpy(c->patterns + len, c->taps[i], n);
        len += n;
        c->patterns[len++] = ',';
        c->patterns[len] = '\0';
    }
    /* nothing kept: an empty list, which matches nothing */
    c->run.fp32 = c->patterns;
    c->run.opt.fp32_patterns = c->patterns;
    c->res->runs++;
    struct q3n_intervene_opts o = {.force_routing = c->res->force_routing};
    return q3n_tool_forward(&c->run, &o, NULL, 0, c->logits, e, err);
}

static int passes(double e, double max)
{
    return e <= max; /* fail-closed: NaN fails */
}

/* Drops from c->keep the members of cand[0..n) that are not needed (group testing). */
static enum q3n_status reduce(struct prec_ctx *c, const size_t *cand, size_t n, struct q3n_error *err)
{
    if (n == 0) return Q3N_OK;
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) kept += c->keep[cand[i]];
    if (kept == 0) return Q3N_OK;
    for (size_t i = 0; i < n; i++) c->keep[cand[i]] = 0;
    double e;
    enum q3n_status st = run_with(c, c->keep, &e, err);
    if (st != Q3N_OK) return st;
    if (passes(e, c->res->max)) return Q3N_OK; /* the whole group can go low */
    for (size_t i = 0; i < n; i++) c->keep[cand[i]] = 1;
    if (n == 1) return Q3N_OK;
    size_t h = n / 2;
    st = reduce(c, cand, h, err);
    if (st != Q3N_OK) return st;
    return reduce(c, cand + h, n - h, err);
}

static enum q3n_status discover(struct prec_ctx *c, int by_kind, struct q3n_error *err)
{
    struct q3n_intervene iv;
    struct q3n_intervene_opts o = {.record = 1, .ask_live = 1}; /* device impls emit live only when asked */
    struct q3n_tool_run plain = c->run;
    plain.golden = NULL;
    plain.emulate_bf16 = 0;
    plain.weak_op = NULL;
    plain.opt.fp32_patterns = NULL;
    enum q3n_status st = q3n_tool_forward(&plain, &o, &iv, 0, c->logits, NULL, err);
    c->res->runs++;
    if (st != Q3N_OK) goto done;
    size_t cap = iv.n_records ? iv.n_records : 1;
    c->res->ops = calloc(cap, sizeof *c->res->ops);
    c->taps = calloc(cap, sizeof *c->taps);
    c->tap_op = calloc(cap, sizeof *c->tap_op);
    if (!c->res->ops || !c->taps || !c->tap_op) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "bisect-precision: out of memory for %zu ops", iv.n_records);
        goto done;
    }
    /* ops are groups of concrete tap names: a kind pattern such as model.layers.*.out would
     * also match model.layers.3.mlp.out ('*' crosses dots), so runs use the members */
    for (size_t i = 0; i < iv.n_records; i++) {
        const struct q3n_tap_record *t = &iv.records[i];
        if (!t->live || (t->dtype != Q3N_DTYPE_F32 && t->dtype != Q3N_DTYPE_F64)) continue;
        char name[Q3N_TAP_NAME_MAX];
        if (by_kind) kind_of(name, sizeof name, t->name);
        else snprintf(name, sizeof name, "%s", t->name);
        size_t op = 0;
        while (op < c->res->n_ops && strcmp(c->res->ops[op], name) != 0) op++;
        if (op == c->res->n_ops) snprintf(c->res->ops[c->res->n_ops++], Q3N_TAP_NAME_MAX, "%s", name);
        int dup = 0;
        for (size_t j = 0; j < c->n_taps && !dup; j++) dup = strcmp(c->taps[j], t->name) == 0;
        if (dup) continue;
        snprintf(c->taps[c->n_taps], Q3N_TAP_NAME_MAX, "%s", t->name);
        c->tap_op[c->n_taps++] = op;
    }
    if (c->res->n_ops == 0)
        st = q3n_error_set(err, Q3N_ERR_UNSUPPORTED,
                           "bisect-precision: %s emits no live floating taps (q3n_tap_emit_live), nothing to bisect",
                           c->run.impl->name);
done:
    q3n_intervene_free(&iv);
    return st;
}

enum q3n_status q3n_bisect_precision(struct q3n_prec_result *res, const struct q3n_tool_run *r, double max,
                                     int by_kind, int force_routing, struct q3n_error *err)
{
    memset(res, 0, sizeof *res);
    res->max = max;
    res->by_kind = by_kind;
    res->force_routing = force_routing;
    if (force_routing && !r->golden)
        return q3n_error_set(err, Q3N_ERR_USAGE, "bisect-precision: forced routing needs the golden's taps");
    res->err_all_low = res->err_all_fp32 = res->err_final = NAN;
    if (!r->golden_logits) return q3n_error_set(err, Q3N_ERR_USAGE, "bisect-precision: golden logits required");
    struct prec_ctx c;
    memset(&c, 0, sizeof c);
    c.run = *r;
    c.res = res;
    enum q3n_status st;
    size_t *cand = NULL;
    unsigned char *flags = NULL;
    size_t nl;
    if (!q3n_mul_size(&nl, (size_t)r->T, (size_t)r->V) || !(c.logits = malloc(nl * sizeof(float)))) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "bisect-precision: out of memory for logits");
        goto done;
    }
    c.patterns_cap = 1024;
    c.patterns = malloc(c.patterns_cap);
    if (!c.patterns) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "bisect-precision: out of memory");
        goto done;
    }
    st = discover(&c, by_kind, err);
    if (st != Q3N_OK) goto done;
    size_t n = res->n_ops;
    c.keep = calloc(n, 1);
    flags = calloc(n, 1);
    cand = calloc(n, sizeof *cand);
    if (!c.keep || !flags || !cand) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "bisect-precision: out of memory");
        goto done;
    }
    st = run_with(&c, c.keep, &res->err_all_low, err);
    if (st != Q3N_OK) goto done;
    memset(c.keep, 1, n);
    st = run_with(&c, c.keep, &res->err_all_fp32, err);
    if (st != Q3N_OK) goto done;
    res->reachable = passes(res->err_all_fp32, max);
    if (passes(res->err_all_low, max)) {
        memset(c.keep, 0, n);
    } else if (res->reachable) {
        for (size_t i = 0; i < n; i++) cand[i] = i;
        st = reduce(&c, cand, n, err);
        if (st != Q3N_OK) goto done;
        /* 1-minimality: drop any op not needed given the others */
        for (size_t i = 0; i < n; i++) {
            if (!c.keep[i]) continue;
            c.keep[i] = 0;
            double e;
            st = run_with(&c, c.keep, &e, err);
            if (st != Q3N_OK) goto done;
            if (!passes(e, max)) c.keep[i] = 1;
        }
    } else {
        memset(c.keep, 1, n); /* unreachable: report with everything kept */
    }
    st = run_with(&c, c.keep, &res->err_final, err);
    if (st != Q3N_OK) goto done;
    res->fp32_list = strdup(res->reachable ? c.patterns : "");
    if (!res->fp32_list) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "bisect-precision: out of memory");
        goto done;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += c.keep[i];
    res->keep = calloc(k ? k : 1, sizeof *res->keep);
    if (!res->keep) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "bisect-precision: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n && res->reachable; i++) {
        if (!c.keep[i]) continue;
        struct q3n_prec_op *op = &res->keep[res->n_keep++];
        snprintf(op->name, sizeof op->name, "%s", res->ops[i]);
        c.keep[i] = 0;
        st = run_with(&c, c.keep, &op->err_without, err);
        c.keep[i] = 1;
        if (st != Q3N_OK) goto done;
        memset(flags, 1, n);
        flags[i] = 0;
        st = run_with(&c, flags, &op->err_alone, err);
        if (st != Q3N_OK) goto done;
    }
done:
    free(c.logits);
    free(c.patterns);
    free(c.keep);
    free(c.taps);
    free(c.tap_op);
    free(flags);
    free(cand);
    if (st != Q3N_OK) q3n_prec_result_free(res);
    return st;
}

void q3n_prec_result_write(FILE *out, const struct q3n_prec_result *res, int md)
{
    const char *h = md ? "## " : "";
    fprintf(out, "%sprecision bisection: pass when final logits rel_l2 <= %.4g (%zu %s, %d runs)\n", h, res->max,
            res->n_ops, res->by_kind ? "op kinds" : "ops", res->runs);
    if (md) fputc('\n', out);
    if (res->force_routing) fprintf(out, "%srouting forced to the golden's in every run\n", md ? "- " : "  ");
    fprintf(out, "%sall low precision: %.4g (%s)\n", md ? "- " : "  ", res->err_all_low,
            res->err_all_low <= res->max ? "pass" : "FAIL");
    fprintf(out, "%sall float32:       %.4g (%s)\n", md ? "- " : "  ", res->err_all_fp32,
            res->err_all_fp32 <= res->max ? "pass" : "FAIL");
    if (!res->reachable) {
        fprintf(out, "%sthe threshold is not reached even with every op in float32: the error is not a "
                     "precision problem (or --max is too tight)\n",
                md ? "\n" : "  ");
        return;
    }
    if (res->n_keep == 0) {
        fprintf(out, "%sno operation needs float32: the all-low-precision run passes\n", md ? "\n" : "  ");
        return;
    }
    fprintf(out, "%ssmallest set kept in float32: %zu op(s); with it: %.4g (pass)\n", md ? "\n" : "  ", res->n_keep,
            res->err_final);
    if (md) fprintf(out, "\n| op kept in float32 | error with only it low | error with it back in low |\n|---|---|---|\n");
    else fprintf(out, "  %-56s %16s %16s\n", "op", "only_it_low", "set_minus_it");
    for (size_t i = 0; i < res->n_keep; i++) {
        const struct q3n_prec_op *op = &res->keep[i];
        if (md) fprintf(out, "| `%s` | %.4g | %.4g |\n", op->name, op->err_alone, op->err_without);
        else fprintf(out, "  %-56s %16.4g %16.4g\n", op->name, op->err_alone, op->err_without);
    }
    fprintf(out, "%sfp32 patterns:\n", md ? "\n" : "");
    if (md) fprintf(out, "```\n");
    for (const char *p = res->fp32_list; p && *p;) {
        const char *q = strchr(p, ',');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n) fprintf(out, "%.*s\n", (int)n, p);
        p += n + (q ? 1 : 0);
    }
    if (md) fprintf(out, "```\n");
}

/* ---- layer bisection ------------------------------------------------------------------ */

struct walk {
    struct q3n_layer_bisect *res;
    struct q3n_tensorfile *a, *b;
    size_t cap;
    double *xa, *xb;
    size_t buf_elems;
    struct q3n_error *err;
};

static enum q3n_status ensure(struct walk *w, int64_t n)
{
    if ((size_t)n <= w->buf_elems) return Q3N_OK;
    double *na = realloc(w->xa, (size_t)n * sizeof(double));
    if (!na) return q3n_error_set(w->err, Q3N_ERR_NOMEM, "bisect-layers: out of memory");
    w->xa = na;
    double *nb = realloc(w->xb, (size_t)n * sizeof(double));
    if (!nb) return q3n_error_set(w->err, Q3N_ERR_NOMEM, "bisect-layers: out of memory");
    w->xb = nb;
    w->buf_elems = (size_t)n;
    return Q3N_OK;
}

static enum q3n_status visit(void *user, const char *name, struct q3n_error *err)
{
    struct walk *w = user;
    struct q3n_layer_bisect *res = w->res;
    char ds[Q3N_TAP_NAME_MAX + 16];
    snprintf(ds, sizeof ds, "/tensors/%s", name);
    if (!q3n_tensorfile_exists(w->b, ds)) {
        res->only_a++;
        return Q3N_OK;
    }
    struct q3n_tensor_info ia, ib;
    enum q3n_status st = q3n_tensorfile_info(w->a, ds, &ia, err);
    if (st != Q3N_OK) return st;
    st = q3n_tensorfile_info(w->b, ds, &ib, err);
    if (st != Q3N_OK) return st;
    if (ia.numel != ib.numel) {
        res->shape_mismatch++;
        return Q3N_OK;
    }
    enum q3n_dtype as = ia.dtype == Q3N_DTYPE_I64 ? Q3N_DTYPE_I64 : Q3N_DTYPE_F64;
    st = ensure(w, ia.numel);
    if (st != Q3N_OK) return st;
    st = q3n_tensorfile_read(w->a, ds, as, w->xa, ia.numel, NULL, err);
    if (st != Q3N_OK) return st;
    st = q3n_tensorfile_read(w->b, ds, as, w->xb, ia.numel, NULL, err);
    if (st != Q3N_OK) return st;
    if (res->n == w->cap) {
        size_t ncap = w->cap ? w->cap * 2 : 256;
        struct q3n_tap_diff *nt = realloc(res->taps, ncap * sizeof *nt);
        if (!nt) return q3n_error_set(err, Q3N_ERR_NOMEM, "bisect-layers: out of memory");
        res->taps = nt;
        w->cap = ncap;
    }
    struct q3n_tap_diff *d = &res->taps[res->n++];
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    d->layer = q3n_tap_layer_index(name);
    d->discrete = as == Q3N_DTYPE_I64;
    double num = 0, den = 0, mx = 0;
    int differ = 0;
    for (int64_t i = 0; i < ia.numel; i++) {
        double x, y;
        if (as == Q3N_DTYPE_I64) {
            x = (double)((int64_t *)w->xa)[i];
            y = (double)((int64_t *)w->xb)[i];
        } else {
            x = w->xa[i];
            y = w->xb[i];
        }
        double e = x - y;
        differ |= memcmp(&x, &y, sizeof x) != 0;
        num += e * e;
        den += y * y;
        if (isnan(e)) mx = NAN;
        else if (!isnan(mx) && fabs(e) > mx) mx = fabs(e);
    }
    d->bitwise_equal = !differ;
    d->max_abs = mx;
    d->rel_l2 = isnan(num) || isnan(den) ? NAN : den == 0 ? (num == 0 ? 0 : INFINITY) : sqrt(num / den);
    if (!differ) d->rel_l2 = 0;
    return Q3N_OK;
}

static enum q3n_status count_only_b(void *user, const char *name, struct q3n_error *err)
{
    (void)err;
    struct walk *w = user;
    char ds[Q3N_TAP_NAME_MAX + 16];
    snprintf(ds, sizeof ds, "/tensors/%s", name);
    if (!q3n_tensorfile_exists(w->a, ds)) w->res->only_b++;
    return Q3N_OK;
}

void q3n_layer_bisect_free(struct q3n_layer_bisect *res)
{
    if (!res) return;
    free(res->taps);
    free(res->rank);
    memset(res, 0, sizeof *res);
}

static int diverges(const struct q3n_tap_diff *d, double threshold)
{
    if (threshold <= 0) return !d->bitwise_equal;
    return !(d->rel_l2 <= threshold);
}

/* a before b: larger growth; among equal growth (inf where the layer received an exact input),
 * larger rel_l2 */
static int grows_more(const struct q3n_tap_diff *a, const struct q3n_tap_diff *b)
{
    if (a->growth != b->growth) return a->growth > b->growth;
    return a->rel_l2 > b->rel_l2;
}

enum q3n_status q3n_bisect_layers(struct q3n_layer_bisect *res, struct q3n_tensorfile *a, struct q3n_tensorfile *b,
                                  double threshold, struct q3n_error *err)
{
    memset(res, 0, sizeof *res);
    res->threshold = threshold;
    res->first_diverging = -1;
    res->logits_rel_l2 = NAN;
    struct walk w = {.res = res, .a = a, .b = b, .err = err};
    enum q3n_status st = q3n_tensorfile_list(a, "/tensors", visit, &w, err);
    if (st == Q3N_OK) st = q3n_tensorfile_list(b, "/tensors", count_only_b, &w, err);
    if (st != Q3N_OK) goto done;
    if (q3n_tensorfile_exists(a, "/logits") && q3n_tensorfile_exists(b, "/logits")) {
        struct q3n_tensor_info ia, ib;
        if (q3n_tensorfile_info(a, "/logits", &ia, err) == Q3N_OK &&
            q3n_tensorfile_info(b, "/logits", &ib, err) == Q3N_OK && ia.numel == ib.numel) {
            st = ensure(&w, ia.numel);
            if (st == Q3N_OK) st = q3n_tensorfile_read(a, "/logits", Q3N_DTYPE_F64, w.xa, ia.numel, NULL, err);
            if (st == Q3N_OK) st = q3n_tensorfile_read(b, "/logits", Q3N_DTYPE_F64, w.xb, ia.numel, NULL, err);
            if (st != Q3N_OK) goto done;
            double num = 0, den = 0;
            for (int64_t i = 0; i < ia.numel; i++) {
                num += (w.xa[i] - w.xb[i]) * (w.xa[i] - w.xb[i]);
                den += w.xb[i] * w.xb[i];
            }
            res->logits_rel_l2 = den > 0 ? sqrt(num / den) : (num == 0 ? 0 : INFINITY);
        }
    }
    /* the error a tap received: the largest error already present when it ran - its layer's
     * input (model.layers.{i}.in, else the previous layer's output) and every earlier tap of
     * the same layer; outside layers, the previous tap's error. Growth > 1 means this op made
     * the error larger than anything it could have inherited. */
    double carried = 0.0, seen = 0.0;
    int cur_layer = -2;
    for (size_t i = 0; i < res->n; i++) {
        struct q3n_tap_diff *d = &res->taps[i];
        const char *pt = strrchr(d->name, '.');
        int is_layer_io = d->layer >= 0 && pt && strchr(d->name + 13, '.') == pt;
        if (d->layer != cur_layer) {
            cur_layer = d->layer;
            seen = carried;
        }
        d->input_rel_l2 = seen;
        d->growth = seen > 0 ? d->rel_l2 / seen : (d->rel_l2 > 0 ? INFINITY : 0);
        if (d->discrete) d->growth = NAN; /* a flip count is not an error that grows */
        else if (!isnan(d->rel_l2) && d->rel_l2 > seen) seen = d->rel_l2;
        if (d->layer < 0 || (is_layer_io && !strcmp(pt, ".out"))) carried = d->rel_l2;
        if (res->first_diverging < 0 && diverges(d, threshold)) res->first_diverging = (long)i;
    }
    res->rank = calloc(res->n ? res->n : 1, sizeof *res->rank);
    if (!res->rank) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "bisect-layers: out of memory");
        goto done;
    }
    for (size_t i = 0; i < res->n; i++) {
        if (!diverges(&res->taps[i], threshold) || res->taps[i].discrete) continue;
        size_t j = res->n_ranked++;
        res->rank[j] = (int)i;
        while (j > 0 && grows_more(&res->taps[res->rank[j]], &res->taps[res->rank[j - 1]])) {
            int t = res->rank[j];
            res->rank[j] = res->rank[j - 1];
            res->rank[j - 1] = t;
            j--;
        }
    }
done:
    free(w.xa);
    free(w.xb);
    if (st != Q3N_OK) q3n_layer_bisect_free(res);
    return st;
}

void q3n_layer_bisect_write(FILE *out, const struct q3n_layer_bisect *res, const char *a_name, const char *b_name,
                            int top, int md)
{
    fprintf(out, "%sbisect-layers %s vs %s: %zu common taps (%zu only in A, %zu only in B, %zu shape mismatches)\n",
            md ? "## " : "", a_name, b_name, res->n, res->only_a, res->only_b, res->shape_mismatch);
    if (md) fputc('\n', out);
    if (res->first_diverging < 0) {
        fprintf(out, "no tap diverges (%s); logits rel_l2 %.4g\n",
                res->threshold > 0 ? "every rel_l2 within the threshold" : "bitwise equal", res->logits_rel_l2);
        return;
    }
    const struct q3n_tap_diff *f = &res->taps[res->first_diverging];
    fprintf(out, "first diverging tap (%s): %s  rel_l2 %.4g  max_abs %.4g\n",
            res->threshold > 0 ? "rel_l2 above the threshold" : "first bit difference", f->name, f->rel_l2,
            f->max_abs);
    fprintf(out, "final logits rel_l2: %.4g\n", res->logits_rel_l2);
    fprintf(out, "%swhere error grows most (rel_l2 / the largest error already present in its layer):\n", md ? "\n" : "");
    if (md) fprintf(out, "\n| rank | tap | rel_l2 | received | growth |\n|---|---|---|---|---|\n");
    for (size_t k = 0; k < res->n_ranked && (int)k < top; k++) {
        const struct q3n_tap_diff *d = &res->taps[res->rank[k]];
        if (md) fprintf(out, "| %zu | `%s` | %.4g | %.4g | %.4g |\n", k + 1, d->name, d->rel_l2, d->input_rel_l2, d->growth);
        else fprintf(out, "  %3zu %-56s rel_l2 %10.4g  received %10.4g  growth %10.4g\n", k + 1, d->name, d->rel_l2,
                     d->input_rel_l2, d->growth);
    }
}
