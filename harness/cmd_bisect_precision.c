/* cmd_bisect_precision.c — `q3n bisect-precision GOLDEN.h5 --impl NAME --dtype bf16`: the smallest
 * set of operations that must stay in float32 for a low-precision run to pass (harness/bisect.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bisect.h"
#include "cmds.h"
#include "goldenrun.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: q3n bisect-precision GOLDEN.h5 --impl ref|cpu|cuda [--dtype bf16] --max REL_L2\n"
            "                 [--by-kind] [--no-force-routing] [--fp32 PATTERNS | --fp32-file FILE] [--model DIR]\n"
            "                 [--format text|md]\n"
            "                 [--threads N] [--test-bug NAME] [--test-weak-op PATTERNS] [--weak-bits N]\n"
            "Finds, by bisection over operations (the live taps the implementation emits), the smallest set\n"
            "that must stay in float32 for the final logits' rel_l2 against the golden to be <= --max, and\n"
            "the error each contributes. ref/cpu: bf16 is emulated (each op's output rounded to bf16, round\n"
            "to nearest even, unless kept in float32); an impl that runs bf16 natively must honour\n"
            "run_options.fp32_patterns (fast/cuda does not: it refuses them, so bisect with --impl cpu).\n"
            "--by-kind bisects op kinds (model.layers.*.mlp.out) instead of op instances.\n"
            "Every run takes the golden's routing (top-k experts) unless --no-force-routing: a near-tie router\n"
            "flip makes the error jump and would send the bisection after whichever op tips the tie\n"
            "(`q3n blame` analyses flips).\n"
            "--fp32 / --fp32-file: evaluate one given set instead of bisecting (pass/fail by --max).\n"
            "--test-weak-op: test-only, the matching ops round to --weak-bits (4) mantissa bits in low\n"
            "precision, so the bisection must name them.\n"
            "Exit: 0 a passing set was found (or the given set passes), 1 unreachable / fails, 2 usage.\n");
}

int q3n_cmd_bisect_precision(int argc, char **argv)
{
    const char *golden = NULL, *impl_name = NULL, *dtype = "bf16", *model_dir = NULL, *format = "text",
               *fp32 = NULL, *fp32_file = NULL, *test_bug = NULL, *weak = NULL;
    double max = -1;
    int by_kind = 0, threads = 0, weak_bits = 4, force_routing = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--impl") && more) impl_name = argv[++i];
        else if (!strcmp(a, "--dtype") && more) dtype = argv[++i];
        else if (!strcmp(a, "--max") && more) max = strtod(argv[++i], NULL);
        else if (!strcmp(a, "--by-kind")) by_kind = 1;
        else if (!strcmp(a, "--no-force-routing")) force_routing = 0;
        else if (!strcmp(a, "--fp32") && more) fp32 = argv[++i];
        else if (!strcmp(a, "--fp32-file") && more) fp32_file = argv[++i];
        else if (!strcmp(a, "--model") && more) model_dir = argv[++i];
        else if (!strcmp(a, "--format") && more) format = argv[++i];
        else if (!strcmp(a, "--threads") && more) threads = atoi(argv[++i]);
        else if (!strcmp(a, "--test-bug") && more) test_bug = argv[++i];
        else if (!strcmp(a, "--test-weak-op") && more) weak = argv[++i];
        else if (!strcmp(a, "--weak-bits") && more) weak_bits = atoi(argv[++i]);
        else if (a[0] != '-' && !golden) golden = a;
        else {
            fprintf(stderr, "q3n bisect-precision: bad argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!golden || !impl_name || !(max >= 0)) {
        if (!(max >= 0)) fprintf(stderr, "q3n bisect-precision: --max REL_L2 is required (the pass threshold)\n");
        usage(stderr);
        return 2;
    }
    if (strcmp(dtype, "bf16") && strcmp(dtype, "bfloat16")) {
        fprintf(stderr, "q3n bisect-precision: only --dtype bf16 is supported\n");
        return 2;
    }
    struct q3n_error err;
    q3n_error_clear(&err);
    struct q3n_golden_run *g = NULL;
    struct q3n_prec_result res;
    memset(&res, 0, sizeof res);
    char *file_patterns = NULL;
    int rc = 2;
    if (fp32_file && q3n_patterns_load(&file_patterns, fp32_file, &err) != Q3N_OK) goto fail;
    struct q3n_tool_run r;
    if (q3n_golden_run_tool_open(&g, &r, golden, model_dir, impl_name, threads, test_bug, &err) != Q3N_OK) goto fail;
    r.weak_op = weak;
    r.weak_bits = weak_bits;
    if (!strcmp(r.impl->name, "cuda")) r.opt.dtype = Q3N_COMPUTE_BF16;
    else r.emulate_bf16 = 1;
    const char *given = file_patterns ? file_patterns : fp32;
    if (given) {
        size_t nl;
        float *logits = NULL;
        double e = 0;
        if (q3n_mul_size(&nl, (size_t)r.T, (size_t)r.V) && q3n_mul_size(&nl, nl, sizeof *logits))
            logits = malloc(nl);
        if (!logits) {
            q3n_error_set(&err, Q3N_ERR_NOMEM, "out of memory");
            goto fail;
        }
        r.fp32 = given;
        r.opt.fp32_patterns = given;
        struct q3n_intervene_opts fo = {.force_routing = force_routing};
        enum q3n_status st = q3n_tool_forward(&r, &fo, NULL, 0, logits, &e, &err);
        free(logits);
        if (st != Q3N_OK) goto fail;
        int pass = e <= max;
        printf("bf16 run with the given float32 set: final logits rel_l2 %.4g, max %.4g: %s\n", e, max,
               pass ? "pass" : "FAIL");
        rc = pass ? 0 : 1;
        goto done;
    }
    if (q3n_bisect_precision(&res, &r, max, by_kind, force_routing, &err) != Q3N_OK) goto fail;
    q3n_prec_result_write(stdout, &res, !strcmp(format, "md"));
    rc = res.reachable ? 0 : 1;
    goto done;
fail:
    fprintf(stderr, "q3n bisect-precision: %s\n", err.msg);
done:
    free(file_patterns);
    q3n_prec_result_free(&res);
    q3n_golden_run_close(g);
    return rc;
}
