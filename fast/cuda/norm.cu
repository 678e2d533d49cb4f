/* norm.cu — RMSNorm (zero-centred and gated) and L2 norm (cuda twins of ref/norm.c).
 *
 * One block per row; the sum of squares is reduced in a fixed tree (block_sum), so results
 * are deterministic. The summation order differs from the reference's sequential loop: a
 * relative difference of a few float32 ULPs in the inverse RMS. */
#include "common.cuh"

/* h = h + y (when y), out = h * rsqrt(mean(h^2) + eps) * (1 + w). */
template <typename T>
__global__ void add_rmsnorm_kernel(T *out, T *h, const T *y, const float *w, int64_t n, float eps)
{
    __shared__ float red[32];
    const int64_t row = blockIdx.x;
    T *hr = h + row * n;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        float v = ld(hr + i);
        if (y) {
            v = rnd(v + ld(y + row * n + i), hr);
            st(hr + i, v);
        }
        ss += v * v;
    }
    const float tot = block_sum(ss, red);
    const float r = rms_scale(tot, n, eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) st(out + row * n + i, ld(hr + i) * r * (1.0f + w[i]));
}

/* The same, for n <= PER x blockDim.x: the thread's elements (the same ones, i = tid + blockDim.x j,
 * summed in the same order, so the same bits) held in registers, every load issued before the
 * first store. In the loop above h is written in place, so no load may pass an earlier store and
 * each iteration waits out a memory round trip: ~10 us for one 2048-wide decode row under ncu,
 * nine times per token at the real dims. */
template <typename T, int PER>
__global__ void add_rmsnorm_reg_kernel(T *__restrict__ out, T *__restrict__ h, const T *__restrict__ y,
                                       const float *__restrict__ w, int n, float eps)
{
    __shared__ float red[32];
    T *hr = h + (int64_t)blockIdx.x * n;
    const T *yr = y ? y + (int64_t)blockIdx.x * n : NULL;
    float v[PER], u[PER], wv[PER];
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        v[j] = i < n ? ld(hr + i) : 0.0f;
        u[j] = yr && i < n ? ld(yr + i) : 0.0f;
        wv[j] = i < n ? w[i] : 0.0f;
    }
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i >= n) continue;
        if (yr) {
            v[j] = rnd(v[j] + u[j], hr);
            st(hr + i, v[j]);
        }
        ss += v[j] * v[j];
    }
    const float tot = block_sum(ss, red);
    const float r = rms_scale(tot, n, eps);
    T *orow = out + (int64_t)blockIdx.x * n;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < n) st(orow + i, v[j] * r * (1.0f + wv[j])); /* v[j] == ld(hr + i): stored rounded */
    }
}

/* v2 of the same (bf16, norm_fold_ok, 16-byte aligned; session 12): 16-byte loads and stores of
 * 8-element chunks where the kernel above moves one 2-byte element per load (2.5 TB/s at the real
 * dims' T = 4096); the row's values go through shared memory so that the sum of squares keeps the
 * kernel above's per-thread order (norm_row_from_smem): bitwise equal. */
template <int PER>
__global__ void __launch_bounds__(256) add_rmsnorm_v2_kernel(bf16 *__restrict__ out, bf16 *__restrict__ h,
                                                             const bf16 *__restrict__ y, const float *__restrict__ w,
                                                             int n, float eps)
{
    extern __shared__ float an_v[]; /* [n] */
    __shared__ float red[32];
    uint4 *hr = reinterpret_cast<uint4 *>(h + (int64_t)blockIdx.x * n);
    const uint4 *yr = y ? reinterpret_cast<const uint4 *>(y + (int64_t)blockIdx.x * n) : NULL;
    for (int c = threadIdx.x; c < n / 8; c += blockDim.x) {
        float v[8];
        unpack8_bf16(v, hr[c]);
        if (yr) {
            float u[8];
            unpack8_bf16(u, yr[c]);
#pragma unroll
            for (int q = 0; q < 8; q++) v[q] = __bfloat162float(__float2bfloat16_rn(v[q] + u[q]));
            hr[c] = pack8_bf16(v); /* exact: already bf16 values */
        }
#pragma unroll
        for (int q = 0; q < 8; q++) an_v[8 * c + q] = v[q];
    }
    __syncthreads();
    norm_row_from_smem<PER>(out + (int64_t)blockIdx.x * n, an_v, w, n, eps, red);
}

static int add_rmsnorm_v2_ok(const void *out, const void *h, const void *y, int64_t n, enum q3n_compute_dtype dt)
{
    return norm_fold_ok(n, dt) && (((uintptr_t)out | (uintptr_t)h | (uintptr_t)y) & 15) == 0;
}

template <typename T>
static void launch_add_rmsnorm(void *out, void *h, const void *y, const float *w, int64_t rows, int64_t n, double eps,
                               int ver, cudaStream_t stream)
{
    const unsigned nt = norm_threads(n);
    if (ver == 2) {
        const size_t smem = sizeof(float) * (size_t)n;
        if (n <= 8 * (int64_t)nt)
            add_rmsnorm_v2_kernel<8><<<(unsigned)rows, nt, smem, stream>>>((bf16 *)out, (bf16 *)h, (const bf16 *)y, w,
                                                                           (int)n, (float)eps);
        else
            add_rmsnorm_v2_kernel<16><<<(unsigned)rows, nt, smem, stream>>>((bf16 *)out, (bf16 *)h, (const bf16 *)y,
                                                                            w, (int)n, (float)eps);
        return;
    }
    if (n <= 8 * (int64_t)nt)
        add_rmsnorm_reg_kernel<T, 8><<<(unsigned)rows, nt, 0, stream>>>((T *)out, (T *)h, (const T *)y, w, (int)n,
                                                                         (float)eps);
    else if (n <= 16 * (int64_t)nt)
        add_rmsnorm_reg_kernel<T, 16><<<(unsigned)rows, nt, 0, stream>>>((T *)out, (T *)h, (const T *)y, w, (int)n,
                                                                          (float)eps);
    else
        add_rmsnorm_kernel<T><<<(unsigned)rows, nt, 0, stream>>>((T *)out, (T *)h, (const T *)y, w, n, (float)eps);
}

extern "C" enum q3n_status cuda_add_rmsnorm_forward_ver(void *d_out, void *d_h, const void *d_y, const float *d_w,
                                                        int64_t rows, int64_t n, double eps, int ver,
                                                        enum q3n_compute_dtype dt, cudaStream_t stream,
                                                        struct q3n_error *err)
{
    Q3N_REQUIRE(rows >= 0 && rows <= INT32_MAX && n > 0 && ver >= 0 && ver <= 2);
    const int v2 = add_rmsnorm_v2_ok(d_out, d_h, d_y, n, dt);
    if (ver == 0) ver = v2 ? 2 : 1;
    if (ver == 2 && !v2)
        return q3n_error_set(err, Q3N_ERR_USAGE, "cuda add_rmsnorm v2: needs bf16, n %% 8 == 0, n <= 16 "
                                                 "norm_threads(n) and 16-byte aligned buffers (n = %lld)",
                             (long long)n);
    if (rows == 0) return Q3N_OK;
    if (dt == Q3N_COMPUTE_BF16)
        launch_add_rmsnorm<bf16>(d_out, d_h, d_y, d_w, rows, n, eps, ver, stream);
    else
        launch_add_rmsnorm<float>(d_out, d_h, d_y, d_w, rows, n, eps, ver, stream);
    CU_LAUNCHED("add_rmsnorm_kernel");
    return Q3N_OK;
}

extern "C" enum q3n_status cuda_add_rmsnorm_forward(void *d_out, void *d_h, const void *d_y, const float *d_w,
                                                    int64_t rows, int64_t n, double eps, enum q3n_compute_dtype dt,
                                                    cudaStream_t stream, struct q3n_error *err)
{
    return cuda_add_rmsnorm_forward_ver(d_out, d_h, d_y, d_w, rows, n, eps, 0, dt, stream, err);
}

extern "C" enum q3n_status cuda_rmsnorm_forward(void *d_out, const void *d_x, const float *d_w, int64_t rows,
                                                int64_t n, double eps, enum q3n_compute_dtype dt, cudaStream_t stream,
                                                struct q3n_error *err)
{
    /* y == NULL: h is only read. */
    return cuda_add_rmsnorm_forward(d_out, (void *)d_x, NULL, d_w, rows, n, eps, dt, stream, err);
}

/* out = T(w * T(x * r)) * silu(z), as Qwen3NextRMSNormGated rounds in bf16. */
template <typename T>
__global__ void rmsnorm_gated_kernel(T *out, const T *x, const T *z, const float *w, int64_t n, float eps)
{
    __shared__ float red[32];
    const int64_t row = blockIdx.x;
    const T *xr = x + row * n;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = ld(xr + i);
        ss += v * v;
    }
    const float tot = block_sum(ss, red);
    const float r = rms_scale(tot, n, eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float a = rnd(ld(xr + i) * r, out);
        const float b = rnd(w[i] * a, out);
        st(out + row * n + i, b * silu_f(ld(z + row * n + i)));
    }
}

extern "C" enum q3n_status cuda_rmsnorm_gated_forward(void *d_out, const void *d_x, const void *d_z,
                                                      const float *d_w, int64_t rows, int64_t n, double eps,
                                                      enum q3n_compute_dtype dt, cudaStream_t stream,
                                                      struct q3n_error *err)
{
    Q3N_REQUIRE(rows >= 0 && rows <= INT32_MAX && n > 0);
    if (rows == 0) return Q3N_OK;
    if (dt == Q3N_COMPUTE_BF16)
        rmsnorm_gated_kernel<<<(unsigned)rows, norm_threads(n), 0, stream>>>(
            (bf16 *)d_out, (const bf16 *)d_x, (const bf16 *)d_z, d_w, n, (float)eps);
    else
        rmsnorm_gated_kernel<<<(unsigned)rows, norm_threads(n), 0, stream>>>(
            (float *)d_out, (const float *)d_x, (const float *)d_z, d_w, n, (float)eps);
    CU_LAUNCHED("rmsnorm_gated_kernel");
    return Q3N_OK;
}

/* out[t,h,:] = (x * rsqrt(sum x^2 + eps)) * scale, or / scale when divide (transformers' recurrent
 * path divides by sqrt(DK), the chunked one multiplies by DK^-0.5). float32 out, block per (t,h). */
template <typename T>
__global__ void l2norm_kernel(float *out, const T *x, int64_t H, int64_t n, int64_t ldx, float eps, float scale,
                              int divide)
{
    __shared__ float red[32];
    const int64_t t = blockIdx.x / H, h = blockIdx.x % H;
    const T *xr = x + t * ldx + h * n;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = ld(xr + i);
        ss += v * v;
    }
    const float tot = block_sum(ss, red);
    const float r = 1.0f / sqrtf(tot + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float y = ld(xr + i) * r;
        out[(int64_t)blockIdx.x * n + i] = divide ? y / scale : y * scale;
    }
}

extern "C" enum q3n_status cuda_l2norm_forward(float *d_out, const void *d_x, int64_t T, int64_t H, int64_t n,
                                               int64_t ldx, double eps, float scale, int divide,
                                               enum q3n_compute_dtype dt,
                                               cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && H > 0 && n > 0 && ldx >= H * n && T * H <= INT32_MAX);
    if (T == 0) return Q3N_OK;
    const unsigned nt = n >= 256 ? 128u : 64u;
    if (dt == Q3N_COMPUTE_BF16)
        l2norm_kernel<<<(unsigned)(T * H), nt, 0, stream>>>(d_out, (const bf16 *)d_x, H, n, ldx, (float)eps, scale, divide);
    else
        l2norm_kernel<<<(unsigned)(T * H), nt, 0, stream>>>(d_out, (const float *)d_x, H, n, ldx, (float)eps, scale, divide);
    CU_LAUNCHED("l2norm_kernel");
    return Q3N_OK;
}
