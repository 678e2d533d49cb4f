/* conv.cu — causal depthwise conv1d + SiLU and its state (cuda twins of ref/conv.c).
 *
 * xx = [state; x] (K + T rows of Cc channels); out[t,c] = silu(sum_{j<K} w[c,j] xx[t+j+1, c]).
 * The same kernel serves prefill (T new rows) and the one-token decode update (T = 1). The
 * sum runs j = 0..K-1 in float32, as the reference does. */
#include "common.cuh"

template <typename T>
__global__ void conv1d_kernel(T *out, const T *x, const float *w, const float *state, int64_t T_, int64_t Cc,
                              int64_t K)
{
    const int64_t n = T_ * Cc;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = i / Cc, c = i % Cc;
        float acc = 0.0f;
        for (int64_t j = 0; j < K; j++) {
            const int64_t r = t + j + 1; /* row of xx */
            float v;
            if (r < K)
                v = state ? state[c * K + r] : 0.0f;
            else
                v = ld(x + (r - K) * Cc + c);
            acc += w[c * K + j] * v;
        }
        st(out + i, silu_f(acc));
    }
}

extern "C" enum q3n_status cuda_conv1d_causal_forward(void *d_out, const void *d_x, const float *d_w,
                                                      const float *d_state, int64_t T, int64_t Cc, int64_t K,
                                                      enum q3n_compute_dtype dt, cudaStream_t stream,
                                                      struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && Cc > 0 && K > 0);
    const int64_t n = T * Cc;
    if (n == 0) return Q3N_OK;
    const unsigned grid = (unsigned)(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536);
    if (dt == Q3N_COMPUTE_BF16)
        conv1d_kernel<<<grid, 256, 0, stream>>>((bf16 *)d_out, (const bf16 *)d_x, d_w, d_state, T, Cc, K);
    else
        conv1d_kernel<<<grid, 256, 0, stream>>>((float *)d_out, (const float *)d_x, d_w, d_state, T, Cc, K);
    CU_LAUNCHED("conv1d_kernel");
    return Q3N_OK;
}

/* One thread per channel reads its K new values before writing any (in place, race-free). */
template <typename T>
__global__ void conv_state_kernel(float *state, const T *x, int64_t T_, int64_t Cc, int64_t K)
{
    const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (c >= Cc) return;
    float v[16];
    for (int64_t j = 0; j < K; j++) {
        const int64_t r = T_ + j; /* row of xx = [state; x] */
        v[j] = r < K ? state[c * K + r] : ld(x + (r - K) * Cc + c);
    }
    for (int64_t j = 0; j < K; j++) state[c * K + j] = v[j];
}

extern "C" enum q3n_status cuda_conv1d_state_update(float *d_state, const void *d_x, int64_t T, int64_t Cc,
                                                    int64_t K, enum q3n_compute_dtype dt, cudaStream_t stream,
                                                    struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && Cc > 0 && K > 0 && K <= 16);
    if (T == 0) return Q3N_OK;
    if (dt == Q3N_COMPUTE_BF16)
        conv_state_kernel<<<cdiv(Cc, 256), 256, 0, stream>>>(d_state, (const bf16 *)d_x, T, Cc, K);
    else
        conv_state_kernel<<<cdiv(Cc, 256), 256, 0, stream>>>(d_state, (const float *)d_x, T, Cc, K);
    CU_LAUNCHED("conv_state_kernel");
    return Q3N_OK;
}
