/* calibrate.c — tolerances from a measured noise floor; see calibrate.h. */
#include "calibrate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "synth.h"

void q3n_calib_init(struct q3n_calib *c, double quantile, double margin, double small)
{
    memset(c, 0, sizeof *c);
    c->quantile = quantile;
    c->margin = margin;
    c->small = small;
    snprintf(c->dtype, sizeof c->dtype, "float32");
}

void q3n_calib_free(struct q3n_calib *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->n_pools; i++) {
        free(c->pools[i].rel_l2);
        free(c->pools[i].max_rel);
    }
    free(c->pools);
    memset(c, 0, sizeof *c);
}

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

static struct q3n_calib_pool *pool_for(struct q3n_calib *c, const char *kind, struct q3n_error *err)
{
    for (size_t i = 0; i < c->n_pools; i++)
        if (strcmp(c->pools[i].kind, kind) == 0) return &c->pools[i];
    struct q3n_calib_pool *np = realloc(c->pools, (c->n_pools + 1) * sizeof *np);
    if (!np) {
        q3n_error_set(err, Q3N_ERR_NOMEM, "calibrate: out of memory");
        return NULL;
    }
    c->pools = np;
    struct q3n_calib_pool *p = &c->pools[c->n_pools++];
    memset(p, 0, sizeof *p);
    snprintf(p->kind, sizeof p->kind, "%s", kind);
    return p;
}

static enum q3n_status pool_add(struct q3n_calib_pool *p, double rel_l2, double max_rel, struct q3n_error *err)
{
    if (p->n == p->cap) {
        size_t ncap = p->cap ? p->cap * 2 : 64;
        double *a = realloc(p->rel_l2, ncap * sizeof *a);
        if (!a) return q3n_error_set(err, Q3N_ERR_NOMEM, "calibrate: out of memory");
        p->rel_l2 = a;
        double *b = realloc(p->max_rel, ncap * sizeof *b);
        if (!b) return q3n_error_set(err, Q3N_ERR_NOMEM, "calibrate: out of memory");
        p->max_rel = b;
        p->cap = ncap;
    }
    p->rel_l2[p->n] = rel_l2;
    p->max_rel[p->n] = max_rel;
    p->n++;
    return Q3N_OK;
}

enum q3n_status q3n_calib_add(struct q3n_calib *c, const struct q3n_intervene *iv, const char *source,
                              struct q3n_error *err)
{
    if (c->n_pools == 0 && !pool_for(c, "*", err)) return err->status;
    for (size_t i = 0; i < iv->n_records; i++) {
        const struct q3n_tap_record *r = &iv->records[i];
        if (!r->in_golden || (r->dtype != Q3N_DTYPE_F32 && r->dtype != Q3N_DTYPE_F64)) continue;
        if (!isfinite(r->rel_l2) || !isfinite(r->max_rel)) continue; /* a broken run is not noise */
        char kind[Q3N_TAP_NAME_MAX];
        kind_of(kind, sizeof kind, r->name);
        struct q3n_calib_pool *p = pool_for(c, kind, err);
        if (!p) return err->status;
        enum q3n_status st = pool_add(p, r->rel_l2, r->max_rel, err);
        if (st == Q3N_OK) st = pool_add(&c->pools[0], r->rel_l2, r->max_rel, err);
        if (st != Q3N_OK) return st;
    }
    c->runs++;
    size_t len = strlen(c->sources);
    if (len + strlen(source) + 2 < sizeof c->sources)
        snprintf(c->sources + len, sizeof c->sources - len, "%s\n", source);
    return Q3N_OK;
}

enum q3n_status q3n_calib_add_run(struct q3n_calib *c, const struct q3n_tool_run *r, const char *source,
                                  struct q3n_error *err)
{
    size_t nl;
    float *logits = NULL;
    if (!q3n_mul_size(&nl, (size_t)r->T, (size_t)r->V) || !q3n_mul_size(&nl, nl, sizeof *logits) ||
        !(logits = malloc(nl ? nl : 1)))
        return q3n_error_set(err, Q3N_ERR_NOMEM, "calibrate: out of memory for logits (T=%lld V=%lld)",
                             (long long)r->T, (long long)r->V);
    struct q3n_intervene iv;
    /* low-precision runs take the reference's routing: a near-tie flip is a discrete event (the
     * policy's topk rule judges it), not a rounding error to size a tolerance on */
    struct q3n_intervene_opts o = {.record = 1, .rel_small = c->small, .force_routing = r->emulate_bf16};
    enum q3n_status st = q3n_tool_forward(r, &o, &iv, 0, logits, NULL, err);
    if (st == Q3N_OK) st = q3n_calib_add(c, &iv, source, err);
    q3n_intervene_free(&iv);
    free(logits);
    return st;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double quantile(const double *v, size_t n, double q)
{
    if (n == 0) return NAN;
    double *s = malloc(n * sizeof *s);
    if (!s) return NAN;
    memcpy(s, v, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_double);
    /* the smallest sample with at least a fraction q of the samples <= it */
    size_t k = (size_t)ceil(q * (double)n);
    if (k < 1) k = 1;
    if (k > n) k = n;
    double x = s[k - 1];
    free(s);
    return x;
}

double q3n_step125(double x)
{
    if (!(x > 0)) return x;
    double e = floor(log10(x));
    double base = pow(10.0, e);
    const double steps[] = {1, 2, 5, 10};
    for (int i = 0; i < 4; i++)
        if (steps[i] * base >= x * (1 - 1e-12)) return steps[i] * base;
    return 10 * base;
}

void q3n_calib_pool_numbers(const struct q3n_calib *c, const struct q3n_calib_pool *p, double *q_rel_l2,
                            double *q_max_rel, double *tol_rel_l2, double *tol_rtol)
{
    *q_rel_l2 = quantile(p->rel_l2, p->n, c->quantile);
    *q_max_rel = quantile(p->max_rel, p->n, c->quantile);
    /* a kind that was bit-exact in every sample still gets a float32 ulp-level bound */
    double fl = 1.2e-7;
    *tol_rel_l2 = q3n_step125(2 * (*q_rel_l2 > fl ? *q_rel_l2 : fl) * c->margin);
    *tol_rtol = q3n_step125(2 * (*q_max_rel > fl ? *q_max_rel : fl) * c->margin);
}

void q3n_calib_write_policy(FILE *out, const struct q3n_calib *c, const char *provenance, int per_kind)
{
    fprintf(out, "# q3n calibrated tolerance policy (%s) - written by `q3n calibrate`; format: harness/policy.h\n",
            c->dtype);
    fprintf(out, "# rule: tol = next 1-2-5 value >= 2 x Q%g(samples) x margin %g; elementwise |b| floored at small %g\n",
            c->quantile, c->margin, c->small);
    if (provenance) {
        const char *p = provenance;
        while (*p) {
            const char *e = strchr(p, '\n');
            size_t n = e ? (size_t)(e - p) : strlen(p);
            fprintf(out, "# %.*s\n", (int)n, p);
            p += n + (e ? 1 : 0);
        }
    }
    size_t total = c->n_pools ? c->pools[0].n : 0;
    fprintf(out, "# samples: %zu tap errors from %zu runs; sources:\n", total, c->runs);
    const char *p = c->sources;
    while (*p) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        fprintf(out, "#   %.*s\n", (int)n, p);
        p += n + (e ? 1 : 0);
    }
    if (c->n_pools == 0) return;
    double qr, qm, tr, tt;
    q3n_calib_pool_numbers(c, &c->pools[0], &qr, &qm, &tr, &tt);
    fprintf(out, "*  %s  rtol=%.0e atol=0 small=%g rel_l2=%.0e  # all taps: Q%g rel_l2 %.3g, max_rel %.3g over %zu samples\n",
            c->dtype, tt, c->small, tr, c->quantile, qr, qm, c->pools[0].n);
    fprintf(out, "*.mlp.gate.topk_idx  *  kind=topk margin=2e-4 near_tie=report  # not calibrated here (router margins)\n");
    if (!per_kind) return;
    for (size_t i = 1; i < c->n_pools; i++) {
        const struct q3n_calib_pool *k = &c->pools[i];
        q3n_calib_pool_numbers(c, k, &qr, &qm, &tr, &tt);
        fprintf(out, "%-56s %s  rtol=%.0e rel_l2=%.0e  # Q%g rel_l2 %.3g, max_rel %.3g, %zu samples\n", k->kind,
                c->dtype, tt, tr, c->quantile, qr, qm, k->n);
    }
}

static int within(double calibrated, double committed, double margin)
{
    return committed >= calibrated / margin * (1 - 1e-9) && committed <= calibrated * margin * (1 + 1e-9);
}

enum q3n_status q3n_calib_check(FILE *out, const struct q3n_calib *c, const struct q3n_policy *committed,
                                int per_kind, int *reproduced, struct q3n_error *err)
{
    *reproduced = 1;
    fprintf(out, "check against %s (%s), within a factor %g either way:\n", q3n_policy_source(committed), c->dtype,
            c->margin);
    fprintf(out, "  %-50s %9s %11s %11s %11s  %s\n", "kind", "samples", "measured", "calibrated", "committed",
            "rel_l2 / rtol");
    for (size_t i = 0; i < c->n_pools && (per_kind || i == 0); i++) {
        const struct q3n_calib_pool *k = &c->pools[i];
        double qr, qm, tr, tt;
        q3n_calib_pool_numbers(c, k, &qr, &qm, &tr, &tt);
        /* a representative tap of the kind: the kind with layer 0 ("*" -> a generic name) */
        char name[Q3N_TAP_NAME_MAX];
        const char *star = strchr(k->kind, '*');
        if (i == 0) snprintf(name, sizeof name, "model.layers.0.linear_attn.out");
        else if (star) snprintf(name, sizeof name, "%.*s0%s", (int)(star - k->kind), k->kind, star + 1);
        else snprintf(name, sizeof name, "%s", k->kind);
        struct q3n_tolerance tol;
        enum q3n_status st = q3n_policy_lookup(committed, name, c->dtype, &tol, err);
        if (st != Q3N_OK) return st;
        if (tol.kind != Q3N_KIND_FLOAT) {
            fprintf(out, "  %-50s %9zu  committed kind=%s (not a float bound): not compared\n", k->kind, k->n,
                    q3n_tensor_kind_name(tol.kind));
            continue;
        }
        int ok_r = within(tr, tol.rel_l2, c->margin), ok_t = within(tt, tol.rtol, c->margin);
        if (!ok_r || !ok_t) *reproduced = 0;
        fprintf(out, "  %-50s %9zu %11.3g %11.3g %11.3g  rel_l2 %s\n", i == 0 ? "* (all taps)" : k->kind, k->n, qr, tr,
                tol.rel_l2, ok_r ? "ok" : "OUTSIDE");
        fprintf(out, "  %-50s %9s %11.3g %11.3g %11.3g  rtol   %s\n", "", "", qm, tt, tol.rtol, ok_t ? "ok" : "OUTSIDE");
    }
    fprintf(out, "%s\n", *reproduced ? "REPRODUCED: every committed number is within the margin of the calibrated one"
                                     : "NOT REPRODUCED: see OUTSIDE above");
    return Q3N_OK;
}

/* ---- synthetic models: an in-memory reference recorded from one run ---------------------- */

struct mem_tap {
    char name[Q3N_TAP_NAME_MAX];
    enum q3n_dtype dtype;
    int64_t numel;
    void *data;
};

struct mem_golden {
    struct mem_tap *taps;
    size_t n, cap;
};

static enum q3n_status mem_record(void *user, const struct q3n_tap *tap, struct q3n_error *err)
{
    struct mem_golden *g = user;
    if (tap->dtype != Q3N_DTYPE_F32 && tap->dtype != Q3N_DTYPE_F64 && tap->dtype != Q3N_DTYPE_I64) return Q3N_OK;
    if (g->n == g->cap) {
        size_t ncap = g->cap ? g->cap * 2 : 128;
        struct mem_tap *nt = realloc(g->taps, ncap * sizeof *nt);
        if (!nt) return q3n_error_set(err, Q3N_ERR_NOMEM, "calibrate: out of memory");
        g->taps = nt;
        g->cap = ncap;
    }
    struct mem_tap *t = &g->taps[g->n];
    snprintf(t->name, sizeof t->name, "%s", tap->name);
    t->dtype = tap->dtype;
    t->numel = q3n_tap_numel(tap);
    size_t bytes = (size_t)t->numel * q3n_dtype_size(tap->dtype);
    t->data = malloc(bytes ? bytes : 1);
    if (!t->data) return q3n_error_set(err, Q3N_ERR_NOMEM, "calibrate: out of memory for %s", tap->name);
    memcpy(t->data, tap->data, bytes);
    g->n++;
    return Q3N_OK;
}

static const struct mem_tap *mem_find(const struct mem_golden *g, const char *name)
{
    for (size_t i = 0; i < g->n; i++)
        if (strcmp(g->taps[i].name, name) == 0) return &g->taps[i];
    return NULL;
}

static int64_t mem_numel(void *user, const char *name)
{
    const struct mem_tap *t = mem_find(user, name);
    return t ? t->numel : -1;
}

static enum q3n_status mem_read(void *user, const char *name, enum q3n_dtype as, void *out, int64_t numel,
                                struct q3n_error *err)
{
    const struct mem_tap *t = mem_find(user, name);
    if (!t || t->numel != numel) return q3n_error_set(err, Q3N_ERR_FORMAT, "calibrate: no reference tap %s", name);
    for (int64_t i = 0; i < numel; i++) {
        double v = t->dtype == Q3N_DTYPE_I64   ? (double)((const int64_t *)t->data)[i]
                   : t->dtype == Q3N_DTYPE_F64 ? ((const double *)t->data)[i]
                                               : (double)((const float *)t->data)[i];
        if (as == Q3N_DTYPE_F32) ((float *)out)[i] = (float)v;
        else if (as == Q3N_DTYPE_F64) ((double *)out)[i] = v;
        else ((int64_t *)out)[i] = (int64_t)v;
    }
    return Q3N_OK;
}

enum q3n_status q3n_calib_add_synth(struct q3n_calib *c, const struct q3n_impl *ref, const struct q3n_impl *variant,
                                    const struct q3n_run_options *variant_opt, int emulate_bf16, const char *preset,
                                    uint64_t seed, int64_t T, const char *source, struct q3n_error *err)
{
    struct q3n_config cfg;
    struct q3n_model *model = NULL;
    struct mem_golden g;
    memset(&g, 0, sizeof g);
    int64_t *tokens = NULL;
    float *logits = NULL;
    void *session = NULL;
    enum q3n_status st = q3n_synth_config(&cfg, preset, err);
    if (st == Q3N_OK) st = q3n_synth_model_create(&model, &cfg, seed, err);
    if (st != Q3N_OK) goto done;
    size_t nl;
    tokens = malloc((size_t)T * sizeof *tokens);
    if (q3n_mul_size(&nl, (size_t)T, (size_t)cfg.vocab_size) && q3n_mul_size(&nl, nl, sizeof *logits))
        logits = malloc(nl);
    if (!tokens || !logits) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "calibrate: out of memory");
        goto done;
    }
    struct q3n_rng rng;
    q3n_rng_seed(&rng, seed ^ UINT64_C(0x9e3779b97f4a7c15));
    for (int64_t t = 0; t < T; t++) tokens[t] = q3n_rng_int(&rng, 0, cfg.vocab_size - 1);
    struct q3n_run_options ro;
    q3n_run_options_default(&ro);
    if (ro.max_tokens < T) ro.max_tokens = T;
    struct q3n_tap_sink rec = {.fn = mem_record, .user = &g};
    st = ref->open(&session, model, &ro, err);
    if (st == Q3N_OK) st = ref->forward(session, logits, tokens, T, &rec, err);
    if (session) ref->close(session);
    if (st != Q3N_OK) goto done;
    struct q3n_golden_src src = {.user = &g, .numel = mem_numel, .read = mem_read};
    struct q3n_tool_run r;
    memset(&r, 0, sizeof r);
    r.impl = variant;
    r.model = model;
    r.opt = *variant_opt;
    if (r.opt.max_tokens < T) r.opt.max_tokens = T;
    r.tokens = tokens;
    r.T = T;
    r.V = cfg.vocab_size;
    r.golden = &src;
    r.emulate_bf16 = emulate_bf16;
    st = q3n_calib_add_run(c, &r, source, err);
done:
    for (size_t i = 0; i < g.n; i++) free(g.taps[i].data);
    free(g.taps);
    free(tokens);
    free(logits);
    q3n_model_close(model);
    return st;
}
