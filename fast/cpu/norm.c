/* norm.c — RMSNorm (zero-centred), gated RMSNorm, L2 norm. Twins of ref/norm.c.
 * Sums of squares accumulate in double (ref: float in index order): the cpu result is
 * closer to exact; expected difference <= ~1 ULP of the output. Rows are spread over
 * cpu_parallel_for workers (rows are independent: no result depends on the worker count).
 * In-place (out == x) is allowed, as in ref. */
#include <math.h>

#include "ops.h"

#include "../../harness/status.h"

static double sumsq(const float *x, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
    return s;
}

enum norm_kind { NORM_RMS, NORM_RMS_GATED, NORM_L2 };

struct norm_job {
    enum norm_kind kind;
    float *out;
    const float *x, *z, *w;
    int64_t n;
    double eps;
};

static void norm_rows(void *ctx, int64_t r0, int64_t r1, int worker)
{
    (void)worker;
    const struct norm_job *j = ctx;
    int64_t n = j->n;
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = j->x + r * n;
        float *yr = j->out + r * n;
        switch (j->kind) {
        case NORM_RMS: {
            /* out = x / sqrt(mean(x^2) + eps) * (1 + w) */
            float inv = (float)(1.0 / sqrt((double)(float)(sumsq(xr, n) / (double)n) + j->eps));
            for (int64_t i = 0; i < n; i++) yr[i] = (xr[i] * inv) * (1.0f + j->w[i]);
            break;
        }
        case NORM_RMS_GATED: {
            /* out = w * (x / sqrt(mean(x^2) + eps)) * silu(z), w not zero-centred */
            const float *zr = j->z + r * n;
            float inv = (float)(1.0 / sqrt((double)(float)(sumsq(xr, n) / (double)n) + j->eps));
            for (int64_t i = 0; i < n; i++) yr[i] = (j->w[i] * (xr[i] * inv)) * cpu_silu(zr[i]);
            break;
        }
        case NORM_L2: {
            /* out = x / sqrt(sum(x^2) + eps) */
            float inv = (float)(1.0 / sqrt((double)(float)sumsq(xr, n) + j->eps));
            for (int64_t i = 0; i < n; i++) yr[i] = xr[i] * inv;
            break;
        }
        }
    }
}

/* out = x / sqrt(mean(x^2) + eps) * (1 + w)   out,x [rows,n], w [n]. */
void cpu_rmsnorm_forward(float *out, const float *x, const float *w, int64_t rows, int64_t n, double eps)
{
    Q3N_REQUIRE(rows >= 0 && n > 0);
    struct norm_job j = {.kind = NORM_RMS, .out = out, .x = x, .w = w, .n = n, .eps = eps};
    cpu_parallel_for(rows, 4.0 * (double)rows * (double)n, norm_rows, &j);
}

/* out = w * (x / sqrt(mean(x^2) + eps)) * silu(z), rows of width n, w not zero-centred. */
void cpu_rmsnorm_gated_forward(float *out, const float *x, const float *z, const float *w, int64_t rows, int64_t n,
                               double eps)
{
    Q3N_REQUIRE(rows >= 0 && n > 0);
    struct norm_job j = {.kind = NORM_RMS_GATED, .out = out, .x = x, .z = z, .w = w, .n = n, .eps = eps};
    cpu_parallel_for(rows, 4.0 * (double)rows * (double)n, norm_rows, &j);
}

/* out = x / sqrt(sum(x^2) + eps) over rows of width n. */
void cpu_l2norm_forward(float *out, const float *x, int64_t rows, int64_t n, double eps)
{
    Q3N_REQUIRE(rows >= 0 && n > 0);
    struct norm_job j = {.kind = NORM_L2, .out = out, .x = x, .n = n, .eps = eps};
    cpu_parallel_for(rows, 4.0 * (double)rows * (double)n, norm_rows, &j);
}
