/* tap.c — dtype helpers and the tap emitter; see tap.h. */
#include "tap.h"

#include <stdarg.h>
#include <stdio.h>

const char *q3n_dtype_name(enum q3n_dtype dtype)
{
    switch (dtype) {
    case Q3N_DTYPE_F32: return "float32";
    case Q3N_DTYPE_F64: return "float64";
    case Q3N_DTYPE_I64: return "int64";
    case Q3N_DTYPE_BF16: return "bfloat16";
    case Q3N_DTYPE_F16: return "float16";
    case Q3N_DTYPE_U8: return "uint8";
    }
    return "unknown";
}

size_t q3n_dtype_size(enum q3n_dtype dtype)
{
    switch (dtype) {
    case Q3N_DTYPE_F32: return 4;
    case Q3N_DTYPE_F64: return 8;
    case Q3N_DTYPE_I64: return 8;
    case Q3N_DTYPE_BF16: return 2;
    case Q3N_DTYPE_F16: return 2;
    case Q3N_DTYPE_U8: return 1;
    }
    return 0;
}

int64_t q3n_tap_numel(const struct q3n_tap *tap)
{
    int64_t n = 1;
    for (int i = 0; i < tap->rank; i++) n *= tap->dims[i];
    return n;
}

static enum q3n_status emit(const struct q3n_tap_sink *sink, enum q3n_dtype dtype, const void *data, void *writable,
                            int rank, const int64_t *dims, struct q3n_error *err, const char *name_fmt, va_list ap)
{
    Q3N_REQUIRE(rank >= 0 && rank <= Q3N_MAX_RANK);
    char name[Q3N_TAP_NAME_MAX];
    int n = vsnprintf(name, sizeof name, name_fmt, ap);
    Q3N_REQUIRE(n > 0 && (size_t)n < sizeof name);
    struct q3n_tap tap = {.name = name, .dtype = dtype, .rank = rank, .data = data, .writable = writable};
    for (int i = 0; i < rank; i++) tap.dims[i] = dims[i];
    return sink->fn(sink->user, &tap, err);
}

enum q3n_status q3n_tap_emit(const struct q3n_tap_sink *sink, enum q3n_dtype dtype, const void *data, int rank,
                             const int64_t *dims, struct q3n_error *err, const char *name_fmt, ...)
{
    if (!sink || !sink->fn) return Q3N_OK;
    va_list ap;
    va_start(ap, name_fmt);
    enum q3n_status st = emit(sink, dtype, data, NULL, rank, dims, err, name_fmt, ap);
    va_end(ap);
    return st;
}

enum q3n_status q3n_tap_emit_live(const struct q3n_tap_sink *sink, enum q3n_dtype dtype, void *data, int rank,
                                  const int64_t *dims, struct q3n_error *err, const char *name_fmt, ...)
{
    if (!sink || !sink->fn) return Q3N_OK;
    va_list ap;
    va_start(ap, name_fmt);
    enum q3n_status st = emit(sink, dtype, data, data, rank, dims, err, name_fmt, ap);
    va_end(ap);
    return st;
}
