/* moe.cu — sparse MoE: router softmax + top-k, token permutation, SwiGLU, expert GEMV for
 * decode, weighted un-permute with the shared expert (cuda twins of ref/moe.c).
 *
 * Prefill runs the routed experts as per-expert cuBLAS GEMMs over the permuted rows (model.cu);
 * decode (few rows) runs cuda_moe_experts_gemv, which reads the chosen experts on the device, so
 * a decode step never waits on the host. Deterministic: the permutation is a stable ballot scan
 * (tokens ascending inside each expert), the un-permute sums slots j = 0..K-1 in order. The
 * only atomics are integer counts, whose result does not depend on order. */
#include "common.cuh"

#define ROUTER_THREADS 256

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

extern "C" enum q3n_status cuda_router_topk_forward(float *d_probs, int32_t *d_idx, float *d_weight,
                                                    const void *d_logits, int64_t T, int64_t E, int64_t K,
                                                    int norm_topk_prob, enum q3n_compute_dtype dt,
                                                    cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && T <= INT32_MAX && E > 0 && E <= 4096 && K > 0 && K <= 64 && K <= E);
    if (T == 0) return Q3N_OK;
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
