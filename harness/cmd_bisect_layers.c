/* cmd_bisect_layers.c — `q3n bisect-layers A.h5 B.h5`: the first tap where two dumps diverge
 * and where the error grows most (harness/bisect.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bisect.h"
#include "cmds.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: q3n bisect-layers A.h5 B.h5 [--threshold REL_L2] [--top N] [--format text|md]\n"
            "Walks A's taps in execution order against B's (both in the golden format: goldens, `q3n run\n"
            "--dump` outputs, or a port's own dump) and names the first tap that diverges: the first bit\n"
            "difference by default, or the first rel_l2 above --threshold. Then ranks the taps by error\n"
            "growth (rel_l2 / the rel_l2 their layer received): where error is created, not carried.\n"
            "Exit: 0 nothing diverges, 1 a tap diverges, 2 usage or input error.\n");
}

int q3n_cmd_bisect_layers(int argc, char **argv)
{
    const char *a = NULL, *b = NULL, *format = "text";
    double threshold = 0;
    int top = 10;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(s, "--threshold") && more) threshold = strtod(argv[++i], NULL);
        else if (!strcmp(s, "--top") && more) top = atoi(argv[++i]);
        else if (!strcmp(s, "--format") && more) format = argv[++i];
        else if (s[0] != '-' && !a) a = s;
        else if (s[0] != '-' && !b) b = s;
        else {
            fprintf(stderr, "q3n bisect-layers: bad argument '%s'\n", s);
            usage(stderr);
            return 2;
        }
    }
    if (!a || !b) {
        usage(stderr);
        return 2;
    }
    struct q3n_error err;
    q3n_error_clear(&err);
    struct q3n_tensorfile *ta = NULL, *tb = NULL;
    struct q3n_layer_bisect res;
    memset(&res, 0, sizeof res);
    int rc = 2;
    if (q3n_tensorfile_open(&ta, a, &err) != Q3N_OK || q3n_tensorfile_open(&tb, b, &err) != Q3N_OK ||
        q3n_bisect_layers(&res, ta, tb, threshold, &err) != Q3N_OK) {
        fprintf(stderr, "q3n bisect-layers: %s\n", err.msg);
        goto done;
    }
    if (res.n == 0) {
        fprintf(stderr, "q3n bisect-layers: %s and %s have no tap in common\n", a, b);
        goto done;
    }
    q3n_layer_bisect_write(stdout, &res, a, b, top, !strcmp(format, "md"));
    rc = res.first_diverging >= 0 ? 1 : 0;
done:
    q3n_layer_bisect_free(&res);
    q3n_tensorfile_close(ta);
    q3n_tensorfile_close(tb);
    return rc;
}
