/* testkit.h — helpers for the cmocka tests (linked into test binaries only).
 *
 * Include order for Debian's cmocka 1.1.5:
 *   #include <stdarg.h> <stddef.h> <setjmp.h> <stdint.h>  then  <cmocka.h>, then this.
 * Never use assert_float_equal on tensors (1.1.5 passes NaN); use assert_tensor_close, which
 * checks NaN/Inf first, then |got - want| <= atol + rtol*|want| element-wise (fail-closed), and
 * on failure prints the name, the worst index, both values and the relative L2 error. */
#ifndef Q3N_TESTKIT_H
#define Q3N_TESTKIT_H

#include <stddef.h>
#include <stdint.h>

/* Relative L2 error ||got - want|| / ||want|| in double (0 when both are zero; +inf if
 * want is zero and got is not; NaN if either has a NaN). */
double testkit_rel_l2_f32(const float *got, const float *want, int64_t n);
double testkit_rel_l2_f64(const double *got, const double *want, int64_t n);

/* Returns 1 if close (see above), else prints one diagnostic line and returns 0. */
int testkit_close_f32(const char *name, const float *got, const float *want, int64_t n, double atol, double rtol);
int testkit_close_f64(const char *name, const double *got, const double *want, int64_t n, double atol,
                      double rtol);
/* Returns 1 if rel_l2(got, want) <= max (fail-closed) else prints a diagnostic and returns 0. */
int testkit_rel_l2_within_f32(const char *name, const float *got, const float *want, int64_t n, double max);
int testkit_rel_l2_within_f64(const char *name, const double *got, const double *want, int64_t n, double max);

#define assert_tensor_close_f32(name, got, want, n, atol, rtol) \
    assert_true(testkit_close_f32((name), (got), (want), (n), (atol), (rtol)))
#define assert_tensor_close_f64(name, got, want, n, atol, rtol) \
    assert_true(testkit_close_f64((name), (got), (want), (n), (atol), (rtol)))
#define assert_rel_l2_within_f32(name, got, want, n, max) \
    assert_true(testkit_rel_l2_within_f32((name), (got), (want), (n), (max)))
#define assert_rel_l2_within_f64(name, got, want, n, max) \
    assert_true(testkit_rel_l2_within_f64((name), (got), (want), (n), (max)))

/* For ref_real buffers (float, or double under Q3N_REF64). */
#ifdef Q3N_REF64
#define assert_tensor_close_real assert_tensor_close_f64
#define assert_rel_l2_within_real assert_rel_l2_within_f64
#define testkit_rel_l2_real testkit_rel_l2_f64
#else
#define assert_tensor_close_real assert_tensor_close_f32
#define assert_rel_l2_within_real assert_rel_l2_within_f32
#define testkit_rel_l2_real testkit_rel_l2_f32
#endif

/* Fills n floats/doubles with NaN (poisoned scratch, so unwritten outputs fail loudly). */
void testkit_poison_f32(float *x, int64_t n);
void testkit_poison_f64(double *x, int64_t n);

/* Allocates n elements plus TESTKIT_GUARD sentinel elements after them; check with
 * testkit_guard_ok_* after the op. Free with free(). */
#define TESTKIT_GUARD 16
float *testkit_guarded_f32(int64_t n);
double *testkit_guarded_f64(int64_t n);
int testkit_guard_ok_f32(const float *x, int64_t n);
int testkit_guard_ok_f64(const double *x, int64_t n);

#endif
