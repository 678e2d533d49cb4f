/* deltanet_tc_scan3.cu — scan v3 of the tensor-core chunked delta rule: the sequential phase on
 * Hopper warpgroup MMAs (wgmma). Reads what tc_prep_kernel (deltanet_tc.cu) wrote; the same maths
 * as scan v2 there, per chunk n of head h, with S [DK x DV] the state before the chunk and
 * G the cumulative log decay inside it (G_C its last entry):
 *
 *   V'^T = U^T - S^T W^T                          (the chunk's values less what S already predicts)
 *   O^T  = (S^T Q^T) diag(exp(G)) + V'^T Aqk^T     (Aqk lower triangular, decays folded in by the prep)
 *   S^T <- exp(G_C) S^T + (V'^T diag(exp(G_C - G))) K
 *
 * One block = one warpgroup (128 threads) per (64 value columns, head): S^T [64 v x 128 d] lives in
 * float32 wgmma accumulators for the whole sequence (64 registers a thread). Per chunk, three
 * batches of wgmma with the A operand in registers (wgmma_rs.cuh):
 *   1. [-S^T W^T | -S^T Q^T] = (-S^T) [W; Q]^T    m64n128k16 x 8 (k = d), B = [W; Q] K-major
 *   2. O^T += V'^T Aqk^T                          m64n64k16 x 4  (k = chunk position), B K-major
 *   3. S^T += (V'^T diag(exp(G_C - G))) K          m64n128k16 x 4 (k = chunk position), B = K MN-major
 * (2 and 3 in one batch). The accumulator layout of a product is the A-fragment layout of the
 * next (wgmma_rs.cuh), so S and V' never leave registers; operands are rounded to bf16 exactly
 * where scan v2 rounds them (S, V', V' diag(exp(G_C - G))), the sums are float32. The chunk's
 * W, Q, K, Aqk (bf16, 128-byte swizzled tiles), U, G (float32) stream in by cp.async, one chunk
 * ahead; O^T goes out through shared memory as 128-byte rows. v2 issues ~1400 instructions per warp
 * and chunk at one warp per scheduler (ncu, session 5: 29 % issue slots, 3.3 cycles per
 * instruction); here the products are 16 instructions per warpgroup.
 * Not bitwise v2: the tensor core sums the k = 128 products in its own order. Bitwise
 * reproducible run to run (no atomics). */
#include "attention_kernels.cuh"
#include "deltanet_tc.cuh"
#include "wgmma_rs.cuh"

#define S3_BV 64          /* value columns per block */
#define S3_LDU (S3_BV + 4) /* float row stride of the U tile: conflict-free accumulator-order reads */
#define S3_LDO (S3_BV + 8) /* bf16 row stride of the O staging tile */

/* Shared memory, byte offsets from a 1024-aligned base. Two stages of chunk operands, then the
 * decay factors. The O staging tile [64 i][S3_LDO] bf16 takes the W/Q panels of the chunk's own
 * stage once the chunk's last wgmma batch has completed (session 12: 9 KB less, so that an SM holding
 * a scan block also holds one prep block, 149.5 + 69.75 KB, when the two run pipelined). */
struct s3_smem {
    static constexpr int WQ = 0;                          /* [128 rows: W 0-63, Q 64-127][128 d] bf16, 2 panels */
    static constexpr int K = WQ + 128 * TC_D * 2;         /* [64 i][128 d] bf16, 2 panels */
    static constexpr int A = K + TC_C * TC_D * 2;         /* [64 i][64 j] bf16, 1 panel */
    static constexpr int U = A + TC_C * TC_C * 2;         /* [64 i][S3_LDU] float */
    static constexpr int G = U + TC_C * S3_LDU * 4;       /* [64] float */
    static constexpr int STAGE = (G + TC_C * 4 + 1023) / 1024 * 1024;
    static constexpr int OS = WQ;                         /* in the chunk's stage: [64 i][S3_LDO] bf16 */
    static constexpr int E = 2 * STAGE;                   /* exp(G_i) [64], exp(G_C - G_i) [64], exp(G_C) */
    static constexpr int BYTES = E + (2 * TC_C + 4) * 4 + 1024; /* + alignment slack */
    static_assert(TC_C * S3_LDO * 2 <= K - WQ, "the O tile fits in the W/Q panels");
};

/* cp.async of chunk n's operands for head h, value columns c0.. into the stage at st. Thread tid
 * copies rows r0 + 8 u (r0 = tid / 16) at 16-byte column chunk c = tid % 16 of the W, Q, K and U
 * tiles, and rows tid / 8 + 16 u, chunk tid % 8 of Aqk: the swizzle (r % 8) is the same for all u,
 * so every copy is a fixed offset from two per-thread bases. */
__device__ __forceinline__ void s3_load(unsigned char *st, const char *scr, const tc_layout &lay, int n, int h, int kh,
                                        int NK, int NV, int c0)
{
    const int tid = threadIdx.x, r0 = tid >> 4, c = tid & 15, ra = tid >> 3, ca = tid & 7;
    const size_t rec = (size_t)n * NV + h, rk = (size_t)n * NK + kh;
    const bf16 *Wg = reinterpret_cast<const bf16 *>(scr + lay.w) + rec * TC_C * TC_D + r0 * TC_D + c * 8;
    const bf16 *Qg = reinterpret_cast<const bf16 *>(scr + lay.q) + rk * TC_C * TC_D + r0 * TC_D + c * 8;
    const bf16 *Kg = reinterpret_cast<const bf16 *>(scr + lay.k) + rk * TC_C * TC_D + r0 * TC_D + c * 8;
    const bf16 *Ag = reinterpret_cast<const bf16 *>(scr + lay.a) + rec * TC_C * TC_C + ra * TC_C + ca * 8;
    const float *Ug = reinterpret_cast<const float *>(scr + lay.u) + rec * TC_C * TC_D + c0 + r0 * TC_D + c * 4;
    const float *Gg = reinterpret_cast<const float *>(scr + lay.g) + rec * TC_C;
    unsigned char *sw = st + wg_off<128>(r0, c), *sk = st + s3_smem::K + wg_off<TC_C>(r0, c),
                  *su = st + s3_smem::U + r0 * S3_LDU * 4 + c * 16, *sa = st + s3_smem::A + wg_off<TC_C>(ra, ca);
#pragma unroll
    for (int u = 0; u < TC_C / 8; u++) { /* rows r0 + 8 u: 8 rows = 1024 bytes of a swizzled panel */
        cp_async16(sw + s3_smem::WQ + u * 1024, Wg + u * 8 * TC_D, 16);
        cp_async16(sw + s3_smem::WQ + TC_C * 128 + u * 1024, Qg + u * 8 * TC_D, 16);
        cp_async16(sk + u * 1024, Kg + u * 8 * TC_D, 16);
        cp_async16(su + u * 8 * S3_LDU * 4, Ug + u * 8 * TC_D, 16);
    }
#pragma unroll
    for (int u = 0; u < TC_C / 16; u++) cp_async16(sa + u * 2048, Ag + u * 16 * TC_C, 16);
    if (tid < TC_C / 4) cp_async16(st + s3_smem::G + tid * 16, Gg + tid * 4, 16);
}

/* stmatrix .x4 .trans: four 8x8 bf16 blocks given in the mma accumulator fragment layout (register
 * k: this thread's (row g, columns 2 tq, 2 tq + 1) of block k) are stored transposed; lanes
 * 8 k .. 8 k + 7 give the addresses of the 8 stored rows of block k (16 bytes each). */
__device__ __forceinline__ void stsm4t(bf16 *row, const uint32_t (&r)[4])
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(
                     (uint32_t)__cvta_generic_to_shared(row)),
                 "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
                 : "memory");
#endif
}

/* Accumulator element e of a thread (4 j + q, wgmma.cuh): row 16 warp + g + 8 (q / 2), column
 * 8 j + 2 tq + q % 2. Rows are value columns v (local), columns d (for S^T) or chunk positions. */
__global__ void __launch_bounds__(128, 1) tc_scan3_kernel(bf16 *o, float *state, const char *scr, tc_layout lay, int T,
                                                          int NK, int NV, int nc, const int *flags)
{
#ifdef Q3N_HAVE_WGMMA
    extern __shared__ unsigned char s3_raw[];
    const uint32_t sraw = (uint32_t)__cvta_generic_to_shared(s3_raw), sbase = (sraw + 1023u) & ~1023u;
    unsigned char *gbase = s3_raw + (sbase - sraw);
    float *E = reinterpret_cast<float *>(gbase + s3_smem::E);
    const int h = blockIdx.y, kh = h / (NV / NK), c0 = blockIdx.x * S3_BV;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, g = lane >> 2, tq = lane & 3;
    const int v0 = 16 * w + g; /* this thread's value columns (local): v0, v0 + 8 */
    float *Sg = state + (size_t)h * TC_D * TC_D + c0;

    float s[64]; /* S^T: s[4 j + q] = S[d = 8 j + 2 tq + q % 2][c0 + v0 + 8 (q / 2)] */
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int q = 0; q < 4; q++) s[4 * j + q] = Sg[(8 * j + 2 * tq + (q & 1)) * TC_D + v0 + 8 * (q >> 1)];

    if (flags) { /* pipelined: chunk 0 of this key head prepped (tc_flag_wait) */
        if (tid == 0) tc_flag_wait(flags + kh);
        __syncthreads();
    }
    s3_load(gbase, scr, lay, 0, h, kh, NK, NV, c0);
    cp_async_commit();
#pragma unroll 1
    for (int n = 0; n < nc; n++) {
        cp_async_wait<0>(); /* chunk n landed for this thread ... */
        wg_proxy_fence();   /* ... visible to the async proxy (wgmma) ... */
        if (flags && tid == 0 && n + 1 < nc) tc_flag_wait(flags + (size_t)(n + 1) * NK + kh);
        __syncthreads();    /* ... and for all; chunk n-1's stage, O tile and E are free; (pipelined) chunk n + 1 prepped */
        if (n + 1 < nc) s3_load(gbase + ((n + 1) & 1) * s3_smem::STAGE, scr, lay, n + 1, h, kh, NK, NV, c0);
        cp_async_commit();
        const uint32_t st = sbase + (n & 1) * s3_smem::STAGE;
        const float *Us = reinterpret_cast<const float *>(gbase + (n & 1) * s3_smem::STAGE + s3_smem::U);
        const float *Gs = reinterpret_cast<const float *>(gbase + (n & 1) * s3_smem::STAGE + s3_smem::G);

        /* 1. acc = (-S^T) [W; Q]^T: columns 0-63 -S^T W^T, 64-127 -S^T Q^T */
        uint32_t a[8][4];
#pragma unroll
        for (int ks = 0; ks < 8; ks++) {
            a[ks][0] = pack_bf16(-s[8 * ks], -s[8 * ks + 1]);
            a[ks][1] = pack_bf16(-s[8 * ks + 2], -s[8 * ks + 3]);
            a[ks][2] = pack_bf16(-s[8 * ks + 4], -s[8 * ks + 5]);
            a[ks][3] = pack_bf16(-s[8 * ks + 6], -s[8 * ks + 7]);
        }
        /* acc starts as [U^T | 0]: V'^T = U^T - S^T W^T summed onto U, as scan v2 does */
        float acc[64];
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) {
                acc[4 * j + q] = Us[(8 * j + 2 * tq + (q & 1)) * S3_LDU + v0 + 8 * (q >> 1)];
                acc[32 + 4 * j + q] = 0.0f;
            }
        wg_pin<64>(acc);
        wg_fence();
#pragma unroll
        for (int ks = 0; ks < 8; ks++)
            wg_mma_rs_kb_m64k16<128>(acc, a[ks], wg_desc(st + s3_smem::WQ + (ks >> 2) * (128 * 128) + (ks & 3) * 32));
        wg_commit();
        /* while it runs: the decay factors of the chunk */
        if (tid < TC_C) {
            const float gi = Gs[tid], gC = Gs[TC_C - 1];
            E[tid] = expf(gi);
            E[TC_C + tid] = expf(gC - gi);
            if (tid == 0) E[2 * TC_C] = expf(gC);
        }
        wg_wait<0>();
        wg_pin<64>(acc);
        __syncthreads(); /* E */

        /* acc[0..31] = V'^T; O^T partial = acc[32..63] * (-1) * exp(G_i) */
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const float2 eg = *reinterpret_cast<const float2 *>(E + 8 * j + 2 * tq); /* exp(G_i), exp(G_i+1) */
            acc[32 + 4 * j] *= -eg.x;
            acc[32 + 4 * j + 1] *= -eg.y;
            acc[32 + 4 * j + 2] *= -eg.x;
            acc[32 + 4 * j + 3] *= -eg.y;
        }
        uint32_t av[4][4], ad[4][4]; /* A fragments of V'^T and V'^T diag(exp(G_C - G)), k = chunk position */
#pragma unroll
        for (int kb = 0; kb < 4; kb++)
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                const int jj = 2 * kb + hh;
                const float2 ed = *reinterpret_cast<const float2 *>(E + TC_C + 8 * jj + 2 * tq);
                const float e0 = ed.x, e1 = ed.y;
                av[kb][2 * hh] = pack_bf16(acc[4 * jj], acc[4 * jj + 1]);
                av[kb][2 * hh + 1] = pack_bf16(acc[4 * jj + 2], acc[4 * jj + 3]);
                ad[kb][2 * hh] = pack_bf16(acc[4 * jj] * e0, acc[4 * jj + 1] * e1);
                ad[kb][2 * hh + 1] = pack_bf16(acc[4 * jj + 2] * e0, acc[4 * jj + 3] * e1);
            }
        const float eC = E[2 * TC_C];
#pragma unroll
        for (int e = 0; e < 64; e++) s[e] *= eC;
        float *oacc = acc + 32;
        wg_pin<32>(oacc);
        wg_pin<64>(s);
        /* 2. O^T += V'^T Aqk^T;  3. S^T += (V'^T diag(exp(G_C - G))) K */
        wg_fence();
#pragma unroll
        for (int kb = 0; kb < 4; kb++) wg_mma_rs_kb_m64k16<64>(oacc, av[kb], wg_desc(st + s3_smem::A + kb * 32));
#pragma unroll
        for (int kb = 0; kb < 4; kb++)
            wg_mma_rs_m64k16<128>(s, ad[kb], wg_desc_mn(st + s3_smem::K + kb * 2048, TC_C * 128));
        wg_commit();
        wg_wait<0>();
        wg_pin<32>(oacc);
        wg_pin<64>(s);

        /* O^T -> Os[i][v] (bf16, transposed by stmatrix) -> o[t0 + i][h][c0 ..], 128-byte rows. Os is in
         * this chunk's W/Q panels, which the completed wgmma's (async proxy) no longer read: the
         * proxy fence orders those reads before the generic stores */
        bf16 *Os = reinterpret_cast<bf16 *>(gbase + (n & 1) * s3_smem::STAGE + s3_smem::OS);
        wg_proxy_fence();
#pragma unroll
        for (int j0 = 0; j0 < 8; j0 += 2) {
            uint32_t r[4]; /* 8x8 blocks (i block j0 + k / 2, v half k % 2) of O^T */
#pragma unroll
            for (int k = 0; k < 4; k++) r[k] = pack_bf16(oacc[4 * (j0 + (k >> 1)) + 2 * (k & 1)], oacc[4 * (j0 + (k >> 1)) + 2 * (k & 1) + 1]);
            const int k = lane >> 3;
            stsm4t(Os + (8 * (j0 + (k >> 1)) + (lane & 7)) * S3_LDO + 16 * w + 8 * (k & 1), r);
        }
        __syncthreads();
        const int t0 = n * TC_C;
#pragma unroll
        for (int u = 0; u < TC_C * 8 / 128; u++) {
            const int idx = tid + 128 * u, i = idx >> 3, c = idx & 7;
            if (t0 + i < T)
                *reinterpret_cast<uint4 *>(o + ((size_t)(t0 + i) * NV + h) * TC_D + c0 + c * 8) =
                    *reinterpret_cast<const uint4 *>(Os + i * S3_LDO + c * 8);
        }
    }
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int q = 0; q < 4; q++) Sg[(8 * j + 2 * tq + (q & 1)) * TC_D + v0 + 8 * (q >> 1)] = s[4 * j + q];
#else
    __trap(); /* launched only where tc_scan3_ok: the sm_90a code */
#endif
}

int tc_scan3_ok(void)
{
    if (!cuda_device_is_sm90()) return 0;
    int dev = 0, optin = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
        cudaGetLastError(); /* clear: the answer is just "no" */
        return 0;
    }
    return optin >= s3_smem::BYTES;
}

int tc_scan3_smem(void) { return s3_smem::BYTES; }

enum q3n_status tc_scan3_launch(bf16 *o, float *state, const char *scr, const tc_layout &lay, int T, int NK, int NV,
                                int nc, const int *flags, int extra_smem, cudaStream_t stream, struct q3n_error *err)
{
    const int smem = s3_smem::BYTES + extra_smem;
    CU_CHECK(cudaFuncSetAttribute(tc_scan3_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    tc_scan3_kernel<<<dim3(TC_D / S3_BV, (unsigned)NV), 128, smem, stream>>>(o, state, scr, lay, T, NK, NV,
                                                                                        nc, flags);
    CU_LAUNCHED("delta_rule tc_scan3_kernel");
    return Q3N_OK;
}
