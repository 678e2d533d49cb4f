/* moe_pack.cu — expert weights re-laid out for grouped GEMM v5's packed TMA mode (tma 2).
 *
 * Why: v5 streams each work item's weights as k-tiles of 256 rows x 64 k. In the checkpoint
 * layout W [E][N][Kin] one k-tile is 256 runs of 128 bytes, Kin * 2 bytes apart (4 KB at the real
 * gate_up dims), and the next k-tile of the same rows comes a stage later, so DRAM serves each
 * 128-byte run on its own. Packed, every k-tile is one contiguous 32 KB run and an item's 32 k-tiles
 * follow each other: the same bytes, read in address order.
 *
 * Layout (per expert e, the same E * N * Kin elements, so the packed copy is as large as W):
 *   item xb (256 outputs, or 128 h columns with SwiGLU), k-tile kt, row rr of the tile, k % 64:
 *   packed[e][(xb * ktiles + kt) * 256 * 64 + rr * 64 + k % 64], ktiles = Kin / 64, where
 *   plain:  output n = 256 xb + rr;
 *   SwiGLU: W holds N / 2 gate rows then N / 2 up rows; rr < 128 is gate row 128 xb + rr and
 *           rr >= 128 is up row N / 2 + 128 xb + rr - 128 (v5's item: h columns 128 xb ..).
 * Packable (cuda_moe_v5_packable): N % 256 == 0 (SwiGLU: (N / 2) % 128 == 0) and Kin % 64 == 0,
 * so that no tile has rows or k past the weights. One thread per 16-byte run of 8 k. */
#include "common.cuh"

#define PACK_BN 256
#define PACK_BK 64

/* packed offset (in elements, within expert) of W row n, k .. k + 7 (k % 8 == 0) */
__device__ __forceinline__ int64_t pack_offset(int n, int k, int N, int ktiles, bool swiglu)
{
    int xb, rr;
    if (swiglu) {
        const int half = N / 2, up = n >= half, c = n - up * half;
        xb = c / (PACK_BN / 2);
        rr = up * (PACK_BN / 2) + c % (PACK_BN / 2);
    } else {
        xb = n / PACK_BN;
        rr = n % PACK_BN;
    }
    return ((int64_t)(xb * ktiles + k / PACK_BK) * PACK_BN + rr) * PACK_BK + k % PACK_BK;
}

__global__ void moe_pack_kernel(uint4 *dst, const uint4 *src, int64_t runs, int N, int Kin, int swiglu)
{
    const int per_row = Kin / 8, ktiles = Kin / PACK_BK;
    const int64_t per_expert = (int64_t)N * per_row;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < runs; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t e = i / per_expert;
        const int r = (int)(i - e * per_expert), n = r / per_row, k = (r - n * per_row) * 8;
        dst[(e * N * (int64_t)Kin + pack_offset(n, k, N, ktiles, swiglu != 0)) / 8] = src[i];
    }
}

extern "C" int cuda_moe_v5_packable(int64_t N, int64_t Kin, int swiglu)
{
    const int64_t rows_per_item = swiglu ? PACK_BN / 2 : PACK_BN, outs = swiglu ? N / 2 : N;
    return N > 0 && Kin > 0 && (!swiglu || N % 2 == 0) && outs % rows_per_item == 0 && Kin % PACK_BK == 0 &&
           N * Kin <= INT32_MAX;
}

extern "C" enum q3n_status cuda_moe_pack_v5(void *d_packed, const void *d_W, int64_t E, int64_t N, int64_t Kin,
                                            int swiglu, enum q3n_compute_dtype dt, cudaStream_t stream,
                                            struct q3n_error *err)
{
    Q3N_REQUIRE(dt == Q3N_COMPUTE_BF16 && E > 0 && cuda_moe_v5_packable(N, Kin, swiglu) && d_packed != d_W);
    const int64_t runs = E * N * Kin / 8;
    const int64_t want = (runs + 255) / 256, blocks = want < 132 * 16 ? want : 132 * 16; /* grid-stride beyond */
    moe_pack_kernel<<<(unsigned)blocks, 256, 0, stream>>>((uint4 *)d_packed, (const uint4 *)d_W, runs, (int)N,
                                                          (int)Kin, swiglu);
    CU_LAUNCHED("moe_pack_kernel");
    return Q3N_OK;
}
