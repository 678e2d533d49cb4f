/* testkit.c — see testkit.h. */
#include "testkit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SENTINEL_F32 (-12345.6789f)
#define SENTINEL_F64 (-12345.6789)

#define DEFINE_REL_L2(suffix, type)                                                 \
    double testkit_rel_l2_##suffix(const type *got, const type *want, int64_t n)    \
    {                                                                               \
        double num = 0.0, den = 0.0;                                                \
        for (int64_t i = 0; i < n; i++) {                                           \
            double d = (double)got[i] - (double)want[i];                            \
            num += d * d;                                                           \
            den += (double)want[i] * (double)want[i];                               \
        }                                                                           \
        if (isnan(num) || isnan(den)) return NAN;                                   \
        if (den == 0.0) return num == 0.0 ? 0.0 : INFINITY;                         \
        return sqrt(num / den);                                                     \
    }
DEFINE_REL_L2(f32, float)
DEFINE_REL_L2(f64, double)

#define DEFINE_CLOSE(suffix, type)                                                                        \
    int testkit_close_##suffix(const char *name, const type *got, const type *want, int64_t n, double atol, \
                               double rtol)                                                               \
    {                                                                                                     \
        int64_t worst = -1, bad = 0;                                                                      \
        double worst_excess = -1.0;                                                                       \
        for (int64_t i = 0; i < n; i++) {                                                                 \
            double g = (double)got[i], w = (double)want[i];                                               \
            double err = fabs(g - w), tol = atol + rtol * fabs(w);                                        \
            int nonfinite = !isfinite(g) || !isfinite(w);                                                 \
            if (nonfinite && !(g == w) && !(isnan(g) && isnan(w))) {                                      \
                bad++;                                                                                    \
                if (worst_excess < INFINITY) { worst = i; worst_excess = INFINITY; }                      \
            } else if (!nonfinite && !(err <= tol)) {                                                     \
                bad++;                                                                                    \
                if (err - tol > worst_excess) { worst = i; worst_excess = err - tol; }                    \
            }                                                                                             \
        }                                                                                                 \
        if (bad == 0) return 1;                                                                           \
        printf("MISMATCH %s: %lld of %lld elements outside atol=%g rtol=%g; worst [%lld] got=%.9g "      \
               "want=%.9g; rel_l2=%.3g\n",                                                                \
               name, (long long)bad, (long long)n, atol, rtol, (long long)worst, (double)got[worst],      \
               (double)want[worst], testkit_rel_l2_##suffix(got, want, n));                               \
        return 0;                                                                                         \
    }
DEFINE_CLOSE(f32, float)
DEFINE_CLOSE(f64, double)

#define DEFINE_REL_L2_WITHIN(suffix, type)                                                                 \
    int testkit_rel_l2_within_##suffix(const char *name, const type *got, const type *want, int64_t n,     \
                                       double max)                                                         \
    {                                                                                                      \
        double r = testkit_rel_l2_##suffix(got, want, n);                                                  \
        if (r <= max) return 1;                                                                            \
        printf("MISMATCH %s: rel_l2=%.3g exceeds %.3g over %lld elements\n", name, r, max, (long long)n); \
        return 0;                                                                                          \
    }
DEFINE_REL_L2_WITHIN(f32, float)
DEFINE_REL_L2_WITHIN(f64, double)

void testkit_poison_f32(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) x[i] = NAN;
}

void testkit_poison_f64(double *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) x[i] = NAN;
}

float *testkit_guarded_f32(int64_t n)
{
    float *x = malloc(sizeof(float) * (size_t)(n + TESTKIT_GUARD));
    if (!x) return NULL;
    testkit_poison_f32(x, n);
    for (int64_t i = 0; i < TESTKIT_GUARD; i++) x[n + i] = SENTINEL_F32;
    return x;
}

double *testkit_guarded_f64(int64_t n)
{
    double *x = malloc(sizeof(double) * (size_t)(n + TESTKIT_GUARD));
    if (!x) return NULL;
    testkit_poison_f64(x, n);
    for (int64_t i = 0; i < TESTKIT_GUARD; i++) x[n + i] = SENTINEL_F64;
    return x;
}

int testkit_guard_ok_f32(const float *x, int64_t n)
{
    for (int64_t i = 0; i < TESTKIT_GUARD; i++)
        if (memcmp(&x[n + i], &(float){SENTINEL_F32}, sizeof(float)) != 0) {
            printf("GUARD overwritten at element %lld past the end\n", (long long)i);
            return 0;
        }
    return 1;
}

int testkit_guard_ok_f64(const double *x, int64_t n)
{
    for (int64_t i = 0; i < TESTKIT_GUARD; i++)
        if (memcmp(&x[n + i], &(double){SENTINEL_F64}, sizeof(double)) != 0) {
            printf("GUARD overwritten at element %lld past the end\n", (long long)i);
            return 0;
        }
    return 1;
}
