/* test_args.c — the option-value parsers take whole valid values only and leave the output alone
 * otherwise. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "args.h"

static void test_integers(void **state)
{
    (void)state;
    long long v = -7;
    assert_true(q3n_arg_ll("4096", 1, &v) && v == 4096);
    assert_true(q3n_arg_ll("0", 0, &v) && v == 0);
    v = -7;
    const char *bad[] = {"", "0", "-3", "12x", "x12", " ", " 5", "+5", "1e3", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) assert_false(q3n_arg_ll(bad[i], 1, &v));
    assert_int_equal(v, -7);
}

static void test_positive_doubles(void **state)
{
    (void)state;
    double v = -1;
    assert_true(q3n_arg_pos_double("3.35e12", &v) && v == 3.35e12);
    v = -1;
    const char *bad[] = {"", "0", "-1", "nan", "inf", "1e999", "3TB", "e5", " 3", "+3"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) assert_false(q3n_arg_pos_double(bad[i], &v));
    assert_true(v == -1);
}

static void test_lists(void **state)
{
    (void)state;
    int64_t out[3] = {-1, -1, -1};
    int n = -1;
    assert_true(q3n_arg_i64_list("4096,16384", 1, out, 3, &n) && n == 2 && out[0] == 4096 && out[1] == 16384);
    assert_true(q3n_arg_i64_list("7", 1, out, 3, &n) && n == 1 && out[0] == 7);
    n = -1;
    const char *bad[] = {"", ",", "4096,", ",4096", "1,,2", "1,0", "1,2,3,4", "1;2", "1, 2"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) assert_false(q3n_arg_i64_list(bad[i], 1, out, 3, &n));
    assert_int_equal(n, -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_integers),
        cmocka_unit_test(test_positive_doubles),
        cmocka_unit_test(test_lists),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
