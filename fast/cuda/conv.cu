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

/* ---- decode step: conv + state update + the q/k L2 norms + v to float32, one launch ----
 * For T == 1, channel c of xx = [state; x] is state[c, 1..K-1], x[c]; the conv output
 * y[c] = T(silu(sum_{j<K} w[c,j] xx[j+1, c])) (rounded as cuda_conv1d_causal_forward stores it);
 * state[c,:] <- xx[1..K, c]. Then per head, exactly as cuda_l2norm_forward / cuda_to_f32 read y:
 * q[h,:] = y_q[h,:] * rsqrt(sum y_q^2 + eps) (/ or *) qscale, k[h,:] likewise with scale 1, v = y_v.
 * Block b: q head b (b < NK), k head b - NK (b < 2 NK), else a DV-channel slice of v; the
 * threads and the order of the sums are those of l2norm_kernel (nt threads, i = tid, tid + nt, ..),
 * so the results are bitwise those of the five separate launches. */
template <typename T>
__device__ __forceinline__ float conv_step(float *state, const T *x, const float *w, int64_t c, int64_t K)
{
    float xx[16];
    for (int64_t j = 0; j < K - 1; j++) xx[j] = state[c * K + j + 1];
    xx[K - 1] = ld(x + c);
    float acc = 0.0f;
    for (int64_t j = 0; j < K; j++) acc += w[c * K + j] * xx[j];
    for (int64_t j = 0; j < K; j++) state[c * K + j] = xx[j];
    return rnd(silu_f(acc), x);
}

template <typename T>
__global__ void conv_decode_qkv_kernel(float *q, float *k, float *v, float *state, const T *x, const float *w,
                                       int64_t NK, int64_t DK, int64_t DV, int64_t K, float eps, float qscale,
                                       int qdivide)
{
    __shared__ float red[32];
    __shared__ float ys[256];
    const int64_t b = blockIdx.x;
    if (b >= 2 * NK) { /* v slice: no norm */
        const int64_t c0 = 2 * NK * DK + (b - 2 * NK) * DV;
        for (int64_t i = threadIdx.x; i < DV; i += blockDim.x) v[c0 - 2 * NK * DK + i] = conv_step(state, x, w, c0 + i, K);
        return;
    }
    const int64_t c0 = b * DK; /* q heads then k heads, each DK channels */
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < DK; i += blockDim.x) {
        const float y = conv_step(state, x, w, c0 + i, K);
        ys[i] = y;
        ss += y * y;
    }
    const float tot = block_sum(ss, red);
    const float r = 1.0f / sqrtf(tot + eps);
    const int isq = b < NK;
    float *out = isq ? q + b * DK : k + (b - NK) * DK;
    const float scale = isq ? qscale : 1.0f;
    const int divide = isq && qdivide;
    for (int64_t i = threadIdx.x; i < DK; i += blockDim.x) {
        const float y = ys[i] * r;
        out[i] = divide ? y / scale : y * scale;
    }
}

extern "C" enum q3n_status cuda_conv1d_decode_qkv(float *d_q, float *d_k, float *d_v, float *d_state, const void *d_x,
                                                  const float *d_w, int64_t NK, int64_t DK, int64_t NV, int64_t DV,
                                                  int64_t K, double eps, float qscale, int qdivide,
                                                  enum q3n_compute_dtype dt, cudaStream_t stream,
                                                  struct q3n_error *err)
{
    Q3N_REQUIRE(NK > 0 && DK > 0 && DK <= 256 && NV > 0 && DV > 0 && K > 0 && K <= 16);
    const unsigned nt = DK >= 256 ? 128u : 64u; /* as cuda_l2norm_forward */
    const unsigned grid = (unsigned)(2 * NK + NV);
    if (dt == Q3N_COMPUTE_BF16)
        conv_decode_qkv_kernel<<<grid, nt, 0, stream>>>(d_q, d_k, d_v, d_state, (const bf16 *)d_x, d_w, NK, DK, DV, K,
                                                        (float)eps, qscale, qdivide);
    else
        conv_decode_qkv_kernel<<<grid, nt, 0, stream>>>(d_q, d_k, d_v, d_state, (const float *)d_x, d_w, NK, DK, DV, K,
                                                        (float)eps, qscale, qdivide);
    CU_LAUNCHED("conv_decode_qkv_kernel");
    return Q3N_OK;
}
