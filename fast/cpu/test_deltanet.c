/* test_deltanet.c — cpu_ Gated DeltaNet ops against their ref_ twins: split, conv concat /
 * split, q scale, gates, the recurrent step and the chunked WY/UT form (fresh and continued
 * state, T = 1, T off chunk multiples, one head, GQA ratio > 1), and the planted bug. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#ifndef Q3N_REF64 /* cpu (float) against ref on the same buffers needs ref_real = float */
#include "../../ref/ops.h"
#include "../../ref/testbug.h"
#include "ops.h"
#include "testutil.h"

struct dr_case {
    int64_t T, NK, NV, DK, DV, C;
};

static const struct dr_case cases[] = {
    {1, 1, 1, 16, 16, 64},  {5, 1, 1, 16, 16, 64},   {64, 2, 4, 16, 16, 64}, {65, 2, 6, 24, 40, 64},
    {130, 1, 2, 32, 32, 64}, {37, 2, 2, 128, 128, 16}, {100, 2, 4, 64, 64, 32},
};

/* In-distribution delta-rule inputs: q,k L2-normalised (q scaled), g log-uniform in
 * [-20, -1e-4], beta in (0,1), v ~ N(0,1), state ~ N(0, 0.1^2). */
struct dr_inputs {
    float *q, *k, *v, *g, *beta, *state;
};

static void dr_make(struct dr_inputs *in, const struct dr_case *c, struct q3n_rng *rng)
{
    int64_t nq = c->T * c->NK * c->DK, nv = c->T * c->NV * c->DV, ng = c->T * c->NV;
    in->q = gbuf(nq);
    in->k = gbuf(nq);
    in->v = gbuf(nv);
    in->g = gbuf(ng);
    in->beta = gbuf(ng);
    in->state = gbuf(c->NV * c->DK * c->DV);
    float *raw = gbuf(nq);
    fill_normal(raw, nq, rng, 1.0);
    cpu_l2norm_forward(in->q, raw, c->T * c->NK, c->DK, 1e-6);
    cpu_deltanet_q_scale(in->q, nq, c->DK, 0);
    fill_normal(raw, nq, rng, 1.0);
    cpu_l2norm_forward(in->k, raw, c->T * c->NK, c->DK, 1e-6);
    free(raw);
    fill_normal(in->v, nv, rng, 1.0);
    for (int64_t i = 0; i < ng; i++) in->g[i] = (float)-exp(q3n_rng_range(rng, log(1e-4), log(20.0)));
    fill_uniform(in->beta, ng, rng, 0.0, 1.0);
    fill_normal(in->state, c->NV * c->DK * c->DV, rng, 0.1);
}

static void dr_free(struct dr_inputs *in)
{
    free(in->q);
    free(in->k);
    free(in->v);
    free(in->g);
    free(in->beta);
    free(in->state);
}

/* Runs `form` (0 recurrent, 1 chunked, 2 chunked with the planted bug) on both sides from the
 * same initial state (zero when fresh) and checks o and the final state. */
static void dr_compare(const struct dr_case *c, int form, int fresh, uint64_t seed)
{
    struct q3n_rng rng;
    q3n_rng_seed(&rng, seed);
    struct dr_inputs in;
    dr_make(&in, c, &rng);
    int64_t no = c->T * c->NV * c->DV, ns = c->NV * c->DK * c->DV;
    float *og = gbuf(no), *ow = gbuf(no), *sg = gbuf(ns), *sw = gbuf(ns);
    if (fresh) memset(in.state, 0, (size_t)ns * sizeof(float));
    memcpy(sg, in.state, (size_t)ns * sizeof(float));
    memcpy(sw, in.state, (size_t)ns * sizeof(float));
    float *rs = gbuf(ref_delta_rule_chunked_scratch(c->C, c->DK, c->DV));
    float *cs = gbuf(cpu_delta_rule_chunked_scratch(c->C, c->DK, c->DV));
    const char *name = form == 0 ? "recurrent" : form == 1 ? "chunked" : "chunked_bug_drop_last";
    if (form == 0) {
        ref_delta_rule_recurrent(ow, sw, in.q, in.k, in.v, in.g, in.beta, c->T, c->NK, c->NV, c->DK, c->DV);
        cpu_delta_rule_recurrent(og, sg, in.q, in.k, in.v, in.g, in.beta, c->T, c->NK, c->NV, c->DK, c->DV);
    } else if (form == 1) {
        ref_delta_rule_chunked(ow, sw, in.q, in.k, in.v, in.g, in.beta, rs, c->T, c->NK, c->NV, c->DK, c->DV, c->C);
        cpu_delta_rule_chunked(og, sg, in.q, in.k, in.v, in.g, in.beta, cs, c->T, c->NK, c->NV, c->DK, c->DV, c->C);
    } else {
        ref_delta_rule_chunked_bug_drop_last(ow, sw, in.q, in.k, in.v, in.g, in.beta, rs, c->T, c->NK, c->NV, c->DK,
                                             c->DV, c->C);
        cpu_delta_rule_chunked_bug_drop_last(og, sg, in.q, in.k, in.v, in.g, in.beta, cs, c->T, c->NK, c->NV, c->DK,
                                             c->DV, c->C);
    }
    char what[160];
    snprintf(what, sizeof what, "delta_rule_%s T=%lld NK=%lld NV=%lld DK=%lld DV=%lld C=%lld fresh=%d o", name,
             (long long)c->T, (long long)c->NK, (long long)c->NV, (long long)c->DK, (long long)c->DV,
             (long long)c->C, fresh);
    assert_true(cpu_check(what, og, ow, no, 1e-5));
    what[strlen(what) - 1] = 'S';
    assert_true(cpu_check(what, sg, sw, ns, 1e-5));
    dr_free(&in);
    free(og);
    free(ow);
    free(sg);
    free(sw);
    free(rs);
    free(cs);
}

static void recurrent_step_matches_ref(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) dr_compare(&cases[i], 0, 0, 100 + i);
}

static void chunked_form_matches_ref_fresh_and_continued(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int fresh = 0; fresh < 2; fresh++) dr_compare(&cases[i], 1, fresh, 200 + i);
}

static void planted_chunk_off_by_one_matches_refs_planted_bug(void **state)
{
    (void)state;
    dr_compare(&cases[3], 2, 0, 300);
    dr_compare(&cases[4], 2, 1, 301);
}

static void split_concat_scale_and_gates_match_ref(void **state)
{
    (void)state;
    const int64_t shapes[][4] = {{1, 1, 16, 16}, {2, 6, 24, 40}, {4, 8, 32, 16}}; /* NK NV DK DV */
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 9);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t T = 7, NK = shapes[s][0], NV = shapes[s][1], DK = shapes[s][2], DV = shapes[s][3];
        int64_t Q = 2 * NK * DK + 2 * NV * DV, Cc = 2 * NK * DK + NV * DV;
        float *qkvz = gbuf(T * Q), *ba = gbuf(T * 2 * NV), *Al = gbuf(NV), *dt = gbuf(NV);
        float *o[2][6], *mixed[2], *gg[2][2];
        for (int side = 0; side < 2; side++) {
            o[side][0] = gbuf(T * NK * DK);
            o[side][1] = gbuf(T * NK * DK);
            o[side][2] = gbuf(T * NV * DV);
            o[side][3] = gbuf(T * NV * DV);
            o[side][4] = gbuf(T * NV);
            o[side][5] = gbuf(T * NV);
            mixed[side] = gbuf(T * Cc);
            gg[side][0] = gbuf(T * NV);
            gg[side][1] = gbuf(T * NV);
        }
        fill_normal(qkvz, T * Q, &rng, 1.0);
        fill_normal(ba, T * 2 * NV, &rng, 2.0);
        for (int64_t h = 0; h < NV; h++) Al[h] = (float)log(q3n_rng_range(&rng, 1.0, 16.0));
        fill_uniform(dt, NV, &rng, -1.0, 1.0);
        ref_deltanet_split_forward(o[0][0], o[0][1], o[0][2], o[0][3], o[0][4], o[0][5], qkvz, ba, T, NK, NV, DK, DV);
        cpu_deltanet_split_forward(o[1][0], o[1][1], o[1][2], o[1][3], o[1][4], o[1][5], qkvz, ba, T, NK, NV, DK, DV);
        const int64_t n[6] = {T * NK * DK, T * NK * DK, T * NV * DV, T * NV * DV, T * NV, T * NV};
        const char *names[6] = {"split q", "split k", "split v", "split z", "split b", "split a"};
        for (int i = 0; i < 6; i++) assert_true(cpu_check(names[i], o[1][i], o[0][i], n[i], 0.0));
        ref_deltanet_conv_concat(mixed[0], o[0][0], o[0][1], o[0][2], T, NK, NV, DK, DV);
        cpu_deltanet_conv_concat(mixed[1], o[0][0], o[0][1], o[0][2], T, NK, NV, DK, DV);
        assert_true(cpu_check("conv_concat", mixed[1], mixed[0], T * Cc, 0.0));
        ref_deltanet_conv_split(o[0][0], o[0][1], o[0][2], mixed[0], T, NK, NV, DK, DV);
        cpu_deltanet_conv_split(o[1][0], o[1][1], o[1][2], mixed[0], T, NK, NV, DK, DV);
        for (int i = 0; i < 3; i++) assert_true(cpu_check("conv_split", o[1][i], o[0][i], n[i], 0.0));
        for (int rec = 0; rec < 2; rec++) {
            ref_deltanet_q_scale(o[0][0], n[0], DK, rec);
            cpu_deltanet_q_scale(o[1][0], n[0], DK, rec);
            assert_true(cpu_check(rec ? "q_scale recurrent" : "q_scale chunked", o[1][0], o[0][0], n[0], 0.0));
        }
        ref_deltanet_gates_forward(gg[0][0], gg[0][1], o[0][5], o[0][4], Al, dt, T, NV);
        cpu_deltanet_gates_forward(gg[1][0], gg[1][1], o[0][5], o[0][4], Al, dt, T, NV);
        assert_true(cpu_check("gates g", gg[1][0], gg[0][0], T * NV, 1e-6));
        assert_true(cpu_check("gates beta", gg[1][1], gg[0][1], T * NV, 1e-6));
        free(qkvz);
        free(ba);
        free(Al);
        free(dt);
        for (int side = 0; side < 2; side++) {
            for (int i = 0; i < 6; i++) free(o[side][i]);
            free(mixed[side]);
            free(gg[side][0]);
            free(gg[side][1]);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(split_concat_scale_and_gates_match_ref),
        cmocka_unit_test(recurrent_step_matches_ref),
        cmocka_unit_test(chunked_form_matches_ref_fresh_and_continued),
        cmocka_unit_test(planted_chunk_off_by_one_matches_refs_planted_bug),
    };
    return cmocka_run_group_tests_name("fast_cpu_deltanet", tests, NULL, NULL);
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
    return cmocka_run_group_tests_name("fast_cpu_deltanet", tests, NULL, NULL);
}

#endif
