/* test_deltanet.c — the gated delta rule's three forms agree with each other and with an
 * independent transition-matrix formulation; the projection split and gates follow their
 * formulas. Inputs in distribution: L2-normalised k and q (q scaled by DK^-0.5), g log-uniform
 * in [-20, -1e-4], beta in (0,1), a non-zero initial state. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../harness/rng.h"
#include "../harness/testkit.h"
#include "ops.h"
#include "testbug.h"
#include "testref.h"

#ifdef Q3N_REF64
#define FORMS_TOL 1e-10
#else
#define FORMS_TOL 1e-5
#endif

struct dr_case {
    int64_t T, NK, NV, DK, DV;
    ref_real *q, *k, *v, *g, *beta, *s0;
};

static ref_real *alloc_real(int64_t n)
{
    ref_real *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(ref_real));
    assert_non_null(p);
    return p;
}

static void case_make(struct dr_case *c, int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV, uint64_t seed)
{
    struct q3n_rng rng;
    q3n_rng_seed(&rng, seed);
    *c = (struct dr_case){.T = T, .NK = NK, .NV = NV, .DK = DK, .DV = DV};
    c->q = alloc_real(T * NK * DK);
    c->k = alloc_real(T * NK * DK);
    c->v = alloc_real(T * NV * DV);
    c->g = alloc_real(T * NV);
    c->beta = alloc_real(T * NV);
    c->s0 = alloc_real(NV * DK * DV);
    for (int64_t i = 0; i < T * NK * DK; i++) c->q[i] = (ref_real)q3n_rng_normal(&rng);
    for (int64_t i = 0; i < T * NK * DK; i++) c->k[i] = (ref_real)q3n_rng_normal(&rng);
    for (int64_t i = 0; i < T * NV * DV; i++) c->v[i] = (ref_real)q3n_rng_normal(&rng);
    for (int64_t i = 0; i < T * NV; i++) c->g[i] = (ref_real)-exp(q3n_rng_range(&rng, log(1e-4), log(20.0)));
    for (int64_t i = 0; i < T * NV; i++) c->beta[i] = (ref_real)q3n_rng_range(&rng, 0.01, 0.99);
    for (int64_t i = 0; i < NV * DK * DV; i++) c->s0[i] = (ref_real)(0.5 * q3n_rng_normal(&rng));
    ref_l2norm_forward(c->q, c->q, T * NK, DK, 1e-6);
    ref_l2norm_forward(c->k, c->k, T * NK, DK, 1e-6);
    ref_deltanet_q_scale(c->q, T * NK * DK, DK, 0);
}

static void case_free(struct dr_case *c)
{
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->g);
    free(c->beta);
    free(c->s0);
}

enum form { FORM_RECURRENT, FORM_CHUNKED, FORM_NAIVE, FORM_CHUNKED_BUG };

/* Runs one form from the case's initial state; o [T,NV,DV] and state [NV,DK,DV] allocated here. */
static void run_form(const struct dr_case *c, enum form f, int64_t C, ref_real **o, ref_real **state)
{
    int64_t n_o = c->T * c->NV * c->DV, n_s = c->NV * c->DK * c->DV;
    *o = testkit_guarded_real(n_o);
    *state = alloc_real(n_s);
    memcpy(*state, c->s0, (size_t)n_s * sizeof(ref_real));
    ref_real *scratch = NULL;
    if (f == FORM_CHUNKED || f == FORM_CHUNKED_BUG) {
        int64_t n = ref_delta_rule_chunked_scratch(C, c->DK, c->DV);
        scratch = alloc_real(n);
        testkit_poison_real(scratch, n);
    } else if (f == FORM_NAIVE) {
        int64_t n = ref_delta_rule_naive_scratch(c->T, c->DK, c->DV);
        scratch = alloc_real(n);
        testkit_poison_real(scratch, n);
    }
    switch (f) {
    case FORM_RECURRENT:
        ref_delta_rule_recurrent(*o, *state, c->q, c->k, c->v, c->g, c->beta, c->T, c->NK, c->NV, c->DK, c->DV);
        break;
    case FORM_CHUNKED:
        ref_delta_rule_chunked(*o, *state, c->q, c->k, c->v, c->g, c->beta, scratch, c->T, c->NK, c->NV, c->DK,
                               c->DV, C);
        break;
    case FORM_CHUNKED_BUG:
        ref_delta_rule_chunked_bug_drop_last(*o, *state, c->q, c->k, c->v, c->g, c->beta, scratch, c->T, c->NK,
                                             c->NV, c->DK, c->DV, C);
        break;
    case FORM_NAIVE:
        ref_delta_rule_naive(*o, *state, c->q, c->k, c->v, c->g, c->beta, scratch, c->T, c->NK, c->NV, c->DK, c->DV);
        break;
    }
    assert_true(testkit_guard_ok_real(*o, n_o));
    free(scratch);
}

/* rel L2 of (o, state) of form f against the recurrent form; returns the larger. */
static double form_vs_recurrent(const struct dr_case *c, enum form f, int64_t C)
{
    ref_real *o_r, *s_r, *o_f, *s_f;
    run_form(c, FORM_RECURRENT, 0, &o_r, &s_r);
    run_form(c, f, C, &o_f, &s_f);
    double eo = testkit_rel_l2_real(o_f, o_r, c->T * c->NV * c->DV);
    double es = testkit_rel_l2_real(s_f, s_r, c->NV * c->DK * c->DV);
    free(o_r);
    free(s_r);
    free(o_f);
    free(s_f);
    if (isnan(eo) || isnan(es)) return NAN;
    return eo > es ? eo : es;
}

static const int64_t lengths[] = {1, 2, 63, 64, 65, 75, 127, 129, 200};
static const int64_t chunks[] = {1, 2, 3, 7, 16, 31, 64, 100, 128};

static void chunked_form_matches_recurrent_over_chunk_sizes_and_lengths(void **state)
{
    (void)state;
    double worst = 0.0;
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        struct dr_case c;
        case_make(&c, lengths[i], 2, 4, 16, 12, 1000 + i);
        for (size_t j = 0; j < sizeof chunks / sizeof chunks[0]; j++) {
            double e = form_vs_recurrent(&c, FORM_CHUNKED, chunks[j]);
            if (!(e <= FORMS_TOL))
                fail_msg("delta_rule chunked T=%lld C=%lld NK=2 NV=4 DK=16 DV=12: rel_l2=%.3g > %.1g",
                         (long long)c.T, (long long)chunks[j], e, FORMS_TOL);
            if (getenv("Q3N_VERBOSE")) printf("  T=%lld C=%lld rel_l2=%.3g\n", (long long)c.T, (long long)chunks[j], e);
            if (e > worst) worst = e;
        }
        case_free(&c);
    }
    printf("delta_rule chunked vs recurrent: worst rel_l2 (outputs, final state) = %.3g over %zu lengths x %zu "
           "chunk sizes (tol %.0e)\n",
           worst, sizeof lengths / sizeof lengths[0], sizeof chunks / sizeof chunks[0], FORMS_TOL);
}

static void naive_form_matches_recurrent_over_lengths(void **state)
{
    (void)state;
    double worst = 0.0;
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        struct dr_case c;
        case_make(&c, lengths[i], 2, 4, 16, 12, 2000 + i);
        double e = form_vs_recurrent(&c, FORM_NAIVE, 0);
        if (!(e <= FORMS_TOL))
            fail_msg("delta_rule naive T=%lld: rel_l2=%.3g > %.1g", (long long)c.T, e, FORMS_TOL);
        if (e > worst) worst = e;
        case_free(&c);
    }
    printf("delta_rule naive vs recurrent: worst rel_l2 = %.3g (tol %.0e)\n", worst, FORMS_TOL);
}

static void forms_agree_with_one_head_and_large_head_dims(void **state)
{
    (void)state;
    struct dr_case c;
    case_make(&c, 70, 1, 1, 64, 48, 77);
    double e1 = form_vs_recurrent(&c, FORM_CHUNKED, 64);
    double e2 = form_vs_recurrent(&c, FORM_NAIVE, 0);
    case_free(&c);
    if (!(e1 <= FORMS_TOL && e2 <= FORMS_TOL))
        fail_msg("delta_rule NK=NV=1 DK=64 DV=48 T=70: chunked %.3g naive %.3g > %.1g", e1, e2, FORMS_TOL);
}

/* The planted bug must be visible to the same check. */
static void forms_check_catches_a_chunk_that_drops_its_last_token(void **state)
{
    (void)state;
    struct dr_case c;
    case_make(&c, 75, 2, 4, 16, 12, 5);
    double e = form_vs_recurrent(&c, FORM_CHUNKED_BUG, 64);
    case_free(&c);
    if (!(e > 100 * FORMS_TOL)) fail_msg("chunk_off_by_one went unnoticed: rel_l2 = %.3g", e);
}

/* Independent formulation: S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,
 * o_t = S_t^T q_t, in double with explicit matrices. */
static void recurrent_form_matches_the_transition_matrix_formulation(void **state)
{
    (void)state;
    struct dr_case c;
    case_make(&c, 9, 1, 2, 5, 3, 31);
    int64_t DK = 5, DV = 3, NV = 2;
    ref_real *o, *s;
    run_form(&c, FORM_RECURRENT, 0, &o, &s);
    double want_o[9 * 2 * 3], S[2][5][3];
    for (int64_t h = 0; h < NV; h++)
        for (int64_t d = 0; d < DK; d++)
            for (int64_t e = 0; e < DV; e++) S[h][d][e] = (double)c.s0[(h * DK + d) * DV + e];
    for (int64_t t = 0; t < c.T; t++) {
        for (int64_t h = 0; h < NV; h++) {
            const ref_real *k = c.k + t * DK, *q = c.q + t * DK, *v = c.v + (t * NV + h) * DV;
            double b = (double)c.beta[t * NV + h], dec = exp((double)c.g[t * NV + h]);
            double M[5][5], N[5][3];
            for (int64_t i = 0; i < DK; i++)
                for (int64_t j = 0; j < DK; j++) M[i][j] = dec * ((i == j) - b * (double)k[i] * (double)k[j]);
            for (int64_t i = 0; i < DK; i++)
                for (int64_t e = 0; e < DV; e++) {
                    double acc = 0;
                    for (int64_t j = 0; j < DK; j++) acc += M[i][j] * S[h][j][e];
                    N[i][e] = acc + b * (double)k[i] * (double)v[e];
                }
            memcpy(S[h], N, sizeof N);
            for (int64_t e = 0; e < DV; e++) {
                double acc = 0;
                for (int64_t i = 0; i < DK; i++) acc += S[h][i][e] * (double)q[i];
                want_o[(t * NV + h) * DV + e] = acc;
            }
        }
    }
    double got_o[9 * 2 * 3], got_s[2 * 5 * 3], want_s[2 * 5 * 3];
    for (int i = 0; i < 9 * 2 * 3; i++) got_o[i] = (double)o[i];
    for (int i = 0; i < 2 * 5 * 3; i++) {
        got_s[i] = (double)s[i];
        want_s[i] = S[i / 15][(i / 3) % 5][i % 3];
    }
    assert_rel_l2_within_f64("recurrent o", got_o, want_o, 9 * 2 * 3, FORMS_TOL);
    assert_rel_l2_within_f64("recurrent state", got_s, want_s, 2 * 5 * 3, FORMS_TOL);
    free(o);
    free(s);
    case_free(&c);
}

/* The split follows torch's view(T, NK, group) then split([DK, DK, rDV, rDV]). */
static void split_follows_the_head_grouped_layout(void **state)
{
    (void)state;
    int64_t T = 2, NK = 2, NV = 6, DK = 3, DV = 2, r = 3, group = 2 * DK + 2 * r * DV;
    ref_real qkvz[2 * 2 * 18], ba[2 * 12];
    for (int i = 0; i < 2 * 2 * 18; i++) qkvz[i] = (ref_real)i;
    for (int i = 0; i < 2 * 12; i++) ba[i] = (ref_real)(1000 + i);
    ref_real q[2 * 2 * 3], k[2 * 2 * 3], v[2 * 6 * 2], z[2 * 6 * 2], b[2 * 6], a[2 * 6];
    ref_deltanet_split_forward(q, k, v, z, b, a, qkvz, ba, T, NK, NV, DK, DV);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < NV; h++) {
            int64_t j = h / r, within = h % r; /* key group and slot of value head h */
            for (int64_t e = 0; e < DV; e++) {
                assert_true(v[(t * NV + h) * DV + e] == (ref_real)(t * NK * group + j * group + 2 * DK + within * DV + e));
                assert_true(z[(t * NV + h) * DV + e] ==
                            (ref_real)(t * NK * group + j * group + 2 * DK + r * DV + within * DV + e));
            }
            assert_true(b[t * NV + h] == (ref_real)(1000 + t * 2 * NV + j * 2 * r + within));
            assert_true(a[t * NV + h] == (ref_real)(1000 + t * 2 * NV + j * 2 * r + r + within));
        }
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < NK; j++)
            for (int64_t d = 0; d < DK; d++) {
                assert_true(q[(t * NK + j) * DK + d] == (ref_real)(t * NK * group + j * group + d));
                assert_true(k[(t * NK + j) * DK + d] == (ref_real)(t * NK * group + j * group + DK + d));
            }
}

static void gates_follow_sigmoid_and_softplus_with_threshold(void **state)
{
    (void)state;
    ref_real a[4] = {-3.0f, 0.25f, 19.0f, 30.0f}, b[4] = {-2.0f, 0.0f, 1.5f, 8.0f}, g[4], beta[4];
    const float A_log[2] = {0.5f, 2.0f}, dt_bias[2] = {0.1f, -0.7f};
    ref_deltanet_gates_forward(g, beta, a, b, A_log, dt_bias, 2, 2);
    double want_g[4], want_b[4], got_g[4], got_b[4];
    for (int i = 0; i < 4; i++) {
        double x = (double)a[i] + (double)dt_bias[i % 2];
        double sp = x > 20.0 ? x : log(1.0 + exp(x));
        want_g[i] = -exp((double)A_log[i % 2]) * sp;
        want_b[i] = 1.0 / (1.0 + exp(-(double)b[i]));
        got_g[i] = (double)g[i];
        got_b[i] = (double)beta[i];
    }
    assert_tensor_close_f64("g", got_g, want_g, 4, 0.0, 4e-7);
    assert_tensor_close_f64("beta", got_b, want_b, 4, 0.0, 4e-7);
    assert_true(ref_softplus((ref_real)25) == (ref_real)25); /* above the threshold: x itself */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(chunked_form_matches_recurrent_over_chunk_sizes_and_lengths),
        cmocka_unit_test(naive_form_matches_recurrent_over_lengths),
        cmocka_unit_test(forms_agree_with_one_head_and_large_head_dims),
        cmocka_unit_test(forms_check_catches_a_chunk_that_drops_its_last_token),
        cmocka_unit_test(recurrent_form_matches_the_transition_matrix_formulation),
        cmocka_unit_test(split_follows_the_head_grouped_layout),
        cmocka_unit_test(gates_follow_sigmoid_and_softplus_with_threshold),
    };
    return cmocka_run_group_tests_name("ref_deltanet", tests, NULL, NULL);
}
