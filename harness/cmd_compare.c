/* cmd_compare.c — `q3n compare A.h5 B.h5`: compare a candidate dump A against a reference B
 * (usually a golden) tap by tap, in A's execution order. Names on one side only are listed.
 * Exit codes: 0 pass, 1 numerical failure, 2 usage or input error (docs/reports.md). */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cmds.h"
#include "policy.h"
#include "report.h"
#include "verify.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: q3n compare A.h5 B.h5 [--policy FILE] [--dtype float32|bfloat16|float64] [--oracle]\n"
            "                   [--format text|md|html|junit|json] [--out FILE] [--json RESULT.json] [--quiet]\n"
            "A is the candidate (the port's dump), B the reference (the golden); relative errors are taken\n"
            "against B. --dtype picks the policy column (default: A's root 'dtype' attribute, else float32).\n"
            "       q3n compare --baseline OLD.json NEW.json [--max-growth F] ...  (see q3n baseline --help)\n"
            "Exit codes: 0 pass, 1 numerical failure, 2 usage or input error.\n");
}

int q3n_cmd_compare(int argc, char **argv)
{
    /* Drift check of two saved results (issue 10) lives in cmd_baseline.c, which reads
     * "--baseline OLD.json NEW.json" itself. */
    if (argc > 1 && strcmp(argv[1], "--baseline") == 0) return q3n_cmd_baseline(argc, argv);
    const char *paths[2] = {NULL, NULL}, *policy_path = NULL;
    int npaths = 0;
    struct q3n_compare_options co = {0};
    struct q3n_report_output out = {.format = Q3N_REPORT_TEXT};
    struct q3n_error err = {0};
    struct q3n_policy *policy = NULL;
    struct q3n_result *r = NULL;
    char default_policy[4096];
    int rc = 2;
    for (int i = 1; i < argc;) {
        int got = q3n_report_parse_arg(&out, argc, argv, &i, &err);
        if (got < 0) goto bad;
        if (got) continue;
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--policy") == 0 && i + 1 < argc) {
            policy_path = argv[i + 1];
            i += 2;
        } else if (strcmp(a, "--dtype") == 0 && i + 1 < argc) {
            static const char *const names[][2] = {{"f32", "float32"},  {"float32", "float32"}, {"bf16", "bfloat16"},
                                                   {"bfloat16", "bfloat16"}, {"f64", "float64"}, {"float64", "float64"},
                                                   {"f16", "float16"},  {"float16", "float16"}};
            co.dtype = NULL;
            for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
                if (strcmp(argv[i + 1], names[k][0]) == 0) co.dtype = names[k][1];
            if (!co.dtype) {
                q3n_error_set(&err, Q3N_ERR_USAGE, "--dtype: unknown '%s' (float32, bfloat16, float16, float64)",
                              argv[i + 1]);
                goto bad;
            }
            i += 2;
        } else if (strcmp(a, "--oracle") == 0) {
            co.oracle = 1;
            i++;
        } else if (a[0] == '-' || npaths == 2) {
            q3n_error_set(&err, Q3N_ERR_USAGE, "unexpected argument '%s'", a);
            goto bad;
        } else {
            paths[npaths++] = a;
            i++;
        }
    }
    if (npaths != 2) {
        q3n_error_set(&err, Q3N_ERR_USAGE, "need two files, A.h5 and B.h5");
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
    co.policy = policy;
    co.policy_path = policy_path;
    if (q3n_compare_files(&r, paths[0], paths[1], &co, &err) != Q3N_OK) goto fail;
    if (q3n_report_emit(r, &out, stdout, isatty(fileno(stdout)), &err) != Q3N_OK) goto fail;
    rc = q3n_result_exit_code(r);
    goto done;
bad:
    fprintf(stderr, "q3n compare: %s\n", err.msg);
    usage(stderr);
    goto done;
fail:
    fprintf(stderr, "q3n compare: %s\n", err.msg);
done:
    q3n_result_free(r);
    q3n_policy_free(policy);
    return rc;
}
