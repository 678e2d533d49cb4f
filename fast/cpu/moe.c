/* moe.c — router softmax, top-k, SwiGLU MLP and routed experts as grouped GEMMs. Twins of
 * ref/moe.c.
 *
 * Routed experts: the T*K (token, slot) pairs are sorted by expert (stable: token, slot);
 * for each active expert its tokens are gathered into a block Xe [n, D] and
 *   Y = (silu(Xe Wg^T) * (Xe Wu^T)) Wd^T          (three sgemm)
 * is written to the pair's row of a [T*K, D] buffer; finally
 *   out[t] = sum_j Y[t*K+j] weight[t,j]   in ascending (expert, slot) order, as ref does.
 * So only the per-expert dot products (sgemm blocking, FMA) differ from ref in order:
 * a few ULP relative. Softmax sums in double (ref: float in index order), <= 1 ULP. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

#include "../../harness/status.h"

void cpu_softmax_forward(float *out, const float *logits, int64_t rows, int64_t E)
{
    Q3N_REQUIRE(rows >= 0 && E > 0);
    for (int64_t r = 0; r < rows; r++) {
        const float *x = logits + r * E;
        float *y = out + r * E;
        float mx = x[0];
        for (int64_t e = 1; e < E; e++)
            if (x[e] > mx) mx = x[e];
        double sum = 0.0;
        for (int64_t e = 0; e < E; e++) {
            y[e] = expf(x[e] - mx);
            sum += y[e];
        }
        float inv = (float)(1.0 / sum);
        for (int64_t e = 0; e < E; e++) y[e] *= inv;
    }
}

/* torch.topk order: descending, ties to the lower index; renormalised when norm_topk_prob. */
void cpu_topk_forward(int64_t *idx, float *weight, const float *probs, int64_t T, int64_t E, int64_t K,
                      int norm_topk_prob)
{
    Q3N_REQUIRE(T >= 0 && E > 0 && K > 0 && K <= E);
    for (int64_t t = 0; t < T; t++) {
        const float *p = probs + t * E;
        int64_t *it = idx + t * K;
        float *wt = weight + t * K;
        for (int64_t j = 0; j < K; j++) {
            int64_t best = -1;
            for (int64_t e = 0; e < E; e++) {
                int taken = 0;
                for (int64_t i = 0; i < j; i++)
                    if (it[i] == e) taken = 1;
                if (taken) continue;
                if (best < 0 || p[e] > p[best]) best = e;
            }
            it[j] = best;
            wt[j] = p[best];
        }
        if (norm_topk_prob) {
            float sum = 0.0f;
            for (int64_t j = 0; j < K; j++) sum += wt[j];
            for (int64_t j = 0; j < K; j++) wt[j] /= sum;
        }
    }
}

/* h = silu(g) * u over rows: g at rows of stride ld, u right after g (offset W). */
static void swiglu_rows(float *h, int64_t rows, int64_t W, int64_t ld)
{
    for (int64_t t = 0; t < rows; t++) {
        float *g = h + t * ld;
        const float *u = g + W;
        for (int64_t i = 0; i < W; i++) g[i] = cpu_silu(g[i]) * u[i];
    }
}

/* out = down(silu(gate(x)) * up(x))   out,x [T,D]; scratch [T,2W]. */
void cpu_mlp_forward(float *out, const float *x, const struct q3n_mlp_weights *w, float *scratch, int64_t T,
                     int64_t D, int64_t W)
{
    Q3N_REQUIRE(T >= 0 && D > 0 && W > 0);
    if (T == 0) return;
    cpu_gemm_nt(scratch, 2 * W, x, D, w->gate_proj, T, W, D);
    cpu_gemm_nt(scratch + W, 2 * W, x, D, w->up_proj, T, W, D);
    swiglu_rows(scratch, T, W, 2 * W);
    cpu_gemm_nt(out, D, scratch, 2 * W, w->down_proj, T, D, W);
}

int64_t cpu_moe_experts_scratch(int64_t T, int64_t D, int64_t Iw, int64_t K)
{
    int64_t P = T * K;
    /* order int64 [P], group starts int64 [P+1] (2 floats per entry, padded to 64 bytes);
     * Xe [P,D], H [P,2I], Y [P,D] */
    return (4 * P + 2 + 15) / 16 * 16 + P * D + P * 2 * Iw + P * D;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

struct experts_job {
    float *out, *Xe, *H, *Y;
    const float *x, *weight;
    const int64_t *idx, *order, *start; /* start[g] .. start[g+1]: the pairs of active expert g */
    const struct q3n_mlp_weights *experts;
    int64_t T, D, Iw, K, P;
    int64_t rows_per_worker; /* > 0: worker w reuses rows w*rows_per_worker.. of Xe / H (cache-warm);
                              * 0: expert g uses rows start[g].. (always fits) */
};

/* Active experts [g0, g1): each gathers its tokens into its own rows of Xe / H (rows
 * start[g] ..), runs its three GEMMs and scatters the results to the pairs' rows of Y. */
static void experts_range(void *ctx, int64_t g0, int64_t g1, int worker)
{
    const struct experts_job *j = ctx;
    int64_t D = j->D, Iw = j->Iw, K = j->K, P = j->P;
    for (int64_t g = g0; g < g1; g++) {
        int64_t s = j->start[g], n = j->start[g + 1] - s, e = j->order[s] / P;
        int64_t row = j->rows_per_worker > 0 ? (int64_t)worker * j->rows_per_worker : s;
        float *Xe = j->Xe + row * D, *H = j->H + row * 2 * Iw;
        for (int64_t i = 0; i < n; i++)
            memcpy(Xe + i * D, j->x + ((j->order[s + i] % P) / K) * D, (size_t)D * sizeof(float));
        const struct q3n_mlp_weights *w = &j->experts[e];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)n, (blasint)Iw, (blasint)D, 1.0f, Xe,
                    (blasint)D, w->gate_proj, (blasint)D, 0.0f, H, (blasint)(2 * Iw));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)n, (blasint)Iw, (blasint)D, 1.0f, Xe,
                    (blasint)D, w->up_proj, (blasint)D, 0.0f, H + Iw, (blasint)(2 * Iw));
        swiglu_rows(H, n, Iw, 2 * Iw);
        /* down projection into Xe's rows (free now), then scatter to the pairs' rows of Y */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)n, (blasint)D, (blasint)Iw, 1.0f, H,
                    (blasint)(2 * Iw), w->down_proj, (blasint)Iw, 0.0f, Xe, (blasint)D);
        for (int64_t i = 0; i < n; i++)
            memcpy(j->Y + (j->order[s + i] % P) * D, Xe + i * D, (size_t)D * sizeof(float));
    }
}

/* Tokens [t0, t1): out[t] = sum of its slots' rows of Y times their weights, in ascending
 * (expert, slot) order, the order ref (and the eager transformers loop over hit experts) adds
 * them in. */
static void combine_range(void *ctx, int64_t t0, int64_t t1, int worker)
{
    (void)worker;
    const struct experts_job *j = ctx;
    int64_t D = j->D, K = j->K;
    for (int64_t t = t0; t < t1; t++) {
        int64_t ord[K];
        for (int64_t jj = 0; jj < K; jj++) {
            int64_t m = jj;
            while (m > 0 && j->idx[t * K + ord[m - 1]] > j->idx[t * K + jj]) {
                ord[m] = ord[m - 1];
                m--;
            }
            ord[m] = jj;
        }
        float *o = j->out + t * D;
        for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
        for (int64_t n = 0; n < K; n++) {
            int64_t slot = ord[n];
            float wj = j->weight[t * K + slot];
            const float *y = j->Y + (t * K + slot) * D;
            for (int64_t d = 0; d < D; d++) o[d] += y[d] * wj;
        }
    }
}

/* Active experts are spread over cpu_parallel_for workers (each expert's GEMMs run in one
 * thread), then tokens for the weighted sum; no result depends on the worker count. */
void cpu_moe_experts_forward(float *out, const float *x, const int64_t *idx, const float *weight,
                             const struct q3n_mlp_weights *experts, float *scratch, int64_t T, int64_t D, int64_t Iw,
                             int64_t K)
{
    Q3N_REQUIRE(T >= 0 && D > 0 && Iw > 0 && K > 0);
    int64_t P = T * K;
    if (P == 0) return;
    int64_t *order = (int64_t *)(void *)scratch;
    int64_t *start = order + P;
    float *Xe = scratch + (4 * P + 2 + 15) / 16 * 16;
    float *H = Xe + P * D;
    float *Y = H + P * 2 * Iw;
    /* key = expert * P + pair: sorting groups pairs by expert, pairs ascending inside */
    for (int64_t p = 0; p < P; p++) {
        Q3N_REQUIRE(idx[p] >= 0);
        order[p] = idx[p] * P + p;
    }
    qsort(order, (size_t)P, sizeof *order, cmp_i64);
    int64_t groups = 0, n_max = 0;
    for (int64_t s = 0; s < P; s++)
        if (s == 0 || order[s] / P != order[s - 1] / P) start[groups++] = s;
    start[groups] = P; /* groups <= P: start has P + 1 entries */
    for (int64_t g = 0; g < groups; g++)
        if (start[g + 1] - start[g] > n_max) n_max = start[g + 1] - start[g];
    int64_t workers = cpu_parallel_workers();
    if (workers > groups) workers = groups;
    struct experts_job j = {.out = out, .Xe = Xe, .H = H, .Y = Y, .x = x, .weight = weight, .idx = idx,
                            .order = order, .start = start, .experts = experts, .T = T, .D = D, .Iw = Iw,
                            .K = K, .P = P, .rows_per_worker = workers * n_max <= P ? n_max : 0};
    cpu_parallel_for(groups, 6.0 * (double)P * (double)D * (double)Iw, experts_range, &j);
    cpu_parallel_for(T, 2.0 * (double)P * (double)D, combine_range, &j);
}

/* out = experts_out + sigmoid(shared_gate_logit) * shared_out (shared_out NULL: experts_out).
 * Same order as ref: exact up to the sigmoid's expf. In-place with experts_out allowed. */
void cpu_moe_combine_forward(float *out, const float *experts_out, const float *shared_out,
                             const float *shared_gate_logit, int64_t T, int64_t D)
{
    Q3N_REQUIRE(T >= 0 && D > 0);
    for (int64_t t = 0; t < T; t++) {
        float s = shared_out ? cpu_sigmoid(shared_gate_logit[t]) : 0.0f;
        for (int64_t d = 0; d < D; d++)
            out[t * D + d] = experts_out[t * D + d] + (shared_out ? s * shared_out[t * D + d] : 0.0f);
    }
}
