/* test_moe.c — cpu_ MoE ops against their ref_ twins: router softmax, top-k (with and without
 * renormalisation), the SwiGLU MLP, grouped routed experts (T = 1, many tokens per expert,
 * unused experts) and the shared-expert combine. */
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

static void router_softmax_and_topk_match_ref(void **state)
{
    (void)state;
    const int64_t shapes[][3] = {{1, 8, 2}, {13, 6, 3}, {40, 512, 10}}; /* T E K */
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 31);
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int norm = 0; norm < 2; norm++) {
            int64_t T = shapes[i][0], E = shapes[i][1], K = shapes[i][2];
            float *lg = gbuf(T * E), *p0 = gbuf(T * E), *p1 = gbuf(T * E), *w0 = gbuf(T * K), *w1 = gbuf(T * K);
            int64_t *i0 = calloc((size_t)(T * K), sizeof *i0), *i1 = calloc((size_t)(T * K), sizeof *i1);
            fill_normal(lg, T * E, &rng, 3.0);
            ref_softmax_forward(p0, lg, T, E);
            cpu_softmax_forward(p1, lg, T, E);
            char what[128];
            snprintf(what, sizeof what, "softmax T=%lld E=%lld", (long long)T, (long long)E);
            assert_true(cpu_check(what, p1, p0, T * E, 1e-6));
            /* top-k on the same probabilities must choose identically */
            ref_topk_forward(i0, w0, p0, T, E, K, norm);
            cpu_topk_forward(i1, w1, p0, T, E, K, norm);
            assert_memory_equal(i0, i1, (size_t)(T * K) * sizeof *i0);
            snprintf(what, sizeof what, "topk_weight T=%lld E=%lld K=%lld norm=%d", (long long)T, (long long)E,
                     (long long)K, norm);
            assert_true(cpu_check(what, w1, w0, T * K, 0.0));
            free(lg);
            free(p0);
            free(p1);
            free(w0);
            free(w1);
            free(i0);
            free(i1);
        }
}

static void mlp_experts_and_combine_match_ref(void **state)
{
    (void)state;
    const int64_t shapes[][5] = {{1, 8, 2, 64, 32}, {9, 6, 3, 48, 20}, {70, 16, 4, 128, 64}}; /* T E K D I */
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 32);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t T = shapes[s][0], E = shapes[s][1], K = shapes[s][2], D = shapes[s][3], I = shapes[s][4];
        float *wts = gbuf(E * 3 * I * D);
        fill_normal(wts, E * 3 * I * D, &rng, 1.0 / sqrt((double)D));
        struct q3n_mlp_weights *ex = calloc((size_t)E, sizeof *ex);
        for (int64_t e = 0; e < E; e++) {
            ex[e].gate_proj = wts + e * 3 * I * D;
            ex[e].up_proj = ex[e].gate_proj + I * D;
            ex[e].down_proj = ex[e].up_proj + I * D; /* [D, I] */
        }
        float *x = gbuf(T * D), *o0 = gbuf(T * D), *o1 = gbuf(T * D), *w = gbuf(T * K);
        float *rs = gbuf(T * 2 * I + 2 * I + D), *cs = gbuf(cpu_moe_experts_scratch(T, D, I, K) + T * 2 * I);
        int64_t *idx = calloc((size_t)(T * K), sizeof *idx);
        fill_normal(x, T * D, &rng, 1.0);
        fill_uniform(w, T * K, &rng, 0.05, 0.6);
        /* distinct experts per token, skewed so some experts get many tokens and one none */
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < K; j++) idx[t * K + j] = (t * 7 % (E - 1) + j * 3) % (E - 1);
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < K; j++)
                for (int64_t m = 0; m < j; m++) assert_true(idx[t * K + j] != idx[t * K + m]);
        ref_mlp_forward(o0, x, &ex[0], rs, T, D, I);
        cpu_mlp_forward(o1, x, &ex[0], cs, T, D, I);
        char what[128];
        snprintf(what, sizeof what, "mlp T=%lld D=%lld W=%lld", (long long)T, (long long)D, (long long)I);
        assert_true(cpu_check(what, o1, o0, T * D, 2e-6));
        ref_moe_experts_forward(o0, x, idx, w, ex, rs, T, D, I, K);
        cpu_moe_experts_forward(o1, x, idx, w, ex, cs, T, D, I, K);
        snprintf(what, sizeof what, "moe_experts T=%lld E=%lld K=%lld D=%lld I=%lld", (long long)T, (long long)E,
                 (long long)K, (long long)D, (long long)I);
        assert_true(cpu_check(what, o1, o0, T * D, 2e-6));
        float *se = gbuf(T * D), *sg = gbuf(T), *c0 = gbuf(T * D), *c1 = gbuf(T * D);
        fill_normal(se, T * D, &rng, 1.0);
        fill_normal(sg, T, &rng, 2.0);
        ref_moe_combine_forward(c0, o0, se, sg, T, D);
        cpu_moe_combine_forward(c1, o0, se, sg, T, D);
        assert_true(cpu_check("moe_combine shared", c1, c0, T * D, 1e-7));
        ref_moe_combine_forward(c0, o0, NULL, NULL, T, D);
        cpu_moe_combine_forward(c1, o0, NULL, NULL, T, D);
        assert_true(cpu_check("moe_combine no shared", c1, c0, T * D, 0.0));
        free(wts);
        free(ex);
        free(x);
        free(o0);
        free(o1);
        free(w);
        free(rs);
        free(cs);
        free(idx);
        free(se);
        free(sg);
        free(c0);
        free(c1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(router_softmax_and_topk_match_ref),
        cmocka_unit_test(mlp_experts_and_combine_match_ref),
    };
    return cmocka_run_group_tests_name("fast_cpu_moe", tests, NULL, NULL);
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
    return cmocka_run_group_tests_name("fast_cpu_moe", tests, NULL, NULL);
}

#endif
