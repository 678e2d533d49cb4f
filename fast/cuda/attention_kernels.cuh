/* attention_kernels.cuh — what attention.cu, attention_flash.cu and attention_decode.cu share
 * (internal to fast/cuda): the cp.async helpers and the launchers the dispatch in attention.cu
 * calls. Kernel descriptions: attention.cu's header. */
#ifndef Q3N_CUDA_ATTENTION_KERNELS_CUH
#define Q3N_CUDA_ATTENTION_KERNELS_CUH

#include "common.cuh"

#define DEC_SPLIT 64 /* keys per block of the smallest decode split (v4; v3 has 128): sizes the split-K scratch */

static __device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes));
#endif
}
/* The same copy of 16 bytes, all of them from src (no zero fill), to the shared address dst. */
static __device__ __forceinline__ void cp_async16_all(uint32_t dst, const void *src)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
#endif
}
/* cp_async16_all from src + OFF bytes, OFF a constant in the PTX address operand. On sm_90 ptxas
 * still forms each address in a register (LDGSTS takes no immediate on its global side), each
 * from src rather than from the previous one; the same sum written in C++ compiles differently, and
 * flash v8's timings (session 17) were measured with this form. */
template <int OFF>
static __device__ __forceinline__ void cp_async16_all_at(uint32_t dst, const void *src)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1+%2], 16;\n" ::"r"(dst), "l"(src), "n"(OFF));
#endif
}
static __device__ __forceinline__ void cp_async_commit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
static __device__ __forceinline__ void cp_async_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

/* attention_flash.cu: flash_mma_bf16_v3 when flash_v3_ok (bf16, T > 1, HD % 8 == 0, HD <= 256),
 * else flash_mma_bf16_v2 (bf16, T > 1, HD <= 256); both return the launch's CUDA error. */
int flash_v3_ok(int64_t T, int64_t HD, enum q3n_compute_dtype dt);
cudaError_t flash_v3_launch(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                            int64_t NH, int64_t NKV, int64_t HD, cudaStream_t stream);
/* attention_flash_wgmma.cu, where flash_v3_ok and the device is compute capability 9.0 (its sm_90a
 * code): flash_wgmma_bf16_v4 (S = Q K^T on wgmma), flash_wgmma_bf16_v5 (P V too; the default
 * prefill kernel there before v8) and flash_wgmma_bf16_v7 (v5, the warpgroups taking turns; slower). */
int flash_v4_ok(int64_t T, int64_t HD, enum q3n_compute_dtype dt);
cudaError_t flash_v4_launch(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                            int64_t NH, int64_t NKV, int64_t HD, cudaStream_t stream);
cudaError_t flash_v5_launch(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                            int64_t NH, int64_t NKV, int64_t HD, cudaStream_t stream);
cudaError_t flash_v7_launch(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                            int64_t NH, int64_t NKV, int64_t HD, cudaStream_t stream);
/* attention_flash_ov.cu: flash_wgmma_bf16_v8 (v5 with each warpgroup's P V of tile j - 1 running
 * during its softmax of tile j; bitwise v5; the default prefill kernel), where flash_v4_ok. */
cudaError_t flash_v8_launch(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                            int64_t NH, int64_t NKV, int64_t HD, cudaStream_t stream);
/* attention_flash_ws.cu: flash_wgmma_bf16_v6 (v5's products, copies by a producer warpgroup meeting
 * the consumers at mbarriers), where flash_v4_ok; measured slower than v5, run only when asked. */
cudaError_t flash_v6_launch(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                            int64_t NH, int64_t NKV, int64_t HD, cudaStream_t stream);
cudaError_t flash_v2_launch(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                            int64_t NH, int64_t NKV, int64_t HD, float scale, cudaStream_t stream);

/* attention_decode.cu: the split-K decode kernels (bf16, HD 128 or 256): one query per head at pos0
 * or *d_pos (when not NULL) against S cached keys (S sizes the split count), partials in d_scratch.
 * decode_v3_ok: either kernel applies. decode_v3_launch (the name the dispatch in attention.cu calls)
 * runs the default, decode_split_bf16_v4 (decode_v4_ok), else decode_split_bf16_v3;
 * decode_split_launch runs version ver (3 or 4; 0 = the default). */
int decode_v3_ok(int64_t HD, enum q3n_compute_dtype dt);
int decode_v4_ok(int64_t NH, int64_t NKV, int64_t HD, enum q3n_compute_dtype dt);
enum q3n_status decode_v3_launch(void *d_out, const void *d_q, const void *d_kc, const void *d_vc, float *d_scratch,
                                 int64_t pos0, const int64_t *d_pos, int64_t S, int64_t NH, int64_t NKV, int64_t HD,
                                 cudaStream_t stream, struct q3n_error *err);
enum q3n_status decode_split_launch(void *d_out, const void *d_q, const void *d_kc, const void *d_vc,
                                    float *d_scratch, int64_t pos0, const int64_t *d_pos, int64_t S, int64_t NH,
                                    int64_t NKV, int64_t HD, int ver, cudaStream_t stream, struct q3n_error *err);

#endif
