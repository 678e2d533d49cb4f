/* cmd_bench.c — placeholder until its issue lands: refuses with a usage error. */
#include <stdio.h>

#include "cmds.h"

int q3n_cmd_bench(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "q3n bench: not built yet\n");
    return 2;
}
