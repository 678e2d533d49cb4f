/* attention_flash_wgmma.cuh — the pieces of the wgmma flash kernels (attention_flash_wgmma.cu: v4,
 * v5; attention_flash_ws.cu: v6) that work on one 64-key tile (internal to fast/cuda).
 *
 * Layouts (wgmma.cuh): Q [BQ x HDP], K and V [BK x HDP] bf16 tiles stored as 64-column panels of
 * 128-byte swizzled rows (row = query / key), each panel ROWS * 128 bytes, tiles 1024-aligned.
 * For S = Q K^T both are K-major operands (k = head dim); for O += P V, V is the MN-major B operand
 * (k = key, n = head dim contiguous) of the same bytes. */
#ifndef Q3N_CUDA_ATTENTION_FLASH_WGMMA_CUH
#define Q3N_CUDA_ATTENTION_FLASH_WGMMA_CUH

#include "attention_flash.cuh"
#include "wgmma_rs.cuh"

#define WGF_BQ 128 /* queries per block: 2 warpgroups x 64 rows */
#define WGF_BK 64  /* keys per tile */

/* cp.async by the NT threads numbered tid of rows [r0, r0 + ROWS) of a bf16 matrix (row r at
 * base + r * rs) into a swizzled ROWS x HDP tile at dst (wg_off layout); rows >= nrows and columns
 * >= HD are zero-filled. */
template <int HDP, int ROWS, int NT>
__device__ __forceinline__ void wgf_load_sw(unsigned char *dst, const bf16 *base, int64_t rs, int64_t r0,
                                            int64_t nrows, int HD, int tid = threadIdx.x)
{
    constexpr int per = HDP / 8;
#pragma unroll
    for (int idx = tid; idx < ROWS * per; idx += NT) {
        const int r = idx / per, c = idx % per;
        const bool ok = r0 + r < nrows && c * 8 < HD;
        cp_async16(dst + wg_off<ROWS>(r, c), ok ? base + (r0 + r) * rs + c * 8 : base, ok ? 16 : 0);
    }
}

/* s = the warpgroup's 64 rows of S = Q K^T over one tile: HDP / 16 wgmma m64n64k16, k ascending
 * (panel ks / 4, 32 bytes per 16 columns inside a panel); waited for. sQ: the warpgroup's first
 * Q row (rows of a WGF_BQ-row tile), sK: the tile's K. */
template <int HDP>
__device__ __forceinline__ void wgf_tile_s(float (&s)[WGF_BK / 8][4], uint32_t sQ, uint32_t sK)
{
    float *sf = &s[0][0];
#pragma unroll
    for (int i = 0; i < WGF_BK / 2; i++) sf[i] = 0.0f;
    wg_pin<WGF_BK / 2>(sf);
    wg_fence();
#pragma unroll
    for (int ks = 0; ks < HDP / 16; ks++)
        wg_mma_m64n64k16(sf, wg_desc(sQ + (ks >> 2) * (WGF_BQ * 128) + (ks & 3) * 32),
                         wg_desc(sK + (ks >> 2) * (WGF_BK * 128) + (ks & 3) * 32));
    wg_commit();
    wg_wait<0>();
    wg_pin<WGF_BK / 2>(sf);
}

/* o += bf16(P) V for the warpgroup's 64 rows on wgmma: P from s (flash_tile_softmax's p, the
 * accumulator layout = the A fragment layout), V the MN-major B at sV (wgmma_rs.cuh), keys 16 at
 * a time ascending; waited for. Two details keep ptxas from serialising the wgmma's: every A
 * fragment is packed before the fence (a register written between two wgmma's of a batch costs an
 * injected warpgroup.arrive, C7519), and the batch is waited for here (left in flight across the
 * loop, ptxas found accumulator registers defined inside the stage, C7515, and serialised it). */
template <int HDP, int BK>
__device__ __forceinline__ void wgf_tile_pv(const float (&s)[BK / 8][4], float (&o)[HDP / 8][4], uint32_t sV)
{
    float *of = &o[0][0];
    uint32_t a[BK / 16][4];
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++) {
        a[kk][0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
        a[kk][1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
        a[kk][2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        a[kk][3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
    wg_fence(); /* o was rescaled in registers since the last wgmma that wrote it */
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++) wg_mma_rs_m64k16<HDP>(of, a[kk], wg_desc_mn(sV + kk * 2048, BK * 128));
    wg_commit();
    wg_wait<0>();
    wg_pin<HDP / 2>(of);
}

#endif
