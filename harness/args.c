/* args.c — strict option-value parsers (see args.h). */
#include "args.h"

#include <math.h>
#include <stdlib.h>

int q3n_arg_ll(const char *s, long long lo, long long *out)
{
    char *end = NULL;
    const long long v = strtoll(s, &end, 10);
    if (!end || end == s || *end || v < lo) return 0;
    *out = v;
    return 1;
}

int q3n_arg_pos_double(const char *s, double *out)
{
    char *end = NULL;
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
        const long long v = strtoll(s, &end, 10);
        if (end == s || v < lo || k == cap || (*end && *end != ',') || (*end == ',' && !end[1])) return 0;
        out[k++] = v;
        s = *end ? end + 1 : end;
    }
    if (k == 0) return 0;
    *n = k;
    return 1;
}
