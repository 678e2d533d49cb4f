/* test_status.c — the error struct keeps messages to one printable line. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "status.h"

static void a_message_quoting_control_characters_stays_one_printable_line(void **state)
{
    (void)state;
    struct q3n_error err;
    enum q3n_status st = q3n_error_set(&err, Q3N_ERR_FORMAT, "policy:%d: unknown key '%s'", 3, "a\nb\x1b[31mc\x7f");
    assert_int_equal(st, Q3N_ERR_FORMAT);
    assert_int_equal(err.status, Q3N_ERR_FORMAT);
    assert_string_equal(err.msg, "policy:3: unknown key 'a?b?[31mc?'");
}

static void clearing_accepts_null_and_empties_the_message(void **state)
{
    (void)state;
    struct q3n_error err;
    q3n_error_set(&err, Q3N_ERR_IO, "x");
    q3n_error_clear(&err);
    q3n_error_clear(NULL);
    assert_int_equal(err.status, Q3N_OK);
    assert_string_equal(err.msg, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_message_quoting_control_characters_stays_one_printable_line),
        cmocka_unit_test(clearing_accepts_null_and_empties_the_message),
    };
    return cmocka_run_group_tests_name("harness_status", tests, NULL, NULL);
}
