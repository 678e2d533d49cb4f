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

/* What a wgmma flash block (v4 .. v8) knows of its place before its first copy: the query head h
 * (blockIdx.x) and its key / value head kh, its first query qb (blockIdx.y counted from the last
 * query block down: the heaviest blocks start first), the cache length S = pos0 + T, the key tiles
 * its last query sees (ntiles), and its shared memory from the first 1024-byte boundary of raw:
 * Q [WGF_BQ x HDP], then two K and two V buffers [WGF_BK x HDP], as shared-space addresses (sQ, sK,
 * sV; send, the first byte past them) and generic pointers (gQ, gK, gV). */
template <int HDP>
struct wgf_block {
    int64_t h, kh, qb, S;
    int ntiles;
    uint32_t sQ, sK, sV, send;
    unsigned char *gQ, *gK, *gV;
    __device__ __forceinline__ wgf_block(unsigned char *raw, int64_t T, int64_t pos0, int64_t NH, int64_t NKV)
    {
        constexpr int QB = WGF_BQ * HDP * 2, KB = WGF_BK * HDP * 2;
        const uint32_t sraw = (uint32_t)__cvta_generic_to_shared(raw);
        sQ = (sraw + 1023u) & ~1023u, sK = sQ + QB, sV = sK + 2 * KB, send = sV + 2 * KB;
        gQ = raw + (sQ - sraw), gK = gQ + QB, gV = gK + 2 * KB;
        h = blockIdx.x, kh = h / (NH / NKV);
        qb = (int64_t)(gridDim.y - 1 - blockIdx.y) * WGF_BQ;
        S = pos0 + T;
        const int64_t qlast = qb + WGF_BQ - 1 < T - 1 ? qb + WGF_BQ - 1 : T - 1;
        ntiles = (int)((pos0 + qlast + 1 + WGF_BK - 1) / WGF_BK);
    }
};

/* Launches flash kernel `kernel` (the parameters of v4 .. v8) over the grid (NH, query blocks of
 * WGF_BQ) with `threads` threads and `smem` bytes of dynamic shared memory; returns the CUDA error of
 * the attribute call (the launch's own is the caller's to check). */
template <typename Kernel>
static cudaError_t wgf_launch(Kernel kernel, int threads, size_t smem, void *out, const void *q, const void *kc,
                              const void *vc, int64_t T, int64_t pos0, int64_t NH, int64_t NKV, int64_t HD,
                              cudaStream_t stream)
{
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
    const float sl2 = 1.4426950408889634f / sqrtf((float)HD);
    kernel<<<dim3((unsigned)NH, cdiv(T, WGF_BQ)), threads, smem, stream>>>(
        (bf16 *)out, (const bf16 *)q, (const bf16 *)kc, (const bf16 *)vc, T, pos0, NH, NKV, (int)HD, sl2);
    return cudaSuccess;
}

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

/* Copies I .. N - 1 of wgf_load_rows' whole-tile path with a row stride known at compile time: copy
 * i from src + i STEP bytes (cp_async16_all_at) to ds + i DSTEP. */
template <int I, int N, int STEP, int DSTEP>
__device__ __forceinline__ void wgf_copy_fixed(uint32_t ds, const bf16 *src)
{
    if constexpr (I < N) {
        cp_async16_all_at<I * STEP>(ds + I * DSTEP, src);
        wgf_copy_fixed<I + 1, N, STEP, DSTEP>(ds, src);
    }
}

/* wgf_load_sw's copies, the same bytes to the same places, with each thread's addresses stepped
 * rather than recomputed: thread tid copies 16-byte chunk c = tid % (HDP / 8) of rows rt + P i
 * (rt = tid / (HDP / 8), P = NT / (HDP / 8) rows a pass, a multiple of 8, so the swizzle's r & 7
 * is the same in every pass and the shared offset steps by P rows). Where every row and column of
 * the tile is real (all but a matrix's last tile, at HD = HDP) the copies need no zero fill: one
 * 64-bit add and one cp.async each. flash v8 copies a tile per step right after its barrier, with
 * the tensor cores idle, and the general form (a bounds test, an address select and a 64-bit
 * multiply per copy) took about 15 instructions a copy there (ncu, session 14).
 * RS > 0: the row stride is RS elements (rs is not read), known at compile time, so that every
 * copy of a whole tile takes one base plus a constant. With a stride known only at run time the
 * addresses form a chain of 64-bit adds, and ptxas, short of registers in flash v8 (254), gives an
 * address register to the next add while the cp.async that reads it is still queued: a
 * long-scoreboard stall on the add (ncu, session 17: 11.6 % of v8's stall samples at T = 16384,
 * against 2.7 % before the chain). The constant removes the chain, not those waits (the registers
 * are still reused); what removed most of the cost was issuing the copies after S_j
 * (attention_flash_ov.cu, FLASH_V8_COPY_AFTER_S). */
template <int HDP, int ROWS, int NT, int RS = 0>
__device__ __forceinline__ void wgf_load_rows(unsigned char *dst, const bf16 *base, int64_t rs, int64_t r0,
                                              int64_t nrows, int HD, int tid = threadIdx.x)
{
    constexpr int per = HDP / 8, P = NT / per;
    static_assert(NT % per == 0 && P % 8 == 0 && ROWS % P == 0, "wgf_load_rows: rows per pass");
    if (RS > 0) rs = RS;
    const int c = tid % per, rt = tid / per;
    unsigned char *d = dst + wg_off<ROWS>(rt, c);
    const bf16 *src = base + (r0 + rt) * rs + c * 8;
    if (HD == HDP && r0 + ROWS <= nrows) {
        const uint32_t ds = (uint32_t)__cvta_generic_to_shared(d);
        if constexpr (RS > 0) {
            static_assert((int64_t)(ROWS - P) * RS * 2 <= INT32_MAX, "wgf_load_rows: byte offsets in int");
            wgf_copy_fixed<0, ROWS / P, P * RS * 2, P * 128>(ds, src);
            return;
        }
        const int64_t step = (int64_t)P * rs;
#pragma unroll
        for (int i = 0; i < ROWS / P; i++, src += step) cp_async16_all(ds + P * i * 128, src);
        return;
    }
    const bool cok = c * 8 < HD;
    const int64_t left = nrows - r0 - rt; /* pass i copies a row of the matrix while P i < left */
#pragma unroll
    for (int i = 0; i < ROWS / P; i++) {
        const bool ok = cok && (int64_t)(P * i) < left;
        cp_async16(d + P * i * 128, ok ? src + (int64_t)(P * i) * rs : base, ok ? 16 : 0);
    }
}

/* Issue (no fence, commit or wait) the HDP / 16 wgmma m64n64k16 of S = Q K^T over one tile into
 * the warpgroup's accumulators sf (64 rows x 64 keys, zeroed by the caller before its fence), k
 * ascending (panel ks / 4, 32 bytes per 16 columns inside a panel). sQ: the warpgroup's first Q row
 * (rows of a WGF_BQ-row tile), sK: the tile's K. */
template <int HDP>
__device__ __forceinline__ void wgf_issue_s(float *sf, uint32_t sQ, uint32_t sK)
{
#pragma unroll
    for (int ks = 0; ks < HDP / 16; ks++)
        wg_mma_m64n64k16(sf, wg_desc(sQ + (ks >> 2) * (WGF_BQ * 128) + (ks & 3) * 32),
                         wg_desc(sK + (ks >> 2) * (WGF_BK * 128) + (ks & 3) * 32));
}

/* s = 0, then S = Q K^T over one tile (wgf_issue_s) issued after a fence and committed as one
 * group; not waited for. */
template <int HDP>
__device__ __forceinline__ void wgf_start_s(float (&s)[WGF_BK / 8][4], uint32_t sQ, uint32_t sK)
{
    float *sf = &s[0][0];
#pragma unroll
    for (int i = 0; i < WGF_BK / 2; i++) sf[i] = 0.0f;
    wg_pin<WGF_BK / 2>(sf);
    wg_fence();
    wgf_issue_s<HDP>(sf, sQ, sK);
    wg_commit();
}

/* s = the warpgroup's 64 rows of S = Q K^T over one tile (wgf_start_s), waited for. */
template <int HDP>
__device__ __forceinline__ void wgf_tile_s(float (&s)[WGF_BK / 8][4], uint32_t sQ, uint32_t sK)
{
    wgf_start_s<HDP>(s, sQ, sK);
    wg_wait<0>();
    wg_pin<WGF_BK / 2>(&s[0][0]);
}

/* P (flash_tile_probs' p in s, the accumulator layout = the A fragment layout) as bf16 A
 * fragments, 16 keys per a[kk]. */
template <int BK>
__device__ __forceinline__ void wgf_pack_p(uint32_t (&a)[BK / 16][4], const float (&s)[BK / 8][4])
{
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++) {
        a[kk][0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
        a[kk][1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
        a[kk][2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        a[kk][3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
}

/* Issue (no fence, commit or wait) o += P V: BK / 16 wgmma m64nHDPk16, keys 16 at a time
 * ascending, A = the packed P, V the MN-major B at sV (wgmma_rs.cuh). */
template <int HDP, int BK>
__device__ __forceinline__ void wgf_issue_pv(float *of, const uint32_t (&a)[BK / 16][4], uint32_t sV)
{
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++) wg_mma_rs_m64k16<HDP>(of, a[kk], wg_desc_mn(sV + kk * 2048, BK * 128));
}

/* o += bf16(P) V for the warpgroup's 64 rows on wgmma, waited for. Two details keep ptxas from
 * serialising the wgmma's: every A fragment is packed before the fence (a register written between
 * two wgmma's of a batch costs an injected warpgroup.arrive, C7519), and the batch is waited for
 * here (left in flight across the loop, ptxas found accumulator registers defined inside the
 * stage, C7515, and serialised it). */
template <int HDP, int BK>
__device__ __forceinline__ void wgf_tile_pv(const float (&s)[BK / 8][4], float (&o)[HDP / 8][4], uint32_t sV)
{
    float *of = &o[0][0];
    uint32_t a[BK / 16][4];
    wgf_pack_p<BK>(a, s);
    wg_fence(); /* o was rescaled in registers since the last wgmma that wrote it */
    wgf_issue_pv<HDP, BK>(of, a, sV);
    wg_commit();
    wg_wait<0>();
    wg_pin<HDP / 2>(of);
}

#endif
