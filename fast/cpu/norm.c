/* norm.c — RMSNorm (zero-centred), gated RMSNorm, L2 norm. Twins of ref/norm.c.
 * Sums of squares accumulate in double (ref: float in index order): the cpu result is
 * closer to exact; expected difference <= ~1 ULP of the output. */
#include <math.h>

#include "ops.h"

#include "../../harness/status.h"

static double sumsq(const float *x, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
    return s;
}

/* out = x / sqrt(mean(x^2) + eps) * (1 + w)   out,x [rows,n], w [n]. */
void cpu_rmsnorm_forward(float *out, const float *x, const float *w, int64_t rows, int64_t n, double eps)
{
    Q3N_REQUIRE(rows >= 0 && n > 0);
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = out + r * n;
        float inv = (float)(1.0 / sqrt((double)(float)(sumsq(xr, n) / (double)n) + eps));
        for (int64_t i = 0; i < n; i++) yr[i] = (xr[i] * inv) * (1.0f + w[i]);
    }
}

/* out = w * (x / sqrt(mean(x^2) + eps)) * silu(z), rows of width n, w not zero-centred. */
void cpu_rmsnorm_gated_forward(float *out, const float *x, const float *z, const float *w, int64_t rows, int64_t n,
                               double eps)
{
    Q3N_REQUIRE(rows >= 0 && n > 0);
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        const float *zr = z + r * n;
        float *yr = out + r * n;
        float inv = (float)(1.0 / sqrt((double)(float)(sumsq(xr, n) / (double)n) + eps));
        for (int64_t i = 0; i < n; i++) yr[i] = (w[i] * (xr[i] * inv)) * cpu_silu(zr[i]);
    }
}

/* out = x / sqrt(sum(x^2) + eps) over rows of width n. */
void cpu_l2norm_forward(float *out, const float *x, int64_t rows, int64_t n, double eps)
{
    Q3N_REQUIRE(rows >= 0 && n > 0);
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = out + r * n;
        float inv = (float)(1.0 / sqrt((double)(float)sumsq(xr, n) + eps));
        for (int64_t i = 0; i < n; i++) yr[i] = xr[i] * inv;
    }
}
