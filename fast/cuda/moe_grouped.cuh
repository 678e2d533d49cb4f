/* moe_grouped.cuh — what the grouped expert GEMMs v3 (moe_grouped.cu, mma.sync) and v4
 * (moe_wgmma.cu, wgmma) share: the 128 x 128 block tile, 16-byte cp.async copies with zero fill,
 * ldmatrix, and the XOR-swizzled shared-memory layout of a 128-row operand tile (internal). */
#ifndef Q3N_CUDA_MOE_GROUPED_CUH
#define Q3N_CUDA_MOE_GROUPED_CUH

#include "common.cuh"

#define G3_BM 128
#define G3_BN 128

__device__ __forceinline__ void g3_cp16(uint32_t dst, const void *src, bool ok)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0));
#endif
}
/* L2 eviction priorities for cache-hinted copies (PTX createpolicy, sm_80+): which lines L2 gives up
 * first when it needs room. A stream read once (expert weights at ~one tile per expert) marked
 * evict_first leaves the lines that are read again (the gathered x rows) in place. */
enum l2_priority { L2_EVICT_NORMAL = 0, L2_EVICT_FIRST = 1, L2_EVICT_LAST = 2 };
__device__ __forceinline__ uint64_t l2_policy(int priority)
{
    uint64_t p = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if (priority == L2_EVICT_FIRST)
        asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(p));
    else if (priority == L2_EVICT_LAST)
        asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;\n" : "=l"(p));
    else
        asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;\n" : "=l"(p));
#endif
    return p;
}
/* g3_cp16 with the L2 eviction policy `policy` (l2_policy) for the bytes it reads. */
__device__ __forceinline__ void g3_cp16_hint(uint32_t dst, const void *src, bool ok, uint64_t policy)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(dst), "l"(src),
                 "r"(ok ? 16 : 0), "l"(policy));
#endif
}
__device__ __forceinline__ void g3_commit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void g3_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}
__device__ __forceinline__ void g3_ldm4(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, uint32_t addr)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
#endif
}
/* Byte offset of (row r, 16-byte chunk c) in a 128 x BK bf16 tile: BK 32 (64-byte rows, 4 chunks)
 * c ^ ((r >> 1) & 3); BK 64 (128-byte rows, 8 chunks) c ^ (r & 7). Either way the 8 rows an
 * ldmatrix reads at one logical chunk land on 8 distinct 16-byte bank groups. */
template <int BK>
__device__ __forceinline__ uint32_t g3_off(int r, int c)
{
    return BK == 32 ? (uint32_t)(r * 64 + ((c ^ ((r >> 1) & 3)) << 4)) : (uint32_t)(r * 128 + ((c ^ (r & 7)) << 4));
}


/* Source rows of the tile rows lr + RS i (i < LP) that one loader thread copies, -1 for zero fill:
 * A row p = x[xrows[p] / div] (GATHER) or p, for p in [r0, rend); B row = output n = 128 blockIdx.x
 * + rr, or with SWIGLU (W holds Nw / 2 gate rows, then Nw / 2 up rows) the gate row c (tile rows
 * rr < 64) or up row Nw / 2 + c (rr >= 64) of h column c = 64 blockIdx.x + rr % 64. */
template <int LP, int RS, bool GATHER, bool SWIGLU>
__device__ __forceinline__ void g3_sources(int (&asrc)[LP], int (&bsrc)[LP], int lr, int r0, int rend,
                                           const int32_t *xrows, int div, int Nw)
{
    const int Wh = Nw / 2;
#pragma unroll
    for (int i = 0; i < LP; i++) {
        const int rr = lr + RS * i, p = r0 + rr;
        asrc[i] = p < rend ? (GATHER ? xrows[p] / div : p) : -1;
        if (SWIGLU) {
            const int c = blockIdx.x * 64 + (rr & 63);
            bsrc[i] = c < Wh ? c + (rr >> 6) * Wh : -1;
        } else {
            const int n = blockIdx.x * G3_BN + rr;
            bsrc[i] = n < Nw ? n : -1;
        }
    }
}

#endif
