/* test_compare.c — metrics, ULPs, the small-value domain, fail-closed verdicts and top-k sets
 * (harness/compare.c). Expected values come from straightforward second computations in the
 * test (naive loops in long double) or from constructions whose answer is exact. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compare.h"
#include "rng.h"
#include "testkit.h"

static struct q3n_tolerance tol_of(double rtol, double atol, double small, double rel_l2)
{
    struct q3n_tolerance t;
    memset(&t, 0, sizeof t);
    t.kind = Q3N_KIND_FLOAT;
    t.rtol = rtol;
    t.atol = atol;
    t.small = small;
    t.rel_l2 = rel_l2;
    return t;
}

static void fill(struct q3n_rng *g, double *a, double *b, int64_t n, double noise)
{
    for (int64_t i = 0; i < n; i++) {
        b[i] = q3n_rng_normal(g);
        a[i] = b[i] + noise * q3n_rng_normal(g);
    }
}

static void metrics_agree_with_a_naive_long_double_computation(void **state)
{
    (void)state;
    enum { N = 4099 };
    double *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
    struct q3n_rng g;
    q3n_rng_seed(&g, 7);
    fill(&g, a, b, N, 1e-3);
    struct q3n_tolerance tol = tol_of(1e-3, 1e-4, 1e-2, 1e-2);
    struct q3n_metrics m;
    q3n_compare_f64(&m, a, b, N, &tol, Q3N_ULP_NONE);
    long double se = 0, sb = 0, sa = 0, sab = 0, sabs = 0, mx = 0;
    int64_t imx = -1, outside = 0;
    for (int64_t i = 0; i < N; i++) {
        long double d = (long double)a[i] - b[i];
        se += d * d;
        sb += (long double)b[i] * b[i];
        sa += (long double)a[i] * a[i];
        sab += (long double)a[i] * b[i];
        sabs += fabsl(d);
        if (fabsl(d) > mx) {
            mx = fabsl(d);
            imx = i;
        }
        double mag = fabs(b[i]) > 1e-2 ? fabs(b[i]) : 1e-2;
        if (!(fabs(a[i] - b[i]) <= 1e-4 + 1e-3 * mag)) outside++;
    }
    assert_int_equal(m.numel, N);
    assert_int_equal(m.finite_pairs, N);
    assert_int_equal(m.max_abs_index, imx);
    assert_true(fabs(m.max_abs - (double)mx) <= 1e-15);
    assert_true(fabs(m.rel_l2 - (double)sqrtl(se / sb)) <= 1e-12 * m.rel_l2);
    assert_true(fabs(m.rmse - (double)sqrtl(se / N)) <= 1e-12 * m.rmse);
    assert_true(fabs(m.mean_abs - (double)(sabs / N)) <= 1e-12 * m.mean_abs);
    assert_true(fabs(m.cosine - (double)(sab / sqrtl(sa * sb))) <= 1e-12);
    assert_int_equal(m.outside, outside);
    assert_true(outside > 0); /* the case exercises the bound */
    free(a);
    free(b);
}

static void feeding_in_blocks_gives_the_same_metrics_as_one_call(void **state)
{
    (void)state;
    enum { N = 1000 };
    double a[N], b[N];
    struct q3n_rng g;
    q3n_rng_seed(&g, 11);
    fill(&g, a, b, N, 1e-4);
    struct q3n_tolerance tol = tol_of(1e-4, 1e-5, 1e-3, 1e-3);
    struct q3n_metrics one, many;
    q3n_compare_f64(&one, a, b, N, &tol, Q3N_ULP_F32);
    struct q3n_cmp_acc acc;
    q3n_cmp_init(&acc, &tol, Q3N_ULP_F32);
    for (int64_t i = 0; i < N; i += 77) q3n_cmp_feed(&acc, a + i, b + i, (N - i) < 77 ? N - i : 77, i);
    q3n_cmp_finish(&acc, &many);
    assert_memory_equal(&one, &many, sizeof one);
}

static void max_abs_index_decodes_to_token_head_channel(void **state)
{
    (void)state;
    enum { T = 5, NH = 3, HD = 4, N = T * NH * HD };
    double a[N], b[N];
    for (int i = 0; i < N; i++) a[i] = b[i] = 1.0;
    int64_t dims[3] = {T, NH, HD}, c[3];
    int64_t planted = (3 * NH + 2) * HD + 1; /* t=3 h=2 c=1 */
    a[planted] = 1.5;
    struct q3n_tolerance tol = tol_of(0, 0, 0, 1);
    struct q3n_metrics m;
    q3n_compare_f64(&m, a, b, N, &tol, Q3N_ULP_NONE);
    assert_int_equal(m.max_abs_index, planted);
    q3n_index_decode(m.max_abs_index, 3, dims, c);
    assert_int_equal(c[0], 3);
    assert_int_equal(c[1], 2);
    assert_int_equal(c[2], 1);
}

static void nan_where_the_reference_is_finite_fails_and_matching_nans_do_not(void **state)
{
    (void)state;
    double b[4] = {1, 2, NAN, INFINITY};
    double a[4] = {1, NAN, NAN, INFINITY};
    struct q3n_tolerance tol = tol_of(1, 1, 0, 1); /* generous: only the NaN can fail */
    struct q3n_metrics m;
    q3n_compare_f64(&m, a, b, 4, &tol, Q3N_ULP_F32);
    assert_int_equal(m.nan_a, 2);
    assert_int_equal(m.nan_b, 1);
    assert_int_equal(m.inf_a, 1);
    assert_int_equal(m.inf_b, 1);
    assert_int_equal(m.nonfinite_bad, 1);
    assert_int_equal(m.first_nonfinite_bad_index, 1);
    double h;
    assert_false(q3n_judge_metrics(&m, &tol, 0, &h));
    assert_true(isinf(h));
    a[1] = 2;
    q3n_compare_f64(&m, a, b, 4, &tol, Q3N_ULP_F32);
    assert_int_equal(m.nonfinite_bad, 0);
    assert_true(q3n_judge_metrics(&m, &tol, 0, &h));
    b[3] = -INFINITY; /* opposite infinities disagree */
    q3n_compare_f64(&m, a, b, 4, &tol, Q3N_ULP_F32);
    assert_int_equal(m.nonfinite_bad, 1);
}

static void small_values_are_judged_by_absolute_error(void **state)
{
    (void)state;
    /* |b| = 1e-9: relative error 100 but absolute error 1e-7, inside atol 1e-6. */
    double b[2] = {1e-9, 1.0}, a[2] = {1e-9 + 1e-7, 1.0};
    struct q3n_tolerance tol = tol_of(1e-3, 1e-6, 1e-3, 1);
    struct q3n_metrics m;
    q3n_compare_f64(&m, a, b, 2, &tol, Q3N_ULP_NONE);
    assert_int_equal(m.outside, 0);
    assert_true(m.max_rel <= 1e-7 / 1e-3 * 1.0000001); /* relative to small, not to |b| */
    a[0] = 1e-9 + 1e-5;                               /* now above atol + rtol*small = 2e-6 */
    q3n_compare_f64(&m, a, b, 2, &tol, Q3N_ULP_NONE);
    assert_int_equal(m.outside, 1);
    assert_int_equal(m.bound_ratio_index, 0);
}

static void headroom_is_the_error_as_a_share_of_the_tolerance(void **state)
{
    (void)state;
    enum { N = 64 };
    double a[N], b[N];
    for (int i = 0; i < N; i++) {
        b[i] = 1.0;
        a[i] = 1.0 + 0.5e-3; /* half of rtol 1e-3 */
    }
    struct q3n_tolerance tol = tol_of(1e-3, 0, 0, 1.0);
    struct q3n_metrics m;
    q3n_compare_f64(&m, a, b, N, &tol, Q3N_ULP_NONE);
    double h;
    assert_true(q3n_judge_metrics(&m, &tol, 0, &h));
    assert_true(fabs(h - 50.0) < 1e-6);
    assert_true(fabs(m.min_rtol - 0.5e-3) < 1e-12);
    /* rel_l2 dominates when its bound is the tighter one: rel_l2 = 5e-4 of allowed 2.5e-4 */
    tol.rel_l2 = 2.5e-4;
    assert_false(q3n_judge_metrics(&m, &tol, 0, &h));
    assert_true(fabs(h - 200.0) < 1e-6);
    /* oracle mode judges rel_l2 against the budget only */
    assert_true(q3n_judge_metrics(&m, &tol, 1e-3, &h));
    assert_true(fabs(h - 50.0) < 1e-6);
}

static void a_nan_metric_never_passes(void **state)
{
    (void)state;
    struct q3n_metrics m;
    memset(&m, 0, sizeof m);
    m.rel_l2 = NAN;
    struct q3n_tolerance tol = tol_of(1, 1, 0, 1);
    assert_false(q3n_judge_metrics(&m, &tol, 0, NULL));
    assert_false(q3n_judge_metrics(&m, &tol, 1.0, NULL));
}

static void ulp_distance_counts_representable_steps(void **state)
{
    (void)state;
    float x = 1.0f;
    assert_true(q3n_ulp_distance(x, nextafterf(x, 2.0f), Q3N_ULP_F32) == 1.0);
    assert_true(q3n_ulp_distance(-x, nextafterf(-x, -2.0f), Q3N_ULP_F32) == 1.0);
    assert_true(q3n_ulp_distance(0.0, -0.0, Q3N_ULP_F32) == 0.0);
    /* the smallest positive and negative subnormals are 2 steps apart through zero */
    assert_true(q3n_ulp_distance(1e-45f, -1e-45f, Q3N_ULP_F32) == 2.0);
    /* bf16: 1.0 and the next bfloat16 (1 + 2^-7) are one bf16 ULP apart */
    assert_true(q3n_ulp_distance(1.0, 1.0 + 1.0 / 128, Q3N_ULP_BF16) == 1.0);
}

static void ulp_p99_comes_from_the_histogram_within_an_eighth(void **state)
{
    (void)state;
    enum { N = 1000 };
    double a[N], b[N];
    for (int i = 0; i < N; i++) {
        b[i] = 1.0;
        a[i] = nextafterf(1.0f, 2.0f); /* 1 ULP */
    }
    for (int i = 0; i < 10; i++) { /* 1 % at 1000 ULPs */
        float f = 1.0f;
        for (int k = 0; k < 1000; k++) f = nextafterf(f, 2.0f);
        a[i * 97] = f;
    }
    struct q3n_tolerance tol = tol_of(1, 1, 0, 1);
    struct q3n_metrics m;
    q3n_compare_f64(&m, a, b, N, &tol, Q3N_ULP_F32);
    assert_true(m.ulp_max == 1000.0);
    assert_true(m.ulp_p99 >= 1.0 && m.ulp_p99 <= 1.0 + 1.0 / Q3N_ULP_SUB);
    /* one more outlier pushes the 99th percentile into the outliers */
    a[5] = a[0];
    q3n_compare_f64(&m, a, b, N, &tol, Q3N_ULP_F32);
    assert_true(m.ulp_p99 >= 1000.0 / (1.0 + 1.0 / Q3N_ULP_SUB) && m.ulp_p99 <= 1000.0);
}

static void topk_sets_ignore_order_and_classify_flips_by_margin(void **state)
{
    (void)state;
    enum { T = 3, K = 2, E = 4 };
    /* reference probs per token; token 1 has a near-tie between experts 1 and 2 */
    double p[T * E] = {0.5, 0.3, 0.15, 0.05, 0.4, 0.3, 0.29, 0.01, 0.6, 0.3, 0.05, 0.05};
    int64_t b[T * K] = {0, 1, 0, 1, 0, 1};
    int64_t a[T * K] = {1, 0, 0, 2, 0, 1}; /* token 0: order only; token 1: 1 -> 2 */
    uint8_t flipped[T];
    struct q3n_topk_stats s;
    q3n_topk_init(&s, K);
    q3n_topk_feed(&s, a, b, p, 0, T, E, 0.02, flipped);
    assert_int_equal(s.flipped_tokens, 1);
    assert_int_equal(s.near_tie_tokens, 1);
    assert_int_equal(s.hard_tokens, 0);
    assert_int_equal(s.first_flip_token, 1);
    assert_int_equal(flipped[0], 0);
    assert_int_equal(flipped[1], 1);
    assert_true(fabs(s.max_near_tie_margin - (0.3 - 0.29)) < 1e-15);
    /* the same flip against a tighter threshold is hard */
    q3n_topk_init(&s, K);
    q3n_topk_feed(&s, a, b, p, 0, T, E, 0.005, NULL);
    assert_int_equal(s.hard_tokens, 1);
    assert_int_equal(s.first_hard_token, 1);
    /* without probabilities every flip is hard */
    q3n_topk_init(&s, K);
    q3n_topk_feed(&s, a, b, NULL, 0, T, E, 0.02, NULL);
    assert_int_equal(s.hard_tokens, 1);
    /* an index outside [0, E) is invalid */
    a[5] = 9;
    q3n_topk_init(&s, K);
    q3n_topk_feed(&s, a, b, p, 0, T, E, 0.02, NULL);
    assert_int_equal(s.invalid, 1);
}

static void routing_weights_align_by_expert_not_position(void **state)
{
    (void)state;
    int64_t b_idx[3] = {4, 7, 1}, a_idx[3] = {7, 1, 4};
    double a_w[3] = {0.3, 0.2, 0.5}, out[3];
    assert_true(q3n_topk_align_weights(out, a_idx, a_w, b_idx, 3));
    assert_true(out[0] == 0.5 && out[1] == 0.3 && out[2] == 0.2);
    a_idx[2] = 5;
    assert_false(q3n_topk_align_weights(out, a_idx, a_w, b_idx, 3));
}

static void taps_of_every_dtype_convert_to_double(void **state)
{
    (void)state;
    uint16_t bf[2] = {0x3f80, 0xc000}; /* 1.0, -2.0 */
    uint16_t hf[2] = {0x3c00, 0x7c00}; /* 1.0, +inf */
    double out[2];
    q3n_to_f64(out, bf, Q3N_DTYPE_BF16, 2);
    assert_true(out[0] == 1.0 && out[1] == -2.0);
    q3n_to_f64(out, hf, Q3N_DTYPE_F16, 2);
    assert_true(out[0] == 1.0 && isinf(out[1]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(metrics_agree_with_a_naive_long_double_computation),
        cmocka_unit_test(feeding_in_blocks_gives_the_same_metrics_as_one_call),
        cmocka_unit_test(max_abs_index_decodes_to_token_head_channel),
        cmocka_unit_test(nan_where_the_reference_is_finite_fails_and_matching_nans_do_not),
        cmocka_unit_test(small_values_are_judged_by_absolute_error),
        cmocka_unit_test(headroom_is_the_error_as_a_share_of_the_tolerance),
        cmocka_unit_test(a_nan_metric_never_passes),
        cmocka_unit_test(ulp_distance_counts_representable_steps),
        cmocka_unit_test(ulp_p99_comes_from_the_histogram_within_an_eighth),
        cmocka_unit_test(topk_sets_ignore_order_and_classify_flips_by_margin),
        cmocka_unit_test(routing_weights_align_by_expert_not_position),
        cmocka_unit_test(taps_of_every_dtype_convert_to_double),
    };
    return cmocka_run_group_tests_name("harness_compare", tests, NULL, NULL);
}
