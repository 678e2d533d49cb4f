/* dump.c — see dump.h. */
#include "dump.h"

#include <stdio.h>
#include <stdlib.h>

struct q3n_dump {
    struct q3n_tensorfile *tf;
};

enum q3n_status q3n_dump_create(struct q3n_dump **dump, const char *path, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    struct q3n_dump *d = calloc(1, sizeof *d);
    *dump = NULL;
    if (!d) return q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory for the dump", path);
    st = q3n_tensorfile_create(&d->tf, path, err);
    if (st != Q3N_OK) goto cleanup;
    *dump = d;
    d = NULL;

cleanup:
    q3n_dump_close(d);
    return st;
}

static enum q3n_status set_str(struct q3n_tensorfile *tf, const char *name, const char *value,
                               struct q3n_error *err)
{
    if (!value) return Q3N_OK;
    return q3n_tensorfile_set_attr_str(tf, "/", name, value, err);
}

enum q3n_status q3n_dump_write_info(struct q3n_dump *dump, const struct q3n_dump_info *info, struct q3n_error *err)
{
    struct q3n_tensorfile *tf = dump->tf;
    enum q3n_status st = q3n_tensorfile_set_attr_i64(tf, "/", "format_version", 1, err);
    if (st == Q3N_OK) st = set_str(tf, "generator", info->generator, err);
    if (st == Q3N_OK) st = set_str(tf, "dtype", info->dtype, err);
    if (st == Q3N_OK) st = set_str(tf, "impl", info->impl, err);
    if (st == Q3N_OK) st = set_str(tf, "kernels", info->kernels, err);
    if (st == Q3N_OK) st = set_str(tf, "checkpoint", info->checkpoint, err);
    if (st == Q3N_OK) st = set_str(tf, "device", info->device, err);
    if (st == Q3N_OK && info->preset) {
        st = set_str(tf, "preset", info->preset, err);
        if (st == Q3N_OK) st = q3n_tensorfile_set_attr_i64(tf, "/", "seed", info->seed, err);
    }
    if (st == Q3N_OK && info->config_json) st = q3n_tensorfile_write_str(tf, "/config", info->config_json, err);
    return st;
}

static enum q3n_status dump_tap(void *user, const struct q3n_tap *tap, struct q3n_error *err)
{
    struct q3n_dump *d = user;
    char path[Q3N_TAP_NAME_MAX + 16];
    snprintf(path, sizeof path, "/tensors/%s", tap->name);
    if (q3n_tensorfile_exists(d->tf, path))
        return q3n_error_set(err, Q3N_ERR_USAGE, "%s: tap %s emitted twice", q3n_tensorfile_path(d->tf), tap->name);
    return q3n_tensorfile_write(d->tf, path, tap->dtype, tap->rank, tap->dims, tap->data, err);
}

struct q3n_tap_sink q3n_dump_sink(struct q3n_dump *dump)
{
    struct q3n_tap_sink sink = {.fn = dump_tap, .user = dump, .intervene = 0};
    return sink;
}

enum q3n_status q3n_dump_write(struct q3n_dump *dump, const char *dataset, enum q3n_dtype dtype, int rank,
                               const int64_t *dims, const void *data, struct q3n_error *err)
{
    return q3n_tensorfile_write(dump->tf, dataset, dtype, rank, dims, data, err);
}

enum q3n_status q3n_dump_commit(struct q3n_dump *dump, struct q3n_error *err)
{
    enum q3n_status st = q3n_tensorfile_commit(dump->tf, err);
    free(dump);
    return st;
}

void q3n_dump_close(struct q3n_dump *dump)
{
    if (!dump) return;
    q3n_tensorfile_close(dump->tf);
    free(dump);
}

struct q3n_tensorfile *q3n_dump_file(struct q3n_dump *dump)
{
    return dump->tf;
}
