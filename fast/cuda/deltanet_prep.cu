/* deltanet_prep.cu — the Gated DeltaNet mixer's prefill passes around the delta rule, fused:
 * the prep (split + causal conv + SiLU + conv state + q/k L2 norms + v + gates) in one pass over
 * the in_proj outputs, and the gated RMSNorm reading z in place from the in_proj_qkvz output.
 *
 * Both are bitwise the chains of launches they replace (taps off only: the intermediate tensors
 * mixed, conv, z, a, b never exist here). Bitwise because each output element is computed by the
 * same float operations in the same order, with the same roundings:
 *   split_kernel        copies (no arithmetic); a, b read as float(T)
 *   conv1d_kernel       acc = 0; acc += w[c,j] * xx[t+j+1, c] for j = 0..K-1; y = T(silu(acc))
 *   conv_state_kernel   state[c,:] <- the last K rows of [state; x]
 *   l2norm_kernel       nt = 64 (n < 256) or 128 threads, thread i: ss_i = sum_{m} y[i + m nt]^2
 *                       (m increasing), block_sum (each warp's xor butterfly, then the warp
 *                       totals' butterfly), r = 1 / sqrtf(tot + eps), out = (y r) * scale (/ scale)
 *   cuda_to_f32         v = float(y)
 *   gates_kernel        deltanet_gates.cuh
 *   rmsnorm_gated_kernel  nt = 64 / 128 / 256 threads as norm_threads, r = 1 / sqrtf(tot / n + eps),
 *                       out = T(T(w T(x r)) * silu(z))
 * Here one warp does the work of one l2norm / gated-norm block: lane l holds the elements
 * l + 32 m, so the partial sum of the block's thread i = 32 v + l (v < nt / 32, "virtual warp" v)
 * is formed from that lane's own elements in the same order, each virtual warp is reduced by the
 * same xor butterfly, and the virtual warps' totals go through the same second butterfly. */
#include "common.cuh"
#include "deltanet_gates.cuh"

/* Default versions (1 or 2) of the prep and the gated norm. Both v2 (session 9) were checked bitwise
 * v1 on an H100 in session 10 (dev/test_dn_prep) and timed there (fast/cuda/dev/logs/session10_tests.log):
 *  - prep v2 (two tokens per warp) is slower: bf16 T = 4096 0.1165 -> 0.1245 ms, T = 16384 0.410 ->
 *    0.452 (its 64 registers allow 4 blocks per SM instead of 6): v1 stays the default;
 *  - gated norm v2 (two rows per warp) is faster in bf16: T = 4096 0.0695 -> 0.0629 ms, T = 16384
 *    0.259 -> 0.230; in f32 it is not (0.0720 -> 0.0740): the default is v2 for bf16, v1 for f32. */
#ifndef PREP_DEFAULT_VER /* EXTRA_NVCCFLAGS=-DPREP_DEFAULT_VER=2 builds v2 as the default */
#define PREP_DEFAULT_VER 1
#endif
#ifndef GATED_NORM_DEFAULT_VER /* the bf16 default; EXTRA_NVCCFLAGS=-DGATED_NORM_DEFAULT_VER=1 keeps v1 */
#define GATED_NORM_DEFAULT_VER 2
#endif

/* Tile sweep (session 11, H100, dev/test_dn_prep, bf16 T = 4096, v1; built with these defines
 * overridden): 64 tokens x 256 threads 0.120 ms, 32 x 256 0.127, 32 x 128 0.117, 16 x 128 0.126,
 * 128 x 256 0.132 (fast/cuda/dev/logs/session11_glue_dnprep.log). The tile does not matter: under
 * ncu the prep issues 0.79 instructions per cycle per scheduler with SM throughput at 76 % and DRAM
 * at 26 % (session11_glue_ncuglue_dn_prep_kernel.log): it is instruction-bound (~82 per element:
 * the conv taps' per-tap branches on a runtime K, expf and the IEEE division of SiLU, the norm's
 * two butterflies), not latency- or tile-bound. */
#define PREP_TT 64     /* tokens per prep block */
#define PREP_THREADS 256 /* 8 warps, one token at a time each */

/* ---- prep ----
 * Grid (token tile of PREP_TT, group): group b < NK = q head b, b < 2 NK = k head b - NK,
 * b < 2 NK + NV = v head b - 2 NK, b = 2 NK + NV = the gates of the tile. For a q/k/v head of n
 * channels (mixed channels cb .. cb + n - 1, in_proj_qkvz columns off .. off + n - 1 of group j):
 *   xs[p][c] = xx[t0 + p, cb + c] for p < PREP_TT + K - 1, xx = [state(K rows); x], i.e. token
 *              t0 - (K-1) + p, from the state for negative tokens (0 without state);
 *   y[t][c]  = T(silu(sum_{j<K} w[cb+c, j] xs[t - t0 + j][c]))                 (conv1d_kernel)
 *   q, k:    out[t, head, c] = O((y r) * scale) or O((y r) / scale), r = 1 / sqrtf(sum_c y^2 + eps)
 *   v:       out[t, head, c] = O(y)
 * O = float, or bf16 rounded to nearest (what the tensor-core delta rule stages from float).
 * Gates block: g[t, h] = dn_gate_g(a, A_log[h], dt_bias[h]), beta[t, h] = dn_gate_beta(b),
 * a / b from in_proj_ba's group h / r (b: r values, then a: r values).
 * Warp w of a q/k/v block handles tokens t0 + w, t0 + w + 8, ..., TPW of them at a time (v1: 1,
 * v2: 2; the same operations per token, so bitwise); NM = lanes' elements (n <= 32 NM), KC >= K
 * taps, both compile-time bounds of unrolled loops. EXACT (the caller has checked K == KC and
 * DK == DV == 32 NM, as at 80B-A3B: K 4, heads of 128) makes those the sizes themselves, so the conv
 * loses its per-tap tests on a runtime K and the channel tests and index arithmetic fold (the prep is
 * instruction-bound: see the tile sweep above); the same float operations in the same order. The
 * state is only read here (cuda_deltanet_prep_forward updates it in a second launch, after every
 * block read it). */
template <typename T, typename O, int NM, int KC, int TPW, bool EXACT>
__global__ void __launch_bounds__(PREP_THREADS) dn_prep_kernel(O *q, O *k, O *v, float *g, float *beta,
                                                               const float *state, const T *qkvz, const T *ba,
                                                               const float *cw, const float *A_log,
                                                               const float *dt_bias, int Tn, int NK, int NV, int DK,
                                                               int DV, int K, float eps, float qscale, int qdivide,
                                                               int vec)
{
    if (EXACT) K = KC, DK = DV = 32 * NM; /* what the caller checked, now known to the compiler */
    extern __shared__ __align__(16) float xs[]; /* [PREP_TT + K - 1][n] */
    const int r = NV / NK, GS = 2 * DK + 2 * r * DV, Q = NK * GS;
    const int t0 = blockIdx.x * PREP_TT, b = blockIdx.y, tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int nt = Tn - t0 < PREP_TT ? Tn - t0 : PREP_TT; /* tokens of this tile */
    if (b == 2 * NK + NV) {
        for (int i = tid; i < nt * NV; i += PREP_THREADS) {
            const int tt = i / NV, h = i - tt * NV;
            const size_t o = (size_t)(t0 + tt) * NV + h;
            const T *gr = ba + (size_t)(t0 + tt) * 2 * NV + (h / r) * 2 * r;
            g[o] = dn_gate_g(ld(gr + r + h % r), A_log[h], dt_bias[h]);
            beta[o] = dn_gate_beta(ld(gr + h % r), ba);
        }
        return;
    }
    int n, cb, off;
    O *out;
    size_t ostride;
    if (b < NK) {
        n = DK, cb = b * DK, off = b * GS, out = q + (size_t)b * DK, ostride = (size_t)NK * DK;
    } else if (b < 2 * NK) {
        n = DK, cb = NK * DK + (b - NK) * DK, off = (b - NK) * GS + DK, out = k + (size_t)(b - NK) * DK;
        ostride = (size_t)NK * DK;
    } else {
        const int h = b - 2 * NK;
        n = DV, cb = 2 * NK * DK + h * DV, off = (h / r) * GS + 2 * DK + (h % r) * DV, out = v + (size_t)h * DV;
        ostride = (size_t)NV * DV;
    }
    /* stage xs: rows of tokens >= 0 from in_proj_qkvz (16-byte vectors when vec), then the state rows */
    const int rows = nt + K - 1;
    if (vec) {
        constexpr int VE = 16 / sizeof(T);
        const int nv = n / VE, total = rows * nv;
        for (int f0 = 0; f0 < total; f0 += 4 * PREP_THREADS) {
            uint4 x[4];
            int p[4], c[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int f = f0 + tid + u * PREP_THREADS;
                p[u] = f / nv, c[u] = (f - p[u] * nv) * VE;
                const int t = t0 - (K - 1) + p[u];
                if (f < total && t >= 0)
                    x[u] = *reinterpret_cast<const uint4 *>(qkvz + (size_t)t * Q + off + c[u]);
                else
                    p[u] = -1;
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
                if (p[u] < 0) continue;
                const T *e = reinterpret_cast<const T *>(&x[u]);
                float4 *d = reinterpret_cast<float4 *>(xs + p[u] * n + c[u]);
#pragma unroll
                for (int i = 0; i < VE / 4; i++)
                    d[i] = make_float4(ld(e + 4 * i), ld(e + 4 * i + 1), ld(e + 4 * i + 2), ld(e + 4 * i + 3));
            }
        }
    } else {
        for (int f = tid; f < rows * n; f += PREP_THREADS) {
            const int p = f / n, c = f - p * n, t = t0 - (K - 1) + p;
            if (t >= 0) xs[f] = ld(qkvz + (size_t)t * Q + off + c);
        }
    }
    if (t0 < K - 1)
        for (int f = tid; f < (K - 1) * n; f += PREP_THREADS) {
            const int p = f / n, c = f - p * n, t = t0 - (K - 1) + p;
            if (t < 0) xs[f] = state ? state[(size_t)(cb + c) * K + K + t] : 0.0f;
        }
    float wr[NM][KC];
#pragma unroll
    for (int m = 0; m < NM; m++)
#pragma unroll
        for (int j = 0; j < KC; j++) wr[m][j] = lane + 32 * m < n && j < K ? cw[(size_t)(cb + lane + 32 * m) * K + j] : 0.0f;
    __syncthreads();
    const int isqk = b < 2 * NK, divide = b < NK && qdivide;
    const float scale = b < NK ? qscale : 1.0f;
#pragma unroll 1
    for (int tt0 = w; tt0 < nt; tt0 += TPW * (PREP_THREADS / 32)) {
        /* TPW tokens tt0 + 8 u at once: every token's conv first, then the norms (independent
         * chains for the scheduler to interleave); tt is warp-uniform, so the shuffles stay whole */
        float y[TPW][NM];
#pragma unroll
        for (int u = 0; u < TPW; u++) {
            const int tt = tt0 + u * (PREP_THREADS / 32);
#pragma unroll
            for (int m = 0; m < NM; m++) {
                const int c = lane + 32 * m;
                float acc = 0.0f;
                if (c < n && tt < nt) {
#pragma unroll
                    for (int j = 0; j < KC; j++)
                        if (j < K) acc += wr[m][j] * xs[(tt + j) * n + c];
                }
                y[u][m] = rnd(silu_f(acc), qkvz);
            }
        }
#pragma unroll
        for (int u = 0; u < TPW; u++) {
            const int tt = tt0 + u * (PREP_THREADS / 32);
            if (tt >= nt) break;
            O *orow = out + (size_t)(t0 + tt) * ostride;
            if (isqk) {
                const float tot =
                    n >= 256 ? warp_block_sum_sq<4, NM>(y[u], n, lane) : warp_block_sum_sq<2, NM>(y[u], n, lane);
                const float rr = 1.0f / sqrtf(tot + eps);
#pragma unroll
                for (int m = 0; m < NM; m++) {
                    const int c = lane + 32 * m;
                    if (c < n) {
                        const float yy = y[u][m] * rr;
                        st(orow + c, divide ? yy / scale : yy * scale);
                    }
                }
            } else {
#pragma unroll
                for (int m = 0; m < NM; m++)
                    if (lane + 32 * m < n) st(orow + lane + 32 * m, y[u][m]);
            }
        }
    }
}

/* state[c, :] <- the last K rows of [state; x] for mixed channel c (conv_state_kernel, with x read
 * from in_proj_qkvz's head-grouped columns). One thread per channel reads its K values before
 * writing any. */
template <typename T>
__global__ void dn_conv_state_kernel(float *state, const T *qkvz, int Tn, int NK, int NV, int DK, int DV, int K)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x, r = NV / NK, GS = 2 * DK + 2 * r * DV, Q = NK * GS;
    if (c >= 2 * NK * DK + NV * DV) return;
    int col;
    if (c < NK * DK) {
        col = (c / DK) * GS + c % DK;
    } else if (c < 2 * NK * DK) {
        const int c2 = c - NK * DK;
        col = (c2 / DK) * GS + DK + c2 % DK;
    } else {
        const int c2 = c - 2 * NK * DK, h = c2 / DV;
        col = (h / r) * GS + 2 * DK + (h % r) * DV + c2 % DV;
    }
    float x[16];
    for (int j = 0; j < K; j++) {
        const int rr = Tn + j; /* row of xx = [state; x] */
        x[j] = rr < K ? state[(size_t)c * K + rr] : ld(qkvz + (size_t)(rr - K) * Q + col);
    }
    for (int j = 0; j < K; j++) state[(size_t)c * K + j] = x[j];
}

extern "C" int cuda_deltanet_prep_supported(int64_t NK, int64_t NV, int64_t DK, int64_t DV, int64_t K)
{
    return NK > 0 && NV % NK == 0 && DK > 0 && DK <= 256 && DV > 0 && DV <= 256 && K > 0 && K <= 8 &&
           2 * NK + NV + 1 <= 65535;
}

template <typename A, typename O, int NM, int KC, int TPW, bool EXACT = false>
static enum q3n_status prep_launch(void *d_q, void *d_k, void *d_v, float *d_g, float *d_beta, const float *d_state,
                                   const void *d_qkvz, const void *d_ba, const float *d_w, const float *d_A_log,
                                   const float *d_dt_bias, int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV,
                                   int64_t K, float eps, float qscale, int qdivide, cudaStream_t stream,
                                   struct q3n_error *err)
{
    const int64_t n = DK > DV ? DK : DV, Q = NK * (2 * DK + 2 * (NV / NK) * DV);
    const int ve = 16 / (int)sizeof(A);
    const int vec = Q % ve == 0 && DK % ve == 0 && DV % ve == 0 && ((uintptr_t)d_qkvz & 15) == 0;
    const size_t smem = sizeof(float) * (size_t)((PREP_TT + K - 1) * n);
    auto kern = dn_prep_kernel<A, O, NM, KC, TPW, EXACT>;
    CU_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    kern<<<dim3(cdiv(T, PREP_TT), (unsigned)(2 * NK + NV + 1)), PREP_THREADS, smem, stream>>>(
        (O *)d_q, (O *)d_k, (O *)d_v, d_g, d_beta, d_state, (const A *)d_qkvz, (const A *)d_ba, d_w, d_A_log, d_dt_bias,
        (int)T, (int)NK, (int)NV, (int)DK, (int)DV, (int)K, eps, qscale, qdivide, vec);
    CU_LAUNCHED("deltanet dn_prep_kernel");
    return Q3N_OK;
}

static int prep_v2_applies(int64_t DK, int64_t DV, int64_t K)
{
    return DK <= 128 && DV <= 128 && K <= 4;
}
extern "C" int cuda_deltanet_prep_ver_for(int64_t DK, int64_t DV, int64_t K)
{
    return PREP_DEFAULT_VER == 2 && prep_v2_applies(DK, DV, K) ? 2 : 1;
}
extern "C" int cuda_deltanet_gated_norm_ver_for(enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 ? GATED_NORM_DEFAULT_VER : 1;
}

/* ver: 0 PREP_DEFAULT_VER, 1 a token per warp at a time, 2 two where n <= 128 and K <= 4; wider
 * rows always run 1 (NM = KC = 8 holds 64 conv weights per lane already) */
template <typename A, typename O>
static enum q3n_status prep_pick(void *d_q, void *d_k, void *d_v, float *d_g, float *d_beta, const float *d_state,
                                 const void *d_qkvz, const void *d_ba, const float *d_w, const float *d_A_log,
                                 const float *d_dt_bias, int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV,
                                 int64_t K, float eps, float qscale, int qdivide, int ver, cudaStream_t stream,
                                 struct q3n_error *err)
{
    if (ver == 0) ver = PREP_DEFAULT_VER;
    if (prep_v2_applies(DK, DV, K)) {
        if (K == 4 && DK == 128 && DV == 128) { /* 80B-A3B's shape: the EXACT instances */
            if (ver == 1)
                return prep_launch<A, O, 4, 4, 1, true>(d_q, d_k, d_v, d_g, d_beta, d_state, d_qkvz, d_ba, d_w,
                                                        d_A_log, d_dt_bias, T, NK, NV, DK, DV, K, eps, qscale,
                                                        qdivide, stream, err);
            return prep_launch<A, O, 4, 4, 2, true>(d_q, d_k, d_v, d_g, d_beta, d_state, d_qkvz, d_ba, d_w, d_A_log,
                                                    d_dt_bias, T, NK, NV, DK, DV, K, eps, qscale, qdivide, stream,
                                                    err);
        }
        if (ver == 1)
            return prep_launch<A, O, 4, 4, 1>(d_q, d_k, d_v, d_g, d_beta, d_state, d_qkvz, d_ba, d_w, d_A_log,
                                              d_dt_bias, T, NK, NV, DK, DV, K, eps, qscale, qdivide, stream, err);
        return prep_launch<A, O, 4, 4, 2>(d_q, d_k, d_v, d_g, d_beta, d_state, d_qkvz, d_ba, d_w, d_A_log, d_dt_bias,
                                          T, NK, NV, DK, DV, K, eps, qscale, qdivide, stream, err);
    }
    return prep_launch<A, O, 8, 8, 1>(d_q, d_k, d_v, d_g, d_beta, d_state, d_qkvz, d_ba, d_w, d_A_log, d_dt_bias, T,
                                      NK, NV, DK, DV, K, eps, qscale, qdivide, stream, err);
}

extern "C" enum q3n_status cuda_deltanet_prep_forward_ver(void *d_q, void *d_k, void *d_v, float *d_g,
                                                          float *d_beta, float *d_state, const void *d_qkvz,
                                                          const void *d_ba, const float *d_w, const float *d_A_log,
                                                          const float *d_dt_bias, int64_t T, int64_t NK, int64_t NV,
                                                          int64_t DK, int64_t DV, int64_t K, double eps, float qscale,
                                                          int qdivide, int qkv_bf16, int ver,
                                                          enum q3n_compute_dtype dt, cudaStream_t stream,
                                                          struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && d_state != NULL && ver >= 0 && ver <= 2);
    if (!cuda_deltanet_prep_supported(NK, NV, DK, DV, K))
        return q3n_error_set(err, Q3N_ERR_UNSUPPORTED,
                             "cuda deltanet prep: needs NV %% NK == 0, DK, DV <= 256, K <= 8 (got NK=%lld NV=%lld "
                             "DK=%lld DV=%lld K=%lld)",
                             (long long)NK, (long long)NV, (long long)DK, (long long)DV, (long long)K);
    if (qkv_bf16 && dt != Q3N_COMPUTE_BF16)
        return q3n_error_set(err, Q3N_ERR_USAGE, "cuda deltanet prep: bf16 q/k/v only in bf16 mode");
    if (T == 0) return Q3N_OK;
    const int64_t Q = NK * (2 * DK + 2 * (NV / NK) * DV), Cc = 2 * NK * DK + NV * DV;
    Q3N_REQUIRE(T * Q <= INT64_MAX / 4 && T <= INT32_MAX - PREP_TT && Q <= INT32_MAX / 2 && Cc * K <= INT32_MAX);
    const float feps = (float)eps;
    if (dt == Q3N_COMPUTE_BF16 && qkv_bf16)
        Q3N_TRY((prep_pick<bf16, bf16>(d_q, d_k, d_v, d_g, d_beta, d_state, d_qkvz, d_ba, d_w, d_A_log, d_dt_bias, T, NK,
                                       NV, DK, DV, K, feps, qscale, qdivide, ver, stream, err)));
    else if (dt == Q3N_COMPUTE_BF16)
        Q3N_TRY((prep_pick<bf16, float>(d_q, d_k, d_v, d_g, d_beta, d_state, d_qkvz, d_ba, d_w, d_A_log, d_dt_bias, T,
                                        NK, NV, DK, DV, K, feps, qscale, qdivide, ver, stream, err)));
    else
        Q3N_TRY((prep_pick<float, float>(d_q, d_k, d_v, d_g, d_beta, d_state, d_qkvz, d_ba, d_w, d_A_log, d_dt_bias, T,
                                         NK, NV, DK, DV, K, feps, qscale, qdivide, ver, stream, err)));
    /* the state update after every prep block has read the old state (stream order) */
    if (dt == Q3N_COMPUTE_BF16)
        dn_conv_state_kernel<<<cdiv(Cc, 256), 256, 0, stream>>>(d_state, (const bf16 *)d_qkvz, (int)T, (int)NK,
                                                                (int)NV, (int)DK, (int)DV, (int)K);
    else
        dn_conv_state_kernel<<<cdiv(Cc, 256), 256, 0, stream>>>(d_state, (const float *)d_qkvz, (int)T, (int)NK,
                                                                (int)NV, (int)DK, (int)DV, (int)K);
    CU_LAUNCHED("deltanet dn_conv_state_kernel");
    return Q3N_OK;
}

extern "C" enum q3n_status cuda_deltanet_prep_forward(void *d_q, void *d_k, void *d_v, float *d_g, float *d_beta,
                                                      float *d_state, const void *d_qkvz, const void *d_ba,
                                                      const float *d_w, const float *d_A_log, const float *d_dt_bias,
                                                      int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV,
                                                      int64_t K, double eps, float qscale, int qdivide, int qkv_bf16,
                                                      enum q3n_compute_dtype dt, cudaStream_t stream,
                                                      struct q3n_error *err)
{
    return cuda_deltanet_prep_forward_ver(d_q, d_k, d_v, d_g, d_beta, d_state, d_qkvz, d_ba, d_w, d_A_log, d_dt_bias, T,
                                          NK, NV, DK, DV, K, eps, qscale, qdivide, qkv_bf16, 0, dt, stream, err);
}

/* ---- gated RMSNorm with z in place ----
 * out[t, h, :] = T(T(w * T(x r)) * silu(z)), r = 1 / sqrtf(sum x^2 / DV + eps), x = core[t, h, :],
 * z = in_proj_qkvz[t, (h / r) GS + 2 DK + r DV + (h % r) DV + :] (what split_kernel copies to z).
 * One warp per row (t, h), 8 rows per block; the sum as rmsnorm_gated_kernel's block of
 * norm_threads(DV) threads (64 below 256, 128 below 1024). */
/* EXACT (the caller has checked NK = 16, NV = 32, DK = DV = 128: 80B-A3B's heads): the sizes become
 * compile-time constants, so the row's (t, h) split and z's column are shifts instead of integer
 * divisions and the channel tests fold; the same float operations (the prep's EXACT, session 11). */
template <bool EXACT, int NM>
__device__ __forceinline__ void gated_norm_fix(int &NK, int &NV, int &DK, int &DV)
{
    static_assert(!EXACT || NM == 4, "EXACT rows are 128 wide: 4 per lane");
    if (EXACT) NK = 16, NV = 32, DK = 128, DV = 128;
}
template <typename T, int NM, bool EXACT>
__global__ void __launch_bounds__(256) dn_gated_norm_kernel(T *__restrict__ out, const T *__restrict__ x,
                                                            const T *__restrict__ qkvz, const float *__restrict__ w,
                                                            int rows, int NK, int NV, int DK, int DV, float eps)
{
    gated_norm_fix<EXACT, NM>(NK, NV, DK, DV);
    const int row = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const int r = NV / NK, GS = 2 * DK + 2 * r * DV, t = row / NV, h = row - t * NV;
    const T *xr = x + (size_t)row * DV;
    const T *zr = qkvz + (size_t)t * NK * GS + (h / r) * GS + 2 * DK + r * DV + (h % r) * DV;
    /* x, z and w all loaded before the sum: one memory round trip per row, not one per store */
    float xv[NM], zv[NM], wv[NM];
#pragma unroll
    for (int m = 0; m < NM; m++) {
        const int c = lane + 32 * m;
        xv[m] = c < DV ? ld(xr + c) : 0.0f;
        zv[m] = c < DV ? ld(zr + c) : 0.0f;
        wv[m] = c < DV ? w[c] : 0.0f;
    }
    const float tot = DV >= 256 ? warp_block_sum_sq<4, NM>(xv, DV, lane) : warp_block_sum_sq<2, NM>(xv, DV, lane);
    const float rr = 1.0f / sqrtf(tot / (float)DV + eps);
    T *orow = out + (size_t)row * DV;
#pragma unroll
    for (int m = 0; m < NM; m++) {
        const int c = lane + 32 * m;
        if (c < DV) {
            const float a = rnd(xv[m] * rr, out);
            const float bb = rnd(wv[m] * a, out);
            st(orow + c, bb * silu_f(zv[m]));
        }
    }
}

/* v2 (dn_gated_norm2_kernel): RPW = 2 rows (t, h) per warp, both rows' x, z and w loaded before
 * either sum, so a warp has two independent chains to interleave: v1 takes the same 0.069 ms at
 * T = 4096 in float32 and bf16 (session 8), so latency and issue, not bytes, bound it. Each row's
 * operations and their order are v1's: bitwise. GATED_NORM_DEFAULT_VER says which runs by default. */
template <typename T, int NM, int RPW, bool EXACT>
__global__ void __launch_bounds__(256) dn_gated_norm2_kernel(T *__restrict__ out, const T *__restrict__ x,
                                                             const T *__restrict__ qkvz, const float *__restrict__ w,
                                                             int rows, int NK, int NV, int DK, int DV, float eps)
{
    gated_norm_fix<EXACT, NM>(NK, NV, DK, DV);
    const int row0 = (blockIdx.x * 8 + (threadIdx.x >> 5)) * RPW, lane = threadIdx.x & 31;
    if (row0 >= rows) return;
    const int r = NV / NK, GS = 2 * DK + 2 * r * DV;
    /* x, z and w of every row loaded before any sum: one memory round trip per warp */
    float xv[RPW][NM], zv[RPW][NM], wv[NM];
#pragma unroll
    for (int m = 0; m < NM; m++) {
        const int c = lane + 32 * m;
        wv[m] = c < DV ? w[c] : 0.0f;
    }
#pragma unroll
    for (int q = 0; q < RPW; q++) {
        const int row = row0 + q < rows ? row0 + q : row0; /* past the end: a harmless reload of row0 */
        const int t = row / NV, h = row - t * NV;
        const T *xr = x + (size_t)row * DV;
        const T *zr = qkvz + (size_t)t * NK * GS + (h / r) * GS + 2 * DK + r * DV + (h % r) * DV;
#pragma unroll
        for (int m = 0; m < NM; m++) {
            const int c = lane + 32 * m;
            xv[q][m] = c < DV ? ld(xr + c) : 0.0f;
            zv[q][m] = c < DV ? ld(zr + c) : 0.0f;
        }
    }
#pragma unroll
    for (int q = 0; q < RPW; q++) {
        if (row0 + q >= rows) break;
        const float tot =
            DV >= 256 ? warp_block_sum_sq<4, NM>(xv[q], DV, lane) : warp_block_sum_sq<2, NM>(xv[q], DV, lane);
        const float rr = 1.0f / sqrtf(tot / (float)DV + eps);
        T *orow = out + (size_t)(row0 + q) * DV;
#pragma unroll
        for (int m = 0; m < NM; m++) {
            const int c = lane + 32 * m;
            if (c < DV) {
                const float a = rnd(xv[q][m] * rr, out);
                const float bb = rnd(wv[m] * a, out);
                st(orow + c, bb * silu_f(zv[q][m]));
            }
        }
    }
}

template <typename T, int NM, int RPW, bool EXACT>
static void gated_norm_launch_nm(unsigned grid, void *d_out, const void *d_x, const void *d_qkvz, const float *d_w,
                                 int64_t rows, int64_t NK, int64_t NV, int64_t DK, int64_t DV, float eps,
                                 cudaStream_t stream)
{
    if constexpr (RPW == 1) /* v1 */
        dn_gated_norm_kernel<T, NM, EXACT><<<grid, 256, 0, stream>>>((T *)d_out, (const T *)d_x, (const T *)d_qkvz,
                                                                     d_w, (int)rows, (int)NK, (int)NV, (int)DK,
                                                                     (int)DV, eps);
    else
        dn_gated_norm2_kernel<T, NM, RPW, EXACT><<<grid, 256, 0, stream>>>((T *)d_out, (const T *)d_x,
                                                                           (const T *)d_qkvz, d_w, (int)rows,
                                                                           (int)NK, (int)NV, (int)DK, (int)DV, eps);
}
template <typename T, int RPW>
static void gated_norm_launch(void *d_out, const void *d_x, const void *d_qkvz, const float *d_w, int64_t rows,
                              int64_t NK, int64_t NV, int64_t DK, int64_t DV, float eps, cudaStream_t stream)
{
    const unsigned grid = cdiv(rows, 8 * RPW);
    if (NK == 16 && NV == 32 && DK == 128 && DV == 128) /* 80B-A3B's heads: the EXACT instance */
        gated_norm_launch_nm<T, 4, RPW, true>(grid, d_out, d_x, d_qkvz, d_w, rows, NK, NV, DK, DV, eps, stream);
    else if (DV <= 128)
        gated_norm_launch_nm<T, 4, RPW, false>(grid, d_out, d_x, d_qkvz, d_w, rows, NK, NV, DK, DV, eps, stream);
    else
        gated_norm_launch_nm<T, 8, RPW, false>(grid, d_out, d_x, d_qkvz, d_w, rows, NK, NV, DK, DV, eps, stream);
}

extern "C" enum q3n_status cuda_deltanet_gated_norm_forward_ver(void *d_out, const void *d_x, const void *d_qkvz,
                                                                const float *d_w, int64_t T, int64_t NK, int64_t NV,
                                                                int64_t DK, int64_t DV, double eps, int ver,
                                                                enum q3n_compute_dtype dt, cudaStream_t stream,
                                                                struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && NK > 0 && NV % NK == 0 && DK > 0 && DV > 0 && DV <= 256 && ver >= 0 && ver <= 2);
    const int64_t rows = T * NV;
    Q3N_REQUIRE(rows <= INT32_MAX - 16 && T * NK * (2 * DK + 2 * (NV / NK) * DV) <= INT64_MAX / 4);
    if (rows == 0) return Q3N_OK;
    if (ver == 0) ver = cuda_deltanet_gated_norm_ver_for(dt);
    if (dt == Q3N_COMPUTE_BF16)
        (ver == 2 ? gated_norm_launch<bf16, 2> : gated_norm_launch<bf16, 1>)(d_out, d_x, d_qkvz, d_w, rows, NK, NV, DK,
                                                                             DV, (float)eps, stream);
    else
        (ver == 2 ? gated_norm_launch<float, 2> : gated_norm_launch<float, 1>)(d_out, d_x, d_qkvz, d_w, rows, NK, NV,
                                                                               DK, DV, (float)eps, stream);
    CU_LAUNCHED("deltanet dn_gated_norm_kernel");
    return Q3N_OK;
}

extern "C" enum q3n_status cuda_deltanet_gated_norm_forward(void *d_out, const void *d_x, const void *d_qkvz,
                                                            const float *d_w, int64_t T, int64_t NK, int64_t NV,
                                                            int64_t DK, int64_t DV, double eps,
                                                            enum q3n_compute_dtype dt, cudaStream_t stream,
                                                            struct q3n_error *err)
{
    return cuda_deltanet_gated_norm_forward_ver(d_out, d_x, d_qkvz, d_w, T, NK, NV, DK, DV, eps, 0, dt, stream, err);
}
