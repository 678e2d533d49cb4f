/* attention_flash_wgmma.cu — causal prefill attention on Hopper's warpgroup MMA (wgmma):
 *  - flash_wgmma_bf16_v4: S = Q K^T on wgmma, P V as flash_mma_bf16_v3 (mma.sync, V by
 *    ldmatrix.trans from v3's padded tile);
 *  - flash_wgmma_bf16_v5: P V on wgmma too, P straight from registers as the A operand
 *    (wgmma_rs.cuh), V an MN-major B operand in the same swizzled panels as K (the default until
 *    v8, attention_flash_ov.cu, overlapped each warpgroup's P V with its next softmax);
 *  - flash_wgmma_bf16_v7: v5 with the two warpgroups taking turns on the tensor cores (slower).
 *
 * Why: in v3 every warp reloads its Q fragments and the K tile's fragments from shared memory by
 * ldmatrix for each 16x8x16 mma.sync (HD = 256: 16 + 64 ldmatrix.x4 per warp and tile), which caps
 * it near 270 TFLOP/s; wgmma reads its shared-memory operands itself, 64 x N x 16 per instruction
 * per warpgroup. v4 moved the first product (289 TFLOP/s at T = 16384), v5 moves the second.
 *
 * Block: one query head h and 128 queries, 8 warps = 2 warpgroups of 64 rows; 64-key tiles.
 * Q [128 x HDP] and the two K buffers [64 x HDP] are stored K-major in 64-column panels with the
 * 128-byte swizzle (wgmma.cuh); V in v4 keeps v3's padded layout for ldmatrix.trans, in v5 the
 * same swizzled panels as K (row = key: for P V that is B[k = key][n = dim], N contiguous, i.e.
 * MN-major). Per tile j:
 *   wait for the copies of tile j, fence.proxy.async, barrier; copy tile j + 1 (cp.async);
 *   warpgroup wg, if any of its rows sees a key of the tile: S[64 x 64] = sum over HDP / 16 steps
 *   of wgmma m64n64k16 (panel ks / 4, 32 bytes per step inside a panel), wait for it;
 *   v4: each warp with a visible key runs v3's flash_tile_softmax and flash_tile_pv on its 16
 *   rows (the wgmma accumulator is, per warp, v3's mma.sync accumulator layout);
 *   v5: S for every tile in both warpgroups (warpgroup 0's last tile is fully masked: a branch
 *   around the wgmma's makes ptxas serialise them, C7520); every warp runs flash_tile_softmax (a
 *   warp none of whose rows sees a key gets p = 0, alpha = 1: o and l unchanged), packs p to bf16
 *   as the A fragments and the warpgroup issues BK / 16 wgmma m64nHDPk16 (keys 16 kk .. 16 kk + 15
 *   each, ascending) and waits for them (attention_flash_wgmma.cuh says why).
 *   v7 = v5 with the warpgroups taking turns on the tensor cores: after the tile's barrier
 *   warpgroup 0 multiplies S while warpgroup 1 waits (named barrier 1); then warpgroup 1's S runs
 *   during warpgroup 0's softmax, and warpgroup 0's P V (after named barrier 2, which warpgroup 1
 *   arrives at once its S is done) during warpgroup 1's softmax. In v5 both warpgroups multiply at
 *   once and then both run their softmax with the tensor cores idle: per tile 4 products + one
 *   softmax, against 4 products with the softmaxes hidden (FlashAttention-3's ping-pong, inside
 *   one tile). The same operations on the same values: bitwise v5. Outcome (H100, session 4,
 *   dev/logs/session4_attn2_v7.log): 6.19 ms at T = 16384 against v5's 5.88 (0.447 vs 0.415 at
 *   T = 4096): the softmax is not what leaves the tensor cores idle (each warpgroup waits for
 *   every product it issues, and the tile barrier stays), so v5 remains the default (old = 6).
 * S and O are summed over k in the same order as v3 (16 at a time, ascending; o + 0 * v = o for the
 * masked keys v3 skips); inside a 16-deep step the order is the tensor core's. dev/test_attn2
 * requires v4, v5 and v7 to be bitwise v3 on every shape it tries (as the grouped GEMM v4 is bitwise v3
 * on an H100), so everything v3 passes holds for them. V must be finite (so is every v3 input:
 * v3 also multiplies masked p = 0 by V inside its diagonal tiles).
 * Needs compute capability 9.0 (flash_v4_ok); HD % 8 == 0, HD <= 256, padded to 64 / 128 / 256. */
#include "attention_flash_wgmma.cuh"

/* PVW: P V on wgmma (v5), else mma.sync (v4). PP (with PVW: v7): the two warpgroups take turns
 * on the tensor cores inside each tile (see the header). */
template <int HDP, bool PVW, bool PP = false>
__global__ void __launch_bounds__(256, 1) flash_v4_kernel(bf16 *out, const bf16 *q, const bf16 *kc, const bf16 *vc,
                                                          int64_t T, int64_t pos0, int64_t NH, int64_t NKV, int HD,
                                                          float sl2)
{
#ifdef Q3N_HAVE_WGMMA
    constexpr int BQ = WGF_BQ, BK = WGF_BK, NT = 256, LD = HDP + 8, KB = BK * HDP * 2;
    extern __shared__ unsigned char v4_smem[];
    const wgf_block<HDP> blk(v4_smem, T, pos0, NH, NKV);
    bf16 *Vs = reinterpret_cast<bf16 *>(blk.gV); /* v4: [2][BK][LD] padded */
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, wg = w >> 2, tq = lane & 3, g = lane >> 2;
    const int64_t wq0 = pos0 + blk.qb + w * 16;   /* position of this warp's first row */
    const int64_t gq0 = pos0 + blk.qb + wg * 64;  /* ... and of its warpgroup's */
    const int64_t qpos0 = wq0 + g, qpos1 = qpos0 + 8;
    auto load_v = [&](int buf, int64_t k0) {
        if (PVW) wgf_load_sw<HDP, BK, 256>(blk.gV + buf * KB, vc + blk.kh * HD, NKV * HD, k0, blk.S, HD);
        else v3_load<HDP, BK, NT>(Vs + buf * BK * LD, vc + blk.kh * HD, NKV * HD, k0, blk.S, HD);
    };

    wgf_load_sw<HDP, BQ, 256>(blk.gQ, q + blk.h * HD, NH * HD, blk.qb, T, HD);
    wgf_load_sw<HDP, BK, 256>(blk.gK, kc + blk.kh * HD, NKV * HD, 0, blk.S, HD);
    load_v(0, 0);
    cp_async_commit();

    float o[HDP / 8][4], mrow[2], lrow[2], s[BK / 8][4];
    flash_rows_reset<HDP>(o, mrow, lrow);

    for (int j = 0; j < blk.ntiles; j++) {
        const int64_t kb = (int64_t)j * BK;
        cp_async_wait<0>(); /* tile j (and Q) landed for this thread ... */
        wg_proxy_fence();   /* ... visible to wgmma's async proxy ... */
        __syncthreads();    /* ... and for all; everyone is done with tile j-1, so its buffers are free */
        if (j + 1 < blk.ntiles) {
            wgf_load_sw<HDP, BK, 256>(blk.gK + ((j + 1) & 1) * KB, kc + blk.kh * HD, NKV * HD, kb + BK, blk.S, HD);
            load_v((j + 1) & 1, kb + BK);
        }
        cp_async_commit();
        const bool active = kb <= wq0 + 15;  /* some key of the tile is visible to some row of the warp */
        const bool diag = kb + BK - 1 > wq0; /* some key is past some row: mask */
        /* uniform over the warpgroup, as wgmma requires; v5 runs every tile of the block in both
         * warpgroups (the one fully masked tile of warpgroup 0 adds o + 0 V): the wgmma's are then
         * outside any branch and ptxas does not serialise them */
        if (PVW || kb <= gq0 + 63) {
            if (PP && wg == 1) wg_bar_sync<256>(1); /* v7: warpgroup 0's S first */
            wgf_tile_s<HDP>(s, blk.sQ + wg * (64 * 128), blk.sK + (j & 1) * KB);
            if (PP) wg_bar_arrive<256>(wg == 0 ? 1 : 2); /* 0 -> 1: your S; 1 -> 0: your P V */
            if (PVW) {
                flash_tile_softmax<HDP, BK>(s, o, mrow, lrow, kb, qpos0, qpos1, diag, sl2, tq);
                if (PP && wg == 0) wg_bar_sync<256>(2); /* v7: after warpgroup 1's S */
                wgf_tile_pv<HDP, BK>(s, o, blk.sV + (j & 1) * KB);
            } else if (active) {
                flash_tile_softmax<HDP, BK>(s, o, mrow, lrow, kb, qpos0, qpos1, diag, sl2, tq);
            }
        }
        if (!PVW && active) flash_tile_pv<HDP, BK, LD>(s, o, Vs + (j & 1) * BK * LD, lane);
    }
    flash_store_rows<HDP>(out, o, lrow, blk.qb + w * 16 + g, T, NH, blk.h, HD, tq);
#else
    __trap(); /* launched only where flash_v4_ok: the sm_90a code */
#endif
}

int flash_v4_ok(int64_t T, int64_t HD, enum q3n_compute_dtype dt)
{
    return flash_v3_ok(T, HD, dt) && cuda_device_is_sm90();
}

template <int HDP, bool PVW, bool PP>
static cudaError_t launch_flash_wg(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                                   int64_t NH, int64_t NKV, int64_t HD, cudaStream_t stream)
{
    const size_t vbytes = PVW ? (size_t)2 * WGF_BK * HDP * 2 : sizeof(bf16) * 2 * WGF_BK * (HDP + 8);
    const size_t smem = (size_t)(WGF_BQ + 2 * WGF_BK) * HDP * 2 + vbytes + 1024;
    return wgf_launch(flash_v4_kernel<HDP, PVW, PP>, 256, smem, out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
}

template <bool PVW, bool PP>
static cudaError_t launch_flash_wg_hd(void *out, const void *q, const void *kc, const void *vc, int64_t T,
                                      int64_t pos0, int64_t NH, int64_t NKV, int64_t HD, cudaStream_t stream)
{
    if (HD <= 64) return launch_flash_wg<64, PVW, PP>(out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
    if (HD <= 128) return launch_flash_wg<128, PVW, PP>(out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
    return launch_flash_wg<256, PVW, PP>(out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
}

cudaError_t flash_v4_launch(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                            int64_t NH, int64_t NKV, int64_t HD, cudaStream_t stream)
{
    return launch_flash_wg_hd<false, false>(out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
}

cudaError_t flash_v5_launch(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                            int64_t NH, int64_t NKV, int64_t HD, cudaStream_t stream)
{
    return launch_flash_wg_hd<true, false>(out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
}

cudaError_t flash_v7_launch(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                            int64_t NH, int64_t NKV, int64_t HD, cudaStream_t stream)
{
    return launch_flash_wg_hd<true, true>(out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
}
