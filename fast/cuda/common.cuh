/* common.cuh — helpers shared by the fast/cuda kernels (internal; not a public header).
 *
 * Activations are float (Q3N_COMPUTE_F32) or __nv_bfloat16 (Q3N_COMPUTE_BF16); kernels are
 * templated on the activation type `T` and always compute in float. ld()/st() convert; st()
 * rounds to nearest-even, as torch does when it casts float32 to bfloat16. */
#ifndef Q3N_CUDA_COMMON_CUH
#define Q3N_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda_ops.h" /* brings harness/status.h with C linkage */

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float ld(const float *p) { return *p; }
__device__ __forceinline__ float ld(const bf16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ void st(float *p, float v) { *p = v; }
__device__ __forceinline__ void st(bf16 *p, float v) { *p = __float2bfloat16_rn(v); }
/* Rounds a float as if stored in T and read back. */
__device__ __forceinline__ float rnd(float v, const float *) { return v; }
__device__ __forceinline__ float rnd(float v, const bf16 *) { return __bfloat162float(__float2bfloat16_rn(v)); }

__device__ __forceinline__ float silu_f(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

/* RMSNorm's scale of a row of n values whose squares sum to ss: 1 / sqrt(ss / n + eps) (IEEE
 * divide and square root, as every norm kernel computes it). */
__device__ __forceinline__ float rms_scale(float ss, int64_t n, float eps) { return 1.0f / sqrtf(ss / (float)n + eps); }
/* Threads per row of the norm kernels (norm.cu) and of the fused combine + add + norm (moe.cu),
 * which must agree: the block size fixes the order of the sums of squares. */
static inline unsigned norm_threads(int64_t n) { return n >= 1024 ? 256u : n >= 256 ? 128u : 64u; }

/* 8 bf16 in a 16-byte word <-> 8 floats (element 2i in the low half of word i; packing rounds to
 * nearest even). */
__device__ __forceinline__ void unpack8_bf16(float *f, uint4 v)
{
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(w[i] << 16);          /* low half: the even element */
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u); /* high half: the odd one */
    }
}
__device__ __forceinline__ uint4 pack8_bf16(const float *f)
{
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const __nv_bfloat162 b = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
        w[i] = *reinterpret_cast<const uint32_t *>(&b);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

/* Deterministic block sum (fixed tree order for a fixed blockDim, a multiple of 32 <= 1024).
 * `red` is __shared__ float[32]. Every thread gets the total. */
__device__ __forceinline__ float block_sum(float v, float *red)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    return t;
}

/* Where a kernel that ends a block's residual path can do the next RMSNorm itself (norm folds:
 * cuda_moe_combine_norm, cuda_embed_norm_forward): bf16 rows of D % 8 == 0 values, D <= 16
 * norm_threads(D) (the norm kernel's PER of 8 or 16). */
static inline int norm_fold_ok(int64_t D, enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 && D % 8 == 0 && D <= 16 * (int64_t)norm_threads(D);
}

/* The second half of add_rmsnorm_reg_kernel<bf16, PER> (norm.cu) for one row whose values v (h
 * after the add, as floats) a block of norm_threads(D) threads has put in shared memory and then
 * synchronised on: thread i sums v_j^2 over j = i, i + NT, .. (< PER terms, ascending), block_sum,
 * r = rms_scale, and xn = T(v r (1 + w)) is stored by 8-element chunks. Bitwise the norm kernel. */
template <int PER>
__device__ __forceinline__ void norm_row_from_smem(bf16 *xn_row, const float *v, const float *nw, int D, float eps,
                                                   float *red)
{
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < D) ss += v[i] * v[i];
    }
    const float r = rms_scale(block_sum(ss, red), D, eps);
    for (int c = threadIdx.x; c < D / 8; c += blockDim.x) {
        float o[8];
#pragma unroll
        for (int q = 0; q < 8; q++) o[q] = v[8 * c + q] * r * (1.0f + nw[8 * c + q]);
        reinterpret_cast<uint4 *>(xn_row)[c] = pack8_bf16(o);
    }
}
/* block_sum of the squares of n values over a block of NVW * 32 threads, where block thread i
 * summed the elements i, i + 32 NVW, ... in that order, computed by one warp: lane l holds
 * x[m] = the element l + 32 m (m < NM; elements >= n not read), so virtual warp v (block thread
 * 32 v + l) owns m = v, v + NVW, ...; each virtual warp is reduced by block_sum's xor butterfly
 * and the virtual warps' totals by its second butterfly: bitwise block_sum's result (deltanet
 * l2norm / gated norm, attention q/k norm). */
template <int NVW, int NM>
__device__ __forceinline__ float warp_block_sum_sq(const float *x, int n, int lane)
{
    float wt[NVW];
#pragma unroll
    for (int v = 0; v < NVW; v++) {
        float ss = 0.0f;
#pragma unroll
        for (int m = v; m < NM; m += NVW)
            if (lane + 32 * m < n) ss += x[m] * x[m];
        for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
        wt[v] = ss;
    }
    float t = 0.0f;
#pragma unroll
    for (int v = 0; v < NVW; v++)
        if (lane == v) t = wt[v];
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    return t;
}

__device__ __forceinline__ float block_max(float v, float *red)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1) t = fmaxf(t, __shfl_xor_sync(0xffffffffu, t, o));
    return t;
}

/* Error plumbing: every runtime call and every launch goes through these. */
/* Exclusive prefix sum of v over the block's threads in thread order (blockDim.x a multiple of 32,
 * at most 1024; every thread calls it): an inclusive scan per warp by shuffles, the warp totals
 * scanned by warp 0 in wsum[32] (shared), two barriers. Integer: the result is exact. */
__device__ __forceinline__ int block_exclusive_scan(int v, int *wsum)
{
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, nw = blockDim.x >> 5;
    int x = v;
    for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) wsum[w] = x;
    __syncthreads();
    if (w == 0) {
        int s = lane < nw ? wsum[lane] : 0;
        for (int o = 1; o < 32; o <<= 1) {
            const int y = __shfl_up_sync(0xffffffffu, s, o);
            if (lane >= o) s += y;
        }
        wsum[lane] = s;
    }
    __syncthreads();
    return (w ? wsum[w - 1] : 0) + x - v;
}

/* Two floats -> bf16x2 (round to nearest even), lo in the low half: the lower column (k) index
 * of an mma fragment pair. */
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

/* C[16x8] += A[16x16] B[16x8] on bf16 tensor cores with float32 accumulators (mma.sync m16n8k16,
 * sm_80+): a0..a3 = A's row-major fragment, b0/b1 = B's column fragment (k 0-7, 8-15). */
__device__ __forceinline__ void mma_m16n8k16_bf16(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                  uint32_t b0, uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

#define CU_CHECK(call)                                                                                   \
    do {                                                                                                 \
        cudaError_t e_ = (call);                                                                         \
        if (e_ != cudaSuccess)                                                                           \
            return q3n_error_set(err, Q3N_ERR_DEVICE, "%s:%d: %s: %s", __FILE__, __LINE__, #call,         \
                                 cudaGetErrorString(e_));                                                \
    } while (0)
#define CU_LAUNCHED(what)                                                                                \
    do {                                                                                                 \
        cudaError_t e_ = cudaGetLastError();                                                             \
        if (e_ != cudaSuccess)                                                                           \
            return q3n_error_set(err, Q3N_ERR_DEVICE, "%s:%d: launch of %s: %s", __FILE__, __LINE__,      \
                                 what, cudaGetErrorString(e_));                                          \
    } while (0)
#define CUBLAS_CHECK(call)                                                                               \
    do {                                                                                                 \
        cublasStatus_t s_ = (call);                                                                      \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                                 \
            return q3n_error_set(err, Q3N_ERR_DEVICE, "%s:%d: %s: cuBLAS status %d", __FILE__, __LINE__,  \
                                 #call, (int)s_);                                                        \
    } while (0)
#define Q3N_TRY(call)                                                                                    \
    do {                                                                                                 \
        enum q3n_status st_ = (call);                                                                    \
        if (st_ != Q3N_OK) return st_;                                                                   \
    } while (0)

static inline unsigned cdiv(int64_t a, int64_t b) { return (unsigned)((a + b - 1) / b); }

/* The current device is compute capability 9.0 exactly: the one the sm_90a (wgmma) code of the
 * build runs on. 0 when it is not, or when the query fails. */
static inline int cuda_device_is_sm90(void)
{
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return 0;
    if (cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) return 0;
    return major == 9 && minor == 0;
}

#endif
