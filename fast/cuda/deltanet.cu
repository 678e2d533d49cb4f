/* deltanet.cu — Gated DeltaNet: projection split, gates, and the gated delta rule in its
 * recurrent (decode) and chunked (prefill) forms (cuda twins of ref/deltanet.c).
 *
 * The delta rule runs in float32 throughout (q, k, v, g, beta, the state and every
 * intermediate) in both compute modes; only its output o is rounded to the activation dtype,
 * as transformers does. No atomics: every reduction has a fixed order, so runs are bitwise
 * reproducible. Summation orders differ from the reference (tiles instead of one loop): the
 * tests bound the difference by relative L2 against ref_delta_rule_chunked. */
#include "common.cuh"
#include "deltanet_gates.cuh"

/* ---- split ----
 * Per token t, element e of [mixed (Cc = 2 NK DK + NV DV) | z (NV DV) | b, a (NV)]: one thread
 * each, blocks x over the elements, y over the tokens, 32-bit index arithmetic within a token. A
 * copy: the same bits whatever the launch shape. (A block per token with int64 division per
 * element took 34 us for one decode token at the real dims under ncu, a twentieth of the step.) */
template <typename T>
__global__ void split_kernel(T *mixed, T *z, float *b, float *a, const T *qkvz, const T *ba, int64_t T_, int NK,
                             int NV, int DK, int DV)
{
    const int r = NV / NK, GS = 2 * DK + 2 * r * DV;
    const int Cc = 2 * NK * DK + NV * DV, Z = NV * DV;
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    for (int64_t t = blockIdx.y; t < T_; t += gridDim.y) {
        const T *src = qkvz + t * NK * GS;
        if (e < Cc) {
            int s;
            if (e < NK * DK) {
                s = (e / DK) * GS + e % DK;
            } else if (e < 2 * NK * DK) {
                const int c2 = e - NK * DK;
                s = (c2 / DK) * GS + DK + c2 % DK;
            } else {
                const int c2 = e - 2 * NK * DK, h = c2 / DV;
                s = (h / r) * GS + 2 * DK + (h % r) * DV + c2 % DV;
            }
            mixed[(int64_t)t * Cc + e] = src[s];
        } else if (e < Cc + Z) {
            const int c = e - Cc, h = c / DV;
            z[(int64_t)t * Z + c] = src[(h / r) * GS + 2 * DK + r * DV + (h % r) * DV + c % DV];
        } else if (e < Cc + Z + NV) {
            const int h = e - Cc - Z;
            const T *g = ba + (int64_t)t * 2 * NV + (h / r) * 2 * r;
            b[(int64_t)t * NV + h] = ld(g + h % r);
            a[(int64_t)t * NV + h] = ld(g + r + h % r);
        }
    }
}

extern "C" enum q3n_status cuda_deltanet_split_forward(void *d_mixed, void *d_z, float *d_b, float *d_a,
                                                       const void *d_qkvz, const void *d_ba, int64_t T, int64_t NK,
                                                       int64_t NV, int64_t DK, int64_t DV, enum q3n_compute_dtype dt,
                                                       cudaStream_t stream, struct q3n_error *err)
{
    /* 32-bit element indices within a token; tokens on the grid's y (strided past 65535) */
    Q3N_REQUIRE(T >= 0 && NK > 0 && NV % NK == 0 && DK > 0 && DV > 0 &&
                NK * (2 * DK + 2 * (NV / NK) * DV) <= INT32_MAX / 2);
    if (T == 0) return Q3N_OK;
    const int64_t per = 2 * NK * DK + 2 * NV * DV + NV; /* elements per token */
    const dim3 grid((unsigned)((per + 255) / 256), (unsigned)(T < 65535 ? T : 65535));
    if (dt == Q3N_COMPUTE_BF16)
        split_kernel<<<grid, 256, 0, stream>>>((bf16 *)d_mixed, (bf16 *)d_z, d_b, d_a, (const bf16 *)d_qkvz,
                                               (const bf16 *)d_ba, T, (int)NK, (int)NV, (int)DK, (int)DV);
    else
        split_kernel<<<grid, 256, 0, stream>>>((float *)d_mixed, (float *)d_z, d_b, d_a, (const float *)d_qkvz,
                                               (const float *)d_ba, T, (int)NK, (int)NV, (int)DK, (int)DV);
    CU_LAUNCHED("deltanet split_kernel");
    return Q3N_OK;
}

/* ---- gates (formulas in deltanet_gates.cuh) ---- */
template <typename T>
__global__ void gates_kernel(float *g, float *beta, const float *a, const float *b, const float *A_log,
                             const float *dt_bias, int64_t n, int64_t NV, const T *tag)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t h = i % NV;
        g[i] = dn_gate_g(a[i], A_log[h], dt_bias[h]);
        beta[i] = dn_gate_beta(b[i], tag);
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

/* ---- recurrent step, rec_v2 (bf16 mode) ----
 * Same maths as recurrent_kernel. Block (h, 32-column tile), 256 threads: cg = tid & 7 owns
 * columns 4 cg .. 4 cg + 3 (float4), rg = tid >> 3 (0..31) rows rg + 32 i (i < DK/32 <= 8). All
 * row loads of a thread are issued before any use: the step streams the state once (read +
 * write), so it is bound by how many loads are in flight, not by arithmetic. Sums over rows:
 * xor-shuffles over the 4 row groups of a warp, then the 8 warps' partials in warp order
 * through shared memory (fixed order: bitwise reproducible). */
#define REC2_R 8
__device__ __forceinline__ float4 f4_fma(float4 a, float b, float4 c)
{
    return make_float4(c.x + a.x * b, c.y + a.y * b, c.z + a.z * b, c.w + a.w * b);
}
__device__ __forceinline__ float4 f4_rowsum(float4 p, float4 (*part)[8], int w, int lane, int cg)
{
    /* lane = 8 (rg & 3) + cg: reduce over lane bits 3, 4, then over the 8 warps */
    p.x += __shfl_xor_sync(0xffffffffu, p.x, 8), p.y += __shfl_xor_sync(0xffffffffu, p.y, 8);
    p.z += __shfl_xor_sync(0xffffffffu, p.z, 8), p.w += __shfl_xor_sync(0xffffffffu, p.w, 8);
    p.x += __shfl_xor_sync(0xffffffffu, p.x, 16), p.y += __shfl_xor_sync(0xffffffffu, p.y, 16);
    p.z += __shfl_xor_sync(0xffffffffu, p.z, 16), p.w += __shfl_xor_sync(0xffffffffu, p.w, 16);
    if (lane < 8) part[w][cg] = p;
    __syncthreads();
    float4 t = part[0][cg];
#pragma unroll
    for (int i = 1; i < 8; i++) t = make_float4(t.x + part[i][cg].x, t.y + part[i][cg].y, t.z + part[i][cg].z, t.w + part[i][cg].w);
    __syncthreads(); /* part is reused */
    return t;
}
template <typename T>
__global__ void __launch_bounds__(256) recurrent_v2_kernel(T *o, float *state, const float *q, const float *k,
                                                           const float *v, const float *g, const float *beta, int NK,
                                                           int NV, int DK, int DV)
{
    __shared__ float qs[32 * REC2_R], ks[32 * REC2_R];
    __shared__ float4 part[8][8];
    const int h = blockIdx.x, kh = h / (NV / NK), tid = threadIdx.x, cg = tid & 7, rg = tid >> 3, lane = tid & 31,
              w = tid >> 5;
    const int c = blockIdx.y * 32 + 4 * cg;
    const bool cv = c < DV;
    float *S = state + (size_t)h * DK * DV;
    float4 sr[REC2_R];
#pragma unroll
    for (int i = 0; i < REC2_R; i++) {
        const int kk = rg + 32 * i;
        sr[i] = cv && kk < DK ? *reinterpret_cast<const float4 *>(S + (size_t)kk * DV + c) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    for (int i = tid; i < DK; i += 256) {
        qs[i] = q[(size_t)kh * DK + i];
        ks[i] = k[(size_t)kh * DK + i];
    }
    const float decay = expf(g[h]), bt = beta[h];
    __syncthreads();
    /* S <- decay S;  kv = S^T k */
    float4 p = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int i = 0; i < REC2_R; i++) {
        const int kk = rg + 32 * i;
        sr[i] = make_float4(sr[i].x * decay, sr[i].y * decay, sr[i].z * decay, sr[i].w * decay);
        if (kk < DK) p = f4_fma(sr[i], ks[kk], p);
    }
    const float4 kv = f4_rowsum(p, part, w, lane, cg);
    /* u = beta (v - kv);  S <- S + k u^T;  o = S^T q */
    const float4 vv = cv ? *reinterpret_cast<const float4 *>(v + (size_t)h * DV + c) : make_float4(0.f, 0.f, 0.f, 0.f);
    const float4 u = make_float4(bt * (vv.x - kv.x), bt * (vv.y - kv.y), bt * (vv.z - kv.z), bt * (vv.w - kv.w));
    p = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int i = 0; i < REC2_R; i++) {
        const int kk = rg + 32 * i;
        if (kk < DK) {
            sr[i] = f4_fma(u, ks[kk], sr[i]);
            if (cv) *reinterpret_cast<float4 *>(S + (size_t)kk * DV + c) = sr[i];
            p = f4_fma(sr[i], qs[kk], p);
        }
    }
    const float4 ov = f4_rowsum(p, part, w, lane, cg);
    if (tid < 8 && cv) {
        T *op = o + (size_t)h * DV + c;
        st(op, ov.x), st(op + 1, ov.y), st(op + 2, ov.z), st(op + 3, ov.w);
    }
}

extern "C" const char *cuda_delta_rule_recurrent_kernel_for(int64_t DK, int64_t DV, enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 && DK <= 32 * REC2_R && DV % 4 == 0 ? "rec_v2(float4 rows in flight, 32-col tiles)"
                                                                      : "rec_v1";
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
        if (dt == Q3N_COMPUTE_BF16 && DK <= 32 * REC2_R && DV % 4 == 0)
            recurrent_v2_kernel<<<grid, 256, 0, stream>>>((bf16 *)o, d_state, q, k, v, g, b, (int)NK, (int)NV, (int)DK,
                                                          (int)DV);
        else if (dt == Q3N_COMPUTE_BF16)
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

/* Scratch for either path (the bf16 tensor-core path of deltanet_tc.cu lays out its own). */
int64_t cuda_delta_rule_chunked_scratch(int64_t T, int64_t NV, int64_t DK, int64_t DV, int64_t C)
{
    const int64_t nc = (T + C - 1) / C, simt = nc * NV * (C * DK + C * DV + C * C + C);
    const int64_t tc = cuda_delta_rule_chunked_tc_supported(DK, DV, C) ? cuda_delta_rule_chunked_tc_scratch(T, NV, DK, DV, C) : 0;
    return simt > tc ? simt : tc;
}

extern "C" const char *cuda_delta_rule_chunked_simt_kernel(void)
{
    return "chunk_v4(prep||chunks + pipelined scan/32-col tiles, float4 smem, fp32 SIMT)";
}

extern "C" const char *cuda_delta_rule_chunked_kernel_for(int64_t DK, int64_t DV, int64_t C, enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 && cuda_delta_rule_chunked_tc_supported(DK, DV, C) ? cuda_delta_rule_chunked_tc_kernel()
                                                                                     : cuda_delta_rule_chunked_simt_kernel();
}

extern "C" const char *cuda_delta_rule_chunked_kernel(void)
{
    return cuda_delta_rule_chunked_tc_has_v3()
               ? "bf16 DK=DV=128 C=64: chunk_tc_v3 (bf16 mma.sync prep + wgmma scan); otherwise chunk_v4 (fp32 SIMT)"
               : "bf16 DK=DV=128 C=64: chunk_tc_v2 (bf16 mma.sync); otherwise chunk_v4 (fp32 SIMT)";
}

/* Register-staged tile loads: a [C x ncol] float32 tile, row i at base + i*rs (rows >= nvalid
 * read as zero), as float4 (ncol % 4 == 0), thread tid taking float4 f = tid + 256 j. Issuing all
 * loads before any store keeps up to 16 loads in flight per thread (the kernels below are
 * latency-bound, not bandwidth-bound). */
#define TL_MAX 16
struct tile_regs {
    float4 v[TL_MAX];
};
__device__ __forceinline__ void tile_fetch(tile_regs &r, const float *base, size_t rs, int nvalid, int C, int ncol)
{
    const int q4 = ncol >> 2, nf = C * q4;
#pragma unroll
    for (int j = 0; j < TL_MAX; j++) {
        const int f = threadIdx.x + 256 * j;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (f < nf) {
            const int i = f / q4, c = (f - i * q4) * 4;
            if (i < nvalid) x = *reinterpret_cast<const float4 *>(base + (size_t)i * rs + c);
        }
        r.v[j] = x;
    }
}
/* Stores the staged tile to smem dst[i*ld + c] * scale[i] (scale NULL: 1). */
__device__ __forceinline__ void tile_store(float *dst, int ld, const tile_regs &r, const float *scale, int C, int ncol)
{
    const int q4 = ncol >> 2, nf = C * q4;
#pragma unroll
    for (int j = 0; j < TL_MAX; j++) {
        const int f = threadIdx.x + 256 * j;
        if (f < nf) {
            const int i = f / q4, c = (f - i * q4) * 4;
            const float sc = scale ? scale[i] : 1.0f;
            float *d = dst + i * ld + c;
            d[0] = r.v[j].x * sc;
            d[1] = r.v[j].y * sc;
            d[2] = r.v[j].z * sc;
            d[3] = r.v[j].w * sc;
        }
    }
}

__global__ void __launch_bounds__(256, 2) chunk_prep_kernel(float *scratch, const float *q, const float *k,
                                                         const float *v, const float *g, const float *beta, int T,
                                                         int NK, int NV, int DK, int DV, int C)
{
    extern __shared__ float sm[];
    const int n = blockIdx.x, h = blockIdx.y, kh = h / (NV / NK), nc = gridDim.x;
    const int ldk = DK + 1, ldv = DV + 1, ldm = C + 1, ldqv = (DK > DV ? DK : DV) + 1;
    /* Qs holds q until K K^T / Q K^T are done, then v (ld ldv): 2 blocks per SM at DK = DV = 128. */
    float *Ks = sm, *Qs = Ks + C * ldk, *Vs = Qs, *M = Qs + C * ldqv, *G = M + C * ldm, *B = G + C, *EG = B + C;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int t0 = n * C, nvalid = T - t0 < C ? T - t0 : C;
    {
        tile_regs r;
        tile_fetch(r, k + ((size_t)t0 * NK + kh) * DK, (size_t)NK * DK, nvalid, C, DK);
        tile_store(Ks, ldk, r, NULL, C, DK);
        tile_fetch(r, q + ((size_t)t0 * NK + kh) * DK, (size_t)NK * DK, nvalid, C, DK);
        tile_store(Qs, ldk, r, NULL, C, DK);
    }
    if (tid == 0) {
        float acc = 0.0f;
        for (int i = 0; i < C; i++) {
            const int t = t0 + i;
            acc += t < T ? g[(size_t)t * NV + h] : 0.0f;
            G[i] = acc;
            B[i] = t < T ? beta[(size_t)t * NV + h] : 0.0f;
        }
    }
    __syncthreads();
    if (tid < C) EG[tid] = expf(G[tid]);
    float *Wg = scratch + ((size_t)n * NV + h) * C * DK;
    float *Ug = scratch + (size_t)nc * NV * C * DK + ((size_t)n * NV + h) * C * DV;
    float *Ag = scratch + (size_t)nc * NV * C * (DK + DV) + ((size_t)n * NV + h) * C * C;
    float *Gg = scratch + (size_t)nc * NV * C * (DK + DV + C) + ((size_t)n * NV + h) * C;
    /* 4x4 register tile per thread: rows i = ti + 16 r, cols j = tj + 16 c (C <= 64). */
    {
        const int ti = tid >> 4, tj = tid & 15;
        float kk[4][4], qk[4][4];
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 4; c++) kk[r][c] = qk[r][c] = 0.0f;
        int ri[4], cj[4];
        for (int r = 0; r < 4; r++) {
            ri[r] = min(ti + 16 * r, C - 1);
            cj[r] = min(tj + 16 * r, C - 1);
        }
        for (int d = 0; d < DK; d++) {
            float qi[4], ki[4], kj[4];
            for (int r = 0; r < 4; r++) {
                qi[r] = Qs[ri[r] * ldk + d];
                ki[r] = Ks[ri[r] * ldk + d];
                kj[r] = Ks[cj[r] * ldk + d];
            }
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < 4; c++) {
                    kk[r][c] += ki[r] * kj[c];
                    qk[r][c] += qi[r] * kj[c];
                }
        }
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 4; c++) {
                const int i = ti + 16 * r, j = tj + 16 * c;
                if (i >= C || j >= C) continue;
                const float dec = j <= i ? expf(G[i] - G[j]) : 0.0f;
                M[i * ldm + j] = j < i ? B[i] * kk[r][c] * dec : 0.0f;
                Ag[i * C + j] = j <= i ? qk[r][c] * dec : 0.0f;
            }
    }
    __syncthreads(); /* Qs free: v goes there */
    {
        tile_regs r;
        tile_fetch(r, v + ((size_t)t0 * NV + h) * DV, (size_t)NV * DV, nvalid, C, DV);
        tile_store(Vs, ldv, r, NULL, C, DV);
    }
    __syncthreads();
    /* Forward substitution, column col of [beta k exp(G) | beta v], in place; one thread per column. */
    for (int col = tid; col < DK + DV; col += blockDim.x) {
        float *X;
        int ld, cc;
        const bool isk = col < DK;
        if (isk) {
            X = Ks, ld = ldk, cc = col;
        } else {
            X = Vs, ld = ldv, cc = col - DK;
        }
        for (int i = 0; i < C; i++) {
            float x0 = B[i] * X[i * ld + cc] * (isk ? EG[i] : 1.0f), x1 = 0.0f;
            const float *mr = M + i * ldm;
            int j = 0;
            for (; j + 1 < i; j += 2) {
                x0 -= mr[j] * X[j * ld + cc];
                x1 -= mr[j + 1] * X[(j + 1) * ld + cc];
            }
            if (j < i) x0 -= mr[j] * X[j * ld + cc];
            X[i * ld + cc] = x0 + x1;
        }
    }
    __syncthreads();
    for (int i = warp; i < C; i += 8) {
        for (int d = lane; d < DK; d += 32) Wg[i * DK + d] = Ks[i * ldk + d];
        for (int d = lane; d < DV; d += 32) Ug[i * DV + d] = Vs[i * ldv + d];
    }
    if (tid < C) Gg[tid] = G[tid];
}

/* Rows past C (C < 64) are clamped for reads; their results are discarded. */
__device__ __forceinline__ int row_of(int i, int C) { return i < C ? i : C - 1; }

/* Thread layout: ty = tid / 8 (0..31), tx = tid % 8. V'/O tile [C x 32]: rows ty + 32 m (m < 2),
 * cols 4 tx + c (c < 4, one float4). S tile [DK x 32]: rows ty + 32 p (p < DK/32 <= 8), same cols.
 * Software pipeline: while one phase computes, the next phase's tile (Q, then K, then the next
 * chunk's W, Aqk, U, G) is in flight into registers. */
template <typename T>
__global__ void __launch_bounds__(256) chunk_scan_kernel(T *o, float *state, const float *scratch, const float *q,
                                                         const float *k, int T_, int NK, int NV, int DK, int DV, int C,
                                                         int nc)
{
    extern __shared__ float sm[];
    const int h = blockIdx.x, kh = h / (NV / NK), c0 = blockIdx.y * SCAN_BV;
    const int ldx = DK + 1, lda = C + 1;
    float *S = sm, *X = S + DK * SCAN_BV, *Vn = X + ((C * ldx + 3) & ~3), *Aq = Vn + C * SCAN_BV, *Gs = Aq + C * lda, *E1 = Gs + C,
          *E2 = E1 + C;
    const int tid = threadIdx.x, ty = tid >> 3, tx = tid & 7, lane = tid & 31, warp = tid >> 5;
    float *Sg = state + (size_t)h * DK * DV;
    for (int kk = warp; kk < DK; kk += 8) S[kk * SCAN_BV + lane] = c0 + lane < DV ? Sg[kk * DV + c0 + lane] : 0.0f;
    const int nkp = (DK + 31) / 32;
    const size_t offU = (size_t)nc * NV * C * DK, offA = offU + (size_t)nc * NV * C * DV,
                 offG = offA + (size_t)nc * NV * C * C;
    tile_regs rx;
    float ra[16], ru[2][4], rg = 0.0f;
    /* prologue: chunk 0's W, Aqk, U, G */
    auto fetch_chunk = [&](int n) {
        const size_t hb = (size_t)n * NV + h;
        tile_fetch(rx, scratch + hb * C * DK, (size_t)DK, C, C, DK);
        const float *Ag = scratch + offA + hb * C * C;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int f = tid + 256 * j;
            ra[j] = f < C * C ? Ag[f] : 0.0f;
        }
        const float *Ug = scratch + offU + hb * C * DV;
#pragma unroll
        for (int m = 0; m < 2; m++)
#pragma unroll
            for (int cq = 0; cq < 4; cq++) {
                const int i = ty + 32 * m, c = c0 + tx * 4 + cq;
                ru[m][cq] = (i < C && c < DV) ? Ug[i * DV + c] : 0.0f;
            }
        rg = tid < C ? scratch[offG + hb * C + tid] : 0.0f;
    };
    fetch_chunk(0);
    for (int n = 0; n < nc; n++) {
        __syncthreads(); /* previous chunk's S update done: X, Aq, Gs free */
        tile_store(X, ldx, rx, NULL, C, DK);
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int f = tid + 256 * j;
            if (f < C * C) Aq[(f / C) * lda + f % C] = ra[j];
        }
        if (tid < C) {
            Gs[tid] = rg;
            E1[tid] = expf(rg);
        }
        __syncthreads();
        if (tid < C) E2[tid] = expf(Gs[C - 1] - Gs[tid]);
        const int t0 = n * C, nvalid = T_ - t0 < C ? T_ - t0 : C;
        tile_fetch(rx, q + ((size_t)t0 * NK + kh) * DK, (size_t)NK * DK, nvalid, C, DK); /* Q in flight */
        float vn[2][4], oi[2][4];
        for (int m = 0; m < 2; m++)
            for (int cq = 0; cq < 4; cq++) vn[m][cq] = oi[m][cq] = 0.0f;
        const int r0 = row_of(ty, C), r1 = row_of(ty + 32, C);
        /* V' = U - W S */
        for (int kk = 0; kk < DK; kk++) {
            const float4 s4 = *reinterpret_cast<const float4 *>(&S[kk * SCAN_BV + tx * 4]);
            const float sv[4] = {s4.x, s4.y, s4.z, s4.w};
            const float w0 = X[r0 * ldx + kk], w1 = X[r1 * ldx + kk];
            for (int cq = 0; cq < 4; cq++) {
                vn[0][cq] += w0 * sv[cq];
                vn[1][cq] += w1 * sv[cq];
            }
        }
        for (int m = 0; m < 2; m++) {
            const int i = ty + 32 * m;
            if (i >= C) continue;
            *reinterpret_cast<float4 *>(&Vn[i * SCAN_BV + tx * 4]) =
                make_float4(ru[m][0] - vn[m][0], ru[m][1] - vn[m][1], ru[m][2] - vn[m][2], ru[m][3] - vn[m][3]);
        }
        __syncthreads();
        tile_store(X, ldx, rx, E1, C, DK); /* q exp(G) */
        tile_fetch(rx, k + ((size_t)t0 * NK + kh) * DK, (size_t)NK * DK, nvalid, C, DK); /* K in flight */
        __syncthreads();
        for (int kk = 0; kk < DK; kk++) {
            const float4 s4 = *reinterpret_cast<const float4 *>(&S[kk * SCAN_BV + tx * 4]);
            const float sv[4] = {s4.x, s4.y, s4.z, s4.w};
            const float q0 = X[r0 * ldx + kk], q1 = X[r1 * ldx + kk];
            for (int cq = 0; cq < 4; cq++) {
                oi[0][cq] += q0 * sv[cq];
                oi[1][cq] += q1 * sv[cq];
            }
        }
        /* O = (q exp(G)) S + Aqk V' */
        for (int m = 0; m < 2; m++) {
            const int i = ty + 32 * m, t = t0 + i;
            if (i >= C) continue;
            float acc[4] = {oi[m][0], oi[m][1], oi[m][2], oi[m][3]};
            for (int j = 0; j <= i; j++) {
                const float aq = Aq[i * lda + j];
                const float4 v4 = *reinterpret_cast<const float4 *>(&Vn[j * SCAN_BV + tx * 4]);
                acc[0] += aq * v4.x;
                acc[1] += aq * v4.y;
                acc[2] += aq * v4.z;
                acc[3] += aq * v4.w;
            }
            for (int cq = 0; cq < 4; cq++) {
                const int c = c0 + tx * 4 + cq;
                if (t < T_ && c < DV) st(o + ((size_t)t * NV + h) * DV + c, acc[cq]);
            }
        }
        __syncthreads();
        tile_store(X, ldx, rx, E2, C, DK); /* k exp(G_C - G) */
        const float eC = E1[C - 1];
        if (n + 1 < nc) fetch_chunk(n + 1); /* next chunk in flight */
        __syncthreads();
        /* S <- exp(G_C) S + (k exp(G_C - G))^T V' */
        for (int p = 0; p < nkp; p++) {
            const int kk = ty + 32 * p;
            if (kk >= DK) break;
            float acc[4];
            for (int cq = 0; cq < 4; cq++) acc[cq] = 0.0f;
            for (int i = 0; i < C; i++) {
                const float kv = X[i * ldx + kk];
                const float4 v4 = *reinterpret_cast<const float4 *>(&Vn[i * SCAN_BV + tx * 4]);
                acc[0] += kv * v4.x;
                acc[1] += kv * v4.y;
                acc[2] += kv * v4.z;
                acc[3] += kv * v4.w;
            }
            float4 *sp = reinterpret_cast<float4 *>(&S[kk * SCAN_BV + tx * 4]);
            float4 sv = *sp;
            sv.x = eC * sv.x + acc[0];
            sv.y = eC * sv.y + acc[1];
            sv.z = eC * sv.z + acc[2];
            sv.w = eC * sv.w + acc[3];
            *sp = sv;
        }
    }
    __syncthreads();
    for (int kk = warp; kk < DK; kk += 8)
        if (c0 + lane < DV) Sg[kk * DV + c0 + lane] = S[kk * SCAN_BV + lane];
}

extern "C" enum q3n_status cuda_delta_rule_chunked_simt(void *d_o, float *d_state, const float *d_q, const float *d_k,
                                                        const float *d_v, const float *d_g, const float *d_beta,
                                                        float *d_scratch, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                                                        int64_t DV, int64_t C, enum q3n_compute_dtype dt,
                                                        cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && NK > 0 && NV % NK == 0 && DK > 0 && DK <= 256 && DV > 0 && DV <= 256);
    Q3N_REQUIRE(C >= 1 && C <= 64);
    if (DK % 4 != 0 || DV % 4 != 0 || C * DK > 4 * 256 * TL_MAX || C * DV > 4 * 256 * TL_MAX)
        return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "cuda delta rule: DK=%lld DV=%lld must be multiples of 4",
                             (long long)DK, (long long)DV);
    if (T == 0) return Q3N_OK;
    const int64_t nc = (T + C - 1) / C;
    Q3N_REQUIRE(T <= INT32_MAX / 4 && NV <= 65535 && (size_t)nc * NV * C * (DK + DV + C + 1) < ((size_t)1 << 40));
    const size_t prep_smem =
        sizeof(float) * (size_t)(C * (DK + 1) + C * ((DK > DV ? DK : DV) + 1) + C * (C + 1) + 3 * C);
    CU_CHECK(cudaFuncSetAttribute(chunk_prep_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)prep_smem));
    chunk_prep_kernel<<<dim3((unsigned)nc, (unsigned)NV), 256, prep_smem, stream>>>(d_scratch, d_q, d_k, d_v, d_g,
                                                                                     d_beta, (int)T, (int)NK, (int)NV, (int)DK, (int)DV, (int)C);
    CU_LAUNCHED("delta_rule chunk_prep_kernel");
    const size_t scan_smem =
        sizeof(float) * (size_t)(DK * SCAN_BV + ((C * (DK + 1) + 3) & ~3) + C * SCAN_BV + C * (C + 1) + 3 * C);
    const dim3 grid((unsigned)NV, cdiv(DV, SCAN_BV));
    if (dt == Q3N_COMPUTE_BF16) {
        CU_CHECK(cudaFuncSetAttribute(chunk_scan_kernel<bf16>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)scan_smem));
        chunk_scan_kernel<<<grid, 256, scan_smem, stream>>>((bf16 *)d_o, d_state, d_scratch, d_q, d_k, (int)T, (int)NK, (int)NV,
                                                            (int)DK, (int)DV, (int)C, (int)nc);
    } else {
        CU_CHECK(cudaFuncSetAttribute(chunk_scan_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)scan_smem));
        chunk_scan_kernel<<<grid, 256, scan_smem, stream>>>((float *)d_o, d_state, d_scratch, d_q, d_k, (int)T, (int)NK, (int)NV,
                                                            (int)DK, (int)DV, (int)C, (int)nc);
    }
    CU_LAUNCHED("delta_rule chunk_scan_kernel");
    return Q3N_OK;
}

/* bf16 mode with DK = DV = 128, C = 64: the tensor-core path (deltanet_tc.cu); else chunk_v4. */
extern "C" enum q3n_status cuda_delta_rule_chunked(void *d_o, float *d_state, const float *d_q, const float *d_k,
                                                   const float *d_v, const float *d_g, const float *d_beta,
                                                   float *d_scratch, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                                                   int64_t DV, int64_t C, enum q3n_compute_dtype dt,
                                                   cudaStream_t stream, struct q3n_error *err)
{
    if (dt == Q3N_COMPUTE_BF16 && cuda_delta_rule_chunked_tc_supported(DK, DV, C))
        return cuda_delta_rule_chunked_tc(d_o, d_state, d_q, d_k, d_v, d_g, d_beta, d_scratch, T, NK, NV, DK, DV, C, 0,
                                          stream, err);
    return cuda_delta_rule_chunked_simt(d_o, d_state, d_q, d_k, d_v, d_g, d_beta, d_scratch, T, NK, NV, DK, DV, C, dt,
                                        stream, err);
}
