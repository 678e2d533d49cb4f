/* outfile.c — write-to-temporary-then-rename output files (outfile.h). */
#include "outfile.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum q3n_status q3n_outfile_open(struct q3n_outfile *o, const char *path, struct q3n_error *err)
{
    memset(o, 0, sizeof *o);
    if (strlen(path) >= sizeof o->path) return q3n_error_set(err, Q3N_ERR_USAGE, "%.200s...: path too long", path);
    snprintf(o->path, sizeof o->path, "%s", path);
    snprintf(o->tmp, sizeof o->tmp, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(o->tmp);
    if (fd < 0) {
        o->tmp[0] = '\0';
        return q3n_error_set(err, Q3N_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    }
    fchmod(fd, 0644); /* mkstemp makes 0600; an output file is as readable as fopen would make it */
    o->f = fdopen(fd, "w");
    if (!o->f) {
        int e = errno;
        close(fd);
        unlink(o->tmp);
        o->tmp[0] = '\0';
        return q3n_error_set(err, Q3N_ERR_IO, "%s: cannot create: %s", path, strerror(e));
    }
    return Q3N_OK;
}

enum q3n_status q3n_outfile_finish(struct q3n_outfile *o, enum q3n_status st, struct q3n_error *err)
{
    if (!o->f) return st;
    int closed = fclose(o->f) == 0;
    o->f = NULL;
    if (st == Q3N_OK && !closed) st = q3n_error_set(err, Q3N_ERR_IO, "%s: write failed", o->path);
    if (st == Q3N_OK && rename(o->tmp, o->path) != 0)
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: cannot replace: %s", o->path, strerror(errno));
    if (st != Q3N_OK) unlink(o->tmp);
    o->tmp[0] = '\0';
    return st;
}
