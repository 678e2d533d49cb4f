/* norm.c — the three normalisations: zero-centred RMSNorm, gated RMSNorm, L2 norm. */
#include "ops.h"
#include "real.h"

/* Zero-centred RMSNorm over rows of width n:  out = (x * rsqrt(mean(x^2) + eps)) * (1 + w).
 * out,x [rows,n], w [n]. Mirrors Qwen3NextRMSNorm: float32 inside, (1 + w) formed first, the
 * product taken before any cast back (Qwen3Next, unlike Llama, multiplies in float32).
 * rsqrt(v) is 1/sqrt(v), both rounded in ref_real. In-place (out == x) is allowed. */
void ref_rmsnorm_forward(ref_real *out, const ref_real *x, const float *w, int64_t rows, int64_t n, double eps)
{
    Q3N_REQUIRE(rows >= 0 && n > 0 && eps >= 0.0);
    for (int64_t r = 0; r < rows; r++) {
        const ref_real *xr = x + r * n;
        ref_real ss = 0;
        for (int64_t i = 0; i < n; i++) ss += xr[i] * xr[i];
        ref_real inv = (ref_real)1 / ref_sqrt(ss / (ref_real)n + (ref_real)eps);
        for (int64_t i = 0; i < n; i++) out[r * n + i] = (xr[i] * inv) * ((ref_real)1 + (ref_real)w[i]);
    }
}

/* Gated RMSNorm: out = (w * (x * rsqrt(mean(x^2) + eps))) * silu(z), rows of width n (one
 * value head, DV). out,x,z [rows,n]; w [n] NOT zero-centred (init 1). Mirrors
 * Qwen3NextRMSNormGated: normalise in float32, cast back to the input dtype, multiply by w,
 * then by silu(z) computed in float32 (in the float build every cast is a no-op). */
void ref_rmsnorm_gated_forward(ref_real *out, const ref_real *x, const ref_real *z, const float *w, int64_t rows,
                               int64_t n, double eps)
{
    Q3N_REQUIRE(rows >= 0 && n > 0 && eps >= 0.0);
    for (int64_t r = 0; r < rows; r++) {
        const ref_real *xr = x + r * n, *zr = z + r * n;
        ref_real ss = 0;
        for (int64_t i = 0; i < n; i++) ss += xr[i] * xr[i];
        ref_real inv = (ref_real)1 / ref_sqrt(ss / (ref_real)n + (ref_real)eps);
        for (int64_t i = 0; i < n; i++) out[r * n + i] = ((ref_real)w[i] * (xr[i] * inv)) * ref_silu(zr[i]);
    }
}

/* L2 norm over rows: out = x * rsqrt(sum(x^2) + eps), out,x [rows,n]. Mirrors transformers'
 * l2norm (fla's convention: eps inside the square root, added to the sum, not the mean;
 * transformers passes eps = 1e-6 and runs it in float32). In-place allowed. */
void ref_l2norm_forward(ref_real *out, const ref_real *x, int64_t rows, int64_t n, double eps)
{
    Q3N_REQUIRE(rows >= 0 && n > 0 && eps >= 0.0);
    for (int64_t r = 0; r < rows; r++) {
        const ref_real *xr = x + r * n;
        ref_real ss = 0;
        for (int64_t i = 0; i < n; i++) ss += xr[i] * xr[i];
        ref_real inv = (ref_real)1 / ref_sqrt(ss + (ref_real)eps);
        for (int64_t i = 0; i < n; i++) out[r * n + i] = xr[i] * inv;
    }
}
