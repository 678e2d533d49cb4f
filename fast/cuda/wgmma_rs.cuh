/* wgmma_rs.cuh — Hopper warpgroup MMA with the A operand in registers (internal to fast/cuda), for
 * products whose left factor is computed in registers: flash attention v5's P V (P = the softmax
 * probabilities of a 64-key tile, never written to shared memory).
 *
 *   d[64 x N] += A[64 x 16] B[16 x N],   N = 64, 128 or 256, float32 d, bf16 A and B.
 *
 * A in registers, per warp w of the warpgroup (rows 16 w .. 16 w + 15), lane = 4 g + tq: the
 * mma.sync m16n8k16 A fragment, a[0] = (row g, k 2 tq, 2 tq + 1), a[1] = (row g + 8, same k),
 * a[2] = (row g, k 2 tq + 8, + 9), a[3] = (row g + 8, same k); low half = lower k. That is exactly
 * the float32 accumulator layout of a wgmma / mma.sync result over 16 columns (two 8-column
 * blocks), so a product's output packs into the next product's A without a shuffle.
 * d: as wg_mma_m64n64k16 in wgmma.cuh, d[4 j + q] = (row 16 w + g + 8 (q / 2), column 8 j + 2 tq
 * + q % 2), j < N / 8.
 * B in shared memory, MN-major ("transposed", imm-trans-b = 1): row k of B is N contiguous bf16
 * stored as 64-column panels of the 128-byte swizzle (wgmma.cuh's layout, the one a K-major
 * tile of 64-element rows has: wg_off<ROWS>(k, chunk)). The descriptor (wg_desc_mn) then gives
 * the 8-k-row group stride (1024 bytes, the "stride byte offset" of an MN-major operand) and the
 * panel stride (ROWS * 128 bytes, its "leading byte offset"); step k by 16 = 2048 bytes. */
#ifndef Q3N_CUDA_WGMMA_RS_CUH
#define Q3N_CUDA_WGMMA_RS_CUH

#include "wgmma.cuh"

/* Descriptor of an MN-major B operand: panels of 64 N-columns, panel_bytes apart, each [k][64]
 * with 128-byte swizzled rows, 8-row groups 1024 bytes apart, starting at saddr (1024-aligned
 * pattern, advanced by 2048 bytes per 16 k). */
__device__ __forceinline__ uint64_t wg_desc_mn(uint32_t saddr, uint32_t panel_bytes)
{
    return (uint64_t)((saddr & 0x3FFFFu) >> 4) | ((uint64_t)((panel_bytes & 0x3FFFFu) >> 4) << 16) |
           ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}

/* One wgmma with A from registers, for B MN-major (TB = 1: wg_desc_mn) or K-major (TB = 0: wg_desc,
 * the chunked delta rule's scan v3); N accumulators per warpgroup row block as described above.
 * acc = 0: d = A B (d's old values are not read), else d += A B. */
template <int N, int TB>
struct wg_rs;

template <int TB>
struct wg_rs<64, TB> {
    static __device__ __forceinline__ void mma(float *d, const uint32_t (&a)[4], uint64_t db, int acc)
    {
#ifdef Q3N_HAVE_WGMMA
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" Q3N_WG_R32 "}, "
                     "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
                     : Q3N_WG_D32(d)
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
#endif
    }
};

template <int TB>
struct wg_rs<128, TB> {
    static __device__ __forceinline__ void mma(float *d, const uint32_t (&a)[4], uint64_t db, int acc)
    {
#ifdef Q3N_HAVE_WGMMA
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" Q3N_WG_R64 "}, "
                     "{%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
                     : Q3N_WG_D64(d)
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
#endif
    }
};

template <int TB>
struct wg_rs<256, TB> {
    static __device__ __forceinline__ void mma(float *d, const uint32_t (&a)[4], uint64_t db, int acc)
    {
#ifdef Q3N_HAVE_WGMMA
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" Q3N_WG_R128 "}, "
                     "{%128, %129, %130, %131}, %132, p, 1, 1, %134;\n}\n"
                     : Q3N_WG_D128(d)
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
#endif
    }
};

/* d[64 x N] += A[64 x 16] B[16 x N] (acc = 0: d = A B), B MN-major (descriptor wg_desc_mn). */
template <int N>
__device__ __forceinline__ void wg_mma_rs_m64k16(float *d, const uint32_t (&a)[4], uint64_t db, int acc = 1)
{
    wg_rs<N, 1>::mma(d, a, db, acc);
}
/* The same with B K-major (descriptor wg_desc: row n of B^T holds its k values, 128-byte swizzle). */
template <int N>
__device__ __forceinline__ void wg_mma_rs_kb_m64k16(float *d, const uint32_t (&a)[4], uint64_t db, int acc = 1)
{
    wg_rs<N, 0>::mma(d, a, db, acc);
}

#endif
