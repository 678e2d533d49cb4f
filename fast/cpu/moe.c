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
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)T, (blasint)W, (blasint)D, 1.0f, x, (blasint)D,
                w->gate_proj, (blasint)D, 0.0f, scratch, (blasint)(2 * W));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)T, (blasint)W, (blasint)D, 1.0f, x, (blasint)D,
                w->up_proj, (blasint)D, 0.0f, scratch + W, (blasint)(2 * W));
    swiglu_rows(scratch, T, W, 2 * W);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)T, (blasint)D, (blasint)W, 1.0f, scratch,
                (blasint)(2 * W), w->down_proj, (blasint)W, 0.0f, out, (blasint)D);
}

int64_t cpu_moe_experts_scratch(int64_t T, int64_t D, int64_t Iw, int64_t K)
{
    int64_t P = T * K;
    /* order int64 [P] (2 floats each), Xe [P,D], H [P,2I], Y [P,D] */
    return 2 * P + P * D + P * 2 * Iw + P * D;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

void cpu_moe_experts_forward(float *out, const float *x, const int64_t *idx, const float *weight,
                             const struct q3n_mlp_weights *experts, float *scratch, int64_t T, int64_t D, int64_t Iw,
                             int64_t K)
{
    Q3N_REQUIRE(T >= 0 && D > 0 && Iw > 0 && K > 0);
    int64_t P = T * K;
    if (P == 0) return;
    int64_t *order = (int64_t *)(void *)scratch;
    float *Xe = scratch + 2 * P;
    float *H = Xe + P * D;
    float *Y = H + P * 2 * Iw;
    /* key = expert * P + pair: sorting groups pairs by expert, pairs ascending inside */
    for (int64_t p = 0; p < P; p++) {
        Q3N_REQUIRE(idx[p] >= 0);
        order[p] = idx[p] * P + p;
    }
    qsort(order, (size_t)P, sizeof *order, cmp_i64);
    for (int64_t s = 0; s < P;) {
        int64_t e = order[s] / P, n = 0;
        while (s + n < P && order[s + n] / P == e) n++;
        for (int64_t i = 0; i < n; i++)
            memcpy(Xe + i * D, x + ((order[s + i] % P) / K) * D, (size_t)D * sizeof(float));
        const struct q3n_mlp_weights *w = &experts[e];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)n, (blasint)Iw, (blasint)D, 1.0f, Xe,
                    (blasint)D, w->gate_proj, (blasint)D, 0.0f, H, (blasint)(2 * Iw));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)n, (blasint)Iw, (blasint)D, 1.0f, Xe,
                    (blasint)D, w->up_proj, (blasint)D, 0.0f, H + Iw, (blasint)(2 * Iw));
        swiglu_rows(H, n, Iw, 2 * Iw);
        /* down projection into Xe's rows (free now), then scatter to the pairs' rows of Y */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)n, (blasint)D, (blasint)Iw, 1.0f, H,
                    (blasint)(2 * Iw), w->down_proj, (blasint)Iw, 0.0f, Xe, (blasint)D);
        for (int64_t i = 0; i < n; i++) memcpy(Y + (order[s + i] % P) * D, Xe + i * D, (size_t)D * sizeof(float));
        s += n;
    }
    for (int64_t t = 0; t < T; t++) {
        /* this token's slots in ascending (expert, slot) order, the order ref (and the eager
         * transformers loop over hit experts) adds them in */
        int64_t ord[K];
        for (int64_t j = 0; j < K; j++) {
            int64_t m = j;
            while (m > 0 && idx[t * K + ord[m - 1]] > idx[t * K + j]) {
                ord[m] = ord[m - 1];
                m--;
            }
            ord[m] = j;
        }
        float *o = out + t * D;
        for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
        for (int64_t n = 0; n < K; n++) {
            int64_t j = ord[n];
            float wj = weight[t * K + j];
            const float *y = Y + (t * K + j) * D;
            for (int64_t d = 0; d < D; d++) o[d] += y[d] * wj;
        }
    }
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
