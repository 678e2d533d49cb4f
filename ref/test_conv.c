/* test_conv.c — the causal depthwise conv against its sum written per output, the conv state
 * against the last K columns, and conv-with-state on a split sequence against one pass. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "../harness/rng.h"
#include "ops.h"
#include "testref.h"

enum { T = 7, CC = 5, K = 3 };

static void make(ref_real *x, float *w, uint64_t seed)
{
    struct q3n_rng rng;
    q3n_rng_seed(&rng, seed);
    for (int i = 0; i < T * CC; i++) x[i] = (ref_real)q3n_rng_normal(&rng);
    for (int i = 0; i < CC * K; i++) w[i] = (float)q3n_rng_normal(&rng);
}

/* out[t,c] = silu(sum_j w[c,j] x[t-(K-1)+j, c]) with x = 0 before the start (padding K-1). */
static void conv_is_a_left_padded_causal_sum_then_silu(void **state)
{
    (void)state;
    ref_real x[T * CC], out[T * CC];
    float w[CC * K];
    make(x, w, 8);
    ref_conv1d_causal_forward(out, x, w, NULL, T, CC, K);
    double got[T * CC], want[T * CC];
    for (int t = 0; t < T; t++)
        for (int c = 0; c < CC; c++) {
            double acc = 0.0;
            for (int j = 0; j < K; j++) {
                int src = t - (K - 1) + j;
                if (src >= 0) acc += (double)w[c * K + j] * (double)x[src * CC + c];
            }
            want[t * CC + c] = acc / (1.0 + exp(-acc));
            got[t * CC + c] = (double)out[t * CC + c];
        }
    assert_tensor_close_f64("conv", got, want, T * CC, 1e-6 * REF_TOL_SCALE, 1e-5 * REF_TOL_SCALE);
}

static void state_keeps_the_last_k_columns_zero_padded(void **state)
{
    (void)state;
    ref_real x[T * CC], st[CC * K];
    float w[CC * K];
    make(x, w, 9);
    memset(st, 0, sizeof st);
    ref_conv1d_state_update(st, x, 2, CC, K); /* 2 < K tokens: one zero column on the left */
    for (int c = 0; c < CC; c++) {
        assert_true(st[c * K + 0] == 0);
        assert_true(st[c * K + 1] == x[0 * CC + c]);
        assert_true(st[c * K + 2] == x[1 * CC + c]);
    }
    ref_conv1d_state_update(st, x + 2 * CC, 1, CC, K);
    for (int c = 0; c < CC; c++) {
        assert_true(st[c * K + 0] == x[0 * CC + c]);
        assert_true(st[c * K + 2] == x[2 * CC + c]);
    }
}

/* Convolving x[0..3) fresh, then x[3..T) from the state, equals one pass over x. */
static void conv_continued_from_the_state_equals_one_pass(void **state)
{
    (void)state;
    ref_real x[T * CC], full[T * CC], split[T * CC], st[CC * K];
    float w[CC * K];
    make(x, w, 10);
    ref_conv1d_causal_forward(full, x, w, NULL, T, CC, K);
    memset(st, 0, sizeof st);
    ref_conv1d_causal_forward(split, x, w, st, 3, CC, K);
    ref_conv1d_state_update(st, x, 3, CC, K);
    for (int t = 3; t < T; t++) {
        ref_conv1d_causal_forward(split + t * CC, x + t * CC, w, st, 1, CC, K);
        ref_conv1d_state_update(st, x + t * CC, 1, CC, K);
    }
    for (int i = 0; i < T * CC; i++) assert_true(split[i] == full[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(conv_is_a_left_padded_causal_sum_then_silu),
        cmocka_unit_test(state_keeps_the_last_k_columns_zero_padded),
        cmocka_unit_test(conv_continued_from_the_state_equals_one_pass),
    };
    return cmocka_run_group_tests_name("ref_conv", tests, NULL, NULL);
}
