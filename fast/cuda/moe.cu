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

/* Router v3, one block per token for small T (decode; E <= 1024, one expert per thread, blockDim =
 * E rounded up to 32): bitwise v2's results with a few barriers instead of v2's serial warp.
 *  softmax: mx = block max (exact in any order); x_e = exp(l_e - mx) into shared memory; every warp
 *    then sums them exactly as v2's lane l does (e = l, l+32, .. ascending, then the same xor tree),
 *    so sum, p_e = x_e / sum and the probs are v2's bits.
 *  top-k on keys u_e = bits(p_e) << 32 | (2^32-1 - e) (p_e >= 0: the float order is the bit order;
 *    larger key = higher p, ties to the lower index: v2's (value desc, index asc) total order).
 *    tau = the K-th largest of the warps' maximum keys (0 when fewer than K warps): those K warp
 *    maxima are K distinct elements >= tau, so every top-K element is >= tau. The candidates
 *    (u_e >= tau, usually ~K) are compacted to shared memory; each ranks itself by counting the
 *    candidates with a larger key; ranks < K give idx/chosen in v2's order.
 *  weights: s = sum_j chosen_j (j ascending), weight_j = T(chosen_j / s): v2's arithmetic.
 * Rounds with no candidate limit are exact for any input; only their count of compares varies. */
#define ROUTER_BLOCK_MAX_T 64 /* cuda_router_topk_forward runs v3 up to this many tokens */
template <typename T>
__global__ void __launch_bounds__(1024) router_topk_block_kernel(float *probs, int32_t *idx, float *weight,
                                                                 const T *logits, int E, int K, int norm_topk)
{
    extern __shared__ float rx[]; /* x [E]; then the candidates' keys [E] (uint64, 8-byte aligned) */
    __shared__ float red[32];
    __shared__ unsigned long long wkey[32];
    __shared__ int wcnt[33];
    __shared__ float chosen[64];
    const int e = threadIdx.x, lane = e & 31, w = e >> 5, nw = blockDim.x >> 5;
    const int64_t t = blockIdx.x;
    const T *lg = logits + t * E;
    const float lv = e < E ? ld(lg + e) : -INFINITY;
    const float mx = block_max(lv, red); /* max is exact: v2's value */
    if (e < E) rx[e] = expf(lv - mx);
    __syncthreads();
    float sum = 0.0f; /* v2's lane sums and tree, in every warp */
    for (int i = lane; i < E; i += 32) sum += rx[i];
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const float p = e < E ? rx[e] / sum : 0.0f;
    if (probs && e < E) probs[t * E + e] = p;
    const unsigned long long key =
        e < E ? ((unsigned long long)__float_as_uint(p) << 32) | (0xffffffffull - (unsigned)e) : 0ull;
    unsigned long long wm = key;
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long v = __shfl_xor_sync(0xffffffffu, wm, o);
        wm = v > wm ? v : wm;
    }
    if (lane == 0) wkey[w] = wm;
    __syncthreads();
    /* tau: lane u < nw ranks warp u's maximum among the nw maxima; the one of rank K-1 is tau */
    unsigned long long tau = 0ull;
    if (nw >= K) {
        const unsigned long long mine = lane < nw ? wkey[lane] : 0ull;
        int r = 0;
        for (int u = 0; u < nw; u++) r += wkey[u] > mine;
        const unsigned bal = __ballot_sync(0xffffffffu, lane < nw && r == K - 1);
        tau = __shfl_sync(0xffffffffu, mine, __ffs(bal) - 1); /* the maxima are distinct: one lane */
    }
    const bool cand = e < E && key >= tau;
    const unsigned cb = __ballot_sync(0xffffffffu, cand);
    if (lane == 0) wcnt[w] = __popc(cb);
    __syncthreads();
    int off = 0, nc = 0;
    for (int u = 0; u < nw; u++) off += u < w ? wcnt[u] : 0, nc += wcnt[u];
    unsigned long long *ck = reinterpret_cast<unsigned long long *>(rx + ((E + 1) & ~1));
    if (cand) ck[off + __popc(cb & ((1u << lane) - 1u))] = key;
    __syncthreads();
    if (cand) {
        int r = 0;
        for (int c = 0; c < nc; c++) r += ck[c] > key;
        if (r < K) {
            idx[t * K + r] = e;
            chosen[r] = p;
        }
    }
    __syncthreads();
    if (e < K) {
        float s = 0.0f;
        for (int j = 0; j < K; j++) s += chosen[j];
        weight[t * K + e] = rnd(norm_topk ? chosen[e] / s : chosen[e], lg);
    }
}

static enum q3n_status router_launch(float *d_probs, int32_t *d_idx, float *d_weight, const void *d_logits, int64_t T,
                                     int64_t E, int64_t K, int norm_topk_prob, enum q3n_compute_dtype dt, int ver,
                                     cudaStream_t stream, struct q3n_error *err)
{
    if (ver == 3) {
        const unsigned threads = 32 * cdiv(E, 32);
        const size_t sm = sizeof(float) * (size_t)((E + 1) & ~1) + sizeof(unsigned long long) * (size_t)E;
        if (dt == Q3N_COMPUTE_BF16)
            router_topk_block_kernel<<<(unsigned)T, threads, sm, stream>>>(d_probs, d_idx, d_weight,
                                                                           (const bf16 *)d_logits, (int)E, (int)K,
                                                                           norm_topk_prob);
        else
            router_topk_block_kernel<<<(unsigned)T, threads, sm, stream>>>(d_probs, d_idx, d_weight,
                                                                           (const float *)d_logits, (int)E, (int)K,
                                                                           norm_topk_prob);
        CU_LAUNCHED("router_topk_block_kernel");
        return Q3N_OK;
    }
    if (ver == 2) {
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

static int router_default(int64_t T, int64_t E)
{
    return E <= WARP_ROUTER_MAX_E ? (T <= ROUTER_BLOCK_MAX_T ? 3 : 2) : 1;
}

extern "C" const char *cuda_router_topk_kernel(int64_t T, int64_t E, int ver)
{
    if (ver == 0) ver = router_default(T, E);
    return ver == 3 ? "router_topk_block_v3" : ver == 2 ? "router_topk_warp_v2" : "router_topk_v1";
}

extern "C" enum q3n_status cuda_router_topk_forward_ver(float *d_probs, int32_t *d_idx, float *d_weight,
                                                        const void *d_logits, int64_t T, int64_t E, int64_t K,
                                                        int norm_topk_prob, int ver, enum q3n_compute_dtype dt,
                                                        cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && T <= INT32_MAX && E > 0 && E <= 4096 && K > 0 && K <= 64 && K <= E);
    Q3N_REQUIRE(ver >= 0 && ver <= 3 && (ver < 2 || E <= WARP_ROUTER_MAX_E));
    if (T == 0) return Q3N_OK;
    return router_launch(d_probs, d_idx, d_weight, d_logits, T, E, K, norm_topk_prob, dt,
                         ver == 0 ? router_default(T, E) : ver, stream, err);
}

extern "C" enum q3n_status cuda_router_topk_forward(float *d_probs, int32_t *d_idx, float *d_weight,
                                                    const void *d_logits, int64_t T, int64_t E, int64_t K,
                                                    int norm_topk_prob, enum q3n_compute_dtype dt,
                                                    cudaStream_t stream, struct q3n_error *err)
{
    return cuda_router_topk_forward_ver(d_probs, d_idx, d_weight, d_logits, T, E, K, norm_topk_prob, 0, dt, stream,
                                        err);
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

/* ---- permutation v2: counting sort over chunks of 256 assignments (same output as v1) ----
 * v1's place_kernel has one block per expert scanning all T*K assignments (E passes over idx:
 * 0.35 ms at T=16384, E=512). v2 reads idx twice:
 *   1. chunk_count_kernel: one warp per chunk c of PC assignments: local histogram h_c[e];
 *   2. chunk_scan_kernel (one block): counts[e] = sum_c h_c[e], offsets = exclusive scan of
 *      counts over e, base_c[e] = offsets[e] + sum_{c' < c} h_c'[e];
 *   3. chunk_place_kernel: one warp per chunk, the chunk's assignments in order, 32 at a time:
 *      p = base_c[e] + (earlier ones of e in this chunk) + (lower lanes with the same e, by
 *      __match_any_sync); perm_row[p] = a, pos[a] = p.
 * Assignments of one expert keep their order (chunks ascending, ascending inside a chunk): the
 * stable grouping v1 gives, bit for bit. Histograms live in shared memory, E ints per warp. */
#define PC 256
#define PERM_SMEM_MAX 32768 /* bytes of per-warp histograms per block */

static int perm_warps(int64_t E)
{
    const int64_t w = PERM_SMEM_MAX / (4 * E);
    return (int)(w >= 8 ? 8 : w);
}

extern "C" int cuda_moe_permute_v2_ok(int64_t E)
{
    return E > 0 && perm_warps(E) >= 1;
}

__global__ void chunk_count_kernel(int32_t *hist, const int32_t *idx, int64_t n, int E)
{
    extern __shared__ int32_t ph[];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int64_t c = (int64_t)blockIdx.x * (blockDim.x >> 5) + w;
    int32_t *h = ph + w * E;
    for (int e = lane; e < E; e += 32) h[e] = 0;
    __syncwarp();
    if (c * PC < n) {
        for (int64_t a = c * PC + lane; a < n && a < (c + 1) * PC; a += 32) atomicAdd_block(&h[idx[a]], 1);
        __syncwarp();
        for (int e = lane; e < E; e += 32) hist[c * E + e] = h[e];
    }
}

/* One block walks every chunk of the histogram. BATCH 1 (v1): one load in flight per thread (50 us
 * per layer at T = 4096 under ncu, session 8: 160 chunks, a round trip each). BATCH 8 (v2, session
 * 9; the default since session 10, checked bitwise v1 and timed on an H100 by dev/test_moe_prefill;
 * under ncu 50 -> 22.5 us per layer): the loads of 8 chunks first, then their sums
 * (integers: any order gives the same result, so bitwise v1). */
#ifndef PERMUTE_SCAN_DEFAULT_VER /* EXTRA_NVCCFLAGS=-DPERMUTE_SCAN_DEFAULT_VER=1 keeps v1 */
#define PERMUTE_SCAN_DEFAULT_VER 2 /* session 10, H100: permute T = 4096 0.049 -> 0.028 ms, T = 16384 0.147 -> 0.062 */
#endif

template <int BATCH>
__global__ void __launch_bounds__(1024) chunk_scan_kernel(int32_t *base, int32_t *counts, int32_t *offsets,
                                                          const int32_t *hist, int64_t nchunks, int E)
{
    __shared__ int wsum[32];
    __shared__ int32_t carry;
    const int tid = threadIdx.x;
    if (tid == 0) carry = 0;
    __syncthreads();
    for (int e0 = 0; e0 < E; e0 += blockDim.x) {
        const int e = e0 + tid;
        int32_t tot = 0;
        if constexpr (BATCH == 1) {
            if (e < E)
                for (int64_t c = 0; c < nchunks; c++) tot += hist[c * E + e];
        } else if (e < E) {
#pragma unroll BATCH
            for (int64_t c = 0; c < nchunks; c++) tot += hist[c * E + e];
        }
        const int32_t off = block_exclusive_scan(tot, wsum) + carry; /* carry: set two barriers ago */
        if (e < E) {
            counts[e] = tot;
            offsets[e] = off;
            int32_t b = off;
            int64_t c = 0;
            if constexpr (BATCH > 1)
                for (; c + BATCH <= nchunks; c += BATCH) {
                    int32_t h[BATCH];
#pragma unroll
                    for (int j = 0; j < BATCH; j++) h[j] = hist[(c + j) * E + e];
#pragma unroll
                    for (int j = 0; j < BATCH; j++) {
                        base[(c + j) * E + e] = b;
                        b += h[j];
                    }
                }
            for (; c < nchunks; c++) {
                base[c * E + e] = b;
                b += hist[c * E + e];
            }
        }
        __syncthreads();
        if (tid == blockDim.x - 1) carry = off + tot;
        __syncthreads();
    }
}

__global__ void chunk_place_kernel(int32_t *perm_row, int32_t *pos, const int32_t *base, const int32_t *idx,
                                   int64_t n, int E)
{
    extern __shared__ int32_t ph[];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int64_t c = (int64_t)blockIdx.x * (blockDim.x >> 5) + w;
    if (c * PC >= n) return;
    int32_t *h = ph + w * E;
    for (int e = lane; e < E; e += 32) h[e] = base[c * E + e];
    __syncwarp();
    for (int64_t a0 = c * PC; a0 < n && a0 < (c + 1) * PC; a0 += 32) {
        const int64_t a = a0 + lane;
        const bool in = a < n && a < (c + 1) * PC;
        const int e = in ? idx[a] : -1 - lane; /* lanes past the end match nobody */
        const unsigned same = __match_any_sync(0xffffffffu, e);
        if (in) {
            const int p = h[e] + __popc(same & ((1u << lane) - 1u));
            perm_row[p] = (int32_t)a;
            pos[a] = p;
        }
        __syncwarp();
        if (in && lane == 31 - __clz(same)) h[e] += __popc(same); /* highest lane of the group */
        __syncwarp();
    }
}

extern "C" int cuda_moe_permute_scan_ver_for(void)
{
    return PERMUTE_SCAN_DEFAULT_VER;
}

/* Scratch of cuda_moe_permute (int32): the chunk histograms and bases of v2. */
extern "C" int64_t cuda_moe_permute_scratch(int64_t T, int64_t E, int64_t K)
{
    return 2 * ((T * K + PC - 1) / PC) * E;
}

extern "C" enum q3n_status cuda_moe_permute_v2_ver(int32_t *d_perm_row, int32_t *d_pos, int32_t *d_counts,
                                                   int32_t *d_offsets, int32_t *d_scratch, const int32_t *d_idx,
                                                   int64_t T, int64_t E, int64_t K, int scan_ver,
                                                   cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && E > 0 && E <= INT32_MAX && K > 0 && T * K <= INT32_MAX && perm_warps(E) >= 1);
    Q3N_REQUIRE(scan_ver >= 0 && scan_ver <= 2);
    if (scan_ver == 0) scan_ver = PERMUTE_SCAN_DEFAULT_VER;
    const int64_t n = T * K, nchunks = (n + PC - 1) / PC;
    if (n == 0) {
        CU_CHECK(cudaMemsetAsync(d_counts, 0, sizeof(int32_t) * (size_t)E, stream));
        CU_CHECK(cudaMemsetAsync(d_offsets, 0, sizeof(int32_t) * (size_t)E, stream));
        return Q3N_OK;
    }
    const int wpb = perm_warps(E);
    const size_t smem = sizeof(int32_t) * (size_t)(wpb * E);
    int32_t *hist = d_scratch, *base = d_scratch + nchunks * E;
    chunk_count_kernel<<<cdiv(nchunks, wpb), 32 * wpb, smem, stream>>>(hist, d_idx, n, (int)E);
    CU_LAUNCHED("moe chunk_count_kernel");
    if (scan_ver == 2)
        chunk_scan_kernel<8><<<1, 1024, 0, stream>>>(base, d_counts, d_offsets, hist, nchunks, (int)E);
    else
        chunk_scan_kernel<1><<<1, 1024, 0, stream>>>(base, d_counts, d_offsets, hist, nchunks, (int)E);
    CU_LAUNCHED("moe chunk_scan_kernel");
    chunk_place_kernel<<<cdiv(nchunks, wpb), 32 * wpb, smem, stream>>>(d_perm_row, d_pos, base, d_idx, n, (int)E);
    CU_LAUNCHED("moe chunk_place_kernel");
    return Q3N_OK;
}

extern "C" enum q3n_status cuda_moe_permute_v2(int32_t *d_perm_row, int32_t *d_pos, int32_t *d_counts,
                                               int32_t *d_offsets, int32_t *d_scratch, const int32_t *d_idx,
                                               int64_t T, int64_t E, int64_t K, cudaStream_t stream,
                                               struct q3n_error *err)
{
    return cuda_moe_permute_v2_ver(d_perm_row, d_pos, d_counts, d_offsets, d_scratch, d_idx, T, E, K, 0, stream, err);
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

/* v2 (bf16, D % 8 == 0): thread i of the grid owns outputs [8 c, 8 c + 8) of token t = i / (D / 8),
 * c = i % (D / 8), and loads its K slots' 16-byte chunks of y in batches of KB slots, each batch's
 * loads all in flight before any of them is summed, where v1's 2-byte loads one slot after another
 * leave the combine at about half of HBM bandwidth (0.45 ms per layer at T = 16384 reading 671 MB).
 * KB = COMBINE2_BATCH = 5 for every K. Until session 11 KB was 8, 12 or 16 >= K (one batch: K = 10
 * took 104 registers, so 25 % occupancy, and DRAM at 66 % under ncu,
 * fast/cuda/dev/logs/session11_glue_ncuglue_combine_v2_kernel.log); batches of 5 take 60 registers
 * and measured faster on an H100 (dev/test_moe2, session11_combine_moe2.log, K = 10 with the shared
 * expert): T = 4096 0.093 -> 0.082 ms, T = 16384 0.343 -> 0.300 ms (2.91 TB/s); batches of 4 gave
 * the same, of 2 0.087 / 0.309. Same operations per output, in the
 * same order: acc = sum over j = 0..K-1 ascending of T(weight[t, j] * y[p_j, d]) in float32 from
 * 0, e = T(acc), m = e or e + T(T(sigmoid(sg[t])) * shared[t, d]): bitwise v1 (dev/test_moe2). */
#define COMBINE2_THREADS 256
#define COMBINE2_BATCH 5
__device__ __forceinline__ void combine2_unpack(float *f, uint4 v)
{
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(w[i] << 16);          /* low half: the even element */
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u); /* high half: the odd one */
    }
}
__device__ __forceinline__ uint4 combine2_pack(const float *f)
{
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const __nv_bfloat162 b = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
        w[i] = *reinterpret_cast<const uint32_t *>(&b);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

template <int KB>
__global__ void __launch_bounds__(COMBINE2_THREADS)
    combine_v2_kernel(bf16 *eout, bf16 *mout, const bf16 *y, const int32_t *pos, const float *weight,
                      const bf16 *shared, const bf16 *sg, int T, int D8, int K)
{
    const int64_t i = (int64_t)blockIdx.x * COMBINE2_THREADS + threadIdx.x;
    if (i >= (int64_t)T * D8) return;
    const int t = (int)(i / D8), c = (int)(i - (int64_t)t * D8);
    const int64_t D = 8 * (int64_t)D8;
    /* the shared expert's chunk and gate logit first too: in flight with the y loads */
    const uint4 sv = shared ? reinterpret_cast<const uint4 *>(shared + (int64_t)t * D)[c] : make_uint4(0, 0, 0, 0);
    const float sgl = shared ? __bfloat162float(sg[t]) : 0.0f;
    float acc[8];
#pragma unroll
    for (int q = 0; q < 8; q++) acc[q] = 0.0f;
    for (int j0 = 0; j0 < K; j0 += KB) {
        uint4 v[KB];
        float w[KB];
#pragma unroll
        for (int u = 0; u < KB; u++) { /* every load of the batch first */
            const int j = j0 + u;
            if (j < K) {
                const int64_t p = pos ? pos[(int64_t)t * K + j] : (int64_t)t * K + j;
                w[u] = weight[(int64_t)t * K + j];
                v[u] = __ldcs(reinterpret_cast<const uint4 *>(y + p * D) + c); /* read once: evict first */
            }
        }
#pragma unroll
        for (int u = 0; u < KB; u++) { /* then the sums, j ascending as v1 */
            if (j0 + u < K) {
                float f[8];
                combine2_unpack(f, v[u]);
#pragma unroll
                for (int q = 0; q < 8; q++) acc[q] += __bfloat162float(__float2bfloat16_rn(w[u] * f[q]));
            }
        }
    }
    float e[8], m[8];
#pragma unroll
    for (int q = 0; q < 8; q++) e[q] = __bfloat162float(__float2bfloat16_rn(acc[q]));
    if (eout) reinterpret_cast<uint4 *>(eout + (int64_t)t * D)[c] = combine2_pack(e);
    if (shared) {
        const float sgate = __bfloat162float(__float2bfloat16_rn(sigmoid_f(sgl)));
        float s[8];
        combine2_unpack(s, sv);
#pragma unroll
        for (int q = 0; q < 8; q++) m[q] = e[q] + __bfloat162float(__float2bfloat16_rn(sgate * s[q]));
    } else {
#pragma unroll
        for (int q = 0; q < 8; q++) m[q] = e[q];
    }
    reinterpret_cast<uint4 *>(mout + (int64_t)t * D)[c] = combine2_pack(m);
}

static int combine_default(int64_t D, enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 && D % 8 == 0 ? 2 : 1;
}

extern "C" const char *cuda_moe_combine_kernel(int64_t D, enum q3n_compute_dtype dt, int ver)
{
    if (ver == 0) ver = combine_default(D, dt);
    return ver == 2 ? "moe_combine_v2" : "moe_combine_v1";
}

static int aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

extern "C" enum q3n_status cuda_moe_combine_ver(void *d_experts_out, void *d_mlp_out, const void *d_y,
                                                const int32_t *d_pos, const float *d_weight, const void *d_shared,
                                                const void *d_sg, int64_t T, int64_t D, int64_t K, int ver,
                                                enum q3n_compute_dtype dt, cudaStream_t stream,
                                                struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && T <= INT32_MAX && D > 0 && K > 0 && ver >= 0 && ver <= 2);
    if (ver == 0) ver = combine_default(D, dt);
    Q3N_REQUIRE(ver == 1 || (dt == Q3N_COMPUTE_BF16 && D % 8 == 0 && D / 8 <= INT32_MAX && K <= INT32_MAX));
    if (T == 0) return Q3N_OK;
    if (ver == 2) {
        if (!aligned16(d_experts_out) || !aligned16(d_mlp_out) || !aligned16(d_y) || !aligned16(d_shared))
            return q3n_error_set(err, Q3N_ERR_USAGE,
                                 "cuda_moe_combine v2: buffers must be 16-byte aligned (16-byte loads and stores)");
        const int64_t threads = T * (D / 8);
        Q3N_REQUIRE(threads / COMBINE2_THREADS < INT32_MAX); /* gridDim.x */
        const unsigned grid = cdiv(threads, COMBINE2_THREADS);
        const int D8 = (int)(D / 8), t = (int)T, k = (int)K;
        combine_v2_kernel<COMBINE2_BATCH><<<grid, COMBINE2_THREADS, 0, stream>>>(
            (bf16 *)d_experts_out, (bf16 *)d_mlp_out, (const bf16 *)d_y, d_pos, d_weight, (const bf16 *)d_shared,
            (const bf16 *)d_sg, t, D8, k);
        CU_LAUNCHED("moe combine_v2_kernel");
        return Q3N_OK;
    }
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

extern "C" enum q3n_status cuda_moe_combine(void *d_experts_out, void *d_mlp_out, const void *d_y,
                                            const int32_t *d_pos, const float *d_weight, const void *d_shared,
                                            const void *d_sg, int64_t T, int64_t D, int64_t K,
                                            enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err)
{
    return cuda_moe_combine_ver(d_experts_out, d_mlp_out, d_y, d_pos, d_weight, d_shared, d_sg, T, D, K, 0, dt,
                                stream, err);
}
