/* status.h — error reporting shared by every q3n library function.
 *
 * Every fallible library function returns enum q3n_status and, on failure, fills a
 * caller-owned struct q3n_error with one line naming the file, tensor, field or index
 * at fault. Only harness/cli.c prints messages and chooses exit codes.
 *
 * Broken internal invariants (a shape contract an op was called against) are not
 * errors the caller can handle: Q3N_REQUIRE aborts with file:line, in every build. */
#ifndef Q3N_STATUS_H
#define Q3N_STATUS_H

#include <stddef.h>

enum q3n_status {
    Q3N_OK = 0,
    Q3N_ERR_IO,          /* a file could not be opened, mapped, read or written */
    Q3N_ERR_FORMAT,      /* a file is malformed: truncated, lying header, bad JSON, wrong schema */
    Q3N_ERR_CONFIG,      /* a config field is missing, out of range or inconsistent */
    Q3N_ERR_SHAPE,       /* a tensor has the wrong rank, dims or dtype */
    Q3N_ERR_UNSUPPORTED, /* a valid input q3n does not handle (pickle checkpoints, FP8, ...) */
    Q3N_ERR_NOMEM,       /* an allocation failed or a size overflowed 64 bits */
    Q3N_ERR_USAGE,       /* a bad command-line argument or API use */
    Q3N_ERR_NUMERIC,     /* a numerical check failed (NaN/Inf where finite expected, ...) */
    Q3N_ERR_DEVICE       /* a CUDA/cuBLAS call failed */
};

#define Q3N_ERROR_MSG_MAX 512

struct q3n_error {
    enum q3n_status status;
    char msg[Q3N_ERROR_MSG_MAX];
};

/* Sets err (if non-NULL) to status and a printf-formatted one-line message (control characters,
 * newlines included, become '?', since messages quote outside input); returns status,
 * so callers can write `return q3n_error_set(err, Q3N_ERR_IO, "%s: ...", path);`. */
enum q3n_status q3n_error_set(struct q3n_error *err, enum q3n_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Clears err to Q3N_OK and an empty message. Accepts NULL. */
void q3n_error_clear(struct q3n_error *err);

/* A short stable name for a status ("io", "format", ...), for reports. */
const char *q3n_status_name(enum q3n_status status);

/* Aborts with file:line and the condition text when cond is false. Always on (not assert()). */
#define Q3N_REQUIRE(cond)                                                   \
    do {                                                                    \
        if (!(cond)) q3n_require_failed(#cond, __FILE__, __LINE__);         \
    } while (0)

void q3n_require_failed(const char *cond, const char *file, int line) __attribute__((noreturn));

/* Overflow-checked 64-bit size arithmetic for sizes read from files. Return 0 on overflow. */
int q3n_mul_size(size_t *out, size_t a, size_t b);
int q3n_add_size(size_t *out, size_t a, size_t b);

#endif
