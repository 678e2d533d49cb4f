/* attention_flash_ws.cu — flash_wgmma_bf16_v6: flash v5's products (S = Q K^T and O += P V on
 * wgmma, attention_flash_wgmma.cuh) with the copies in a producer warpgroup and mbarriers instead of a
 * block barrier per tile.
 *
 * Why: in v5 every thread copies part of the next K/V tile and the block meets at __syncthreads
 * once per tile, so both warpgroups run in lock step: they reach their softmax at the same time
 * and leave the tensor cores idle together (v5: 364 TFLOP/s at T = 16384, HD 256, on an H100).
 * With the copies out of their way the two consumer warpgroups only wait for data, drift apart
 * and one's softmax overlaps the other's products.
 * Outcome (H100, dev/test_attn2, session 4): bitwise v3 on every shape, but 6.21 ms at T = 16384
 * against v5's 5.87 ms (0.438 vs 0.412 ms at T = 4096): each warpgroup still runs S, softmax and
 * P V back to back and waits for every product, so drifting apart buys little, while the producer
 * warpgroup costs issue slots and registers. Not the default (attention.cu: old = 5 runs it); the
 * next step is overlapping inside a warpgroup (S of tile j + 1 in flight during tile j's softmax),
 * which needs a second S accumulator (32 registers more than the consumers' 232).
 *
 * Block: 384 threads = 2 consumer warpgroups (warps 0-7: rows [64 wg, 64 wg + 64) of 128 queries,
 * as v5) + 1 producer warpgroup (warps 8-11). A kernel with wgmma is given registers for whole
 * warpgroups (a 288-thread block with one producer warp failed to launch at 224 registers a
 * thread), so the producer is a warpgroup that hands registers to the consumers (setmaxnreg:
 * 40 / 232 a thread; the consumers need ~215). Shared memory: Q [128 x HDP] and two buffers of
 * K and V [64 x HDP], all swizzled panels (v5's layout); 4 mbarriers.
 *  - producer: Q and tile 0 into buffer 0, then tile j into buffer b = j % 2 once both consumer
 *    warpgroups have released tile j - 2 (empty[b]); each fill ends with
 *    cp.async.mbarrier.arrive.noinc on full[b] (128 arrivals: the hardware arrives for each
 *    producer thread when its copies have landed).
 *  - consumer warp, tile j: wait full[b]; fence.proxy.async (the copies came through the generic
 *    proxy, wgmma reads through the async one); S on wgmma, flash_tile_softmax, P V on wgmma (each
 *    waited for: see wgf_tile_pv); release buffer b (lane 0 arrives on empty[b]: 8 arrivals, one
 *    per consumer warp).
 * Phases: buffer b's f-th fill is tile j = 2 f + b. Consumers wait full[b] for phase f (parity
 * f & 1); the producer waits empty[b] for phase f - 1 (parity (f - 1) & 1) before fill f >= 1. Each
 * wait finds its barrier in the awaited phase or the next, never two ahead: full[b] cannot
 * complete phase f + 1 before fill f + 1, which needs this consumer's release of fill f; empty[b]
 * cannot complete phase f before fill f exists. The consumers' last releases are left unmatched.
 * Numerics: the same operations in the same order per output as v5 (so bitwise v3;
 * dev/test_attn2 requires it). Needs compute capability 9.0 (flash_v4_ok). */
#include "attention_flash_wgmma.cuh"

#define WS_THREADS 384 /* 2 consumer warpgroups + 1 producer warpgroup */
#define WS_PRODUCER_REGS 40
#define WS_CONSUMER_REGS 232 /* 128 x 40 + 256 x 232 <= 65536 */

template <int HDP>
__global__ void __launch_bounds__(WS_THREADS, 1) flash_v6_kernel(bf16 *out, const bf16 *q, const bf16 *kc,
                                                                 const bf16 *vc, int64_t T, int64_t pos0, int64_t NH,
                                                                 int64_t NKV, int HD, float sl2)
{
#ifdef Q3N_HAVE_WGMMA
    constexpr int BQ = WGF_BQ, BK = WGF_BK, KB = BK * HDP * 2;
    extern __shared__ unsigned char v6_smem[];
    const wgf_block<HDP> blk(v6_smem, T, pos0, NH, NKV);
    const uint32_t bars = blk.send; /* full[0], full[1], empty[0], empty[1] */
    /* the warp index through a shuffle: provably uniform over the warp, so ptxas does not treat the
     * producer / consumer split as a divergent path around the wgmma's (it would serialise them) */
    const int lane = threadIdx.x & 31, w = __shfl_sync(0xffffffffu, (int)(threadIdx.x >> 5), 0), wg = w >> 2,
              tq = lane & 3, g = lane >> 2;
    auto full = [&](int b) { return bars + 8u * (uint32_t)b; };
    auto empty = [&](int b) { return bars + 16u + 8u * (uint32_t)b; };

    if (threadIdx.x == 0) {
        wb_init(full(0), 128), wb_init(full(1), 128), wb_init(empty(0), 8), wb_init(empty(1), 8);
        wb_init_fence();
    }
    __syncthreads();

    if (wg == 2) { /* producer warpgroup */
        wg_setmaxnreg_dec<WS_PRODUCER_REGS>();
        const int pt = threadIdx.x - 256;
        wgf_load_sw<HDP, BQ, 128>(blk.gQ, q + blk.h * HD, NH * HD, blk.qb, T, HD, pt);
        for (int j = 0; j < blk.ntiles; j++) {
            const int b = j & 1, f = j >> 1;
            if (f > 0) wb_wait(empty(b), (uint32_t)((f - 1) & 1));
            wgf_load_sw<HDP, BK, 128>(blk.gK + b * KB, kc + blk.kh * HD, NKV * HD, (int64_t)j * BK, blk.S, HD, pt);
            wgf_load_sw<HDP, BK, 128>(blk.gV + b * KB, vc + blk.kh * HD, NKV * HD, (int64_t)j * BK, blk.S, HD, pt);
            wb_arrive_cp_async(full(b));
        }
        wb_cp_async_drain();
        return;
    }

    wg_setmaxnreg_inc<WS_CONSUMER_REGS>();
    const int64_t wq0 = pos0 + blk.qb + w * 16; /* position of this warp's first row */
    const int64_t qpos0 = wq0 + g, qpos1 = qpos0 + 8;
    float o[HDP / 8][4], mrow[2], lrow[2], s[BK / 8][4];
    flash_rows_reset<HDP>(o, mrow, lrow);

    for (int j = 0; j < blk.ntiles; j++) {
        const int64_t kb = (int64_t)j * BK;
        const int b = j & 1;
        wb_wait(full(b), (uint32_t)((j >> 1) & 1));
        wg_proxy_fence();
        const bool diag = kb + BK - 1 > wq0; /* some key is past some row of the warp: mask */
        wgf_tile_s<HDP>(s, blk.sQ + wg * (64 * 128), blk.sK + b * KB);
        flash_tile_softmax<HDP, BK>(s, o, mrow, lrow, kb, qpos0, qpos1, diag, sl2, tq);
        wgf_tile_pv<HDP, BK>(s, o, blk.sV + b * KB);      /* waited for: this warp no longer reads buffer b */
        if (lane == 0) wb_arrive(empty(b));
    }
    flash_store_rows<HDP>(out, o, lrow, blk.qb + w * 16 + g, T, NH, blk.h, HD, tq);
#else
    __trap(); /* launched only where flash_v4_ok: the sm_90a code */
#endif
}

template <int HDP>
static cudaError_t launch_flash_v6(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                                   int64_t NH, int64_t NKV, int64_t HD, cudaStream_t stream)
{
    const size_t smem = (size_t)(WGF_BQ + 4 * WGF_BK) * HDP * 2 + 1024 + 32; /* + alignment + 4 mbarriers */
    return wgf_launch(flash_v6_kernel<HDP>, WS_THREADS, smem, out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
}

cudaError_t flash_v6_launch(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                            int64_t NH, int64_t NKV, int64_t HD, cudaStream_t stream)
{
    if (HD <= 64) return launch_flash_v6<64>(out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
    if (HD <= 128) return launch_flash_v6<128>(out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
    return launch_flash_v6<256>(out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
}
