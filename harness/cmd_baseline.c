/* cmd_baseline.c — `q3n baseline OLD.json NEW.json --max-growth F` (also reached as
 * `q3n compare --baseline OLD.json NEW.json` once cmd_compare.c forwards it): fails when any
 * tensor's error grew by more than F times against a saved baseline result (harness/baseline.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baseline.h"
#include "cmds.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: q3n baseline OLD.json NEW.json [--max-growth F] [--floor X] [--verbose]\n"
            "       q3n compare --baseline OLD.json NEW.json [--max-growth F] ...\n"
            "Compares two saved results (q3n verify --format json) tensor by tensor and fails when any\n"
            "tensor's rel_l2 grew by more than F times (default 2), even inside its absolute tolerance,\n"
            "or when a tensor that passed now fails or is missing. Errors at or below the floor (max of\n"
            "--floor, default 1e-9, and the golden's recorded float32 noise for the tensor) never count.\n"
            "Exit: 0 no drift, 1 drift, 2 usage or input error.\n");
}

int q3n_cmd_baseline(int argc, char **argv)
{
    const char *old_path = NULL, *new_path = NULL;
    double max_growth = 2.0, floor = 1e-9;
    int verbose = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--baseline") && more && !old_path) old_path = argv[++i];
        else if (!strcmp(a, "--max-growth") && more) max_growth = strtod(argv[++i], NULL);
        else if (!strcmp(a, "--floor") && more) floor = strtod(argv[++i], NULL);
        else if (!strcmp(a, "--verbose")) verbose = 1;
        else if (a[0] != '-' && !old_path) old_path = a;
        else if (a[0] != '-' && !new_path) new_path = a;
        else {
            fprintf(stderr, "q3n baseline: bad argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!old_path || !new_path) {
        usage(stderr);
        return 2;
    }
    struct q3n_error err;
    q3n_error_clear(&err);
    struct q3n_result *o = NULL, *n = NULL;
    struct q3n_drift_report rep;
    memset(&rep, 0, sizeof rep);
    int rc = 2;
    if (q3n_result_load(&o, old_path, &err) != Q3N_OK || q3n_result_load(&n, new_path, &err) != Q3N_OK ||
        q3n_baseline_compare(&rep, o, n, max_growth, floor, &err) != Q3N_OK) {
        fprintf(stderr, "q3n baseline: %s\n", err.msg);
        goto done;
    }
    printf("baseline %s -> %s\n", old_path, new_path);
    q3n_drift_report_write(stdout, &rep, verbose);
    rc = rep.n_fail ? 1 : 0;
done:
    q3n_drift_report_free(&rep);
    q3n_result_free(o);
    q3n_result_free(n);
    return rc;
}
