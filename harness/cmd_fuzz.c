/* cmd_fuzz.c — placeholder until its issue lands: refuses with a usage error. */
#include <stdio.h>

#include "cmds.h"

int q3n_cmd_fuzz(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "q3n fuzz: not built yet\n");
    return 2;
}
