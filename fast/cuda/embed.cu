/* embed.cu — token embedding and dtype conversions (cuda twins of ref/embed.c). */
#include "common.cuh"

extern "C" size_t cuda_act_size(enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 ? 2 : 4;
}

/* out [T,D] = embed[tokens[t]]: one block per token, threads over D (restrict: the loads of a
 * thread's elements need not wait for its earlier stores). */
template <typename T>
__global__ void embed_kernel(T *__restrict__ out, const int64_t *__restrict__ tokens, const T *__restrict__ embed,
                             int64_t D)
{
    const int64_t t = blockIdx.x;
    const T *row = embed + tokens[t] * D;
#pragma unroll 8
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) out[t * D + d] = row[d];
}

extern "C" enum q3n_status cuda_embed_forward(void *d_out, const int64_t *d_tokens, const void *d_embed, int64_t T,
                                              int64_t D, enum q3n_compute_dtype dt, cudaStream_t stream,
                                              struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && D > 0);
    if (T == 0) return Q3N_OK;
    if (dt == Q3N_COMPUTE_BF16)
        embed_kernel<<<(unsigned)T, 256, 0, stream>>>((bf16 *)d_out, d_tokens, (const bf16 *)d_embed, D);
    else
        embed_kernel<<<(unsigned)T, 256, 0, stream>>>((float *)d_out, d_tokens, (const float *)d_embed, D);
    CU_LAUNCHED("embed_kernel");
    return Q3N_OK;
}

template <typename T>
__global__ void to_f32_kernel(float *out, const T *x, int64_t rows, int64_t cols, int64_t ldx)
{
    const int64_t n = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / cols, c = i % cols;
        out[i] = ld(x + r * ldx + c);
    }
}

extern "C" enum q3n_status cuda_to_f32(float *d_out, const void *d_x, int64_t rows, int64_t cols, int64_t ldx,
                                       enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(rows >= 0 && cols >= 0 && ldx >= cols);
    const int64_t n = rows * cols;
    if (n == 0) return Q3N_OK;
    const unsigned grid = (unsigned)(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536);
    if (dt == Q3N_COMPUTE_BF16)
        to_f32_kernel<<<grid, 256, 0, stream>>>(d_out, (const bf16 *)d_x, rows, cols, ldx);
    else
        to_f32_kernel<<<grid, 256, 0, stream>>>(d_out, (const float *)d_x, rows, cols, ldx);
    CU_LAUNCHED("to_f32_kernel");
    return Q3N_OK;
}

template <typename T>
__global__ void from_f32_kernel(T *out, const float *x, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        st(out + i, x[i]);
}

extern "C" enum q3n_status cuda_from_f32(void *d_out, const float *d_x, int64_t n, enum q3n_compute_dtype dt,
                                         cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(n >= 0);
    if (n == 0) return Q3N_OK;
    const unsigned grid = (unsigned)(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536);
    if (dt == Q3N_COMPUTE_BF16)
        from_f32_kernel<<<grid, 256, 0, stream>>>((bf16 *)d_out, d_x, n);
    else
        from_f32_kernel<<<grid, 256, 0, stream>>>((float *)d_out, d_x, n);
    CU_LAUNCHED("from_f32_kernel");
    return Q3N_OK;
}
