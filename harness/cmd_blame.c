/* cmd_blame.c — `q3n blame GOLDEN.h5 --impl NAME`: which layer causes the final error, by
 * replacing each layer's output with the golden's (harness/blame.h), plus routing flips. */
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
            "usage: q3n blame GOLDEN.h5 --impl ref|cpu|cuda [--dtype f32|bf16] [--model DIR]\n"
            "                 [--format text|md|html] [--out FILE] [--no-routing] [--max-flip-runs N]\n"
            "                 [--threads N] [--test-bug NAME] [--test-weak-op PATTERNS]\n"
            "Re-runs the implementation once per layer with model.layers.{i}.out replaced by the golden's and\n"
            "ranks the layers by how much of the final logits' rel_l2 error each replacement removes.\n"
            "Routing flips (top-k sets differing from the golden's) are listed with token, layer, golden router\n"
            "margin and the error each causes (re-run with the golden's routing forced for that flip only).\n"
            "--dtype bf16: cuda runs in bf16; ref/cpu emulate it (every live tap rounded to bf16).\n"
            "--test-weak-op: test-only, rounds the matching ops to 4 mantissa bits.\n"
            "Exit: 0 report written, 2 usage or input error.\n");
}

int q3n_cmd_blame(int argc, char **argv)
{
    const char *golden = NULL, *impl_name = NULL, *dtype = "f32", *model_dir = NULL, *format = "text",
               *out_path = NULL, *test_bug = NULL, *weak = NULL;
    int routing = 1, max_flip_runs = 32, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--impl") && more) impl_name = argv[++i];
        else if (!strcmp(a, "--dtype") && more) dtype = argv[++i];
        else if (!strcmp(a, "--model") && more) model_dir = argv[++i];
        else if (!strcmp(a, "--format") && more) format = argv[++i];
        else if (!strcmp(a, "--out") && more) out_path = argv[++i];
        else if (!strcmp(a, "--no-routing")) routing = 0;
        else if (!strcmp(a, "--max-flip-runs") && more) max_flip_runs = atoi(argv[++i]);
        else if (!strcmp(a, "--threads") && more) threads = atoi(argv[++i]);
        else if (!strcmp(a, "--test-bug") && more) test_bug = argv[++i];
        else if (!strcmp(a, "--test-weak-op") && more) weak = argv[++i];
        else if (a[0] != '-' && !golden) golden = a;
        else {
            fprintf(stderr, "q3n blame: bad argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!golden || !impl_name) {
        usage(stderr);
        return 2;
    }
    int bf16 = !strcmp(dtype, "bf16") || !strcmp(dtype, "bfloat16");
    if (!bf16 && strcmp(dtype, "f32") && strcmp(dtype, "float32")) {
        fprintf(stderr, "q3n blame: --dtype must be f32 or bf16\n");
        return 2;
    }
    struct q3n_error err;
    q3n_error_clear(&err);
    struct q3n_golden_run *g = NULL;
    struct q3n_blame_result res;
    memset(&res, 0, sizeof res);
    FILE *out = stdout;
    struct q3n_outfile of;
    int rc = 2;
    struct q3n_tool_run r;
    if (q3n_golden_run_tool_open(&g, &r, golden, model_dir, impl_name, threads, test_bug, &err) != Q3N_OK) goto fail;
    r.weak_op = weak;
    if (bf16 && !strcmp(r.impl->name, "cuda")) r.opt.dtype = Q3N_COMPUTE_BF16;
    else if (bf16) r.emulate_bf16 = 1;
    if (q3n_blame_run(&res, &r, 0, routing, max_flip_runs, &err) != Q3N_OK) goto fail;
    if (out_path) {
        if (q3n_outfile_open(&of, out_path, &err) != Q3N_OK) goto fail;
        out = of.f;
    }
    enum q3n_status wst = q3n_blame_write(out, &res, format, golden, &err);
    if (out_path) wst = q3n_outfile_finish(&of, wst, &err);
    if (wst != Q3N_OK) goto fail;
    rc = 0;
fail:
    if (rc != 0) fprintf(stderr, "q3n blame: %s\n", err.msg);
    q3n_blame_free(&res);
    q3n_golden_run_close(g);
    return rc;
}
