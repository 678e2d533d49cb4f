/* test_bisect.c — precision bisection and layer bisection on the fake implementation. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "baseline.h"
#include "bisect.h"
#include "tensorfile.h"
#include "testfake.h"
#include "testkit.h"

#define WEAK "model.layers.1.linear_attn.out"

struct fixture {
    struct fake_golden g;
    struct q3n_golden_src src;
};

static int setup(void **state)
{
    static struct fixture fx;
    struct q3n_error err;
    if (fake_golden_make(&fx.g, fake_tokens, 6, &err) != Q3N_OK) return -1;
    fx.src = fake_golden_src(&fx.g);
    *state = &fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    fake_golden_free(&fx->g);
    return 0;
}

static struct q3n_tool_run fake_run(struct fixture *fx)
{
    struct q3n_tool_run r;
    memset(&r, 0, sizeof r);
    r.impl = &fake_impl;
    r.tokens = fake_tokens;
    r.T = 6;
    r.V = FK_V;
    r.golden_logits = fx->g.logits;
    r.golden = &fx->src;
    r.emulate_bf16 = 1;
    r.weak_op = WEAK;
    r.weak_bits = 3;
    return r;
}

/* The threshold sits between "everything bf16 but the weak op" and "everything bf16":
 * both numbers come from runs of the code under test. */
static double threshold_between(struct q3n_tool_run *r)
{
    float logits[6 * FK_V];
    double e_all, e_kept;
    struct q3n_error err;
    assert_int_equal(q3n_tool_forward(r, NULL, NULL, 0, logits, &e_all, &err), Q3N_OK);
    struct q3n_intervene_opts o = {.fp32 = WEAK};
    assert_int_equal(q3n_tool_forward(r, &o, NULL, 0, logits, &e_kept, &err), Q3N_OK);
    if (!(e_kept < 0.5 * e_all)) fail_msg("weak op not dominant: kept %g all %g", e_kept, e_all);
    return sqrt(e_kept * e_all);
}

static void bisect_precision_names_the_deliberately_weak_op(void **state)
{
    struct fixture *fx = *state;
    struct q3n_tool_run r = fake_run(fx);
    double max = threshold_between(&r);
    struct q3n_prec_result res;
    struct q3n_error err;
    if (q3n_bisect_precision(&res, &r, max, 0, 1, &err) != Q3N_OK) fail_msg("%s", err.msg);
    assert_true(res.reachable);
    assert_true(res.n_ops > 20);
    assert_false(res.err_all_low <= max);
    assert_true(res.err_all_fp32 == 0.0);
    assert_int_equal(res.n_keep, 1);
    assert_string_equal(res.keep[0].name, WEAK);
    assert_true(res.err_final <= max);
    assert_false(res.keep[0].err_without <= max);
    assert_true(res.keep[0].err_alone > 0);
    assert_true(res.runs < 40); /* bisection, not one run per op */
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    q3n_prec_result_write(f, &res, 0);
    fclose(f);
    assert_non_null(strstr(buf, "fp32 patterns:\n" WEAK "\n"));
    free(buf);
    q3n_prec_result_free(&res);
}

static void bisect_precision_by_kind_names_the_weak_ops_kind(void **state)
{
    struct fixture *fx = *state;
    struct q3n_tool_run r = fake_run(fx);
    double max = threshold_between(&r);
    struct q3n_prec_result res;
    struct q3n_error err;
    if (q3n_bisect_precision(&res, &r, max, 1, 1, &err) != Q3N_OK) fail_msg("%s", err.msg);
    assert_true(res.n_ops < 12);
    assert_int_equal(res.n_keep, 1);
    assert_string_equal(res.keep[0].name, "model.layers.*.linear_attn.out");
    q3n_prec_result_free(&res);
}

static void an_unreachable_threshold_is_reported_not_bisected(void **state)
{
    struct fixture *fx = *state;
    struct q3n_tool_run r = fake_run(fx);
    r.opt.test_bug = "fake_mixer_layer1"; /* a real bug: float32 everywhere does not fix it */
    struct q3n_prec_result res;
    struct q3n_error err;
    if (q3n_bisect_precision(&res, &r, 1e-6, 0, 0, &err) != Q3N_OK) fail_msg("%s", err.msg);
    assert_false(res.reachable);
    assert_false(res.err_all_fp32 <= 1e-6);
    assert_int_equal(res.n_keep, 0);
    q3n_prec_result_free(&res);
    /* an implementation that emits live buffers only to an intervening sink (cuda) is bisected */
    r.opt.test_bug = "fake_live_on_request";
    assert_int_equal(q3n_bisect_precision(&res, &r, 1e-2, 0, 0, &err), Q3N_OK);
    assert_true(res.n_ops > 20);
    q3n_prec_result_free(&res);
    /* and an implementation without live taps cannot be bisected */
    r.opt.test_bug = "fake_not_live";
    assert_int_equal(q3n_bisect_precision(&res, &r, 1e-2, 0, 0, &err), Q3N_ERR_UNSUPPORTED);
}

/* Writes every tap of one fake run (with `bug`) and its logits as a dump. */
static void write_dump(const char *path, const char *bug)
{
    struct fake_golden g;
    memset(&g, 0, sizeof g);
    struct q3n_tap_sink sink = {.fn = fg_record, .user = &g};
    struct q3n_run_options opt;
    memset(&opt, 0, sizeof opt);
    opt.test_bug = bug;
    void *s = NULL;
    struct q3n_error err;
    assert_int_equal(fake_impl.open(&s, NULL, &opt, &err), Q3N_OK);
    assert_int_equal(fake_impl.forward(s, g.logits, fake_tokens, 6, &sink, &err), Q3N_OK);
    fake_impl.close(s);
    struct q3n_tensorfile *tf = NULL;
    if (q3n_tensorfile_create(&tf, path, &err) != Q3N_OK) fail_msg("%s", err.msg);
    for (int i = 0; i < g.n; i++) {
        char ds[Q3N_TAP_NAME_MAX + 16];
        snprintf(ds, sizeof ds, "/tensors/%s", g.taps[i].name);
        int64_t dims[1] = {g.taps[i].numel};
        if (q3n_tensorfile_write(tf, ds, g.taps[i].dtype, 1, dims, g.taps[i].data, &err) != Q3N_OK)
            fail_msg("%s", err.msg);
    }
    int64_t ld[2] = {6, FK_V};
    assert_int_equal(q3n_tensorfile_write(tf, "/logits", Q3N_DTYPE_F32, 2, ld, g.logits, &err), Q3N_OK);
    if (q3n_tensorfile_commit(tf, &err) != Q3N_OK) fail_msg("%s", err.msg);
    fake_golden_free(&g);
}

static void bisect_layers_names_the_first_diverging_tap_and_where_error_grows(void **state)
{
    (void)state;
    char dir[] = "/tmp/q3n_test_bisect_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char a[256], b[256];
    snprintf(a, sizeof a, "%s/a.h5", dir);
    snprintf(b, sizeof b, "%s/b.h5", dir);
    write_dump(a, "fake_mixer_layer1");
    write_dump(b, NULL);
    struct q3n_tensorfile *ta = NULL, *tb = NULL;
    struct q3n_error err;
    assert_int_equal(q3n_tensorfile_open(&ta, a, &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_open(&tb, b, &err), Q3N_OK);
    struct q3n_layer_bisect res;
    if (q3n_bisect_layers(&res, ta, tb, 0, &err) != Q3N_OK) fail_msg("%s", err.msg);
    assert_true(res.n > 20);
    assert_int_equal(res.only_a + res.only_b + res.shape_mismatch, 0);
    assert_true(res.first_diverging >= 0);
    assert_string_equal(res.taps[res.first_diverging].name, WEAK);
    assert_true(res.n_ranked > 1);
    assert_string_equal(res.taps[res.rank[0]].name, WEAK);
    assert_true(res.logits_rel_l2 > 0);
    q3n_layer_bisect_free(&res);
    /* identical dumps: nothing diverges */
    if (q3n_bisect_layers(&res, tb, tb, 0, &err) != Q3N_OK) fail_msg("%s", err.msg);
    assert_int_equal(res.first_diverging, -1);
    assert_true(res.logits_rel_l2 == 0.0);
    q3n_layer_bisect_free(&res);
    q3n_tensorfile_close(ta);
    q3n_tensorfile_close(tb);
    unlink(a);
    unlink(b);
    rmdir(dir);
}

static void add_tensor(struct q3n_result *r, const char *name, double rel_l2, double noise, enum q3n_verdict v)
{
    struct q3n_tensor_result *t;
    struct q3n_error err;
    assert_int_equal(q3n_result_add(r, name, &t, &err), Q3N_OK);
    t->m.rel_l2 = rel_l2;
    t->noise_rel_l2 = noise;
    t->verdict = v;
    t->tol.kind = Q3N_KIND_FLOAT;
}

static void baseline_fails_slow_drift_inside_the_tolerance_but_not_noise(void **state)
{
    (void)state;
    struct q3n_result *o, *n;
    struct q3n_error err;
    assert_int_equal(q3n_result_create(&o, &err), Q3N_OK);
    assert_int_equal(q3n_result_create(&n, &err), Q3N_OK);
    /* a: drifts x3 while passing; b: grows x4 below the noise floor; c: stable; d: disappears */
    add_tensor(o, "a", 1e-5, 1e-7, Q3N_VERDICT_PASS);
    add_tensor(n, "a", 3e-5, 1e-7, Q3N_VERDICT_PASS);
    add_tensor(o, "b", 2e-8, 1e-7, Q3N_VERDICT_PASS);
    add_tensor(n, "b", 8e-8, 1e-7, Q3N_VERDICT_PASS);
    add_tensor(o, "c", 2e-6, NAN, Q3N_VERDICT_PASS);
    add_tensor(n, "c", 2.5e-6, NAN, Q3N_VERDICT_PASS);
    add_tensor(o, "d", 2e-6, NAN, Q3N_VERDICT_PASS);
    struct q3n_drift_report rep;
    assert_int_equal(q3n_baseline_compare(&rep, o, n, 2.0, 1e-9, &err), Q3N_OK);
    assert_int_equal(rep.n, 4);
    assert_true(rep.items[0].fail && fabs(rep.items[0].growth - 3.0) < 1e-9);
    assert_false(rep.items[1].fail);
    assert_false(rep.items[2].fail);
    assert_true(rep.items[3].fail && rep.items[3].missing);
    assert_int_equal(rep.n_fail, 2);
    assert_int_equal(rep.worst, 0);
    q3n_drift_report_free(&rep);
    /* a result against itself never drifts */
    assert_int_equal(q3n_baseline_compare(&rep, o, o, 1.0, 1e-9, &err), Q3N_OK);
    assert_int_equal(rep.n_fail, 0);
    q3n_drift_report_free(&rep);
    assert_int_equal(q3n_baseline_compare(&rep, o, n, 0.5, 1e-9, &err), Q3N_ERR_USAGE);
    q3n_result_free(o);
    q3n_result_free(n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bisect_precision_names_the_deliberately_weak_op),
        cmocka_unit_test(bisect_precision_by_kind_names_the_weak_ops_kind),
        cmocka_unit_test(an_unreachable_threshold_is_reported_not_bisected),
        cmocka_unit_test(bisect_layers_names_the_first_diverging_tap_and_where_error_grows),
        cmocka_unit_test(baseline_fails_slow_drift_inside_the_tolerance_but_not_noise),
    };
    return cmocka_run_group_tests_name("harness_bisect", tests, setup, teardown);
}
