/* moe_router.cu — the MoE router: softmax over the expert logits, top-k (value descending, index
 * ascending on ties), the chosen probabilities (renormalised when norm_topk_prob) as weights
 * (cuda twin of ref/moe.c's router). Four kernels, each bitwise the others where both run
 * (dev/test_moe2): v1 block per token (any E), v2 warp per token, v3 block per token with a
 * threshold (decode), v4 warp per token with a threshold (prefill). */
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
#ifndef ROUTER_BLOCK_MAX_T
#define ROUTER_BLOCK_MAX_T 64 /* cuda_router_topk_forward runs v3 up to this many tokens */
#endif
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

/* Router v4, one warp per token (8 tokens per block, E <= 1024, K <= 32; prefill): v2's softmax with
 * the token's values in registers (lane l holds e = l + 32 i, i < NI), then v3's threshold top-k
 * inside the warp. v2 instead runs K rounds of a warp argmax, each reloading the lane's E / 32
 * values from shared memory: 26 us per T = 4096 layer under ncu (session 11).
 *  softmax: v2's operations in v2's order (each lane's sum over i ascending, the same xor trees), so
 *    the same probabilities, bit for bit.
 *  keys u_e = bits(p_e) << 32 | (2^32 - 1 - e), as v3: distinct, larger = earlier in v2's order.
 *  tau = the K-th largest of the 32 lanes' maximum keys (a bitonic sort of the maxima across the
 *    lanes, descending): those K maxima are K distinct keys >= tau, so every top-K key is >= tau;
 *    only the K lanes whose maximum is >= tau hold candidates, at most K NI of them.
 *  candidates (u_e >= tau) are compacted into the warp's shared memory in lane order; each counts
 *    the candidates with a larger key: rank r < K gives idx[r] = e and chosen[r] = p_e.
 *  weights: v2's (s = sum of chosen_j, j ascending, by one lane; weight_j = T(chosen_j / s)). */
#define ROUTER4_MAX_CAND 640 /* K NI: 8 warps x 640 keys x 8 bytes = 40 KB, + chosen: within 48 KB */
template <typename T, int NI>
__global__ void __launch_bounds__(256) router_topk_warp4_kernel(float *probs, int32_t *idx, float *weight,
                                                                const T *logits, int T_, int E, int K, int norm_topk)
{
    extern __shared__ unsigned long long r4_cand[]; /* [8][K NI] */
    __shared__ float chosen[8][32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int t = blockIdx.x * 8 + w;
    if (t >= T_) return; /* whole warps */
    const T *lg = logits + (int64_t)t * E;
    float x[NI];
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < NI; i++) {
        const int e = lane + 32 * i;
        x[i] = e < E ? ld(lg + e) : -INFINITY;
        mx = fmaxf(mx, x[i]);
    }
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < NI; i++)
        if (lane + 32 * i < E) {
            x[i] = expf(x[i] - mx);
            sum += x[i];
        }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    unsigned long long key[NI], mk = 0ull; /* a valid key is > 0: its low word is >= 2^32 - E */
#pragma unroll
    for (int i = 0; i < NI; i++) {
        const int e = lane + 32 * i;
        key[i] = 0ull;
        if (e < E) {
            x[i] = x[i] / sum;
            if (probs) probs[(int64_t)t * E + e] = x[i];
            key[i] = (unsigned long long)__float_as_uint(x[i]) << 32 | (0xffffffffull - (unsigned)e);
        }
        mk = key[i] > mk ? key[i] : mk;
    }
    /* bitonic sort of the lane maxima, descending: lane r ends with the (r+1)-th largest */
    unsigned long long v = mk;
    for (int k = 2; k <= 32; k <<= 1)
        for (int j = k >> 1; j > 0; j >>= 1) {
            const unsigned long long o = __shfl_xor_sync(0xffffffffu, v, j);
            const bool keep_max = ((lane & j) == 0) == ((lane & k) == 0 || k == 32);
            v = keep_max ? (o > v ? o : v) : (o < v ? o : v);
        }
    const unsigned long long tau = __shfl_sync(0xffffffffu, v, K - 1);
    int mine = 0;
#pragma unroll
    for (int i = 0; i < NI; i++) mine += key[i] >= tau;
    int incl = mine; /* inclusive prefix of the lanes' candidate counts */
    for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
    }
    const int nc = __shfl_sync(0xffffffffu, incl, 31);
    unsigned long long *cand = r4_cand + (size_t)w * K * NI;
    int slot = incl - mine;
#pragma unroll
    for (int i = 0; i < NI; i++)
        if (key[i] >= tau) cand[slot++] = key[i];
    __syncwarp();
    for (int c = lane; c < nc; c += 32) {
        const unsigned long long kc = cand[c];
        int r = 0;
        for (int u = 0; u < nc; u++) r += cand[u] > kc;
        if (r < K) {
            idx[(int64_t)t * K + r] = (int32_t)(0xffffffffull - (kc & 0xffffffffull));
            chosen[w][r] = __uint_as_float((unsigned)(kc >> 32));
        }
    }
    __syncwarp();
    float s = 0.0f;
    if (lane == 0)
        for (int j = 0; j < K; j++) s += chosen[w][j];
    s = __shfl_sync(0xffffffffu, s, 0);
    if (lane < K) weight[(int64_t)t * K + lane] = rnd(norm_topk ? chosen[w][lane] / s : chosen[w][lane], lg);
}

/* v4 runs where E <= 1024, K <= 32 and its candidates fit (K ceil(E / 32) <= ROUTER4_MAX_CAND). */
static int router4_ok(int64_t E, int64_t K)
{
    return E <= 1024 && K <= 32 && K * ((E + 31) / 32) <= ROUTER4_MAX_CAND;
}

template <typename T>
static void router4_launch(float *d_probs, int32_t *d_idx, float *d_weight, const T *d_logits, int64_t T_, int64_t E,
                           int64_t K, int norm_topk_prob, cudaStream_t stream)
{
    const unsigned grid = cdiv(T_, 8);
    const int ni = E <= 512 ? 16 : 32;
    const size_t sm = sizeof(unsigned long long) * 8 * (size_t)(K * ni);
    if (ni == 16)
        router_topk_warp4_kernel<T, 16><<<grid, 256, sm, stream>>>(d_probs, d_idx, d_weight, d_logits, (int)T_, (int)E,
                                                                   (int)K, norm_topk_prob);
    else
        router_topk_warp4_kernel<T, 32><<<grid, 256, sm, stream>>>(d_probs, d_idx, d_weight, d_logits, (int)T_, (int)E,
                                                                   (int)K, norm_topk_prob);
}

static enum q3n_status router_launch(float *d_probs, int32_t *d_idx, float *d_weight, const void *d_logits, int64_t T,
                                     int64_t E, int64_t K, int norm_topk_prob, enum q3n_compute_dtype dt, int ver,
                                     cudaStream_t stream, struct q3n_error *err)
{
    if (ver == 4) {
        if (dt == Q3N_COMPUTE_BF16)
            router4_launch(d_probs, d_idx, d_weight, (const bf16 *)d_logits, T, E, K, norm_topk_prob, stream);
        else
            router4_launch(d_probs, d_idx, d_weight, (const float *)d_logits, T, E, K, norm_topk_prob, stream);
        CU_LAUNCHED("router_topk_warp4_kernel");
        return Q3N_OK;
    }
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

#ifndef ROUTER_PREFILL_VER /* EXTRA_NVCCFLAGS=-DROUTER_PREFILL_VER=2 keeps v2 above ROUTER_BLOCK_MAX_T tokens */
#define ROUTER_PREFILL_VER 4
#endif

static int router_default(int64_t T, int64_t E, int64_t K)
{
    if (E > WARP_ROUTER_MAX_E) return 1;
    if (T <= ROUTER_BLOCK_MAX_T) return 3;
    return ROUTER_PREFILL_VER == 4 && router4_ok(E, K) ? 4 : 2;
}

extern "C" const char *cuda_router_topk_kernel(int64_t T, int64_t E, int64_t K, int ver)
{
    if (ver == 0) ver = router_default(T, E, K);
    return ver == 4   ? "router_topk_warp_v4"
           : ver == 3 ? "router_topk_block_v3"
           : ver == 2 ? "router_topk_warp_v2"
                      : "router_topk_v1";
}

extern "C" enum q3n_status cuda_router_topk_forward_ver(float *d_probs, int32_t *d_idx, float *d_weight,
                                                        const void *d_logits, int64_t T, int64_t E, int64_t K,
                                                        int norm_topk_prob, int ver, enum q3n_compute_dtype dt,
                                                        cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && T <= INT32_MAX && E > 0 && E <= 4096 && K > 0 && K <= 64 && K <= E);
    Q3N_REQUIRE(ver >= 0 && ver <= 4 && (ver < 2 || E <= WARP_ROUTER_MAX_E) && (ver != 4 || router4_ok(E, K)));
    if (T == 0) return Q3N_OK;
    return router_launch(d_probs, d_idx, d_weight, d_logits, T, E, K, norm_topk_prob, dt,
                         ver == 0 ? router_default(T, E, K) : ver, stream, err);
}

extern "C" enum q3n_status cuda_router_topk_forward(float *d_probs, int32_t *d_idx, float *d_weight,
                                                    const void *d_logits, int64_t T, int64_t E, int64_t K,
                                                    int norm_topk_prob, enum q3n_compute_dtype dt,
                                                    cudaStream_t stream, struct q3n_error *err)
{
    return cuda_router_topk_forward_ver(d_probs, d_idx, d_weight, d_logits, T, E, K, norm_topk_prob, 0, dt, stream,
                                        err);
}

