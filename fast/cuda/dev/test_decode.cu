/* test_decode.cu — the one-row bf16 GEMV of cuda_linear_forward (T == 1) against a float64
 * reference on the same bf16 inputs, then its bandwidth beside cuBLAS's GEMM at T = 1 on the
 * real-80B-A3B decode shapes; and the fused decode conv (cuda_conv1d_decode_qkv) bitwise against
 * the five launches it replaces; and the decode step's logits hand-off (graph with external
 * event nodes, host copies block by block while the graph runs).
 *
 *   test_decode            correctness (NaN-poisoned outputs, bias, 3 runs bitwise equal) + timings
 *
 * Exit status 0 when every check passes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "../cuda_ops.h"

static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float from_bf16(uint16_t b)
{
    const uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint64_t rng = 88172645463325252ull;
static float urand(void) /* U(-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

#define CK(call)                                                                                             \
    do {                                                                                                     \
        cudaError_t e_ = (call);                                                                             \
        if (e_ != cudaSuccess) {                                                                             \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));                      \
            exit(2);                                                                                         \
        }                                                                                                    \
    } while (0)

/* One shape: W [N, K], x [K], bias optional; returns 1 when it passes. */
static int check_shape(int64_t N, int64_t K, int with_bias, cublasHandle_t blas, cudaStream_t st)
{
    uint16_t *hW = (uint16_t *)malloc(2 * (size_t)(N * K)), *hx = (uint16_t *)malloc(2 * (size_t)K);
    uint16_t *hy = (uint16_t *)malloc(2 * (size_t)N), *hy2 = (uint16_t *)malloc(2 * (size_t)N);
    float *hb = (float *)malloc(4 * (size_t)N);
    for (int64_t i = 0; i < N * K; i++) hW[i] = to_bf16(urand() / sqrtf((float)K) * 1.7f);
    for (int64_t i = 0; i < K; i++) hx[i] = to_bf16(urand());
    for (int64_t i = 0; i < N; i++) hb[i] = urand() * 0.1f;
    void *dW, *dx, *dy;
    float *db;
    CK(cudaMalloc(&dW, 2 * (size_t)(N * K)));
    CK(cudaMalloc(&dx, 2 * (size_t)K));
    CK(cudaMalloc(&dy, 2 * (size_t)N));
    CK(cudaMalloc(&db, 4 * (size_t)N));
    CK(cudaMemcpy(dW, hW, 2 * (size_t)(N * K), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dx, hx, 2 * (size_t)K, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(db, hb, 4 * (size_t)N, cudaMemcpyHostToDevice));
    struct q3n_error err = {};
    int ok = 1;
    for (int rep = 0; rep < 3 && ok; rep++) {
        CK(cudaMemset(dy, 0xff, 2 * (size_t)N)); /* NaN poison */
        if (cuda_linear_forward(dy, dx, dW, with_bias ? db : NULL, 1, N, K, Q3N_COMPUTE_BF16, blas, st, &err) !=
            Q3N_OK) {
            fprintf(stderr, "cuda_linear_forward: %s\n", err.msg);
            return 0;
        }
        CK(cudaStreamSynchronize(st));
        CK(cudaMemcpy(rep ? hy2 : hy, dy, 2 * (size_t)N, cudaMemcpyDeviceToHost));
        if (rep && memcmp(hy, hy2, 2 * (size_t)N) != 0) {
            printf("FAIL gemv N=%lld K=%lld: run %d differs bitwise from run 0\n", (long long)N, (long long)K, rep);
            ok = 0;
        }
    }
    double num = 0, den = 0, maxrel = 0;
    int64_t bad = 0;
    for (int64_t n = 0; n < N && ok; n++) {
        double acc = 0, mag = 0;
        for (int64_t k = 0; k < K; k++) {
            const double p = (double)from_bf16(hW[n * K + k]) * (double)from_bf16(hx[k]);
            acc += p;
            mag += fabs(p);
        }
        /* the GEMV rounds the dot to bf16, adds the bias in float32, rounds again */
        const double want = with_bias ? acc + hb[n] : acc, got = from_bf16(hy[n]);
        if (!isfinite(got)) bad++;
        num += (got - want) * (got - want);
        den += want * want;
        /* per element: two bf16 roundings (<= 2^-9 relative each, of the dot and of the sum with the bias)
         * + float32 accumulation of K terms */
        const double e = fabs(got - want) / (4e-3 * (fabs(acc) + fabs(want)) + mag * 1e-5 + 1e-30);
        if (e > maxrel) maxrel = e;
    }
    const double rel = sqrt(num / (den + 1e-300));
    if (ok && (bad || rel > 4e-3 || maxrel > 1.0)) ok = 0;
    printf("%s gemv N=%lld K=%lld bias=%d: rel_l2 %.2e (bound 4e-3), worst element %.2f of its bound, nonfinite %lld, "
           "3 runs bitwise equal\n",
           ok ? "ok  " : "FAIL", (long long)N, (long long)K, with_bias, rel, maxrel, (long long)bad);
    cudaFree(dW);
    cudaFree(dx);
    cudaFree(dy);
    cudaFree(db);
    free(hW);
    free(hx);
    free(hy);
    free(hy2);
    free(hb);
    return ok;
}

/* cuda_conv1d_decode_qkv against the five launches it replaces: bitwise equal q, k, v, state. */
static int check_conv_decode(int64_t NK, int64_t DK, int64_t NV, int64_t DV, int64_t K, enum q3n_compute_dtype dt,
                             cudaStream_t st)
{
    const int64_t Cc = 2 * NK * DK + NV * DV;
    const size_t as = cuda_act_size(dt);
    float *hx = (float *)malloc(4 * (size_t)Cc), *hw = (float *)malloc(4 * (size_t)(Cc * K));
    float *hs = (float *)malloc(4 * (size_t)(Cc * K));
    uint16_t *hxb = (uint16_t *)malloc(2 * (size_t)Cc);
    for (int64_t i = 0; i < Cc; i++) {
        hx[i] = urand() * 2.0f;
        hxb[i] = to_bf16(hx[i]);
    }
    for (int64_t i = 0; i < Cc * K; i++) hw[i] = urand();
    for (int64_t i = 0; i < Cc * K; i++) hs[i] = urand();
    void *dx, *dconv;
    float *dw, *ds1, *ds2, *q1, *k1, *v1, *q2, *k2, *v2;
    CK(cudaMalloc(&dx, as * (size_t)Cc));
    CK(cudaMalloc(&dconv, as * (size_t)Cc));
    CK(cudaMalloc(&dw, 4 * (size_t)(Cc * K)));
    CK(cudaMalloc(&ds1, 4 * (size_t)(Cc * K)));
    CK(cudaMalloc(&ds2, 4 * (size_t)(Cc * K)));
    float **outs[6] = {&q1, &k1, &v1, &q2, &k2, &v2};
    const int64_t sz[6] = {NK * DK, NK * DK, NV * DV, NK * DK, NK * DK, NV * DV};
    for (int i = 0; i < 6; i++) {
        CK(cudaMalloc(outs[i], 4 * (size_t)sz[i]));
        CK(cudaMemset(*outs[i], 0xff, 4 * (size_t)sz[i])); /* NaN poison */
    }
    CK(cudaMemcpy(dx, dt == Q3N_COMPUTE_BF16 ? (void *)hxb : (void *)hx, as * (size_t)Cc, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dw, hw, 4 * (size_t)(Cc * K), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(ds1, hs, 4 * (size_t)(Cc * K), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(ds2, hs, 4 * (size_t)(Cc * K), cudaMemcpyHostToDevice));
    struct q3n_error err = {};
    const float qscale = sqrtf((float)DK);
    int ok = cuda_conv1d_causal_forward(dconv, dx, dw, ds1, 1, Cc, K, dt, st, &err) == Q3N_OK &&
             cuda_conv1d_state_update(ds1, dx, 1, Cc, K, dt, st, &err) == Q3N_OK &&
             cuda_l2norm_forward(q1, dconv, 1, NK, DK, Cc, 1e-6, qscale, 1, dt, st, &err) == Q3N_OK &&
             cuda_l2norm_forward(k1, (char *)dconv + as * (size_t)(NK * DK), 1, NK, DK, Cc, 1e-6, 1.0f, 0, dt, st,
                                 &err) == Q3N_OK &&
             cuda_to_f32(v1, (char *)dconv + as * (size_t)(2 * NK * DK), 1, NV * DV, Cc, dt, st, &err) == Q3N_OK &&
             cuda_conv1d_decode_qkv(q2, k2, v2, ds2, dx, dw, NK, DK, NV, DV, K, 1e-6, qscale, 1, dt, st, &err) == Q3N_OK;
    if (!ok) printf("FAIL conv decode: %s\n", err.msg);
    CK(cudaStreamSynchronize(st));
    const char *names[4] = {"q", "k", "v", "state"};
    float *a[4] = {q1, k1, v1, ds1}, *b[4] = {q2, k2, v2, ds2};
    const int64_t n[4] = {NK * DK, NK * DK, NV * DV, Cc * K};
    for (int i = 0; i < 4 && ok; i++) {
        float *ha = (float *)malloc(4 * (size_t)n[i]), *hb = (float *)malloc(4 * (size_t)n[i]);
        CK(cudaMemcpy(ha, a[i], 4 * (size_t)n[i], cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(hb, b[i], 4 * (size_t)n[i], cudaMemcpyDeviceToHost));
        int64_t nf = 0;
        for (int64_t j = 0; j < n[i]; j++) nf += !isfinite(hb[j]);
        if (nf || memcmp(ha, hb, 4 * (size_t)n[i]) != 0) {
            printf("FAIL conv decode %s differs from the separate launches (nonfinite %lld)\n", names[i], (long long)nf);
            ok = 0;
        }
        free(ha);
        free(hb);
    }
    printf("%s conv decode NK=%lld DK=%lld NV=%lld DV=%lld K=%lld %s: q, k, v, state bitwise equal to conv + state "
           "update + 2 l2norm + to_f32\n",
           ok ? "ok  " : "FAIL", (long long)NK, (long long)DK, (long long)NV, (long long)DV, (long long)K,
           dt == Q3N_COMPUTE_BF16 ? "bf16" : "f32");
    cudaFree(dx);
    cudaFree(dconv);
    cudaFree(dw);
    cudaFree(ds1);
    cudaFree(ds2);
    for (int i = 0; i < 6; i++) cudaFree(*outs[i]);
    free(hx);
    free(hw);
    free(hs);
    free(hxb);
    return ok;
}

/* Writes x[r] = *val + (r0 + r), r < n, after spinning ~`cycles` clocks (stands in for an lm_head
 * block's GEMV over the rows r0 .. r0 + n - 1). */
__global__ void slow_fill_kernel(float *x, int64_t r0, int64_t n, const float *val, long long cycles)
{
    const long long t0 = clock64();
    while (clock64() - t0 < cycles) {
    }
    const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r < n) x[r] = *val + (float)(r0 + r);
}

/* The decode step's logits hand-off (model.cu lm_head_to_host / graph_step) in a CUDA graph: blocks
 * of rows (8:4:2:1) each written by a slow kernel on the main stream, then copied to pinned memory on
 * a second stream followed by an external event record (cudaEventRecordExternal); after each replay
 * the host waits on block i's event and copies block i to its buffer while the later blocks still
 * run. Five replays with new values: every element the host copied must be this replay's (a stale
 * block would hold the previous replay's values), and the host must have block 0 well before the
 * graph ends (printed: the overlap the session gains). */
static int check_logits_handoff(cudaStream_t st)
{
    const int64_t V = 151936;
    const int nb = 4;
    int64_t r0[4], n[4], a = 0;
    for (int i = 0; i < nb; i++) {
        r0[i] = a;
        n[i] = i == nb - 1 ? V - a : V * ((int64_t)1 << (nb - 1 - i)) / 15 / 8 * 8;
        a += n[i];
    }
    cudaStream_t cs;
    cudaEvent_t lev[5], hev[4];
    CK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
    for (int i = 0; i < 5; i++) CK(cudaEventCreateWithFlags(&lev[i], cudaEventDisableTiming));
    for (int i = 0; i < 4; i++) CK(cudaEventCreateWithFlags(&hev[i], cudaEventDisableTiming));
    float *dx, *dval, *pin, *hval;
    CK(cudaMalloc(&dx, 4 * (size_t)V));
    CK(cudaMalloc(&dval, 4));
    CK(cudaMallocHost(&pin, 4 * (size_t)V));
    CK(cudaMallocHost(&hval, 4));
    float *out = (float *)malloc(4 * (size_t)V);
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < nb; i++) {
        slow_fill_kernel<<<(unsigned)((n[i] + 255) / 256), 256, 0, st>>>(dx + r0[i], r0[i], n[i], dval, 200000);
        CK(cudaGetLastError());
        CK(cudaEventRecord(lev[i], st));
        CK(cudaStreamWaitEvent(cs, lev[i], 0));
        CK(cudaMemcpyAsync(pin + r0[i], dx + r0[i], 4 * (size_t)n[i], cudaMemcpyDeviceToHost, cs));
        CK(cudaEventRecordWithFlags(hev[i], cs, cudaEventRecordExternal));
    }
    CK(cudaEventRecord(lev[4], cs));
    CK(cudaStreamWaitEvent(st, lev[4], 0));
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    int ok = 1;
    double ahead = 0;
    for (int rep = 0; rep < 5; rep++) {
        *hval = 1000.0f * (float)(rep + 1); /* exact in float32 with r < 2^24 - 5000 */
        CK(cudaMemcpyAsync(dval, hval, 4, cudaMemcpyHostToDevice, st));
        CK(cudaGraphLaunch(ge, st));
        struct timespec t0, t1;
        for (int i = 0; i < nb - 1; i++) {
            CK(cudaEventSynchronize(hev[i]));
            memcpy(out + r0[i], pin + r0[i], 4 * (size_t)n[i]);
            if (i == 0) clock_gettime(CLOCK_MONOTONIC, &t0);
        }
        CK(cudaStreamSynchronize(st));
        clock_gettime(CLOCK_MONOTONIC, &t1);
        memcpy(out + r0[nb - 1], pin + r0[nb - 1], 4 * (size_t)n[nb - 1]);
        int64_t bad = 0, first = -1;
        for (int64_t r = 0; r < V; r++)
            if (!(out[r] == *hval + (float)r)) bad++, first = first < 0 ? r : first;
        if (bad) {
            printf("FAIL logits hand-off replay %d: %lld stale or wrong (first at %lld: %g, want %g)\n", rep,
                   (long long)bad, (long long)first, out[first], *hval + (float)first);
            ok = 0;
        }
        ahead += 1e3 * (double)(t1.tv_sec - t0.tv_sec) + 1e-6 * (double)(t1.tv_nsec - t0.tv_nsec);
    }
    printf("%s logits hand-off: graph with external events, 5 replays, blocks %lld/%lld/%lld/%lld, every block "
           "copied by the host holds its replay's values; block 0 was on the host %.3f ms before the graph ended "
           "(mean)\n",
           ok ? "ok  " : "FAIL", (long long)n[0], (long long)n[1], (long long)n[2], (long long)n[3], ahead / 5);
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    for (int i = 0; i < 5; i++) CK(cudaEventDestroy(lev[i]));
    for (int i = 0; i < 4; i++) CK(cudaEventDestroy(hev[i]));
    CK(cudaStreamDestroy(cs));
    CK(cudaFree(dx));
    CK(cudaFree(dval));
    CK(cudaFreeHost(pin));
    CK(cudaFreeHost(hval));
    free(out);
    return ok;
}

/* Median time of 20 launches (after 3 warm-ups) of the GEMV and of cuBLAS's GEMM at T = 1. */
static void time_shape(const char *name, int64_t N, int64_t K, cublasHandle_t blas, cudaStream_t st)
{
    void *dW, *dx, *dy;
    CK(cudaMalloc(&dW, 2 * (size_t)(N * K)));
    CK(cudaMalloc(&dx, 2 * (size_t)K));
    CK(cudaMalloc(&dy, 2 * (size_t)N));
    CK(cudaMemset(dW, 0x3c, 2 * (size_t)(N * K)));
    CK(cudaMemset(dx, 0x3c, 2 * (size_t)K));
    /* a 256 MB buffer written between runs so that small W do not stay in the 50 MB L2 */
    void *flush;
    CK(cudaMalloc(&flush, (size_t)256 << 20));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    struct q3n_error err = {};
    const float alpha = 1.0f, beta = 0.0f;
    double med[2];
    for (int which = 0; which < 2; which++) {
        float ms[20];
        for (int r = 0; r < 23; r++) {
            CK(cudaMemsetAsync(flush, r, (size_t)256 << 20, st));
            CK(cudaEventRecord(a, st));
            if (which == 0)
                cuda_linear_forward(dy, dx, dW, NULL, 1, N, K, Q3N_COMPUTE_BF16, blas, st, &err);
            else
                cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, 1, (int)K, &alpha, dW, CUDA_R_16BF, (int)K, dx,
                             CUDA_R_16BF, (int)K, &beta, dy, CUDA_R_16BF, (int)N, CUBLAS_COMPUTE_32F,
                             CUBLAS_GEMM_DEFAULT);
            CK(cudaEventRecord(b, st));
            CK(cudaEventSynchronize(b));
            if (r >= 3) CK(cudaEventElapsedTime(&ms[r - 3], a, b));
        }
        for (int i = 0; i < 20; i++)
            for (int j = i + 1; j < 20; j++)
                if (ms[j] < ms[i]) {
                    const float t = ms[i];
                    ms[i] = ms[j];
                    ms[j] = t;
                }
        med[which] = 0.5 * (ms[9] + ms[10]);
    }
    const double bytes = 2.0 * (double)N * (double)K;
    printf("TIME %-22s N=%6lld K=%5lld (%6.1f MB): gemv %8.2f us = %5.2f TB/s | cuBLAS GEMM T=1 %8.2f us = %5.2f TB/s\n",
           name, (long long)N, (long long)K, bytes / 1e6, med[0] * 1e3, bytes / (med[0] * 1e-3) / 1e12, med[1] * 1e3,
           bytes / (med[1] * 1e-3) / 1e12);
    cudaFree(dW);
    cudaFree(dx);
    cudaFree(dy);
    cudaFree(flush);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
}

int main(void)
{
    cudaStream_t st;
    cublasHandle_t blas;
    CK(cudaStreamCreate(&st));
    if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) return 2;
    cublasSetStream(blas, st);
    int ok = 1;
    const int64_t shapes[][3] = {{1, 8, 0},     {7, 24, 1},     {64, 2048, 0},  {512, 2048, 1}, {1000, 520, 0},
                                 {2048, 4096, 0}, {12288, 2048, 0}, {8192, 2048, 1}, {151936, 2048, 0}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        ok &= check_shape(shapes[i][0], shapes[i][1], (int)shapes[i][2], blas, st);
    ok &= check_conv_decode(16, 128, 32, 128, 4, Q3N_COMPUTE_BF16, st);
    ok &= check_conv_decode(16, 128, 32, 128, 4, Q3N_COMPUTE_F32, st);
    ok &= check_conv_decode(2, 64, 4, 32, 3, Q3N_COMPUTE_BF16, st);
    ok &= check_conv_decode(3, 256, 5, 96, 4, Q3N_COMPUTE_F32, st);
    ok &= check_logits_handoff(st);
    time_shape("lm_head", 151936, 2048, blas, st);
    time_shape("in_proj_qkvz", 12288, 2048, blas, st);
    time_shape("q_proj", 8192, 2048, blas, st);
    time_shape("out_proj/o_proj", 2048, 4096, blas, st);
    time_shape("shared gate_up", 1024, 2048, blas, st);
    time_shape("router", 512, 2048, blas, st);
    time_shape("k_proj", 512, 2048, blas, st);
    time_shape("in_proj_ba", 64, 2048, blas, st);
    printf("%s\n", ok ? "ALL OK" : "FAILED");
    cublasDestroy(blas);
    cudaStreamDestroy(st);
    return ok ? 0 : 1;
}
