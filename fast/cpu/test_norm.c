/* test_norm.c — cpu_ norms and the small elementwise ops against their ref_ twins. */
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

static void norms_match_ref_on_rows_of_every_width(void **state)
{
    (void)state;
    /* 1200 x 1024 rows cost over 2 x CPU_PAR_MIN_COST: the rows then run on two threads */
    const int64_t widths[] = {1, 16, 40, 128, 1024};
    const int64_t rows_[] = {1, 3, 17, 1200};
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 7);
    for (size_t a = 0; a < sizeof widths / sizeof widths[0]; a++)
        for (size_t b = 0; b < sizeof rows_ / sizeof rows_[0]; b++) {
            int64_t n = widths[a], rows = rows_[b], N = rows * n;
            float *x = gbuf(N), *z = gbuf(N), *w = gbuf(n), *gw = gbuf(n);
            float *got = gbuf(N), *want = gbuf(N);
            fill_normal(x, N, &rng, 2.0);
            fill_normal(z, N, &rng, 1.5);
            fill_uniform(w, n, &rng, -0.5, 0.5);
            fill_uniform(gw, n, &rng, 0.7, 1.3);
            char what[128];
            snprintf(what, sizeof what, "rmsnorm rows=%lld n=%lld", (long long)rows, (long long)n);
            ref_rmsnorm_forward(want, x, w, rows, n, 1e-6);
            cpu_rmsnorm_forward(got, x, w, rows, n, 1e-6);
            assert_true(cpu_check(what, got, want, N, 1e-6));
            snprintf(what, sizeof what, "rmsnorm_gated rows=%lld n=%lld", (long long)rows, (long long)n);
            ref_rmsnorm_gated_forward(want, x, z, gw, rows, n, 1e-6);
            cpu_rmsnorm_gated_forward(got, x, z, gw, rows, n, 1e-6);
            assert_true(cpu_check(what, got, want, N, 1e-6));
            snprintf(what, sizeof what, "l2norm rows=%lld n=%lld", (long long)rows, (long long)n);
            ref_l2norm_forward(want, x, rows, n, 1e-6);
            cpu_l2norm_forward(got, x, rows, n, 1e-6);
            assert_true(cpu_check(what, got, want, N, 1e-6));
            free(x);
            free(z);
            free(w);
            free(gw);
            free(got);
            free(want);
        }
}

static void activations_match_ref_over_their_range(void **state)
{
    (void)state;
    int64_t n = 4001;
    float *x = gbuf(n), *got = gbuf(n), *want = gbuf(n);
    for (int64_t i = 0; i < n; i++) x[i] = -40.0f + 80.0f * (float)i / (float)(n - 1);
    for (int64_t i = 0; i < n; i++) {
        got[i] = cpu_silu(x[i]);
        want[i] = ref_silu(x[i]);
    }
    assert_true(cpu_check("silu x in [-40,40]", got, want, n, 1e-6));
    for (int64_t i = 0; i < n; i++) {
        got[i] = cpu_sigmoid(x[i]);
        want[i] = ref_sigmoid(x[i]);
    }
    assert_true(cpu_check("sigmoid x in [-40,40]", got, want, n, 1e-6));
    for (int64_t i = 0; i < n; i++) {
        got[i] = cpu_softplus(x[i]);
        want[i] = ref_softplus(x[i]);
    }
    assert_true(cpu_check("softplus x in [-40,40]", got, want, n, 1e-6));
    free(x);
    free(got);
    free(want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(norms_match_ref_on_rows_of_every_width),
        cmocka_unit_test(activations_match_ref_over_their_range),
    };
    return cmocka_run_group_tests_name("fast_cpu_norm", tests, NULL, NULL);
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
    return cmocka_run_group_tests_name("fast_cpu_norm", tests, NULL, NULL);
}

#endif
