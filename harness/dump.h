/* dump.h — writing a run in the golden schema (docs/golden-format.md): a tap sink that stores
 * every tap under /tensors/<name>, plus the root attributes, /config, /inputs/input_ids and
 * /logits. The file is written to <path>.tmp and appears at <path> only on q3n_dump_commit, so
 * a failed run leaves nothing behind. */
#ifndef Q3N_DUMP_H
#define Q3N_DUMP_H

#include <stdint.h>

#include "status.h"
#include "tap.h"
#include "tensorfile.h"

struct q3n_dump;

/* What the root attributes say about the run. Strings may be NULL (attribute omitted). */
struct q3n_dump_info {
    const char *generator;    /* "q3n run" */
    const char *dtype;        /* "float32", "float64", "bfloat16" */
    const char *impl;         /* "ref", "ref64", "cpu", "cuda" */
    const char *kernels;      /* the implementation's describe() */
    const char *checkpoint;   /* checkpoint folder as given */
    const char *device;       /* "cpu" or "cuda" */
    const char *preset;       /* synthetic preset name, or NULL */
    int64_t seed;             /* synthetic seed; written when preset is set */
    const char *config_json;  /* /config text (the checkpoint's config.json), NULL: omitted */
};

enum q3n_status q3n_dump_create(struct q3n_dump **dump, const char *path, struct q3n_error *err);

/* Root attributes (format_version = 1 and the info fields) and /config. */
enum q3n_status q3n_dump_write_info(struct q3n_dump *dump, const struct q3n_dump_info *info, struct q3n_error *err);

/* A sink writing each tap to /tensors/<tap name> (a name seen twice is a Q3N_ERR_USAGE). The sink
 * points into dump and lives as long as it. */
struct q3n_tap_sink q3n_dump_sink(struct q3n_dump *dump);

/* Any dataset at an absolute path: /inputs/input_ids [T] int64, /logits [T,V] float32, ... */
enum q3n_status q3n_dump_write(struct q3n_dump *dump, const char *dataset, enum q3n_dtype dtype, int rank,
                               const int64_t *dims, const void *data, struct q3n_error *err);

/* Renames the temporary file onto its path and frees the dump, whatever the outcome. */
enum q3n_status q3n_dump_commit(struct q3n_dump *dump, struct q3n_error *err);

/* Frees an uncommitted dump and deletes its temporary file. Accepts NULL. */
void q3n_dump_close(struct q3n_dump *dump);

/* The tensor file being written (for extra attributes). */
struct q3n_tensorfile *q3n_dump_file(struct q3n_dump *dump);

#endif
