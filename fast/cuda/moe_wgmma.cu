/* moe_wgmma.cu — grouped expert GEMM v4: v3's contract, tile table, loader and epilogue
 * (moe_grouped.cu), with the products on Hopper's warpgroup MMA (wgmma) instead of mma.sync.
 *
 * out[p, n] = sum_k A[p, k] W[e][n, k] for the rows p of expert e (A row p = x[rows[p] / div]
 * with the gather, SwiGLU in the epilogue as in v3). Why: mma.sync feeds every 16x8x16 product
 * from registers loaded by ldmatrix, which caps v3 near 290 TFLOP/s on an H100; wgmma reads both
 * operands straight from shared memory, 64 x 128 x 16 per instruction per warpgroup.
 *
 * Block: 256 threads = 2 warpgroups, tile 128 rows x 128 outputs, k-tiles of 64 (128 bytes per
 * row). Every thread copies with cp.async (v3's loader, zero fill past the expert's rows, N and
 * Kin) into ST stages; the tile layout g3_off<64> is exactly the 128-byte swizzle wgmma expects
 * of a K-major operand whose 8-row groups start on 1024-byte boundaries. Warpgroup wg multiplies
 * rows [64 wg, 64 wg + 64) by all 128 outputs: 4 wgmma m64n128k16 per k-tile, float32
 * accumulators (64 per thread).
 *
 * Pipeline (one barrier per k-tile), at k-tile kt:
 *   wait for my copies of tile kt; fence.proxy.async (cp.async wrote through the generic proxy,
 *   wgmma reads through the async proxy); barrier (all copies of kt landed, and every warpgroup
 *   has retired its batch kt-2) -> copy tile kt + ST - 2 into the stage batch kt-2 used ->
 *   issue batch kt -> wait until at most one batch (kt) is in flight.
 * So ST - 2 tiles are in flight while one batch runs: ST = 3 (97 KB, 2 blocks per SM) or
 * ST = 4 (129 KB, 1 block per SM). The accumulation order over k is the same as v3's
 * (k-tiles ascending, 16 at a time); inside one 16-deep step the order is the tensor core's. On an
 * H100 the outputs are bitwise v3's on every shape dev/test_moe_prefill tries (which requires it),
 * so the goldens that v3 passes speak for v4. The result does not depend on ST (deterministic). */
#include "common.cuh"
#include "moe_grouped.cuh"
#include "wgmma.cuh"

#define G4_BK 64
#define G4_TB (G3_BM * G4_BK * 2) /* bytes of one operand tile: 128 rows x 128 bytes */
#define G4_SMEM(ST) ((ST) * 2 * G4_TB + 1024)

template <bool GATHER, bool SWIGLU, int ST>
__global__ void __launch_bounds__(256, ST <= 3 ? 2 : 1)
    grouped_gemm_v4_kernel(bf16 *out, const bf16 *X, const int32_t *xrows, int div, const bf16 *W,
                           const int32_t *tiles, const int32_t *counts, const int32_t *offsets, int N, int Kin)
{
#ifdef Q3N_HAVE_WGMMA
    constexpr int CH = G4_BK / 8 /* 16-byte chunks per row */, RS = 256 / CH /* rows per pass */,
                  LP = G3_BM / RS /* passes */, PD = ST - 2 /* tiles in flight */;
    extern __shared__ unsigned char g4s[];
    const int tile = blockIdx.y;
    if (tile >= tiles[0]) return;
    const int e = tiles[1 + 2 * tile], r0 = tiles[2 + 2 * tile];
    const int rend = offsets[e] + counts[e]; /* rows [r0, min(r0 + 128, rend)) */
    const int Wh = N / 2;                    /* SWIGLU: h width */
    const bf16 *We = W + (size_t)e * N * Kin;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
    const int lr = tid / CH, lc = tid % CH; /* loader: tile rows lr + RS i, 16-byte chunk lc */
    int asrc[LP], bsrc[LP]; /* source rows, -1: zero fill */
    g3_sources<LP, RS, GATHER, SWIGLU>(asrc, bsrc, lr, r0, rend, xrows, div, N);
    const uint32_t sbase = ((uint32_t)__cvta_generic_to_shared(g4s) + 1023u) & ~1023u;
    const int ktiles = (Kin + G4_BK - 1) / G4_BK;
    auto load = [&](int kt) {
        const int k = kt * G4_BK + lc * 8;
        const bool kin = k < Kin;
        const uint32_t sa = sbase + (kt % ST) * 2 * G4_TB, sb = sa + G4_TB;
#pragma unroll
        for (int i = 0; i < LP; i++) {
            const uint32_t so = g3_off<G4_BK>(lr + RS * i, lc);
            const bool ao = kin && asrc[i] >= 0, bo = kin && bsrc[i] >= 0;
            g3_cp16(sa + so, ao ? X + (size_t)asrc[i] * Kin + k : X, ao);
            g3_cp16(sb + so, bo ? We + (size_t)bsrc[i] * Kin + k : W, bo);
        }
    };
    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; i++) acc[i] = 0.0f;
#pragma unroll
    for (int s = 0; s < PD; s++) {
        if (s < ktiles) load(s);
        g3_commit();
    }
    for (int kt = 0; kt < ktiles; kt++) {
        g3_wait<PD - 1>();
        wg_proxy_fence();
        __syncthreads();
        if (kt + PD < ktiles) load(kt + PD);
        g3_commit();
        const uint32_t sa = sbase + (kt % ST) * 2 * G4_TB + wg * (64 * 128), sb = sbase + (kt % ST) * 2 * G4_TB + G4_TB;
        wg_pin<64>(acc);
        wg_fence();
#pragma unroll
        for (int ks = 0; ks < G4_BK / 16; ks++) wg_mma_m64n128k16(acc, wg_desc(sa + 32 * ks), wg_desc(sb + 32 * ks));
        wg_commit();
        wg_wait<1>();
        wg_pin<64>(acc);
    }
    wg_wait<0>();
    wg_pin<64>(acc);
    g3_wait<0>();
    const int g = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int row = r0 + wg * 64 + (warp & 3) * 16 + g + 8 * hf;
        if (row >= rend) continue;
        if (SWIGLU) {
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int col = blockIdx.x * 64 + 8 * j + 2 * tq;
                if (col >= Wh) continue;
                float h[2];
#pragma unroll
                for (int q = 0; q < 2; q++) {
                    const float gt = __bfloat162float(__float2bfloat16_rn(acc[4 * j + 2 * hf + q]));
                    const float up = __bfloat162float(__float2bfloat16_rn(acc[4 * (j + 8) + 2 * hf + q]));
                    h[q] = __bfloat162float(__float2bfloat16_rn(silu_f(gt))) * up;
                }
                *reinterpret_cast<__nv_bfloat162 *>(out + (size_t)row * Wh + col) = __floats2bfloat162_rn(h[0], h[1]);
            }
        } else {
#pragma unroll
            for (int j = 0; j < 16; j++) {
                const int col = blockIdx.x * G3_BN + 8 * j + 2 * tq;
                if (col >= N) continue;
                *reinterpret_cast<__nv_bfloat162 *>(out + (size_t)row * N + col) =
                    __floats2bfloat162_rn(acc[4 * j + 2 * hf], acc[4 * j + 2 * hf + 1]);
            }
        }
    }
#else
    __trap(); /* launched only where cuda_moe_grouped_v4_supported(): sm_90a code */
#endif
}

/* Whether the wgmma path (v5 in production, v4 before it) beats v3 for this many rows over E
 * experts. v4 paid off only past one full 128-row tile per expert (T*K/E = 320 rows: 1.09x v3;
 * 80 rows: 0.95x, two v3 blocks per SM keeping more of the weight stream in flight). v5 also wins
 * at 80 rows (the real dims at T=4096; test_moe_prefill, session 8: v3 0.861 + 0.444 ms per layer,
 * v5 0.813 + 0.434, 1.05x; session 6: 1.02x), so the threshold is half a tile per expert now;
 * below it (a few rows per expert) neither has been timed against the other. */
extern "C" int cuda_moe_grouped_v4_pays(int64_t rows, int64_t E)
{
    return rows > (G3_BM / 2) * E;
}

/* wgmma needs the sm_90a code of this file: compute capability 9.0 exactly. */
extern "C" int cuda_moe_grouped_v4_supported(void)
{
    return cuda_device_is_sm90();
}

extern "C" enum q3n_status cuda_moe_grouped_gemm_v4_st(void *d_out, const void *d_x, const int32_t *d_rows,
                                                       int64_t div, const void *d_W, const int32_t *d_counts,
                                                       const int32_t *d_offsets, const int32_t *d_tiles, int64_t rows,
                                                       int64_t E, int64_t N, int64_t Kin, int swiglu, int stages,
                                                       enum q3n_compute_dtype dt, cudaStream_t stream,
                                                       struct q3n_error *err)
{
    Q3N_REQUIRE(cuda_moe_grouped_v3_ok(N, Kin, swiglu, dt) && cuda_moe_grouped_v4_supported() &&
                (stages == 3 || stages == 4));
    Q3N_REQUIRE(rows >= 0 && rows <= INT32_MAX && E > 0 && div > 0 && rows / G3_BM + E + 1 <= 65535);
    if (rows == 0) return Q3N_OK;
    const dim3 grid(swiglu ? cdiv(N / 2, 64) : cdiv(N, G3_BN), (unsigned)(rows / G3_BM + E + 1));
    const bf16 *x = (const bf16 *)d_x, *W = (const bf16 *)d_W;
    bf16 *out = (bf16 *)d_out;
    const int n = (int)N, k = (int)Kin, dv = (int)div;
#define G4_LAUNCH(G, S, ST)                                                                                   \
    do {                                                                                                      \
        CU_CHECK(cudaFuncSetAttribute(grouped_gemm_v4_kernel<G, S, ST>,                                       \
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, G4_SMEM(ST)));             \
        grouped_gemm_v4_kernel<G, S, ST><<<grid, 256, G4_SMEM(ST), stream>>>(out, x, d_rows, dv, W, d_tiles,   \
                                                                             d_counts, d_offsets, n, k);      \
    } while (0)
#define G4_LAUNCH_ST(G, S)                                                                                    \
    do {                                                                                                      \
        if (stages == 3)                                                                                      \
            G4_LAUNCH(G, S, 3);                                                                               \
        else                                                                                                  \
            G4_LAUNCH(G, S, 4);                                                                               \
    } while (0)
    if (d_rows && swiglu)
        G4_LAUNCH_ST(true, true);
    else if (d_rows)
        G4_LAUNCH_ST(true, false);
    else if (swiglu)
        G4_LAUNCH_ST(false, true);
    else
        G4_LAUNCH_ST(false, false);
#undef G4_LAUNCH_ST
#undef G4_LAUNCH
    CU_LAUNCHED("moe grouped_gemm_v4_kernel");
    return Q3N_OK;
}

/* Pipeline depth of the production path (both are checked and timed by dev/test_moe_prefill): on an
 * H100 at the real dims, T=16384, 3 stages (2 blocks per SM) 3.14 ms per layer, 4 stages 3.52,
 * v3 3.43; at T=4096 v4 is the slower one (1.40 / 1.47 vs 1.32 ms), see cuda_moe_grouped_v4_pays. */
#define G4_STAGES_DEFAULT 3

extern "C" enum q3n_status cuda_moe_grouped_gemm_v4(void *d_out, const void *d_x, const int32_t *d_rows, int64_t div,
                                                    const void *d_W, const int32_t *d_counts,
                                                    const int32_t *d_offsets, const int32_t *d_tiles, int64_t rows,
                                                    int64_t E, int64_t N, int64_t Kin, int swiglu,
                                                    enum q3n_compute_dtype dt, cudaStream_t stream,
                                                    struct q3n_error *err)
{
    return cuda_moe_grouped_gemm_v4_st(d_out, d_x, d_rows, div, d_W, d_counts, d_offsets, d_tiles, rows, E, N, Kin,
                                       swiglu, G4_STAGES_DEFAULT, dt, stream, err);
}
