/* test_fuzz_cases.c — the shape fuzzer's case generator (harness/fuzz_cases.c) and shrinker
 * (harness/shrink.c): every drawn config is valid, the ranges of issue 8 are all reached, a
 * seed always draws the same case, and shrinking keeps a failing property while making the
 * case smaller. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "../harness/config.h"
#include "../harness/fuzz_cases.h"
#include "../harness/shrink.h"

#define DRAWS 2000

static void every_drawn_config_is_valid_and_its_splits_fit_T(void **state)
{
    (void)state;
    for (int i = 0; i < DRAWS; i++) {
        struct q3n_fuzz_case c;
        struct q3n_error err;
        char desc[1024];
        q3n_fuzz_case_draw(&c, q3n_fuzz_case_seed(7, i), -1);
        q3n_fuzz_case_describe(&c, desc, sizeof desc);
        if (q3n_config_validate(&c.cfg, "drawn", &err) != Q3N_OK) fail_msg("case %d (%s): %s", i, desc, err.msg);
        if (!(c.T >= 1 && c.prefill >= 1 && c.prefill <= c.T && c.split1 >= 1 && c.split2 >= 0 &&
              c.split1 + c.split2 <= c.T && c.chunk_size >= 1))
            fail_msg("case %d has inconsistent lengths: %s", i, desc);
        int64_t *tokens = malloc((size_t)c.T * sizeof *tokens);
        assert_non_null(tokens);
        q3n_fuzz_case_tokens(&c, tokens);
        for (int64_t t = 0; t < c.T; t++)
            if (tokens[t] < 0 || tokens[t] >= c.cfg.vocab_size) fail_msg("case %d token %lld out of range", i, (long long)t);
        free(tokens);
    }
}

static void the_drawn_cases_reach_every_range_of_the_issue(void **state)
{
    (void)state;
    int family[Q3N_FUZZ_FAMILY_COUNT] = {0}, ratio_kv[5] = {0}, ratio_lin[5] = {0}, conv[6] = {0};
    int hd24 = 0, hd60 = 0, hd100 = 0, hd_odd = 0, lin_odd = 0, partial = 0, full_rot = 0, tied = 0, untied = 0;
    int mtp = 0, no_experts = 0, dense_layer = 0, norm_topk = 0, no_norm_topk = 0, mixed_pattern = 0;
    int t1 = 0, t_off_chunk = 0, t_three_chunks = 0, small_chunk = 0, decode_from_1 = 0, real_heads_shape = 0;
    for (int i = 0; i < DRAWS; i++) {
        struct q3n_fuzz_case c;
        q3n_fuzz_case_draw(&c, q3n_fuzz_case_seed(7, i), -1);
        const struct q3n_config *g = &c.cfg;
        family[c.family]++;
        if (c.family == Q3N_FUZZ_REAL_HEADS) { /* NH/NKV = 8 there, as in the 80B model */
            real_heads_shape |= g->head_dim == 256 && g->num_attention_heads == 16 && g->num_key_value_heads == 2 &&
                                g->rotary_dim == 64 && g->linear_num_key_heads == 16 &&
                                g->linear_num_value_heads == 32 && g->linear_key_head_dim == 128 &&
                                g->linear_value_head_dim == 128;
            continue;
        }
        ratio_kv[g->num_attention_heads / g->num_key_value_heads <= 4 ? g->num_attention_heads / g->num_key_value_heads
                                                                       : 0]++;
        ratio_lin[g->linear_num_value_heads / g->linear_num_key_heads <= 4
                      ? g->linear_num_value_heads / g->linear_num_key_heads
                      : 0]++;
        conv[g->linear_conv_kernel_dim <= 5 ? g->linear_conv_kernel_dim : 0]++;
        hd24 |= g->head_dim == 24 || g->linear_key_head_dim == 24;
        hd60 |= g->head_dim == 60 || g->linear_key_head_dim == 60 || g->linear_value_head_dim == 60;
        hd100 |= g->head_dim == 100 || g->linear_key_head_dim == 100 || g->linear_value_head_dim == 100;
        hd_odd |= g->head_dim % 2 == 1;
        lin_odd |= g->linear_key_head_dim % 2 == 1 && g->linear_value_head_dim % 2 == 1;
        partial |= g->rotary_dim < g->head_dim;
        full_rot |= g->rotary_dim == g->head_dim;
        tied |= g->tie_word_embeddings;
        untied |= !g->tie_word_embeddings;
        mtp |= g->num_mtp_layers > 0;
        no_experts |= g->num_experts == 0;
        norm_topk |= g->num_experts > 0 && g->norm_topk_prob;
        no_norm_topk |= g->num_experts > 0 && !g->norm_topk_prob;
        int lin = 0, full = 0;
        for (int64_t l = 0; l < g->num_hidden_layers; l++) {
            dense_layer |= g->num_experts > 0 && !g->layer_is_sparse[l];
            lin += g->layer_type[l] == Q3N_LAYER_LINEAR_ATTENTION;
            full += g->layer_type[l] == Q3N_LAYER_FULL_ATTENTION;
        }
        mixed_pattern |= lin > 0 && full > 0;
        t1 |= c.T == 1;
        t_off_chunk |= c.T > c.chunk_size && c.T % c.chunk_size != 0;
        t_three_chunks |= c.T > 2 * c.chunk_size;
        small_chunk |= c.chunk_size < 8;
        decode_from_1 |= c.prefill == 1 && c.T > 1;
    }
    for (int f = 0; f < Q3N_FUZZ_FAMILY_COUNT; f++)
        if (family[f] == 0) fail_msg("family %s never drawn", q3n_fuzz_family_name((enum q3n_fuzz_family)f));
    for (int r = 1; r <= 4; r++)
        if (!ratio_kv[r] || !ratio_lin[r]) fail_msg("head ratio %d never drawn", r);
    assert_int_equal(ratio_kv[0] + ratio_lin[0], 0);
    for (int k = 2; k <= 5; k++)
        if (!conv[k]) fail_msg("conv kernel %d never drawn", k);
    assert_true(hd24 && hd60 && hd100 && hd_odd && lin_odd && partial && full_rot);
    assert_true(tied && untied && mtp && no_experts && dense_layer && norm_topk && no_norm_topk && mixed_pattern);
    assert_true(t1 && t_off_chunk && t_three_chunks && small_chunk && decode_from_1 && real_heads_shape);
}

static void a_seed_always_draws_the_same_case_and_seeds_differ_per_index(void **state)
{
    (void)state;
    struct q3n_fuzz_case a, b;
    q3n_fuzz_case_draw(&a, 0x1234, -1);
    q3n_fuzz_case_draw(&b, 0x1234, -1);
    assert_memory_equal(&a, &b, sizeof a);
    assert_true(q3n_fuzz_case_seed(1, 0) != q3n_fuzz_case_seed(1, 1));
    assert_true(q3n_fuzz_case_seed(1, 0) != q3n_fuzz_case_seed(2, 0));
    q3n_fuzz_case_draw(&a, 0x1234, Q3N_FUZZ_REAL_HEADS);
    assert_int_equal(a.family, Q3N_FUZZ_REAL_HEADS);
    assert_int_equal(a.cfg.head_dim, 256);
}

/* set_rotary and config.c's validator (written separately) agree on which factors give a
 * usable rotary dim, over head dims 2..300 and a grid of factors. */
static void the_rotary_dim_agrees_with_the_config_validator(void **state)
{
    (void)state;
    struct q3n_fuzz_case c;
    struct q3n_error err;
    int accepted = 0, refused = 0;
    q3n_fuzz_case_draw(&c, 5, Q3N_FUZZ_SMALL);
    for (int64_t hd = 2; hd <= 300; hd++)
        for (int k = 1; k <= 20; k++) {
            struct q3n_config cfg = c.cfg;
            cfg.head_dim = hd;
            int ok = q3n_fuzz_set_rotary(&cfg, 0.05 * k + 0.003 * (hd % 7));
            if (cfg.partial_rotary_factor > 1.0) continue;
            int valid = q3n_config_validate(&cfg, "rotary grid", &err) == Q3N_OK;
            if (ok != valid)
                fail_msg("HD=%lld f=%.17g rot=%lld: set_rotary says %d, validate says %d (%s)", (long long)hd,
                         cfg.partial_rotary_factor, (long long)cfg.rotary_dim, ok, valid, valid ? "" : err.msg);
            accepted += ok;
            refused += !ok;
        }
    assert_true(accepted > 0 && refused > 0);
}

/* A property standing in for a bug: "fails" while the case has a full-attention layer and
 * T >= 3. The shrinker must keep it failing and end at one full-attention layer and T = 3. */
static int fails_with_attention_and_three_tokens(void *user, const struct q3n_fuzz_case *c)
{
    int *calls = user;
    (*calls)++;
    int full = 0;
    for (int64_t l = 0; l < c->cfg.num_hidden_layers; l++) full += c->cfg.layer_type[l] == Q3N_LAYER_FULL_ATTENTION;
    return full > 0 && c->T >= 3;
}

static void shrinking_keeps_the_failure_and_reaches_a_minimal_case(void **state)
{
    (void)state;
    struct q3n_fuzz_case c;
    struct q3n_error err;
    int found = 0;
    for (int i = 0; i < 200 && !found; i++) {
        q3n_fuzz_case_draw(&c, q3n_fuzz_case_seed(11, i), Q3N_FUZZ_SMALL);
        found = c.cfg.num_hidden_layers >= 3 && c.T >= 20 &&
                fails_with_attention_and_three_tokens(&(int){0}, &c);
    }
    assert_true(found);
    int64_t before = q3n_shrink_size(&c);
    int calls = 0, tries = 0;
    q3n_shrink_case(&c, fails_with_attention_and_three_tokens, &calls, 500, &tries);
    assert_int_equal(calls, tries);
    assert_true(fails_with_attention_and_three_tokens(&calls, &c));
    assert_int_equal(q3n_config_validate(&c.cfg, "shrunk", &err), Q3N_OK);
    assert_true(q3n_shrink_size(&c) < before);
    assert_int_equal(c.cfg.num_hidden_layers, 1);
    assert_int_equal(c.T, 3);
    assert_int_equal(c.cfg.num_mtp_layers, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_drawn_config_is_valid_and_its_splits_fit_T),
        cmocka_unit_test(the_drawn_cases_reach_every_range_of_the_issue),
        cmocka_unit_test(a_seed_always_draws_the_same_case_and_seeds_differ_per_index),
        cmocka_unit_test(the_rotary_dim_agrees_with_the_config_validator),
        cmocka_unit_test(shrinking_keeps_the_failure_and_reaches_a_minimal_case),
    };
    return cmocka_run_group_tests_name("fuzz_fuzz_cases", tests, NULL, NULL);
}
