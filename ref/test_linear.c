/* test_linear.c — nn.Linear (with and without bias) against a double matrix product, the
 * embedding lookup, the residual add and the activations' formulas. */
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

static void linear_is_x_times_w_transposed_plus_bias(void **state)
{
    (void)state;
    enum { T = 3, N = 5, KIN = 33 };
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 11);
    float W[N * KIN], bias[N];
    ref_real x[T * KIN], *out = testkit_guarded_real(T * N);
    for (int i = 0; i < N * KIN; i++) W[i] = (float)q3n_rng_normal(&rng);
    for (int i = 0; i < N; i++) bias[i] = (float)q3n_rng_normal(&rng);
    for (int i = 0; i < T * KIN; i++) x[i] = (ref_real)q3n_rng_normal(&rng);
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        ref_linear_forward(out, x, W, with_bias ? bias : NULL, T, N, KIN);
        assert_true(testkit_guard_ok_real(out, T * N));
        double got[T * N], want[T * N];
        for (int t = 0; t < T; t++)
            for (int n = 0; n < N; n++) {
                double acc = with_bias ? (double)bias[n] : 0.0;
                for (int k = 0; k < KIN; k++) acc += (double)x[t * KIN + k] * (double)W[n * KIN + k];
                want[t * N + n] = acc;
                got[t * N + n] = (double)out[t * N + n];
            }
        assert_tensor_close_f64("linear", got, want, T * N, 1e-5 * REF_TOL_SCALE, 1e-5 * REF_TOL_SCALE);
    }
    free(out);
}

static void embedding_copies_the_token_rows(void **state)
{
    (void)state;
    float table[4 * 3] = {0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32};
    int64_t tok[3] = {3, 0, 3};
    ref_real out[9];
    ref_embed_forward(out, tok, table, 3, 3);
    for (int t = 0; t < 3; t++)
        for (int d = 0; d < 3; d++) assert_true(out[t * 3 + d] == (ref_real)table[tok[t] * 3 + d]);
    ref_real y[3] = {1, 2, 3};
    ref_add_inplace(out, y, 3);
    assert_true(out[0] == (ref_real)31 && out[2] == (ref_real)35);
}

static void activations_follow_their_formulas(void **state)
{
    (void)state;
#ifdef Q3N_REF64
    const double tol = 1e-13; /* resolves the softplus threshold's 2e-9 jump at 20 */
#else
    const double tol = 1e-6;
#endif
    const double xs[] = {-30.0, -3.0, -0.5, 0.0, 0.7, 4.0, 15.0, 19.9, 20.0, 20.5, 60.0};
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++) {
        double x = xs[i], sig = 1.0 / (1.0 + exp(-x));
        double sp = x > 20.0 ? x : log1p(exp(x));
        assert_true(fabs((double)ref_sigmoid((ref_real)x) - sig) <= tol * sig + 1e-30);
        assert_true(fabs((double)ref_silu((ref_real)x) - x * sig) <= tol * fabs(x * sig) + 1e-30);
        assert_true(fabs((double)ref_softplus((ref_real)x) - sp) <= tol * sp + 1e-30);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(linear_is_x_times_w_transposed_plus_bias),
        cmocka_unit_test(embedding_copies_the_token_rows),
        cmocka_unit_test(activations_follow_their_formulas),
    };
    return cmocka_run_group_tests_name("ref_linear", tests, NULL, NULL);
}
