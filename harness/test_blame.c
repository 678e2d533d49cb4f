/* test_blame.c — blame by intervention and routing analysis on the fake implementation. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blame.h"
#include "calibrate.h"
#include "policy.h"
#include "testfake.h"
#include "testkit.h"

struct fixture {
    struct fake_golden g;
    struct q3n_golden_src src;
    struct q3n_tool_run run;
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

static struct q3n_tool_run fake_run(struct fixture *fx, const char *bug)
{
    struct q3n_tool_run r;
    memset(&r, 0, sizeof r);
    r.impl = &fake_impl;
    r.opt.test_bug = bug;
    r.tokens = fake_tokens;
    r.T = 6;
    r.V = FK_V;
    r.golden_logits = fx->g.logits;
    r.golden = &fx->src;
    return r;
}

static void blame_ranks_the_layer_with_the_planted_bug_first(void **state)
{
    struct fixture *fx = *state;
    struct q3n_tool_run r = fake_run(fx, "fake_mixer_layer1");
    struct q3n_blame_result res;
    struct q3n_error err;
    if (q3n_blame_run(&res, &r, FK_L, 0, 0, &err) != Q3N_OK) fail_msg("%s", err.msg);
    assert_int_equal(res.n_layers, FK_L);
    assert_int_equal(res.replaced_missing, 0);
    assert_true(res.e0 > 1e-4);
    assert_int_equal(res.layers[res.rank[0]].layer, 1);
    /* layer 2 is clean, so replacing layer 1's output removes the whole error */
    assert_true(res.layers[1].err_after == 0.0);
    assert_true(fabs(res.layers[1].share - 1.0) < 1e-12);
    assert_true(res.layers[0].own == 0.0 && res.layers[2].own == 0.0);
    q3n_blame_free(&res);
}

/* The case blame exists for: no layer is wrong, but one op is slightly less precise than the
 * rest under bf16; blame still ranks its layer first. */
static void blame_ranks_a_weak_op_layer_first_under_emulated_bf16(void **state)
{
    struct fixture *fx = *state;
    struct q3n_tool_run r = fake_run(fx, NULL);
    r.emulate_bf16 = 1;
    r.weak_op = "model.layers.2.linear_attn.out";
    struct q3n_blame_result res;
    struct q3n_error err;
    if (q3n_blame_run(&res, &r, FK_L, 0, 0, &err) != Q3N_OK) fail_msg("%s", err.msg);
    assert_int_equal(res.layers[res.rank[0]].layer, 2);
    assert_true(res.layers[2].share > 0.5);
    q3n_blame_free(&res);
}

static void forcing_the_golden_routing_removes_a_flips_error(void **state)
{
    struct fixture *fx = *state;
    struct q3n_tool_run r = fake_run(fx, "fake_flip_layer0");
    struct q3n_blame_result res;
    struct q3n_error err;
    if (q3n_blame_run(&res, &r, FK_L, 1, 8, &err) != Q3N_OK) fail_msg("%s", err.msg);
    assert_true(res.routing_checked);
    assert_int_equal(res.n_flips, 1);
    assert_string_equal(res.flips[0].flip.prefix, "model.layers.0");
    assert_int_equal(res.flips[0].flip.token, 0);
    assert_true(res.e0 > 1e-4);
    assert_true(res.err_forced_all == 0.0);
    assert_true(res.flips[0].removed == res.e0);
    assert_int_equal(res.layers[res.rank[0]].layer, 0);
    q3n_blame_free(&res);

    /* a wrong kernel, not routing: forcing routing leaves the error in place */
    r = fake_run(fx, "fake_mixer_layer1");
    memset(&res, 0, sizeof res);
    if (q3n_routing_analyze(&res, &r, 8, &err) != Q3N_OK) fail_msg("%s", err.msg);
    assert_true(res.e0 > 1e-4);
    /* no flips at all here, so nothing to force */
    assert_int_equal(res.n_flips, 0);
    assert_true(isnan(res.err_forced_all));
    q3n_blame_free(&res);
}

static void reports_list_the_culprit_first_in_every_format(void **state)
{
    struct fixture *fx = *state;
    struct q3n_tool_run r = fake_run(fx, "fake_mixer_layer1");
    struct q3n_blame_result res;
    struct q3n_error err;
    if (q3n_blame_run(&res, &r, FK_L, 1, 4, &err) != Q3N_OK) fail_msg("%s", err.msg);
    const char *formats[] = {"text", "md", "html"};
    for (int i = 0; i < 3; i++) {
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        assert_non_null(f);
        assert_int_equal(q3n_blame_write(f, &res, formats[i], "fake.h5", &err), Q3N_OK);
        fclose(f);
        char *l1 = strstr(buf, "model.layers.1"), *l0 = strstr(buf, "model.layers.0");
        if (!l1 || !l0 || !(l1 < l0)) fail_msg("%s report does not rank layer 1 first:\n%s", formats[i], buf);
        if (i > 0) assert_non_null(strstr(buf, "<svg"));
        free(buf);
    }
    FILE *devnull = fopen("/dev/null", "w");
    assert_int_equal(q3n_blame_write(devnull, &res, "pdf", "fake.h5", &err), Q3N_ERR_USAGE);
    fclose(devnull);
    q3n_blame_free(&res);
}

static void isolation_names_the_wrong_module_and_keeps_both_errors(void **state)
{
    struct fixture *fx = *state;
    struct q3n_tool_run r = fake_run(fx, "fake_mixer_layer1");
    struct q3n_isolation iso;
    struct q3n_error err;
    if (q3n_isolation_run(&iso, &r, &err) != Q3N_OK) fail_msg("%s", err.msg);
    assert_true(iso.worst >= 0);
    assert_string_equal(iso.rows[iso.worst].name, "model.layers.1.linear_attn.out");
    assert_int_equal(iso.not_live, 0);
    int later = 0;
    for (size_t i = (size_t)iso.worst + 1; i < iso.n; i++) {
        assert_true(iso.rows[i].isolated == 0.0); /* ran on golden inputs */
        later += iso.rows[i].chained > 0;           /* the chained run carries the error on */
    }
    assert_true(later > 5);
    assert_true(iso.logits_isolated == 0.0 && iso.logits_chained > 1e-4);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_int_equal(q3n_isolation_write(f, &iso, "html", 0, &err), Q3N_OK);
    fclose(f);
    assert_non_null(strstr(buf, "<polyline"));
    free(buf);
    q3n_isolation_free(&iso);
}

static void calibrated_policy_parses_and_reproduces_itself_but_not_a_loose_one(void **state)
{
    struct fixture *fx = *state;
    struct q3n_calib c;
    struct q3n_error err;
    q3n_calib_init(&c, 1.0, 10.0, 0.1);
    /* benign variants of the fake: bf16 rounding of one op at a time, against the golden */
    const char *ops[] = {"model.layers.0.linear_attn.out", "model.layers.1.mlp.out", "model.layers.2.out"};
    for (int i = 0; i < 3; i++) {
        struct q3n_tool_run r = fake_run(fx, NULL);
        r.weak_op = ops[i];
        r.weak_bits = 20;
        assert_int_equal(q3n_calib_add_run(&c, &r, ops[i], &err), Q3N_OK);
    }
    assert_int_equal(c.runs, 3);
    assert_string_equal(c.pools[0].kind, "*");
    double qr, qm, tr, tt;
    q3n_calib_pool_numbers(&c, &c.pools[0], &qr, &qm, &tr, &tt);
    assert_true(qr > 0 && tr >= 2 * qr * 10 && tr <= 2 * 2.5 * qr * 10); /* a 1-2-5 step above */
    assert_true(q3n_step125(3.1e-5) == 5e-5 && q3n_step125(1e-4) == 1e-4 && q3n_step125(1.1e-4) == 2e-4);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    q3n_calib_write_policy(f, &c, "test provenance", 1);
    fclose(f);
    assert_non_null(strstr(buf, "# test provenance"));
    struct q3n_policy *pol = NULL;
    if (q3n_policy_parse(&pol, buf, len, "calibrated", &err) != Q3N_OK) fail_msg("%s\n%s", err.msg, buf);
    int ok = 0;
    FILE *devnull = fopen("/dev/null", "w");
    assert_int_equal(q3n_calib_check(devnull, &c, pol, 1, &ok, &err), Q3N_OK);
    assert_true(ok);
    q3n_policy_free(pol);
    /* a committed policy 100x looser than the evidence is not reproduced */
    char loose[256];
    snprintf(loose, sizeof loose, "* float32 rtol=%g atol=0 small=0.1 rel_l2=%g\n", tt, tr * 100);
    assert_int_equal(q3n_policy_parse(&pol, loose, strlen(loose), "loose", &err), Q3N_OK);
    assert_int_equal(q3n_calib_check(devnull, &c, pol, 0, &ok, &err), Q3N_OK);
    assert_false(ok);
    fclose(devnull);
    q3n_policy_free(pol);
    free(buf);
    q3n_calib_free(&c);
}

static void routing_is_forced_through_run_options_when_topk_taps_are_not_live(void **state)
{
    struct fixture *fx = *state;
    /* the golden's routing as run_options.forced_routing, from the in-memory golden */
    const int64_t *idx[FK_L];
    const float *w[FK_L];
    for (int l = 0; l < FK_L; l++) {
        char ni[64], nw[64];
        snprintf(ni, sizeof ni, "model.layers.%d.mlp.gate.topk_idx", l);
        snprintf(nw, sizeof nw, "model.layers.%d.mlp.gate.topk_weight", l);
        idx[l] = fg_find(&fx->g, ni)->data;
        w[l] = fg_find(&fx->g, nw)->data;
    }
    struct q3n_forced_routing fr = {.topk_idx = idx, .topk_weight = w, .tokens = 6};
    struct q3n_tool_run r = fake_run(fx, "fake_flip_layer0");
    r.golden_routing = &fr;
    struct q3n_blame_result res;
    memset(&res, 0, sizeof res);
    struct q3n_error err;
    /* live taps: the sink forces, options untouched */
    assert_int_equal(q3n_routing_analyze(&res, &r, 4, &err), Q3N_OK);
    assert_true(res.forced_applied > 0 && !res.forced_by_options);
    q3n_blame_free(&res);
    /* the same flip with taps that are not live */
    r.opt.test_bug = "fake_flip_layer0,fake_not_live";
    memset(&res, 0, sizeof res);
    assert_int_equal(q3n_routing_analyze(&res, &r, 4, &err), Q3N_OK);
    assert_int_equal(res.n_flips, 1);
    assert_int_equal(res.forced_applied, 0);
    assert_true(res.forced_by_options);
    assert_true(res.e0 > 1e-4 && res.err_forced_all == 0.0);
    q3n_blame_free(&res);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(blame_ranks_the_layer_with_the_planted_bug_first),
        cmocka_unit_test(blame_ranks_a_weak_op_layer_first_under_emulated_bf16),
        cmocka_unit_test(forcing_the_golden_routing_removes_a_flips_error),
        cmocka_unit_test(reports_list_the_culprit_first_in_every_format),
        cmocka_unit_test(isolation_names_the_wrong_module_and_keeps_both_errors),
        cmocka_unit_test(calibrated_policy_parses_and_reproduces_itself_but_not_a_loose_one),
        cmocka_unit_test(routing_is_forced_through_run_options_when_topk_taps_are_not_live),
    };
    return cmocka_run_group_tests_name("harness_blame", tests, setup, teardown);
}
