/* attention.c — gated softmax attention: q/gate split, partial RoPE, blocked causal GQA
 * attention with an online softmax, the sigmoid output gate. Twins of ref/attention.c.
 *
 * Attention, per query head h (KV head h / (NH/NKV)) and block of up to QB queries:
 *   for each block of up to KB keys s0.. (only blocks some query of the block may see):
 *     Sb = scale * Qb Kb^T (sgemm), masked s > pos0 + t;  m' = max(m, rowmax Sb);
 *     P = exp(Sb - m'); l = l exp(m - m') + rowsum P; A = A exp(m - m') + P Vb (sgemm)
 *   out = A / l.
 * Summation order: the softmax denominator and P V are accumulated per key block and
 * rescaled (flash-style) where ref normalises once over all keys in index order; expected
 * cost a few ULP relative (rel L2 ~1e-7). */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "ops.h"

#include "../../harness/status.h"

enum { QB = 64, KB = 256 };

void cpu_attn_split_qgate(float *q, float *gate, const float *qg, int64_t T, int64_t NH, int64_t HD)
{
    Q3N_REQUIRE(T >= 0 && NH > 0 && HD > 0);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < NH; h++) {
            const float *src = qg + (t * NH + h) * 2 * HD;
            memcpy(q + (t * NH + h) * HD, src, (size_t)HD * sizeof(float));
            memcpy(gate + (t * NH + h) * HD, src + HD, (size_t)HD * sizeof(float));
        }
}

/* Partial rotate-half RoPE in place on x [T,N,HD], first rot dims, positions pos0.. .
 * cos/sin as transformers computes them in float32: inv_freq_i = 1 / theta^(2i/rot),
 * angle = float(pos) * inv_freq_i, then cosf/sinf. */
void cpu_rope_forward(float *x, int64_t T, int64_t N, int64_t HD, int64_t rot, int64_t pos0, double theta)
{
    Q3N_REQUIRE(T >= 0 && N > 0 && HD > 0 && rot >= 0 && rot <= HD && rot % 2 == 0 && pos0 >= 0);
    int64_t half = rot / 2;
    for (int64_t t = 0; t < T; t++) {
        float pos = (float)(pos0 + t);
        for (int64_t i = 0; i < half; i++) {
            float inv_freq = 1.0f / powf((float)theta, (float)(2 * i) / (float)rot);
            float ang = pos * inv_freq;
            float c = cosf(ang), s = sinf(ang);
            for (int64_t n = 0; n < N; n++) {
                float *xv = x + (t * N + n) * HD;
                float x1 = xv[i], x2 = xv[i + half];
                xv[i] = x1 * c - x2 * s;
                xv[i + half] = x2 * c + x1 * s;
            }
        }
    }
}

/* One worker's block workspace: scores [QB,KB], accumulator [QB,HD], row max and sum [QB]. */
static int64_t block_scratch(int64_t HD)
{
    return ((int64_t)QB * KB + (int64_t)QB * HD + 2 * QB + 15) / 16 * 16;
}

int64_t cpu_attention_scratch(int64_t T, int64_t pos0, int64_t NH, int64_t NKV, int64_t HD)
{
    (void)T;
    (void)pos0;
    (void)NH;
    (void)NKV;
    return block_scratch(HD) * CPU_MAX_WORKERS;
}

struct attn_job {
    float *out, *scratch;
    const float *q, *kc, *vc;
    int64_t T, pos0, NH, NKV, HD;
};

/* Query heads [h0, h1) on one worker's workspace. */
static void attn_heads(void *ctx, int64_t h0, int64_t h1, int worker)
{
    const struct attn_job *jb = ctx;
    int64_t T = jb->T, pos0 = jb->pos0, NH = jb->NH, NKV = jb->NKV, HD = jb->HD;
    float *Sb = jb->scratch + (int64_t)worker * block_scratch(HD);
    float *A = Sb + QB * KB;
    float *m = A + QB * HD;
    float *l = m + QB;
    int64_t rep = NH / NKV;
    int64_t ldq = NH * HD, ldk = NKV * HD;
    float scale = (float)(1.0 / sqrt((double)HD));
    for (int64_t h = h0; h < h1; h++) {
        const float *kh = jb->kc + (h / rep) * HD;
        const float *vh = jb->vc + (h / rep) * HD;
        for (int64_t t0 = 0; t0 < T; t0 += QB) {
            int64_t nq = T - t0 < QB ? T - t0 : QB;
            int64_t last = pos0 + t0 + nq; /* keys 0 .. last-1 are visible to some query */
            for (int64_t i = 0; i < nq; i++) {
                m[i] = -INFINITY;
                l[i] = 0.0f;
            }
            memset(A, 0, (size_t)(nq * HD) * sizeof(float));
            for (int64_t s0 = 0; s0 < last; s0 += KB) {
                int64_t nk = last - s0 < KB ? last - s0 : KB;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)nq, (blasint)nk, (blasint)HD, scale,
                            jb->q + (t0 * NH + h) * HD, (blasint)ldq, kh + s0 * ldk, (blasint)ldk, 0.0f, Sb,
                            (blasint)KB);
                for (int64_t i = 0; i < nq; i++) {
                    float *row = Sb + i * KB;
                    int64_t vis = pos0 + t0 + i + 1 - s0; /* keys s0 .. s0+vis-1 visible */
                    if (vis > nk) vis = nk;
                    float mx = m[i];
                    for (int64_t j = 0; j < vis; j++)
                        if (row[j] > mx) mx = row[j];
                    float corr = vis > 0 ? expf(m[i] - mx) : 1.0f;
                    if (m[i] == -INFINITY) corr = 0.0f;
                    float sum = 0.0f;
                    for (int64_t j = 0; j < nk; j++) {
                        float p = j < vis ? expf(row[j] - mx) : 0.0f;
                        row[j] = p;
                        sum += p;
                    }
                    if (vis > 0) {
                        l[i] = l[i] * corr + sum;
                        m[i] = mx;
                        if (corr != 1.0f)
                            for (int64_t d = 0; d < HD; d++) A[i * HD + d] *= corr;
                    }
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)nq, (blasint)HD, (blasint)nk, 1.0f,
                            Sb, (blasint)KB, vh + s0 * ldk, (blasint)ldk, 1.0f, A, (blasint)HD);
            }
            for (int64_t i = 0; i < nq; i++) {
                float inv = 1.0f / l[i];
                float *o = jb->out + ((t0 + i) * NH + h) * HD;
                for (int64_t d = 0; d < HD; d++) o[d] = A[i * HD + d] * inv;
            }
        }
    }
}

/* out[t,h,:] = sum_{s <= pos0+t} softmax_s(q_t . k_s / sqrt(HD)) v_s
 * out,q [T,NH,HD]; kc,vc [S,NKV,HD], S = pos0 + T; scratch cpu_attention_scratch(). */
void cpu_attention_forward(float *out, const float *q, const float *kc, const float *vc, float *scratch, int64_t T,
                           int64_t pos0, int64_t NH, int64_t NKV, int64_t HD)
{
    Q3N_REQUIRE(T >= 0 && pos0 >= 0 && NH > 0 && NKV > 0 && NH % NKV == 0 && HD > 0);
    struct attn_job jb = {.out = out, .scratch = scratch, .q = q, .kc = kc, .vc = vc, .T = T, .pos0 = pos0,
                          .NH = NH, .NKV = NKV, .HD = HD};
    cpu_parallel_for(NH, 4.0 * (double)NH * (double)T * (double)(pos0 + T) * (double)HD, attn_heads, &jb);
}

/* out = x * sigmoid(gate), n elements. */
void cpu_sigmoid_gate_forward(float *out, const float *x, const float *gate, int64_t n)
{
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * cpu_sigmoid(gate[i]);
}
