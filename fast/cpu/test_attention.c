/* test_attention.c — cpu_ attention ops against their ref_ twins: q/gate split, partial RoPE,
 * the blocked online-softmax attention (prefill, continued prefill, one-token decode, one
 * head, GQA ratio > 1, T across several key blocks) and the sigmoid gate. */
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

struct attn_case {
    int64_t T, pos0, NH, NKV, HD;
};

static void attention_matches_ref_for_prefill_and_decode(void **state)
{
    (void)state;
    const struct attn_case cases[] = {
        {1, 0, 1, 1, 16},  {1, 37, 4, 2, 16},  {7, 0, 6, 2, 24},    {65, 0, 4, 1, 32},
        {70, 300, 2, 2, 64}, {300, 0, 2, 1, 128}, {1, 600, 8, 2, 128}, {5, 3, 3, 3, 8},
    };
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 21);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct attn_case *c = &cases[i];
        int64_t S = c->pos0 + c->T, nq = c->T * c->NH * c->HD, nk = S * c->NKV * c->HD;
        float *q = gbuf(nq), *kc = gbuf(nk), *vc = gbuf(nk), *got = gbuf(nq), *want = gbuf(nq);
        float *rs = gbuf(S), *cs = gbuf(cpu_attention_scratch(c->T, c->pos0, c->NH, c->NKV, c->HD));
        /* post-norm q,k of unit-ish rows: logits q.k/sqrt(HD) spread over a few units */
        fill_normal(q, nq, &rng, 1.5);
        fill_normal(kc, nk, &rng, 1.5);
        fill_normal(vc, nk, &rng, 1.0);
        ref_attention_forward(want, q, kc, vc, rs, c->T, c->pos0, c->NH, c->NKV, c->HD);
        cpu_attention_forward(got, q, kc, vc, cs, c->T, c->pos0, c->NH, c->NKV, c->HD);
        char what[128];
        snprintf(what, sizeof what, "attention T=%lld pos0=%lld NH=%lld NKV=%lld HD=%lld", (long long)c->T,
                 (long long)c->pos0, (long long)c->NH, (long long)c->NKV, (long long)c->HD);
        assert_true(cpu_check(what, got, want, nq, 1e-5));
        free(q);
        free(kc);
        free(vc);
        free(got);
        free(want);
        free(rs);
        free(cs);
    }
}

static void rope_split_and_gate_match_ref(void **state)
{
    (void)state;
    const int64_t shapes[][4] = {{4, 16, 4, 0}, {6, 24, 12, 5}, {2, 256, 64, 1000}, {3, 128, 128, 4000}};
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 22);
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        int64_t T = 9, N = shapes[i][0], HD = shapes[i][1], rot = shapes[i][2], pos0 = shapes[i][3];
        int64_t n = T * N * HD;
        float *qg = gbuf(2 * n), *q0 = gbuf(n), *g0 = gbuf(n), *q1 = gbuf(n), *g1 = gbuf(n);
        float *o0 = gbuf(n), *o1 = gbuf(n);
        fill_normal(qg, 2 * n, &rng, 1.0);
        ref_attn_split_qgate(q0, g0, qg, T, N, HD);
        cpu_attn_split_qgate(q1, g1, qg, T, N, HD);
        assert_true(cpu_check("split_qgate q", q1, q0, n, 0.0));
        assert_true(cpu_check("split_qgate gate", g1, g0, n, 0.0));
        ref_rope_forward(q0, T, N, HD, rot, pos0, 1e7);
        cpu_rope_forward(q1, T, N, HD, rot, pos0, 1e7);
        char what[128];
        snprintf(what, sizeof what, "rope T=%lld N=%lld HD=%lld rot=%lld pos0=%lld", (long long)T, (long long)N,
                 (long long)HD, (long long)rot, (long long)pos0);
        assert_true(cpu_check(what, q1, q0, n, 1e-6));
        ref_sigmoid_gate_forward(o0, q0, g0, n);
        cpu_sigmoid_gate_forward(o1, q0, g0, n);
        assert_true(cpu_check("sigmoid_gate", o1, o0, n, 1e-6));
        free(qg);
        free(q0);
        free(g0);
        free(q1);
        free(g1);
        free(o0);
        free(o1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rope_split_and_gate_match_ref),
        cmocka_unit_test(attention_matches_ref_for_prefill_and_decode),
    };
    return cmocka_run_group_tests_name("fast_cpu_attention", tests, NULL, NULL);
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
    return cmocka_run_group_tests_name("fast_cpu_attention", tests, NULL, NULL);
}

#endif
