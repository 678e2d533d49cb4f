/* cmd_report.c — `q3n report RESULT.json --format text|md|html|junit|json`: render a result
 * saved by `q3n verify|compare --json`. Exit code: the result's (0 pass, 1 numerical failure),
 * 2 on usage or input error (docs/reports.md). */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cmds.h"
#include "report.h"
#include "result.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: q3n report RESULT.json [--format text|md|html|junit|json] [--out FILE] [--quiet]\n"
                 "Renders a result saved with `q3n verify|compare --json RESULT.json`. Exits with the result's\n"
                 "code: 0 pass, 1 numerical failure; 2 on usage or input error.\n");
}

int q3n_cmd_report(int argc, char **argv)
{
    const char *path = NULL;
    struct q3n_report_output out = {.format = Q3N_REPORT_TEXT};
    struct q3n_error err = {0};
    struct q3n_result *r = NULL;
    int rc = 2;
    for (int i = 1; i < argc;) {
        int got = q3n_report_parse_arg(&out, argc, argv, &i, &err);
        if (got < 0) goto bad;
        if (got) continue;
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (a[0] == '-' || path) {
            q3n_error_set(&err, Q3N_ERR_USAGE, "unexpected argument '%s'", a);
            goto bad;
        }
        path = a;
        i++;
    }
    if (!path) {
        q3n_error_set(&err, Q3N_ERR_USAGE, "need RESULT.json");
        goto bad;
    }
    if (out.json_path) {
        q3n_error_set(&err, Q3N_ERR_USAGE, "--json is for verify and compare; use --format json");
        goto bad;
    }
    if (q3n_result_load(&r, path, &err) != Q3N_OK) goto fail;
    if (q3n_report_emit(r, &out, stdout, isatty(fileno(stdout)), &err) != Q3N_OK) goto fail;
    rc = q3n_result_exit_code(r);
    goto done;
bad:
    fprintf(stderr, "q3n report: %s\n", err.msg);
    usage(stderr);
    goto done;
fail:
    fprintf(stderr, "q3n report: %s\n", err.msg);
done:
    q3n_result_free(r);
    return rc;
}
