/* cmd_verify.c — `q3n verify GOLDEN.h5 --impl NAME`: run an implementation on a golden's
 * checkpoint and inputs, compare every tap as it is emitted, print the report.
 * Exit codes: 0 pass, 1 numerical failure, 2 usage or input error (docs/reports.md). */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cmds.h"
#include "policy.h"
#include "report.h"
#include "verify.h"
#include "weights.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: q3n verify GOLDEN.h5 --impl ref|cpu|cuda [--dtype f32|bf16|f64] [--policy FILE] [--oracle]\n"
            "                  [--no-decode] [--no-mtp] [--format text|md|html|junit|json] [--out FILE]\n"
            "                  [--json RESULT.json] [--quiet] [--test-bug NAME] [--isolated]\n"
            "Runs the implementation on the golden's checkpoint and inputs and compares every tap, then\n"
            "/logits, /mtp_logits and /decode/logits when the golden has them, under the tolerance policy\n"
            "(default harness/policy/default.policy). --oracle judges against the golden's float64 oracle.\n"
            "--test-bug plants a known bug in the implementation (test-only; see ref/impl.c) to see it caught.\n"
            "--isolated judges each operation on the golden's own inputs: every live tap is compared, then\n"
            "replaced by the golden's value before downstream operations read it (q3n isolate prints the\n"
            "chained and isolated errors side by side).\n"
            "Exit codes: 0 pass, 1 numerical failure, 2 usage or input error.\n");
}

/* Runs a git command (no shell metacharacters are passed: the caller rejects paths with quotes)
 * and returns its first output line in out ("" when git fails or prints nothing). */
static void git_line(char *out, size_t cap, const char *cmd)
{
    out[0] = '\0';
    FILE *p = popen(cmd, "r");
    if (!p) return;
    if (!fgets(out, (int)cap, p)) out[0] = '\0';
    out[strcspn(out, "\n")] = '\0';
    pclose(p);
}

/* Issue 9: warn when the policy is older than the code it judges. The policy's basis is the commit
 * named by a "q3n=<sha>" in its "calibrated:" or "checked:" provenance line (q3n calibrate writes
 * one), else the last commit that changed the policy file. If a source file (.c .h .cu .cuh) under
 * ref/ or fast/ changed after that basis, print one warning line on stderr. Silent outside a git checkout; never changes the
 * exit code. */
static void warn_if_policy_older_than_code(const char *policy_path)
{
    if (strchr(policy_path, '\'') || strchr(policy_path, '\n')) return;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", policy_path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    char basis[64] = "", line[1024], cmd[9000];
    FILE *f = fopen(policy_path, "r");
    while (f && fgets(line, sizeof line, f)) {
        const char *q = strstr(line, "q3n=");
        if (q && (strstr(line, "calibrated:") || strstr(line, "checked:"))) {
            size_t n = strspn(q + 4, "0123456789abcdef");
            if (n >= 7 && n < sizeof basis) {
                memcpy(basis, q + 4, n);
                basis[n] = '\0';
            }
        }
    }
    if (f) fclose(f);
    if (!basis[0]) {
        snprintf(cmd, sizeof cmd, "git -C '%s' log -1 --format=%%h -- '%s' 2>/dev/null", dir,
                 slash ? slash + 1 : policy_path);
        git_line(basis, sizeof basis, cmd);
        if (!basis[0]) return;
    }
    char count[64];
    /* source files only: notes, logs and docs under fast/ do not change what verify judges */
    snprintf(cmd, sizeof cmd,
             "git -C '%s' rev-list --count %s..HEAD -- ':(top,glob)ref/**/*.[ch]' ':(top,glob)fast/**/*.[ch]' "
             "':(top,glob)fast/**/*.cu' ':(top,glob)fast/**/*.cuh' 2>/dev/null",
             dir, basis);
    git_line(count, sizeof count, cmd);
    if (count[0] && strcmp(count, "0") != 0)
        fprintf(stderr,
                "q3n verify: warning: policy %s was calibrated against commit %s; %s later commit(s) changed "
                "ref/ or fast/ (re-check with `q3n calibrate --check %s`)\n",
                policy_path, basis, count, policy_path);
}

int q3n_cmd_verify(int argc, char **argv)
{
    const char *golden = NULL, *policy_path = NULL;
    struct q3n_verify_options vo = {.impl = NULL, .dtype = Q3N_COMPUTE_F32};
    struct q3n_report_output out = {.format = Q3N_REPORT_TEXT};
    struct q3n_error err = {0};
    struct q3n_policy *policy = NULL;
    struct q3n_result *r = NULL;
    struct q3n_model *model = NULL;
    char default_policy[4096], ckpt[4096];
    int rc = 2;
#ifdef Q3N_REF64
    vo.dtype = Q3N_COMPUTE_F64;
#endif
    for (int i = 1; i < argc;) {
        int got = q3n_report_parse_arg(&out, argc, argv, &i, &err);
        if (got < 0) goto bad;
        if (got) continue;
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--impl") == 0 && i + 1 < argc) {
            vo.impl = argv[i + 1];
            i += 2;
        } else if (strcmp(a, "--policy") == 0 && i + 1 < argc) {
            policy_path = argv[i + 1];
            i += 2;
        } else if (strcmp(a, "--dtype") == 0 && i + 1 < argc) {
            const char *d = argv[i + 1];
            if (strcmp(d, "f32") == 0 || strcmp(d, "float32") == 0)
                vo.dtype = Q3N_COMPUTE_F32;
            else if (strcmp(d, "bf16") == 0 || strcmp(d, "bfloat16") == 0)
                vo.dtype = Q3N_COMPUTE_BF16;
            else if (strcmp(d, "f64") == 0 || strcmp(d, "float64") == 0)
                vo.dtype = Q3N_COMPUTE_F64;
            else {
                q3n_error_set(&err, Q3N_ERR_USAGE, "--dtype: unknown '%s' (f32, bf16, f64)", d);
                goto bad;
            }
            i += 2;
        } else if (strcmp(a, "--oracle") == 0) {
            vo.oracle = 1;
            i++;
        } else if (strcmp(a, "--no-decode") == 0) {
            vo.skip_decode = 1;
            i++;
        } else if (strcmp(a, "--test-bug") == 0 && i + 1 < argc) {
            vo.test_bug = argv[i + 1];
            i += 2;
        } else if (strcmp(a, "--isolated") == 0) {
            vo.isolated = 1;
            i++;
        } else if (strcmp(a, "--no-mtp") == 0) {
            vo.skip_mtp = 1;
            i++;
        } else if (a[0] == '-' || golden) {
            q3n_error_set(&err, Q3N_ERR_USAGE, "unexpected argument '%s'", a);
            goto bad;
        } else {
            golden = a;
            i++;
        }
    }
    if (!golden || !vo.impl) {
        q3n_error_set(&err, Q3N_ERR_USAGE, "need GOLDEN.h5 and --impl");
        goto bad;
    }
    if (!policy_path) {
        if (!q3n_policy_default_path(default_policy, sizeof default_policy)) {
            q3n_error_set(&err, Q3N_ERR_USAGE, "no --policy given and harness/policy/default.policy not found");
            goto bad;
        }
        policy_path = default_policy;
    }
    if (q3n_policy_load(&policy, policy_path, &err) != Q3N_OK) goto fail;
    warn_if_policy_older_than_code(policy_path);
    vo.policy = policy;
    vo.policy_path = policy_path;
    if (q3n_verify_checkpoint(ckpt, sizeof ckpt, golden, &err) != Q3N_OK) goto fail;
    if (q3n_model_open(&model, ckpt, &err) != Q3N_OK) goto fail;
    if (q3n_verify_model(&r, golden, model, &vo, &err) != Q3N_OK) goto fail;
    if (q3n_report_emit(r, &out, stdout, isatty(fileno(stdout)), &err) != Q3N_OK) goto fail;
    rc = q3n_result_exit_code(r);
    goto done;
bad:
    fprintf(stderr, "q3n verify: %s\n", err.msg);
    usage(stderr);
    goto done;
fail:
    fprintf(stderr, "q3n verify: %s\n", err.msg);
done:
    q3n_result_free(r);
    q3n_model_close(model);
    q3n_policy_free(policy);
    return rc;
}
