/* test_fuzz_model.c — the model-level fuzzer (harness/fuzz_model.c) on a few drawn cases:
 * ref vs cpu and the lifecycle checks pass on the real implementations; a planted bug in cpu
 * (run_options->test_bug) is found within a handful of cases, shrunk, and written out as a
 * regression pair. Uses fuzz/fuzz.policy (tests run from the repo root). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../harness/fuzz_cases.h"
#include "../harness/impl.h"
#include "../harness/policy.h"
#include "../harness/shrink.h"

struct fixture {
    struct q3n_policy *policy;
    char work[64];
    struct q3n_fuzz_model_options opt;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    struct q3n_error err;
    if (!f) return -1;
    if (q3n_policy_load(&f->policy, "harness/policy/default.policy", &err) != Q3N_OK) {
        fprintf(stderr, "%s\n", err.msg);
        free(f);
        return -1;
    }
    snprintf(f->work, sizeof f->work, "/tmp/q3n-test-fuzz-XXXXXX");
    if (!mkdtemp(f->work)) return -1;
    f->opt = (struct q3n_fuzz_model_options){.impl = "cpu", .policy = f->policy, .work_dir = f->work};
    *state = f;
    return 0;
}

static void remove_tree(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    remove_tree(f->work);
    q3n_policy_free(f->policy);
    free(f);
    return 0;
}

static void ref_and_cpu_pass_every_check_on_drawn_small_cases(void **state)
{
    struct fixture *f = *state;
    if (!q3n_impl_find("cpu")) skip();
    for (int i = 0; i < 8; i++) {
        struct q3n_fuzz_case c;
        struct q3n_fuzz_model_result res;
        struct q3n_error err;
        char desc[1024];
        q3n_fuzz_case_draw(&c, q3n_fuzz_case_seed(1, i), i % 2 ? Q3N_FUZZ_ODD : Q3N_FUZZ_SMALL);
        q3n_fuzz_case_describe(&c, desc, sizeof desc);
        if (q3n_fuzz_model_check(&c, &f->opt, &res, &err) != Q3N_OK) fail_msg("%s: %s", desc, err.msg);
        if (res.failed) fail_msg("case %d (%s): %s", i, desc, res.what);
        assert_true(res.checks > 20);
        assert_true(res.worst_self_rel_l2 <= 1e-4);
    }
}

static int still_fails(void *user, const struct q3n_fuzz_case *c)
{
    const struct q3n_fuzz_model_options *opt = user;
    struct q3n_fuzz_model_result res;
    struct q3n_error err;
    if (q3n_fuzz_model_check(c, opt, &res, &err) != Q3N_OK) return -1;
    return res.failed;
}

static void a_planted_bug_is_found_shrunk_and_written_out(struct fixture *f, const char *bug, const char *where)
{
    struct q3n_fuzz_model_options opt = f->opt;
    struct q3n_fuzz_model_result res;
    struct q3n_error err;
    struct q3n_fuzz_case c;
    char dir[256], path[320];
    struct stat sb;
    opt.test_bug = bug;
    int found = 0;
    for (int i = 0; i < 20 && !found; i++) {
        q3n_fuzz_case_draw(&c, q3n_fuzz_case_seed(1, i), -1);
        if (c.family == Q3N_FUZZ_REAL_HEADS) continue; /* seconds each: not in a unit test */
        assert_int_equal(q3n_fuzz_model_check(&c, &opt, &res, &err), Q3N_OK);
        found = res.failed;
    }
    if (!found) fail_msg("planted bug %s not found in 20 cases", bug);
    if (strstr(res.what, where) == NULL) fail_msg("%s found, but not at %s: %s", bug, where, res.what);
    int64_t before = q3n_shrink_size(&c);
    int tries = 0;
    q3n_shrink_case(&c, still_fails, &opt, 40, &tries);
    assert_true(tries > 0);
    assert_true(q3n_shrink_size(&c) < before);
    assert_int_equal(still_fails(&opt, &c), 1);
    snprintf(dir, sizeof dir, "%s/repro-%s", f->work, bug);
    assert_int_equal(q3n_shrink_write_repro(dir, &c, "cpu", bug, "q3n fuzz --case-seed 0x0", &err), Q3N_OK);
    static const char *const files[] = {"golden.h5", "candidate.h5", "case.txt", "config.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        if (stat(path, &sb) != 0 || sb.st_size == 0) fail_msg("%s missing or empty", path);
    }
}

static void a_chunk_off_by_one_in_cpu_is_found_shrunk_and_written_out(void **state)
{
    if (!q3n_impl_find("cpu")) skip();
    a_planted_bug_is_found_shrunk_and_written_out(*state, "chunk_off_by_one", "linear_attn");
}

static void rope_on_the_wrong_half_in_cpu_is_found_shrunk_and_written_out(void **state)
{
    if (!q3n_impl_find("cpu")) skip();
    a_planted_bug_is_found_shrunk_and_written_out(*state, "rope_wrong_half", "self_attn");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ref_and_cpu_pass_every_check_on_drawn_small_cases),
        cmocka_unit_test(a_chunk_off_by_one_in_cpu_is_found_shrunk_and_written_out),
        cmocka_unit_test(rope_on_the_wrong_half_in_cpu_is_found_shrunk_and_written_out),
    };
    return cmocka_run_group_tests_name("fuzz_fuzz_model", tests, setup, teardown);
}
