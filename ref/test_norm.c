/* test_norm.c — the three norms against independently computed values: RMSNorm via an explicit
 * mean in double, the gated norm via sigmoid, the L2 norm via the resulting vector's length. */
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

#define ROWS 5
#define N 48

static void fill(ref_real *x, float *w, struct q3n_rng *rng, double scale)
{
    for (int i = 0; i < ROWS * N; i++) x[i] = (ref_real)(scale * q3n_rng_normal(rng));
    for (int i = 0; i < N; i++) w[i] = (float)q3n_rng_range(rng, -0.5, 0.5);
}

static void rmsnorm_equals_x_over_root_mean_square_times_one_plus_w(void **state)
{
    (void)state;
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 1);
    ref_real x[ROWS * N], *out = testkit_guarded_real(ROWS * N);
    float w[N];
    double got[ROWS * N], want[ROWS * N];
    fill(x, w, &rng, 3.0);
    ref_rmsnorm_forward(out, x, w, ROWS, N, 1e-6);
    assert_true(testkit_guard_ok_real(out, ROWS * N));
    for (int r = 0; r < ROWS; r++) {
        double mean = 0.0;
        for (int i = 0; i < N; i++) mean += (double)x[r * N + i] * (double)x[r * N + i] / N;
        double rms = sqrt(mean + 1e-6);
        for (int i = 0; i < N; i++) {
            want[r * N + i] = (double)x[r * N + i] / rms * (1.0 + (double)w[i]);
            got[r * N + i] = (double)out[r * N + i];
        }
    }
    assert_tensor_close_f64("rmsnorm", got, want, ROWS * N, 1e-7 * REF_TOL_SCALE, 1e-6 * REF_TOL_SCALE);
    /* in place gives the same */
    ref_rmsnorm_forward(x, x, w, ROWS, N, 1e-6);
    for (int i = 0; i < ROWS * N; i++) assert_true(x[i] == out[i]);
    free(out);
}

static void gated_rmsnorm_multiplies_by_w_and_silu_of_z(void **state)
{
    (void)state;
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 2);
    ref_real x[ROWS * N], z[ROWS * N], out[ROWS * N];
    float w[N];
    double got[ROWS * N], want[ROWS * N];
    fill(x, w, &rng, 0.7);
    for (int i = 0; i < N; i++) w[i] += 1.0f; /* not zero-centred */
    for (int i = 0; i < ROWS * N; i++) z[i] = (ref_real)(2.0 * q3n_rng_normal(&rng));
    ref_rmsnorm_gated_forward(out, x, z, w, ROWS, N, 1e-6);
    for (int r = 0; r < ROWS; r++) {
        double mean = 0.0;
        for (int i = 0; i < N; i++) mean += (double)x[r * N + i] * (double)x[r * N + i] / N;
        for (int i = 0; i < N; i++) {
            double zz = (double)z[r * N + i], sig = 1.0 / (1.0 + exp(-zz));
            want[r * N + i] = (double)w[i] * (double)x[r * N + i] / sqrt(mean + 1e-6) * zz * sig;
            got[r * N + i] = (double)out[r * N + i];
        }
    }
    assert_tensor_close_f64("gated rmsnorm", got, want, ROWS * N, 1e-7 * REF_TOL_SCALE, 1e-6 * REF_TOL_SCALE);
}

static void l2norm_gives_unit_rows_with_eps_inside_the_root(void **state)
{
    (void)state;
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 3);
    ref_real x[ROWS * N], out[ROWS * N];
    float w[N];
    fill(x, w, &rng, 1.0);
    for (int i = 0; i < N; i++) x[i] = (ref_real)(1e-4 * (double)x[i]); /* row 0 tiny: eps matters */
    ref_l2norm_forward(out, x, ROWS, N, 1e-6);
    for (int r = 0; r < ROWS; r++) {
        double ss = 0.0, len = 0.0;
        for (int i = 0; i < N; i++) {
            ss += (double)x[r * N + i] * (double)x[r * N + i];
            len += (double)out[r * N + i] * (double)out[r * N + i];
        }
        double want = sqrt(ss / (ss + 1e-6)); /* |x| / sqrt(|x|^2 + eps) */
        assert_true(fabs(sqrt(len) - want) <= (1e-6 * want + 1e-7) * REF_TOL_SCALE);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rmsnorm_equals_x_over_root_mean_square_times_one_plus_w),
        cmocka_unit_test(gated_rmsnorm_multiplies_by_w_and_silu_of_z),
        cmocka_unit_test(l2norm_gives_unit_rows_with_eps_inside_the_root),
    };
    return cmocka_run_group_tests_name("ref_norm", tests, NULL, NULL);
}
