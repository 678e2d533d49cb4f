/* test_roofline.c — the roofline's byte and FLOP counts agree with the parameter counts of
 * config.c (an independent sum over the same weights), prefill of one token costs what decode
 * from an empty cache costs, the floor names the right bound, and the block-by-block floor lies
 * between the overlapped floor and the sum of the two terms (equal to the overlapped one when a
 * single term dominates every block). */
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

/* max(sum b, sum f) <= sum max(b_i, f_i) <= sum b + sum f, with equality on the left when the
 * machine makes every block bound by the same term. */
static void test_block_by_block_floor_lies_between_the_overlapped_one_and_the_sum(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++) {
        struct q3n_config c = preset(presets[i]);
        const int64_t Ts[] = {1, 80, 4096, 16384};
        for (size_t j = 0; j < sizeof Ts / sizeof *Ts; j++) {
            struct q3n_roofline r, d;
            q3n_roofline_prefill(&c, Ts[j], 2.0, 3.35e12, 989e12, &r);
            const double tb = (r.weight_bytes + r.other_bytes) / 3.35e12, tf = r.flops / 989e12;
            assert_true(r.serial_seconds >= r.seconds * (1 - 1e-12));
            assert_true(r.serial_seconds <= (tb + tf) * (1 + 1e-12));
            assert_true(r.serial_bytes_share >= 0.0 && r.serial_bytes_share <= 1.0);
            q3n_roofline_decode(&c, Ts[j], 2.0, 3.35e12, 989e12, &d);
            assert_true(d.serial_seconds >= d.seconds * (1 - 1e-12));
        }
        struct q3n_roofline slow_mem, slow_alu;
        q3n_roofline_prefill(&c, 4096, 2.0, 1e6, 989e12, &slow_mem);
        q3n_roofline_prefill(&c, 4096, 2.0, 1e15, 1e6, &slow_alu);
        assert_true(fabs(slow_mem.serial_seconds - slow_mem.seconds) <= 1e-9 * slow_mem.seconds);
        assert_true(fabs(slow_alu.serial_seconds - slow_alu.seconds) <= 1e-9 * slow_alu.seconds);
        assert_true(slow_mem.serial_bytes_share == 1.0 && slow_alu.serial_bytes_share < 1e-6);
    }
}

/* real-4l at T=4096 on an H100: the routed experts' stream (bandwidth) and the mixers' products
 * (compute) sit in different blocks, so the block-by-block floor is well above the overlapped one
 * and between the expert stream alone and the overlapped floor plus the mixers' products. */
static void test_real_4l_prefill_4096_mixes_bound_blocks(void **state)
{
    (void)state;
    struct q3n_config c = preset("real-4l");
    struct q3n_roofline r;
    q3n_roofline_prefill(&c, 4096, 2.0, 3.35e12, 989e12, &r);
    assert_int_equal(r.bytes_bound, 1);
    assert_true(r.serial_seconds > 1.15 * r.seconds);
    assert_true(r.serial_bytes_share > 0.5 && r.serial_bytes_share < 1.0);
    struct q3n_roofline b;
    q3n_roofline_prefill(&c, 16384, 2.0, 3.35e12, 989e12, &b);
    assert_int_equal(b.bytes_bound, 0);
    assert_true(b.serial_seconds > b.seconds && b.serial_bytes_share < 0.5);
}

/* The phases add up to the block-by-block floor; real-4l has three delta-rule mixers and one
 * attention mixer of the same width, so at T=1 (no attention products to speak of) the delta
 * phase is about three times the attention one; a stack without full-attention layers has none. */
static void test_phases_add_up_to_the_block_by_block_floor(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++) {
        struct q3n_config c = preset(presets[i]);
        struct q3n_roofline r, d;
        q3n_roofline_prefill(&c, 4096, 2.0, 3.35e12, 989e12, &r);
        q3n_roofline_decode(&c, 4096, 2.0, 3.35e12, 989e12, &d);
        double sr = 0, sd = 0;
        for (int k = 0; k < Q3N_ROOFLINE_PHASES; k++) {
            assert_true(r.phase_seconds[k] >= 0 && d.phase_seconds[k] >= 0);
            sr += r.phase_seconds[k];
            sd += d.phase_seconds[k];
        }
        assert_true(fabs(sr - r.serial_seconds) <= 1e-12 * r.serial_seconds);
        assert_true(fabs(sd - d.serial_seconds) <= 1e-12 * d.serial_seconds);
        assert_true(r.phase_seconds[Q3N_PHASE_MLP] > 0 && r.phase_seconds[Q3N_PHASE_OTHER] > 0);
    }
    struct q3n_config c = preset("real-4l");
    struct q3n_roofline one;
    q3n_roofline_prefill(&c, 1, 2.0, 3.35e12, 989e12, &one);
    const double ratio = one.phase_seconds[Q3N_PHASE_DELTA_MIXERS] / one.phase_seconds[Q3N_PHASE_ATTENTION_MIXERS];
    assert_true(ratio > 2.5 && ratio < 5.0);
    for (int64_t l = 0; l < c.num_hidden_layers; l++) c.layer_type[l] = Q3N_LAYER_LINEAR_ATTENTION;
    q3n_roofline_prefill(&c, 4096, 2.0, 3.35e12, 989e12, &one);
    assert_true(one.phase_seconds[Q3N_PHASE_ATTENTION_MIXERS] == 0.0 && one.phase_seconds[Q3N_PHASE_DELTA_MIXERS] > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_weights_are_the_active_parameters),
        cmocka_unit_test(test_long_prefill_reads_every_weight_once),
        cmocka_unit_test(test_one_token_prefill_costs_a_decode_step_from_empty),
        cmocka_unit_test(test_attention_is_quadratic_and_the_floor_takes_the_larger_term),
        cmocka_unit_test(test_block_by_block_floor_lies_between_the_overlapped_one_and_the_sum),
        cmocka_unit_test(test_real_4l_prefill_4096_mixes_bound_blocks),
        cmocka_unit_test(test_phases_add_up_to_the_block_by_block_floor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
