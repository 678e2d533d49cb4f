/* test_attention.c — partial RoPE against a complex rotation, causal GQA attention against a
 * log-sum-exp softmax in double, the q/gate split and the sigmoid gate. */
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

/* Pair (x_i, x_{i+rot/2}) as z = x_i + i x_{i+rot/2}; rotate-half RoPE is z * e^{i p f_i}. */
static void rope_is_a_complex_rotation_of_the_half_pairs(void **state)
{
    (void)state;
    enum { T = 5, NH = 3, HD = 16, ROT = 8 };
    const int64_t pos0 = 37;
    const double theta = 10000.0;
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 4);
    ref_real x[T * NH * HD], orig[T * NH * HD];
    for (int i = 0; i < T * NH * HD; i++) x[i] = orig[i] = (ref_real)q3n_rng_normal(&rng);
    ref_rope_forward(x, T, NH, HD, ROT, pos0, theta);
    double got[T * NH * HD], want[T * NH * HD];
    for (int t = 0; t < T; t++)
        for (int h = 0; h < NH; h++) {
            const ref_real *o = orig + (t * NH + h) * HD;
            double *wv = want + (t * NH + h) * HD;
            for (int i = 0; i < ROT / 2; i++) {
                double f = pow(theta, -2.0 * i / ROT);
                /* (re + i im) * (cos a + i sin a) */
                double re = (double)o[i], im = (double)o[i + ROT / 2], a = (double)(pos0 + t) * f;
                wv[i] = re * cos(a) - im * sin(a);
                wv[i + ROT / 2] = re * sin(a) + im * cos(a);
            }
            for (int i = ROT; i < HD; i++) wv[i] = (double)o[i]; /* pass-through dims */
        }
    for (int i = 0; i < T * NH * HD; i++) got[i] = (double)x[i];
    assert_tensor_close_f64("rope", got, want, T * NH * HD, 2e-5 * REF_TOL_SCALE, 1e-5 * REF_TOL_SCALE);
    for (int t = 0; t < T; t++)
        for (int i = ROT; i < HD; i++) assert_true(x[t * NH * HD + i] == orig[t * NH * HD + i]);
}

/* Attention over a cache: softmax as exp(s - logsumexp(s)) in double, GQA head h -> h / groups. */
static void attention_is_causal_gqa_softmax_over_the_cache(void **state)
{
    (void)state;
    enum { T = 4, POS0 = 3, S = POS0 + T, NH = 4, NKV = 2, HD = 8 };
    struct q3n_rng rng;
    q3n_rng_seed(&rng, 5);
    ref_real q[T * NH * HD], kc[S * NKV * HD], vc[S * NKV * HD], scratch[S], *out = testkit_guarded_real(T * NH * HD);
    for (int i = 0; i < T * NH * HD; i++) q[i] = (ref_real)(2.0 * q3n_rng_normal(&rng));
    for (int i = 0; i < S * NKV * HD; i++) kc[i] = (ref_real)q3n_rng_normal(&rng);
    for (int i = 0; i < S * NKV * HD; i++) vc[i] = (ref_real)q3n_rng_normal(&rng);
    testkit_poison_real(scratch, S);
    ref_attention_forward(out, q, kc, vc, scratch, T, POS0, NH, NKV, HD);
    assert_true(testkit_guard_ok_real(out, T * NH * HD));
    double got[T * NH * HD], want[T * NH * HD];
    for (int t = 0; t < T; t++)
        for (int h = 0; h < NH; h++) {
            int kv = h / (NH / NKV), n = POS0 + t + 1;
            double s[S], mx = -INFINITY, lse = 0.0;
            for (int j = 0; j < n; j++) {
                s[j] = 0.0;
                for (int d = 0; d < HD; d++) s[j] += (double)q[(t * NH + h) * HD + d] * (double)kc[(j * NKV + kv) * HD + d];
                s[j] /= sqrt((double)HD);
                if (s[j] > mx) mx = s[j];
            }
            for (int j = 0; j < n; j++) lse += exp(s[j] - mx);
            lse = mx + log(lse);
            for (int d = 0; d < HD; d++) {
                double acc = 0.0;
                for (int j = 0; j < n; j++) acc += exp(s[j] - lse) * (double)vc[(j * NKV + kv) * HD + d];
                want[(t * NH + h) * HD + d] = acc;
            }
        }
    for (int i = 0; i < T * NH * HD; i++) got[i] = (double)out[i];
    assert_tensor_close_f64("attention", got, want, T * NH * HD, 1e-6 * REF_TOL_SCALE, 1e-5 * REF_TOL_SCALE);
    free(out);
}

static void q_proj_splits_per_head_into_query_then_gate(void **state)
{
    (void)state;
    enum { T = 2, NH = 3, HD = 4 };
    ref_real qg[T * NH * 2 * HD], q[T * NH * HD], gate[T * NH * HD];
    for (int i = 0; i < T * NH * 2 * HD; i++) qg[i] = (ref_real)i;
    ref_attn_split_qgate(q, gate, qg, T, NH, HD);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < NH; h++)
            for (int d = 0; d < HD; d++) {
                int base = (t * NH + h) * 2 * HD; /* view(T, NH, 2HD) */
                assert_true(q[(t * NH + h) * HD + d] == (ref_real)(base + d));
                assert_true(gate[(t * NH + h) * HD + d] == (ref_real)(base + HD + d));
            }
    ref_real x[3] = {2.0f, -1.0f, 0.5f}, g[3] = {0.0f, 3.0f, -2.0f}, o[3];
    ref_sigmoid_gate_forward(o, x, g, 3);
    for (int i = 0; i < 3; i++) {
        double want = (double)x[i] / (1.0 + exp(-(double)g[i]));
        assert_true(fabs((double)o[i] - want) <= 1e-6 * REF_TOL_SCALE * fabs(want));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rope_is_a_complex_rotation_of_the_half_pairs),
        cmocka_unit_test(attention_is_causal_gqa_softmax_over_the_cache),
        cmocka_unit_test(q_proj_splits_per_head_into_query_then_gate),
    };
    return cmocka_run_group_tests_name("ref_attention", tests, NULL, NULL);
}
