/* linear.cu — dense projections through cuBLAS (cuda twins of ref/linear.c).
 *
 * Row-major out [T,N] = x [T,Kin] W[N,Kin]^T is, in cuBLAS's column-major view,
 * out^T (N x T) = W^T (N x Kin, stored as Kin x N) * x^T (Kin x T). CUBLAS_COMPUTE_32F with the
 * handle in CUBLAS_DEFAULT_MATH: true float32 in f32 mode (TF32 is never enabled), bf16 tensor
 * cores with float32 accumulation in bf16 mode. */
#include "common.cuh"

template <typename T>
__global__ void add_bias_kernel(T *out, const float *bias, int64_t T_, int64_t N)
{
    const int64_t n = T_ * N;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        st(out + i, ld(out + i) + bias[i % N]);
}

extern "C" enum q3n_status cuda_linear_forward(void *d_out, const void *d_x, const void *d_W, const float *d_bias,
                                               int64_t T, int64_t N, int64_t Kin, enum q3n_compute_dtype dt,
                                               cublasHandle_t blas, cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && N > 0 && Kin > 0);
    Q3N_REQUIRE(T <= INT32_MAX && N <= INT32_MAX && Kin <= INT32_MAX);
    if (T == 0) return Q3N_OK;
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
