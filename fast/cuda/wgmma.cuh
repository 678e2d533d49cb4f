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

/* d[64x128] += A[64x16] B[16x128], both K-major bf16 in shared memory (descriptors), float32 d:
 * per thread d[4 j + q] is row 16 (warp % 4) + lane / 4 + 8 (q / 2) of the warpgroup's 64, column
 * 8 j + 2 (lane % 4) + q % 2 (j < 16): per warp, the mma.sync m16n8 accumulator layout of each
 * 8-column block. */
__device__ __forceinline__ void wg_mma_m64n128k16(float *d, uint64_t da, uint64_t db)
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
                 "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "
                 "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "
                 "%56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                 "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),
                 "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),
                 "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),
                 "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
                 "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),
                 "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),
                 "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
                 "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
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
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "
                 "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "
                 "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "
                 "%59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, "
                 "%78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, "
                 "%97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, "
                 "%113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
                 "%128, %129, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                 "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),
                 "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),
                 "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),
                 "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
                 "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),
                 "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),
                 "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
                 "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
                 "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]),
                 "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]),
                 "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]),
                 "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]),
                 "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]),
                 "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]),
                 "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]),
                 "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
                 "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]),
                 "+f"(d[127])
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
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
                 "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                 "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),
                 "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),
                 "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),
                 "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
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
/* Waits for every cp.async this thread issued (none of them committed to a group). */
__device__ __forceinline__ void wb_cp_async_drain()
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

#endif
