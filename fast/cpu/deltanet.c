/* deltanet.c — Gated DeltaNet: projection split, gates, and the gated delta rule in its
 * recurrent (decode) and chunked WY/UT (prefill) forms. Twins of ref/deltanet.c.
 *
 * Chunked form, per value head h (key head h/(NV/NK)) and chunk of n <= C tokens, with
 * G = cumsum(g) inside the chunk and D_ij = exp(G_i - G_j):
 *   L = strict_tril(diag(beta) K K^T o D)                  (sgemm n x n x DK, then masked)
 *   [U | W] = (I + L)^-1 [beta o V | beta o exp(G) o K]   (forward substitution, n x (DV+DK))
 *   V' = U - W S                                           (sgemm n x DV x DK)
 *   O  = (exp(G) o Q) S + (tril(Q K^T o D)) V'             (two sgemm)
 *   S <- exp(G_n) S + (exp(G_n - G) o K)^T V'              (sgemm DK x DV x n)
 * A short last chunk is processed at its length n: the zero padding transformers adds has
 * k = 0, beta = 0, g = 0 and changes neither the outputs nor the state.
 * Summation order: the GEMMs are blocked by OpenBLAS with FMA where ref loops in index order;
 * the solve is ref's forward substitution in ref's order (no FMA: -std=c11). Expected cost:
 * a few ULP per product, growing with the conditioning of (I + L) (in-distribution inputs:
 * rel L2 ~1e-7 .. 1e-6 on o and S).
 * Denormals: strong decays (G down to -100s over a chunk) make exp(G), exp(G_i - G_j) and the
 * decayed state subnormal; on Intel cores a subnormal GEMM operand costs ~10x (measured on
 * bench-1k, one thread, Xeon: delta rule 0.645 s -> 0.062 s with flush-to-zero). So every decay
 * factor and every decayed operand below FLT_MIN (1.2e-38) is flushed to 0 here: a change of
 * < 1.2e-38 absolute per element, invisible next to the O(1e-2..1) terms it is summed with
 * (ref keeps the subnormals). Flushing the operands was not enough: expf results in the subnormal
 * range, products such as beta * L * D and the decayed state, and sums inside the GEMMs still
 * produce subnormals before the flush, and each costs a microcode assist (~100+ cycles). So the
 * chunked form also runs with the x86 flush-to-zero and denormals-are-zero modes (MXCSR FTZ, DAZ)
 * set on its own thread for exactly the span of its work and restored after (flush_modes_begin/end):
 * the same < FLT_MIN change per element, confined to this function (the rest of q3n and the
 * recurrent form keep IEEE subnormals). Measured with a 3-layer bench-1k-shaped delta rule on one
 * thread (dev2, Xeon; decays g ~ -U(0, 5) per token): 0.294 s -> 0.053 s; weak decays (g ~ -U(0,
 * 0.5)) 0.057 s either way. */
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "ops.h"

#include "../../harness/status.h"

void cpu_deltanet_split_forward(float *q, float *k, float *v, float *z, float *b, float *a, const float *qkvz,
                                const float *ba, int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV)
{
    Q3N_REQUIRE(NK > 0 && NV % NK == 0 && DK > 0 && DV > 0 && T >= 0);
    int64_t r = NV / NK;
    int64_t gw = 2 * DK + 2 * r * DV; /* one key-head group of in_proj_qkvz */
    for (int64_t t = 0; t < T; t++) {
        for (int64_t j = 0; j < NK; j++) {
            const float *src = qkvz + (t * NK + j) * gw;
            memcpy(q + (t * NK + j) * DK, src, (size_t)DK * sizeof(float));
            memcpy(k + (t * NK + j) * DK, src + DK, (size_t)DK * sizeof(float));
            memcpy(v + (t * NV + j * r) * DV, src + 2 * DK, (size_t)(r * DV) * sizeof(float));
            memcpy(z + (t * NV + j * r) * DV, src + 2 * DK + r * DV, (size_t)(r * DV) * sizeof(float));
            const float *bs = ba + (t * NK + j) * 2 * r;
            memcpy(b + t * NV + j * r, bs, (size_t)r * sizeof(float));
            memcpy(a + t * NV + j * r, bs + r, (size_t)r * sizeof(float));
        }
    }
}

/* mixed [T,Cc] = concat(q, k, v) per token (the conv input). Exact copies. */
void cpu_deltanet_conv_concat(float *mixed, const float *q, const float *k, const float *v, int64_t T, int64_t NK,
                              int64_t NV, int64_t DK, int64_t DV)
{
    Q3N_REQUIRE(T >= 0 && NK > 0 && NV > 0 && DK > 0 && DV > 0);
    int64_t kd = NK * DK, vd = NV * DV, cc = 2 * kd + vd;
    for (int64_t t = 0; t < T; t++) {
        memcpy(mixed + t * cc, q + t * kd, (size_t)kd * sizeof(float));
        memcpy(mixed + t * cc + kd, k + t * kd, (size_t)kd * sizeof(float));
        memcpy(mixed + t * cc + 2 * kd, v + t * vd, (size_t)vd * sizeof(float));
    }
}

/* conv output [T,Cc] -> q,k [T,NK,DK], v [T,NV,DV]. Exact copies. */
void cpu_deltanet_conv_split(float *q, float *k, float *v, const float *mixed, int64_t T, int64_t NK, int64_t NV,
                             int64_t DK, int64_t DV)
{
    Q3N_REQUIRE(T >= 0 && NK > 0 && NV > 0 && DK > 0 && DV > 0);
    int64_t kd = NK * DK, vd = NV * DV, cc = 2 * kd + vd;
    for (int64_t t = 0; t < T; t++) {
        memcpy(q + t * kd, mixed + t * cc, (size_t)kd * sizeof(float));
        memcpy(k + t * kd, mixed + t * cc + kd, (size_t)kd * sizeof(float));
        memcpy(v + t * vd, mixed + t * cc + 2 * kd, (size_t)vd * sizeof(float));
    }
}

/* q *= DK^-0.5 (chunked path) or q /= sqrt(DK) (recurrent path), rounded as ref rounds each. */
void cpu_deltanet_q_scale(float *q, int64_t n, int64_t DK, int recurrent)
{
    Q3N_REQUIRE(n >= 0 && DK > 0);
    if (recurrent) {
        float s = (float)sqrt((double)DK);
        for (int64_t i = 0; i < n; i++) q[i] = q[i] / s;
    } else {
        float s = (float)pow((double)DK, -0.5);
        for (int64_t i = 0; i < n; i++) q[i] = q[i] * s;
    }
}

/* beta = sigmoid(b); g = -exp(A_log) * softplus(a + dt_bias)   g,beta,a,b [T,NV]. */
void cpu_deltanet_gates_forward(float *g, float *beta, const float *a, const float *b, const float *A_log,
                                const float *dt_bias, int64_t T, int64_t NV)
{
    Q3N_REQUIRE(T >= 0 && NV > 0);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < NV; h++) {
            int64_t i = t * NV + h;
            beta[i] = cpu_sigmoid(b[i]);
            g[i] = -expf(A_log[h]) * cpu_softplus(a[i] + dt_bias[h]);
        }
}

/* Recurrent form, per token and value head: S <- exp(g) S; u = beta (v - S^T k);
 * S <- S + k u^T; o = S^T q. Vectorised over DV; the S^T k and S^T q reductions run over
 * DK in index order as in ref (FMA contraction: <= 1 ULP per step). */
void cpu_delta_rule_recurrent(float *o, float *state, const float *q, const float *k, const float *v,
                              const float *g, const float *beta, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                              int64_t DV)
{
    Q3N_REQUIRE(NK > 0 && NV % NK == 0 && DK > 0 && DV > 0 && T >= 0);
    int64_t r = NV / NK;
    for (int64_t h = 0; h < NV; h++) {
        float *S = state + h * DK * DV;
        for (int64_t t = 0; t < T; t++) {
            const float *qt = q + (t * NK + h / r) * DK;
            const float *kt = k + (t * NK + h / r) * DK;
            const float *vt = v + (t * NV + h) * DV;
            float *ot = o + (t * NV + h) * DV;
            float decay = expf(g[t * NV + h]);
            float bt = beta[t * NV + h];
            float kv[DV];
            for (int64_t j = 0; j < DV; j++) kv[j] = 0.0f;
            for (int64_t i = 0; i < DK; i++) {
                float *Si = S + i * DV;
                for (int64_t j = 0; j < DV; j++) {
                    Si[j] *= decay;
                    kv[j] += kt[i] * Si[j];
                }
            }
            for (int64_t j = 0; j < DV; j++) {
                kv[j] = bt * (vt[j] - kv[j]); /* u */
                ot[j] = 0.0f;
            }
            for (int64_t i = 0; i < DK; i++) {
                float *Si = S + i * DV;
                for (int64_t j = 0; j < DV; j++) {
                    Si[j] += kt[i] * kv[j];
                    ot[j] += qt[i] * Si[j];
                }
            }
        }
    }
}

/* One worker's chunk workspace: G [C], L [C,C], P [C,C], X = [U|W] [C, DV+DK], decayed Q or K
 * [C,DK], rounded up to 64 bytes. */
static int64_t chunk_scratch(int64_t C, int64_t DK, int64_t DV)
{
    return (C + 2 * C * C + C * (DV + DK) + C * DK + 15) / 16 * 16;
}

int64_t cpu_delta_rule_chunked_scratch(int64_t C, int64_t DK, int64_t DV)
{
    return chunk_scratch(C, DK, DV) * CPU_MAX_WORKERS;
}

/* Sets flush-to-zero and denormals-are-zero on this thread (x86: MXCSR bits 15 and 6) and returns
 * the previous control word for flush_modes_end; elsewhere nothing (the explicit ftz() flushes
 * still give the same values up to sub-FLT_MIN terms). See the file comment. */
static unsigned flush_modes_begin(void)
{
#if defined(__x86_64__) || defined(__i386__)
    const unsigned old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u);
    return old;
#else
    return 0;
#endif
}

static void flush_modes_end(unsigned old)
{
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr(old);
#else
    (void)old;
#endif
}

/* x, or 0 when |x| < FLT_MIN (a subnormal): see the file comment. */
static inline float ftz(float x)
{
    return fabsf(x) < FLT_MIN ? 0.0f : x;
}

/* One chunk of n tokens of value head h; see the file comment for the algebra. */
static void chunk_step(float *o, float *S, const float *q, const float *k, const float *v, const float *g,
                       const float *beta, float *scratch, int64_t n, int64_t NK, int64_t NV, int64_t DK,
                       int64_t DV, int64_t C, int drop_last)
{
    float *G = scratch;
    float *L = G + C;
    float *P = L + C * C;
    float *X = P + C * C;
    float *E = X + C * (DV + DK);
    int64_t ldq = NK * DK, ldv = NV * DV, ldx = DV + DK, ldg = NV;

    float acc = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        acc += g[i * ldg];
        G[i] = acc;
    }
    /* L = strict_tril(diag(beta) K K^T o D); P = tril(Q K^T o D) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)n, (blasint)n, (blasint)DK, 1.0f, k,
                (blasint)ldq, k, (blasint)ldq, 0.0f, L, (blasint)C);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)n, (blasint)n, (blasint)DK, 1.0f, q,
                (blasint)ldq, k, (blasint)ldq, 0.0f, P, (blasint)C);
    for (int64_t i = 0; i < n; i++) {
        float bi = beta[i * ldg];
        for (int64_t j = 0; j < n; j++) {
            if (j < i) {
                float d = ftz(expf(G[i] - G[j]));
                L[i * C + j] = ftz(bi * L[i * C + j] * d);
                P[i * C + j] = ftz(P[i * C + j] * d);
            } else {
                L[i * C + j] = 0.0f;
                if (j > i) P[i * C + j] = 0.0f;
            }
        }
    }
    /* X = [beta o V | beta o exp(G) o K], then X <- (I + L)^-1 X */
    for (int64_t i = 0; i < n; i++) {
        float bi = beta[i * ldg], eg = ftz(expf(G[i]));
        for (int64_t j = 0; j < DV; j++) X[i * ldx + j] = ftz(bi * v[i * ldv + j]);
        for (int64_t j = 0; j < DK; j++) X[i * ldx + DV + j] = ftz(bi * k[i * ldq + j] * eg);
    }
    /* forward substitution, row by row: X_i -= L_ij X_j for j < i in ascending j, the order ref
     * sums in (an axpy over the DV+DK columns, vectorised). Ill-conditioned chunks (DK tiny,
     * beta ~ 1, no decay) grow (I + L)^-1 like 2^n; keeping ref's order keeps cpu's rounding
     * there as close to ref's as the GEMM-built L allows. */
    for (int64_t i = 0; i < n; i++) {
        float *xi = X + i * ldx;
        for (int64_t j = 0; j < i; j++) {
            float lij = L[i * C + j];
            if (lij == 0.0f) continue;
            const float *xj = X + j * ldx;
            for (int64_t c = 0; c < ldx; c++) xi[c] -= lij * xj[c];
        }
        for (int64_t c = 0; c < ldx; c++) xi[c] = ftz(xi[c]); /* W, U are GEMM operands next */
    }
    /* V' = U - W S, in place of U */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)n, (blasint)DV, (blasint)DK, -1.0f, X + DV,
                (blasint)ldx, S, (blasint)DV, 1.0f, X, (blasint)ldx);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < DV; j++) X[i * ldx + j] = ftz(X[i * ldx + j]); /* V' */
    /* O = (exp(G) o Q) S + P V' */
    for (int64_t i = 0; i < n; i++) {
        float eg = ftz(expf(G[i]));
        for (int64_t j = 0; j < DK; j++) E[i * DK + j] = ftz(q[i * ldq + j] * eg);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)n, (blasint)DV, (blasint)DK, 1.0f, E,
                (blasint)DK, S, (blasint)DV, 0.0f, o, (blasint)ldv);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)n, (blasint)DV, (blasint)n, 1.0f, P,
                (blasint)C, X, (blasint)ldx, 1.0f, o, (blasint)ldv);
    /* S <- exp(G_n) S + (exp(G_n - G) o K)^T V' */
    float gn = G[n - 1];
    for (int64_t i = 0; i < n; i++) {
        float d = ftz(expf(gn - G[i]));
        for (int64_t j = 0; j < DK; j++) E[i * DK + j] = ftz(k[i * ldq + j] * d);
    }
    float en = ftz(expf(gn));
    for (int64_t i = 0; i < DK * DV; i++) S[i] = ftz(S[i] * en);
    int64_t n_upd = drop_last ? n - 1 : n;
    if (n_upd > 0)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)DK, (blasint)DV, (blasint)n_upd, 1.0f, E,
                    (blasint)DK, X, (blasint)ldx, 1.0f, S, (blasint)DV);
    for (int64_t i = 0; i < DK * DV; i++) S[i] = ftz(S[i]); /* the next chunk's GEMM operand */
}

struct chunked_job {
    float *o, *state, *scratch;
    const float *q, *k, *v, *g, *beta;
    int64_t T, NK, NV, DK, DV, C;
    int drop_last;
};

/* Value heads [h0, h1), chunk by chunk in order, on one worker's workspace. */
static void chunked_heads(void *ctx, int64_t h0, int64_t h1, int worker)
{
    const struct chunked_job *j = ctx;
    int64_t NK = j->NK, NV = j->NV, DK = j->DK, DV = j->DV, C = j->C, r = NV / NK;
    float *scratch = j->scratch + (int64_t)worker * chunk_scratch(C, DK, DV);
    const unsigned modes = flush_modes_begin(); /* restored below: no return in between */
    for (int64_t h = h0; h < h1; h++) {
        int64_t kh = h / r;
        for (int64_t t0 = 0; t0 < j->T; t0 += C) {
            int64_t n = j->T - t0 < C ? j->T - t0 : C;
            chunk_step(j->o + (t0 * NV + h) * DV, j->state + h * DK * DV, j->q + (t0 * NK + kh) * DK,
                       j->k + (t0 * NK + kh) * DK, j->v + (t0 * NV + h) * DV, j->g + t0 * NV + h,
                       j->beta + t0 * NV + h, scratch, n, NK, NV, DK, DV, C, j->drop_last);
        }
    }
    flush_modes_end(modes);
}

static void chunked_impl(float *o, float *state, const float *q, const float *k, const float *v, const float *g,
                         const float *beta, float *scratch, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                         int64_t DV, int64_t C, int drop_last)
{
    Q3N_REQUIRE(NK > 0 && NV % NK == 0 && DK > 0 && DV > 0 && T >= 0 && C > 0);
    struct chunked_job j = {.o = o, .state = state, .scratch = scratch, .q = q, .k = k, .v = v, .g = g,
                            .beta = beta, .T = T, .NK = NK, .NV = NV, .DK = DK, .DV = DV, .C = C,
                            .drop_last = drop_last};
    cpu_parallel_for(NV, 8.0 * (double)NV * (double)T * (double)DK * (double)DV, chunked_heads, &j);
}

void cpu_delta_rule_chunked(float *o, float *state, const float *q, const float *k, const float *v, const float *g,
                            const float *beta, float *scratch, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                            int64_t DV, int64_t C)
{
    chunked_impl(o, state, q, k, v, g, beta, scratch, T, NK, NV, DK, DV, C, 0);
}

/* The planted bug "chunk_off_by_one", as ref plants it: each chunk's last token is left out
 * of the state update. Only reached through run_options->test_bug. */
void cpu_delta_rule_chunked_bug_drop_last(float *o, float *state, const float *q, const float *k, const float *v,
                                          const float *g, const float *beta, float *scratch, int64_t T, int64_t NK,
                                          int64_t NV, int64_t DK, int64_t DV, int64_t C)
{
    chunked_impl(o, state, q, k, v, g, beta, scratch, T, NK, NV, DK, DV, C, 1);
}
