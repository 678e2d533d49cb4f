/* tap.h — named intermediate tensors ("taps") emitted by every implementation.
 *
 * An implementation calls the sink after each operation with the tensor's transformers
 * module path and a point suffix (docs/golden-format.md lists every name and shape):
 *   "model.layers.3.linear_attn.out", "model.layers.3.mlp.gate.logits", ...
 * The data pointer is only valid during the call; a sink that keeps it must copy.
 * A sink returning non-OK stops the forward, which returns that status. */
#ifndef Q3N_TAP_H
#define Q3N_TAP_H

#include <stdint.h>

#include "status.h"

#define Q3N_MAX_RANK 4
#define Q3N_TAP_NAME_MAX 160

enum q3n_dtype {
    Q3N_DTYPE_F32 = 0,
    Q3N_DTYPE_F64,
    Q3N_DTYPE_I64,
    Q3N_DTYPE_BF16, /* stored as uint16 bit patterns */
    Q3N_DTYPE_F16,
    Q3N_DTYPE_U8
};

const char *q3n_dtype_name(enum q3n_dtype dtype); /* "float32", "float64", "int64", "bfloat16", ... */
size_t q3n_dtype_size(enum q3n_dtype dtype);

struct q3n_tap {
    const char *name;            /* module path + point, e.g. "model.layers.0.linear_attn.g" */
    enum q3n_dtype dtype;
    int rank;
    int64_t dims[Q3N_MAX_RANK];  /* row-major; dims[0] is T for per-token tensors */
    const void *data;            /* host memory, valid only during the callback */
    /* Intervention (issue 9: isolated layers, blame, forced routing): when non-NULL, the same
     * buffer as data, which the implementation reads downstream after the callback returns.
     * A sink with `intervene` set may overwrite it (same dtype and shape) and the run then
     * continues from the new values. NULL when the tensor is a copy nothing reads again. */
    void *writable;
};

typedef enum q3n_status (*q3n_tap_fn)(void *user, const struct q3n_tap *tap, struct q3n_error *err);

struct q3n_tap_sink {
    q3n_tap_fn fn; /* NULL: taps off, the implementation skips all tap work */
    void *user;
    int intervene; /* 1: the sink may write tap->writable; device implementations copy it back */
};

/* Element count of a tap (product of dims). */
int64_t q3n_tap_numel(const struct q3n_tap *tap);

/* Calls the sink if it is on; formats the name with printf arguments. Returns the sink's status. */
enum q3n_status q3n_tap_emit(const struct q3n_tap_sink *sink, enum q3n_dtype dtype, const void *data,
                             int rank, const int64_t *dims, struct q3n_error *err, const char *name_fmt,
                             ...) __attribute__((format(printf, 7, 8)));

/* As q3n_tap_emit, for a live buffer that downstream operations read after the call:
 * sets tap.writable = data so an intervening sink can replace the tensor. */
enum q3n_status q3n_tap_emit_live(const struct q3n_tap_sink *sink, enum q3n_dtype dtype, void *data, int rank,
                                  const int64_t *dims, struct q3n_error *err, const char *name_fmt, ...)
    __attribute__((format(printf, 7, 8)));

#endif
