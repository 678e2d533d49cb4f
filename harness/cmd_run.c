/* cmd_run.c — placeholder until its issue lands: refuses with a usage error. */
#include <stdio.h>

#include "cmds.h"

int q3n_cmd_run(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "q3n run: not built yet\n");
    return 2;
}
