/* cmd_isolate.c — `q3n isolate GOLDEN.h5 --impl NAME`: chained and isolated errors per tap, side
 * by side (harness/blame.h): isolated mode runs each operation on the golden's inputs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blame.h"
#include "cmds.h"
#include "goldenrun.h"
#include "outfile.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: q3n isolate GOLDEN.h5 --impl ref|cpu|cuda [--model DIR] [--format text|md|html] [--out FILE]\n"
            "                 [--top N] [--threads N] [--test-bug NAME]\n"
            "Runs the implementation twice on the golden's inputs: chained (on its own outputs: how error\n"
            "grows) and isolated (every live tap compared, then replaced by the golden's value, so each\n"
            "operation runs on golden inputs: which module is wrong), and prints both rel_l2 per tap side by\n"
            "side; html draws both curves. --top N lists only the first N taps (and the worst).\n"
            "Exit: 0 report written, 2 usage or input error.\n");
}

int q3n_cmd_isolate(int argc, char **argv)
{
    const char *golden = NULL, *impl_name = NULL, *model_dir = NULL, *format = "text", *out_path = NULL,
               *test_bug = NULL;
    int top = 0, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--impl") && more) impl_name = argv[++i];
        else if (!strcmp(a, "--model") && more) model_dir = argv[++i];
        else if (!strcmp(a, "--format") && more) format = argv[++i];
        else if (!strcmp(a, "--out") && more) out_path = argv[++i];
        else if (!strcmp(a, "--top") && more) top = atoi(argv[++i]);
        else if (!strcmp(a, "--threads") && more) threads = atoi(argv[++i]);
        else if (!strcmp(a, "--test-bug") && more) test_bug = argv[++i];
        else if (a[0] != '-' && !golden) golden = a;
        else {
            fprintf(stderr, "q3n isolate: bad argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!golden || !impl_name) {
        usage(stderr);
        return 2;
    }
    struct q3n_error err;
    q3n_error_clear(&err);
    struct q3n_golden_run *g = NULL;
    struct q3n_isolation iso;
    memset(&iso, 0, sizeof iso);
    FILE *out = stdout;
    struct q3n_outfile of;
    int rc = 2;
    struct q3n_tool_run r;
    if (q3n_golden_run_tool_open(&g, &r, golden, model_dir, impl_name, threads, test_bug, &err) != Q3N_OK) goto fail;
    if (q3n_isolation_run(&iso, &r, &err) != Q3N_OK) goto fail;
    if (out_path) {
        if (q3n_outfile_open(&of, out_path, &err) != Q3N_OK) goto fail;
        out = of.f;
    }
    enum q3n_status wst = q3n_isolation_write(out, &iso, format, top, &err);
    if (out_path) wst = q3n_outfile_finish(&of, wst, &err);
    if (wst != Q3N_OK) goto fail;
    rc = 0;
fail:
    if (rc != 0) fprintf(stderr, "q3n isolate: %s\n", err.msg);
    q3n_isolation_free(&iso);
    q3n_golden_run_close(g);
    return rc;
}
