/* linear.cu — dense projections through cuBLAS (cuda twins of ref/linear.c).
 *
 * Row-major out [T,N] = x [T,Kin] W[N,Kin]^T is, in cuBLAS's column-major view,
 * out^T (N x T) = W^T (N x Kin, stored as Kin x N) * x^T (Kin x T). CUBLAS_COMPUTE_32F with the
 * handle in CUBLAS_DEFAULT_MATH: true float32 in f32 mode (TF32 is never enabled), bf16 tensor
 * cores with float32 accumulation in bf16 mode. One bf16 row (T == 1: decode, the lm_head of the last
 * token) goes through gemv_bf16_kernel instead, which streams W at close to HBM bandwidth. */
#include "common.cuh"

template <typename T>
__global__ void add_bias_kernel(T *out, const float *bias, int64_t T_, int64_t N)
{
    const int64_t n = T_ * N;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        st(out + i, ld(out + i) + bias[i % N]);
}

/* ---- one-row GEMV (decode, bf16) ----
 * out[n] = T(sum_k W[n,k] x[k]) (+ bias[n] after the rounding, as add_bias_kernel does):
 * one warp per output row at a time (grid-stride over rows), x staged in shared memory, W read
 * in 16-byte chunks (8 bf16): lane l takes chunks l, l+32, ... of the row, UNR chunks in flight
 * before their FMAs, float32 accumulation in chunk order, then a fixed xor-tree over the warp
 * (the order does not depend on UNR). Memory-bound: every byte of W is read once. The first
 * batch of a warp's next row is loaded before the current row's reduction (and the very first
 * before x is staged), so no warp waits on a load without another in flight. */
#define GEMV_WARPS 8

__device__ __forceinline__ float bf_lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf_hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }

__device__ __forceinline__ float dot8(uint4 w, uint4 x, float acc)
{
    acc = fmaf(bf_lo(w.x), bf_lo(x.x), acc);
    acc = fmaf(bf_hi(w.x), bf_hi(x.x), acc);
    acc = fmaf(bf_lo(w.y), bf_lo(x.y), acc);
    acc = fmaf(bf_hi(w.y), bf_hi(x.y), acc);
    acc = fmaf(bf_lo(w.z), bf_lo(x.z), acc);
    acc = fmaf(bf_hi(w.z), bf_hi(x.z), acc);
    acc = fmaf(bf_lo(w.w), bf_lo(x.w), acc);
    acc = fmaf(bf_hi(w.w), bf_hi(x.w), acc);
    return acc;
}

/* Streamed weights: read-only path, not kept in L1. */
__device__ __forceinline__ uint4 ld_stream(const uint4 *p)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

/* wv[u] = row[c + 32u] for the chunks that exist. */
template <int UNR>
__device__ __forceinline__ void gemv_load(uint4 *wv, const uint4 *row, int c, int nc)
{
#pragma unroll
    for (int u = 0; u < UNR; u++)
        if (c + 32 * u < nc) wv[u] = ld_stream(row + c + 32 * u);
}

template <int UNR>
__device__ __forceinline__ float gemv_fma(const uint4 *wv, const uint4 *xs, int c, int nc, float acc)
{
#pragma unroll
    for (int u = 0; u < UNR; u++)
        if (c + 32 * u < nc) acc = dot8(wv[u], xs[c + 32 * u], acc);
    return acc;
}

/* Resident blocks per SM for UNR (registers: UNR 16-byte buffers per lane). */
#define GEMV_BLOCKS(UNR) ((UNR) <= 8 ? 4 : 2)

template <int UNR>
__global__ void __launch_bounds__(32 * GEMV_WARPS, GEMV_BLOCKS(UNR))
    gemv_bf16_kernel(bf16 *out, const uint4 *x, const uint4 *W, const float *bias, int N, int nc)
{
    extern __shared__ uint4 xs[]; /* [nc] */
    const int lane = threadIdx.x & 31, warps = gridDim.x * GEMV_WARPS;
    int n = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    uint4 wv[UNR] = {};
    if (n < N) gemv_load<UNR>(wv, W + (int64_t)n * nc, lane, nc);
    for (int c = threadIdx.x; c < nc; c += blockDim.x) xs[c] = x[c];
    __syncthreads();
    for (; n < N; n += warps) {
        const uint4 *wr = W + (int64_t)n * nc;
        float acc = 0.0f;
        for (int base = 0;;) { /* wv holds chunks base + lane + 32u */
            acc = gemv_fma<UNR>(wv, xs, base + lane, nc, acc);
            base += 32 * UNR;
            if (base >= nc) break;
            gemv_load<UNR>(wv, wr, base + lane, nc);
        }
        if (n + warps < N) gemv_load<UNR>(wv, W + (int64_t)(n + warps) * nc, lane, nc);
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0) {
            float v = __bfloat162float(__float2bfloat16_rn(acc));
            if (bias) v += bias[n];
            out[n] = __float2bfloat16_rn(v);
        }
    }
}

/* The GEMV takes bf16, one row, Kin a multiple of 8, 16-byte aligned x and W, x in 48 KB. */
static int gemv_ok(const void *x, const void *W, int64_t T, int64_t Kin, enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 && T == 1 && Kin % 8 == 0 && Kin * 2 <= 48 * 1024 &&
           ((uintptr_t)x % 16) == 0 && ((uintptr_t)W % 16) == 0;
}

template <int UNR>
static enum q3n_status gemv_launch_unr(void *d_out, const void *d_x, const void *d_W, const float *d_bias, int64_t N,
                                       int64_t Kin, cudaStream_t stream, struct q3n_error *err)
{
    int dev = 0, sms = 0;
    CU_CHECK(cudaGetDevice(&dev));
    CU_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    const int64_t need = (N + GEMV_WARPS - 1) / GEMV_WARPS, cap = (int64_t)sms * GEMV_BLOCKS(UNR);
    const unsigned grid = (unsigned)(need < cap ? need : cap);
    const int nc = (int)(Kin / 8);
    gemv_bf16_kernel<UNR><<<grid, 32 * GEMV_WARPS, sizeof(uint4) * (size_t)nc, stream>>>(
        (bf16 *)d_out, (const uint4 *)d_x, (const uint4 *)d_W, d_bias, (int)N, nc);
    CU_LAUNCHED("gemv_bf16_kernel");
    return Q3N_OK;
}

/* 16 chunks in flight per lane for rows of >= 4096 (one round trip per row), else 8. */
static enum q3n_status gemv_launch(void *d_out, const void *d_x, const void *d_W, const float *d_bias, int64_t N,
                                   int64_t Kin, cudaStream_t stream, struct q3n_error *err)
{
    if (Kin >= 4096) return gemv_launch_unr<16>(d_out, d_x, d_W, d_bias, N, Kin, stream, err);
    return gemv_launch_unr<8>(d_out, d_x, d_W, d_bias, N, Kin, stream, err);
}

extern "C" enum q3n_status cuda_linear_forward(void *d_out, const void *d_x, const void *d_W, const float *d_bias,
                                               int64_t T, int64_t N, int64_t Kin, enum q3n_compute_dtype dt,
                                               cublasHandle_t blas, cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && N > 0 && Kin > 0);
    Q3N_REQUIRE(T <= INT32_MAX && N <= INT32_MAX && Kin <= INT32_MAX);
    if (T == 0) return Q3N_OK;
    if (gemv_ok(d_x, d_W, T, Kin, dt)) return gemv_launch(d_out, d_x, d_W, d_bias, N, Kin, stream, err);
    const float alpha = 1.0f, beta = 0.0f;
    const cudaDataType_t ty = dt == Q3N_COMPUTE_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    CUBLAS_CHECK(cublasSetStream(blas, stream));
    CUBLAS_CHECK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)T, (int)Kin, &alpha, d_W, ty, (int)Kin,
                              d_x, ty, (int)Kin, &beta, d_out, ty, (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (d_bias) {
        const int64_t n = T * N;
        const unsigned grid = (unsigned)(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536);
        if (dt == Q3N_COMPUTE_BF16)
            add_bias_kernel<<<grid, 256, 0, stream>>>((bf16 *)d_out, d_bias, T, N);
        else
            add_bias_kernel<<<grid, 256, 0, stream>>>((float *)d_out, d_bias, T, N);
        CU_LAUNCHED("add_bias_kernel");
    }
    return Q3N_OK;
}

template <typename T>
__global__ void add_kernel(T *x, const T *y, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        st(x + i, ld(x + i) + ld(y + i));
}

extern "C" enum q3n_status cuda_add_inplace(void *d_x, const void *d_y, int64_t n, enum q3n_compute_dtype dt,
                                            cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(n >= 0);
    if (n == 0) return Q3N_OK;
    const unsigned grid = (unsigned)(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536);
    if (dt == Q3N_COMPUTE_BF16)
        add_kernel<<<grid, 256, 0, stream>>>((bf16 *)d_x, (const bf16 *)d_y, n);
    else
        add_kernel<<<grid, 256, 0, stream>>>((float *)d_x, (const float *)d_y, n);
    CU_LAUNCHED("add_kernel");
    return Q3N_OK;
}
