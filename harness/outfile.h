/* outfile.h — output files written whole or not at all.
 *
 * q3n_outfile_open creates a temporary sibling PATH.tmp.XXXXXX; the caller writes to o->f;
 * q3n_outfile_finish closes it and, when everything succeeded, renames it over PATH; on any
 * failure it removes the temporary, so a failed or refused run never leaves a partial file at
 * PATH (and an existing PATH stays as it was). Every `--out` / `--json` / ledger writer uses it. */
#ifndef Q3N_OUTFILE_H
#define Q3N_OUTFILE_H

#include <stdio.h>

#include "status.h"

struct q3n_outfile {
    FILE *f;
    char path[4096];
    char tmp[4200];
};

/* Opens the temporary beside path for writing. On failure o->f is NULL and err names path. */
enum q3n_status q3n_outfile_open(struct q3n_outfile *o, const char *path, struct q3n_error *err);

/* st: the writer's status. Closes o->f; renames the temporary over the path when st is Q3N_OK
 * and the close and rename succeed, else removes it. Returns st, or the close/rename error
 * (naming the path). Safe on an outfile whose open failed. */
enum q3n_status q3n_outfile_finish(struct q3n_outfile *o, enum q3n_status st, struct q3n_error *err);

#endif
