/* moe.cu — sparse MoE: router softmax + top-k, token permutation, SwiGLU, expert GEMV for
 * decode, weighted un-permute with the shared expert (cuda twins of ref/moe.c).
 *
 * Prefill runs the routed experts as grouped GEMMs over the permuted rows (v3: gather and
 * SwiGLU fused, all experts in one launch; v1 and per-expert cuBLAS remain as fallbacks, see
 * blocks.cu, experts_gemm); decode (few rows) runs the expert GEMV v2 (routed + shared experts, combine fused),
 * which reads the chosen experts on the device, so a decode step never waits on the host (and
 * can be captured in a CUDA graph). Deterministic: the permutation is a stable ballot scan
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

/* ---- grouped expert GEMM (bf16 tensor cores; prefill) ----
 * out[p, n] = sum_k X[p, k] W[e][n, k] for the rows p of each expert e (offsets/counts on the
 * device, as cuda_moe_permute leaves them): one launch for every expert, no host round trip.
 * Tile 64 or 128 rows x 128 outputs x 32 k, 8 warps (2 x 4), warp tiles of mma.sync m16n8k16
 * with float32 accumulators; the next k-tile is prefetched into registers while the current one
 * is multiplied. A tile table (expert, first row) is built on the device first. */
#define GG_BM 64 /* smallest row tile; the tile table is sized for it */
#define GG_BN 128
#define GG_BK 32
#define GG_LD (GG_BK + 8)

__global__ void gg_tiles_kernel(int32_t *tiles, const int32_t *counts, const int32_t *offsets, int64_t E, int bm)
{
    if (threadIdx.x != 0) return;
    int32_t nt = 0;
    for (int64_t e = 0; e < E; e++)
        for (int32_t r = 0; r < counts[e]; r += bm) {
            tiles[1 + 2 * nt] = (int32_t)e;
            tiles[2 + 2 * nt] = offsets[e] + r;
            nt++;
        }
    tiles[0] = nt;
}

__device__ __forceinline__ void gg_mma(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                       uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

/* BM rows (64 or 128) x 128 outputs per block; 8 warps as 2 (rows) x 4 (cols), warp tile
 * (BM/2) x 32 = MT m-tiles x 4 n-tiles. BM = 128 halves the weight re-reads when experts get
 * more than 64 rows. */
template <int BM>
__global__ void __launch_bounds__(256) grouped_gemm_bf16_kernel(bf16 *out, const bf16 *X, const bf16 *W,
                                                                const int32_t *tiles, const int32_t *counts,
                                                                const int32_t *offsets, int N, int Kin)
{
    constexpr int MT = BM / 32, XL = BM / 64;
    __shared__ __align__(16) bf16 Xs[BM * GG_LD];
    __shared__ __align__(16) bf16 Ws[GG_BN * GG_LD];
    const int tile = blockIdx.y;
    if (tile >= tiles[0]) return;
    const int e = tiles[1 + 2 * tile], r0 = tiles[2 + 2 * tile];
    const int rend = offsets[e] + counts[e]; /* rows [r0, min(r0+BM, rend)) */
    const int n0 = blockIdx.x * GG_BN;
    const bf16 *We = W + (size_t)e * N * Kin;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;
    const int g = lane >> 2, tq = lane & 3;
    const int lr = tid >> 2, lc = (tid & 3) * 8; /* loader: row lr + 64 i, 8 bf16 at column lc */
    bool xin[XL];
    const bf16 *xsrc[XL];
    for (int i = 0; i < XL; i++) {
        xin[i] = r0 + lr + 64 * i < rend;
        xsrc[i] = X + (size_t)(r0 + lr + 64 * i) * Kin + lc;
    }
    const bf16 *wsrc0 = We + (size_t)(n0 + lr) * Kin + lc, *wsrc1 = We + (size_t)(n0 + lr + 64) * Kin + lc;
    float acc[MT][4][4];
    for (int a = 0; a < MT; a++)
        for (int b = 0; b < 4; b++) acc[a][b][0] = acc[a][b][1] = acc[a][b][2] = acc[a][b][3] = 0.0f;
    uint4 px[XL];
    for (int i = 0; i < XL; i++) px[i] = xin[i] ? *reinterpret_cast<const uint4 *>(xsrc[i]) : make_uint4(0, 0, 0, 0);
    uint4 pw0 = *reinterpret_cast<const uint4 *>(wsrc0), pw1 = *reinterpret_cast<const uint4 *>(wsrc1);
    for (int k0 = 0; k0 < Kin; k0 += GG_BK) {
        __syncthreads();
        for (int i = 0; i < XL; i++) *reinterpret_cast<uint4 *>(&Xs[(lr + 64 * i) * GG_LD + lc]) = px[i];
        *reinterpret_cast<uint4 *>(&Ws[lr * GG_LD + lc]) = pw0;
        *reinterpret_cast<uint4 *>(&Ws[(lr + 64) * GG_LD + lc]) = pw1;
        __syncthreads();
        if (k0 + GG_BK < Kin) {
            for (int i = 0; i < XL; i++)
                px[i] = xin[i] ? *reinterpret_cast<const uint4 *>(xsrc[i] + k0 + GG_BK) : make_uint4(0, 0, 0, 0);
            pw0 = *reinterpret_cast<const uint4 *>(wsrc0 + k0 + GG_BK);
            pw1 = *reinterpret_cast<const uint4 *>(wsrc1 + k0 + GG_BK);
        }
#pragma unroll
        for (int ks = 0; ks < GG_BK / 16; ks++) {
            const int c = ks * 16 + 2 * tq;
            uint32_t b[4][2];
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
                const bf16 *br = Ws + (wn * 32 + nt * 8 + g) * GG_LD + c;
                b[nt][0] = *reinterpret_cast<const uint32_t *>(br);
                b[nt][1] = *reinterpret_cast<const uint32_t *>(br + 8);
            }
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                const bf16 *ar = Xs + (wm * (BM / 2) + mt * 16 + g) * GG_LD + c;
                const uint32_t a0 = *reinterpret_cast<const uint32_t *>(ar);
                const uint32_t a1 = *reinterpret_cast<const uint32_t *>(ar + 8 * GG_LD);
                const uint32_t a2 = *reinterpret_cast<const uint32_t *>(ar + 8);
                const uint32_t a3 = *reinterpret_cast<const uint32_t *>(ar + 8 * GG_LD + 8);
#pragma unroll
                for (int nt = 0; nt < 4; nt++) gg_mma(acc[mt][nt], a0, a1, a2, a3, b[nt][0], b[nt][1]);
            }
        }
    }
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
            const int row = r0 + wm * (BM / 2) + mt * 16 + g, col = n0 + wn * 32 + nt * 8 + 2 * tq;
            if (row < rend)
                *reinterpret_cast<__nv_bfloat162 *>(out + (size_t)row * N + col) =
                    __floats2bfloat162_rn(acc[mt][nt][0], acc[mt][nt][1]);
            if (row + 8 < rend)
                *reinterpret_cast<__nv_bfloat162 *>(out + (size_t)(row + 8) * N + col) =
                    __floats2bfloat162_rn(acc[mt][nt][2], acc[mt][nt][3]);
        }
}

extern "C" int64_t cuda_moe_grouped_tiles(int64_t rows, int64_t E)
{
    return 1 + 2 * (rows / GG_BM + E + 1);
}

extern "C" int cuda_moe_grouped_gemm_ok(int64_t N, int64_t Kin, enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 && N % GG_BN == 0 && Kin % GG_BK == 0 && N <= INT32_MAX && Kin <= INT32_MAX;
}

extern "C" enum q3n_status cuda_moe_grouped_gemm(void *d_out, const void *d_x, const void *d_W,
                                                 const int32_t *d_counts, const int32_t *d_offsets, int32_t *d_tiles,
                                                 int64_t rows, int64_t E, int64_t N, int64_t Kin,
                                                 enum q3n_compute_dtype dt, cudaStream_t stream,
                                                 struct q3n_error *err)
{
    Q3N_REQUIRE(cuda_moe_grouped_gemm_ok(N, Kin, dt));
    Q3N_REQUIRE(rows >= 0 && E > 0 && rows / GG_BM + E + 1 <= 65535);
    if (rows == 0) return Q3N_OK;
    /* 128-row tiles once experts average more than 64 rows (T*K/E): the weights are read once. */
    const int bm = rows > 64 * E ? 128 : 64;
    gg_tiles_kernel<<<1, 32, 0, stream>>>(d_tiles, d_counts, d_offsets, E, bm);
    CU_LAUNCHED("moe gg_tiles_kernel");
    const dim3 grid((unsigned)(N / GG_BN), (unsigned)(rows / bm + E + 1));
    if (bm == 128)
        grouped_gemm_bf16_kernel<128><<<grid, 256, 0, stream>>>((bf16 *)d_out, (const bf16 *)d_x, (const bf16 *)d_W,
                                                                d_tiles, d_counts, d_offsets, (int)N, (int)Kin);
    else
        grouped_gemm_bf16_kernel<64><<<grid, 256, 0, stream>>>((bf16 *)d_out, (const bf16 *)d_x, (const bf16 *)d_W,
                                                               d_tiles, d_counts, d_offsets, (int)N, (int)Kin);
    CU_LAUNCHED("moe grouped_gemm_bf16_kernel");
    return Q3N_OK;
}

/* ---- grouped expert GEMM v3 (bf16 tensor cores; prefill) ----
 * Same contract as v1 (rows grouped by expert, counts/offsets/tile table on the device), plus:
 * - gather fused into the A load: with d_rows, A row p is x[rows[p] / div] (no permuted copy);
 * - SwiGLU fused into the epilogue: W [E, 2W, Kin] (gate rows, then up rows); block x covers h
 *   columns c in [64x, 64x + 64), its B tile holds gate rows c and up rows W + c, so the thread that
 *   owns gate (p, c) also owns up (p, c) and writes h = T(T(silu(T(g))) * T(u)) as
 *   cuda_swiglu_forward does after a bf16 gate_up;
 * - 128 x 128 x BK tiles, 8 warps (2 x 4, warp tile 64 x 32), mma.sync m16n8k16 (sm_80+; no
 *   wgmma yet), a cp.async pipeline (BK 64: 3 stages, the default; BK 32: 4 stages), 16-byte
 *   copies with zero-fill for rows past the expert and k past Kin, ldmatrix from XOR-swizzled
 *   shared memory (conflict-free, see g3_off); 2 blocks per SM;
 * - tails: any N, Kin with N % 8 == 0 and Kin % 8 == 0 (rows/columns past the end are zero
 *   filled and not stored). */
#define G3_BM 128
#define G3_BN 128
/* BK 32: 4 stages of 16 KB (64 KB, 2 blocks/SM); BK 64: 3 stages of 32 KB (96 KB, 2 blocks/SM). */
#define G3_STAGES(BK) ((BK) == 32 ? 4 : 3)
#define G3_SMEM(BK) (G3_STAGES(BK) * 2 * G3_BM * (BK) * 2)

/* Tile table for 128-row tiles, built by one block: tiles per expert cdiv(count, 128), block
 * prefix sum in expert order, each expert writes its own entries (tiles[0] = count). */
__global__ void __launch_bounds__(1024) g3_tiles_kernel(int32_t *tiles, const int32_t *counts,
                                                        const int32_t *offsets, int E)
{
    __shared__ int wsum[32];
    __shared__ int carry;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, nw = blockDim.x >> 5;
    if (tid == 0) carry = 0;
    __syncthreads();
    for (int e0 = 0; e0 < E; e0 += blockDim.x) {
        const int e = e0 + tid;
        const int nt = e < E ? (counts[e] + G3_BM - 1) / G3_BM : 0;
        int v = nt; /* inclusive warp scan */
        for (int o = 1; o < 32; o <<= 1) {
            const int y = __shfl_up_sync(0xffffffffu, v, o);
            if (lane >= o) v += y;
        }
        if (lane == 31) wsum[w] = v;
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
        const int excl = carry + (w ? wsum[w - 1] : 0) + v - nt;
        for (int i = 0; i < nt; i++) {
            tiles[1 + 2 * (excl + i)] = e;
            tiles[2 + 2 * (excl + i)] = offsets[e] + i * G3_BM;
        }
        __syncthreads();
        if (tid == blockDim.x - 1) carry = excl + nt;
        __syncthreads();
    }
    if (tid == 0) tiles[0] = carry;
}

__device__ __forceinline__ void g3_cp16(uint32_t dst, const void *src, bool ok)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0));
#endif
}
__device__ __forceinline__ void g3_commit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void g3_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}
__device__ __forceinline__ void g3_ldm4(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, uint32_t addr)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
#endif
}
/* Byte offset of (row r, 16-byte chunk c) in a 128 x BK bf16 tile: BK 32 (64-byte rows, 4 chunks)
 * c ^ ((r >> 1) & 3); BK 64 (128-byte rows, 8 chunks) c ^ (r & 7). Either way the 8 rows an
 * ldmatrix reads at one logical chunk land on 8 distinct 16-byte bank groups. */
template <int BK>
__device__ __forceinline__ uint32_t g3_off(int r, int c)
{
    return BK == 32 ? (uint32_t)(r * 64 + ((c ^ ((r >> 1) & 3)) << 4)) : (uint32_t)(r * 128 + ((c ^ (r & 7)) << 4));
}

template <bool GATHER, bool SWIGLU, int BK>
__global__ void __launch_bounds__(256, 2) grouped_gemm_v3_kernel(bf16 *out, const bf16 *X, const int32_t *xrows,
                                                                 int div, const bf16 *W, const int32_t *tiles,
                                                                 const int32_t *counts, const int32_t *offsets,
                                                                 int N, int Kin)
{
    constexpr int ST = G3_STAGES(BK), CH = BK / 8 /* chunks per row */, RS = 256 / CH /* rows per pass */,
                  LP = G3_BM / RS /* passes */, TB = G3_BM * BK * 2 /* tile bytes */;
    extern __shared__ __align__(128) unsigned char g3s[];
    const int tile = blockIdx.y;
    if (tile >= tiles[0]) return;
    const int e = tiles[1 + 2 * tile], r0 = tiles[2 + 2 * tile];
    const int rend = offsets[e] + counts[e]; /* rows [r0, min(r0 + 128, rend)) */
    const int Wh = N / 2;                    /* SWIGLU: h width */
    const bf16 *We = W + (size_t)e * N * Kin;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;
    /* loader: tile rows lr + RS i (i < LP), 16-byte chunk lc */
    const int lr = tid / CH, lc = tid % CH;
    int asrc[LP], bsrc[LP]; /* source rows, -1: zero fill */
#pragma unroll
    for (int i = 0; i < LP; i++) {
        const int rr = lr + RS * i, p = r0 + rr;
        asrc[i] = p < rend ? (GATHER ? xrows[p] / div : p) : -1;
        if (SWIGLU) {
            const int c = blockIdx.x * 64 + (rr & 63); /* h column: rows < 64 gate, >= 64 up */
            bsrc[i] = c < Wh ? c + (rr >> 6) * Wh : -1;
        } else {
            const int n = blockIdx.x * G3_BN + rr;
            bsrc[i] = n < N ? n : -1;
        }
    }
    const uint32_t sbase = (uint32_t)__cvta_generic_to_shared(g3s);
    const int ktiles = (Kin + BK - 1) / BK;
    auto load = [&](int kt, int stage) {
        const int k = kt * BK + lc * 8;
        const bool kin = k < Kin;
        const uint32_t sa = sbase + stage * 2 * TB, sb = sa + TB;
#pragma unroll
        for (int i = 0; i < LP; i++) {
            const uint32_t so = g3_off<BK>(lr + RS * i, lc);
            const bool ao = kin && asrc[i] >= 0, bo = kin && bsrc[i] >= 0;
            g3_cp16(sa + so, ao ? X + (size_t)asrc[i] * Kin + k : X, ao);
            g3_cp16(sb + so, bo ? We + (size_t)bsrc[i] * Kin + k : W, bo);
        }
    };
    float acc[4][4][4];
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) acc[a][b][0] = acc[a][b][1] = acc[a][b][2] = acc[a][b][3] = 0.0f;
#pragma unroll
    for (int s = 0; s < ST - 1; s++) {
        if (s < ktiles) load(s, s);
        g3_commit();
    }
    /* ldmatrix lane addresses: A rows wm*64 + mt*16 + (lane & 15), chunk 2ks + (lane >> 4);
     * B rows (n) base + (lane & 7) + 8 (lane >> 4), chunk 2ks + ((lane >> 3) & 1). */
    const int arow = wm * 64 + (lane & 15), achk = lane >> 4;
    const int bn = (lane & 7) + ((lane >> 4) << 3), bchk = (lane >> 3) & 1;
    int brow[2];
#pragma unroll
    for (int pr = 0; pr < 2; pr++) brow[pr] = (SWIGLU ? pr * 64 + wn * 16 : wn * 32 + pr * 16) + bn;
    for (int kt = 0; kt < ktiles; kt++) {
        g3_wait<ST - 2>();
        __syncthreads();
        if (kt + ST - 1 < ktiles) load(kt + ST - 1, (kt + ST - 1) % ST);
        g3_commit();
        const uint32_t sa = sbase + (kt % ST) * 2 * TB, sb = sa + TB;
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++) {
            uint32_t a[4][4], b[4][2];
#pragma unroll
            for (int mt = 0; mt < 4; mt++)
                g3_ldm4(a[mt][0], a[mt][1], a[mt][2], a[mt][3], sa + g3_off<BK>(arow + mt * 16, 2 * ks + achk));
#pragma unroll
            for (int pr = 0; pr < 2; pr++)
                g3_ldm4(b[2 * pr][0], b[2 * pr][1], b[2 * pr + 1][0], b[2 * pr + 1][1],
                        sb + g3_off<BK>(brow[pr], 2 * ks + bchk));
#pragma unroll
            for (int mt = 0; mt < 4; mt++)
#pragma unroll
                for (int nt = 0; nt < 4; nt++) gg_mma(acc[mt][nt], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b[nt][0], b[nt][1]);
        }
    }
    g3_wait<0>();
    const int g = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int mt = 0; mt < 4; mt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int row = r0 + wm * 64 + mt * 16 + g + 8 * hf;
            if (row >= rend) continue;
            if (SWIGLU) {
#pragma unroll
                for (int nt = 0; nt < 2; nt++) {
                    const int col = blockIdx.x * 64 + wn * 16 + nt * 8 + 2 * tq;
                    if (col >= Wh) continue;
                    float h[2];
#pragma unroll
                    for (int q = 0; q < 2; q++) {
                        const float gt = __bfloat162float(__float2bfloat16_rn(acc[mt][nt][2 * hf + q]));
                        const float up = __bfloat162float(__float2bfloat16_rn(acc[mt][nt + 2][2 * hf + q]));
                        h[q] = __bfloat162float(__float2bfloat16_rn(silu_f(gt))) * up;
                    }
                    *reinterpret_cast<__nv_bfloat162 *>(out + (size_t)row * Wh + col) = __floats2bfloat162_rn(h[0], h[1]);
                }
            } else {
#pragma unroll
                for (int nt = 0; nt < 4; nt++) {
                    const int col = blockIdx.x * G3_BN + wn * 32 + nt * 8 + 2 * tq;
                    if (col >= N) continue;
                    *reinterpret_cast<__nv_bfloat162 *>(out + (size_t)row * N + col) =
                        __floats2bfloat162_rn(acc[mt][nt][2 * hf], acc[mt][nt][2 * hf + 1]);
                }
            }
        }
}

extern "C" int cuda_moe_grouped_v3_ok(int64_t N, int64_t Kin, int swiglu, enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 && N > 0 && Kin > 0 && N % (swiglu ? 16 : 8) == 0 && Kin % 8 == 0 &&
           N <= INT32_MAX / 2 && Kin <= INT32_MAX / 2;
}

extern "C" enum q3n_status cuda_moe_grouped_tiles_v3(int32_t *d_tiles, const int32_t *d_counts,
                                                     const int32_t *d_offsets, int64_t rows, int64_t E,
                                                     cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(rows >= 0 && E > 0 && E <= INT32_MAX && rows / G3_BM + E + 1 <= 65535);
    g3_tiles_kernel<<<1, 1024, 0, stream>>>(d_tiles, d_counts, d_offsets, (int)E);
    CU_LAUNCHED("moe g3_tiles_kernel");
    return Q3N_OK;
}

/* Tile depth of the production path (both variants are checked by dev/test_moe2). */
#define G3_BK_DEFAULT 64

extern "C" enum q3n_status cuda_moe_grouped_gemm_v3_bk(void *d_out, const void *d_x, const int32_t *d_rows,
                                                       int64_t div, const void *d_W, const int32_t *d_counts,
                                                       const int32_t *d_offsets, const int32_t *d_tiles, int64_t rows,
                                                       int64_t E, int64_t N, int64_t Kin, int swiglu, int bk,
                                                       enum q3n_compute_dtype dt, cudaStream_t stream,
                                                       struct q3n_error *err)
{
    Q3N_REQUIRE(cuda_moe_grouped_v3_ok(N, Kin, swiglu, dt) && (bk == 32 || bk == 64));
    Q3N_REQUIRE(rows >= 0 && rows <= INT32_MAX && E > 0 && div > 0 && rows / G3_BM + E + 1 <= 65535);
    if (rows == 0) return Q3N_OK;
    const dim3 grid(swiglu ? cdiv(N / 2, 64) : cdiv(N, G3_BN), (unsigned)(rows / G3_BM + E + 1));
    const bf16 *x = (const bf16 *)d_x, *W = (const bf16 *)d_W;
    bf16 *out = (bf16 *)d_out;
    const int n = (int)N, k = (int)Kin, dv = (int)div;
#define G3_LAUNCH(G, S, B)                                                                                    \
    do {                                                                                                      \
        CU_CHECK(cudaFuncSetAttribute(grouped_gemm_v3_kernel<G, S, B>,                                        \
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, G3_SMEM(B)));              \
        grouped_gemm_v3_kernel<G, S, B><<<grid, 256, G3_SMEM(B), stream>>>(out, x, d_rows, dv, W, d_tiles,     \
                                                                           d_counts, d_offsets, n, k);        \
    } while (0)
#define G3_LAUNCH_BK(G, S)                                                                                    \
    do {                                                                                                      \
        if (bk == 32)                                                                                         \
            G3_LAUNCH(G, S, 32);                                                                              \
        else                                                                                                  \
            G3_LAUNCH(G, S, 64);                                                                              \
    } while (0)
    if (d_rows && swiglu)
        G3_LAUNCH_BK(true, true);
    else if (d_rows)
        G3_LAUNCH_BK(true, false);
    else if (swiglu)
        G3_LAUNCH_BK(false, true);
    else
        G3_LAUNCH_BK(false, false);
#undef G3_LAUNCH_BK
#undef G3_LAUNCH
    CU_LAUNCHED("moe grouped_gemm_v3_kernel");
    return Q3N_OK;
}

extern "C" enum q3n_status cuda_moe_grouped_gemm_v3(void *d_out, const void *d_x, const int32_t *d_rows, int64_t div,
                                                    const void *d_W, const int32_t *d_counts,
                                                    const int32_t *d_offsets, const int32_t *d_tiles, int64_t rows,
                                                    int64_t E, int64_t N, int64_t Kin, int swiglu,
                                                    enum q3n_compute_dtype dt, cudaStream_t stream,
                                                    struct q3n_error *err)
{
    return cuda_moe_grouped_gemm_v3_bk(d_out, d_x, d_rows, div, d_W, d_counts, d_offsets, d_tiles, rows, E, N, Kin,
                                       swiglu, G3_BK_DEFAULT, dt, stream, err);
}

/* ---- expert GEMV v2 (decode; bandwidth-bound, no host round trip) ----
 * Two launches per MoE block, routed experts and the shared expert together:
 *  gate_up: one warp per output (row r, column i): g = W[e_r][i,:] . x, u = W[e_r][W+i,:] . x
 *           (16-byte weight loads, 8 per lane in flight at D = 2048), h = T(T(silu(T(g))) * T(u));
 *           the shared expert's columns follow the routed ones (row t, its own width Ws), then
 *           one warp per token for the shared-expert gate logit.
 *  down+combine: one block per output (token t, d), 16 lanes per slot (the K routed experts,
 *           then the shared one; 4 weight loads per lane in flight at I = 512),
 *           y_j = T(Wdn[e_j][d,:] . h_j); thread 0 then sums T(w_j y_j) for j ascending, as
 *           cuda_moe_combine does, and adds T(T(sigmoid(sg)) * s).
 * Warp sums use a fixed xor-shuffle tree: deterministic. */
__device__ __forceinline__ void ld8(float *v, const bf16 *p)
{
    const uint4 u = *reinterpret_cast<const uint4 *>(p);
    const __nv_bfloat162 *b = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 f = __bfloat1622float2(b[i]);
        v[2 * i] = f.x;
        v[2 * i + 1] = f.y;
    }
}
__device__ __forceinline__ void ld8(float *v, const float *p)
{
    const float4 a = *reinterpret_cast<const float4 *>(p), b = *reinterpret_cast<const float4 *>(p + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
/* Partial dot of n (% 8 == 0) elements: this lane takes 8-element chunks lane0, lane0 + step, ...
 * (U chunks unrolled: U weight loads in flight per lane) */
template <int U, typename T>
__device__ __forceinline__ float dot8(const T *w, const T *x, int n, int lane0, int step)
{
    float acc = 0.0f;
#pragma unroll U
    for (int c = lane0 * 8; c < n; c += step * 8) {
        float a[8], b[8];
        ld8(a, w + c);
        ld8(b, x + c);
#pragma unroll
        for (int i = 0; i < 8; i++) acc = fmaf(a[i], b[i], acc);
    }
    return acc;
}

template <typename T>
__global__ void __launch_bounds__(256) moe_gemv_gu_kernel(T *h, T *hs, T *sg, const T *x, const int32_t *idx,
                                                          const T *Wgu, const T *Wsgu, const T *Wsg, int Tn, int K,
                                                          int D, int I, int Ws)
{
    const int lane = threadIdx.x & 31;
    const int64_t task = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5), routed = (int64_t)Tn * K * I,
                  shared = Wsgu ? (int64_t)Tn * Ws : 0;
    const T *wg, *wu, *xr;
    T *o;
    if (task < routed) {
        const int64_t r = task / I, i = task % I;
        const T *we = Wgu + (int64_t)idx[r] * 2 * I * D;
        wg = we + i * D, wu = we + (I + i) * D, xr = x + (r / K) * D, o = h + task;
    } else if (task < routed + shared) {
        const int64_t s = task - routed;
        const int64_t t = s / Ws, i = s % Ws;
        wg = Wsgu + i * D, wu = Wsgu + (Ws + i) * D, xr = x + t * D, o = hs + s;
    } else {
        /* shared-expert gate logit sg[t] = T(x[t] . Wsg) (a [1, D] linear) */
        const int64_t t = task - routed - shared;
        if (!Wsg || t >= Tn) return;
        float v = dot8<8>(Wsg, x + t * D, D, lane, 32);
        for (int of = 16; of > 0; of >>= 1) v += __shfl_xor_sync(0xffffffffu, v, of);
        if (lane == 0) st(sg + t, v);
        return;
    }
    float g = dot8<8>(wg, xr, D, lane, 32), u = dot8<8>(wu, xr, D, lane, 32);
    for (int of = 16; of > 0; of >>= 1) {
        g += __shfl_xor_sync(0xffffffffu, g, of);
        u += __shfl_xor_sync(0xffffffffu, u, of);
    }
    if (lane == 0) {
        g = rnd(g, x), u = rnd(u, x);
        st(o, rnd(silu_f(g), x) * u);
    }
}

#define GEMV2_MAXK 63 /* K + the shared expert <= 64 slots, 2 per warp */
template <typename T>
__global__ void __launch_bounds__(1024) moe_gemv_dn_kernel(T *eo, T *mout, T *sout, const T *h, const T *hs,
                                                           const int32_t *idx, const float *wt, const T *Wdn,
                                                           const T *Wsdn, const T *sg, int K, int D, int I, int Ws)
{
    __shared__ float ys[64];
    const int lane = threadIdx.x & 31, j = (threadIdx.x >> 5) * 2 + (lane >> 4), gl = lane & 15;
    const int64_t task = blockIdx.x, t = task / D, d = task % D;
    const int S = K + (Wsdn ? 1 : 0); /* slots: K routed, then the shared expert */
    float v = 0.0f;
    if (j < K) {
        const int64_t r = t * K + j;
        v = dot8<4>(Wdn + ((int64_t)idx[r] * D + d) * I, h + r * I, I, gl, 16);
    } else if (j < S) {
        v = dot8<4>(Wsdn + d * Ws, hs + t * Ws, Ws, gl, 16);
    }
    for (int of = 8; of > 0; of >>= 1) v += __shfl_xor_sync(0xffffffffu, v, of);
    if (gl == 0 && j < S) ys[j] = rnd(v, h);
    __syncthreads();
    if (threadIdx.x != 0) return;
    float acc = 0.0f;
    for (int jj = 0; jj < K; jj++) acc += rnd(wt[t * K + jj] * ys[jj], h);
    const float e = rnd(acc, h);
    if (eo) st(eo + task, e);
    float m = e;
    if (Wsdn) {
        const float sv = ys[K], sgate = rnd(sigmoid_f(ld(sg + t)), h);
        if (sout) st(sout + task, sv);
        m = e + rnd(sgate * sv, h);
    }
    st(mout + task, m);
}

extern "C" int cuda_moe_gemv2_ok(int64_t D, int64_t I, int64_t Ws, int64_t K)
{
    return D > 0 && I > 0 && D % 8 == 0 && I % 8 == 0 && Ws % 8 == 0 && Ws >= 0 && K > 0 && K <= GEMV2_MAXK &&
           D <= INT32_MAX / 2 && I <= INT32_MAX / 2 && Ws <= INT32_MAX / 2;
}

extern "C" enum q3n_status cuda_moe_gemv2_gate_up(void *d_h, void *d_hs, void *d_sg, const void *d_x,
                                                  const int32_t *d_idx, const void *d_Wgu, const void *d_Wsgu,
                                                  const void *d_Wsg, int64_t T, int64_t K, int64_t D, int64_t I,
                                                  int64_t Ws, enum q3n_compute_dtype dt, cudaStream_t stream,
                                                  struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && T <= INT32_MAX && cuda_moe_gemv2_ok(D, I, d_Wsgu ? Ws : 0, K));
    Q3N_REQUIRE(!d_Wsg || d_sg);
    const int64_t tasks = T * K * I + (d_Wsgu ? T * Ws : 0) + (d_Wsg ? T : 0);
    if (tasks == 0) return Q3N_OK;
    Q3N_REQUIRE(tasks / 8 + 1 <= INT32_MAX);
    const unsigned grid = (unsigned)((tasks + 7) / 8);
    const int ws = d_Wsgu ? (int)Ws : 0;
    if (dt == Q3N_COMPUTE_BF16)
        moe_gemv_gu_kernel<<<grid, 256, 0, stream>>>((bf16 *)d_h, (bf16 *)d_hs, (bf16 *)d_sg, (const bf16 *)d_x, d_idx,
                                                     (const bf16 *)d_Wgu, (const bf16 *)d_Wsgu, (const bf16 *)d_Wsg, (int)T, (int)K,
                                                     (int)D, (int)I, ws);
    else
        moe_gemv_gu_kernel<<<grid, 256, 0, stream>>>((float *)d_h, (float *)d_hs, (float *)d_sg, (const float *)d_x, d_idx,
                                                     (const float *)d_Wgu, (const float *)d_Wsgu, (const float *)d_Wsg, (int)T, (int)K,
                                                     (int)D, (int)I, ws);
    CU_LAUNCHED("moe_gemv_gu_kernel");
    return Q3N_OK;
}

extern "C" enum q3n_status cuda_moe_gemv2_down_combine(void *d_eo, void *d_mout, void *d_sout, const void *d_h,
                                                       const void *d_hs, const int32_t *d_idx, const float *d_weight,
                                                       const void *d_Wdn, const void *d_Wsdn, const void *d_sg,
                                                       int64_t T, int64_t K, int64_t D, int64_t I, int64_t Ws,
                                                       enum q3n_compute_dtype dt, cudaStream_t stream,
                                                       struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && T <= INT32_MAX && cuda_moe_gemv2_ok(D, I, d_Wsdn ? Ws : 0, K));
    Q3N_REQUIRE(!d_Wsdn || (d_hs && d_sg && Ws > 0));
    if (T == 0) return Q3N_OK;
    Q3N_REQUIRE(T * D <= INT32_MAX);
    /* one block per output (t, d): 16 lanes per slot, two slots per warp */
    const unsigned grid = (unsigned)(T * D), threads = 32 * cdiv(K + (d_Wsdn ? 1 : 0), 2);
    const int ws = d_Wsdn ? (int)Ws : 0;
    if (dt == Q3N_COMPUTE_BF16)
        moe_gemv_dn_kernel<<<grid, threads, 0, stream>>>((bf16 *)d_eo, (bf16 *)d_mout, (bf16 *)d_sout, (const bf16 *)d_h,
                                                     (const bf16 *)d_hs, d_idx, d_weight, (const bf16 *)d_Wdn,
                                                     (const bf16 *)d_Wsdn, (const bf16 *)d_sg, (int)K, (int)D, (int)I,
                                                     ws);
    else
        moe_gemv_dn_kernel<<<grid, threads, 0, stream>>>((float *)d_eo, (float *)d_mout, (float *)d_sout,
                                                     (const float *)d_h, (const float *)d_hs, d_idx, d_weight,
                                                     (const float *)d_Wdn, (const float *)d_Wsdn, (const float *)d_sg,
                                                     (int)K, (int)D, (int)I, ws);
    CU_LAUNCHED("moe_gemv_dn_kernel");
    return Q3N_OK;
}
