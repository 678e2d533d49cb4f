/* test_intervene.c — the intervening sinks on a tiny fake implementation (harness/testfake.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "determinism.h"
#include "intervene.h"
#include "rng.h"
#include "testfake.h"
#include "testkit.h"

static void globs_match_module_paths_and_pattern_lists(void **state)
{
    (void)state;
    assert_true(q3n_glob_match("model.layers.*.mlp*", "model.layers.3.mlp.gate.logits"));
    assert_true(q3n_glob_match("model.layers.?.out", "model.layers.3.out"));
    assert_false(q3n_glob_match("model.layers.?.out", "model.layers.13.out"));
    assert_false(q3n_glob_match("model.layers.*.mlp", "model.layers.3.mlp.out"));
    assert_true(q3n_glob_match("*", ""));
    assert_true(q3n_patterns_match("# comment\nfoo.*, model.layers.*.out\n", "model.layers.0.out"));
    assert_false(q3n_patterns_match("# model.layers.*.out\nfoo", "model.layers.0.out"));
    assert_false(q3n_patterns_match(NULL, "x"));
    assert_false(q3n_patterns_match("", "x"));
}

/* Property: the bf16 rounding returns one of the two bf16 neighbours of x, the nearer one,
 * and on an exact tie the one with an even last mantissa bit. */
static void bf16_rounding_is_round_to_nearest_even(void **state)
{
    (void)state;
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 7);
    int ties = 0;
    for (int i = 0; i < 200000; i++) {
        uint32_t u = (uint32_t)q3n_rng_u64(&rng);
        if (i % 4 == 0) u = (u & 0xffff0000u) | 0x8000u; /* force exact ties often */
        float x;
        memcpy(&x, &u, 4);
        if (isnan(x) || isinf(x)) continue;
        uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u; /* truncation and next (same sign) */
        float flo, fhi;
        memcpy(&flo, &lo, 4);
        memcpy(&fhi, &hi, 4);
        float y = q3n_round_mantissa_f32(x, Q3N_BF16_MANT_BITS);
        double dlo = fabs((double)x - (double)flo), dhi = fabs((double)fhi - (double)x);
        if (isinf(fhi)) dhi = ldexp(1.0, 128) - fabs((double)x); /* rounding up past the max gives Inf */
        float want = dlo < dhi ? flo : dhi < dlo ? fhi : (((lo >> 16) & 1u) ? fhi : flo);
        if ((u & 0xffffu) == 0x8000u) ties++;
        if (memcmp(&y, &want, 4) != 0) fail_msg("bits %08x: got %a want %a", u, (double)y, (double)want);
        double yd = q3n_round_mantissa_f64((double)x, Q3N_BF16_MANT_BITS);
        if (!isinf(yd) && yd != (double)y) fail_msg("f64 path %a != f32 path %a", yd, (double)y);
    }
    assert_true(ties > 1000);
}

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

/* Runs the fake with `bug` under the sink configured by opts; logits out. */
static void run_fake(float *logits, const char *bug, struct q3n_intervene *iv)
{
    struct q3n_run_options opt;
    memset(&opt, 0, sizeof opt);
    opt.test_bug = bug;
    void *s = NULL;
    struct q3n_error err;
    assert_int_equal(fake_impl.open(&s, NULL, &opt, &err), Q3N_OK);
    struct q3n_tap_sink sink = q3n_intervene_sink(iv);
    enum q3n_status st = fake_impl.forward(s, logits, fake_tokens, 6, &sink, &err);
    fake_impl.close(s);
    if (st != Q3N_OK) fail_msg("forward: %s", err.msg);
}

static void isolated_mode_confines_the_error_to_the_wrong_op(void **state)
{
    struct fixture *fx = *state;
    float logits[6 * FK_V];
    struct q3n_intervene_opts o = {.golden = &fx->src, .record = 1, .isolate = 1};
    struct q3n_intervene iv;
    q3n_intervene_init(&iv, &o);
    run_fake(logits, "fake_mixer_layer1", &iv);
    int wrong = 0;
    for (size_t i = 0; i < iv.n_records; i++) {
        const struct q3n_tap_record *r = &iv.records[i];
        assert_true(r->in_golden && r->live);
        if (strcmp(r->name, "model.layers.1.linear_attn.out") == 0) {
            assert_true(r->rel_l2 > 1e-3);
            wrong++;
        } else if (!(r->rel_l2 == 0.0)) {
            fail_msg("%s: isolated rel_l2 %g, want 0 (it ran on golden inputs)", r->name, r->rel_l2);
        }
    }
    assert_int_equal(wrong, 1);
    assert_int_equal(iv.n_replaced, (int64_t)iv.n_records);
    /* the replacement of the wrong op's output makes the final logits the golden's */
    assert_memory_equal(logits, fx->g.logits, sizeof logits);

    /* chained (record only): the error spreads to every later tap */
    struct q3n_intervene_opts oc = {.golden = &fx->src, .record = 1};
    struct q3n_intervene ch;
    q3n_intervene_init(&ch, &oc);
    run_fake(logits, "fake_mixer_layer1", &ch);
    assert_int_equal(ch.n_replaced, 0);
    const struct q3n_tap_record *r2 = q3n_intervene_find(&ch, "model.layers.2.out");
    assert_non_null(r2);
    assert_true(r2->rel_l2 > 1e-4);
    assert_true(q3n_rel_l2_f32(logits, fx->g.logits, 6 * FK_V) > 1e-4);
    q3n_intervene_free(&ch);
    q3n_intervene_free(&iv);
}

static void taps_without_a_writable_buffer_are_never_replaced(void **state)
{
    struct fixture *fx = *state;
    float logits[6 * FK_V];
    struct q3n_intervene_opts o = {.golden = &fx->src, .record = 1, .isolate = 1, .emulate_bf16 = 1};
    struct q3n_intervene iv;
    q3n_intervene_init(&iv, &o);
    run_fake(logits, "fake_not_live", &iv);
    assert_int_equal(iv.n_replaced, 0);
    assert_int_equal(iv.n_rounded, 0);
    for (size_t i = 0; i < iv.n_records; i++) assert_false(iv.records[i].live);
    q3n_intervene_free(&iv);
}

static void replacing_one_layer_output_removes_that_layers_error(void **state)
{
    struct fixture *fx = *state;
    float logits[6 * FK_V];
    struct q3n_intervene_opts o = {.golden = &fx->src, .replace = "model.layers.1.out"};
    struct q3n_intervene iv;
    q3n_intervene_init(&iv, &o);
    run_fake(logits, "fake_mixer_layer1", &iv);
    assert_int_equal(iv.n_replaced, 1);
    assert_memory_equal(logits, fx->g.logits, sizeof logits);
    /* replacing layer 0 instead leaves the error of layer 1 in place */
    struct q3n_intervene_opts o0 = {.golden = &fx->src, .replace = "model.layers.0.out"};
    struct q3n_intervene iv0;
    q3n_intervene_init(&iv0, &o0);
    run_fake(logits, "fake_mixer_layer1", &iv0);
    assert_true(q3n_rel_l2_f32(logits, fx->g.logits, 6 * FK_V) > 1e-4);
    q3n_intervene_free(&iv0);
    q3n_intervene_free(&iv);
}

static void forced_routing_removes_a_flips_error_and_logs_the_flip(void **state)
{
    struct fixture *fx = *state;
    float logits[6 * FK_V];
    struct q3n_intervene_opts o = {.golden = &fx->src, .detect_flips = 1};
    struct q3n_intervene iv;
    q3n_intervene_init(&iv, &o);
    run_fake(logits, "fake_flip_layer0", &iv);
    assert_int_equal(iv.n_flips, 1);
    assert_string_equal(iv.flips[0].prefix, "model.layers.0");
    assert_int_equal(iv.flips[0].layer, 0);
    assert_int_equal(iv.flips[0].token, 0);
    assert_int_equal(iv.flips[0].n_differ, 1);
    assert_true(iv.flips[0].margin > 0.0);
    assert_true(q3n_rel_l2_f32(logits, fx->g.logits, 6 * FK_V) > 1e-4);

    /* forcing only that (layer, token) brings the golden's logits back bit for bit */
    struct q3n_intervene_opts of = {.golden = &fx->src, .force_routing = 1, .force_prefix = "model.layers.0",
                                    .force_single_token = 1, .force_token = 0, .detect_flips = 1};
    struct q3n_intervene fv;
    q3n_intervene_init(&fv, &of);
    run_fake(logits, "fake_flip_layer0", &fv);
    assert_int_equal(fv.n_replaced, 2); /* topk_idx and topk_weight of layer 0 */
    assert_memory_equal(logits, fx->g.logits, sizeof logits);
    /* forcing another token does not */
    struct q3n_intervene_opts ow = of;
    ow.force_token = 1;
    struct q3n_intervene wv;
    q3n_intervene_init(&wv, &ow);
    run_fake(logits, "fake_flip_layer0", &wv);
    assert_true(q3n_rel_l2_f32(logits, fx->g.logits, 6 * FK_V) > 1e-4);
    q3n_intervene_free(&wv);
    q3n_intervene_free(&fv);
    q3n_intervene_free(&iv);
}

struct bf16_check {
    const char *fp32;
    int checked, kept;
};

static enum q3n_status check_bf16(void *user, const struct q3n_tap *tap, struct q3n_error *err)
{
    (void)err;
    struct bf16_check *c = user;
    if (tap->dtype != Q3N_DTYPE_F32) return Q3N_OK;
    const float *x = tap->data;
    int64_t n = q3n_tap_numel(tap);
    int all_bf16 = 1;
    for (int64_t i = 0; i < n; i++) all_bf16 &= q3n_round_mantissa_f32(x[i], 7) == x[i];
    if (q3n_patterns_match(c->fp32, tap->name)) {
        c->kept += !all_bf16;
    } else if (!all_bf16) {
        fail_msg("%s is not bf16-representable after emulation", tap->name);
    }
    c->checked++;
    return Q3N_OK;
}

static void emulated_bf16_rounds_every_live_tap_except_fp32_patterns(void **state)
{
    struct fixture *fx = *state;
    float logits[6 * FK_V];
    struct bf16_check c = {.fp32 = "model.layers.*.mlp*"};
    struct q3n_tap_sink inner = {.fn = check_bf16, .user = &c};
    struct q3n_intervene_opts o = {.golden = &fx->src, .record = 1, .emulate_bf16 = 1, .fp32 = c.fp32,
                                   .inner = &inner};
    struct q3n_intervene iv;
    q3n_intervene_init(&iv, &o);
    run_fake(logits, NULL, &iv);
    assert_true(c.checked > 10);
    assert_true(c.kept > 0); /* the fp32 taps really hold values bf16 cannot */
    const struct q3n_tap_record *r = q3n_intervene_find(&iv, "model.layers.2.linear_attn.out");
    assert_true(r && r->rounded && r->rel_l2 > 0 && r->rel_l2 < 1e-2);
    r = q3n_intervene_find(&iv, "model.layers.2.mlp.out");
    assert_true(r && !r->rounded);
    double e_bf16 = q3n_rel_l2_f32(logits, fx->g.logits, 6 * FK_V);
    assert_true(e_bf16 > 0 && e_bf16 < 3e-2);
    /* a weak op (4 mantissa bits) costs about 2^3 times what bf16 costs on the same op */
    const char *op = "model.layers.1.linear_attn.out";
    struct q3n_intervene_opts ob = {.golden = &fx->src, .emulate_bf16 = 1, .fp32 = "*", .weak_op = op};
    struct q3n_intervene wv;
    q3n_intervene_init(&wv, &ob);
    run_fake(logits, NULL, &wv);
    assert_int_equal(wv.n_rounded, 0); /* fp32 wins over the weak switch */
    assert_memory_equal(logits, fx->g.logits, sizeof logits);
    struct q3n_intervene_opts ow = {.golden = &fx->src, .weak_op = op, .weak_bits = 7};
    q3n_intervene_free(&wv);
    q3n_intervene_init(&wv, &ow);
    run_fake(logits, NULL, &wv);
    double e_op_bf16 = q3n_rel_l2_f32(logits, fx->g.logits, 6 * FK_V);
    ow.weak_bits = 4;
    q3n_intervene_free(&wv);
    q3n_intervene_init(&wv, &ow);
    run_fake(logits, NULL, &wv);
    assert_int_equal(wv.n_rounded, 1);
    double e_weak = q3n_rel_l2_f32(logits, fx->g.logits, 6 * FK_V);
    if (!(e_weak > 3 * e_op_bf16 && e_op_bf16 > 0)) fail_msg("weak op %g vs the op in bf16 %g", e_weak, e_op_bf16);
    q3n_intervene_free(&wv);
    q3n_intervene_free(&iv);
}

static struct q3n_tool_run det_run(const char *bug)
{
    struct q3n_tool_run r;
    memset(&r, 0, sizeof r);
    r.impl = &fake_impl;
    r.opt.test_bug = bug;
    r.tokens = fake_tokens;
    r.T = 6;
    r.V = FK_V;
    return r;
}

static void determinism_ledger_passes_a_deterministic_impl_and_round_trips(void **state)
{
    (void)state;
    struct q3n_tool_run r = det_run(NULL);
    struct q3n_det_ledger led, back;
    struct q3n_error err;
    if (q3n_determinism_run(&led, &r, 3, NULL, &err) != Q3N_OK) fail_msg("%s", err.msg);
    assert_true(q3n_det_ledger_ok(&led));
    assert_int_equal(led.taps_neutral, 1);
    assert_true(led.logits_reproducible);
    assert_true(led.n > 20);
    assert_int_equal(led.n_nonrepro, 0);
    char path[] = "/tmp/q3n_test_ledger_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(q3n_det_ledger_write_json(&led, path, &err), Q3N_OK);
    assert_int_equal(q3n_det_ledger_read(&back, path, &err), Q3N_OK);
    assert_int_equal(back.n, led.n);
    assert_string_equal(back.taps[5].name, led.taps[5].name);
    assert_true(back.taps[5].reproducible);
    unlink(path);
    q3n_det_ledger_free(&back);
    q3n_det_ledger_free(&led);
}

static void determinism_ledger_names_non_reproducible_taps_and_holds_known_ones(void **state)
{
    (void)state;
    struct q3n_tool_run good = det_run(NULL), bad = det_run("fake_nondeterministic");
    struct q3n_det_ledger expect, led;
    struct q3n_error err;
    assert_int_equal(q3n_determinism_run(&expect, &good, 2, NULL, &err), Q3N_OK);
    assert_int_equal(q3n_determinism_run(&led, &bad, 2, &expect, &err), Q3N_OK);
    assert_false(led.logits_reproducible);
    assert_true(led.n_nonrepro >= 2); /* layer 2's mlp.out and everything after it */
    int first = -1;
    for (size_t i = 0; i < led.n; i++)
        if (!led.taps[i].reproducible && first < 0) first = (int)i;
    assert_string_equal(led.taps[first].name, "model.layers.2.mlp.out");
    assert_int_equal(led.n_regressed, led.n_nonrepro); /* each was reproducible before */
    assert_false(q3n_det_ledger_ok(&led));
    q3n_det_ledger_free(&led);
    /* a ledger that already lists them as non-reproducible accepts them */
    for (size_t i = 0; i < expect.n; i++) expect.taps[i].reproducible = 0;
    assert_int_equal(q3n_determinism_run(&led, &bad, 2, &expect, &err), Q3N_OK);
    assert_int_equal(led.n_regressed, 0);
    q3n_det_ledger_free(&led);
    q3n_det_ledger_free(&expect);
}

static void determinism_ledger_fails_when_taps_change_the_result(void **state)
{
    (void)state;
    struct q3n_tool_run r = det_run("fake_tap_side_effect");
    struct q3n_det_ledger led;
    struct q3n_error err;
    assert_int_equal(q3n_determinism_run(&led, &r, 2, NULL, &err), Q3N_OK);
    assert_true(led.logits_reproducible);
    assert_int_equal(led.taps_neutral, 0);
    assert_false(q3n_det_ledger_ok(&led));
    q3n_det_ledger_free(&led);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(globs_match_module_paths_and_pattern_lists),
        cmocka_unit_test(bf16_rounding_is_round_to_nearest_even),
        cmocka_unit_test(isolated_mode_confines_the_error_to_the_wrong_op),
        cmocka_unit_test(taps_without_a_writable_buffer_are_never_replaced),
        cmocka_unit_test(replacing_one_layer_output_removes_that_layers_error),
        cmocka_unit_test(forced_routing_removes_a_flips_error_and_logs_the_flip),
        cmocka_unit_test(emulated_bf16_rounds_every_live_tap_except_fp32_patterns),
        cmocka_unit_test(determinism_ledger_passes_a_deterministic_impl_and_round_trips),
        cmocka_unit_test(determinism_ledger_names_non_reproducible_taps_and_holds_known_ones),
        cmocka_unit_test(determinism_ledger_fails_when_taps_change_the_result),
    };
    return cmocka_run_group_tests_name("harness_intervene", tests, setup, teardown);
}
