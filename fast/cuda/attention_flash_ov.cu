/* attention_flash_ov.cu — flash_wgmma_bf16_v8: flash v5 (S = Q K^T and O += P V on wgmma, P from
 * registers; attention_flash_wgmma.cu) with each warpgroup's products overlapped with its own
 * softmax: the P V of tile j - 1 runs on the tensor cores while the softmax of tile j runs on
 * the other units (FlashAttention-3's intra-warpgroup pipelining, written from its description).
 *
 * Why: in v5 a warpgroup runs S_j, waits, runs the softmax of tile j with its products done,
 * then P_j V_j, and waits again; the two warpgroups do this in lock step (one block barrier per
 * tile), so the tensor cores idle during every softmax and O rescale. v6 (a producer warpgroup) and
 * v7 (the warpgroups taking turns) did not help: each warpgroup still waited for every product it
 * issued. Here, per tile j >= 1 and warpgroup:
 *   pack P_{j-1} (kept in s as float32 since step j - 1) into bf16 A fragments; issue
 *   S_j = Q K_j^T (16 wgmma m64n64k16); o *= alpha_{j-1} while S_j runs; issue
 *   O += P_{j-1} V_{j-1} (4 wgmma m64n256k16); wait for S_j only (wgmma.wait_group 1);
 *   flash_tile_probs on S_j (mask, row max, p = 2^(s sl2 - m), l, alpha_j) while P_{j-1} V_{j-1}
 *   runs; wait for it.
 * After the last tile, o *= alpha_last and O += P_last V_last. Registers: o 128, s 32 and the
 * packed P 16 a thread. H100 (dev/test_attn2, session 14, against v5 in the same run): T = 4096
 * 0.407 -> 0.308 ms, T = 16384 5.88 -> 4.27 ms (374 -> 515 TFLOP/s). Steps on the way there, each
 * bitwise and timed in one run beside v5: the overlap alone 0.365 / 4.81 ms; o rescaled under S_j
 * rather than after the P V's wait 0.337 / 4.65; whole tiles copied without the zero-fill path
 * (wgf_load_rows) 0.308 / 4.27.
 *
 * Numerics: the same operations on the same values in the same order as v5. v5 computes, per tile,
 * o = o alpha_j (after P_{j-1} V_{j-1} was added) and then o += P_j V_j; v8 does the same two
 * steps one step later (the rescale by alpha_j and the P_j V_j both in step j + 1, in that order):
 * the same sequence of float operations on each accumulator. So v8 is bitwise v5 and v3
 * (dev/test_attn2 requires it).
 *
 * Copies (cp.async by all 256 threads, v5's swizzled panels by wgf_load_rows, two buffers each of
 * K and V): at the top of step j the block waits for its copies and meets at a barrier: K_j and
 * V_{j-1} have landed, and every warpgroup has finished with K_{j-1} (S_{j-1} was waited for) and
 * V_{j-2} (P_{j-2} V_{j-2} was waited for). Then each warpgroup issues S_j, and the block copies
 * K_{j+1} into K_{j-1}'s buffer and V_j into V_{j-2}'s while S_j runs (FLASH_V8_COPY_AFTER_S; the
 * copies first, with the tensor cores idle since both warpgroups have waited for their P V, was
 * 3.5 % slower), then issues P_{j-1} V_{j-1}. (Copies issued after both products, with their
 * addresses live across the softmax, measured slower still: 0.369 / 5.12 ms against 0.346 / 4.76
 * in session 14's build.) ncu had put a third of the stall samples in those copies, hence
 * wgf_load_rows' short path for whole tiles. The first step
 * (S_0 only) is peeled off the loop and the last P V follows it, so that no wgmma sits in a branch
 * (ptxas would serialise them, C7520).
 *
 * What ptxas needed (checked in the SASS: every MUFU.EX2 of the loop between WARPGROUP.DEPBAR.LE
 * gsb0 1 and 0): the first builds waited for the P V before the exponentials, so nothing
 * overlapped; three things moved the wait back below the softmax (wgf_keep_a, wgf_softmax_done
 * and packing P at the top of the next step, see each).
 * Needs compute capability 9.0 (flash_v4_ok); HD % 8 == 0, HD <= 256, padded to 64 / 128 / 256. */
#include "attention_flash_wgmma.cuh"

/* 1: Qwen3-Next's 2 KV heads of 256 (80B-A3B) run an instance with the K / V row stride (512) as a
 * constant (wgf_load_rows' RS); 0: every shape passes the stride at run time. */
#ifndef FLASH_V8_FIXED_KVLD
#define FLASH_V8_FIXED_KVLD 1
#endif
/* 1: step j's copies are issued after S_j = Q K_j^T, so that their issue (16 cp.async a thread and
 * their addresses) runs beside S_j on the tensor cores; 0: right after the block barrier, before
 * S_j, with the tensor cores idle. ncu of v8 with 0 (session 17, T = 16384,
 * dev/logs/session17_c4_ncuflash.log): tensor pipe 53 % active, 11.6 % of the stall samples long
 * scoreboard, nearly all on the copies' address adds and the fence before S_j (an address register
 * handed to the next add while the cp.async that reads it is still queued). H100, dev/test_attn2
 * --bench, two passes (session17_c5_attn_bench.log), v8 at T = 4096 / 16384:
 *   copies before S_j, stride at run time (session 16's v8)   0.312-0.313 / 4.27 ms (session 14)
 *   ... stride 512 as a constant (FLASH_V8_FIXED_KVLD)       0.312-0.316 / 4.26-4.29
 *   copies after S_j, stride at run time                     0.305-0.306 / 4.13-4.19
 *   copies after S_j, stride 512 as a constant (default)     0.301-0.302 / 4.11-4.12 (-3.5 %)
 * Bitwise the same: the copies fill buffers S_j does not read. */
#ifndef FLASH_V8_COPY_AFTER_S
#define FLASH_V8_COPY_AFTER_S 1
#endif

/* The packed P of the P V in flight, kept alive until the P V's wait. Its registers are not read
 * after the wgmma is issued, so ptxas's allocator hands them to the softmax's values and then
 * waits for the P V before the first of them. An empty asm does not help (ptxas never sees it), so
 * this is a real use: four 16-byte shared stores into a dummy slot, predicated on the bits of an
 * accumulator that the wait has released being all ones (a pattern the tensor cores do not
 * produce: a NaN result is the canonical 0x7fffffff), and harmless if they ever ran (nothing reads
 * the slot). */
template <int BK>
__device__ __forceinline__ void wgf_keep_a(const uint32_t (&a)[BK / 16][4], float o0, uint32_t sdummy)
{
    static_assert(BK == 64, "wgf_keep_a: four A fragments");
    asm volatile("{\n.reg .pred p;\nsetp.eq.b32 p, %0, -1;\n"
                 "@p st.shared.v4.b32 [%1], {%2, %3, %4, %5};\n"
                 "@p st.shared.v4.b32 [%1], {%6, %7, %8, %9};\n"
                 "@p st.shared.v4.b32 [%1], {%10, %11, %12, %13};\n"
                 "@p st.shared.v4.b32 [%1], {%14, %15, %16, %17};\n}\n"
                 ::"r"(__float_as_uint(o0)), "r"(sdummy), "r"(a[0][0]), "r"(a[0][1]), "r"(a[0][2]), "r"(a[0][3]),
                 "r"(a[1][0]), "r"(a[1][1]), "r"(a[1][2]), "r"(a[1][3]), "r"(a[2][0]), "r"(a[2][1]), "r"(a[2][2]),
                 "r"(a[2][3]), "r"(a[3][0]), "r"(a[3][1]), "r"(a[3][2]), "r"(a[3][3])
                 : "memory");
}

/* Ends the basic block after the softmax, so that ptxas's scheduler cannot hoist the P V's wait
 * (wgmma.wait_group 0) above the softmax's arithmetic, which it does when both sit in one block: a
 * branch on the row sums (the last values the softmax computes) to a trap that never runs (the
 * bits of a float sum are never all ones). The condition goes through a warp vote: on a per-thread
 * condition ptxas treats what follows as a divergent path and serialises every wgmma (C7518). */
__device__ __forceinline__ void wgf_softmax_done(const float (&lrow)[2])
{
    if (__any_sync(0xffffffffu, (__float_as_uint(lrow[0]) & __float_as_uint(lrow[1])) == 0xffffffffu)) {
        wg_wait<0>(); /* else ptxas injects this wait itself and says so (C7517) in every build */
        __trap();
    }
}

/* Step j's copies (j >= 1): K_{j+1} into K_{j-1}'s buffer (while there is one) and V_j into
 * V_{j-2}'s, one commit group. */
template <int HDP, int KVLD>
__device__ __forceinline__ void v8_copy_step(const wgf_block<HDP> &blk, const bf16 *kbase, const bf16 *vbase,
                                             int64_t ld, int j, int HD)
{
    constexpr int BK = WGF_BK, KB = BK * HDP * 2;
    const int64_t kb = (int64_t)j * BK;
    if (j + 1 < blk.ntiles)
        wgf_load_rows<HDP, BK, 256, KVLD>(blk.gK + ((j + 1) & 1) * KB, kbase, ld, kb + BK, blk.S, HD);
    wgf_load_rows<HDP, BK, 256, KVLD>(blk.gV + (j & 1) * KB, vbase, ld, kb, blk.S, HD);
    cp_async_commit();
}

/* KVLD > 0: the K / V row stride NKV HD, known at compile time (wgf_load_rows' RS); 0: at run time. */
template <int HDP, int KVLD>
__global__ void __launch_bounds__(256, 1) flash_v8_kernel(bf16 *out, const bf16 *q, const bf16 *kc, const bf16 *vc,
                                                          int64_t T, int64_t pos0, int64_t NH, int64_t NKV, int HD,
                                                          float sl2)
{
#ifdef Q3N_HAVE_WGMMA
    constexpr int BQ = WGF_BQ, BK = WGF_BK, KB = BK * HDP * 2;
    extern __shared__ unsigned char v8_smem[];
    const wgf_block<HDP> blk(v8_smem, T, pos0, NH, NKV);
    const uint32_t sDummy = blk.send; /* 16 bytes for wgf_keep_a */
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, wg = w >> 2, tq = lane & 3, g = lane >> 2;
    const int64_t wq0 = pos0 + blk.qb + w * 16; /* position of this warp's first row */
    const int64_t qpos0 = wq0 + g, qpos1 = qpos0 + 8;
    const uint32_t sQw = blk.sQ + wg * (64 * 128);
    const bf16 *kbase = kc + blk.kh * HD, *vbase = vc + blk.kh * HD;
    const int64_t ld = KVLD > 0 ? KVLD : NKV * HD;

    float o[HDP / 8][4], mrow[2], lrow[2], s[BK / 8][4], alpha[2];
    uint32_t a[BK / 16][4];
    float *of = &o[0][0], *sf = &s[0][0];
    flash_rows_reset<HDP>(o, mrow, lrow);

    /* step 0: S_0 alone */
    wgf_load_rows<HDP, BQ, 256>(blk.gQ, q + blk.h * HD, NH * HD, blk.qb, T, HD);
    wgf_load_rows<HDP, BK, 256, KVLD>(blk.gK, kbase, ld, 0, blk.S, HD);
    cp_async_commit();
    cp_async_wait<0>();
    wg_proxy_fence();
    __syncthreads();
    wgf_start_s<HDP>(s, sQw, blk.sK);
    if (blk.ntiles > 1) wgf_load_rows<HDP, BK, 256, KVLD>(blk.gK + KB, kbase, ld, BK, blk.S, HD);
    wgf_load_rows<HDP, BK, 256, KVLD>(blk.gV, vbase, ld, 0, blk.S, HD);
    cp_async_commit();
    wg_wait<0>();
    wg_pin<BK / 2>(sf);
    flash_tile_probs<BK>(s, alpha, mrow, lrow, 0, qpos0, qpos1, wq0 < BK - 1, sl2, tq);

    for (int j = 1; j < blk.ntiles; j++) {
        const int64_t kb = (int64_t)j * BK;
        cp_async_wait<0>(); /* K_j and V_{j-1} landed for this thread ... */
        wg_proxy_fence();   /* ... visible to wgmma's async proxy ... */
        __syncthreads();    /* ... and for all; K_{j-1} and V_{j-2} are no longer read */
        if (!FLASH_V8_COPY_AFTER_S) v8_copy_step<HDP, KVLD>(blk, kbase, vbase, ld, j, HD);
        /* P_{j-1} packed here, not at the end of step j - 1: there ptxas scheduled the packing
         * among the exponentials, into registers the P V in flight still reads, and so waited
         * for the P V before the softmax */
        wgf_pack_p<BK>(a, s);
        wgf_start_s<HDP>(s, sQw, blk.sK + (j & 1) * KB); /* its fence also covers the packed P_{j-1} */
        if (FLASH_V8_COPY_AFTER_S) v8_copy_step<HDP, KVLD>(blk, kbase, vbase, ld, j, HD);
        flash_rescale_o<HDP>(o, alpha); /* by alpha_{j-1}, while S_j runs */
        wg_pin<HDP / 2>(of);
        wg_fence(); /* o rescaled since the last wgmma that wrote it */
        wgf_issue_pv<HDP, BK>(of, a, blk.sV + ((j - 1) & 1) * KB);
        wg_commit();
        wg_wait<1>(); /* S_j done; P_{j-1} V_{j-1} may still run */
        wg_pin<BK / 2>(sf);
        flash_tile_probs<BK>(s, alpha, mrow, lrow, kb, qpos0, qpos1, kb + BK - 1 > wq0, sl2, tq);
        wgf_softmax_done(lrow);
        wg_wait<0>();
        wg_pin<HDP / 2>(of);
        wgf_keep_a<BK>(a, o[0][0], sDummy);
    }

    /* the last tile's P V */
    cp_async_wait<0>();
    wg_proxy_fence();
    __syncthreads();
    wgf_pack_p<BK>(a, s);
    flash_rescale_o<HDP>(o, alpha);
    wg_fence();
    wgf_issue_pv<HDP, BK>(of, a, blk.sV + ((blk.ntiles - 1) & 1) * KB);
    wg_commit();
    wg_wait<0>();
    wg_pin<HDP / 2>(of);
    flash_store_rows<HDP>(out, o, lrow, blk.qb + w * 16 + g, T, NH, blk.h, HD, tq);
#else
    __trap(); /* launched only where flash_v4_ok: the sm_90a code */
#endif
}

template <int HDP, int KVLD = 0>
static cudaError_t launch_flash_v8(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                                   int64_t NH, int64_t NKV, int64_t HD, cudaStream_t stream)
{
    const size_t smem = (size_t)(WGF_BQ + 4 * WGF_BK) * HDP * 2 + 1024 + 16; /* + alignment + wgf_keep_a's slot */
    return wgf_launch(flash_v8_kernel<HDP, KVLD>, 256, smem, out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
}

cudaError_t flash_v8_launch(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                            int64_t NH, int64_t NKV, int64_t HD, cudaStream_t stream)
{
    if (HD <= 64) return launch_flash_v8<64>(out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
    if (HD <= 128) return launch_flash_v8<128>(out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
    if (HD == 256 && NKV == 2 && FLASH_V8_FIXED_KVLD)
        return launch_flash_v8<256, 512>(out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
    return launch_flash_v8<256>(out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
}
