/* test_golden.c — the reference against transformers' committed goldens (golden/data/):
 * logits within rel L2 2e-5; every tap within 10 * noise_rel_l2 + 1e-6, where noise_rel_l2 is the
 * golden's own float32-vs-float64 difference for that tap (two independent float32 evaluations
 * differ by ~sqrt(2) x that; the factor 10 covers summation-order differences, the 1e-6 floor
 * the taps transformers computes in float32 in both runs, whose noise is recorded as 0);
 * topk_idx exactly; decode logits and caches; transformers' delta-rule cases; and every planted
 * bug (run_options.test_bug) fails this same check. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../harness/tensorfile.h"
#include "ops.h"
#include "testref.h"

#define LOGITS_TOL 2e-5
#define TAP_FACTOR 10.0
#define TAP_FLOOR 1e-6
#define CACHE_TOL 1e-5
#define DELTA_TOL 1e-5

static int verbose(void)
{
    return getenv("Q3N_VERBOSE") != NULL;
}

/* ---- comparing a forward's taps with the golden as they are emitted --------------------- */

struct golden_check {
    struct q3n_tensorfile *tf;
    const char *file;
    int failures;          /* taps outside their bound (or missing from the golden) */
    int seen;              /* taps compared */
    double worst_ratio;    /* max over taps of rel_l2 / bound */
    char worst[Q3N_TAP_NAME_MAX];
    char first_fail[Q3N_TAP_NAME_MAX + 64];
    double *want, *got;    /* scratch */
    int64_t cap;
};

static enum q3n_status check_tap(void *user, const struct q3n_tap *tap, struct q3n_error *err)
{
    struct golden_check *g = user;
    char path[Q3N_TAP_NAME_MAX + 16];
    snprintf(path, sizeof path, "/tensors/%s", tap->name);
    int64_t n = q3n_tap_numel(tap);
    if (!q3n_tensorfile_exists(g->tf, path)) {
        if (!g->failures) snprintf(g->first_fail, sizeof g->first_fail, "%s (not in the golden)", tap->name);
        g->failures++;
        return Q3N_OK;
    }
    if (n > g->cap) {
        free(g->want);
        free(g->got);
        g->want = malloc((size_t)n * sizeof(double));
        g->got = malloc((size_t)n * sizeof(double));
        if (!g->want || !g->got) return q3n_error_set(err, Q3N_ERR_NOMEM, "test: out of memory");
        g->cap = n;
    }
    struct q3n_tensor_info expect = {.dtype = tap->dtype, .rank = tap->rank, .numel = n};
    for (int i = 0; i < tap->rank; i++) expect.dims[i] = tap->dims[i];
    g->seen++;
    if (tap->dtype == Q3N_DTYPE_I64) {
        int64_t *want = (int64_t *)g->want;
        enum q3n_status st = q3n_tensorfile_read(g->tf, path, Q3N_DTYPE_I64, want, n, &expect, err);
        if (st != Q3N_OK) return st;
        const int64_t *got = tap->data;
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++) bad += got[i] != want[i];
        if (verbose()) printf("  %-56s mismatches %lld\n", tap->name, (long long)bad);
        if (bad) {
            if (!g->failures)
                snprintf(g->first_fail, sizeof g->first_fail, "%s (%lld indices differ)", tap->name, (long long)bad);
            g->failures++;
        }
        return Q3N_OK;
    }
    enum q3n_status st = q3n_tensorfile_read(g->tf, path, Q3N_DTYPE_F64, g->want, n, &expect, err);
    if (st != Q3N_OK) return st;
    for (int64_t i = 0; i < n; i++)
        g->got[i] = tap->dtype == Q3N_DTYPE_F64 ? ((const double *)tap->data)[i] : ((const float *)tap->data)[i];
    double noise = 0.0;
    st = q3n_tensorfile_get_attr_f64(g->tf, path, "noise_rel_l2", &noise, err);
    if (st != Q3N_OK) return st;
    double bound = TAP_FACTOR * noise + TAP_FLOOR;
    double e = testkit_rel_l2_f64(g->got, g->want, n);
    double ratio = e / bound;
    if (verbose()) printf("  %-56s rel_l2 %.3g  bound %.3g\n", tap->name, e, bound);
    if (!(e <= bound)) {
        if (!g->failures)
            snprintf(g->first_fail, sizeof g->first_fail, "%s (rel_l2 %.3g > %.3g)", tap->name, e, bound);
        g->failures++;
    }
    if (!(ratio <= g->worst_ratio)) {
        g->worst_ratio = isnan(ratio) ? INFINITY : ratio;
        snprintf(g->worst, sizeof g->worst, "%s", tap->name);
    }
    return Q3N_OK;
}

static void golden_open(const char *file, struct q3n_tensorfile **tf, struct q3n_model **model)
{
    struct q3n_error err = {0};
    if (q3n_tensorfile_open(tf, file, &err) != Q3N_OK) fail_msg("%s", err.msg);
    char ck[512], dir[1024];
    if (q3n_tensorfile_get_attr_str(*tf, "/", "checkpoint", ck, sizeof ck, &err) != Q3N_OK) fail_msg("%s", err.msg);
    const char *slash = strrchr(file, '/');
    int dlen = slash ? (int)(slash - file) : 1;
    snprintf(dir, sizeof dir, "%.*s/%s", dlen, slash ? file : ".", ck);
    if (q3n_model_open(model, dir, &err) != Q3N_OK) fail_msg("%s", err.msg);
}

static int64_t *read_tokens(struct q3n_tensorfile *tf, int64_t *T)
{
    struct q3n_tensor_info info;
    struct q3n_error err = {0};
    if (q3n_tensorfile_info(tf, "/inputs/input_ids", &info, &err) != Q3N_OK) fail_msg("%s", err.msg);
    int64_t *tok = malloc((size_t)info.numel * sizeof *tok);
    assert_non_null(tok);
    if (q3n_tensorfile_read(tf, "/inputs/input_ids", Q3N_DTYPE_I64, tok, info.numel, NULL, &err) != Q3N_OK)
        fail_msg("%s", err.msg);
    *T = info.numel;
    return tok;
}

static double logits_rel_l2(struct q3n_tensorfile *tf, const char *dataset, const float *got, int64_t n)
{
    struct q3n_error err = {0};
    float *want = malloc((size_t)n * sizeof(float));
    assert_non_null(want);
    if (q3n_tensorfile_read(tf, dataset, Q3N_DTYPE_F32, want, n, NULL, &err) != Q3N_OK) fail_msg("%s", err.msg);
    double e = testkit_rel_l2_f32(got, want, n);
    free(want);
    return e;
}

static enum q3n_status count_dataset(void *user, const char *name, struct q3n_error *err)
{
    (void)name;
    (void)err;
    (*(int *)user)++;
    return Q3N_OK;
}

struct full_result {
    double logits, mtp_logits; /* rel L2; mtp -1 when the golden has none */
    int tap_failures, taps, golden_taps;
    double worst_ratio;
    char worst[Q3N_TAP_NAME_MAX], first_fail[Q3N_TAP_NAME_MAX + 64];
};

/* One full forward (and the MTP head when the golden has /mtp_logits) checked tap by tap. */
static void run_full(const char *file, const char *bug, struct full_result *r)
{
    struct q3n_tensorfile *tf = NULL;
    struct q3n_model *m = NULL;
    golden_open(file, &tf, &m);
    int64_t T = 0, V = m->config.vocab_size;
    int64_t *tok = read_tokens(tf, &T);
    float *logits = malloc((size_t)(T * V) * sizeof(float));
    assert_non_null(logits);
    struct q3n_run_options opt;
    q3n_run_options_default(&opt);
    opt.max_tokens = T;
    opt.test_bug = bug;
    struct q3n_error err = {0};
    void *s = NULL;
    if (ref_impl.open(&s, m, &opt, &err) != Q3N_OK) fail_msg("%s", err.msg);
    struct golden_check g = {.tf = tf, .file = file, .worst_ratio = 0.0};
    struct q3n_tap_sink sink = {.fn = check_tap, .user = &g};
    if (ref_impl.forward(s, logits, tok, T, &sink, &err) != Q3N_OK) fail_msg("%s", err.msg);
    r->logits = logits_rel_l2(tf, "/logits", logits, T * V);
    r->mtp_logits = -1.0;
    if (q3n_tensorfile_exists(tf, "/mtp_logits")) {
        if (ref_impl.forward_mtp(s, logits, tok, T, &sink, &err) != Q3N_OK) fail_msg("%s", err.msg);
        r->mtp_logits = logits_rel_l2(tf, "/mtp_logits", logits, (T - 1) * V);
    }
    r->golden_taps = 0;
    if (q3n_tensorfile_list(tf, "/tensors", count_dataset, &r->golden_taps, &err) != Q3N_OK) fail_msg("%s", err.msg);
    r->tap_failures = g.failures;
    r->taps = g.seen;
    r->worst_ratio = g.worst_ratio;
    snprintf(r->worst, sizeof r->worst, "%s", g.worst);
    snprintf(r->first_fail, sizeof r->first_fail, "%s", g.first_fail);
    ref_impl.close(s);
    free(g.want);
    free(g.got);
    free(logits);
    free(tok);
    q3n_model_close(m);
    q3n_tensorfile_close(tf);
}

static void expect_full_pass(const char *file)
{
    struct full_result r;
    run_full(file, NULL, &r);
    printf("%s: logits rel_l2 %.3g", file, r.logits);
    if (r.mtp_logits >= 0) printf(", mtp_logits rel_l2 %.3g", r.mtp_logits);
    printf(" (tol %.0e); %d taps, worst %s at %.2f of its bound\n", LOGITS_TOL, r.taps, r.worst, r.worst_ratio);
    if (!(r.logits <= LOGITS_TOL)) fail_msg("%s: logits rel_l2 %.3g > %.0e", file, r.logits, LOGITS_TOL);
    if (r.mtp_logits >= 0 && !(r.mtp_logits <= LOGITS_TOL))
        fail_msg("%s: mtp_logits rel_l2 %.3g > %.0e", file, r.mtp_logits, LOGITS_TOL);
    if (r.tap_failures) fail_msg("%s: %d taps outside their bound, first %s", file, r.tap_failures, r.first_fail);
    if (r.taps != r.golden_taps) fail_msg("%s: ref emitted %d of the golden's %d taps", file, r.taps, r.golden_taps);
    assert_true(r.taps > 20);
}

static void tiny_float32_golden_matches(void **state)
{
    (void)state;
    expect_full_pass("golden/data/tiny_f32.h5");
}

static void tiny_float64_golden_matches(void **state)
{
    (void)state;
    expect_full_pass("golden/data/tiny_f64.h5");
}

static void odd_golden_matches_including_mtp(void **state)
{
    (void)state;
    expect_full_pass("golden/data/odd_f32.h5");
}

static void long_golden_matches_across_chunks(void **state)
{
    (void)state;
    expect_full_pass("golden/data/long_f32.h5");
}

/* A bf16 golden's /oracle is transformers' float64 run of the same bf16-exact weights. */
static void bf16_golden_oracle_logits_match(void **state)
{
    (void)state;
    const char *file = "golden/data/tiny_bf16.h5";
    struct q3n_tensorfile *tf = NULL;
    struct q3n_model *m = NULL;
    golden_open(file, &tf, &m);
    int64_t T = 0, V = m->config.vocab_size;
    int64_t *tok = read_tokens(tf, &T);
    float *logits = malloc((size_t)(T * V) * sizeof(float));
    assert_non_null(logits);
    struct q3n_run_options opt;
    q3n_run_options_default(&opt);
    opt.max_tokens = T;
    struct q3n_error err = {0};
    void *s = NULL;
    if (ref_impl.open(&s, m, &opt, &err) != Q3N_OK) fail_msg("%s", err.msg);
    if (ref_impl.forward(s, logits, tok, T, NULL, &err) != Q3N_OK) fail_msg("%s", err.msg);
    double e = logits_rel_l2(tf, "/oracle/logits", logits, T * V);
    printf("%s: logits vs /oracle/logits (float64) rel_l2 %.3g (tol %.0e)\n", file, e, LOGITS_TOL);
    if (!(e <= LOGITS_TOL)) fail_msg("%s: rel_l2 %.3g", file, e);
    ref_impl.close(s);
    free(logits);
    free(tok);
    q3n_model_close(m);
    q3n_tensorfile_close(tf);
}

/* Every planted bug makes the same golden check fail. odd_f32 has layer 0 full attention with
 * MoE and layer 1 linear attention, T = 77 (two chunks), so each bug has something to break. */
static void golden_check_catches_every_planted_bug(void **state)
{
    (void)state;
    const char *bugs[] = {"rope_wrong_half", "norm_no_offset", "chunk_off_by_one", "router_flip_layer0",
                          "weak_gated_norm_layer1"};
    for (size_t i = 0; i < sizeof bugs / sizeof bugs[0]; i++) {
        struct full_result r;
        run_full("golden/data/odd_f32.h5", bugs[i], &r);
        printf("test_bug %-24s: logits rel_l2 %.3g, %d taps fail, first %s\n", bugs[i], r.logits, r.tap_failures,
               r.first_fail);
        if (!(r.tap_failures > 0)) fail_msg("test_bug %s: every tap passed", bugs[i]);
    }
}

/* ---- decode golden: prefill P, then one token at a time, caches after each call ---------- */

static double cache_rel_l2(struct q3n_tensorfile *tf, const char *group, const char *name, const ref_real *got,
                           int64_t n)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", group, name);
    struct q3n_error err = {0};
    struct q3n_tensor_info info;
    if (q3n_tensorfile_info(tf, path, &info, &err) != Q3N_OK) fail_msg("%s", err.msg);
    if (info.numel != n) fail_msg("%s: %lld elements, ref has %lld", path, (long long)info.numel, (long long)n);
    double *want = malloc((size_t)n * sizeof(double)), *g = malloc((size_t)n * sizeof(double));
    assert_true(want && g);
    if (q3n_tensorfile_read(tf, path, Q3N_DTYPE_F64, want, n, NULL, &err) != Q3N_OK) fail_msg("%s", err.msg);
    for (int64_t i = 0; i < n; i++) g[i] = (double)got[i];
    double e = testkit_rel_l2_f64(g, want, n);
    free(want);
    free(g);
    return e;
}

static double caches_vs_golden(struct q3n_tensorfile *tf, const char *group, const struct q3n_config *c,
                               const struct ref_cache *rc)
{
    double worst = 0.0;
    for (int64_t i = 0; i < c->num_hidden_layers; i++) {
        const struct ref_layer_cache *lc = &rc->layers[i];
        char name[128];
        double e[2];
        if (lc->conv_state) {
            snprintf(name, sizeof name, "model.layers.%lld.linear_attn.conv_state", (long long)i);
            e[0] = cache_rel_l2(tf, group, name, lc->conv_state, q3n_config_conv_dim(c) * c->linear_conv_kernel_dim);
            snprintf(name, sizeof name, "model.layers.%lld.linear_attn.recurrent_state", (long long)i);
            e[1] = cache_rel_l2(tf, group, name, lc->recurrent_state,
                                c->linear_num_value_heads * c->linear_key_head_dim * c->linear_value_head_dim);
        } else {
            int64_t n = rc->len * c->num_key_value_heads * c->head_dim;
            snprintf(name, sizeof name, "model.layers.%lld.self_attn.key_cache", (long long)i);
            e[0] = cache_rel_l2(tf, group, name, lc->key_cache, n);
            snprintf(name, sizeof name, "model.layers.%lld.self_attn.value_cache", (long long)i);
            e[1] = cache_rel_l2(tf, group, name, lc->value_cache, n);
        }
        for (int j = 0; j < 2; j++) {
            if (isnan(e[j])) return NAN;
            if (e[j] > worst) worst = e[j];
        }
    }
    return worst;
}

static void check_decode_golden(const char *file)
{
    struct q3n_tensorfile *tf = NULL;
    struct q3n_model *m = NULL;
    golden_open(file, &tf, &m);
    struct q3n_error err = {0};
    int64_t T = 0, P = 0, V = m->config.vocab_size;
    int64_t *tok = read_tokens(tf, &T);
    if (q3n_tensorfile_get_attr_i64(tf, "/decode", "prefill_tokens", &P, &err) != Q3N_OK) fail_msg("%s", err.msg);
    float *logits = malloc((size_t)(T * V) * sizeof(float));
    assert_non_null(logits);
    struct q3n_run_options opt;
    q3n_run_options_default(&opt);
    opt.max_tokens = T;
    void *s = NULL;
    if (ref_impl.open(&s, m, &opt, &err) != Q3N_OK) fail_msg("%s", err.msg);
    if (ref_impl.forward(s, logits, tok, P, NULL, &err) != Q3N_OK) fail_msg("%s", err.msg);
    double worst_cache = caches_vs_golden(tf, "/decode/cache/prefill", &m->config, ref_session_cache(s));
    for (int64_t t = P; t < T; t++) {
        if (ref_impl.forward(s, logits + t * V, tok + t, 1, NULL, &err) != Q3N_OK) fail_msg("%s", err.msg);
        char group[64];
        snprintf(group, sizeof group, "/decode/cache/step_%03lld", (long long)(t - P));
        double e = caches_vs_golden(tf, group, &m->config, ref_session_cache(s));
        if (!(e <= worst_cache)) worst_cache = isnan(e) ? INFINITY : e;
    }
    double el = logits_rel_l2(tf, "/decode/logits", logits, T * V);
    printf("%s: prefill %lld + %lld steps: logits rel_l2 %.3g (tol %.0e), worst cache rel_l2 %.3g (tol %.0e); %s\n",
           file, (long long)P, (long long)(T - P), el, LOGITS_TOL, worst_cache, CACHE_TOL, ref_impl.describe(s));
    if (!(el <= LOGITS_TOL)) fail_msg("decode logits rel_l2 %.3g", el);
    if (!(worst_cache <= CACHE_TOL)) fail_msg("decode caches rel_l2 %.3g", worst_cache);
    ref_impl.close(s);
    free(logits);
    free(tok);
    q3n_model_close(m);
    q3n_tensorfile_close(tf);
}

static void decode_golden_matches_logits_and_caches_after_every_step(void **state)
{
    (void)state;
    check_decode_golden("golden/data/tiny_decode.h5");
    check_decode_golden("golden/data/odd_decode.h5"); /* prefill shorter than the conv kernel */
}

/* ---- transformers' delta-rule cases ----------------------------------------------------- */

static ref_real *read_real(struct q3n_tensorfile *tf, const char *group, const char *name, int64_t n)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", group, name);
    struct q3n_error err = {0};
    double *d = malloc((size_t)n * sizeof(double));
    ref_real *r = malloc((size_t)n * sizeof(ref_real));
    assert_true(d && r);
    if (q3n_tensorfile_read(tf, path, Q3N_DTYPE_F64, d, n, NULL, &err) != Q3N_OK) fail_msg("%s", err.msg);
    for (int64_t i = 0; i < n; i++) r[i] = (ref_real)d[i];
    free(d);
    return r;
}

static double rel_vs(struct q3n_tensorfile *tf, const char *group, const char *name, const ref_real *got, int64_t n)
{
    ref_real *want = read_real(tf, group, name, n);
    double e = testkit_rel_l2_real(got, want, n);
    free(want);
    return e;
}

static void delta_rule_forms_match_transformers_cases(void **state)
{
    (void)state;
    const char *file = "golden/data/delta_rule.h5";
    struct q3n_tensorfile *tf = NULL;
    struct q3n_error err = {0};
    if (q3n_tensorfile_open(&tf, file, &err) != Q3N_OK) fail_msg("%s", err.msg);
    double worst_rec = 0.0, worst_chunk = 0.0;
    int cases = 0;
    for (int c = 0;; c++) {
        char group[64], path[96];
        snprintf(group, sizeof group, "/delta_rule/case_%d", c);
        if (!q3n_tensorfile_exists(tf, group)) break;
        int64_t T = 0, C = 0;
        if (q3n_tensorfile_get_attr_i64(tf, group, "T", &T, &err) != Q3N_OK) fail_msg("%s", err.msg);
        if (q3n_tensorfile_get_attr_i64(tf, group, "chunk_size", &C, &err) != Q3N_OK) fail_msg("%s", err.msg);
        struct q3n_tensor_info qi, vi;
        snprintf(path, sizeof path, "%s/q", group);
        if (q3n_tensorfile_info(tf, path, &qi, &err) != Q3N_OK) fail_msg("%s", err.msg);
        snprintf(path, sizeof path, "%s/v", group);
        if (q3n_tensorfile_info(tf, path, &vi, &err) != Q3N_OK) fail_msg("%s", err.msg);
        int64_t NV = qi.dims[1], DK = qi.dims[2], DV = vi.dims[2];
        ref_real *q = read_real(tf, group, "q", T * NV * DK), *k = read_real(tf, group, "k", T * NV * DK);
        ref_real *v = read_real(tf, group, "v", T * NV * DV), *g = read_real(tf, group, "g", T * NV);
        ref_real *beta = read_real(tf, group, "beta", T * NV);
        ref_real *s_rec = read_real(tf, group, "initial_state", NV * DK * DV);
        ref_real *s_chk = read_real(tf, group, "initial_state", NV * DK * DV);
        ref_real *qr = malloc((size_t)(T * NV * DK) * sizeof(ref_real));
        ref_real *o = malloc((size_t)(T * NV * DV) * sizeof(ref_real));
        ref_real *scr = malloc((size_t)ref_delta_rule_chunked_scratch(C, DK, DV) * sizeof(ref_real));
        assert_true(qr && o && scr);
        /* as the model calls them: L2 norm in the function, q scaled per path */
        ref_l2norm_forward(q, q, T * NV, DK, 1e-6);
        ref_l2norm_forward(k, k, T * NV, DK, 1e-6);
        memcpy(qr, q, (size_t)(T * NV * DK) * sizeof(ref_real));
        ref_deltanet_q_scale(qr, T * NV * DK, DK, 1);
        ref_delta_rule_recurrent(o, s_rec, qr, k, v, g, beta, T, NV, NV, DK, DV);
        double e1 = rel_vs(tf, group, "recurrent_out", o, T * NV * DV);
        double e2 = rel_vs(tf, group, "recurrent_state", s_rec, NV * DK * DV);
        ref_deltanet_q_scale(q, T * NV * DK, DK, 0);
        ref_delta_rule_chunked(o, s_chk, q, k, v, g, beta, scr, T, NV, NV, DK, DV, C);
        double e3 = rel_vs(tf, group, "chunked_out", o, T * NV * DV);
        double e4 = rel_vs(tf, group, "chunked_state", s_chk, NV * DK * DV);
        if (verbose())
            printf("  case %d T=%lld C=%lld: recurrent %.3g/%.3g chunked %.3g/%.3g\n", c, (long long)T, (long long)C,
                   e1, e2, e3, e4);
        double er = e1 > e2 ? e1 : e2, ec = e3 > e4 ? e3 : e4;
        if (!(er <= DELTA_TOL && ec <= DELTA_TOL))
            fail_msg("%s case %d T=%lld C=%lld: recurrent rel_l2 %.3g, chunked %.3g > %.0e", file, c, (long long)T,
                     (long long)C, er, ec, DELTA_TOL);
        if (er > worst_rec) worst_rec = er;
        if (ec > worst_chunk) worst_chunk = ec;
        free(q);
        free(k);
        free(v);
        free(g);
        free(beta);
        free(s_rec);
        free(s_chk);
        free(qr);
        free(o);
        free(scr);
        cases++;
    }
    printf("%s: %d cases, worst rel_l2 (output, state): recurrent %.3g, chunked %.3g (tol %.0e)\n", file, cases,
           worst_rec, worst_chunk, DELTA_TOL);
    assert_true(cases > 0);
    q3n_tensorfile_close(tf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tiny_float32_golden_matches),
        cmocka_unit_test(tiny_float64_golden_matches),
        cmocka_unit_test(odd_golden_matches_including_mtp),
        cmocka_unit_test(long_golden_matches_across_chunks),
        cmocka_unit_test(bf16_golden_oracle_logits_match),
        cmocka_unit_test(golden_check_catches_every_planted_bug),
        cmocka_unit_test(decode_golden_matches_logits_and_caches_after_every_step),
        cmocka_unit_test(delta_rule_forms_match_transformers_cases),
    };
    return cmocka_run_group_tests_name("ref_golden", tests, NULL, NULL);
}
