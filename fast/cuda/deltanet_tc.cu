/* deltanet_tc.cu — the chunked gated delta rule on bf16 tensor cores (bf16 compute mode).
 *
 * Same maths as chunk_v4 in deltanet.cu and ref_delta_rule_chunked, for chunk C = 64 and
 * DK = DV = 128 (other shapes fall back to chunk_v4). Operands of every product are rounded to
 * bf16 (q, k, v as staged, the inverse T, W, S, V'); accumulation, the triangular solve, the
 * decays and the state carried across chunks are float32. Output o is bf16.
 *
 * Phase 1, tc_prep_kernel, one block (4 warps, 16 chunk rows each) per (chunk n, key head):
 * q, k staged once (bf16), then for each value head h of the group:
 *   G = cumsum(g);  L[i][j] = beta_i (k_i.k_j) exp(G_i - G_j) (j < i);
 *   Aqk[i][j] = (q_i.k_j) exp(G_i - G_j) (j <= i);                      K K^T, Q K^T by mma
 *   T = (I + L)^-1, float32: 32 x 32 diagonal blocks by forward substitution, the off-diagonal
 *       block by two 32 x 32 products (tc_solve_unit_lower);
 *   W = T diag(beta exp(G)) K,  U = T diag(beta) V                       by mma
 *   and writes W, Aqk (bf16), U, G (float32), plus q, k in bf16 once per key head.
 * Phase 2, tc_scan_kernel, one block per (16*NVG columns of V, head h), a pair of warps per 16
 * value columns, each warp of the pair owning half of DK; S^T (rows = v index, 16 x 64 per
 * warp) stays in mma accumulators, and per chunk:
 *   V'^T = U^T - S^T W^T;  O^T = diag-col(exp(G)) (S^T Q^T) + V'^T Aqk^T;
 *   S^T <- exp(G_C) S^T + (V'^T diag(exp(G_C - G))) K.
 * The accumulator fragments of S^T and V'^T are re-packed in registers as A operands (the
 * layout of two adjacent m16n8 accumulators equals that of one m16k16 A fragment), so S never
 * goes through shared memory; only the pair's partial sums over DK do. The next chunk's W, Q,
 * K, Aqk, U, G stream in by cp.async (double buffered) while the current chunk computes. No
 * atomics: bitwise reproducible, and the same bits for every block shape.
 * Entry points: cuda_delta_rule_chunked_tc (q, k, v float32, rounded to bf16 as staged) and
 * cuda_delta_rule_chunked_tc_bf16 (q, k, v already bf16, as cuda_deltanet_prep_forward writes
 * them: given bf16(q), bf16(k), bf16(v) of the same float32 values, the same bits).
 * Phase 2 on sm_90 is scan v3 instead (deltanet_tc_scan3.cu: wgmma, the default there); this
 * scan (v2) is the path elsewhere and stays selectable.
 * H100, T=16384 NK=16 NV=32 (session 5): prep 0.48 ms with bf16 q, k, v (0.57 float32); prep + scan
 * v3 0.94 ms (bf16), prep + scan v2 1.24 ms (float32); chunk_v4: 9.56 ms. */
#include <type_traits>

#include "attention_kernels.cuh"
#include "deltanet_tc.cuh"

#define TC_LDB (TC_D + 8) /* bf16 row stride of [64 x 128] tiles: 272 B, ldmatrix conflict-free */
#define TC_LDA (TC_C + 8) /* bf16 row stride of [64 x 64] tiles: 144 B */
#define TC_LDL (TC_C + 4) /* float row stride of L (float4 rows) */

extern "C" int64_t cuda_delta_rule_chunked_tc_scratch(int64_t T, int64_t NV, int64_t DK, int64_t DV, int64_t C)
{
    (void)DK, (void)DV, (void)C;
    const int64_t nc = (T + TC_C - 1) / TC_C;
    return (int64_t)((tc_layout_of(nc, NV, NV).end + 3) / 4); /* NK <= NV */
}

static int tc_scan_smem_max(void);

/* Dims, and the device's opt-in shared memory (the default scan block needs ~163 KB: sm_80 and
 * sm_90 have it, sm_86/89 fall back to chunk_v4). */
extern "C" int cuda_delta_rule_chunked_tc_supported(int64_t DK, int64_t DV, int64_t C)
{
    if (DK != TC_D || DV != TC_D || C != TC_C) return 0;
    int dev = 0, optin = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
        cudaGetLastError(); /* clear: the answer is just "no" */
        return 0;
    }
    return optin >= tc_scan_smem_max();
}

/* ---- warp-level primitives (sm_80+) ---- */
/* C[16x8] += A[16x16] B[16x8]; a = 4 regs (row-major A fragment), b0/b1 = B (k 0-7 / 8-15). */
__device__ __forceinline__ void tc_mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1)
{
    mma_m16n8k16_bf16(c, a[0], a[1], a[2], a[3], b0, b1);
}
__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void ldsm4(uint32_t *r, const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm4t(uint32_t *r, const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
__device__ __forceinline__ void cp16(void *s, const void *g)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(s)), "l"(g));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_wait1() { asm volatile("cp.async.wait_group 1;\n" ::); }

/* Fragment addresses for ldmatrix.x4, lane l supplying the row of matrix l >> 3. */
/* A fragment of rows r0..r0+15, cols c0..c0+15 of row-major [m][k]. */
__device__ __forceinline__ const bf16 *frag_a(const bf16 *base, int ld, int r0, int c0, int lane)
{
    return base + (r0 + (lane & 15)) * ld + c0 + (lane >> 4) * 8;
}
/* B fragments of two n-tiles (n0..n0+15), k0..k0+15, from [n][k] storage (non-trans ldmatrix):
 * regs 0,1 = n-tile n0, regs 2,3 = n-tile n0+8. */
__device__ __forceinline__ const bf16 *frag_b_nk(const bf16 *base, int ld, int n0, int k0, int lane)
{
    return base + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8;
}
/* The same from [k][n] storage (trans ldmatrix). */
__device__ __forceinline__ const bf16 *frag_b_kn(const bf16 *base, int ld, int k0, int n0, int lane)
{
    return base + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8;
}

/* ---- phase 1 ---- */
/* [64 x 128] float rows src + i*rs (rows >= nvalid zero) -> bf16 dst[i*TC_LDB + c]; all 16
 * float4 loads of a thread issued before the first store. */
__device__ __forceinline__ void stage_rows_bf16(bf16 *dst, const float *src, size_t rs, int nvalid)
{
    float4 x[TC_C * TC_D / 4 / 128];
#pragma unroll
    for (int u = 0; u < TC_C * TC_D / 4 / 128; u++) {
        const int f = threadIdx.x + 128 * u, i = f >> 5, c = (f & 31) * 4;
        x[u] = i < nvalid ? *reinterpret_cast<const float4 *>(src + (size_t)i * rs + c) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int u = 0; u < TC_C * TC_D / 4 / 128; u++) {
        const int f = threadIdx.x + 128 * u, i = f >> 5, c = (f & 31) * 4;
        uint2 p;
        p.x = pack_bf16(x[u].x, x[u].y);
        p.y = pack_bf16(x[u].z, x[u].w);
        *reinterpret_cast<uint2 *>(dst + i * TC_LDB + c) = p;
    }
}
/* The same from bf16 rows (q, k, v already rounded as above: a copy, the same bits). */
__device__ __forceinline__ void stage_rows_bf16(bf16 *dst, const bf16 *src, size_t rs, int nvalid)
{
    uint2 x[TC_C * TC_D / 4 / 128];
#pragma unroll
    for (int u = 0; u < TC_C * TC_D / 4 / 128; u++) {
        const int f = threadIdx.x + 128 * u, i = f >> 5, c = (f & 31) * 4;
        x[u] = i < nvalid ? *reinterpret_cast<const uint2 *>(src + (size_t)i * rs + c) : make_uint2(0u, 0u);
    }
#pragma unroll
    for (int u = 0; u < TC_C * TC_D / 4 / 128; u++) {
        const int f = threadIdx.x + 128 * u, i = f >> 5, c = (f & 31) * 4;
        *reinterpret_cast<uint2 *>(dst + i * TC_LDB + c) = x[u];
    }
}

/* Dot product of 32 floats at a (shared, 16-byte aligned) with x[0..31], as four interleaved
 * partial sums added pairwise (short dependent chains). */
__device__ __forceinline__ float tc_dot32(const float *a, const float (&x)[32])
{
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma unroll
    for (int m = 0; m < 32; m += 4) {
        const float4 l4 = *reinterpret_cast<const float4 *>(a + m);
        s0 += l4.x * x[m];
        s1 += l4.y * x[m + 1];
        s2 += l4.z * x[m + 2];
        s3 += l4.w * x[m + 3];
    }
    return (s0 + s1) + (s2 + s3);
}

/* T = (I + L)^-1 for the strictly lower triangular L [64 x 64] (float, row stride TC_LDL, zero on
 * and above the diagonal) by 32 x 32 blocks:
 *   I + L = [[A, 0], [C, B]]  ->  T = [[A^-1, 0], [-B^-1 C A^-1, B^-1]],
 * A^-1 and B^-1 by forward substitution (tc_solve_diag: one column per thread of a group of 64,
 * x_i = [i == j] - sum_{m < i} L[i][m] x_m, a chain of 32 rows), then M = C A^-1 and -B^-1 M as
 * 32 x 32 x 32 products over the 128 threads (tc_solve_offdiag: 8 entries per thread, for NL
 * matrices at once), each stage written back over the block of L it replaces. Then
 * TA = bf16(T diag(beta)), TB = bf16(T diag(beta exp(G))) (tc_t_to_bf16). */

/* The diagonal blocks of L by thread lt (0..63) of a group: computes, then (after the block's
 * barrier, which every thread of the block reaches) stores its column. */
__device__ __forceinline__ void tc_solve_diag(float *L, int lt, bool active)
{
    float x[32];
    const int o = 32 * (lt >> 5), jl = lt & 31;
    if (active) {
#pragma unroll
        for (int i = 0; i < 32; i++) x[i] = 0.0f;
#pragma unroll
        for (int i = 0; i < 32; i++) {
            float a0 = i == jl ? 1.0f : 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            const float *Lr = L + (o + i) * TC_LDL + o;
#pragma unroll
            for (int m = 0; m < i; m += 4) {
                const float4 l4 = *reinterpret_cast<const float4 *>(Lr + m);
                a0 -= l4.x * x[m];
                a1 -= l4.y * x[m + 1];
                a2 -= l4.z * x[m + 2];
                a3 -= l4.w * x[m + 3];
            }
            x[i] = (a0 + a1) + (a2 + a3);
        }
    }
    __syncthreads(); /* the diagonal blocks of L are read */
    if (active) {
#pragma unroll
        for (int i = 0; i < 32; i++) L[(o + i) * TC_LDL + o + jl] = x[i];
    }
    __syncthreads();
}

/* M = C A^-1, then T21 = -B^-1 M, for each of the NL matrices Ls[], all 128 threads. */
template <int NL>
__device__ __forceinline__ void tc_solve_offdiag(float *const (&Ls)[NL])
{
    const int tid = threadIdx.x, c = tid & 31, r0 = 8 * (tid >> 5); /* entries: rows r0 .. r0 + 7, column c */
    float v[NL][8];
#pragma unroll
    for (int l = 0; l < NL; l++) { /* M = C A^-1 */
        float col[32];
#pragma unroll
        for (int m = 0; m < 32; m++) col[m] = Ls[l][m * TC_LDL + c];
#pragma unroll
        for (int k = 0; k < 8; k++) v[l][k] = tc_dot32(Ls[l] + (32 + r0 + k) * TC_LDL, col);
    }
    __syncthreads(); /* C is read */
#pragma unroll
    for (int l = 0; l < NL; l++)
#pragma unroll
        for (int k = 0; k < 8; k++) Ls[l][(32 + r0 + k) * TC_LDL + c] = v[l][k];
    __syncthreads();
#pragma unroll
    for (int l = 0; l < NL; l++) { /* T21 = -B^-1 M */
        float col[32];
#pragma unroll
        for (int m = 0; m < 32; m++) col[m] = Ls[l][(32 + m) * TC_LDL + c];
#pragma unroll
        for (int k = 0; k < 8; k++) v[l][k] = -tc_dot32(Ls[l] + (32 + r0 + k) * TC_LDL + 32, col);
    }
    __syncthreads(); /* M is read */
#pragma unroll
    for (int l = 0; l < NL; l++)
#pragma unroll
        for (int k = 0; k < 8; k++) Ls[l][(32 + r0 + k) * TC_LDL + c] = v[l][k];
    __syncthreads();
}

/* TA, TB from T (float, row stride TC_LDL): column j, rows 32 h .. 32 h + 31 per thread; T may lie
 * under TA, TB (read before the barrier, written after). */
__device__ __forceinline__ void tc_t_to_bf16(const float *Tm, bf16 *TA, bf16 *TB, const float *B, const float *EG)
{
    const int tid = threadIdx.x, j = tid & 63, h = tid >> 6;
    float t[32];
#pragma unroll
    for (int i = 0; i < 32; i++) t[i] = Tm[(32 * h + i) * TC_LDL + j];
    __syncthreads(); /* T is read: TA, TB may overwrite it */
    const float bj = B[j], bej = B[j] * EG[j];
#pragma unroll
    for (int i = 0; i < 32; i++) {
        TA[(32 * h + i) * TC_LDA + j] = __float2bfloat16_rn(t[i] * bj);
        TB[(32 * h + i) * TC_LDA + j] = __float2bfloat16_rn(t[i] * bej);
    }
}

/* v1's whole solve: threads 0-63 do the diagonal blocks, then all the products, TA and TB over L. */
__device__ __forceinline__ void tc_solve_unit_lower(float *L, bf16 *TA, bf16 *TB, const float *B, const float *EG)
{
    tc_solve_diag(L, threadIdx.x, threadIdx.x < 64);
    float *const Ls[1] = {L};
    tc_solve_offdiag<1>(Ls);
    tc_t_to_bf16(L, TA, TB, B, EG);
}

/* The L / T region holds L (float [C][TC_LDL]) until the solve has read it, then TA, TB. */
#define TC_LT_BYTES (TC_C * TC_LDL * 4 > 2 * TC_C * TC_LDA * 2 ? TC_C * TC_LDL * 4 : 2 * TC_C * TC_LDA * 2)
#define TC_PREP_SMEM (3 * TC_C * TC_LDB * 2 + TC_LT_BYTES + 3 * TC_C * 4)
/* v2: the same, with G, B, EG for two value heads */
#define TC_PREP2_SMEM (3 * TC_C * TC_LDB * 2 + TC_LT_BYTES + 6 * TC_C * 4)
static_assert(TC_C * TC_LDL * 4 <= TC_C * TC_LDB * 2, "v2: the second head's L fits in the q tile");

/* K K^T and Q K^T for warp w's rows 16 w .. 16 w + 15, columns j <= 16 w + 15 only (lower triangle):
 * kk[nt] / qk[nt] = the m16n8 accumulators of columns 8 nt .. 8 nt + 7. */
__device__ __forceinline__ void tc_kk_qk(float (&kk)[8][4], float (&qk)[8][4], const bf16 *Ks, const bf16 *Qs, int w,
                                         int lane)
{
#pragma unroll
    for (int a = 0; a < 8; a++)
#pragma unroll
        for (int e = 0; e < 4; e++) kk[a][e] = qk[a][e] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < TC_D / 16; ks++) {
        uint32_t ak[4], aq[4];
        ldsm4(ak, frag_a(Ks, TC_LDB, 16 * w, 16 * ks, lane));
        ldsm4(aq, frag_a(Qs, TC_LDB, 16 * w, 16 * ks, lane));
#pragma unroll
        for (int np = 0; np < 4; np++) {
            if (np > w) break;
            uint32_t b[4];
            ldsm4(b, frag_b_nk(Ks, TC_LDB, 16 * np, 16 * ks, lane));
            tc_mma(kk[2 * np], ak, b[0], b[1]);
            tc_mma(kk[2 * np + 1], ak, b[2], b[3]);
            tc_mma(qk[2 * np], aq, b[0], b[1]);
            tc_mma(qk[2 * np + 1], aq, b[2], b[3]);
        }
    }
}

/* One value head's L (shared, float) and Aqk (global, bf16) from K K^T and Q K^T, with G = cumsum(g)
 * and B = beta of that head: L[i][j] = B_i (k_i.k_j) exp(G_i - G_j) (j < i), Aqk[i][j] = (q_i.k_j)
 * exp(G_i - G_j) (j <= i). */
__device__ __forceinline__ void tc_l_aqk(float *L, bf16 *Ag, const float (&kk)[8][4], const float (&qk)[8][4],
                                         const float *G, const float *B, int w, int g8, int t4)
{
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int i = 16 * w + g8 + 8 * hf, j = 8 * nt + 2 * t4;
            float lv[2], av[2];
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int jj = j + e;
                /* __expf: ex2.approx of x log2(e), relative error < 1e-5 for the
                 * x = G_i - G_j >= -87 that do not underflow (below bf16's 4e-3 on
                 * Aqk and far below what the solve amplifies); 2 instructions against
                 * expf's ~10, 32 times per thread per head in this latency-bound kernel */
                const float dec = jj <= i ? __expf(G[i] - G[jj]) : 0.0f;
                lv[e] = jj < i ? B[i] * kk[nt][2 * hf + e] * dec : 0.0f;
                av[e] = qk[nt][2 * hf + e] * dec;
            }
            *reinterpret_cast<float2 *>(&L[i * TC_LDL + j]) = make_float2(lv[0], lv[1]);
            *reinterpret_cast<uint32_t *>(&Ag[i * TC_C + j]) = pack_bf16(av[0], av[1]);
        }
}

/* W = TB K (bf16 out, which 0) or U = TA V (float out, which 1) for warp w's 16 rows; T lower
 * triangular: k-blocks kb <= w only. */
__device__ __forceinline__ void tc_wu(int which, const bf16 *Ts, const bf16 *Xs, bf16 *Wg, float *Ug, int w, int lane,
                                      int g8, int t4)
{
    float acc[16][4];
#pragma unroll
    for (int a = 0; a < 16; a++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[a][e] = 0.0f;
#pragma unroll
    for (int kb = 0; kb < 4; kb++) {
        if (kb > w) break;
        uint32_t a[4];
        ldsm4(a, frag_a(Ts, TC_LDA, 16 * w, 16 * kb, lane));
#pragma unroll
        for (int np = 0; np < 8; np++) {
            uint32_t b[4];
            ldsm4t(b, frag_b_kn(Xs, TC_LDB, 16 * kb, 16 * np, lane));
            tc_mma(acc[2 * np], a, b[0], b[1]);
            tc_mma(acc[2 * np + 1], a, b[2], b[3]);
        }
    }
#pragma unroll
    for (int nt = 0; nt < 16; nt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int i = 16 * w + g8 + 8 * hf, d = 8 * nt + 2 * t4;
            if (which)
                *reinterpret_cast<float2 *>(&Ug[i * TC_D + d]) = make_float2(acc[nt][2 * hf], acc[nt][2 * hf + 1]);
            else
                *reinterpret_cast<uint32_t *>(&Wg[i * TC_D + d]) = pack_bf16(acc[nt][2 * hf], acc[nt][2 * hf + 1]);
        }
}

/* q, k of chunk n, key head kh (bf16, staged) to the scratch, once per key head. */
__device__ __forceinline__ void tc_store_qk(char *scr, const tc_layout &lay, int n, int kh, int NK, const bf16 *Qs,
                                            const bf16 *Ks)
{
    const size_t rk = ((size_t)n * NK + kh) * TC_C * TC_D;
    bf16 *Qg = reinterpret_cast<bf16 *>(scr + lay.q) + rk, *Kg = reinterpret_cast<bf16 *>(scr + lay.k) + rk;
    for (int f = threadIdx.x; f < TC_C * TC_D / 8; f += 128) {
        const int i = f >> 4, c = (f & 15) * 8;
        *reinterpret_cast<uint4 *>(Qg + i * TC_D + c) = *reinterpret_cast<const uint4 *>(Qs + i * TC_LDB + c);
        *reinterpret_cast<uint4 *>(Kg + i * TC_D + c) = *reinterpret_cast<const uint4 *>(Ks + i * TC_LDB + c);
    }
}

/* G = cumsum(g) of one head in place, in order, by one thread: all 64 loads in flight first. */
__device__ __forceinline__ void tc_cumsum(float *G)
{
    float gv[TC_C], acc = 0.0f;
#pragma unroll
    for (int i = 0; i < TC_C; i += 4) *reinterpret_cast<float4 *>(&gv[i]) = *reinterpret_cast<const float4 *>(&G[i]);
#pragma unroll
    for (int i = 0; i < TC_C; i++) {
        acc += gv[i];
        G[i] = acc;
    }
}

/* Pipelined runs: every thread's stores fenced, then the chunk's flag (tc_flag_release). */
__device__ __forceinline__ void tc_prep_done(int *flags, int n, int kh, int NK)
{
    if (flags) {
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) tc_flag_release(flags + (size_t)n * NK + kh);
    }
}

/* One block per (chunk n, key head kh): q, k staged once, then the r = NV/NK value heads of the
 * group in turn (K K^T and Q K^T recomputed per value head: the decays differ). q, k, v float32
 * (rounded to bf16 here) or bf16 (TI = bf16: rounded by the caller, the same bits). */
template <typename TI>
__global__ void __launch_bounds__(128, 3) tc_prep_kernel(char *scr, tc_layout lay, const TI *q, const TI *k,
                                                      const TI *v, const float *g, const float *beta, int T,
                                                      int NK, int NV, int *flags)
{
    extern __shared__ __align__(16) unsigned char sm_raw[];
    bf16 *Ks = reinterpret_cast<bf16 *>(sm_raw), *Qs = Ks + TC_C * TC_LDB, *Vs = Qs + TC_C * TC_LDB;
    unsigned char *LT = reinterpret_cast<unsigned char *>(Vs + TC_C * TC_LDB);
    float *L = reinterpret_cast<float *>(LT);
    bf16 *TA = reinterpret_cast<bf16 *>(LT), *TB = TA + TC_C * TC_LDA;
    float *G = reinterpret_cast<float *>(LT + TC_LT_BYTES), *B = G + TC_C, *EG = B + TC_C;
    /* grid (NK, nc): every key head of chunk n is dispatched before chunk n + 1, so a pipelined scan
     * (which walks the chunks in order) finds them done early */
    const int n = blockIdx.y, kh = blockIdx.x, r = NV / NK;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, g8 = lane >> 2, t4 = lane & 3;
    const int t0 = n * TC_C, nvalid = T - t0 < TC_C ? T - t0 : TC_C;
    stage_rows_bf16(Ks, k + ((size_t)t0 * NK + kh) * TC_D, (size_t)NK * TC_D, nvalid);
    stage_rows_bf16(Qs, q + ((size_t)t0 * NK + kh) * TC_D, (size_t)NK * TC_D, nvalid);
    __syncthreads();
    tc_store_qk(scr, lay, n, kh, NK, Qs, Ks);
#pragma unroll 1
    for (int h = kh * r; h < kh * r + r; h++) {
        __syncthreads(); /* the previous head's W/U products are done with Vs, TA, TB, G */
        stage_rows_bf16(Vs, v + ((size_t)t0 * NV + h) * TC_D, (size_t)NV * TC_D, nvalid);
        if (tid < TC_C) {
            G[tid] = tid < nvalid ? g[(size_t)(t0 + tid) * NV + h] : 0.0f;
            B[tid] = tid < nvalid ? beta[(size_t)(t0 + tid) * NV + h] : 0.0f;
        }
        __syncthreads();
        if (tid == 0) tc_cumsum(G);
        __syncthreads();
        if (tid < TC_C) EG[tid] = expf(G[tid]);
        const size_t rec = (size_t)n * NV + h;
        bf16 *Wg = reinterpret_cast<bf16 *>(scr + lay.w) + rec * TC_C * TC_D;
        bf16 *Ag = reinterpret_cast<bf16 *>(scr + lay.a) + rec * TC_C * TC_C;
        float *Ug = reinterpret_cast<float *>(scr + lay.u) + rec * TC_C * TC_D;
        float *Gg = reinterpret_cast<float *>(scr + lay.g) + rec * TC_C;
        {
            float kk[8][4], qk[8][4];
            tc_kk_qk(kk, qk, Ks, Qs, w, lane);
            tc_l_aqk(L, Ag, kk, qk, G, B, w, g8, t4);
        }
        __syncthreads();
        tc_solve_unit_lower(L, TA, TB, B, EG);
        __syncthreads();
#pragma unroll 1
        for (int which = 0; which < 2; which++)
            tc_wu(which, which ? TA : TB, which ? Vs : Ks, Wg, Ug, w, lane, g8, t4);
        if (tid < TC_C) Gg[tid] = G[tid];
    }
    tc_prep_done(flags, n, kh, NK);
}

/* 64 rows of 128 bf16 (row stride rs elements; rows >= nvalid zero) into dst[i * TC_LDB + c] by
 * cp.async, 8 16-byte copies a thread (not yet committed). */
__device__ __forceinline__ void tc_stage_async(bf16 *dst, const bf16 *src, size_t rs, int nvalid)
{
    const int c = (threadIdx.x & 15) * 8, i0 = threadIdx.x >> 4;
#pragma unroll
    for (int u = 0; u < TC_C / 8; u++) {
        const int i = i0 + 8 * u, ok = i < nvalid;
        cp_async16(dst + i * TC_LDB + c, src + (size_t)(ok ? i : 0) * rs + c, ok ? 16 : 0);
    }
}

/* v2 (session 13; bf16 q, k, v and NV == 2 NK): one block per (chunk n, key head kh) takes both
 * value heads h0 = 2 kh, h1 = 2 kh + 1 together. v1 spends ~18 % of its stall samples on K K^T and Q K^T,
 * ~17 % on its register-staged loads of v and ~18 % on the diagonal forward substitution, which
 * leaves two of its four warps idle (ncu, session 13: fast/cuda/dev/logs/session13_c1_ncudelta_*).
 * Here:
 *   - q, k, v(h0) arrive by cp.async; v(h1) by cp.async while W(h0) is computed;
 *   - K K^T and Q K^T once, then L and Aqk of both heads (L(h1) in the q tile, free by then);
 *   - the two heads' diagonal substitutions side by side (threads 0-63 h0, 64-127 h1), and their
 *     off-diagonal products in the same phases (one set of barriers);
 *   - U(h0) first (the last use of v(h0)), then W(h0) beside v(h1)'s copy.
 * Every value goes through v1's float operations in v1's order: the scratch is bitwise v1's
 * (dev/test_delta_tc). Shared memory: v1's, plus G, B, exp(G) of the second head (70.5 KB). */
__global__ void __launch_bounds__(128, 3) tc_prep2_kernel(char *scr, tc_layout lay, const bf16 *q, const bf16 *k,
                                                       const bf16 *v, const float *g, const float *beta, int T,
                                                       int NK, int NV, int *flags)
{
    extern __shared__ __align__(16) unsigned char sm_raw[];
    bf16 *Ks = reinterpret_cast<bf16 *>(sm_raw), *Qs = Ks + TC_C * TC_LDB, *Vs = Qs + TC_C * TC_LDB;
    unsigned char *LT = reinterpret_cast<unsigned char *>(Vs + TC_C * TC_LDB);
    float *L0 = reinterpret_cast<float *>(LT), *L1 = reinterpret_cast<float *>(Qs);
    bf16 *TA = reinterpret_cast<bf16 *>(LT), *TB = TA + TC_C * TC_LDA;
    float *G = reinterpret_cast<float *>(LT + TC_LT_BYTES), *B = G + 2 * TC_C, *EG = B + 2 * TC_C; /* [2][C] each */
    const int n = blockIdx.y, kh = blockIdx.x, h0 = 2 * kh;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, g8 = lane >> 2, t4 = lane & 3;
    const int t0 = n * TC_C, nvalid = T - t0 < TC_C ? T - t0 : TC_C;
    tc_stage_async(Ks, k + ((size_t)t0 * NK + kh) * TC_D, (size_t)NK * TC_D, nvalid);
    tc_stage_async(Qs, q + ((size_t)t0 * NK + kh) * TC_D, (size_t)NK * TC_D, nvalid);
    tc_stage_async(Vs, v + ((size_t)t0 * NV + h0) * TC_D, (size_t)NV * TC_D, nvalid);
    cp_async_commit();
    { /* g and beta of both heads: thread tid < 64 row tid of h0, else row tid - 64 of h1 */
        const int hs = tid >> 6, i = tid & 63;
        G[hs * TC_C + i] = i < nvalid ? g[(size_t)(t0 + i) * NV + h0 + hs] : 0.0f;
        B[hs * TC_C + i] = i < nvalid ? beta[(size_t)(t0 + i) * NV + h0 + hs] : 0.0f;
    }
    __syncthreads();
    if ((tid & 63) == 0) tc_cumsum(G + (tid >> 6) * TC_C); /* threads 0 and 64: one head each */
    cp_async_wait<0>();
    __syncthreads(); /* G of both heads, and q, k, v(h0) staged */
    EG[tid] = expf(G[tid]);
    tc_store_qk(scr, lay, n, kh, NK, Qs, Ks);
    const size_t rec0 = (size_t)n * NV + h0;
    {
        float kk[8][4], qk[8][4];
        tc_kk_qk(kk, qk, Ks, Qs, w, lane);
        __syncthreads(); /* every warp is done with the q tile: L(h1) takes it */
        tc_l_aqk(L0, reinterpret_cast<bf16 *>(scr + lay.a) + rec0 * TC_C * TC_C, kk, qk, G, B, w, g8, t4);
        tc_l_aqk(L1, reinterpret_cast<bf16 *>(scr + lay.a) + (rec0 + 1) * TC_C * TC_C, kk, qk, G + TC_C, B + TC_C, w,
                 g8, t4);
    }
    __syncthreads();
    tc_solve_diag(tid < 64 ? L0 : L1, tid & 63, true);
    {
        float *const Ls[2] = {L0, L1};
        tc_solve_offdiag<2>(Ls);
    }
    tc_t_to_bf16(L0, TA, TB, B, EG);
    __syncthreads();
    float *Ug = reinterpret_cast<float *>(scr + lay.u) + rec0 * TC_C * TC_D;
    bf16 *Wg = reinterpret_cast<bf16 *>(scr + lay.w) + rec0 * TC_C * TC_D;
    tc_wu(1, TA, Vs, Wg, Ug, w, lane, g8, t4); /* U(h0) = TA V */
    __syncthreads();                             /* v(h0) is read: v(h1) takes its tile */
    tc_stage_async(Vs, v + ((size_t)t0 * NV + h0 + 1) * TC_D, (size_t)NV * TC_D, nvalid);
    cp_async_commit();
    tc_wu(0, TB, Ks, Wg, Ug, w, lane, g8, t4); /* W(h0) = TB K */
    float *Gg = reinterpret_cast<float *>(scr + lay.g) + rec0 * TC_C;
    Gg[tid] = G[tid]; /* both heads' G: rec0 and rec0 + 1 are adjacent */
    __syncthreads(); /* TA, TB of h0 are read */
    tc_t_to_bf16(L1, TA, TB, B + TC_C, EG + TC_C);
    cp_async_wait<0>();
    __syncthreads(); /* TA, TB of h1 and v(h1) */
    tc_wu(0, TB, Ks, Wg + TC_C * TC_D, Ug + TC_C * TC_D, w, lane, g8, t4);
    tc_wu(1, TA, Vs, Wg + TC_C * TC_D, Ug + TC_C * TC_D, w, lane, g8, t4);
    tc_prep_done(flags, n, kh, NK);
}

/* ---- phase 2 ---- */
/* Block of 2*NVG warps = NVG value groups (16 columns each) x 2 halves of DK: warp w owns
 * S^T[16 columns of group w >> 1][64 rows d of half w & 1]. The products contracting over d
 * (S^T W^T, S^T Q^T) are summed over the warp pair through shared memory; the state update
 * needs no exchange. The O columns (chunk positions) are split between the pair. */
template <int NVG>
struct scan_stage {
    static constexpr int BV = 16 * NVG, LDU = BV + 4;
    static constexpr int W = 0, Q = W + TC_C * TC_LDB * 2, K = Q + TC_C * TC_LDB * 2, A = K + TC_C * TC_LDB * 2,
                         U = A + TC_C * TC_LDA * 2, G = U + TC_C * LDU * 4, BYTES = G + TC_C * 4;
    /* exchange area per warp: its partial V'^T (16 x 64) and the partner's half of O^T (16 x 32) */
    static constexpr int XV = 16 * TC_C, XO = 16 * TC_C / 2, XBYTES = 2 * NVG * (XV + XO) * 4;
    static constexpr int SMEM = 2 * BYTES + XBYTES;
};

template <int NVG>
__device__ __forceinline__ void scan_load(unsigned char *st, const char *scr, const tc_layout &lay, int n, int h,
                                          int kh, int NK, int NV, int c0)
{
    typedef scan_stage<NVG> S;
    const int tid = threadIdx.x, nt = NVG * 64;
    const size_t rec = (size_t)n * NV + h, rk = (size_t)n * NK + kh;
    const bf16 *Wg = reinterpret_cast<const bf16 *>(scr + lay.w) + rec * TC_C * TC_D;
    const bf16 *Qg = reinterpret_cast<const bf16 *>(scr + lay.q) + rk * TC_C * TC_D;
    const bf16 *Kg = reinterpret_cast<const bf16 *>(scr + lay.k) + rk * TC_C * TC_D;
    const bf16 *Ag = reinterpret_cast<const bf16 *>(scr + lay.a) + rec * TC_C * TC_C;
    const float *Ug = reinterpret_cast<const float *>(scr + lay.u) + rec * TC_C * TC_D;
    const float *Gg = reinterpret_cast<const float *>(scr + lay.g) + rec * TC_C;
    bf16 *Ws = reinterpret_cast<bf16 *>(st + S::W), *Qs = reinterpret_cast<bf16 *>(st + S::Q),
         *Ks = reinterpret_cast<bf16 *>(st + S::K), *As = reinterpret_cast<bf16 *>(st + S::A);
    float *Us = reinterpret_cast<float *>(st + S::U), *Gs = reinterpret_cast<float *>(st + S::G);
    for (int f = tid; f < TC_C * TC_D / 8; f += nt) {
        const int i = f >> 4, c = (f & 15) * 8;
        cp16(Ws + i * TC_LDB + c, Wg + i * TC_D + c);
        cp16(Qs + i * TC_LDB + c, Qg + i * TC_D + c);
        cp16(Ks + i * TC_LDB + c, Kg + i * TC_D + c);
    }
    for (int f = tid; f < TC_C * TC_C / 8; f += nt) {
        const int i = f >> 3, c = (f & 7) * 8;
        cp16(As + i * TC_LDA + c, Ag + i * TC_C + c);
    }
    for (int f = tid; f < TC_C * S::BV / 4; f += nt) {
        const int i = f / (S::BV / 4), c = (f % (S::BV / 4)) * 4;
        cp16(Us + i * S::LDU + c, Ug + i * TC_D + c0 + c);
    }
    if (tid < TC_C / 4) cp16(Gs + tid * 4, Gg + tid * 4);
}

__device__ __forceinline__ void pair_barrier(int id) { asm volatile("bar.sync %0, 64;\n" ::"r"(id)); }

template <int NVG>
__global__ void __launch_bounds__(NVG * 64, 1) tc_scan_kernel(bf16 *o, float *state, const char *scr, tc_layout lay,
                                                              int T, int NK, int NV, int nc)
{
    typedef scan_stage<NVG> S;
    extern __shared__ __align__(16) unsigned char sm_raw[];
    const int h = blockIdx.y, kh = h / (NV / NK), c0 = blockIdx.x * S::BV;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, vg = w >> 1, dh = w & 1;
    const int g8 = lane >> 2, t4 = lane & 3, d0 = 64 * dh;
    const int vl = 16 * vg + g8; /* this thread's value columns (local): vl, vl + 8 */
    float *Xv = reinterpret_cast<float *>(sm_raw + 2 * S::BYTES), *Xo = Xv + 2 * NVG * S::XV;
    float *myXv = Xv + w * S::XV, *myXo = Xo + w * S::XO;
    const float *paXv = Xv + (w ^ 1) * S::XV, *paXo = Xo + (w ^ 1) * S::XO;
    float *Sg = state + (size_t)h * TC_D * TC_D;
    /* S^T accumulators: s[nt][e] = S[d0 + 8 nt + 2 t4 + (e & 1)][c0 + vl + 8 (e >> 1)] */
    float s[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) s[nt][e] = Sg[(d0 + 8 * nt + 2 * t4 + (e & 1)) * TC_D + c0 + vl + 8 * (e >> 1)];
    scan_load<NVG>(sm_raw, scr, lay, 0, h, kh, NK, NV, c0);
    cp_commit();
#pragma unroll 1
    for (int n = 0; n < nc; n++) {
        if (n + 1 < nc) scan_load<NVG>(sm_raw + ((n + 1) & 1) * S::BYTES, scr, lay, n + 1, h, kh, NK, NV, c0);
        cp_commit();
        cp_wait1();
        __syncthreads();
        const unsigned char *st = sm_raw + (n & 1) * S::BYTES;
        const bf16 *Ws = reinterpret_cast<const bf16 *>(st + S::W), *Qs = reinterpret_cast<const bf16 *>(st + S::Q),
                   *Ks = reinterpret_cast<const bf16 *>(st + S::K), *As = reinterpret_cast<const bf16 *>(st + S::A);
        const float *Us = reinterpret_cast<const float *>(st + S::U), *Gs = reinterpret_cast<const float *>(st + S::G);
        /* partials over this warp's d half: V'^T = [U^T] - S^T W^T, P = -(S^T Q^T); A = -S^T in bf16 */
        float vt[8][4], ot[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                vt[nt][e] = dh == 0 ? Us[(8 * nt + 2 * t4 + (e & 1)) * S::LDU + vl + 8 * (e >> 1)] : 0.0f;
                ot[nt][e] = 0.0f;
            }
#pragma unroll
        for (int ks = 0; ks < 4; ks++) {
            uint32_t a[4];
            a[0] = pack_bf16(-s[2 * ks][0], -s[2 * ks][1]);
            a[1] = pack_bf16(-s[2 * ks][2], -s[2 * ks][3]);
            a[2] = pack_bf16(-s[2 * ks + 1][0], -s[2 * ks + 1][1]);
            a[3] = pack_bf16(-s[2 * ks + 1][2], -s[2 * ks + 1][3]);
#pragma unroll
            for (int np = 0; np < 4; np++) {
                uint32_t b[4], bq[4];
                ldsm4(b, frag_b_nk(Ws, TC_LDB, 16 * np, d0 + 16 * ks, lane));
                ldsm4(bq, frag_b_nk(Qs, TC_LDB, 16 * np, d0 + 16 * ks, lane));
                tc_mma(vt[2 * np], a, b[0], b[1]);
                tc_mma(vt[2 * np + 1], a, b[2], b[3]);
                tc_mma(ot[2 * np], a, bq[0], bq[1]);
                tc_mma(ot[2 * np + 1], a, bq[2], bq[3]);
            }
        }
        /* pair sum (a + b == b + a: both warps get the same bits); O columns of half dh stay here */
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                myXv[(nt * 4 + e) * 32 + lane] = vt[nt][e];
                if ((nt >> 2) != dh) myXo[((nt & 3) * 4 + e) * 32 + lane] = ot[nt][e];
            }
        pair_barrier(1 + vg);
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                vt[nt][e] += paXv[(nt * 4 + e) * 32 + lane];
                if ((nt >> 2) == dh) ot[nt][e] += paXo[((nt & 3) * 4 + e) * 32 + lane];
            }
        /* column scales: exp(G_i) for O, exp(G_C - G_i) for the state update */
        const float gC = Gs[TC_C - 1];
        uint32_t av[4][4], ad[4][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            if ((nt >> 2) != dh) continue;
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const float eg = -expf(Gs[8 * nt + 2 * t4 + e]);
                ot[nt][e] *= eg;
                ot[nt][e + 2] *= eg;
            }
        }
#pragma unroll
        for (int kb = 0; kb < 4; kb++)
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                const int nt = 2 * kb + hh;
                const float e0 = expf(gC - Gs[8 * nt + 2 * t4]), e1 = expf(gC - Gs[8 * nt + 2 * t4 + 1]);
                av[kb][2 * hh] = pack_bf16(vt[nt][0], vt[nt][1]);
                av[kb][2 * hh + 1] = pack_bf16(vt[nt][2], vt[nt][3]);
                ad[kb][2 * hh] = pack_bf16(vt[nt][0] * e0, vt[nt][1] * e1);
                ad[kb][2 * hh + 1] = pack_bf16(vt[nt][2] * e0, vt[nt][3] * e1);
            }
        /* O^T += V'^T Aqk^T for i-blocks np of this half (Aqk lower triangular: kb <= np) */
#pragma unroll
        for (int np = 0; np < 4; np++) {
            if ((np >> 1) != dh) continue;
#pragma unroll
            for (int kb = 0; kb < 4; kb++) {
                if (kb > np) continue;
                uint32_t b[4];
                ldsm4(b, frag_b_nk(As, TC_LDA, 16 * np, 16 * kb, lane));
                tc_mma(ot[2 * np], av[kb], b[0], b[1]);
                tc_mma(ot[2 * np + 1], av[kb], b[2], b[3]);
            }
        }
        /* S^T <- exp(G_C) S^T + (V'^T diag(exp(G_C - G))) K[:, d half] */
        const float eC = expf(gC);
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[nt][e] *= eC;
#pragma unroll
        for (int kb = 0; kb < 4; kb++)
#pragma unroll
            for (int np = 0; np < 4; np++) {
                uint32_t b[4];
                ldsm4t(b, frag_b_kn(Ks, TC_LDB, 16 * kb, d0 + 16 * np, lane));
                tc_mma(s[2 * np], ad[kb], b[0], b[1]);
                tc_mma(s[2 * np + 1], ad[kb], b[2], b[3]);
            }
        /* o[t][h][c0 + v] for this half's chunk positions */
        const int t0 = n * TC_C;
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            if ((nt >> 2) != dh) continue;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int t = t0 + 8 * nt + 2 * t4 + (e & 1);
                if (t < T) o[((size_t)t * NV + h) * TC_D + c0 + vl + 8 * (e >> 1)] = __float2bfloat16_rn(ot[nt][e]);
            }
        }
        __syncthreads(); /* this stage's buffer and the exchange area are reused next iteration */
    }
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) Sg[(d0 + 8 * nt + 2 * t4 + (e & 1)) * TC_D + c0 + vl + 8 * (e >> 1)] = s[nt][e];
}

template <int NVG>
static enum q3n_status tc_scan_launch(bf16 *o, float *state, const char *scr, const tc_layout &lay, int T, int NK,
                                      int NV, int nc, cudaStream_t stream, struct q3n_error *err)
{
    const int smem = scan_stage<NVG>::SMEM;
    CU_CHECK(cudaFuncSetAttribute(tc_scan_kernel<NVG>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    tc_scan_kernel<NVG><<<dim3(TC_D / scan_stage<NVG>::BV, (unsigned)NV), NVG * 64, smem, stream>>>(o, state, scr, lay,
                                                                                                  T, NK, NV, nc);
    CU_LAUNCHED("delta_rule tc_scan_kernel");
    return Q3N_OK;
}

/* The default scan block (4 warps, 32 columns): 1.32 ms at T=16384 NV=32 on H100, against 2.01
 * (2 warps) and 1.61 (8 warps). */
#define TC_SCAN_WARPS_DEFAULT 4
static int tc_scan_smem_max(void) { return scan_stage<TC_SCAN_WARPS_DEFAULT / 2>::SMEM; }

extern "C" int cuda_delta_rule_chunked_tc_has_v3(void) { return tc_scan3_ok(); }

extern "C" const char *cuda_delta_rule_chunked_tc_kernel(void)
{
    return tc_scan3_ok() ? "chunk_tc_v3(bf16 mma.sync prep per (chunk, key head) + wgmma scan v3, S^T in fp32 accumulators of one warpgroup per 64 value columns)"
                         : "chunk_tc_v2(bf16 mma.sync prep per (chunk, key head) + scan, S^T in fp32 accumulators, warp pairs split DK, cp.async x2)";
}

/* scan_warps: Q3N_TC_SCAN_V3 for scan v3 (deltanet_tc_scan3.cu, compute capability 9.0), or the
 * warps per v2 scan block, 2, 4 or 8 (a pair of warps per 16 value columns, splitting DK); 0 picks
 * (v3 where it runs, else v2 with 4 warps); -1 runs the prep kernel alone (timing only: o and
 * state untouched). TI: the type of q, k, v. */
/* The pipelined run waits inside the scan's blocks for the prep's, so the prep must always find an
 * SM: with more SMs than scan blocks (2 NV at DV = 128) one SM at least holds no scan block. (A prep
 * block would also fit beside a scan block, 69.75 + 149.5 KB of shared memory, 168 + 197 registers a
 * thread over 128 + 128 threads; since session 13 the scan takes enough shared memory to keep prep
 * blocks off its SMs: tc_scan_keep_off.) */
static int tc_pipe_progress(int64_t NV)
{
    int dev = 0, sms = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
        cudaGetLastError(); /* clear: the answer is just "no" */
        return 0;
    }
    return sms > 2 * NV;
}

extern "C" int cuda_delta_rule_chunked_tc_pipes(int64_t NV)
{
    return tc_scan3_ok() && tc_pipe_progress(NV);
}

/* The prep's default. Session 13 (H100, dev/test_delta_tc --pipe, fast/cuda/dev/logs/session13_*): v2
 * alone is faster (T = 4096 0.134 -> 0.114 ms, T = 16384 0.455 -> 0.382). Pipelined with prep blocks
 * beside the scan's, it is not (0.217 -> 0.218 ms, 0.767 -> 0.805: a denser prep slows the scan on
 * its SM); with the scan's SMs kept to the scan (tc_scan_keep_off) it is: 0.215 -> 0.211 and
 * 0.767 -> 0.719 against v1 beside the scan (session13_pad_*). */
#ifndef TC_PREP_DEFAULT_VER /* EXTRA_NVCCFLAGS=-DTC_PREP_DEFAULT_VER=1: v1, a value head at a time */
#define TC_PREP_DEFAULT_VER 2
#endif
#ifndef TC_PREP_PIPED_VER /* the same for pipelined runs */
#define TC_PREP_PIPED_VER 2
#endif
#ifndef TC_SCAN_EXCLUSIVE /* EXTRA_NVCCFLAGS=-DTC_SCAN_EXCLUSIVE=0: prep blocks may sit beside a scan block */
#define TC_SCAN_EXCLUSIVE 1
#endif

/* Pipelined runs: the shared memory a scan block takes beyond its own so that no prep block of
 * prep_smem bytes fits on its SM (the scan's chain is the pipeline's critical path and slows with a
 * prep block beside it), or 0 (TC_SCAN_EXCLUSIVE off, or the device cannot give that much). */
static int tc_scan_keep_off(int prep_smem)
{
    int dev = 0, per_sm = 0, reserved = 0, optin = 0;
    if (!TC_SCAN_EXCLUSIVE || cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
        cudaGetLastError(); /* clear: no keeping off */
        return 0;
    }
    const int pad = per_sm - (tc_scan3_smem() + reserved) - (prep_smem + reserved) + 1024; /* + allocation slack */
    return pad > 0 && tc_scan3_smem() + pad <= optin ? pad : 0;
}

/* The prep the bf16 path runs by default, piped or not: v2 only where a key head has two value heads. */
extern "C" int cuda_delta_rule_tc_prep_ver_for(int64_t NK, int64_t NV, int piped)
{
    return (piped ? TC_PREP_PIPED_VER : TC_PREP_DEFAULT_VER) == 2 && NV == 2 * NK ? 2 : 1;
}

/* The dynamic shared memory of prep version ver's block. */
static int tc_prep_smem(int ver) { return ver == 2 ? TC_PREP2_SMEM : TC_PREP_SMEM; }

template <typename TI>
static enum q3n_status tc_prep_launch(int ver, char *scr, const tc_layout &lay, const TI *d_q, const TI *d_k,
                                      const TI *d_v, const float *d_g, const float *d_beta, int T, int NK, int NV,
                                      int nc, int *flags, cudaStream_t stream, struct q3n_error *err)
{
    const dim3 grid((unsigned)NK, (unsigned)nc);
    if constexpr (std::is_same<TI, bf16>::value) {
        if (ver == 2) {
            CU_CHECK(cudaFuncSetAttribute(tc_prep2_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, tc_prep_smem(2)));
            tc_prep2_kernel<<<grid, 128, tc_prep_smem(2), stream>>>(scr, lay, d_q, d_k, d_v, d_g, d_beta, T, NK, NV,
                                                                    flags);
            CU_LAUNCHED("delta_rule tc_prep2_kernel");
            return Q3N_OK;
        }
    }
    CU_CHECK(cudaFuncSetAttribute(tc_prep_kernel<TI>, cudaFuncAttributeMaxDynamicSharedMemorySize, tc_prep_smem(1)));
    tc_prep_kernel<TI><<<grid, 128, tc_prep_smem(1), stream>>>(scr, lay, d_q, d_k, d_v, d_g, d_beta, T, NK, NV, flags);
    CU_LAUNCHED("delta_rule tc_prep_kernel");
    return Q3N_OK;
}

/* prep_ver: 0 the default (cuda_delta_rule_tc_prep_ver_for for bf16 q, k, v; v1 for float32), 1, or 2
 * (bf16 and NV == 2 NK only). */
template <typename TI>
static enum q3n_status tc_run(void *d_o, float *d_state, const TI *d_q, const TI *d_k, const TI *d_v,
                              const float *d_g, const float *d_beta, float *d_scratch, int64_t T, int64_t NK,
                              int64_t NV, int64_t DK, int64_t DV, int64_t C, int scan_warps, int prep_ver,
                              cudaStream_t stream, const struct cuda_tc_pipe *pipe, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && NK > 0 && NV % NK == 0 && prep_ver >= 0 && prep_ver <= 2);
    const int bf16_in = std::is_same<TI, bf16>::value;
    if (scan_warps == 0) scan_warps = tc_scan3_ok() ? Q3N_TC_SCAN_V3 : TC_SCAN_WARPS_DEFAULT;
    const int piped = pipe && scan_warps == Q3N_TC_SCAN_V3 && cuda_delta_rule_chunked_tc_pipes(NV);
    if (prep_ver == 0) prep_ver = bf16_in ? cuda_delta_rule_tc_prep_ver_for(NK, NV, piped) : 1;
    if (prep_ver == 2 && !(bf16_in && NV == 2 * NK))
        return q3n_error_set(err, Q3N_ERR_USAGE, "cuda delta rule tc: prep v2 needs bf16 q, k, v and NV == 2 NK (got NK=%lld NV=%lld)",
                             (long long)NK, (long long)NV);
    if (!cuda_delta_rule_chunked_tc_supported(DK, DV, C))
        return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "cuda delta rule tc: needs DK=DV=128, C=64 (got %lld %lld %lld) and ~163 KB of shared memory per block",
                             (long long)DK, (long long)DV, (long long)C);
    if (T == 0) return Q3N_OK;
    const int64_t nc = (T + TC_C - 1) / TC_C;
    Q3N_REQUIRE(T <= INT32_MAX / 4 && NV <= 65535 && nc <= 65535);
    const tc_layout lay = tc_layout_of(nc, NK, NV);
    char *scr = reinterpret_cast<char *>(d_scratch);
    int *flags = NULL;
    if (piped) {
        /* pipelined (see cuda_delta_rule_chunked_tc_bf16_piped): flags cleared, the scan's stream
         * forked after that, the prep launched first so that its first wave fills the GPU */
        flags = reinterpret_cast<int *>(scr + lay.flags);
        CU_CHECK(cudaMemsetAsync(flags, 0, sizeof(int) * (size_t)(nc * NK), stream));
        CU_CHECK(cudaEventRecord(pipe->fork, stream));
        CU_CHECK(cudaStreamWaitEvent(pipe->stream, pipe->fork, 0));
    }
    Q3N_TRY(tc_prep_launch<TI>(prep_ver, scr, lay, d_q, d_k, d_v, d_g, d_beta, (int)T, (int)NK, (int)NV, (int)nc, flags,
                               stream, err));
    if (scan_warps < 0) return Q3N_OK; /* prep only (timing) */
    bf16 *o = reinterpret_cast<bf16 *>(d_o);
    if (flags) {
        Q3N_TRY(tc_scan3_launch(o, d_state, scr, lay, (int)T, (int)NK, (int)NV, (int)nc, flags,
                                tc_scan_keep_off(tc_prep_smem(prep_ver)), pipe->stream, err));
        CU_CHECK(cudaEventRecord(pipe->join, pipe->stream));
        CU_CHECK(cudaStreamWaitEvent(stream, pipe->join, 0));
        return Q3N_OK;
    }
    switch (scan_warps) {
    case Q3N_TC_SCAN_V3:
        if (!tc_scan3_ok()) return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "cuda delta rule tc: scan v3 needs compute capability 9.0");
        return tc_scan3_launch(o, d_state, scr, lay, (int)T, (int)NK, (int)NV, (int)nc, NULL, 0, stream, err);
    case 2: return tc_scan_launch<1>(o, d_state, scr, lay, (int)T, (int)NK, (int)NV, (int)nc, stream, err);
    case 4: return tc_scan_launch<2>(o, d_state, scr, lay, (int)T, (int)NK, (int)NV, (int)nc, stream, err);
    case 8: return tc_scan_launch<4>(o, d_state, scr, lay, (int)T, (int)NK, (int)NV, (int)nc, stream, err);
    default: return q3n_error_set(err, Q3N_ERR_USAGE, "cuda delta rule tc: scan_warps %d", scan_warps);
    }
}

extern "C" enum q3n_status cuda_delta_rule_chunked_tc(void *d_o, float *d_state, const float *d_q, const float *d_k,
                                                      const float *d_v, const float *d_g, const float *d_beta,
                                                      float *d_scratch, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                                                      int64_t DV, int64_t C, int scan_warps, cudaStream_t stream,
                                                      struct q3n_error *err)
{
    return tc_run<float>(d_o, d_state, d_q, d_k, d_v, d_g, d_beta, d_scratch, T, NK, NV, DK, DV, C, scan_warps, 0,
                         stream, NULL, err);
}

extern "C" enum q3n_status cuda_delta_rule_chunked_tc_bf16(void *d_o, float *d_state, const void *d_q, const void *d_k,
                                                           const void *d_v, const float *d_g, const float *d_beta,
                                                           float *d_scratch, int64_t T, int64_t NK, int64_t NV,
                                                           int64_t DK, int64_t DV, int64_t C, int scan_warps,
                                                           cudaStream_t stream, struct q3n_error *err)
{
    return cuda_delta_rule_chunked_tc_bf16_piped(d_o, d_state, d_q, d_k, d_v, d_g, d_beta, d_scratch, T, NK, NV, DK,
                                                 DV, C, scan_warps, stream, NULL, err);
}

extern "C" enum q3n_status cuda_delta_rule_chunked_tc_bf16_piped(void *d_o, float *d_state, const void *d_q,
                                                                 const void *d_k, const void *d_v, const float *d_g,
                                                                 const float *d_beta, float *d_scratch, int64_t T,
                                                                 int64_t NK, int64_t NV, int64_t DK, int64_t DV,
                                                                 int64_t C, int scan_warps, cudaStream_t stream,
                                                                 const struct cuda_tc_pipe *pipe,
                                                                 struct q3n_error *err)
{
    return cuda_delta_rule_chunked_tc_bf16_ver(d_o, d_state, d_q, d_k, d_v, d_g, d_beta, d_scratch, T, NK, NV, DK, DV,
                                               C, scan_warps, 0, stream, pipe, err);
}

extern "C" enum q3n_status cuda_delta_rule_chunked_tc_bf16_ver(void *d_o, float *d_state, const void *d_q,
                                                               const void *d_k, const void *d_v, const float *d_g,
                                                               const float *d_beta, float *d_scratch, int64_t T,
                                                               int64_t NK, int64_t NV, int64_t DK, int64_t DV,
                                                               int64_t C, int scan_warps, int prep_ver,
                                                               cudaStream_t stream, const struct cuda_tc_pipe *pipe,
                                                               struct q3n_error *err)
{
    /* v1 stages 8-byte pieces, v2 copies 16-byte ones (cp.async): a default run on 8-byte aligned
     * views takes v1, the same bits */
    const uintptr_t a = (uintptr_t)d_q | (uintptr_t)d_k | (uintptr_t)d_v;
    if ((a & 7) != 0) return q3n_error_set(err, Q3N_ERR_USAGE, "cuda delta rule tc: bf16 q, k, v must be 8-byte aligned");
    if ((a & 15) != 0) {
        if (prep_ver == 2)
            return q3n_error_set(err, Q3N_ERR_USAGE, "cuda delta rule tc: prep v2 needs 16-byte aligned q, k, v");
        prep_ver = 1;
    }
    return tc_run<bf16>(d_o, d_state, (const bf16 *)d_q, (const bf16 *)d_k, (const bf16 *)d_v, d_g, d_beta, d_scratch,
                        T, NK, NV, DK, DV, C, scan_warps, prep_ver, stream, pipe, err);
}

