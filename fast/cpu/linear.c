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

struct gemm_job {
    float *out;
    const float *x, *W;
    int64_t T, N, K, ldo, ldx, nb; /* nb: output columns per block */
};

/* Output column blocks [b0, b1): out[:, n0:n1] = x W[n0:n1]^T by one single-threaded sgemm (sgemv
 * for one token) per block. Each element's K-sum is the same whichever block holds it. */
static void gemm_blocks(void *ctx, int64_t b0, int64_t b1, int worker)
{
    (void)worker;
    const struct gemm_job *j = ctx;
    for (int64_t b = b0; b < b1; b++) {
        int64_t n0 = b * j->nb, n = j->N - n0 < j->nb ? j->N - n0 : j->nb;
        if (j->T == 1)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint)n, (blasint)j->K, 1.0f, j->W + n0 * j->K, (blasint)j->K,
                        j->x, 1, 0.0f, j->out + n0, 1);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)j->T, (blasint)n, (blasint)j->K, 1.0f, j->x,
                        (blasint)j->ldx, j->W + n0 * j->K, (blasint)j->K, 0.0f, j->out + n0, (blasint)j->ldo);
    }
}

/* out[t, 0:N] (row stride ldo) = x[t, 0:K] (row stride ldx) W^T, W [N,K] row-major (nn.Linear).
 * The N output columns are cut into one block per worker (multiples of 64) and each block runs
 * as a single-threaded sgemm on its own thread (fast/cpu/par.c): OpenBLAS's own threads never
 * run, so none spin while fast/cpu's other phases work, and no element's summation order
 * depends on the thread count. */
void cpu_gemm_nt(float *out, int64_t ldo, const float *x, int64_t ldx, const float *W, int64_t T, int64_t N,
                 int64_t K)
{
    Q3N_REQUIRE(T >= 0 && N > 0 && K > 0 && ldo >= N && ldx >= K);
    if (T == 0) return;
    int64_t w = cpu_parallel_workers();
    int64_t nb = (N + w - 1) / w;
    nb = (nb + 63) / 64 * 64;
    struct gemm_job j = {.out = out, .x = x, .W = W, .T = T, .N = N, .K = K, .ldo = ldo, .ldx = ldx, .nb = nb};
    /* sgemv streams the weights at 2 flops per 4 bytes: count it 8x to weigh its memory time */
    double cost = (T == 1 ? 16.0 : 2.0 * (double)T) * (double)N * (double)K;
    cpu_parallel_for((N + nb - 1) / nb, cost, gemm_blocks, &j);
}

/* out = x W^T (+ bias)   out [T,N], x [T,Kin], W [N,Kin]. One token uses sgemv. */
void cpu_linear_forward(float *out, const float *x, const float *W, const float *bias, int64_t T, int64_t N,
                        int64_t Kin)
{
    Q3N_REQUIRE(T >= 0 && N > 0 && Kin > 0);
    if (T == 0) return;
    cpu_gemm_nt(out, N, x, Kin, W, T, N, Kin);
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
