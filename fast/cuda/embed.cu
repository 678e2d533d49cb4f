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

/* The embedding and the first layer's input norm in one pass (prefill, taps off; session 12): h[t] =
 * embed[tokens[t]] and xn[t] = rmsnorm(h[t]) with weight nw, bitwise embed_kernel followed by
 * add_rmsnorm_reg_kernel<bf16, PER> with no add (norm_row_from_smem). Block per token of
 * norm_threads(D) threads, 16-byte copies; the row as floats in shared memory for the norm's order. */
template <int PER>
__global__ void __launch_bounds__(256) embed_norm_kernel(bf16 *__restrict__ h, bf16 *__restrict__ xn,
                                                         const int64_t *__restrict__ tokens,
                                                         const bf16 *__restrict__ embed, const float *__restrict__ nw,
                                                         int D, float eps)
{
    extern __shared__ float en_v[]; /* [D] */
    __shared__ float red[32];
    const int64_t t = blockIdx.x;
    const uint4 *row = reinterpret_cast<const uint4 *>(embed + tokens[t] * (int64_t)D);
    uint4 *hr = reinterpret_cast<uint4 *>(h + t * D);
    for (int c = threadIdx.x; c < D / 8; c += blockDim.x) {
        const uint4 x = row[c];
        hr[c] = x;
        float f[8];
        unpack8_bf16(f, x);
#pragma unroll
        for (int q = 0; q < 8; q++) en_v[8 * c + q] = f[q];
    }
    __syncthreads();
    norm_row_from_smem<PER>(xn + t * D, en_v, nw, D, eps, red);
}

extern "C" int cuda_embed_norm_ok(int64_t D, enum q3n_compute_dtype dt)
{
    return norm_fold_ok(D, dt);
}

extern "C" enum q3n_status cuda_embed_norm_forward(void *d_h, void *d_xn, const int64_t *d_tokens, const void *d_embed,
                                                   const float *d_norm_w, double eps, int64_t T, int64_t D,
                                                   enum q3n_compute_dtype dt, cudaStream_t stream,
                                                   struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && T <= INT32_MAX);
    if (!norm_fold_ok(D, dt) || (((uintptr_t)d_h | (uintptr_t)d_xn | (uintptr_t)d_embed) & 15) != 0)
        return q3n_error_set(err, Q3N_ERR_USAGE,
                             "cuda_embed_norm: needs bf16, D %% 8 == 0, D <= 16 norm_threads(D) and 16-byte aligned "
                             "buffers (D = %lld)",
                             (long long)D);
    if (T == 0) return Q3N_OK;
    const unsigned nt = norm_threads(D);
    const size_t smem = sizeof(float) * (size_t)D;
    if (D <= 8 * (int64_t)nt)
        embed_norm_kernel<8><<<(unsigned)T, nt, smem, stream>>>((bf16 *)d_h, (bf16 *)d_xn, d_tokens,
                                                                (const bf16 *)d_embed, d_norm_w, (int)D, (float)eps);
    else
        embed_norm_kernel<16><<<(unsigned)T, nt, smem, stream>>>((bf16 *)d_h, (bf16 *)d_xn, d_tokens,
                                                                 (const bf16 *)d_embed, d_norm_w, (int)D, (float)eps);
    CU_LAUNCHED("embed_norm_kernel");
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
