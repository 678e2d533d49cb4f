/* test_report.c — every report format names the first divergence and the NaN origin, JSON
 * round-trips, JUnit has one testcase per tensor, HTML carries its SVG plot, text honours
 * --quiet (harness/report_*.c, harness/result.c). Results are built in memory with metrics
 * computed by compare.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compare.h"
#include "report.h"
#include "result.h"
#include "rng.h"
#include "testkit.h"

enum { T = 6, D = 8, N = T * D };

static void add_tensor(struct q3n_result *r, const char *name, double noise, int nan_at)
{
    struct q3n_tensor_result *t;
    struct q3n_error err;
    assert_int_equal(q3n_result_add(r, name, &t, &err), Q3N_OK);
    t->rank = 2;
    t->dims[0] = T;
    t->dims[1] = D;
    snprintf(t->dtype_a, sizeof t->dtype_a, "float32");
    snprintf(t->dtype_b, sizeof t->dtype_b, "float32");
    t->tol.kind = Q3N_KIND_FLOAT;
    t->tol.rtol = 1e-3;
    t->tol.atol = 1e-4;
    t->tol.small = 1e-2;
    t->tol.rel_l2 = 1e-4;
    t->tol.line = 3;
    t->noise_rel_l2 = 1e-7;
    double a[N], b[N];
    struct q3n_rng g;
    q3n_rng_seed(&g, (uint64_t)r->n_tensors);
    for (int i = 0; i < N; i++) {
        b[i] = q3n_rng_normal(&g);
        a[i] = b[i] * (1 + noise * q3n_rng_normal(&g));
    }
    if (nan_at >= 0) a[nan_at] = NAN;
    q3n_compare_f64(&t->m, a, b, N, &t->tol, Q3N_ULP_F32);
    t->verdict = q3n_judge_metrics(&t->m, &t->tol, 0, &t->headroom_pct) ? Q3N_VERDICT_PASS : Q3N_VERDICT_FAIL;
}

static struct q3n_result *make_result(int with_nan)
{
    struct q3n_result *r;
    struct q3n_error err;
    assert_int_equal(q3n_result_create(&r, &err), Q3N_OK);
    snprintf(r->command, sizeof r->command, "verify");
    snprintf(r->impl, sizeof r->impl, "ref");
    snprintf(r->kernels, sizeof r->kernels, "deltanet=chunked(C=64) attn=naive");
    snprintf(r->dtype, sizeof r->dtype, "float32");
    snprintf(r->policy_path, sizeof r->policy_path, "harness/policy/default.policy");
    snprintf(r->golden_path, sizeof r->golden_path, "golden/data/tiny.h5");
    snprintf(r->golden_transformers, sizeof r->golden_transformers, "5.17.0");
    add_tensor(r, "model.embed_tokens.out", 1e-7, -1);
    add_tensor(r, "model.layers.0.input_layernorm.out", 1e-7, -1);
    add_tensor(r, "model.layers.0.linear_attn.out", 1e-7, -1);
    add_tensor(r, "model.layers.0.mlp.out", 1e-1, with_nan ? 13 : -1); /* the broken one */
    add_tensor(r, "model.layers.0.out", 1e-1, -1);
    add_tensor(r, "model.layers.1.input_layernorm.out", 1e-1, -1);
    struct q3n_tensor_result *t;
    assert_int_equal(q3n_result_add(r, "model.layers.1.mlp.gate.topk_idx", &t, &err), Q3N_OK);
    t->rank = 2;
    t->dims[0] = T;
    t->dims[1] = 2;
    t->tol.kind = Q3N_KIND_TOPK;
    t->tol.margin = 1e-3;
    q3n_topk_init(&t->topk, 2);
    t->topk.flipped_tokens = t->topk.near_tie_tokens = 1;
    t->topk.first_flip_token = 4;
    t->topk.max_near_tie_margin = 2e-4;
    t->verdict = Q3N_VERDICT_REPORTED;
    snprintf(t->note, sizeof t->note, "1 tokens flipped at a near-tie");
    assert_int_equal(q3n_result_add_only(r, 0, "model.layers.1.linear_attn.final_state", &err), Q3N_OK);
    q3n_result_finalize(r);
    return r;
}

static char *render(const struct q3n_result *r, enum q3n_report_format fmt, int quiet)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    struct q3n_report_options o = {.quiet = quiet};
    struct q3n_error err = {0};
    enum q3n_status st = q3n_report_write(f, r, fmt, &o, &err);
    fclose(f);
    if (st != Q3N_OK) fail_msg("report: %s", err.msg);
    return buf;
}

static void the_first_failing_tensor_is_the_first_divergence(void **state)
{
    (void)state;
    struct q3n_result *r = make_result(0);
    assert_true(r->first_divergence >= 0);
    assert_string_equal(r->tensors[r->first_divergence].name, "model.layers.0.mlp.out");
    assert_int_equal(r->nan_origin, -1);
    assert_int_equal(q3n_result_exit_code(r), 1);
    q3n_result_free(r);
}

static void every_format_names_the_first_divergence(void **state)
{
    (void)state;
    struct q3n_result *r = make_result(0);
    static const struct {
        enum q3n_report_format fmt;
        const char *marker;
    } f[] = {
        {Q3N_REPORT_TEXT, "first divergence: model.layers.0.mlp.out"},
        {Q3N_REPORT_MD, "### First divergence: `model.layers.0.mlp.out`"},
        {Q3N_REPORT_HTML, "first divergence: model.layers.0.mlp.out"},
        {Q3N_REPORT_JUNIT, "<property name=\"first_divergence\" value=\"model.layers.0.mlp.out\"/>"},
        {Q3N_REPORT_JSON, "\"first_divergence\":\t\"model.layers.0.mlp.out\""},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        char *s = render(r, f[i].fmt, 0);
        if (!strstr(s, f[i].marker)) fail_msg("format %zu lacks '%s':\n%s", i, f[i].marker, s);
        free(s);
    }
    q3n_result_free(r);
}

static void every_format_names_the_nan_origin(void **state)
{
    (void)state;
    struct q3n_result *r = make_result(1);
    assert_true(r->nan_origin >= 0);
    assert_string_equal(r->tensors[r->nan_origin].name, "model.layers.0.mlp.out");
    static const struct {
        enum q3n_report_format fmt;
        const char *marker;
    } f[] = {
        {Q3N_REPORT_TEXT, "NaN/Inf origin: model.layers.0.mlp.out (first non-finite at t=1 c=5"},
        {Q3N_REPORT_MD, "### NaN/Inf origin: `model.layers.0.mlp.out`"},
        {Q3N_REPORT_HTML, "NaN/Inf origin: <code>model.layers.0.mlp.out</code>"},
        {Q3N_REPORT_JUNIT, "<property name=\"nan_origin\" value=\"model.layers.0.mlp.out\"/>"},
        {Q3N_REPORT_JSON, "\"nan_origin\":\t\"model.layers.0.mlp.out\""},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        char *s = render(r, f[i].fmt, 0);
        if (!strstr(s, f[i].marker)) fail_msg("format %zu lacks '%s':\n%s", i, f[i].marker, s);
        free(s);
    }
    q3n_result_free(r);
}

static void json_round_trips_through_the_result_model(void **state)
{
    (void)state;
    struct q3n_result *r = make_result(1), *back = NULL;
    char *one = render(r, Q3N_REPORT_JSON, 0);
    struct q3n_error err = {0};
    if (q3n_result_parse_json(&back, one, "mem", &err) != Q3N_OK) fail_msg("%s", err.msg);
    char *two = render(back, Q3N_REPORT_JSON, 0);
    assert_string_equal(one, two);
    assert_int_equal(back->n_tensors, r->n_tensors);
    assert_int_equal(back->first_divergence, r->first_divergence);
    assert_int_equal(back->n_only_b, 1);
    assert_true(isnan(back->tensors[0].m.ulp_max) == isnan(r->tensors[0].m.ulp_max));
    assert_true(back->tensors[3].m.rel_l2 == r->tensors[3].m.rel_l2);
    /* the text report of the reloaded result is the same as the original's */
    char *t1 = render(r, Q3N_REPORT_TEXT, 0), *t2 = render(back, Q3N_REPORT_TEXT, 0);
    assert_string_equal(t1, t2);
    free(t1);
    free(t2);
    free(one);
    free(two);
    q3n_result_free(r);
    q3n_result_free(back);
}

static void json_of_another_schema_or_version_is_refused(void **state)
{
    (void)state;
    struct q3n_result *r = NULL;
    struct q3n_error err = {0};
    assert_int_equal(q3n_result_parse_json(&r, "{\"schema\":\"other\"}", "x.json", &err), Q3N_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "x.json"));
    assert_int_equal(q3n_result_parse_json(&r, "{\"schema\":\"q3n-result\",\"schema_version\":99}", "x.json", &err),
                     Q3N_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "schema_version 99"));
    assert_int_equal(q3n_result_parse_json(&r, "{not json", "x.json", &err), Q3N_ERR_FORMAT);
    assert_null(r);
}

static int count(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(s, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

static void junit_has_one_testcase_per_tensor_and_failures_for_failing_ones(void **state)
{
    (void)state;
    struct q3n_result *r = make_result(0);
    char *s = render(r, Q3N_REPORT_JUNIT, 0);
    int64_t c[6];
    q3n_result_counts(r, c);
    assert_int_equal(count(s, "<testcase "), (int)r->n_tensors);
    assert_int_equal(count(s, "<failure "), (int)c[Q3N_VERDICT_FAIL]);
    assert_true(c[Q3N_VERDICT_FAIL] >= 1);
    assert_non_null(strstr(s, "<failure message=\"FIRST DIVERGENCE: "));
    assert_non_null(strstr(s, "only in reference: model.layers.1.linear_attn.final_state"));
    free(s);
    q3n_result_free(r);
}

static void html_is_self_contained_with_the_error_plot(void **state)
{
    (void)state;
    struct q3n_result *r = make_result(0);
    char *s = render(r, Q3N_REPORT_HTML, 0);
    assert_non_null(strstr(s, "<svg "));
    assert_non_null(strstr(s, "stroke-dasharray=\"5,3\" points=\"")); /* the tolerance line */
    assert_non_null(strstr(s, ">L0<"));                              /* layer bands */
    assert_null(strstr(s, "<script"));
    assert_null(strstr(s, "src="));
    assert_null(strstr(s, "href="));
    assert_int_equal(count(s, "<circle cx="), 6 + 6 + 2); /* 6 points, 6 noise dots, 2 in the legend */
    free(s);
    q3n_result_free(r);
}

static void quiet_text_prints_the_summary_only(void **state)
{
    (void)state;
    struct q3n_result *r = make_result(0);
    char *loud = render(r, Q3N_REPORT_TEXT, 0), *quiet = render(r, Q3N_REPORT_TEXT, 1);
    assert_non_null(strstr(loud, "implementation: ref"));
    assert_null(strstr(quiet, "implementation: ref"));
    assert_null(strstr(quiet, "\npass "));        /* no per-tensor lines */
    assert_null(strstr(quiet, "error growth")); /* no growth table */
    assert_non_null(strstr(quiet, "FAIL: 3 of 7 tensors failed"));
    assert_non_null(strstr(quiet, "first divergence: model.layers.0.mlp.out"));
    free(loud);
    free(quiet);
    q3n_result_free(r);
}

static void markdown_tables_escape_pipes(void **state)
{
    (void)state;
    struct q3n_result *r = make_result(0);
    snprintf(r->tensors[3].note, sizeof r->tensors[3].note, "a|b");
    char *s = render(r, Q3N_REPORT_MD, 0);
    assert_non_null(strstr(s, "a\\|b"));
    free(s);
    q3n_result_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(the_first_failing_tensor_is_the_first_divergence),
        cmocka_unit_test(every_format_names_the_first_divergence),
        cmocka_unit_test(every_format_names_the_nan_origin),
        cmocka_unit_test(json_round_trips_through_the_result_model),
        cmocka_unit_test(json_of_another_schema_or_version_is_refused),
        cmocka_unit_test(junit_has_one_testcase_per_tensor_and_failures_for_failing_ones),
        cmocka_unit_test(html_is_self_contained_with_the_error_plot),
        cmocka_unit_test(quiet_text_prints_the_summary_only),
        cmocka_unit_test(markdown_tables_escape_pipes),
    };
    return cmocka_run_group_tests_name("harness_report", tests, NULL, NULL);
}
