/* moe_pack.h — where the packed expert layout (moe_pack.cu, grouped GEMM v5's tma 2) puts each
 * weight: one definition for the pack kernel, the kernels that read packed experts (grouped v5,
 * the decode GEMV) and the host test that checks it (fast/cuda/test_moe_pack.c). Plain C, so
 * that the host test builds without nvcc; under nvcc the functions are __host__ __device__.
 *
 * An expert's W [N][Kin] (bf16) is cut into work items xb of 256 rows and k-tiles kt of 64 k:
 * the tile (xb, kt) is one contiguous block of 256 x 64 elements, rows of 64 k in order, and an
 * item's ktiles = Kin / 64 tiles follow each other:
 *
 *   packed[(xb * ktiles + kt) * 256 * 64 + rr * 64 + k % 64] = W[n][k],  kt = k / 64, where
 *   plain:  n = 256 xb + rr;
 *   SwiGLU: W holds N / 2 gate rows then N / 2 up rows, and an item is 128 h columns: rr < 128
 *           is gate row 128 xb + rr, rr >= 128 is up row N / 2 + 128 xb + (rr - 128).
 *
 * So row n's elements k .. k + 63 (k % 64 == 0) are contiguous, at
 *   q3n_pack_row_base(n) + q3n_pack_k_offset(k),
 * the next k-tile of the same row is 256 * 64 elements further, and rows rr, rr + 1 of a tile are
 * 64 elements apart. Packable (q3n_pack_fits): N % 256 == 0 (SwiGLU: (N / 2) % 128 == 0) and
 * Kin % 64 == 0, so that no tile has rows or k past the weights. */
#ifndef Q3N_CUDA_MOE_PACK_H
#define Q3N_CUDA_MOE_PACK_H

#include <stdint.h>

#ifdef __CUDACC__
#define Q3N_PACK_FN static __host__ __device__ __forceinline__
#else
#define Q3N_PACK_FN static inline
#endif

#define Q3N_PACK_ROWS 256 /* rows per tile (a v5 work item) */
#define Q3N_PACK_K 64     /* k per tile: 128 bytes of bf16, the TMA box's row */

/* Whether W [N][Kin] can be packed (see above); sizes kept in int32 by the kernels. */
Q3N_PACK_FN int q3n_pack_fits(int64_t N, int64_t Kin, int swiglu)
{
    const int64_t rows_per_item = swiglu ? Q3N_PACK_ROWS / 2 : Q3N_PACK_ROWS, outs = swiglu ? N / 2 : N;
    return N > 0 && Kin > 0 && (!swiglu || N % 2 == 0) && outs % rows_per_item == 0 && Kin % Q3N_PACK_K == 0 &&
           N * Kin <= INT32_MAX;
}

/* Offset (elements, within one expert) of row n's k = 0 in the packed layout. */
Q3N_PACK_FN int64_t q3n_pack_row_base(int n, int N, int ktiles, int swiglu)
{
    int xb, rr;
    if (swiglu) {
        const int half = N / 2, up = n >= half, c = n - up * half;
        xb = c / (Q3N_PACK_ROWS / 2);
        rr = up * (Q3N_PACK_ROWS / 2) + c % (Q3N_PACK_ROWS / 2);
    } else {
        xb = n / Q3N_PACK_ROWS;
        rr = n % Q3N_PACK_ROWS;
    }
    return ((int64_t)xb * ktiles * Q3N_PACK_ROWS + rr) * Q3N_PACK_K;
}

/* Offset of element k from its row's base: whole k-tiles are 256 x 64 elements apart. */
Q3N_PACK_FN int64_t q3n_pack_k_offset(int k)
{
    return (int64_t)(k / Q3N_PACK_K) * (Q3N_PACK_ROWS * Q3N_PACK_K) + k % Q3N_PACK_K;
}

/* Offset of W[n][k] within its expert. */
Q3N_PACK_FN int64_t q3n_pack_offset(int n, int k, int N, int Kin, int swiglu)
{
    return q3n_pack_row_base(n, N, Kin / Q3N_PACK_K, swiglu) + q3n_pack_k_offset(k);
}

#endif
