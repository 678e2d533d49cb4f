/* deltanet.cu — Gated DeltaNet: projection split, gates, and the gated delta rule in its
 * recurrent (decode) and chunked (prefill) forms (cuda twins of ref/deltanet.c).
 *
 * The delta rule runs in float32 throughout (q, k, v, g, beta, the state and every
 * intermediate) in both compute modes; only its output o is rounded to the activation dtype,
 * as transformers does. No atomics: every reduction has a fixed order, so runs are bitwise
 * reproducible. Summation orders differ from the reference (tiles instead of one loop): the
 * tests bound the difference by relative L2 against ref_delta_rule_chunked. */
#include "common.cuh"

/* ---- split ---- */
template <typename T>
__global__ void split_kernel(T *mixed, T *z, float *b, float *a, const T *qkvz, const T *ba, int64_t NK, int64_t NV,
                             int64_t DK, int64_t DV)
{
    const int64_t t = blockIdx.x, r = NV / NK, GS = 2 * DK + 2 * r * DV;
    const int64_t Cc = 2 * NK * DK + NV * DV;
    const T *src = qkvz + t * NK * GS;
    for (int64_t c = threadIdx.x; c < Cc; c += blockDim.x) {
        int64_t s;
        if (c < NK * DK) {
            s = (c / DK) * GS + c % DK;
        } else if (c < 2 * NK * DK) {
            const int64_t c2 = c - NK * DK;
            s = (c2 / DK) * GS + DK + c2 % DK;
        } else {
            const int64_t c2 = c - 2 * NK * DK, h = c2 / DV;
            s = (h / r) * GS + 2 * DK + (h % r) * DV + c2 % DV;
        }
        mixed[t * Cc + c] = src[s];
    }
    for (int64_t c = threadIdx.x; c < NV * DV; c += blockDim.x) {
        const int64_t h = c / DV;
        z[t * NV * DV + c] = src[(h / r) * GS + 2 * DK + r * DV + (h % r) * DV + c % DV];
    }
    for (int64_t h = threadIdx.x; h < NV; h += blockDim.x) {
        const T *g = ba + t * 2 * NV + (h / r) * 2 * r;
        b[t * NV + h] = ld(g + h % r);
        a[t * NV + h] = ld(g + r + h % r);
    }
}

extern "C" enum q3n_status cuda_deltanet_split_forward(void *d_mixed, void *d_z, float *d_b, float *d_a,
                                                       const void *d_qkvz, const void *d_ba, int64_t T, int64_t NK,
                                                       int64_t NV, int64_t DK, int64_t DV, enum q3n_compute_dtype dt,
                                                       cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && T <= INT32_MAX && NK > 0 && NV % NK == 0 && DK > 0 && DV > 0);
    if (T == 0) return Q3N_OK;
    if (dt == Q3N_COMPUTE_BF16)
        split_kernel<<<(unsigned)T, 256, 0, stream>>>((bf16 *)d_mixed, (bf16 *)d_z, d_b, d_a, (const bf16 *)d_qkvz,
                                                      (const bf16 *)d_ba, NK, NV, DK, DV);
    else
        split_kernel<<<(unsigned)T, 256, 0, stream>>>((float *)d_mixed, (float *)d_z, d_b, d_a,
                                                      (const float *)d_qkvz, (const float *)d_ba, NK, NV, DK, DV);
    CU_LAUNCHED("deltanet split_kernel");
    return Q3N_OK;
}

/* ---- gates ---- */
__device__ __forceinline__ float softplus_f(float x)
{
    return x > 20.0f ? x : log1pf(expf(x)); /* torch's threshold 20 */
}

template <typename T>
__global__ void gates_kernel(float *g, float *beta, const float *a, const float *b, const float *A_log,
                             const float *dt_bias, int64_t n, int64_t NV, const T *tag)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t h = i % NV;
        g[i] = -expf(A_log[h]) * softplus_f(a[i] + dt_bias[h]);
        beta[i] = rnd(sigmoid_f(b[i]), tag);
    }
}

extern "C" enum q3n_status cuda_deltanet_gates_forward(float *d_g, float *d_beta, const float *d_a, const float *d_b,
                                                       const float *d_A_log, const float *d_dt_bias, int64_t T,
                                                       int64_t NV, enum q3n_compute_dtype dt, cudaStream_t stream,
                                                       struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && NV > 0);
    const int64_t n = T * NV;
    if (n == 0) return Q3N_OK;
    const unsigned grid = (unsigned)(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536);
    if (dt == Q3N_COMPUTE_BF16)
        gates_kernel<<<grid, 256, 0, stream>>>(d_g, d_beta, d_a, d_b, d_A_log, d_dt_bias, n, NV, (const bf16 *)0);
    else
        gates_kernel<<<grid, 256, 0, stream>>>(d_g, d_beta, d_a, d_b, d_A_log, d_dt_bias, n, NV, (const float *)0);
    CU_LAUNCHED("deltanet gates_kernel");
    return Q3N_OK;
}

/* ---- recurrent step ----
 * Block (h, 32-column tile of S), 256 threads = 8 warps. Lane -> column c, warp w -> rows
 * k = w, w+8, ... (<= 32 rows each, DK <= 256). The decayed S stays in registers between the
 * read (S^T k) and the update; the two cross-warp sums go through shared memory in warp order. */
#define REC_MAXR 32
template <typename T>
__global__ void __launch_bounds__(256) recurrent_kernel(T *o, float *state, const float *q, const float *k,
                                                        const float *v, const float *g, const float *beta,
                                                        int64_t NK, int64_t NV, int64_t DK, int64_t DV)
{
    __shared__ float qs[256], ks[256], part[8][32];
    const int64_t h = blockIdx.x, kh = h / (NV / NK);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int64_t c = (int64_t)blockIdx.y * 32 + lane;
    for (int64_t i = threadIdx.x; i < DK; i += blockDim.x) {
        qs[i] = q[kh * DK + i];
        ks[i] = k[kh * DK + i];
    }
    __syncthreads();
    const float decay = expf(g[h]), bt = beta[h];
    float *S = state + h * DK * DV;
    float sr[REC_MAXR];
    float p = 0.0f;
    int nr = 0;
    for (int64_t kk = w; kk < DK; kk += 8, nr++) {
        const float s = c < DV ? S[kk * DV + c] * decay : 0.0f;
        sr[nr] = s;
        p += s * ks[kk];
    }
    part[w][lane] = p;
    __syncthreads();
    float kv = 0.0f;
    for (int i = 0; i < 8; i++) kv += part[i][lane];
    const float u = c < DV ? bt * (v[h * DV + c] - kv) : 0.0f;
    __syncthreads();
    p = 0.0f;
    nr = 0;
    for (int64_t kk = w; kk < DK; kk += 8, nr++) {
        const float s = sr[nr] + ks[kk] * u;
        if (c < DV) S[kk * DV + c] = s;
        p += s * qs[kk];
    }
    part[w][lane] = p;
    __syncthreads();
    if (w == 0 && c < DV) {
        float acc = 0.0f;
        for (int i = 0; i < 8; i++) acc += part[i][lane];
        st(o + h * DV + c, acc);
    }
}

extern "C" enum q3n_status cuda_delta_rule_recurrent(void *d_o, float *d_state, const float *d_q, const float *d_k,
                                                     const float *d_v, const float *d_g, const float *d_beta,
                                                     int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV,
                                                     enum q3n_compute_dtype dt, cudaStream_t stream,
                                                     struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && NK > 0 && NV % NK == 0 && DK > 0 && DK <= 8 * REC_MAXR && DV > 0);
    const dim3 grid((unsigned)NV, cdiv(DV, 32));
    const size_t as = cuda_act_size(dt);
    for (int64_t t = 0; t < T; t++) {
        const float *q = d_q + t * NK * DK, *k = d_k + t * NK * DK, *v = d_v + t * NV * DV;
        const float *g = d_g + t * NV, *b = d_beta + t * NV;
        void *o = (char *)d_o + (size_t)(t * NV * DV) * as;
        if (dt == Q3N_COMPUTE_BF16)
            recurrent_kernel<<<grid, 256, 0, stream>>>((bf16 *)o, d_state, q, k, v, g, b, NK, NV, DK, DV);
        else
            recurrent_kernel<<<grid, 256, 0, stream>>>((float *)o, d_state, q, k, v, g, b, NK, NV, DK, DV);
        CU_LAUNCHED("delta_rule recurrent_kernel");
    }
    return Q3N_OK;
}

/* ---- chunked form ----
 * Phase 1, chunk_prep_kernel, one block per (chunk n, value head h), all chunks in parallel:
 *   G = cumsum(g) inside the chunk; L[i][j] = beta_i (k_i.k_j) exp(G_i - G_j) for j < i;
 *   Aqk[i][j] = (q_i.k_j) exp(G_i - G_j) for j <= i (0 above);
 *   W = (I + L)^-1 (beta k exp(G)),  U = (I + L)^-1 (beta v)  by forward substitution, one
 *   column per thread, in place in shared memory (no barrier needed inside the solve).
 * Phase 2, chunk_scan_kernel, one block per (h, 32-column tile of S), chunks in order:
 *   V' = U - W S;  O = (q exp(G)) S + Aqk V';  S <- exp(G_C) S + (k exp(G_C - G))^T V'.
 * Columns of S are independent, so column tiles run in parallel. Rows past T are zero
 * (q, k, v, beta, g = 0), exactly transformers' padding. */
#define SCAN_BV 32

int64_t cuda_delta_rule_chunked_scratch(int64_t T, int64_t NV, int64_t DK, int64_t DV, int64_t C)
{
    const int64_t nc = (T + C - 1) / C;
    return nc * NV * (C * DK + C * DV + C * C + C);
}

extern "C" const char *cuda_delta_rule_chunked_kernel(void)
{
    return "chunk_v1(prep||chunks + scan/32-col tiles, fp32 SIMT)";
}

__global__ void __launch_bounds__(256) chunk_prep_kernel(float *scratch, const float *q, const float *k,
                                                         const float *v, const float *g, const float *beta,
                                                         int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV,
                                                         int64_t C)
{
    extern __shared__ float sm[];
    const int64_t n = blockIdx.x, h = blockIdx.y, kh = h / (NV / NK), nc = gridDim.x;
    const int64_t ldk = DK + 1, ldv = DV + 1, ldm = C + 1;
    float *Ks = sm, *Qs = Ks + C * ldk, *Vs = Qs + C * ldk, *M = Vs + C * ldv, *G = M + C * ldm, *B = G + C;
    const int64_t t0 = n * C;
    for (int64_t idx = threadIdx.x; idx < C * DK; idx += blockDim.x) {
        const int64_t i = idx / DK, d = idx % DK, t = t0 + i;
        Ks[i * ldk + d] = t < T ? k[(t * NK + kh) * DK + d] : 0.0f;
        Qs[i * ldk + d] = t < T ? q[(t * NK + kh) * DK + d] : 0.0f;
    }
    for (int64_t idx = threadIdx.x; idx < C * DV; idx += blockDim.x) {
        const int64_t i = idx / DV, d = idx % DV, t = t0 + i;
        Vs[i * ldv + d] = t < T ? v[(t * NV + h) * DV + d] : 0.0f;
    }
    if (threadIdx.x == 0) {
        float acc = 0.0f;
        for (int64_t i = 0; i < C; i++) {
            const int64_t t = t0 + i;
            acc += t < T ? g[t * NV + h] : 0.0f;
            G[i] = acc;
            B[i] = t < T ? beta[t * NV + h] : 0.0f;
        }
    }
    __syncthreads();
    float *Wg = scratch + (n * NV + h) * C * DK;
    float *Ug = scratch + nc * NV * C * DK + (n * NV + h) * C * DV;
    float *Ag = scratch + nc * NV * C * (DK + DV) + (n * NV + h) * C * C;
    float *Gg = scratch + nc * NV * C * (DK + DV + C) + (n * NV + h) * C;
    for (int64_t idx = threadIdx.x; idx < C * C; idx += blockDim.x) {
        const int64_t i = idx / C, j = idx % C;
        float l = 0.0f, a = 0.0f;
        if (j <= i) {
            const float dec = expf(G[i] - G[j]);
            float kk = 0.0f, qk = 0.0f;
            for (int64_t d = 0; d < DK; d++) {
                const float kj = Ks[j * ldk + d];
                qk += Qs[i * ldk + d] * kj;
                if (j < i) kk += Ks[i * ldk + d] * kj;
            }
            a = qk * dec;
            if (j < i) l = B[i] * kk * dec;
        }
        M[i * ldm + j] = l;
        Ag[i * C + j] = a;
    }
    __syncthreads();
    /* Forward substitution, column col of [beta k exp(G) | beta v], in place. */
    for (int64_t col = threadIdx.x; col < DK + DV; col += blockDim.x) {
        float *X;
        int64_t ld, cc;
        int isk;
        if (col < DK) {
            X = Ks, ld = ldk, cc = col, isk = 1;
        } else {
            X = Vs, ld = ldv, cc = col - DK, isk = 0;
        }
        for (int64_t i = 0; i < C; i++) {
            float x = B[i] * X[i * ld + cc] * (isk ? expf(G[i]) : 1.0f);
            for (int64_t j = 0; j < i; j++) x -= M[i * ldm + j] * X[j * ld + cc];
            X[i * ld + cc] = x;
        }
    }
    __syncthreads();
    for (int64_t idx = threadIdx.x; idx < C * DK; idx += blockDim.x) Wg[idx] = Ks[(idx / DK) * ldk + idx % DK];
    for (int64_t idx = threadIdx.x; idx < C * DV; idx += blockDim.x) Ug[idx] = Vs[(idx / DV) * ldv + idx % DV];
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) Gg[i] = G[i];
}

/* Rows past C (C < 64) are clamped for reads; their results are discarded. */
__device__ __forceinline__ int64_t row_of(int64_t i, int64_t C) { return i < C ? i : C - 1; }

/* Thread layout: ty = tid / 8 (0..31), tx = tid % 8. V'/O tile [C x 32]: rows ty + 32 m (m < 2),
 * cols tx + 8 c (c < 4). S tile [DK x 32]: rows ty + 32 p (p < DK/32 <= 8), same cols. */
template <typename T>
__global__ void __launch_bounds__(256) chunk_scan_kernel(T *o, float *state, const float *scratch, const float *q,
                                                         const float *k, int64_t T_, int64_t NK, int64_t NV,
                                                         int64_t DK, int64_t DV, int64_t C, int64_t nc)
{
    extern __shared__ float sm[];
    const int64_t h = blockIdx.x, kh = h / (NV / NK), c0 = (int64_t)blockIdx.y * SCAN_BV;
    const int64_t ldx = DK + 1;
    float *S = sm, *X = S + DK * SCAN_BV, *Vn = X + C * ldx, *Aq = Vn + C * SCAN_BV, *Gs = Aq + C * C;
    const int tid = threadIdx.x, ty = tid >> 3, tx = tid & 7;
    float *Sg = state + h * DK * DV;
    for (int64_t idx = tid; idx < DK * SCAN_BV; idx += blockDim.x) {
        const int64_t kk = idx / SCAN_BV, c = c0 + idx % SCAN_BV;
        S[idx] = c < DV ? Sg[kk * DV + c] : 0.0f;
    }
    const int64_t nkp = (DK + 31) / 32;
    for (int64_t n = 0; n < nc; n++) {
        const float *Wg = scratch + (n * NV + h) * C * DK;
        const float *Ug = scratch + nc * NV * C * DK + (n * NV + h) * C * DV;
        const float *Ag = scratch + nc * NV * C * (DK + DV) + (n * NV + h) * C * C;
        const float *Gg = scratch + nc * NV * C * (DK + DV + C) + (n * NV + h) * C;
        __syncthreads(); /* previous chunk's S update done before X is reloaded */
        for (int64_t idx = tid; idx < C * DK; idx += blockDim.x) X[(idx / DK) * ldx + idx % DK] = Wg[idx];
        for (int64_t idx = tid; idx < C * C; idx += blockDim.x) Aq[idx] = Ag[idx];
        for (int64_t i = tid; i < C; i += blockDim.x) Gs[i] = Gg[i];
        __syncthreads();
        float vn[2][4], oi[2][4];
        for (int m = 0; m < 2; m++)
            for (int cq = 0; cq < 4; cq++) vn[m][cq] = oi[m][cq] = 0.0f;
        /* W S */
        for (int64_t kk = 0; kk < DK; kk++) {
            float s[4];
            for (int cq = 0; cq < 4; cq++) s[cq] = S[kk * SCAN_BV + tx + 8 * cq];
            for (int m = 0; m < 2; m++) {
                const float wv = X[row_of(ty + 32 * m, C) * ldx + kk];
                for (int cq = 0; cq < 4; cq++) vn[m][cq] += wv * s[cq];
            }
        }
        for (int m = 0; m < 2; m++) {
            const int64_t i = ty + 32 * m;
            if (i >= C) continue;
            for (int cq = 0; cq < 4; cq++) {
                const int64_t c = c0 + tx + 8 * cq;
                const float u = c < DV ? Ug[i * DV + c] : 0.0f;
                Vn[i * SCAN_BV + tx + 8 * cq] = u - vn[m][cq];
            }
        }
        __syncthreads();
        /* (q exp(G)) S */
        for (int64_t idx = tid; idx < C * DK; idx += blockDim.x) {
            const int64_t i = idx / DK, d = idx % DK, t = n * C + i;
            X[i * ldx + d] = t < T_ ? q[(t * NK + kh) * DK + d] * expf(Gs[i]) : 0.0f;
        }
        __syncthreads();
        for (int64_t kk = 0; kk < DK; kk++) {
            float s[4];
            for (int cq = 0; cq < 4; cq++) s[cq] = S[kk * SCAN_BV + tx + 8 * cq];
            for (int m = 0; m < 2; m++) {
                const float qv = X[row_of(ty + 32 * m, C) * ldx + kk];
                for (int cq = 0; cq < 4; cq++) oi[m][cq] += qv * s[cq];
            }
        }
        /* + Aqk V', write O */
        for (int m = 0; m < 2; m++) {
            const int64_t i = ty + 32 * m, t = n * C + i;
            if (i >= C) continue;
            for (int cq = 0; cq < 4; cq++) {
                float acc = oi[m][cq];
                for (int64_t j = 0; j <= i; j++) acc += Aq[i * C + j] * Vn[j * SCAN_BV + tx + 8 * cq];
                const int64_t c = c0 + tx + 8 * cq;
                if (t < T_ && c < DV) st(o + (t * NV + h) * DV + c, acc);
            }
        }
        __syncthreads();
        /* S <- exp(G_C) S + (k exp(G_C - G))^T V' */
        const float gC = Gs[C - 1];
        for (int64_t idx = tid; idx < C * DK; idx += blockDim.x) {
            const int64_t i = idx / DK, d = idx % DK, t = n * C + i;
            X[i * ldx + d] = t < T_ ? k[(t * NK + kh) * DK + d] * expf(gC - Gs[i]) : 0.0f;
        }
        __syncthreads();
        const float eC = expf(gC);
        for (int64_t p = 0; p < nkp; p++) {
            const int64_t kk = ty + 32 * p;
            if (kk >= DK) break;
            float acc[4];
            for (int cq = 0; cq < 4; cq++) acc[cq] = 0.0f;
            for (int64_t i = 0; i < C; i++) {
                const float kv = X[i * ldx + kk];
                for (int cq = 0; cq < 4; cq++) acc[cq] += kv * Vn[i * SCAN_BV + tx + 8 * cq];
            }
            for (int cq = 0; cq < 4; cq++) {
                float *sp = &S[kk * SCAN_BV + tx + 8 * cq];
                *sp = eC * *sp + acc[cq];
            }
        }
    }
    __syncthreads();
    for (int64_t idx = tid; idx < DK * SCAN_BV; idx += blockDim.x) {
        const int64_t kk = idx / SCAN_BV, c = c0 + idx % SCAN_BV;
        if (c < DV) Sg[kk * DV + c] = S[idx];
    }
}

extern "C" enum q3n_status cuda_delta_rule_chunked(void *d_o, float *d_state, const float *d_q, const float *d_k,
                                                   const float *d_v, const float *d_g, const float *d_beta,
                                                   float *d_scratch, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                                                   int64_t DV, int64_t C, enum q3n_compute_dtype dt,
                                                   cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && NK > 0 && NV % NK == 0 && DK > 0 && DK <= 256 && DV > 0 && DV <= 256);
    Q3N_REQUIRE(C >= 1 && C <= 64);
    if (T == 0) return Q3N_OK;
    const int64_t nc = (T + C - 1) / C;
    Q3N_REQUIRE(nc <= INT32_MAX && NV <= 65535);
    const size_t prep_smem = sizeof(float) * (size_t)(2 * C * (DK + 1) + C * (DV + 1) + C * (C + 1) + 2 * C);
    CU_CHECK(cudaFuncSetAttribute(chunk_prep_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)prep_smem));
    chunk_prep_kernel<<<dim3((unsigned)nc, (unsigned)NV), 256, prep_smem, stream>>>(d_scratch, d_q, d_k, d_v, d_g,
                                                                                     d_beta, T, NK, NV, DK, DV, C);
    CU_LAUNCHED("delta_rule chunk_prep_kernel");
    const size_t scan_smem = sizeof(float) * (size_t)(DK * SCAN_BV + C * (DK + 1) + C * SCAN_BV + C * C + C);
    const dim3 grid((unsigned)NV, cdiv(DV, SCAN_BV));
    if (dt == Q3N_COMPUTE_BF16) {
        CU_CHECK(cudaFuncSetAttribute(chunk_scan_kernel<bf16>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)scan_smem));
        chunk_scan_kernel<<<grid, 256, scan_smem, stream>>>((bf16 *)d_o, d_state, d_scratch, d_q, d_k, T, NK, NV, DK,
                                                            DV, C, nc);
    } else {
        CU_CHECK(cudaFuncSetAttribute(chunk_scan_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)scan_smem));
        chunk_scan_kernel<<<grid, 256, scan_smem, stream>>>((float *)d_o, d_state, d_scratch, d_q, d_k, T, NK, NV,
                                                            DK, DV, C, nc);
    }
    CU_LAUNCHED("delta_rule chunk_scan_kernel");
    return Q3N_OK;
}
