/* wgmma.cuh — Hopper warpgroup MMA (wgmma) helpers shared by the grouped expert GEMM v4
 * (moe_wgmma.cu) and flash attention v4 (attention_flash_wgmma.cu); internal to fast/cuda.
 *
 * Operands live in shared memory as K-major tiles with the 128-byte swizzle: rows of 64 bf16
 * (128 bytes), the 16-byte chunk c of row r stored at chunk c ^ (r % 8), 8-row groups of 1024
 * bytes, the tile starting on a 1024-byte boundary (moe_grouped.cuh's g3_off<64> is this layout).
 * Wider rows are split into 64-column panels stored one after the other. The code exists only in
 * the sm_90a compilation (Q3N_HAVE_WGMMA); callers check the device before launching.
 * Also the mbarrier helpers of the warp-specialised grouped GEMM v5 (moe_wgmma5.cu). */
#ifndef Q3N_CUDA_WGMMA_CUH
#define Q3N_CUDA_WGMMA_CUH

#include "common.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define Q3N_HAVE_WGMMA 1
#endif

/* Shared-memory matrix descriptor of such a tile: bits 0-13 start address / 16, 16-29
 * leading-dimension byte offset / 16 (unused by swizzled K-major layouts: 1), 32-45 stride byte
 * offset / 16 (1024: one 8-row group), 62-63 layout (1 = 128-byte swizzle). Moving along k by 16
 * elements inside a panel adds 32 bytes to the start address. */
__device__ __forceinline__ uint64_t wg_desc(uint32_t saddr)
{
    return (uint64_t)((saddr & 0x3FFFFu) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}

/* Inline-PTX pieces shared by the wgmma wrappers (here and wgmma_rs.cuh): the operand list of N
 * float32 accumulators d[0 .. N-1] ("+f": read and written) and the placeholders %0 .. %N-1 that
 * name them in the instruction. */
#define Q3N_WG_D8(d, i)                                                                                   \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
        "+f"(d[i + 7])
#define Q3N_WG_D16(d) Q3N_WG_D8(d, 0), Q3N_WG_D8(d, 8)
#define Q3N_WG_D32(d) Q3N_WG_D16(d), Q3N_WG_D8(d, 16), Q3N_WG_D8(d, 24)
#define Q3N_WG_D64(d) Q3N_WG_D32(d), Q3N_WG_D8(d, 32), Q3N_WG_D8(d, 40), Q3N_WG_D8(d, 48), Q3N_WG_D8(d, 56)
#define Q3N_WG_D128(d)                                                                                    \
    Q3N_WG_D64(d), Q3N_WG_D8(d, 64), Q3N_WG_D8(d, 72), Q3N_WG_D8(d, 80), Q3N_WG_D8(d, 88), Q3N_WG_D8(d, 96), \
        Q3N_WG_D8(d, 104), Q3N_WG_D8(d, 112), Q3N_WG_D8(d, 120)
#define Q3N_WG_R16 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define Q3N_WG_R32 \
    Q3N_WG_R16 ", " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define Q3N_WG_R64 \
    Q3N_WG_R32 ", " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, " \
    "%49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define Q3N_WG_R128 \
    Q3N_WG_R64 ", " \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, " \
    "%81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, " \
    "%98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, " \
    "%126, %127"

/* d[64x128] += A[64x16] B[16x128], both K-major bf16 in shared memory (descriptors), float32 d:
 * per thread d[4 j + q] is row 16 (warp % 4) + lane / 4 + 8 (q / 2) of the warpgroup's 64, column
 * 8 j + 2 (lane % 4) + q % 2 (j < 16): per warp, the mma.sync m16n8 accumulator layout of each
 * 8-column block. */
__device__ __forceinline__ void wg_mma_m64n128k16(float *d, uint64_t da, uint64_t db)
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" Q3N_WG_R64
                 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : Q3N_WG_D64(d)
                 : "l"(da), "l"(db), "r"(1));
#endif
}

/* d[64x256] += A[64x16] B[16x256], both K-major bf16 in shared memory (descriptors), float32 d:
 * per thread d[4 j + q] is row 16 (warp % 4) + lane / 4 + 8 (q / 2) of the warpgroup's 64, column
 * 8 j + 2 (lane % 4) + q % 2 (j < 32): the m64n128k16 layout continued over 32 8-column blocks.
 * The B tile is 256 rows of 128 bytes (32 8-row groups of 1024 bytes, the same descriptor). */
__device__ __forceinline__ void wg_mma_m64n256k16(float *d, uint64_t da, uint64_t db)
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" Q3N_WG_R128
                 "}, %128, %129, p, 1, 1, 0, 0;\n}\n"
                 : Q3N_WG_D128(d)
                 : "l"(da), "l"(db), "r"(1));
#endif
}

/* d[64x64] += A[64x16] B[16x64], both K-major bf16 in shared memory (descriptors), float32 d:
 * per thread d[4 j + q] is row 16 (warp % 4) + lane / 4 + 8 (q / 2) of the warpgroup's 64, column
 * 8 j + 2 (lane % 4) + q % 2 (j < 8): per warp, the mma.sync m16n8 accumulator layout of each
 * 8-column block. */
__device__ __forceinline__ void wg_mma_m64n64k16(float *d, uint64_t da, uint64_t db)
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" Q3N_WG_R32
                 "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : Q3N_WG_D32(d)
                 : "l"(da), "l"(db), "r"(1));
#endif
}

/* d[64x32] += A[64x16] B[16x32], both K-major bf16 in shared memory (descriptors), float32 d:
 * per thread d[4 j + q] is row 16 (warp % 4) + lane / 4 + 8 (q / 2) of the warpgroup's 64, column
 * 8 j + 2 (lane % 4) + q % 2 (j < 4): the same layout over 4 8-column blocks (B: 32 rows, four
 * 8-row groups of 1024 bytes). */
__device__ __forceinline__ void wg_mma_m64n32k16(float *d, uint64_t da, uint64_t db)
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {" Q3N_WG_R16
                 "}, %16, %17, p, 1, 1, 0, 0;\n}\n"
                 : Q3N_WG_D16(d)
                 : "l"(da), "l"(db), "r"(1));
#endif
}

/* Keep the compiler from moving accumulator reads/writes across the asynchronous MMAs. */
template <int N>
__device__ __forceinline__ void wg_pin(float *d)
{
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}
__device__ __forceinline__ void wg_fence()
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_commit()
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wg_wait()
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
/* Shared memory written by the generic proxy (st.shared, cp.async) is read by wgmma through the
 * async proxy: each writer fences before the barrier that publishes the tile. */
__device__ __forceinline__ void wg_proxy_fence()
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

/* Byte offset of (row r, 16-byte chunk c) in a ROWS-row tile of 64-column panels (layout above). */
template <int ROWS>
__device__ __forceinline__ uint32_t wg_off(int r, int c)
{
    return (uint32_t)((c >> 3) * (ROWS * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

/* Named barrier `id` (1..15; 0 is __syncthreads) of `n` threads: sync waits for all n, arrive
 * counts this thread without waiting (a producer-consumer handshake between warpgroups). */
template <int N>
__device__ __forceinline__ void wg_bar_sync(int id)
{
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(N) : "memory");
}
template <int N>
__device__ __forceinline__ void wg_bar_arrive(int id)
{
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "n"(N) : "memory");
}

/* Warp specialisation's register split: a warpgroup that only copies gives registers back (dec),
 * one that multiplies takes them (inc); N a multiple of 8 in [24, 256], executed by every thread
 * of the warpgroup. The kernel's launch registers (65536 / threads) are what both start from. */
template <int N>
__device__ __forceinline__ void wg_setmaxnreg_dec()
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void wg_setmaxnreg_inc()
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

/* ---- warp specialisation: mbarriers (grouped GEMM v5, flash v6) ----
 * An mbarrier is a 64-bit word in shared memory that counts arrivals: init sets the arrivals per
 * phase; when they have all arrived the phase completes and the next one (parity flipped) starts.
 * wb_wait(bar, parity) returns once the phase of that parity has completed: try_wait.parity P is
 * true when the barrier's current phase has the other parity. So a wait for phase n is right only
 * while the barrier is in phase n or n + 1; in phase n - 1 it would return at once (the callers'
 * phase logic rules that out: see moe_wgmma5.cu). */
__device__ __forceinline__ void wb_init(uint32_t bar, uint32_t arrivals)
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals) : "memory");
#endif
}
/* Makes the initialised barriers visible to the asynchronous arrivals (cp.async) before the block
 * barrier that publishes them. */
__device__ __forceinline__ void wb_init_fence()
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
/* One arrival (release: this thread's earlier memory operations happen before the phase completes). */
__device__ __forceinline__ void wb_arrive(uint32_t bar)
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}
/* One arrival made by the hardware once every cp.async this thread issued so far has landed in
 * shared memory. noinc: the arrival counts against the arrivals set by wb_init (without it the
 * instruction would first add one expected arrival, to be matched by a plain arrive). */
__device__ __forceinline__ void wb_arrive_cp_async(uint32_t bar)
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
#endif
}
/* Spins (try_wait suspends the thread for a while between polls) until the phase of this parity
 * has completed; acquire: what the arriving threads did before arriving is visible afterwards. */
__device__ __forceinline__ void wb_wait(uint32_t bar, uint32_t parity)
{
#ifdef Q3N_HAVE_WGMMA
    uint32_t done = 0;
    do {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
    } while (!done);
#endif
}
/* One arrival that also raises the phase's expected transaction bytes by `bytes`: the phase then
 * completes only once the tensor copies below have delivered them (complete_tx) as well. */
__device__ __forceinline__ void wb_arrive_expect_tx(uint32_t bar, uint32_t bytes)
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
/* TMA: the box of the 3-D tensor map `map` (a __grid_constant__ kernel parameter) whose first
 * element has coordinates (c0, c1, c2), innermost first, into shared memory at dst (laid out and
 * swizzled as the map says; elements outside the tensor are zeros); the bytes are counted on bar's
 * current phase (complete_tx). Issued by one thread. */
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const void *map, int c0, int c1, int c2, uint32_t bar)
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
                 : "memory");
#endif
}
/* tma_load_3d with an L2 eviction policy for the bytes it reads (policy: l2_policy's 64-bit value),
 * e.g. evict_first for a stream read once, so that it does not push out what L2 should keep. */
__device__ __forceinline__ void tma_load_3d_hint(uint32_t dst, const void *map, int c0, int c1, int c2, uint32_t bar,
                                                 uint64_t policy)
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint"
                 " [%0], [%1, {%2, %3, %4}], [%5], %6;\n" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar), "l"(policy)
                 : "memory");
#endif
}
/* TMA of one box of the 2-D tensor map `map` at (c0, c1), innermost first, into shared memory at dst
 * of this CTA (as tma_load_3d). The swizzle is a function of the destination address (the 128-byte
 * mode XORs address bits 4-6 with bits 7-9), so a one-row box at base + 128 r of a 1024-aligned tile
 * lands exactly where a whole-tile copy would put row r: how grouped v5 gathers A rows by TMA. */
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const void *map, int c0, int c1, uint32_t bar)
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
                 : "memory");
#endif
}
/* The same box delivered to the same shared-memory offset dst of every CTA of this cluster whose
 * rank's bit is set in mask, one L2 read for all of them; each destination CTA's barrier at offset
 * bar gets the bytes that land in that CTA (complete_tx). */
__device__ __forceinline__ void tma_load_2d_multicast(uint32_t dst, const void *map, int c0, int c1, uint32_t bar,
                                                      uint16_t mask)
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 ".multicast::cluster [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar), "h"(mask)
                 : "memory");
#endif
}
/* The 3-D box of tma_load_3d delivered to the same shared-memory offset dst of every CTA of this
 * cluster whose rank's bit is set in mask: one L2 read for all of them; each destination CTA's
 * barrier at offset bar gets the bytes that land in that CTA (complete_tx). */
__device__ __forceinline__ void tma_load_3d_multicast(uint32_t dst, const void *map, int c0, int c1, int c2,
                                                      uint32_t bar, uint16_t mask)
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 ".multicast::cluster [%0], [%1, {%2, %3, %4}], [%5], %6;\n" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar), "h"(mask)
                 : "memory");
#endif
}
/* ---- thread-block clusters ---- */
/* This CTA's rank in its cluster (0 without clusters). */
__device__ __forceinline__ uint32_t cl_rank()
{
    uint32_t r = 0;
#ifdef Q3N_HAVE_WGMMA
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
#endif
    return r;
}
/* One arrival on the barrier at offset bar of the shared memory of cluster CTA `rank` (this one
 * included); release at cluster scope: this thread's earlier reads of its own stage (its wgmma's,
 * retired) happen before a producer that waits for the phase overwrites that stage. */
__device__ __forceinline__ void wb_arrive_cluster(uint32_t bar, uint32_t rank)
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("{\n.reg .b32 ra;\nmapa.shared::cluster.u32 ra, %0, %1;\n"
                 "mbarrier.arrive.release.cluster.shared::cluster.b64 _, [ra];\n}\n" ::"r"(bar),
                 "r"(rank)
                 : "memory");
#endif
}
/* Every thread of every CTA of the cluster: returns once all have arrived (release / acquire at
 * cluster scope). At the start it publishes the barriers' initialisation to the peers; at the end it
 * keeps each CTA's shared memory alive until no peer can still arrive on it or copy into it. */
__device__ __forceinline__ void cl_sync()
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#endif
}
/* Waits for every cp.async this thread issued (none of them committed to a group). */
__device__ __forceinline__ void wb_cp_async_drain()
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

#endif
