/* test_outfile.c — outfiles appear whole on success, leave nothing (and an old file untouched)
 * on failure, and refuse an unwritable folder with a message naming the path. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "outfile.h"

static void make_dir(char *dir, size_t n)
{
    snprintf(dir, n, "/tmp/q3n-outfile-XXXXXX");
    assert_non_null(mkdtemp(dir));
}

/* Number of entries in dir besides . and .. */
static int entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

static void slurp(const char *path, char *buf, size_t n)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t got = fread(buf, 1, n - 1, f);
    buf[got] = '\0';
    fclose(f);
}

static void test_success_renames_into_place(void **state)
{
    (void)state;
    char dir[64], path[128], buf[64];
    make_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/report.txt", dir);
    struct q3n_error err = {0};
    struct q3n_outfile o;
    assert_int_equal(q3n_outfile_open(&o, path, &err), Q3N_OK);
    fputs("hello\n", o.f);
    assert_int_equal(entries(dir), 1); /* only the temporary */
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(q3n_outfile_finish(&o, Q3N_OK, &err), Q3N_OK);
    slurp(path, buf, sizeof buf);
    assert_string_equal(buf, "hello\n");
    assert_int_equal(entries(dir), 1);
    unlink(path);
    rmdir(dir);
}

static void test_failure_leaves_nothing_and_keeps_the_old_file(void **state)
{
    (void)state;
    char dir[64], path[128], buf[64];
    make_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/out.json", dir);
    struct q3n_error err = {0};
    struct q3n_outfile o;
    assert_int_equal(q3n_outfile_open(&o, path, &err), Q3N_OK);
    fputs("partial", o.f);
    assert_int_equal(q3n_outfile_finish(&o, Q3N_ERR_FORMAT, &err), Q3N_ERR_FORMAT);
    assert_int_equal(entries(dir), 0);
    FILE *f = fopen(path, "w");
    fputs("old\n", f);
    fclose(f);
    assert_int_equal(q3n_outfile_open(&o, path, &err), Q3N_OK);
    fputs("new but failed", o.f);
    assert_int_equal(q3n_outfile_finish(&o, Q3N_ERR_IO, &err), Q3N_ERR_IO);
    slurp(path, buf, sizeof buf);
    assert_string_equal(buf, "old\n");
    assert_int_equal(entries(dir), 1);
    unlink(path);
    rmdir(dir);
}

static void test_unwritable_folder_is_refused_by_name(void **state)
{
    (void)state;
    struct q3n_error err = {0};
    struct q3n_outfile o;
    assert_int_equal(q3n_outfile_open(&o, "/nonexistent-q3n-dir/r.txt", &err), Q3N_ERR_IO);
    assert_non_null(strstr(err.msg, "/nonexistent-q3n-dir/r.txt: cannot create"));
    assert_null(o.f);
    assert_int_equal(q3n_outfile_finish(&o, Q3N_ERR_IO, &err), Q3N_ERR_IO); /* safe after a failed open */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_success_renames_into_place),
        cmocka_unit_test(test_failure_leaves_nothing_and_keeps_the_old_file),
        cmocka_unit_test(test_unwritable_folder_is_refused_by_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
