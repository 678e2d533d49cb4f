/* test_tokens.c — the --tokens parser: lists with blanks, and every malformed input refused
 * with a usage error naming the item, never a crash or a partial result. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "tokens.h"

static void a_comma_list_with_blanks_parses_in_order(void **state)
{
    (void)state;
    int64_t *ids = NULL, n = 0;
    struct q3n_error err = {0};
    assert_int_equal(q3n_parse_tokens(" 15, 2 ,3,0,9223372036854775807", &ids, &n, &err), Q3N_OK);
    assert_int_equal(n, 5);
    assert_int_equal(ids[0], 15);
    assert_int_equal(ids[1], 2);
    assert_int_equal(ids[2], 3);
    assert_int_equal(ids[3], 0);
    assert_true(ids[4] == INT64_MAX);
    free(ids);
    assert_int_equal(q3n_parse_tokens("7", &ids, &n, &err), Q3N_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 7);
    free(ids);
}

static void malformed_lists_are_usage_errors_naming_the_item(void **state)
{
    (void)state;
    const char *bad[] = {"", ",", "1,", ",1", "1,,2", "1 2", "-1", "+3", "1,x", "3.5", "9223372036854775808",
                         "99999999999999999999999", "1;2", " ", "1,\t,2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t *ids = (int64_t *)&i, n = 42;
        struct q3n_error err = {0};
        assert_int_equal(q3n_parse_tokens(bad[i], &ids, &n, &err), Q3N_ERR_USAGE);
        assert_null(ids);
        assert_int_equal(n, 0);
        assert_non_null(strstr(err.msg, "--tokens"));
    }
    int64_t *ids = NULL, n = 0;
    struct q3n_error err = {0};
    assert_int_equal(q3n_parse_tokens("1,2,x", &ids, &n, &err), Q3N_ERR_USAGE);
    assert_non_null(strstr(err.msg, "item 3"));
    assert_int_equal(q3n_parse_tokens(NULL, &ids, &n, &err), Q3N_ERR_USAGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_comma_list_with_blanks_parses_in_order),
        cmocka_unit_test(malformed_lists_are_usage_errors_naming_the_item),
    };
    return cmocka_run_group_tests_name("harness_tokens", tests, NULL, NULL);
}
