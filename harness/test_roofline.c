/* test_roofline.c — the roofline's byte and FLOP counts agree with the parameter counts of
 * config.c (an independent sum over the same weights), prefill of one token costs what decode
 * from an empty cache costs, and the floor names the right bound. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>

#include "roofline.h"
#include "synth.h"

static struct q3n_config preset(const char *name)
{
    struct q3n_config c;
    struct q3n_error err = {0};
    if (q3n_synth_config(&c, name, &err) != Q3N_OK) fail_msg("%s", err.msg);
    return c;
}

static const char *const presets[] = {"tiny", "odd", "bench-1k", "real-4l"};

/* Decode reads every active weight once, except that the embedding contributes one row. */
static void test_decode_weights_are_the_active_parameters(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++) {
        struct q3n_config c = preset(presets[i]);
        struct q3n_roofline r;
        q3n_roofline_decode(&c, 100, 2.0, 3e12, 1e15, &r);
        const double VD = (double)c.vocab_size * (double)c.hidden_size;
        const double want = (double)q3n_config_active_param_count(&c) - (c.tie_word_embeddings ? 0.0 : VD) +
                            (double)c.hidden_size;
        assert_true(fabs(r.weight_bytes / 2.0 - want) <= 1e-9 * want);
    }
}

/* A prompt long enough to hit every expert reads every weight but the MTP head once. */
static void test_long_prefill_reads_every_weight_once(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++) {
        struct q3n_config c = preset(presets[i]);
        c.num_mtp_layers = 0;
        const int64_t T = 1000000;
        struct q3n_roofline r;
        q3n_roofline_prefill(&c, T, 4.0, 3e12, 1e15, &r);
        const double VD = (double)c.vocab_size * (double)c.hidden_size;
        const double want = (double)q3n_config_param_count(&c) - (c.tie_word_embeddings ? 0.0 : VD) +
                            (double)T * (double)c.hidden_size;
        assert_true(fabs(r.weight_bytes / 4.0 - want) <= 1e-9 * want);
    }
}

static void test_one_token_prefill_costs_a_decode_step_from_empty(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++) {
        struct q3n_config c = preset(presets[i]);
        struct q3n_roofline p, d;
        q3n_roofline_prefill(&c, 1, 2.0, 3e12, 1e15, &p);
        q3n_roofline_decode(&c, 0, 2.0, 3e12, 1e15, &d);
        assert_true(fabs(p.flops - d.flops) <= 1e-12 * d.flops);
        assert_true(fabs(p.weight_bytes - d.weight_bytes) <= 1e-12 * d.weight_bytes);
    }
}

/* FLOPs grow faster than linearly in T (causal attention) and the floor takes the larger term. */
static void test_attention_is_quadratic_and_the_floor_takes_the_larger_term(void **state)
{
    (void)state;
    struct q3n_config c = preset("real-4l");
    struct q3n_roofline a, b;
    q3n_roofline_prefill(&c, 4096, 2.0, 3.35e12, 989e12, &a);
    q3n_roofline_prefill(&c, 16384, 2.0, 3.35e12, 989e12, &b);
    assert_true(b.flops / 16384.0 > a.flops / 4096.0);
    assert_true(a.seconds >= (a.weight_bytes + a.other_bytes) / 3.35e12 && a.seconds >= a.flops / 989e12);
    struct q3n_roofline slow_mem, slow_alu;
    q3n_roofline_prefill(&c, 4096, 2.0, 1e9, 989e12, &slow_mem);
    q3n_roofline_prefill(&c, 4096, 2.0, 1e15, 1e9, &slow_alu);
    assert_int_equal(slow_mem.bytes_bound, 1);
    assert_int_equal(slow_alu.bytes_bound, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_weights_are_the_active_parameters),
        cmocka_unit_test(test_long_prefill_reads_every_weight_once),
        cmocka_unit_test(test_one_token_prefill_costs_a_decode_step_from_empty),
        cmocka_unit_test(test_attention_is_quadratic_and_the_floor_takes_the_larger_term),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
