/* verify.c — the streaming engine of `q3n verify` and `q3n compare`; see verify.h. */
#include "verify.h"

#include "goldenrun.h"
#include "intervene.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compare.h"
#include "tensorfile.h"

#define BLOCK_ELEMS ((int64_t)1 << 20) /* elements per block: 8 MiB per side in double */

/* The candidate side of one tensor: a tap buffer in memory or a dataset of file A. */
struct cand {
    const void *data;              /* memory: row-major, dtype below */
    struct q3n_tensorfile *tf;     /* file: read by rows */
    const char *dataset;
    enum q3n_dtype dtype;
    int rank;
    int64_t dims[Q3N_MAX_RANK];
};

struct engine {
    struct q3n_result *r;
    const struct q3n_policy *policy;
    const char *dtype;             /* policy column */
    int run_bf16;                  /* ULPs in bf16 units */
    int oracle;
    struct q3n_tensorfile *ref;
    int ref_has_oracle;            /* /oracle group present */
    int ref_is_f64;                /* golden dtype float64 */
    int64_t T;                     /* tokens (-1 unknown) */
    int64_t flip_from;             /* first token marked by a router flip (-1: none) */
    char flip_at[Q3N_TAP_NAME_MAX + 32];
    /* the last top-k tap: both sides' choices, for topk_weight */
    char topk_prefix[Q3N_TAP_NAME_MAX];
    int64_t *topk_a, *topk_b;
    uint8_t *topk_flipped;
    int64_t topk_rows, topk_k;
    /* block buffers */
    double *a, *b, *p;
    int64_t *ia, *ib;
    int64_t cap, pcap;
    int64_t icap;
};

const char *q3n_compute_dtype_name(enum q3n_compute_dtype dtype)
{
    switch (dtype) {
    case Q3N_COMPUTE_F32: return "float32";
    case Q3N_COMPUTE_BF16: return "bfloat16";
    case Q3N_COMPUTE_F64: return "float64";
    }
    return "float32";
}

static void engine_free(struct engine *e)
{
    free(e->topk_a);
    free(e->topk_b);
    free(e->topk_flipped);
    free(e->a);
    free(e->b);
    free(e->p);
    free(e->ia);
    free(e->ib);
}

static enum q3n_status ensure(struct engine *e, int64_t n, int64_t pn, struct q3n_error *err)
{
    if (n > e->cap) {
        free(e->a);
        free(e->b);
        e->a = malloc((size_t)n * sizeof *e->a);
        e->b = malloc((size_t)n * sizeof *e->b);
        e->cap = (e->a && e->b) ? n : 0;
        if (!e->cap) return q3n_error_set(err, Q3N_ERR_NOMEM, "compare: out of memory for %lld elements", (long long)n);
    }
    if (n > e->icap) {
        free(e->ia);
        free(e->ib);
        e->ia = malloc((size_t)n * sizeof *e->ia);
        e->ib = malloc((size_t)n * sizeof *e->ib);
        e->icap = (e->ia && e->ib) ? n : 0;
        if (!e->icap) return q3n_error_set(err, Q3N_ERR_NOMEM, "compare: out of memory for %lld elements", (long long)n);
    }
    if (pn > e->pcap) {
        free(e->p);
        e->p = malloc((size_t)pn * sizeof *e->p);
        e->pcap = e->p ? pn : 0;
        if (!e->p) return q3n_error_set(err, Q3N_ERR_NOMEM, "compare: out of memory for %lld elements", (long long)pn);
    }
    return Q3N_OK;
}

static int64_t numel_of(int rank, const int64_t *dims)
{
    int64_t n = 1;
    for (int i = 0; i < rank; i++) n *= dims[i];
    return n;
}

/* Reads rows [row0, row0+nrows) of the candidate as double (or int64 when ints != NULL). */
static enum q3n_status cand_rows(const struct cand *c, int64_t row0, int64_t nrows, int64_t rowlen, double *out,
                                 int64_t *ints, struct q3n_error *err)
{
    int64_t n = nrows * rowlen;
    if (c->tf) {
        if (c->rank == 0) {
            if (ints) return q3n_tensorfile_read(c->tf, c->dataset, Q3N_DTYPE_I64, ints, 1, NULL, err);
            return q3n_tensorfile_read(c->tf, c->dataset, Q3N_DTYPE_F64, out, 1, NULL, err);
        }
        if (ints) return q3n_tensorfile_read_rows(c->tf, c->dataset, Q3N_DTYPE_I64, row0, nrows, ints, n, err);
        return q3n_tensorfile_read_rows(c->tf, c->dataset, Q3N_DTYPE_F64, row0, nrows, out, n, err);
    }
    size_t esz = q3n_dtype_size(c->dtype);
    const char *base = (const char *)c->data + (size_t)(row0 * rowlen) * esz;
    if (ints) {
        if (c->dtype == Q3N_DTYPE_I64) {
            memcpy(ints, base, (size_t)n * sizeof *ints);
        } else {
            for (int64_t i = 0; i < n; i++) {
                double v;
                q3n_to_f64(&v, base + (size_t)i * esz, c->dtype, 1);
                ints[i] = isfinite(v) ? (int64_t)v : -1;
            }
        }
        return Q3N_OK;
    }
    q3n_to_f64(out, base, c->dtype, n);
    return Q3N_OK;
}

static enum q3n_status ref_rows(struct engine *e, const char *dataset, int rank, int64_t row0, int64_t nrows,
                                int64_t rowlen, double *out, int64_t *ints, struct q3n_error *err)
{
    int64_t n = nrows * rowlen;
    enum q3n_dtype as = ints ? Q3N_DTYPE_I64 : Q3N_DTYPE_F64;
    void *dst = ints ? (void *)ints : (void *)out;
    if (rank == 0) return q3n_tensorfile_read(e->ref, dataset, as, dst, 1, NULL, err);
    return q3n_tensorfile_read_rows(e->ref, dataset, as, row0, nrows, dst, n, err);
}

static int is_per_token(const struct engine *e, const char *name, int rank, const int64_t *dims)
{
    if (e->T <= 0 || rank < 1) return 0;
    if (strstr(name, "state") || strstr(name, "cache")) return 0;
    return dims[0] == e->T || dims[0] == e->T - 1;
}

static enum q3n_ulp_kind ulp_for(const struct engine *e, enum q3n_dtype cand)
{
    if (e->run_bf16 || cand == Q3N_DTYPE_BF16) return Q3N_ULP_BF16;
    if (cand == Q3N_DTYPE_F32) return Q3N_ULP_F32;
    return Q3N_ULP_NONE;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* The dataset carrying a tensor's audit attributes (noise_rel_l2, lowp_rel_l2): /tensors/<name>
 * for taps (also in oracle mode, where the data comes from /oracle/<name>), else the dataset. */
static void attr_object(struct q3n_tensorfile *ref, char *buf, size_t cap, const char *name, const char *ref_ds)
{
    if (strncmp(ref_ds, "/oracle/", 8) != 0) {
        snprintf(buf, cap, "%s", ref_ds);
        return;
    }
    snprintf(buf, cap, "/tensors/%s", name);
    if (!q3n_tensorfile_exists(ref, buf)) snprintf(buf, cap, "%s", ref_ds + 7); /* /oracle/logits -> /logits */
}

/* 1 if a tensor judged so far (the last entry is the one being judged) failed. */
static int failed_before(const struct q3n_result *r)
{
    for (int64_t i = 0; i + 1 < r->n_tensors; i++)
        if (q3n_verdict_is_failure(r->tensors[i].verdict)) return 1;
    return 0;
}

/* ---- float tensors ----------------------------------------------------------------------- */

static enum q3n_status judge_float(struct engine *e, struct q3n_tensor_result *t, const struct cand *c,
                                   const char *ref_ds, struct q3n_error *err)
{
    enum q3n_status st;
    int64_t rows = t->rank ? t->dims[0] : 1;
    int64_t numel = numel_of(t->rank, t->dims);
    int64_t rowlen = rows ? numel / rows : 0;
    int64_t block = rowlen > 0 ? BLOCK_ELEMS / rowlen : 1;
    if (block < 1) block = 1;
    if (block > rows) block = rows;
    int weights = ends_with(t->name, "mlp.gate.topk_weight");
    int aligned = 0;
    if (weights) {
        size_t plen = strlen(t->name) - strlen("topk_weight");
        aligned = e->topk_a && strlen(e->topk_prefix) == plen && strncmp(e->topk_prefix, t->name, plen) == 0 &&
                  t->rank == 2 && t->dims[0] == e->topk_rows && t->dims[1] == e->topk_k;
    }
    int per_token = is_per_token(e, t->name, t->rank, t->dims);
    int marked_all = e->flip_from >= 0 && !per_token;
    int64_t mark_row = e->flip_from >= 0 && per_token ? e->flip_from : -1;

    st = ensure(e, block * (rowlen > 0 ? rowlen : 1), 0, err);
    if (st != Q3N_OK) return st;
    struct q3n_cmp_acc full, clean;
    enum q3n_ulp_kind uk = ulp_for(e, c->dtype);
    q3n_cmp_init(&full, &t->tol, uk);
    q3n_cmp_init(&clean, &t->tol, uk);
    int64_t skipped_tokens = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += block) {
        int64_t nr = rows - r0 < block ? rows - r0 : block;
        st = cand_rows(c, r0, nr, rowlen, e->a, NULL, err);
        if (st != Q3N_OK) return st;
        st = ref_rows(e, ref_ds, t->rank, r0, nr, rowlen, e->b, NULL, err);
        if (st != Q3N_OK) return st;
        for (int64_t r = 0; r < nr; r++) {
            int64_t row = r0 + r;
            double *ar = e->a + r * rowlen, *br = e->b + r * rowlen;
            if (aligned) {
                if (e->topk_flipped[row]) {
                    skipped_tokens++;
                    continue;
                }
                double tmp[64];
                int64_t K = e->topk_k;
                if (K > 64 || !q3n_topk_align_weights(tmp, e->topk_a + row * K, ar, e->topk_b + row * K, K)) {
                    skipped_tokens++;
                    continue;
                }
                memcpy(ar, tmp, (size_t)K * sizeof *ar);
            }
            q3n_cmp_feed(&full, ar, br, rowlen, row * rowlen);
            int marked = marked_all || (mark_row >= 0 && row >= mark_row);
            if (!marked) q3n_cmp_feed(&clean, ar, br, rowlen, row * rowlen);
        }
    }
    q3n_cmp_finish(&full, &t->m);
    double budget = 0;
    if (e->oracle) {
        double lowp = NAN;
        char obj[Q3N_TAP_NAME_MAX + 16];
        struct q3n_error e2;
        attr_object(e->ref, obj, sizeof obj, t->name, ref_ds);
        if (q3n_tensorfile_get_attr_f64(e->ref, obj, "lowp_rel_l2", &lowp, &e2) != Q3N_OK &&
            q3n_tensorfile_get_attr_f64(e->ref, obj, "noise_rel_l2", &lowp, &e2) != Q3N_OK &&
            !(strcmp(t->name, "logits") == 0 &&
              q3n_tensorfile_get_attr_f64(e->ref, "/", "audit_f32_vs_f64_logits_rel_l2", &lowp, &e2) == Q3N_OK)) {
            t->verdict = Q3N_VERDICT_ERROR;
            snprintf(t->note, sizeof t->note, "oracle mode: the golden records no lowp_rel_l2 or noise_rel_l2 for %s",
                     t->name);
            return Q3N_OK;
        }
        if (isnan(t->tol.oracle_k) || isnan(t->tol.oracle_floor))
            return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: no rule sets oracle_k and oracle_floor for tensor %s",
                                 q3n_policy_source(e->policy), t->name);
        budget = t->tol.oracle_k * lowp + t->tol.oracle_floor;
        if (!(budget > 0)) budget = 1e-300;
    }
    t->oracle_budget = budget;
    int pass = q3n_judge_metrics(&t->m, &t->tol, budget, &t->headroom_pct);
    if (e->flip_from >= 0) {
        t->has_clean = 1;
        t->marked_from_token = marked_all ? 0 : mark_row;
        q3n_cmp_finish(&clean, &t->clean);
    }
    char where[64], l2[24];
    if (pass) {
        t->verdict = Q3N_VERDICT_PASS;
    } else if (t->m.nonfinite_bad > 0) {
        t->verdict = Q3N_VERDICT_FAIL;
        int64_t c2[Q3N_MAX_RANK];
        q3n_index_decode(t->m.first_nonfinite_bad_index, t->rank, t->dims, c2);
        snprintf(where, sizeof where, "flat index %lld", (long long)t->m.first_nonfinite_bad_index);
        if (t->rank >= 1) snprintf(where, sizeof where, "row %lld", (long long)c2[0]);
        snprintf(t->note, sizeof t->note, "%lld NaN/Inf where the reference is finite (first at %s)",
                 (long long)t->m.nonfinite_bad, where);
    } else if (e->flip_from >= 0 && (marked_all || t->clean.numel == 0) && failed_before(e->r)) {
        /* no unmarked element to check against (a whole-sequence tensor, or a flip at token 0)
         * and a real failure upstream: the flip cannot be told apart from that failure */
        t->verdict = Q3N_VERDICT_FAIL;
        snprintf(t->note, sizeof t->note,
                 "rel_l2 %.2e > allowed %.2e; every element depends on the router flip at %s, which cannot "
                 "explain it while earlier tensors fail",
                 t->m.rel_l2, t->tol.rel_l2, e->flip_at);
    } else if (e->flip_from >= 0) {
        double h;
        int clean_pass = q3n_judge_metrics(&t->clean, &t->tol, budget, &h);
        snprintf(l2, sizeof l2, "%.2e", t->clean.rel_l2);
        if (clean_pass) {
            t->verdict = Q3N_VERDICT_EXPLAINED;
            if (marked_all || t->clean.numel == 0)
                snprintf(t->note, sizeof t->note,
                         "explained by the router flip at %s (every element depends on it; nothing failed before)",
                         e->flip_at);
            else
                snprintf(t->note, sizeof t->note,
                         "explained by the router flip at %s: fails only on tokens >= %lld; rel_l2 %s on the "
                         "tokens before",
                         e->flip_at, (long long)mark_row, l2);
        } else {
            t->verdict = Q3N_VERDICT_FAIL;
            snprintf(t->note, sizeof t->note, "fails on tokens before the router flip at %s too (rel_l2 %s there)",
                     e->flip_at, l2);
        }
    } else {
        t->verdict = Q3N_VERDICT_FAIL;
        if (budget > 0)
            snprintf(t->note, sizeof t->note, "rel_l2 %.2e > oracle budget %.2e", t->m.rel_l2, budget);
        else if (t->m.outside > 0)
            snprintf(t->note, sizeof t->note, "%lld elements (%.3g%%) outside atol+rtol*max(|b|,small); rel_l2 %.2e "
                     "(allowed %.2e)", (long long)t->m.outside, 100.0 * t->m.frac_outside, t->m.rel_l2, t->tol.rel_l2);
        else
            snprintf(t->note, sizeof t->note, "rel_l2 %.2e > allowed %.2e", t->m.rel_l2, t->tol.rel_l2);
    }
    if (aligned && skipped_tokens > 0 && t->verdict == Q3N_VERDICT_PASS)
        snprintf(t->note, sizeof t->note, "compared on %lld of %lld tokens (the others flipped experts)",
                 (long long)(rows - skipped_tokens), (long long)rows);
    return Q3N_OK;
}

/* ---- top-k taps ------------------------------------------------------------------------- */

static enum q3n_status judge_topk(struct engine *e, struct q3n_tensor_result *t, const struct cand *c,
                                  const char *ref_ds, struct q3n_error *err)
{
    enum q3n_status st;
    if (t->rank != 2) {
        t->verdict = Q3N_VERDICT_ERROR;
        snprintf(t->note, sizeof t->note, "top-k tap must be [T,K]");
        return Q3N_OK;
    }
    int64_t rows = t->dims[0], K = t->dims[1];
    /* reference probabilities: <prefix>probs beside <prefix>topk_idx */
    char probs_ds[Q3N_TAP_NAME_MAX + 32];
    size_t plen = strlen(ref_ds);
    int have_probs = 0;
    int64_t E = 0;
    if (ends_with(ref_ds, "topk_idx") && plen + 8 < sizeof probs_ds) {
        memcpy(probs_ds, ref_ds, plen - strlen("topk_idx"));
        strcpy(probs_ds + plen - strlen("topk_idx"), "probs");
        if (q3n_tensorfile_exists(e->ref, probs_ds)) {
            struct q3n_tensor_info pi;
            st = q3n_tensorfile_info(e->ref, probs_ds, &pi, err);
            if (st != Q3N_OK) return st;
            if (pi.rank == 2 && pi.dims[0] == rows) {
                have_probs = 1;
                E = pi.dims[1];
            }
        }
    }
    if (!have_probs) E = INT64_MAX;
    free(e->topk_a);
    free(e->topk_b);
    free(e->topk_flipped);
    e->topk_a = malloc((size_t)(rows * K) * sizeof *e->topk_a);
    e->topk_b = malloc((size_t)(rows * K) * sizeof *e->topk_b);
    e->topk_flipped = malloc((size_t)(rows > 0 ? rows : 1));
    if (!e->topk_a || !e->topk_b || !e->topk_flipped)
        return q3n_error_set(err, Q3N_ERR_NOMEM, "compare: out of memory at %s", t->name);
    e->topk_rows = rows;
    e->topk_k = K;
    snprintf(e->topk_prefix, sizeof e->topk_prefix, "%.*s", (int)(strlen(t->name) - strlen("topk_idx")), t->name);
    st = cand_rows(c, 0, rows, K, NULL, e->topk_a, err);
    if (st != Q3N_OK) return st;
    st = ref_rows(e, ref_ds, 2, 0, rows, K, NULL, e->topk_b, err);
    if (st != Q3N_OK) return st;
    int64_t block = have_probs ? (E > 0 ? BLOCK_ELEMS / E : rows) : rows;
    if (block < 1) block = 1;
    if (have_probs) {
        st = ensure(e, 1, (block < rows ? block : rows) * E, err);
        if (st != Q3N_OK) return st;
    }
    int64_t mark_row = e->flip_from;
    struct q3n_topk_stats full, clean;
    q3n_topk_init(&full, K);
    q3n_topk_init(&clean, K);
    for (int64_t r0 = 0; r0 < rows; r0 += block) {
        int64_t nr = rows - r0 < block ? rows - r0 : block;
        if (have_probs) {
            st = q3n_tensorfile_read_rows(e->ref, probs_ds, Q3N_DTYPE_F64, r0, nr, e->p, nr * E, err);
            if (st != Q3N_OK) return st;
        }
        q3n_topk_feed(&full, e->topk_a + r0 * K, e->topk_b + r0 * K, have_probs ? e->p : NULL, r0, nr, E,
                      t->tol.margin, e->topk_flipped + r0);
        int64_t cn = mark_row < 0 ? nr : (mark_row - r0 < nr ? mark_row - r0 : nr);
        if (cn > 0)
            q3n_topk_feed(&clean, e->topk_a + r0 * K, e->topk_b + r0 * K, have_probs ? e->p : NULL, r0, cn, E,
                          t->tol.margin, NULL);
    }
    t->topk = full;
    /* headroom: the flip margin as % of the near-tie threshold (<= 100: every flip a near-tie) */
    double worst = 0;
    if (full.hard_tokens > 0)
        worst = isnan(full.min_hard_margin) ? INFINITY : full.min_hard_margin;
    else if (full.near_tie_tokens > 0)
        worst = full.max_near_tie_margin;
    if (full.flipped_tokens == 0)
        t->headroom_pct = 0.0;
    else
        t->headroom_pct = t->tol.margin > 0 ? 100.0 * worst / t->tol.margin : INFINITY;
    char m1[32], m2[32];
    snprintf(m1, sizeof m1, "%.3g", full.max_near_tie_margin);
    snprintf(m2, sizeof m2, "%.3g", full.min_hard_margin);
    if (full.invalid > 0) {
        t->verdict = Q3N_VERDICT_FAIL;
        snprintf(t->note, sizeof t->note, "%lld tokens with expert indices outside [0, E)", (long long)full.invalid);
    } else if (full.hard_tokens > 0 && (mark_row < 0 || clean.hard_tokens > 0)) {
        t->verdict = Q3N_VERDICT_FAIL;
        snprintf(t->note, sizeof t->note,
                 "%lld tokens flipped experts at a clear margin (smallest %s > near-tie %.3g%s), first at token %lld",
                 (long long)full.hard_tokens, m2, t->tol.margin, have_probs ? "" : "; no reference probs",
                 (long long)full.first_hard_token);
    } else if (full.flipped_tokens > 0 && mark_row >= 0 && clean.flipped_tokens == 0) {
        t->verdict = Q3N_VERDICT_EXPLAINED;
        snprintf(t->note, sizeof t->note,
                 "%lld tokens flipped, all at tokens >= %lld marked by the router flip at %s",
                 (long long)full.flipped_tokens, (long long)mark_row, e->flip_at);
    } else if (full.near_tie_tokens > 0 && !t->tol.near_tie_report) {
        t->verdict = Q3N_VERDICT_FAIL;
        snprintf(t->note, sizeof t->note, "%lld near-tie flips (margin <= %s), failed by policy near_tie=fail",
                 (long long)full.near_tie_tokens, m1);
    } else if (full.near_tie_tokens > 0) {
        t->verdict = Q3N_VERDICT_REPORTED;
        snprintf(t->note, sizeof t->note,
                 "%lld tokens flipped at a near-tie (largest margin %s <= %.3g), first at token %lld: later "
                 "tensors' tokens >= %lld are marked",
                 (long long)full.near_tie_tokens, m1, t->tol.margin, (long long)full.first_flip_token,
                 (long long)full.first_flip_token);
    } else {
        t->verdict = Q3N_VERDICT_PASS;
    }
    /* the first flips one by one: which expert was dropped for which, at what margin */
    size_t used = strlen(t->note);
    int listed = 0;
    for (int64_t row = 0; row < rows && listed < 4 && full.flipped_tokens > 0; row++) {
        if (!e->topk_flipped[row]) continue;
        const int64_t *a = e->topk_a + row * K, *b = e->topk_b + row * K;
        int64_t dropped = -1, added = -1;
        for (int64_t j = 0; j < K; j++) {
            int in_a = 0, in_b = 0;
            for (int64_t i = 0; i < K; i++) {
                in_a |= a[i] == b[j];
                in_b |= b[i] == a[j];
            }
            if (!in_a && dropped < 0) dropped = b[j];
            if (!in_b && added < 0) added = a[j];
        }
        char margin[48] = "";
        if (have_probs && dropped >= 0 && added >= 0 && dropped < E && added < E) {
            st = q3n_tensorfile_read_rows(e->ref, probs_ds, Q3N_DTYPE_F64, row, 1, e->p, E, err);
            if (st != Q3N_OK) return st;
            snprintf(margin, sizeof margin, ", margin %.2e", e->p[dropped] - e->p[added]);
        }
        int n = snprintf(t->note + used, sizeof t->note - used, "%st=%lld: expert %lld -> %lld%s",
                         listed ? "; " : " [", (long long)row, (long long)dropped, (long long)added, margin);
        if (n < 0 || (size_t)n >= sizeof t->note - used) break;
        used += (size_t)n;
        listed++;
    }
    if (listed && used + 2 < sizeof t->note) {
        if (full.flipped_tokens > listed) {
            int n = snprintf(t->note + used, sizeof t->note - used, "; ...");
            if (n > 0 && (size_t)n < sizeof t->note - used) used += (size_t)n;
        }
        if (used + 2 < sizeof t->note) strcat(t->note, "]");
    }
    if (full.first_flip_token >= 0 && (e->flip_from < 0 || full.first_flip_token < e->flip_from)) {
        e->flip_from = full.first_flip_token;
        snprintf(e->flip_at, sizeof e->flip_at, "%s token %lld", t->name, (long long)full.first_flip_token);
    }
    return Q3N_OK;
}

/* ---- one tensor ---------------------------------------------------------------------------- */

static enum q3n_status judge_tensor(struct engine *e, const char *name, const struct cand *c, const char *ref_ds,
                                    struct q3n_error *err)
{
    struct q3n_tolerance tol;
    enum q3n_status st = q3n_policy_lookup(e->policy, name, e->dtype, &tol, err);
    if (st != Q3N_OK) return st;
    struct q3n_tensor_result *t;
    st = q3n_result_add(e->r, name, &t, err);
    if (st != Q3N_OK) return st;
    t->tol = tol;
    t->rank = c->rank;
    memcpy(t->dims, c->dims, sizeof t->dims);
    snprintf(t->dtype_a, sizeof t->dtype_a, "%s", q3n_dtype_name(c->dtype));
    struct q3n_tensor_info ri;
    st = q3n_tensorfile_info(e->ref, ref_ds, &ri, err);
    if (st != Q3N_OK) return st;
    snprintf(t->dtype_b, sizeof t->dtype_b, "%s", q3n_dtype_name(ri.dtype));
    {
        char obj[Q3N_TAP_NAME_MAX + 16];
        struct q3n_error e2;
        double noise;
        attr_object(e->ref, obj, sizeof obj, name, ref_ds);
        if (q3n_tensorfile_exists(e->ref, obj) &&
            q3n_tensorfile_get_attr_f64(e->ref, obj, "noise_rel_l2", &noise, &e2) == Q3N_OK)
            t->noise_rel_l2 = noise;
        else if (strcmp(name, "logits") == 0 &&
                 q3n_tensorfile_get_attr_f64(e->ref, "/", "audit_f32_vs_f64_logits_rel_l2", &noise, &e2) == Q3N_OK)
            t->noise_rel_l2 = noise; /* goldens record the logits' noise on the root */
    }
    int same = ri.rank == c->rank;
    for (int i = 0; same && i < c->rank; i++) same = ri.dims[i] == c->dims[i];
    if (!same) {
        char sa[64], sb[64];
        q3n_shape_str(sa, sizeof sa, c->rank, c->dims);
        q3n_shape_str(sb, sizeof sb, ri.rank, ri.dims);
        t->verdict = Q3N_VERDICT_ERROR;
        snprintf(t->note, sizeof t->note, "shape %s, reference %s", sa, sb);
        return Q3N_OK;
    }
    switch (tol.kind) {
    case Q3N_KIND_SKIP: t->verdict = Q3N_VERDICT_SKIPPED; return Q3N_OK;
    case Q3N_KIND_TOPK: return judge_topk(e, t, c, ref_ds, err);
    case Q3N_KIND_EXACT:
        t->tol.rtol = t->tol.atol = t->tol.small = t->tol.rel_l2 = 0;
        return judge_float(e, t, c, ref_ds, err);
    case Q3N_KIND_FLOAT: return judge_float(e, t, c, ref_ds, err);
    }
    return Q3N_OK;
}

/* Reference dataset of a tap: /tensors/<name>, or /oracle/<name> in oracle mode. */
static enum q3n_status ref_dataset(struct engine *e, char *buf, size_t cap, const char *name, struct q3n_error *err)
{
    int n;
    if (e->oracle && e->ref_has_oracle)
        n = snprintf(buf, cap, "/oracle/%s", name);
    else
        n = snprintf(buf, cap, "/tensors/%s", name);
    if (n < 0 || (size_t)n >= cap) return q3n_error_set(err, Q3N_ERR_FORMAT, "tap name too long: %s", name);
    return Q3N_OK;
}

/* Reference of an extra dataset (/logits, /mtp_logits, /decode/logits) in oracle mode: its
 * /oracle/<name> twin, or the dataset itself in a float64 golden. Returns 0 when the golden has
 * no float64 reference for it (then the tensor is an ERROR, never a silent low-precision pass). */
static int extra_ref(struct engine *e, char *buf, size_t cap, const char *ds)
{
    if (!e->oracle) {
        snprintf(buf, cap, "%s", ds);
        return 1;
    }
    snprintf(buf, cap, "/oracle%s", ds);
    if (q3n_tensorfile_exists(e->ref, buf)) return 1;
    snprintf(buf, cap, "%s", ds);
    return e->ref_is_f64;
}

/* Judges an extra dataset against its reference, or records why it cannot be. */
static enum q3n_status judge_extra(struct engine *e, const char *name, const char *ds, const struct cand *c,
                                   struct q3n_error *err)
{
    char ref[Q3N_TAP_NAME_MAX + 16];
    if (extra_ref(e, ref, sizeof ref, ds)) return judge_tensor(e, name, c, ref, err);
    struct q3n_tensor_result *t;
    enum q3n_status st = q3n_policy_lookup(e->policy, name, e->dtype, &(struct q3n_tolerance){0}, err);
    if (st != Q3N_OK) return st;
    st = q3n_result_add(e->r, name, &t, err);
    if (st != Q3N_OK) return st;
    t->rank = c->rank;
    memcpy(t->dims, c->dims, sizeof t->dims);
    t->verdict = Q3N_VERDICT_ERROR;
    snprintf(t->note, sizeof t->note, "oracle mode: the golden has no float64 reference for %s (no /oracle%s)", ds,
             ds);
    return Q3N_OK;
}

static int result_has(const struct q3n_result *r, const char *name)
{
    for (int64_t i = 0; i < r->n_tensors; i++)
        if (strcmp(r->tensors[i].name, name) == 0) return 1;
    for (int64_t i = 0; i < r->n_only_a; i++)
        if (strcmp(r->only_a[i], name) == 0) return 1;
    return 0;
}

static void read_provenance(struct q3n_result *r, struct q3n_tensorfile *tf)
{
    struct q3n_error e2;
    q3n_tensorfile_get_attr_str(tf, "/", "generator", r->golden_generator, sizeof r->golden_generator, &e2);
    q3n_tensorfile_get_attr_str(tf, "/", "transformers_version", r->golden_transformers,
                                sizeof r->golden_transformers, &e2);
    q3n_tensorfile_get_attr_str(tf, "/", "torch_version", r->golden_torch, sizeof r->golden_torch, &e2);
    q3n_tensorfile_get_attr_str(tf, "/", "dtype", r->golden_dtype, sizeof r->golden_dtype, &e2);
    q3n_tensorfile_get_attr_str(tf, "/", "preset", r->golden_preset, sizeof r->golden_preset, &e2);
    int64_t v;
    if (q3n_tensorfile_get_attr_i64(tf, "/", "format_version", &v, &e2) == Q3N_OK) r->golden_format_version = v;
    if (q3n_tensorfile_get_attr_i64(tf, "/", "seed", &v, &e2) == Q3N_OK) r->golden_seed = v;
}

static enum q3n_status engine_init(struct engine *e, struct q3n_result *r, struct q3n_tensorfile *ref,
                                   const struct q3n_policy *policy, const char *dtype, int oracle,
                                   struct q3n_error *err)
{
    memset(e, 0, sizeof *e);
    e->r = r;
    e->ref = ref;
    e->policy = policy;
    e->dtype = dtype;
    e->run_bf16 = strcmp(dtype, "bfloat16") == 0;
    e->oracle = oracle;
    e->flip_from = -1;
    e->T = -1;
    e->ref_has_oracle = q3n_tensorfile_exists(ref, "/oracle");
    e->ref_is_f64 = strcmp(r->golden_dtype, "float64") == 0;
    if (q3n_tensorfile_exists(ref, "/inputs/input_ids")) {
        struct q3n_tensor_info ii;
        enum q3n_status st = q3n_tensorfile_info(ref, "/inputs/input_ids", &ii, err);
        if (st != Q3N_OK) return st;
        if (ii.rank == 1) e->T = ii.dims[0];
    }
    if (oracle && !e->ref_has_oracle && !e->ref_is_f64)
        return q3n_error_set(err, Q3N_ERR_USAGE,
                             "%s: --oracle needs a float64 golden or a bf16 golden with /oracle (this one is %s)",
                             q3n_tensorfile_path(ref), r->golden_dtype[0] ? r->golden_dtype : "of unknown dtype");
    snprintf(r->mode, sizeof r->mode, "%s", oracle ? "oracle" : "tolerance");
    snprintf(r->dtype, sizeof r->dtype, "%s", dtype);
    return Q3N_OK;
}

/* ---- verify ---------------------------------------------------------------------------------- */

struct tap_ctx {
    struct engine *e;
};

static enum q3n_status on_tap(void *user, const struct q3n_tap *tap, struct q3n_error *err)
{
    struct engine *e = ((struct tap_ctx *)user)->e;
    char ds[Q3N_TAP_NAME_MAX + 16], plain[Q3N_TAP_NAME_MAX + 16];
    enum q3n_status st = ref_dataset(e, ds, sizeof ds, tap->name, err);
    if (st != Q3N_OK) return st;
    snprintf(plain, sizeof plain, "/tensors/%s", tap->name);
    if (!q3n_tensorfile_exists(e->ref, plain) || !q3n_tensorfile_exists(e->ref, ds)) {
        if (result_has(e->r, tap->name)) return Q3N_OK;
        return q3n_result_add_only(e->r, 1, tap->name, err);
    }
    struct cand c = {.data = tap->data, .dtype = tap->dtype, .rank = tap->rank};
    memcpy(c.dims, tap->dims, sizeof c.dims);
    return judge_tensor(e, tap->name, &c, ds, err);
}

struct list_ctx {
    char **names;
    int64_t n, cap;
};

static enum q3n_status collect(void *user, const char *name, struct q3n_error *err)
{
    struct list_ctx *l = user;
    if (l->n == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : 256;
        char **nn = realloc(l->names, (size_t)cap * sizeof *nn);
        if (!nn) return q3n_error_set(err, Q3N_ERR_NOMEM, "out of memory listing tensors");
        l->names = nn;
        l->cap = cap;
    }
    l->names[l->n] = strdup(name);
    if (!l->names[l->n]) return q3n_error_set(err, Q3N_ERR_NOMEM, "out of memory listing tensors");
    l->n++;
    return Q3N_OK;
}

static void list_free(struct list_ctx *l)
{
    for (int64_t i = 0; i < l->n; i++) free(l->names[i]);
    free(l->names);
}

/* Names of the reference's /tensors not judged: only in the reference. */
static enum q3n_status add_missing(struct engine *e, struct q3n_error *err)
{
    struct list_ctx l = {0};
    enum q3n_status st = Q3N_OK;
    if (q3n_tensorfile_exists(e->ref, "/tensors")) st = q3n_tensorfile_list(e->ref, "/tensors", collect, &l, err);
    for (int64_t i = 0; st == Q3N_OK && i < l.n; i++)
        if (!result_has(e->r, l.names[i])) st = q3n_result_add_only(e->r, 0, l.names[i], err);
    list_free(&l);
    return st;
}

static enum q3n_status judge_mem(struct engine *e, const char *name, const char *ref_ds, const float *data,
                                 int rank, const int64_t *dims, struct q3n_error *err)
{
    struct cand c = {.data = data, .dtype = Q3N_DTYPE_F32, .rank = rank};
    for (int i = 0; i < rank; i++) c.dims[i] = dims[i];
    return judge_extra(e, name, ref_ds, &c, err);
}

static void dirname_of(char *out, size_t cap, const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(out, cap, ".");
    else
        snprintf(out, cap, "%.*s", (int)(slash - path), path);
}

enum q3n_status q3n_verify_checkpoint(char *buf, size_t cap, const char *golden_path, struct q3n_error *err)
{
    struct q3n_tensorfile *tf = NULL;
    char ckpt[1024], dir[2048];
    enum q3n_status st = q3n_tensorfile_open(&tf, golden_path, err);
    if (st != Q3N_OK) return st;
    st = q3n_tensorfile_get_attr_str(tf, "/", "checkpoint", ckpt, sizeof ckpt, err);
    q3n_tensorfile_close(tf);
    if (st != Q3N_OK) return st;
    dirname_of(dir, sizeof dir, golden_path);
    int n = ckpt[0] == '/' ? snprintf(buf, cap, "%s", ckpt) : snprintf(buf, cap, "%s/%s", dir, ckpt);
    if (n < 0 || (size_t)n >= cap)
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: checkpoint path too long", golden_path);
    return Q3N_OK;
}

enum q3n_status q3n_verify_model(struct q3n_result **result, const char *golden_path, const struct q3n_model *model,
                                 const struct q3n_verify_options *opt, struct q3n_error *err)
{
    enum q3n_status st;
    struct q3n_tensorfile *tf = NULL;
    struct q3n_result *r = NULL;
    struct engine e;
    int engine_ready = 0;
    void *session = NULL;
    int64_t *tokens = NULL;
    float *logits = NULL;
    const struct q3n_impl *impl = NULL;
    *result = NULL;

    impl = q3n_impl_find(opt->impl);
    if (!impl) {
        char names[256] = "";
        for (const char *const *n = q3n_impl_names(); *n; n++) {
            strncat(names, " ", sizeof names - strlen(names) - 1);
            strncat(names, *n, sizeof names - strlen(names) - 1);
        }
        return q3n_error_set(err, Q3N_ERR_USAGE, "no implementation '%s' in this build (built:%s)", opt->impl, names);
    }
    st = q3n_result_create(&r, err);
    if (st != Q3N_OK) goto done;
    snprintf(r->command, sizeof r->command, "verify");
    snprintf(r->golden_path, sizeof r->golden_path, "%s", golden_path);
    snprintf(r->impl, sizeof r->impl, "%s", impl->name);
    snprintf(r->candidate, sizeof r->candidate, "impl:%s", impl->name);
    snprintf(r->policy_path, sizeof r->policy_path, "%s", opt->policy_path ? opt->policy_path : q3n_policy_source(opt->policy));
    st = q3n_tensorfile_open(&tf, golden_path, err);
    if (st != Q3N_OK) goto done;
    read_provenance(r, tf);
    st = engine_init(&e, r, tf, opt->policy, q3n_compute_dtype_name(opt->dtype), opt->oracle, err);
    engine_ready = 1;
    if (st != Q3N_OK) goto done;

    if (e.T <= 0) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: /inputs/input_ids missing or not [T]", golden_path);
        goto done;
    }
    int64_t T = e.T, V = model->config.vocab_size;
    tokens = malloc((size_t)T * sizeof *tokens);
    size_t nlog;
    if (!q3n_mul_size(&nlog, (size_t)T, (size_t)V) || !q3n_mul_size(&nlog, nlog, sizeof *logits)) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: logits size overflows", golden_path);
        goto done;
    }
    logits = malloc(nlog);
    if (!tokens || !logits) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory for %lld tokens", golden_path, (long long)T);
        goto done;
    }
    st = q3n_tensorfile_read(tf, "/inputs/input_ids", Q3N_DTYPE_I64, tokens, T, NULL, err);
    if (st != Q3N_OK) goto done;

    struct q3n_run_options ro;
    q3n_run_options_default(&ro);
    ro.dtype = opt->dtype;
    ro.test_bug = opt->test_bug;
    if (ro.max_tokens < T + 1) ro.max_tokens = T + 1;
    st = impl->open(&session, model, &ro, err);
    if (st != Q3N_OK) goto done;
    struct tap_ctx ctx = {.e = &e};
    struct q3n_tap_sink sink = {.fn = on_tap, .user = &ctx, .intervene = 0};
    if (opt->isolated) {
        /* Isolated mode: the compare sink sees each tap as computed from golden inputs, then the
         * intervening sink overwrites it with the golden's value before downstream ops read it. */
        struct q3n_golden_src src;
        q3n_golden_src_tensorfile(&src, tf);
        struct q3n_intervene_opts io = {.golden = &src, .isolate = 1, .inner = &sink};
        struct q3n_intervene iv;
        q3n_intervene_init(&iv, &io);
        struct q3n_tap_sink isink = q3n_intervene_sink(&iv);
        st = impl->forward(session, logits, tokens, T, &isink, err);
        int64_t replaced = iv.n_replaced;
        q3n_intervene_free(&iv);
        if (st != Q3N_OK) goto done;
        if (replaced == 0) {
            st = q3n_error_set(err, Q3N_ERR_UNSUPPORTED,
                               "--isolated: implementation '%s' emitted no live taps to replace", impl->name);
            goto done;
        }
    } else {
        st = impl->forward(session, logits, tokens, T, &sink, err);
        if (st != Q3N_OK) goto done;
    }
    if (impl->describe) snprintf(r->kernels, sizeof r->kernels, "%s%s", impl->describe(session),
                                 opt->isolated ? " [isolated: every live tap replaced by the golden's]" : "");
    int64_t ldims[2] = {T, V};
    if (q3n_tensorfile_exists(tf, "/logits")) {
        st = judge_mem(&e, "logits", "/logits", logits, 2, ldims, err);
        if (st != Q3N_OK) goto done;
    }
    if (!opt->skip_mtp && q3n_tensorfile_exists(tf, "/mtp_logits") && T > 1) {
        if (!impl->forward_mtp) {
            st = q3n_result_add_only(r, 0, "mtp_logits", err);
        } else {
            st = impl->forward_mtp(session, logits, tokens, T, &sink, err);
            if (st == Q3N_OK) {
                int64_t mdims[2] = {T - 1, V};
                st = judge_mem(&e, "mtp_logits", "/mtp_logits", logits, 2, mdims, err);
            }
        }
        if (st != Q3N_OK) goto done;
    }
    if (!opt->skip_decode && q3n_tensorfile_exists(tf, "/decode/logits")) {
        int64_t P = 0;
        st = q3n_tensorfile_get_attr_i64(tf, "/decode", "prefill_tokens", &P, err);
        if (st != Q3N_OK) goto done;
        if (P < 1 || P > T) {
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: /decode prefill_tokens %lld outside [1, %lld]", golden_path,
                               (long long)P, (long long)T);
            goto done;
        }
        impl->reset(session);
        struct q3n_tap_sink off = {0};
        st = impl->forward(session, logits, tokens, P, &off, err);
        for (int64_t s = P; st == Q3N_OK && s < T; s++)
            st = impl->forward(session, logits + (size_t)s * (size_t)V, tokens + s, 1, &off, err);
        if (st != Q3N_OK) goto done;
        char decode_kernels[Q3N_RESULT_STR];
        if (impl->describe) {
            snprintf(decode_kernels, sizeof decode_kernels, "%s", impl->describe(session));
            if (strcmp(decode_kernels, r->kernels) != 0) {
                size_t used = strlen(r->kernels);
                snprintf(r->kernels + used, sizeof r->kernels - used, "; decode: %s", decode_kernels);
            }
        }
        st = judge_mem(&e, "decode/logits", "/decode/logits", logits, 2, ldims, err);
        if (st != Q3N_OK) goto done;
    }
    st = add_missing(&e, err);
    if (st != Q3N_OK) goto done;
    q3n_result_finalize(r);
    *result = r;
    r = NULL;
done:
    if (session) impl->close(session);
    if (engine_ready) engine_free(&e);
    free(tokens);
    free(logits);
    q3n_tensorfile_close(tf);
    q3n_result_free(r);
    return st;
}

/* ---- compare ------------------------------------------------------------------------------- */

static enum q3n_status compare_dataset(struct engine *e, struct q3n_tensorfile *a, const char *name,
                                       const char *a_ds, const char *ref_ds, int extra, struct q3n_error *err)
{
    struct q3n_tensor_info ai;
    enum q3n_status st = q3n_tensorfile_info(a, a_ds, &ai, err);
    if (st != Q3N_OK) return st;
    struct cand c = {.tf = a, .dataset = a_ds, .dtype = ai.dtype, .rank = ai.rank};
    memcpy(c.dims, ai.dims, sizeof c.dims);
    if (extra) return judge_extra(e, name, ref_ds, &c, err);
    return judge_tensor(e, name, &c, ref_ds, err);
}

enum q3n_status q3n_compare_files(struct q3n_result **result, const char *a_path, const char *b_path,
                                  const struct q3n_compare_options *opt, struct q3n_error *err)
{
    enum q3n_status st;
    struct q3n_tensorfile *a = NULL, *b = NULL;
    struct q3n_result *r = NULL;
    struct list_ctx la = {0};
    struct engine e;
    int engine_ready = 0;
    char dtype[16] = "float32";
    *result = NULL;
    st = q3n_result_create(&r, err);
    if (st != Q3N_OK) goto done;
    snprintf(r->command, sizeof r->command, "compare");
    snprintf(r->golden_path, sizeof r->golden_path, "%s", b_path);
    snprintf(r->candidate, sizeof r->candidate, "%s", a_path);
    snprintf(r->policy_path, sizeof r->policy_path, "%s", opt->policy_path ? opt->policy_path : q3n_policy_source(opt->policy));
    st = q3n_tensorfile_open(&a, a_path, err);
    if (st != Q3N_OK) goto done;
    st = q3n_tensorfile_open(&b, b_path, err);
    if (st != Q3N_OK) goto done;
    read_provenance(r, b);
    struct q3n_error e2;
    q3n_tensorfile_get_attr_str(a, "/", "kernels", r->kernels, sizeof r->kernels, &e2);
    q3n_tensorfile_get_attr_str(a, "/", "impl", r->impl, sizeof r->impl, &e2);
    if (opt->dtype)
        snprintf(dtype, sizeof dtype, "%s", opt->dtype);
    else
        q3n_tensorfile_get_attr_str(a, "/", "dtype", dtype, sizeof dtype, &e2);
    st = engine_init(&e, r, b, opt->policy, dtype, opt->oracle, err);
    engine_ready = 1;
    if (st != Q3N_OK) goto done;
    if (e.T < 0 && q3n_tensorfile_exists(a, "/inputs/input_ids")) {
        struct q3n_tensor_info ii;
        if (q3n_tensorfile_info(a, "/inputs/input_ids", &ii, &e2) == Q3N_OK && ii.rank == 1) e.T = ii.dims[0];
    }
    int have_tensors = q3n_tensorfile_exists(a, "/tensors") || q3n_tensorfile_exists(b, "/tensors");
    if (q3n_tensorfile_exists(a, "/tensors")) {
        st = q3n_tensorfile_list(a, "/tensors", collect, &la, err);
        if (st != Q3N_OK) goto done;
    }
    for (int64_t i = 0; i < la.n; i++) {
        char a_ds[Q3N_TAP_NAME_MAX + 16], ref_ds[Q3N_TAP_NAME_MAX + 16], plain[Q3N_TAP_NAME_MAX + 16];
        snprintf(a_ds, sizeof a_ds, "/tensors/%s", la.names[i]);
        snprintf(plain, sizeof plain, "/tensors/%s", la.names[i]);
        st = ref_dataset(&e, ref_ds, sizeof ref_ds, la.names[i], err);
        if (st != Q3N_OK) goto done;
        if (!q3n_tensorfile_exists(b, plain) || !q3n_tensorfile_exists(b, ref_ds))
            st = q3n_result_add_only(r, 1, la.names[i], err);
        else
            st = compare_dataset(&e, a, la.names[i], a_ds, ref_ds, 0, err);
        if (st != Q3N_OK) goto done;
    }
    /* delta-rule case files: /delta_rule/case_<n>/<dataset>, named "delta_rule/case_<n>/<dataset>" */
    for (int c = 0; c < 100000; c++) {
        char group[64];
        snprintf(group, sizeof group, "/delta_rule/case_%d", c);
        int in_a = q3n_tensorfile_exists(a, group), in_b = q3n_tensorfile_exists(b, group);
        if (!in_a && !in_b) break;
        if (!in_a || !in_b) {
            st = q3n_result_add_only(r, in_a, group + 1, err);
            if (st != Q3N_OK) goto done;
            continue;
        }
        struct list_ctx lc = {0};
        st = q3n_tensorfile_list(a, group, collect, &lc, err);
        for (int64_t i = 0; st == Q3N_OK && i < lc.n; i++) {
            char ds[Q3N_TAP_NAME_MAX + 16];
            snprintf(ds, sizeof ds, "%s/%s", group, lc.names[i]);
            if (q3n_tensorfile_exists(b, ds))
                st = compare_dataset(&e, a, ds + 1, ds, ds, 0, err);
            else
                st = q3n_result_add_only(r, 1, ds + 1, err);
        }
        list_free(&lc);
        if (st != Q3N_OK) goto done;
    }
    static const char *const extra[][2] = {
        {"logits", "/logits"}, {"mtp_logits", "/mtp_logits"}, {"decode/logits", "/decode/logits"}};
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++) {
        int in_a = q3n_tensorfile_exists(a, extra[i][1]), in_b = q3n_tensorfile_exists(b, extra[i][1]);
        if (in_a && in_b)
            st = compare_dataset(&e, a, extra[i][0], extra[i][1], extra[i][1], 1, err);
        else if (in_a || in_b)
            st = q3n_result_add_only(r, in_a, extra[i][0], err);
        if (st != Q3N_OK) goto done;
    }
    if (have_tensors) {
        st = add_missing(&e, err);
        if (st != Q3N_OK) goto done;
    }
    if (r->n_tensors == 0 && r->n_only_a == 0 && r->n_only_b == 0) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s, %s: nothing to compare (no /tensors, /logits or /delta_rule)",
                           a_path, b_path);
        goto done;
    }
    q3n_result_finalize(r);
    *result = r;
    r = NULL;
done:
    if (engine_ready) engine_free(&e);
    list_free(&la);
    q3n_tensorfile_close(a);
    q3n_tensorfile_close(b);
    q3n_result_free(r);
    return st;
}
