/* test_moe.c — softmax against log-sum-exp, top-k order and renormalisation, SwiGLU MLP and the
 * routed experts against a direct double computation, the shared-expert combine. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>

#include "../harness/rng.h"
#include "ops.h"
#include "testref.h"

static void softmax_equals_exp_of_x_minus_logsumexp(void **state)
{
    (void)state;
    enum { R = 3, E = 10 };
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 6);
    ref_real x[R * E], p[R * E];
    double got[R * E], want[R * E];
    for (int i = 0; i < R * E; i++) x[i] = (ref_real)(5.0 * q3n_rng_normal(&rng));
    x[0] = (ref_real)80; /* large logits must not overflow */
    ref_softmax_forward(p, x, R, E);
    for (int r = 0; r < R; r++) {
        double mx = -INFINITY, s = 0.0;
        for (int e = 0; e < E; e++) mx = fmax(mx, (double)x[r * E + e]);
        for (int e = 0; e < E; e++) s += exp((double)x[r * E + e] - mx);
        for (int e = 0; e < E; e++) {
            want[r * E + e] = exp((double)x[r * E + e] - mx - log(s));
            got[r * E + e] = (double)p[r * E + e];
        }
    }
    assert_tensor_close_f64("softmax", got, want, R * E, 1e-9 * REF_TOL_SCALE, 1e-6 * REF_TOL_SCALE);
}

static void topk_is_descending_with_lower_index_first_on_ties_and_renormalises(void **state)
{
    (void)state;
    ref_real probs[2 * 6] = {0.1f, 0.3f, 0.05f, 0.3f, 0.2f, 0.05f, /* tie 1 and 3 */
                             0.5f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f};
    int64_t idx[2 * 3];
    ref_real w[2 * 3];
    ref_topk_forward(idx, w, probs, 2, 6, 3, 0);
    assert_int_equal(idx[0], 1);
    assert_int_equal(idx[1], 3);
    assert_int_equal(idx[2], 4);
    assert_int_equal(idx[3], 0);
    assert_int_equal(idx[4], 1);
    assert_int_equal(idx[5], 2);
    assert_true(w[0] == probs[1] && w[2] == probs[4]);
    ref_topk_forward(idx, w, probs, 2, 6, 3, 1);
    double s = (double)w[0] + (double)w[1] + (double)w[2];
    assert_true(fabs(s - 1.0) <= 1e-6 * REF_TOL_SCALE);
    assert_true(fabs((double)w[0] - 0.3 / 0.8) <= 1e-6);
}

/* down(silu(gate x) * up x) per token, in double. */
static void reference_swiglu(double *out, const ref_real *x, const struct q3n_mlp_weights *w, int D, int W)
{
    double h[64];
    for (int i = 0; i < W; i++) {
        double g = 0.0, u = 0.0;
        for (int d = 0; d < D; d++) {
            g += (double)w->gate_proj[i * D + d] * (double)x[d];
            u += (double)w->up_proj[i * D + d] * (double)x[d];
        }
        h[i] = g / (1.0 + exp(-g)) * u;
    }
    for (int d = 0; d < D; d++) {
        out[d] = 0.0;
        for (int i = 0; i < W; i++) out[d] += (double)w->down_proj[d * W + i] * h[i];
    }
}

static void routed_experts_sum_weighted_swiglu_outputs(void **state)
{
    (void)state;
    enum { T = 3, D = 8, I = 6, E = 4, K = 2 };
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 7);
    static float wts[E][3][I * D];
    struct q3n_mlp_weights experts[E];
    for (int e = 0; e < E; e++) {
        for (int m = 0; m < 3; m++)
            for (int i = 0; i < I * D; i++) wts[e][m][i] = (float)(0.4 * q3n_rng_normal(&rng));
        experts[e] = (struct q3n_mlp_weights){wts[e][0], wts[e][1], wts[e][2]};
    }
    ref_real x[T * D], out[T * D], scratch[2 * I + D], mlp_scratch[T * 2 * I], mlp_out[T * D];
    for (int i = 0; i < T * D; i++) x[i] = (ref_real)q3n_rng_normal(&rng);
    int64_t idx[T * K] = {2, 0, 3, 3, 1, 2}; /* token 1 picks expert 3 twice */
    ref_real w[T * K] = {0.7f, 0.3f, 0.5f, 0.25f, 0.9f, 0.1f};
    ref_moe_experts_forward(out, x, idx, w, experts, scratch, T, D, I, K);
    double got[T * D], want[T * D], y[D];
    for (int t = 0; t < T; t++) {
        for (int d = 0; d < D; d++) want[t * D + d] = 0.0;
        for (int j = 0; j < K; j++) {
            reference_swiglu(y, x + t * D, &experts[idx[t * K + j]], D, I);
            for (int d = 0; d < D; d++) want[t * D + d] += (double)w[t * K + j] * y[d];
        }
    }
    for (int i = 0; i < T * D; i++) got[i] = (double)out[i];
    assert_tensor_close_f64("experts", got, want, T * D, 1e-6 * REF_TOL_SCALE, 1e-5 * REF_TOL_SCALE);

    ref_mlp_forward(mlp_out, x, &experts[1], mlp_scratch, T, D, I);
    for (int t = 0; t < T; t++) {
        reference_swiglu(want + t * D, x + t * D, &experts[1], D, I);
        for (int d = 0; d < D; d++) got[t * D + d] = (double)mlp_out[t * D + d];
    }
    assert_tensor_close_f64("mlp", got, want, T * D, 1e-6 * REF_TOL_SCALE, 1e-5 * REF_TOL_SCALE);
}

static void moe_output_adds_the_sigmoid_gated_shared_expert(void **state)
{
    (void)state;
    ref_real e[4] = {1.0f, 2.0f, -1.0f, 0.5f}, s[4] = {3.0f, -2.0f, 4.0f, 1.0f}, g[2] = {0.0f, -1.5f}, out[4];
    ref_moe_combine_forward(out, e, s, g, 2, 2);
    for (int t = 0; t < 2; t++)
        for (int d = 0; d < 2; d++) {
            double want = (double)e[t * 2 + d] + (double)s[t * 2 + d] / (1.0 + exp(-(double)g[t]));
            assert_true(fabs((double)out[t * 2 + d] - want) <= 1e-6 * REF_TOL_SCALE * fabs(want));
        }
    ref_moe_combine_forward(out, e, NULL, g, 2, 2);
    for (int i = 0; i < 4; i++) assert_true(out[i] == e[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(softmax_equals_exp_of_x_minus_logsumexp),
        cmocka_unit_test(topk_is_descending_with_lower_index_first_on_ties_and_renormalises),
        cmocka_unit_test(routed_experts_sum_weighted_swiglu_outputs),
        cmocka_unit_test(moe_output_adds_the_sigmoid_gated_shared_expert),
    };
    return cmocka_run_group_tests_name("ref_moe", tests, NULL, NULL);
}
