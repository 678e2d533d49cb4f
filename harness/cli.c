/* cli.c — the q3n command: dispatches to harness/cmd_<name>.c. The only main(). */
#include <stdio.h>
#include <string.h>

#include "cmds.h"

struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
};

static const struct command commands[] = {
    {"inspect", q3n_cmd_inspect, "print a checkpoint's config summary and tensor inventory"},
    {"run", q3n_cmd_run, "run the model on tokens; --dump writes the golden schema"},
    {"verify", q3n_cmd_verify, "run an implementation on a golden and compare every tap"},
    {"compare", q3n_cmd_compare, "compare two dumps tap by tap"},
    {"report", q3n_cmd_report, "render a saved result as text, md, html or junit"},
    {"bench", q3n_cmd_bench, "time prefill and decode of an implementation"},
    {"roofline", q3n_cmd_roofline, "the least prefill and decode can cost for a config on a machine's bandwidth and FLOPs"},
    {"fuzz", q3n_cmd_fuzz, "fuzz configs and shapes: ref vs fast, delta-rule forms, decode"},
    {"blame", q3n_cmd_blame, "rank layers by the final error each causes (replace-one-layer runs)"},
    {"bisect-precision", q3n_cmd_bisect_precision, "smallest set of ops that must stay float32 in a bf16 run"},
    {"bisect-layers", q3n_cmd_bisect_layers, "first diverging tap of two dumps and where error grows"},
    {"determinism", q3n_cmd_determinism, "taps on/off and run-to-run bitwise ledger of an implementation"},
    {"isolate", q3n_cmd_isolate, "chained and isolated (golden inputs per op) errors per tap, side by side"},
    {"calibrate", q3n_cmd_calibrate, "derive tolerances from measured noise (goldens, thread/chunk variants, seeds)"},
    {"baseline", q3n_cmd_baseline, "fail when any tensor's error grew by more than F times vs a saved result"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: q3n <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-18s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n`q3n <command> --help` for a command's options. Exit codes: 0 pass, 1 numerical failure,\n"
                 "2 usage or input error.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "q3n: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
