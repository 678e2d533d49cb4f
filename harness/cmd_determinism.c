/* cmd_determinism.c — `q3n determinism GOLDEN.h5 --impl NAME`: the determinism ledger
 * (harness/determinism.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmds.h"
#include "determinism.h"
#include "goldenrun.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: q3n determinism GOLDEN.h5 --impl ref|cpu|cuda [--runs N] [--ledger OUT.json]\n"
            "                 [--expect LEDGER.json] [--model DIR] [--dtype f32|bf16] [--threads N]\n"
            "Runs the implementation on the golden's inputs N times (default 3) with taps on and once with\n"
            "taps off: the logits must be bitwise equal with taps on and off; each tap is recorded as bitwise\n"
            "reproducible or not. --expect holds the taps a previous ledger recorded as reproducible to\n"
            "bitwise equality. --ledger writes this run's ledger (JSON).\n"
            "Exit: 0 pass, 1 taps change the result or a reproducible tap regressed, 2 usage or input error.\n");
}

int q3n_cmd_determinism(int argc, char **argv)
{
    const char *golden = NULL, *impl_name = NULL, *ledger = NULL, *expect_path = NULL, *model_dir = NULL,
               *dtype = "f32";
    int runs = 3, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--impl") && more) impl_name = argv[++i];
        else if (!strcmp(a, "--runs") && more) runs = atoi(argv[++i]);
        else if (!strcmp(a, "--ledger") && more) ledger = argv[++i];
        else if (!strcmp(a, "--expect") && more) expect_path = argv[++i];
        else if (!strcmp(a, "--model") && more) model_dir = argv[++i];
        else if (!strcmp(a, "--dtype") && more) dtype = argv[++i];
        else if (!strcmp(a, "--threads") && more) threads = atoi(argv[++i]);
        else if (a[0] != '-' && !golden) golden = a;
        else {
            fprintf(stderr, "q3n determinism: bad argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!golden || !impl_name || runs < 2) {
        usage(stderr);
        return 2;
    }
    struct q3n_error err;
    q3n_error_clear(&err);
    struct q3n_golden_run *g = NULL;
    struct q3n_det_ledger led, expect;
    memset(&led, 0, sizeof led);
    memset(&expect, 0, sizeof expect);
    int rc = 2;
    if (expect_path && q3n_det_ledger_read(&expect, expect_path, &err) != Q3N_OK) goto fail;
    struct q3n_tool_run r;
    if (q3n_golden_run_tool_open(&g, &r, golden, model_dir, impl_name, threads, NULL, &err) != Q3N_OK) goto fail;
    if (!strcmp(dtype, "bf16") && !strcmp(r.impl->name, "cuda")) r.opt.dtype = Q3N_COMPUTE_BF16;
    if (q3n_determinism_run(&led, &r, runs, expect_path ? &expect : NULL, &err) != Q3N_OK) goto fail;
    q3n_det_ledger_write_text(stdout, &led);
    if (ledger && q3n_det_ledger_write_json(&led, ledger, &err) != Q3N_OK) goto fail;
    rc = q3n_det_ledger_ok(&led) ? 0 : 1;
    goto done;
fail:
    fprintf(stderr, "q3n determinism: %s\n", err.msg);
done:
    q3n_det_ledger_free(&led);
    q3n_det_ledger_free(&expect);
    q3n_golden_run_close(g);
    return rc;
}
