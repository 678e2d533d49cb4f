/* moe_pack.cu — expert weights re-laid out for grouped GEMM v5's packed TMA mode (tma 2) and the
 * decode GEMV's packed reads; the layout itself is defined in moe_pack.h.
 *
 * Why: v5 streams each work item's weights as k-tiles of 256 rows x 64 k. In the checkpoint
 * layout W [E][N][Kin] one k-tile is 256 runs of 128 bytes, Kin * 2 bytes apart (4 KB at the real
 * gate_up dims), and the next k-tile of the same rows comes a stage later, so DRAM serves each
 * 128-byte run on its own. Packed, every k-tile is one contiguous 32 KB run and an item's k-tiles
 * follow each other: the same bytes, read in address order. Same size as W, out of place; one
 * thread per 16-byte run of 8 k. */
#include "common.cuh"
#include "moe_pack.h"

__global__ void moe_pack_kernel(uint4 *dst, const uint4 *src, int64_t runs, int N, int Kin, int swiglu)
{
    const int per_row = Kin / 8;
    const int64_t per_expert = (int64_t)N * per_row;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < runs; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t e = i / per_expert;
        const int r = (int)(i - e * per_expert), n = r / per_row, k = (r - n * per_row) * 8;
        dst[(e * N * (int64_t)Kin + q3n_pack_offset(n, k, N, Kin, swiglu)) / 8] = src[i];
    }
}

extern "C" int cuda_moe_v5_packable(int64_t N, int64_t Kin, int swiglu) { return q3n_pack_fits(N, Kin, swiglu); }

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
