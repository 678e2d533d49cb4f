/* status.c — error struct helpers; see status.h. */
#include "status.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

enum q3n_status q3n_error_set(struct q3n_error *err, enum q3n_status status, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        /* Messages quote outside input (keys, names, tokens): keep them one printable line. */
        for (char *c = err->msg; *c; c++)
            if ((unsigned char)*c < 0x20 || (unsigned char)*c == 0x7f) *c = '?';
        err->status = status;
    }
    return status;
}

void q3n_error_clear(struct q3n_error *err)
{
    if (err) {
        err->status = Q3N_OK;
        err->msg[0] = '\0';
    }
}

const char *q3n_status_name(enum q3n_status status)
{
    switch (status) {
    case Q3N_OK: return "ok";
    case Q3N_ERR_IO: return "io";
    case Q3N_ERR_FORMAT: return "format";
    case Q3N_ERR_CONFIG: return "config";
    case Q3N_ERR_SHAPE: return "shape";
    case Q3N_ERR_UNSUPPORTED: return "unsupported";
    case Q3N_ERR_NOMEM: return "nomem";
    case Q3N_ERR_USAGE: return "usage";
    case Q3N_ERR_NUMERIC: return "numeric";
    case Q3N_ERR_DEVICE: return "device";
    }
    return "unknown";
}

void q3n_require_failed(const char *cond, const char *file, int line)
{
    fprintf(stderr, "q3n: internal invariant failed at %s:%d: %s\n", file, line, cond);
    abort();
}

int q3n_mul_size(size_t *out, size_t a, size_t b)
{
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

int q3n_add_size(size_t *out, size_t a, size_t b)
{
    if (b > SIZE_MAX - a) return 0;
    *out = a + b;
    return 1;
}
