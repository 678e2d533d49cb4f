/* linear.c — embedding, dense projections (cblas_sgemm / sgemv), residual add, activations.
 * Twins of ref/embed.c and ref/linear.c. Summation order: OpenBLAS blocks the Kin reduction
 * and uses FMA, ref sums k in index order in float; expected difference a few ULP times
 * sqrt(Kin) relative to the row norm, far inside the float32 policy. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "ops.h"

#include "../../harness/status.h"

/* out[t,:] = embed[tokens[t],:]   out [T,D], embed [V,D]. */
void cpu_embed_forward(float *out, const int64_t *tokens, const float *embed, int64_t T, int64_t D)
{
    Q3N_REQUIRE(T >= 0 && D > 0);
    for (int64_t t = 0; t < T; t++) memcpy(out + t * D, embed + tokens[t] * D, (size_t)D * sizeof *out);
}

/* out = x W^T (+ bias)   out [T,N], x [T,Kin], W [N,Kin]. One token uses sgemv. */
void cpu_linear_forward(float *out, const float *x, const float *W, const float *bias, int64_t T, int64_t N,
                        int64_t Kin)
{
    Q3N_REQUIRE(T >= 0 && N > 0 && Kin > 0);
    if (T == 0) return;
    if (T == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint)N, (blasint)Kin, 1.0f, W, (blasint)Kin, x, 1, 0.0f, out,
                    1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)T, (blasint)N, (blasint)Kin, 1.0f, x,
                    (blasint)Kin, W, (blasint)Kin, 0.0f, out, (blasint)N);
    if (bias)
        for (int64_t t = 0; t < T; t++)
            for (int64_t n = 0; n < N; n++) out[t * N + n] += bias[n];
}

void cpu_add_inplace(float *x, const float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

float cpu_silu(float x)
{
    return x / (1.0f + expf(-x));
}

float cpu_sigmoid(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

/* torch.nn.functional.softplus with beta 1, threshold 20. */
float cpu_softplus(float x)
{
    return x > 20.0f ? x : log1pf(expf(x));
}
