/* moe.cu — sparse MoE: router softmax + top-k, token permutation, SwiGLU, expert GEMV for
 * decode, weighted un-permute with the shared expert (cuda twins of ref/moe.c).
 *
 * Prefill runs the routed experts as grouped GEMMs over the permuted rows (moe_grouped.cu, v3:
 * gather and SwiGLU fused, all experts in one launch; v1 and per-expert cuBLAS remain as
 * fallbacks, see blocks.cu, experts_gemm); decode (few rows) runs the expert GEMV v2
 * (moe_gemv.cu: routed + shared experts, combine fused), which reads the chosen experts on the
 * device, so a decode step never waits on the host (and can be captured in a CUDA graph). Deterministic: the permutation is a stable ballot scan
 * (tokens ascending inside each expert), the un-permute sums slots j = 0..K-1 in order. The
 * only atomics are integer counts, whose result does not depend on order. */
#include "common.cuh"

#define ROUTER_THREADS 256
#define WARP_ROUTER_MAX_E 1024 /* router_topk_warp_kernel up to this many experts */

/* Block argmax over (value desc, index asc). */
__device__ __forceinline__ void better(float &v, int &i, float v2, int i2)
{
    if (v2 > v || (v2 == v && i2 < i)) {
        v = v2;
        i = i2;
    }
}

template <typename T>
__global__ void __launch_bounds__(ROUTER_THREADS) router_topk_kernel(float *probs, int32_t *idx, float *weight,
                                                                     const T *logits, int64_t E, int64_t K,
                                                                     int norm_topk)
{
    extern __shared__ float pr[]; /* [E] */
    __shared__ float red[32];
    __shared__ float rv[32];
    __shared__ int ri[32];
    __shared__ float chosen[64];
    const int64_t t = blockIdx.x;
    const T *lg = logits + t * E;
    float mx = -INFINITY;
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) mx = fmaxf(mx, ld(lg + e));
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
        const float x = expf(ld(lg + e) - mx);
        pr[e] = x;
        sum += x;
    }
    sum = block_sum(sum, red);
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
        pr[e] = pr[e] / sum;
        if (probs) probs[t * E + e] = pr[e];
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int64_t j = 0; j < K; j++) {
        float bv = -INFINITY;
        int bi = 0x7fffffff;
        for (int64_t e = threadIdx.x; e < E; e += blockDim.x) better(bv, bi, pr[e], (int)e);
        for (int o = 16; o > 0; o >>= 1) {
            const float v2 = __shfl_xor_sync(0xffffffffu, bv, o);
            const int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
            better(bv, bi, v2, i2);
        }
        if (lane == 0) {
            rv[w] = bv;
            ri[w] = bi;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float v = rv[0];
            int i = ri[0];
            for (int k = 1; k < nw; k++) better(v, i, rv[k], ri[k]);
            idx[t * K + j] = i;
            chosen[j] = v;
            pr[i] = -INFINITY;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int64_t j = 0; j < K; j++) s += chosen[j];
        for (int64_t j = 0; j < K; j++) weight[t * K + j] = rnd(norm_topk ? chosen[j] / s : chosen[j], lg);
    }
}

/* Router v2, one warp per token (8 tokens per block, E <= 1024): the token's logits in shared
 * memory, lane l owns experts e = l (mod 32). softmax with warp max/sum (fixed xor trees), then K
 * rounds of a warp argmax over the lanes' entries in (value desc, index asc) order; the owner lane
 * removes the winner. No block barriers: a decode step's router costs a few microseconds. */
template <typename T>
__global__ void __launch_bounds__(256) router_topk_warp_kernel(float *probs, int32_t *idx, float *weight,
                                                               const T *logits, int T_, int E, int K, int norm_topk)
{
    extern __shared__ float rs[]; /* [8][E] */
    __shared__ float chosen[8][64];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int t = blockIdx.x * 8 + w;
    if (t >= T_) return; /* whole warps */
    float *pr = rs + w * E;
    const T *lg = logits + (int64_t)t * E;
    float mx = -INFINITY;
    for (int e = lane; e < E; e += 32) {
        pr[e] = ld(lg + e);
        mx = fmaxf(mx, pr[e]);
    }
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.0f;
    for (int e = lane; e < E; e += 32) {
        pr[e] = expf(pr[e] - mx);
        sum += pr[e];
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    for (int e = lane; e < E; e += 32) {
        pr[e] = pr[e] / sum;
        if (probs) probs[(int64_t)t * E + e] = pr[e];
    }
    for (int j = 0; j < K; j++) {
        float bv = -INFINITY;
        int bi = 0x7fffffff;
        for (int e = lane; e < E; e += 32) better(bv, bi, pr[e], e);
        for (int o = 16; o > 0; o >>= 1) {
            const float v2 = __shfl_xor_sync(0xffffffffu, bv, o);
            const int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
            better(bv, bi, v2, i2);
        }
        /* every lane holds the same winner (a total order under a butterfly) */
        if (lane == 0) {
            idx[(int64_t)t * K + j] = bi;
            chosen[w][j] = bv;
        }
        if (bi < E && (bi & 31) == lane) pr[bi] = -INFINITY;
        __syncwarp();
    }
    if (lane == 0) {
        float s = 0.0f;
        for (int j = 0; j < K; j++) s += chosen[w][j];
        for (int j = 0; j < K; j++)
            weight[(int64_t)t * K + j] = rnd(norm_topk ? chosen[w][j] / s : chosen[w][j], lg);
    }
}

extern "C" enum q3n_status cuda_router_topk_forward(float *d_probs, int32_t *d_idx, float *d_weight,
                                                    const void *d_logits, int64_t T, int64_t E, int64_t K,
                                                    int norm_topk_prob, enum q3n_compute_dtype dt,
                                                    cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && T <= INT32_MAX && E > 0 && E <= 4096 && K > 0 && K <= 64 && K <= E);
    if (T == 0) return Q3N_OK;
    if (E <= WARP_ROUTER_MAX_E) {
        const unsigned grid = cdiv(T, 8);
        const size_t sm = sizeof(float) * 8 * (size_t)E;
        if (dt == Q3N_COMPUTE_BF16)
            router_topk_warp_kernel<<<grid, 256, sm, stream>>>(d_probs, d_idx, d_weight, (const bf16 *)d_logits,
                                                               (int)T, (int)E, (int)K, norm_topk_prob);
        else
            router_topk_warp_kernel<<<grid, 256, sm, stream>>>(d_probs, d_idx, d_weight, (const float *)d_logits,
                                                               (int)T, (int)E, (int)K, norm_topk_prob);
        CU_LAUNCHED("router_topk_warp_kernel");
        return Q3N_OK;
    }
    const size_t smem = sizeof(float) * (size_t)E;
    if (dt == Q3N_COMPUTE_BF16)
        router_topk_kernel<<<(unsigned)T, ROUTER_THREADS, smem, stream>>>(d_probs, d_idx, d_weight,
                                                                          (const bf16 *)d_logits, E, K,
                                                                          norm_topk_prob);
    else
        router_topk_kernel<<<(unsigned)T, ROUTER_THREADS, smem, stream>>>(d_probs, d_idx, d_weight,
                                                                          (const float *)d_logits, E, K,
                                                                          norm_topk_prob);
    CU_LAUNCHED("router_topk_kernel");
    return Q3N_OK;
}

/* ---- permutation ---- */
__global__ void count_kernel(int32_t *counts, const int32_t *idx, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        atomicAdd(&counts[idx[i]], 1); /* integer: the result is order-independent */
}

__global__ void offsets_kernel(int32_t *offsets, const int32_t *counts, int64_t E)
{
    if (threadIdx.x != 0) return;
    int32_t acc = 0;
    for (int64_t e = 0; e < E; e++) {
        offsets[e] = acc;
        acc += counts[e];
    }
}

/* One block per expert: stable compaction of the assignments a (= t*K + j, ascending) with
 * idx[a] == e, by warp ballots and a block prefix in warp order. */
__global__ void __launch_bounds__(256) place_kernel(int32_t *perm_row, int32_t *pos, const int32_t *offsets,
                                                    const int32_t *idx, int64_t n)
{
    __shared__ int wsum[8];
    const int e = blockIdx.x, lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int base = offsets[e];
    for (int64_t a0 = 0; a0 < n; a0 += blockDim.x) {
        const int64_t a = a0 + threadIdx.x;
        const bool hit = a < n && idx[a] == e;
        const unsigned m = __ballot_sync(0xffffffffu, hit);
        if (lane == 0) wsum[w] = __popc(m);
        __syncthreads();
        int before = 0, total = 0;
        for (int k = 0; k < 8; k++) {
            if (k < w) before += wsum[k];
            total += wsum[k];
        }
        if (hit) {
            const int p = base + before + __popc(m & ((1u << lane) - 1u));
            perm_row[p] = (int32_t)a;
            pos[a] = p;
        }
        base += total;
        __syncthreads();
    }
}

extern "C" enum q3n_status cuda_moe_permute(int32_t *d_perm_row, int32_t *d_pos, int32_t *d_counts,
                                            int32_t *d_offsets, const int32_t *d_idx, int64_t T, int64_t E,
                                            int64_t K, cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && E > 0 && E <= INT32_MAX && K > 0 && T * K <= INT32_MAX);
    const int64_t n = T * K;
    CU_CHECK(cudaMemsetAsync(d_counts, 0, sizeof(int32_t) * (size_t)E, stream));
    if (n == 0) {
        CU_CHECK(cudaMemsetAsync(d_offsets, 0, sizeof(int32_t) * (size_t)E, stream));
        return Q3N_OK;
    }
    count_kernel<<<cdiv(n, 256) < 4096 ? cdiv(n, 256) : 4096, 256, 0, stream>>>(d_counts, d_idx, n);
    CU_LAUNCHED("moe count_kernel");
    offsets_kernel<<<1, 32, 0, stream>>>(d_offsets, d_counts, E);
    CU_LAUNCHED("moe offsets_kernel");
    place_kernel<<<(unsigned)E, 256, 0, stream>>>(d_perm_row, d_pos, d_offsets, d_idx, n);
    CU_LAUNCHED("moe place_kernel");
    return Q3N_OK;
}

template <typename T>
__global__ void gather_kernel(T *out, const T *x, const int32_t *rows, int64_t div, int64_t D)
{
    const int64_t p = blockIdx.x, src = rows[p] / div;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) out[p * D + d] = x[src * D + d];
}

extern "C" enum q3n_status cuda_gather_rows(void *d_out, const void *d_x, const int32_t *d_rows, int64_t n,
                                            int64_t div, int64_t D, enum q3n_compute_dtype dt, cudaStream_t stream,
                                            struct q3n_error *err)
{
    Q3N_REQUIRE(n >= 0 && n <= INT32_MAX && div > 0 && D > 0);
    if (n == 0) return Q3N_OK;
    if (dt == Q3N_COMPUTE_BF16)
        gather_kernel<<<(unsigned)n, 256, 0, stream>>>((bf16 *)d_out, (const bf16 *)d_x, d_rows, div, D);
    else
        gather_kernel<<<(unsigned)n, 256, 0, stream>>>((float *)d_out, (const float *)d_x, d_rows, div, D);
    CU_LAUNCHED("moe gather_kernel");
    return Q3N_OK;
}

template <typename T>
__global__ void swiglu_kernel(T *out, const T *gu, int64_t W, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / W, c = i % W;
        const float a = rnd(silu_f(ld(gu + r * 2 * W + c)), gu);
        st(out + i, a * ld(gu + r * 2 * W + W + c));
    }
}

extern "C" enum q3n_status cuda_swiglu_forward(void *d_out, const void *d_gu, int64_t rows, int64_t W,
                                               enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(rows >= 0 && W > 0);
    const int64_t n = rows * W;
    if (n == 0) return Q3N_OK;
    const unsigned grid = (unsigned)(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536);
    if (dt == Q3N_COMPUTE_BF16)
        swiglu_kernel<<<grid, 256, 0, stream>>>((bf16 *)d_out, (const bf16 *)d_gu, W, n);
    else
        swiglu_kernel<<<grid, 256, 0, stream>>>((float *)d_out, (const float *)d_gu, W, n);
    CU_LAUNCHED("swiglu_kernel");
    return Q3N_OK;
}

/* ---- expert GEMV (decode) ----
 * Block (row r, 8 outputs); warp per output n, lanes stride over k; x row staged in shared
 * memory as float. Warp sums in a fixed shuffle tree. */
template <typename T>
__global__ void __launch_bounds__(256) experts_gemv_kernel(T *out, const T *x, const int32_t *idx, const T *W,
                                                           int64_t div, int64_t N, int64_t Kin)
{
    extern __shared__ float xs[]; /* [Kin] */
    const int64_t r = blockIdx.x;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const T *xr = x + (r / div) * Kin;
    for (int64_t k = threadIdx.x; k < Kin; k += blockDim.x) xs[k] = ld(xr + k);
    __syncthreads();
    const int64_t n = (int64_t)blockIdx.y * 8 + w;
    if (n >= N) return;
    const T *wr = W + ((int64_t)idx[r] * N + n) * Kin;
    float acc = 0.0f;
    if (sizeof(T) == 2 && (Kin % 8) == 0) {
        for (int64_t k = lane * 8; k < Kin; k += 256) {
            const uint4 v = *reinterpret_cast<const uint4 *>(wr + k);
            const bf16 *b = reinterpret_cast<const bf16 *>(&v);
#pragma unroll
            for (int i = 0; i < 8; i++) acc += __bfloat162float(b[i]) * xs[k + i];
        }
    } else {
        for (int64_t k = lane; k < Kin; k += 32) acc += ld(wr + k) * xs[k];
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) st(out + r * N + n, acc);
}

extern "C" enum q3n_status cuda_moe_experts_gemv(void *d_out, const void *d_x, const int32_t *d_idx, const void *d_W,
                                                 int64_t rows, int64_t div, int64_t N, int64_t Kin,
                                                 enum q3n_compute_dtype dt, cudaStream_t stream,
                                                 struct q3n_error *err)
{
    Q3N_REQUIRE(rows >= 0 && rows <= INT32_MAX && div > 0 && N > 0 && Kin > 0 && Kin <= 12288);
    if (rows == 0) return Q3N_OK;
    const dim3 grid((unsigned)rows, cdiv(N, 8));
    const size_t smem = sizeof(float) * (size_t)Kin;
    if (dt == Q3N_COMPUTE_BF16)
        experts_gemv_kernel<<<grid, 256, smem, stream>>>((bf16 *)d_out, (const bf16 *)d_x, d_idx, (const bf16 *)d_W,
                                                         div, N, Kin);
    else
        experts_gemv_kernel<<<grid, 256, smem, stream>>>((float *)d_out, (const float *)d_x, d_idx,
                                                         (const float *)d_W, div, N, Kin);
    CU_LAUNCHED("experts_gemv_kernel");
    return Q3N_OK;
}

/* ---- un-permute + shared expert ---- */
template <typename T>
__global__ void combine_kernel(T *eout, T *mout, const T *y, const int32_t *pos, const float *weight, const T *shared,
                               const T *sg, int64_t D, int64_t K)
{
    const int64_t t = blockIdx.x;
    const float sgate = shared ? rnd(sigmoid_f(ld(sg + t)), y) : 0.0f;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int64_t j = 0; j < K; j++) {
            const int64_t p = pos ? pos[t * K + j] : t * K + j;
            acc += rnd(weight[t * K + j] * ld(y + p * D + d), y);
        }
        const float e = rnd(acc, y);
        if (eout) st(eout + t * D + d, e);
        const float m = shared ? e + rnd(sgate * ld(shared + t * D + d), y) : e;
        st(mout + t * D + d, m);
    }
}

extern "C" enum q3n_status cuda_moe_combine(void *d_experts_out, void *d_mlp_out, const void *d_y,
                                            const int32_t *d_pos, const float *d_weight, const void *d_shared,
                                            const void *d_sg, int64_t T, int64_t D, int64_t K,
                                            enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && T <= INT32_MAX && D > 0 && K > 0);
    if (T == 0) return Q3N_OK;
    if (dt == Q3N_COMPUTE_BF16)
        combine_kernel<<<(unsigned)T, 256, 0, stream>>>((bf16 *)d_experts_out, (bf16 *)d_mlp_out, (const bf16 *)d_y,
                                                        d_pos, d_weight, (const bf16 *)d_shared, (const bf16 *)d_sg,
                                                        D, K);
    else
        combine_kernel<<<(unsigned)T, 256, 0, stream>>>((float *)d_experts_out, (float *)d_mlp_out,
                                                        (const float *)d_y, d_pos, d_weight, (const float *)d_shared,
                                                        (const float *)d_sg, D, K);
    CU_LAUNCHED("moe combine_kernel");
    return Q3N_OK;
}
