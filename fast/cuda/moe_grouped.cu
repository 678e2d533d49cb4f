/* moe_grouped.cu — the routed experts of a prefill as grouped GEMMs on bf16 tensor cores, all
 * experts in one launch over the rows cuda_moe_permute grouped (v1; v3 with the token gather and
 * SwiGLU fused). Launchers in cuda_ops.h (moe section); routing and combine in moe.cu. */
#include "common.cuh"
#include "moe_grouped.cuh"

/* ---- grouped expert GEMM (bf16 tensor cores; prefill) ----
 * out[p, n] = sum_k X[p, k] W[e][n, k] for the rows p of each expert e (offsets/counts on the
 * device, as cuda_moe_permute leaves them): one launch for every expert, no host round trip.
 * Tile 64 or 128 rows x 128 outputs x 32 k, 8 warps (2 x 4), warp tiles of mma.sync m16n8k16
 * with float32 accumulators; the next k-tile is prefetched into registers while the current one
 * is multiplied. A tile table (expert, first row) is built on the device first. */
#define GG_BM 64 /* smallest row tile; the tile table is sized for it */
#define GG_BN 128
#define GG_BK 32
#define GG_LD (GG_BK + 8)

__global__ void gg_tiles_kernel(int32_t *tiles, const int32_t *counts, const int32_t *offsets, int64_t E, int bm)
{
    if (threadIdx.x != 0) return;
    int32_t nt = 0;
    for (int64_t e = 0; e < E; e++)
        for (int32_t r = 0; r < counts[e]; r += bm) {
            tiles[1 + 2 * nt] = (int32_t)e;
            tiles[2 + 2 * nt] = offsets[e] + r;
            nt++;
        }
    tiles[0] = nt;
}

/* BM rows (64 or 128) x 128 outputs per block; 8 warps as 2 (rows) x 4 (cols), warp tile
 * (BM/2) x 32 = MT m-tiles x 4 n-tiles. BM = 128 halves the weight re-reads when experts get
 * more than 64 rows. */
template <int BM>
__global__ void __launch_bounds__(256) grouped_gemm_bf16_kernel(bf16 *out, const bf16 *X, const bf16 *W,
                                                                const int32_t *tiles, const int32_t *counts,
                                                                const int32_t *offsets, int N, int Kin)
{
    constexpr int MT = BM / 32, XL = BM / 64;
    __shared__ __align__(16) bf16 Xs[BM * GG_LD];
    __shared__ __align__(16) bf16 Ws[GG_BN * GG_LD];
    const int tile = blockIdx.y;
    if (tile >= tiles[0]) return;
    const int e = tiles[1 + 2 * tile], r0 = tiles[2 + 2 * tile];
    const int rend = offsets[e] + counts[e]; /* rows [r0, min(r0+BM, rend)) */
    const int n0 = blockIdx.x * GG_BN;
    const bf16 *We = W + (size_t)e * N * Kin;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;
    const int g = lane >> 2, tq = lane & 3;
    const int lr = tid >> 2, lc = (tid & 3) * 8; /* loader: row lr + 64 i, 8 bf16 at column lc */
    bool xin[XL];
    const bf16 *xsrc[XL];
    for (int i = 0; i < XL; i++) {
        xin[i] = r0 + lr + 64 * i < rend;
        xsrc[i] = X + (size_t)(r0 + lr + 64 * i) * Kin + lc;
    }
    const bf16 *wsrc0 = We + (size_t)(n0 + lr) * Kin + lc, *wsrc1 = We + (size_t)(n0 + lr + 64) * Kin + lc;
    float acc[MT][4][4];
    for (int a = 0; a < MT; a++)
        for (int b = 0; b < 4; b++) acc[a][b][0] = acc[a][b][1] = acc[a][b][2] = acc[a][b][3] = 0.0f;
    uint4 px[XL];
    for (int i = 0; i < XL; i++) px[i] = xin[i] ? *reinterpret_cast<const uint4 *>(xsrc[i]) : make_uint4(0, 0, 0, 0);
    uint4 pw0 = *reinterpret_cast<const uint4 *>(wsrc0), pw1 = *reinterpret_cast<const uint4 *>(wsrc1);
    for (int k0 = 0; k0 < Kin; k0 += GG_BK) {
        __syncthreads();
        for (int i = 0; i < XL; i++) *reinterpret_cast<uint4 *>(&Xs[(lr + 64 * i) * GG_LD + lc]) = px[i];
        *reinterpret_cast<uint4 *>(&Ws[lr * GG_LD + lc]) = pw0;
        *reinterpret_cast<uint4 *>(&Ws[(lr + 64) * GG_LD + lc]) = pw1;
        __syncthreads();
        if (k0 + GG_BK < Kin) {
            for (int i = 0; i < XL; i++)
                px[i] = xin[i] ? *reinterpret_cast<const uint4 *>(xsrc[i] + k0 + GG_BK) : make_uint4(0, 0, 0, 0);
            pw0 = *reinterpret_cast<const uint4 *>(wsrc0 + k0 + GG_BK);
            pw1 = *reinterpret_cast<const uint4 *>(wsrc1 + k0 + GG_BK);
        }
#pragma unroll
        for (int ks = 0; ks < GG_BK / 16; ks++) {
            const int c = ks * 16 + 2 * tq;
            uint32_t b[4][2];
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
                const bf16 *br = Ws + (wn * 32 + nt * 8 + g) * GG_LD + c;
                b[nt][0] = *reinterpret_cast<const uint32_t *>(br);
                b[nt][1] = *reinterpret_cast<const uint32_t *>(br + 8);
            }
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                const bf16 *ar = Xs + (wm * (BM / 2) + mt * 16 + g) * GG_LD + c;
                const uint32_t a0 = *reinterpret_cast<const uint32_t *>(ar);
                const uint32_t a1 = *reinterpret_cast<const uint32_t *>(ar + 8 * GG_LD);
                const uint32_t a2 = *reinterpret_cast<const uint32_t *>(ar + 8);
                const uint32_t a3 = *reinterpret_cast<const uint32_t *>(ar + 8 * GG_LD + 8);
#pragma unroll
                for (int nt = 0; nt < 4; nt++) mma_m16n8k16_bf16(acc[mt][nt], a0, a1, a2, a3, b[nt][0], b[nt][1]);
            }
        }
    }
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
            const int row = r0 + wm * (BM / 2) + mt * 16 + g, col = n0 + wn * 32 + nt * 8 + 2 * tq;
            if (row < rend)
                *reinterpret_cast<__nv_bfloat162 *>(out + (size_t)row * N + col) =
                    __floats2bfloat162_rn(acc[mt][nt][0], acc[mt][nt][1]);
            if (row + 8 < rend)
                *reinterpret_cast<__nv_bfloat162 *>(out + (size_t)(row + 8) * N + col) =
                    __floats2bfloat162_rn(acc[mt][nt][2], acc[mt][nt][3]);
        }
}

extern "C" int64_t cuda_moe_grouped_tiles(int64_t rows, int64_t E)
{
    return 1 + 2 * (rows / GG_BM + E + 1);
}

extern "C" int cuda_moe_grouped_gemm_ok(int64_t N, int64_t Kin, enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 && N % GG_BN == 0 && Kin % GG_BK == 0 && N <= INT32_MAX && Kin <= INT32_MAX;
}

extern "C" enum q3n_status cuda_moe_grouped_gemm(void *d_out, const void *d_x, const void *d_W,
                                                 const int32_t *d_counts, const int32_t *d_offsets, int32_t *d_tiles,
                                                 int64_t rows, int64_t E, int64_t N, int64_t Kin,
                                                 enum q3n_compute_dtype dt, cudaStream_t stream,
                                                 struct q3n_error *err)
{
    Q3N_REQUIRE(cuda_moe_grouped_gemm_ok(N, Kin, dt));
    Q3N_REQUIRE(rows >= 0 && E > 0 && rows / GG_BM + E + 1 <= 65535);
    if (rows == 0) return Q3N_OK;
    /* 128-row tiles once experts average more than 64 rows (T*K/E): the weights are read once. */
    const int bm = rows > 64 * E ? 128 : 64;
    gg_tiles_kernel<<<1, 32, 0, stream>>>(d_tiles, d_counts, d_offsets, E, bm);
    CU_LAUNCHED("moe gg_tiles_kernel");
    const dim3 grid((unsigned)(N / GG_BN), (unsigned)(rows / bm + E + 1));
    if (bm == 128)
        grouped_gemm_bf16_kernel<128><<<grid, 256, 0, stream>>>((bf16 *)d_out, (const bf16 *)d_x, (const bf16 *)d_W,
                                                                d_tiles, d_counts, d_offsets, (int)N, (int)Kin);
    else
        grouped_gemm_bf16_kernel<64><<<grid, 256, 0, stream>>>((bf16 *)d_out, (const bf16 *)d_x, (const bf16 *)d_W,
                                                               d_tiles, d_counts, d_offsets, (int)N, (int)Kin);
    CU_LAUNCHED("moe grouped_gemm_bf16_kernel");
    return Q3N_OK;
}

/* ---- grouped expert GEMM v3 (bf16 tensor cores; prefill) ----
 * Same contract as v1 (rows grouped by expert, counts/offsets/tile table on the device), plus:
 * - gather fused into the A load: with d_rows, A row p is x[rows[p] / div] (no permuted copy);
 * - SwiGLU fused into the epilogue: W [E, 2W, Kin] (gate rows, then up rows); block x covers h
 *   columns c in [64x, 64x + 64), its B tile holds gate rows c and up rows W + c, so the thread that
 *   owns gate (p, c) also owns up (p, c) and writes h = T(T(silu(T(g))) * T(u)) as
 *   cuda_swiglu_forward does after a bf16 gate_up;
 * - 128 x 128 x BK tiles, 8 warps (2 x 4, warp tile 64 x 32), mma.sync m16n8k16 (sm_80+; no
 *   wgmma yet), a cp.async pipeline (BK 64: 3 stages, the default; BK 32: 4 stages), 16-byte
 *   copies with zero-fill for rows past the expert and k past Kin, ldmatrix from XOR-swizzled
 *   shared memory (conflict-free, see g3_off); 2 blocks per SM;
 * - tails: any N, Kin with N % 8 == 0 and Kin % 8 == 0 (rows/columns past the end are zero
 *   filled and not stored). */
/* BK 32: 4 stages of 16 KB (64 KB, 2 blocks/SM); BK 64: 3 stages of 32 KB (96 KB, 2 blocks/SM). */
#define G3_STAGES(BK) ((BK) == 32 ? 4 : 3)
#define G3_SMEM(BK) (G3_STAGES(BK) * 2 * G3_BM * (BK) * 2)

/* Tile table for 128-row tiles, built by one block: tiles per expert cdiv(count, 128), block
 * prefix sum in expert order, each expert writes its own entries (tiles[0] = count). */
__global__ void __launch_bounds__(1024) g3_tiles_kernel(int32_t *tiles, const int32_t *counts,
                                                        const int32_t *offsets, int E)
{
    __shared__ int wsum[32];
    __shared__ int carry;
    const int tid = threadIdx.x;
    if (tid == 0) carry = 0;
    __syncthreads();
    for (int e0 = 0; e0 < E; e0 += blockDim.x) {
        const int e = e0 + tid;
        const int nt = e < E ? (counts[e] + G3_BM - 1) / G3_BM : 0;
        const int excl = block_exclusive_scan(nt, wsum) + carry; /* carry: set two barriers ago */
        for (int i = 0; i < nt; i++) {
            tiles[1 + 2 * (excl + i)] = e;
            tiles[2 + 2 * (excl + i)] = offsets[e] + i * G3_BM;
        }
        __syncthreads();
        if (tid == blockDim.x - 1) carry = excl + nt;
        __syncthreads();
    }
    if (tid == 0) tiles[0] = carry;
}


template <bool GATHER, bool SWIGLU, int BK>
__global__ void __launch_bounds__(256, 2) grouped_gemm_v3_kernel(bf16 *out, const bf16 *X, const int32_t *xrows,
                                                                 int div, const bf16 *W, const int32_t *tiles,
                                                                 const int32_t *counts, const int32_t *offsets,
                                                                 int N, int Kin)
{
    constexpr int ST = G3_STAGES(BK), CH = BK / 8 /* chunks per row */, RS = 256 / CH /* rows per pass */,
                  LP = G3_BM / RS /* passes */, TB = G3_BM * BK * 2 /* tile bytes */;
    extern __shared__ __align__(128) unsigned char g3s[];
    const int tile = blockIdx.y;
    if (tile >= tiles[0]) return;
    const int e = tiles[1 + 2 * tile], r0 = tiles[2 + 2 * tile];
    const int rend = offsets[e] + counts[e]; /* rows [r0, min(r0 + 128, rend)) */
    const int Wh = N / 2;                    /* SWIGLU: h width */
    const bf16 *We = W + (size_t)e * N * Kin;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;
    /* loader: tile rows lr + RS i (i < LP), 16-byte chunk lc */
    const int lr = tid / CH, lc = tid % CH;
    int asrc[LP], bsrc[LP]; /* source rows, -1: zero fill */
    g3_sources<LP, RS, GATHER, SWIGLU>(asrc, bsrc, lr, r0, rend, xrows, div, N);
    const uint32_t sbase = (uint32_t)__cvta_generic_to_shared(g3s);
    const int ktiles = (Kin + BK - 1) / BK;
    auto load = [&](int kt, int stage) {
        const int k = kt * BK + lc * 8;
        const bool kin = k < Kin;
        const uint32_t sa = sbase + stage * 2 * TB, sb = sa + TB;
#pragma unroll
        for (int i = 0; i < LP; i++) {
            const uint32_t so = g3_off<BK>(lr + RS * i, lc);
            const bool ao = kin && asrc[i] >= 0, bo = kin && bsrc[i] >= 0;
            g3_cp16(sa + so, ao ? X + (size_t)asrc[i] * Kin + k : X, ao);
            g3_cp16(sb + so, bo ? We + (size_t)bsrc[i] * Kin + k : W, bo);
        }
    };
    float acc[4][4][4];
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) acc[a][b][0] = acc[a][b][1] = acc[a][b][2] = acc[a][b][3] = 0.0f;
#pragma unroll
    for (int s = 0; s < ST - 1; s++) {
        if (s < ktiles) load(s, s);
        g3_commit();
    }
    /* ldmatrix lane addresses: A rows wm*64 + mt*16 + (lane & 15), chunk 2ks + (lane >> 4);
     * B rows (n) base + (lane & 7) + 8 (lane >> 4), chunk 2ks + ((lane >> 3) & 1). */
    const int arow = wm * 64 + (lane & 15), achk = lane >> 4;
    const int bn = (lane & 7) + ((lane >> 4) << 3), bchk = (lane >> 3) & 1;
    int brow[2];
#pragma unroll
    for (int pr = 0; pr < 2; pr++) brow[pr] = (SWIGLU ? pr * 64 + wn * 16 : wn * 32 + pr * 16) + bn;
    for (int kt = 0; kt < ktiles; kt++) {
        g3_wait<ST - 2>();
        __syncthreads();
        if (kt + ST - 1 < ktiles) load(kt + ST - 1, (kt + ST - 1) % ST);
        g3_commit();
        const uint32_t sa = sbase + (kt % ST) * 2 * TB, sb = sa + TB;
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++) {
            uint32_t a[4][4], b[4][2];
#pragma unroll
            for (int mt = 0; mt < 4; mt++)
                g3_ldm4(a[mt][0], a[mt][1], a[mt][2], a[mt][3], sa + g3_off<BK>(arow + mt * 16, 2 * ks + achk));
#pragma unroll
            for (int pr = 0; pr < 2; pr++)
                g3_ldm4(b[2 * pr][0], b[2 * pr][1], b[2 * pr + 1][0], b[2 * pr + 1][1],
                        sb + g3_off<BK>(brow[pr], 2 * ks + bchk));
#pragma unroll
            for (int mt = 0; mt < 4; mt++)
#pragma unroll
                for (int nt = 0; nt < 4; nt++) mma_m16n8k16_bf16(acc[mt][nt], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b[nt][0], b[nt][1]);
        }
    }
    g3_wait<0>();
    const int g = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int mt = 0; mt < 4; mt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int row = r0 + wm * 64 + mt * 16 + g + 8 * hf;
            if (row >= rend) continue;
            if (SWIGLU) {
#pragma unroll
                for (int nt = 0; nt < 2; nt++) {
                    const int col = blockIdx.x * 64 + wn * 16 + nt * 8 + 2 * tq;
                    if (col >= Wh) continue;
                    float h[2];
#pragma unroll
                    for (int q = 0; q < 2; q++) {
                        const float gt = __bfloat162float(__float2bfloat16_rn(acc[mt][nt][2 * hf + q]));
                        const float up = __bfloat162float(__float2bfloat16_rn(acc[mt][nt + 2][2 * hf + q]));
                        h[q] = __bfloat162float(__float2bfloat16_rn(silu_f(gt))) * up;
                    }
                    *reinterpret_cast<__nv_bfloat162 *>(out + (size_t)row * Wh + col) = __floats2bfloat162_rn(h[0], h[1]);
                }
            } else {
#pragma unroll
                for (int nt = 0; nt < 4; nt++) {
                    const int col = blockIdx.x * G3_BN + wn * 32 + nt * 8 + 2 * tq;
                    if (col >= N) continue;
                    *reinterpret_cast<__nv_bfloat162 *>(out + (size_t)row * N + col) =
                        __floats2bfloat162_rn(acc[mt][nt][2 * hf], acc[mt][nt][2 * hf + 1]);
                }
            }
        }
}

extern "C" int cuda_moe_grouped_v3_ok(int64_t N, int64_t Kin, int swiglu, enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 && N > 0 && Kin > 0 && N % (swiglu ? 16 : 8) == 0 && Kin % 8 == 0 &&
           N <= INT32_MAX / 2 && Kin <= INT32_MAX / 2;
}

extern "C" enum q3n_status cuda_moe_grouped_tiles_v3(int32_t *d_tiles, const int32_t *d_counts,
                                                     const int32_t *d_offsets, int64_t rows, int64_t E,
                                                     cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(rows >= 0 && E > 0 && E <= INT32_MAX && rows / G3_BM + E + 1 <= 65535);
    g3_tiles_kernel<<<1, 1024, 0, stream>>>(d_tiles, d_counts, d_offsets, (int)E);
    CU_LAUNCHED("moe g3_tiles_kernel");
    return Q3N_OK;
}

/* Tile depth of the production path (both variants are checked by dev/test_moe2). */
#define G3_BK_DEFAULT 64

extern "C" enum q3n_status cuda_moe_grouped_gemm_v3_bk(void *d_out, const void *d_x, const int32_t *d_rows,
                                                       int64_t div, const void *d_W, const int32_t *d_counts,
                                                       const int32_t *d_offsets, const int32_t *d_tiles, int64_t rows,
                                                       int64_t E, int64_t N, int64_t Kin, int swiglu, int bk,
                                                       enum q3n_compute_dtype dt, cudaStream_t stream,
                                                       struct q3n_error *err)
{
    Q3N_REQUIRE(cuda_moe_grouped_v3_ok(N, Kin, swiglu, dt) && (bk == 32 || bk == 64));
    Q3N_REQUIRE(rows >= 0 && rows <= INT32_MAX && E > 0 && div > 0 && rows / G3_BM + E + 1 <= 65535);
    if (rows == 0) return Q3N_OK;
    const dim3 grid(swiglu ? cdiv(N / 2, 64) : cdiv(N, G3_BN), (unsigned)(rows / G3_BM + E + 1));
    const bf16 *x = (const bf16 *)d_x, *W = (const bf16 *)d_W;
    bf16 *out = (bf16 *)d_out;
    const int n = (int)N, k = (int)Kin, dv = (int)div;
#define G3_LAUNCH(G, S, B)                                                                                    \
    do {                                                                                                      \
        CU_CHECK(cudaFuncSetAttribute(grouped_gemm_v3_kernel<G, S, B>,                                        \
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, G3_SMEM(B)));              \
        grouped_gemm_v3_kernel<G, S, B><<<grid, 256, G3_SMEM(B), stream>>>(out, x, d_rows, dv, W, d_tiles,     \
                                                                           d_counts, d_offsets, n, k);        \
    } while (0)
#define G3_LAUNCH_BK(G, S)                                                                                    \
    do {                                                                                                      \
        if (bk == 32)                                                                                         \
            G3_LAUNCH(G, S, 32);                                                                              \
        else                                                                                                  \
            G3_LAUNCH(G, S, 64);                                                                              \
    } while (0)
    if (d_rows && swiglu)
        G3_LAUNCH_BK(true, true);
    else if (d_rows)
        G3_LAUNCH_BK(true, false);
    else if (swiglu)
        G3_LAUNCH_BK(false, true);
    else
        G3_LAUNCH_BK(false, false);
#undef G3_LAUNCH_BK
#undef G3_LAUNCH
    CU_LAUNCHED("moe grouped_gemm_v3_kernel");
    return Q3N_OK;
}

extern "C" enum q3n_status cuda_moe_grouped_gemm_v3(void *d_out, const void *d_x, const int32_t *d_rows, int64_t div,
                                                    const void *d_W, const int32_t *d_counts,
                                                    const int32_t *d_offsets, const int32_t *d_tiles, int64_t rows,
                                                    int64_t E, int64_t N, int64_t Kin, int swiglu,
                                                    enum q3n_compute_dtype dt, cudaStream_t stream,
                                                    struct q3n_error *err)
{
    return cuda_moe_grouped_gemm_v3_bk(d_out, d_x, d_rows, div, d_W, d_counts, d_offsets, d_tiles, rows, E, N, Kin,
                                       swiglu, G3_BK_DEFAULT, dt, stream, err);
}
