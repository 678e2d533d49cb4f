/* args.c — strict option-value parsers (see args.h). */
#include "args.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>

/* An integer at s: optional '-', then digits (strtoll alone would also skip spaces and take '+'),
 * within long long. Stores it and where it ends. */
static int integer_at(const char *s, long long *v, char **end)
{
    if (!(isdigit((unsigned char)s[0]) || (s[0] == '-' && isdigit((unsigned char)s[1])))) return 0;
    errno = 0;
    *v = strtoll(s, end, 10);
    return errno == 0;
}

int q3n_arg_ll(const char *s, long long lo, long long *out)
{
    char *end = NULL;
    long long v;
    if (!integer_at(s, &v, &end) || *end || v < lo) return 0;
    *out = v;
    return 1;
}

int q3n_arg_pos_double(const char *s, double *out)
{
    char *end = NULL;
    if (!(isdigit((unsigned char)s[0]) || s[0] == '.')) return 0;
    const double v = strtod(s, &end);
    if (!end || end == s || *end || !(v > 0) || !isfinite(v)) return 0;
    *out = v;
    return 1;
}

int q3n_arg_i64_list(const char *s, int64_t lo, int64_t *out, int cap, int *n)
{
    int k = 0;
    while (*s) {
        char *end = NULL;
        long long v;
        if (!integer_at(s, &v, &end) || v < lo || k == cap || (*end && *end != ',') || (*end == ',' && !end[1]))
            return 0;
        out[k++] = v;
        s = *end ? end + 1 : end;
    }
    if (k == 0) return 0;
    *n = k;
    return 1;
}
