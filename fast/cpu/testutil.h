/* testutil.h — shared helpers of the fast/cpu op tests (header-only, test binaries only).
 *
 * Every output buffer comes from testkit_guarded_f32 (NaN-poisoned, sentinels after it);
 * inputs are seeded and in distribution. cpu_check() compares a cpu_ output with its ref_
 * twin: NaN/Inf first and the worst element (testkit_close_f32), then relative L2, then the
 * sentinels; it prints one line with every parameter of the case. */
#ifndef Q3N_CPU_TESTUTIL_H
#define Q3N_CPU_TESTUTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../harness/rng.h"
#include "../../harness/testkit.h"

static inline void fill_normal(float *x, int64_t n, struct q3n_rng *rng, double scale)
{
    for (int64_t i = 0; i < n; i++) x[i] = (float)(scale * q3n_rng_normal(rng));
}

static inline void fill_uniform(float *x, int64_t n, struct q3n_rng *rng, double lo, double hi)
{
    for (int64_t i = 0; i < n; i++) x[i] = (float)q3n_rng_range(rng, lo, hi);
}

/* A guarded, NaN-poisoned buffer of n floats (inputs get filled afterwards). */
static inline float *gbuf(int64_t n)
{
    float *x = testkit_guarded_f32(n > 0 ? n : 1);
    if (!x) abort();
    return x;
}

/* 1 when got matches want within rel L2 `tol` (and |err| <= atol + rtol|want| element-wise
 * with atol = rtol = 100 tol, a loose second screen that names the worst index), no NaN, and
 * got's sentinels are intact. `what` carries the case's parameters. */
static inline int cpu_check(const char *what, const float *got, const float *want, int64_t n, double tol)
{
    int ok = testkit_close_f32(what, got, want, n, 100 * tol, 100 * tol);
    double rel = testkit_rel_l2_f32(got, want, n);
    if (!(rel <= tol)) ok = 0;
    if (!testkit_guard_ok_f32(got, n)) {
        printf("%s: sentinel after the output overwritten\n", what);
        ok = 0;
    }
    printf("%s: rel_l2=%.2e %s\n", what, rel, ok ? "OK" : "FAIL");
    return ok;
}

#endif
