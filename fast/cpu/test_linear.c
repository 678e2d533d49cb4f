/* test_linear.c — cpu_ embedding, projections (sgemm / sgemv) and conv against ref_ twins. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#ifndef Q3N_REF64 /* cpu (float) against ref on the same buffers needs ref_real = float */
#include "../../ref/ops.h"
#include "ops.h"
#include "testutil.h"

static void linear_matches_ref_for_one_token_and_many(void **state)
{
    (void)state;
    const int64_t Ts[] = {1, 2, 7, 65};
    const int64_t shapes[][2] = {{1, 1}, {8, 64}, {97, 48}, {300, 1024}}; /* N, Kin */
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 11);
    for (size_t a = 0; a < sizeof Ts / sizeof Ts[0]; a++)
        for (size_t b = 0; b < sizeof shapes / sizeof shapes[0]; b++)
            for (int with_bias = 0; with_bias < 2; with_bias++) {
                int64_t T = Ts[a], N = shapes[b][0], Kin = shapes[b][1];
                float *x = gbuf(T * Kin), *W = gbuf(N * Kin), *bias = gbuf(N);
                float *got = gbuf(T * N), *want = gbuf(T * N);
                fill_normal(x, T * Kin, &rng, 1.0);
                fill_normal(W, N * Kin, &rng, 1.0 / sqrt((double)Kin));
                fill_normal(bias, N, &rng, 0.1);
                ref_linear_forward(want, x, W, with_bias ? bias : NULL, T, N, Kin);
                cpu_linear_forward(got, x, W, with_bias ? bias : NULL, T, N, Kin);
                char what[128];
                snprintf(what, sizeof what, "linear T=%lld N=%lld Kin=%lld bias=%d", (long long)T, (long long)N,
                         (long long)Kin, with_bias);
                assert_true(cpu_check(what, got, want, T * N, 2e-6));
                free(x);
                free(W);
                free(bias);
                free(got);
                free(want);
            }
}

static void embed_and_residual_add_match_ref(void **state)
{
    (void)state;
    int64_t V = 50, D = 24, T = 9;
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 3);
    float *E = gbuf(V * D), *got = gbuf(T * D), *want = gbuf(T * D), *y = gbuf(T * D);
    int64_t tokens[9] = {0, 49, 3, 3, 17, 1, 48, 0, 25};
    fill_normal(E, V * D, &rng, 1.0);
    fill_normal(y, T * D, &rng, 1.0);
    ref_embed_forward(want, tokens, E, T, D);
    cpu_embed_forward(got, tokens, E, T, D);
    assert_true(cpu_check("embed T=9 D=24", got, want, T * D, 0.0));
    ref_add_inplace(want, y, T * D);
    cpu_add_inplace(got, y, T * D);
    assert_true(cpu_check("add_inplace n=216", got, want, T * D, 0.0));
    free(E);
    free(got);
    free(want);
    free(y);
}

static void conv_and_state_update_match_ref_fresh_and_continued(void **state)
{
    (void)state;
    const int64_t Ts[] = {1, 2, 3, 5, 64, 600}; /* T=600: over 2 x CPU_PAR_MIN_COST, rows on threads */
    const int64_t Ks[] = {3, 4};
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 5);
    for (size_t a = 0; a < sizeof Ts / sizeof Ts[0]; a++)
        for (size_t b = 0; b < sizeof Ks / sizeof Ks[0]; b++)
            for (int fresh = 0; fresh < 2; fresh++) {
                int64_t T = Ts[a], K = Ks[b], Cc = T >= 600 ? 2056 : 88;
                float *x = gbuf(T * Cc), *w = gbuf(Cc * K), *st = gbuf(Cc * K);
                float *got = gbuf(T * Cc), *want = gbuf(T * Cc), *sg = gbuf(Cc * K), *sw = gbuf(Cc * K);
                fill_normal(x, T * Cc, &rng, 1.0);
                fill_normal(w, Cc * K, &rng, 0.5);
                fill_normal(st, Cc * K, &rng, 1.0);
                ref_conv1d_causal_forward(want, x, w, fresh ? NULL : st, T, Cc, K);
                cpu_conv1d_causal_forward(got, x, w, fresh ? NULL : st, T, Cc, K);
                char what[128];
                snprintf(what, sizeof what, "conv1d T=%lld Cc=%lld K=%lld fresh=%d", (long long)T, (long long)Cc,
                         (long long)K, fresh);
                assert_true(cpu_check(what, got, want, T * Cc, 1e-6));
                memcpy(sg, st, (size_t)(Cc * K) * sizeof(float));
                memcpy(sw, st, (size_t)(Cc * K) * sizeof(float));
                ref_conv1d_state_update(sw, x, T, Cc, K);
                cpu_conv1d_state_update(sg, x, T, Cc, K);
                snprintf(what, sizeof what, "conv1d_state_update T=%lld K=%lld", (long long)T, (long long)K);
                assert_true(cpu_check(what, sg, sw, Cc * K, 0.0));
                free(x);
                free(w);
                free(st);
                free(got);
                free(want);
                free(sg);
                free(sw);
            }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(linear_matches_ref_for_one_token_and_many),
        cmocka_unit_test(embed_and_residual_add_match_ref),
        cmocka_unit_test(conv_and_state_update_match_ref_fresh_and_continued),
    };
    return cmocka_run_group_tests_name("fast_cpu_linear", tests, NULL, NULL);
}

#else

static void cpu_against_ref_runs_only_in_the_float_build(void **state)
{
    (void)state;
    skip();
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(cpu_against_ref_runs_only_in_the_float_build)};
    return cmocka_run_group_tests_name("fast_cpu_linear", tests, NULL, NULL);
}

#endif
