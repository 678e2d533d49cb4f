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
