/* tensorfile.h — the q3n HDF5 tensor file (goldens and dumps); schema in docs/golden-format.md.
 *
 * tensorfile.c is the only file in q3n that includes hdf5.h. HDF5's own error printing is
 * turned off; every failure becomes a q3n error naming the file and the dataset.
 *
 * Writing goes to "<path>.tmp" and is renamed onto <path> only by q3n_tensorfile_commit,
 * so a failed run never leaves a partial output file. Closing a writer without commit
 * removes the temporary file. */
#ifndef Q3N_TENSORFILE_H
#define Q3N_TENSORFILE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"
#include "tap.h"

struct q3n_tensorfile;

struct q3n_tensor_info {
    enum q3n_dtype dtype;   /* from the HDF5 class/size, and the "dtype" attribute for bf16 */
    int rank;
    int64_t dims[Q3N_MAX_RANK];
    int64_t numel;
};

/* Opens an existing file read-only. */
enum q3n_status q3n_tensorfile_open(struct q3n_tensorfile **tf, const char *path, struct q3n_error *err);

/* Creates a new file for writing (at <path>.tmp until commit). */
enum q3n_status q3n_tensorfile_create(struct q3n_tensorfile **tf, const char *path, struct q3n_error *err);

/* Flushes, closes and renames the temporary file onto its final path. The handle is
 * freed whatever the outcome. */
enum q3n_status q3n_tensorfile_commit(struct q3n_tensorfile *tf, struct q3n_error *err);

/* Closes; for a writer not committed, deletes the temporary file. Accepts NULL. */
void q3n_tensorfile_close(struct q3n_tensorfile *tf);

const char *q3n_tensorfile_path(const struct q3n_tensorfile *tf);

/* Writes one dataset at an absolute path ("/tensors/model.layers.0.in"); intermediate
 * groups are created with creation-order tracking. Large tensors are chunked and
 * compressed. BF16 data is stored as uint16 with attribute dtype="bfloat16". */
enum q3n_status q3n_tensorfile_write(struct q3n_tensorfile *tf, const char *dataset, enum q3n_dtype dtype,
                                     int rank, const int64_t *dims, const void *data, struct q3n_error *err);

/* A scalar variable-length UTF-8 string dataset (h5py's `f["config"] = text`), e.g. /config.
 * Added for the golden schema's /config; intermediate groups are created as above. */
enum q3n_status q3n_tensorfile_write_str(struct q3n_tensorfile *tf, const char *dataset, const char *value,
                                         struct q3n_error *err);

/* Reads a scalar string dataset (variable-length or fixed-size) into a malloc'd,
 * NUL-terminated buffer the caller frees with free(). Not a string: Q3N_ERR_SHAPE. */
enum q3n_status q3n_tensorfile_read_str(struct q3n_tensorfile *tf, const char *dataset, char **out,
                                        struct q3n_error *err);

/* Attributes on a group or dataset ("/" for the root). */
enum q3n_status q3n_tensorfile_set_attr_str(struct q3n_tensorfile *tf, const char *object, const char *name,
                                            const char *value, struct q3n_error *err);
enum q3n_status q3n_tensorfile_set_attr_f64(struct q3n_tensorfile *tf, const char *object, const char *name,
                                            double value, struct q3n_error *err);
enum q3n_status q3n_tensorfile_set_attr_i64(struct q3n_tensorfile *tf, const char *object, const char *name,
                                            int64_t value, struct q3n_error *err);

/* Reading attributes. A missing attribute is Q3N_ERR_FORMAT naming file, object and attribute.
 * The string is copied into a buffer of `cap` bytes (truncation is an error). */
enum q3n_status q3n_tensorfile_get_attr_str(struct q3n_tensorfile *tf, const char *object, const char *name,
                                            char *out, size_t cap, struct q3n_error *err);
enum q3n_status q3n_tensorfile_get_attr_f64(struct q3n_tensorfile *tf, const char *object, const char *name,
                                            double *out, struct q3n_error *err);
enum q3n_status q3n_tensorfile_get_attr_i64(struct q3n_tensorfile *tf, const char *object, const char *name,
                                            int64_t *out, struct q3n_error *err);

/* 1 if the object (group or dataset) exists, 0 if not. */
int q3n_tensorfile_exists(struct q3n_tensorfile *tf, const char *object);

/* Shape and dtype of a dataset; checks rank <= Q3N_MAX_RANK and size overflow. */
enum q3n_status q3n_tensorfile_info(struct q3n_tensorfile *tf, const char *dataset, struct q3n_tensor_info *info,
                                    struct q3n_error *err);

/* Reads a whole dataset converted to the requested dtype (F32, F64 or I64) into `out`,
 * which holds `capacity` elements. Shape/dtype mismatches against `expect` (if non-NULL;
 * rank and dims must match exactly) are Q3N_ERR_SHAPE naming file and dataset. Float
 * conversions are explicit: reading a float64 dataset as F32 is allowed; bf16 expands. */
enum q3n_status q3n_tensorfile_read(struct q3n_tensorfile *tf, const char *dataset, enum q3n_dtype as,
                                    void *out, int64_t capacity, const struct q3n_tensor_info *expect,
                                    struct q3n_error *err);

/* Reads rows [row0, row0+nrows) of dims[0] (for streaming large tensors). */
enum q3n_status q3n_tensorfile_read_rows(struct q3n_tensorfile *tf, const char *dataset, enum q3n_dtype as,
                                         int64_t row0, int64_t nrows, void *out, int64_t capacity,
                                         struct q3n_error *err);

/* Lists the datasets directly under `group`, in creation order when the group tracks it,
 * otherwise in natural name order (numbers compared as numbers). Calls fn for each
 * dataset name (relative to the group); a non-OK return stops the walk. */
typedef enum q3n_status (*q3n_tensorfile_visit_fn)(void *user, const char *name, struct q3n_error *err);
enum q3n_status q3n_tensorfile_list(struct q3n_tensorfile *tf, const char *group, q3n_tensorfile_visit_fn fn,
                                    void *user, struct q3n_error *err);

#endif
