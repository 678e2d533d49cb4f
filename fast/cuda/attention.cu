/* attention.cu — gated full attention: q/k norm + partial RoPE + cache write, causal GQA
 * softmax attention, and the sigmoid output gate (cuda twins of ref/attention.c).
 *
 * Attention kernels; cuda_attention_kernel() names the one that runs:
 *  - flash_mma_bf16_v3 (bf16, T > 1, HD % 8 == 0, HD <= 256): 128 queries per block (8 warps of 16
 *    rows), cp.async double-buffered 64-key K/V tiles, ldmatrix fragments, mma.sync m16n8k16 with
 *    float32 accumulators, base-2 online softmax in float32, causal tile skipping per warp.
 *  - flash_mma_bf16_v2 (other bf16 shapes with T > 1, and cuda_attention_forward_ver(old = 1)):
 *    FlashAttention-2 style, 64 queries per block, 64-key tiles loaded synchronously, V fragments by
 *    ldmatrix.trans. HD padded to 64/128/256.
 *  - decode_split_bf16_v3 (bf16 T = 1, HD 128 or 256): split-K over 128-key blocks sharing each K/V
 *    row between the query heads of a KV group, combine kernel in split order.
 *  - rows_v1 (f32 mode, other bf16 decode shapes, old = 1): one block per (query, head, key split),
 *    warp-per-key dot products, online softmax in float32; decode splits the keys over blocks and a
 *    combine kernel merges the partial (max, sum, acc) in split order.
 * All deterministic (no atomics). The *_dpos launchers read the decode position on the device (one
 * CUDA graph serves every step) and run the same kernels as the pos0 launchers. */
#include "common.cuh"

/* ---- q/k norm + partial RoPE + cache write ---- */
template <typename T>
__global__ void qk_prep_kernel(T *qo, T *qn, T *kc, T *vc, T *kn, const T *qg, const T *k, const T *v,
                               const float *qw, const float *kw, int64_t pos0, const int64_t *dpos, int64_t NH,
                               int64_t NKV, int64_t HD, int64_t rot, float theta, float eps)
{
    if (dpos) pos0 = *dpos; /* graph decode: the position lives on the device */
    extern __shared__ float xs[]; /* [HD] normed row */
    __shared__ float red[32];
    const int64_t t = blockIdx.x / (NH + NKV), slot = blockIdx.x % (NH + NKV);
    const int isq = slot < NH;
    const int64_t hh = isq ? slot : slot - NH;
    const T *src = isq ? qg + (t * NH + hh) * 2 * HD : k + (t * NKV + hh) * HD;
    const float *w = isq ? qw : kw;
    float ss = 0.0f;
    for (int64_t d = threadIdx.x; d < HD; d += blockDim.x) {
        const float x = ld(src + d);
        ss += x * x;
    }
    const float tot = block_sum(ss, red);
    const float r = 1.0f / sqrtf(tot / (float)HD + eps);
    T *nout = isq ? (qn ? qn + (t * NH + hh) * HD : nullptr) : (kn ? kn + (t * NKV + hh) * HD : nullptr);
    for (int64_t d = threadIdx.x; d < HD; d += blockDim.x) {
        const float y = rnd(ld(src + d) * r * (1.0f + w[d]), src);
        xs[d] = y;
        if (nout) st(nout + d, y);
    }
    __syncthreads();
    const int64_t pos = pos0 + t, half = rot / 2;
    T *dst = isq ? qo + (t * NH + hh) * HD : kc + (pos * NKV + hh) * HD;
    for (int64_t d = threadIdx.x; d < HD; d += blockDim.x) {
        float y = xs[d];
        if (d < rot) {
            const int64_t i = d % half;
            const float inv = 1.0f / powf(theta, (float)(2 * i) / (float)rot);
            const float ang = (float)pos * inv;
            const float c = rnd(cosf(ang), src), s = rnd(sinf(ang), src);
            const float rh = d < half ? -xs[d + half] : xs[d - half];
            y = rnd(rnd(y * c, src) + rnd(rh * s, src), src);
        }
        st(dst + d, y);
    }
    if (!isq)
        for (int64_t d = threadIdx.x; d < HD; d += blockDim.x)
            vc[(pos * NKV + hh) * HD + d] = v[(t * NKV + hh) * HD + d];
}

/* d_pos NULL: positions pos0..; else one token (T = 1) at position *d_pos. */
static enum q3n_status qk_prep_launch(void *d_q, void *d_qn, void *d_kc, void *d_vc, void *d_kn, const void *d_qg,
                                      const void *d_k, const void *d_v, const float *d_qnorm_w,
                                      const float *d_knorm_w, int64_t T, int64_t pos0, const int64_t *d_pos,
                                      int64_t NH, int64_t NKV, int64_t HD, int64_t rot, double theta, double eps,
                                      enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && pos0 >= 0 && NH > 0 && NKV > 0 && NH % NKV == 0 && HD > 0 && rot >= 0 && rot <= HD);
    Q3N_REQUIRE(rot % 2 == 0 && T * (NH + NKV) <= INT32_MAX);
    if (T == 0) return Q3N_OK;
    const unsigned grid = (unsigned)(T * (NH + NKV));
    const size_t smem = sizeof(float) * (size_t)HD;
    if (dt == Q3N_COMPUTE_BF16)
        qk_prep_kernel<<<grid, 128, smem, stream>>>((bf16 *)d_q, (bf16 *)d_qn, (bf16 *)d_kc, (bf16 *)d_vc,
                                                   (bf16 *)d_kn, (const bf16 *)d_qg, (const bf16 *)d_k,
                                                   (const bf16 *)d_v, d_qnorm_w, d_knorm_w, pos0, d_pos, NH, NKV, HD, rot,
                                                   (float)theta, (float)eps);
    else
        qk_prep_kernel<<<grid, 128, smem, stream>>>((float *)d_q, (float *)d_qn, (float *)d_kc, (float *)d_vc,
                                                   (float *)d_kn, (const float *)d_qg, (const float *)d_k,
                                                   (const float *)d_v, d_qnorm_w, d_knorm_w, pos0, d_pos, NH, NKV, HD, rot,
                                                   (float)theta, (float)eps);
    CU_LAUNCHED("attention qk_prep_kernel");
    return Q3N_OK;
}

extern "C" enum q3n_status cuda_attn_qk_prep(void *d_q, void *d_qn, void *d_kc, void *d_vc, void *d_kn,
                                             const void *d_qg, const void *d_k, const void *d_v,
                                             const float *d_qnorm_w, const float *d_knorm_w, int64_t T, int64_t pos0,
                                             int64_t NH, int64_t NKV, int64_t HD, int64_t rot, double theta,
                                             double eps, enum q3n_compute_dtype dt, cudaStream_t stream,
                                             struct q3n_error *err)
{
    return qk_prep_launch(d_q, d_qn, d_kc, d_vc, d_kn, d_qg, d_k, d_v, d_qnorm_w, d_knorm_w, T, pos0, NULL, NH, NKV,
                          HD, rot, theta, eps, dt, stream, err);
}

extern "C" enum q3n_status cuda_attn_qk_prep_dpos(void *d_q, void *d_qn, void *d_kc, void *d_vc, void *d_kn,
                                                  const void *d_qg, const void *d_k, const void *d_v,
                                                  const float *d_qnorm_w, const float *d_knorm_w,
                                                  const int64_t *d_pos, int64_t NH, int64_t NKV, int64_t HD,
                                                  int64_t rot, double theta, double eps, enum q3n_compute_dtype dt,
                                                  cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(d_pos != NULL);
    return qk_prep_launch(d_q, d_qn, d_kc, d_vc, d_kn, d_qg, d_k, d_v, d_qnorm_w, d_knorm_w, 1, 0, d_pos, NH, NKV,
                          HD, rot, theta, eps, dt, stream, err);
}

/* ---- rows_v1 ---- */
#define ROWS_TILE 32
#define ROWS_SPLIT 256
#define ROWS_MAXD 4 /* HD <= 4 * 128 */

template <typename T>
__global__ void __launch_bounds__(128) attn_rows_kernel(T *out, float *part, const T *q, const T *kc, const T *vc,
                                                        int64_t pos0, const int64_t *dpos, int64_t NH,
                                                        int64_t NKV, int64_t HD, float scale, int64_t L)
{
    if (dpos) pos0 = *dpos; /* graph decode; splits past the position find no keys (l = 0) */
    extern __shared__ float qs[]; /* [HD] */
    __shared__ float sc[ROWS_TILE];
    const int64_t row = blockIdx.x, t = row / NH, h = row % NH, kh = h / (NH / NKV);
    const int64_t sp = blockIdx.y, nsplit = gridDim.y;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int64_t d = threadIdx.x; d < HD; d += blockDim.x) qs[d] = ld(q + row * HD + d);
    const int64_t last = pos0 + t; /* keys 0..last */
    const int64_t s0 = sp * L, s1 = (sp + 1) * L - 1 < last ? (sp + 1) * L - 1 : last;
    float m = -INFINITY, l = 0.0f, acc[ROWS_MAXD];
    for (int i = 0; i < ROWS_MAXD; i++) acc[i] = 0.0f;
    __syncthreads();
    for (int64_t tb = s0; tb <= s1; tb += ROWS_TILE) {
        const int64_t nk = s1 - tb + 1 < ROWS_TILE ? s1 - tb + 1 : ROWS_TILE;
        for (int64_t j = w; j < nk; j += 4) {
            const T *kr = kc + ((tb + j) * NKV + kh) * HD;
            float p = 0.0f;
            for (int64_t d = lane; d < HD; d += 32) p += qs[d] * ld(kr + d);
            for (int o = 16; o > 0; o >>= 1) p += __shfl_xor_sync(0xffffffffu, p, o);
            if (lane == 0) sc[j] = rnd(rnd(p, q) * scale, q);
        }
        __syncthreads();
        float mt = m;
        for (int64_t j = 0; j < nk; j++) mt = fmaxf(mt, sc[j]);
        const float alpha = expf(m - mt);
        l *= alpha;
        for (int i = 0; i < ROWS_MAXD; i++) acc[i] *= alpha;
        for (int64_t j = 0; j < nk; j++) {
            const float p = expf(sc[j] - mt);
            l += p;
            const T *vr = vc + ((tb + j) * NKV + kh) * HD;
            for (int i = 0; i < ROWS_MAXD; i++) {
                const int64_t d = threadIdx.x + 128 * i;
                if (d < HD) acc[i] += p * ld(vr + d);
            }
        }
        m = mt;
        __syncthreads();
    }
    if (nsplit == 1) {
        for (int i = 0; i < ROWS_MAXD; i++) {
            const int64_t d = threadIdx.x + 128 * i;
            if (d < HD) st(out + row * HD + d, acc[i] / l);
        }
    } else {
        float *pp = part + (row * nsplit + sp) * (HD + 2);
        if (threadIdx.x == 0) {
            pp[0] = m;
            pp[1] = l;
        }
        for (int i = 0; i < ROWS_MAXD; i++) {
            const int64_t d = threadIdx.x + 128 * i;
            if (d < HD) pp[2 + d] = acc[i];
        }
    }
}

template <typename T>
__global__ void attn_combine_kernel(T *out, const float *part, int64_t HD, int64_t nsplit)
{
    const int64_t row = blockIdx.x;
    const float *pr = part + row * nsplit * (HD + 2);
    float M = -INFINITY;
    for (int64_t s = 0; s < nsplit; s++)
        if (pr[s * (HD + 2) + 1] > 0.0f) M = fmaxf(M, pr[s * (HD + 2)]);
    float L = 0.0f;
    for (int64_t s = 0; s < nsplit; s++)
        if (pr[s * (HD + 2) + 1] > 0.0f) L += pr[s * (HD + 2) + 1] * expf(pr[s * (HD + 2)] - M);
    for (int64_t d = threadIdx.x; d < HD; d += blockDim.x) {
        float a = 0.0f;
        for (int64_t s = 0; s < nsplit; s++)
            if (pr[s * (HD + 2) + 1] > 0.0f) a += pr[s * (HD + 2) + 2 + d] * expf(pr[s * (HD + 2)] - M);
        st(out + row * HD + d, a / L);
    }
}

__device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes));
#endif
}
__device__ __forceinline__ void cp_async_commit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

/* ---- decode_split_bf16_v3: one query per head (T = 1), split-K over blocks ----
 * Block (split sp, KV head kh, chunk of <= DEC_GC query heads of kh's group): keys
 * [sp*DEC_SPLIT, (sp+1)*DEC_SPLIT) ∩ [0, last], DEC_KPW keys per warp. Each warp cp.asyncs its K rows
 * and V rows into shared memory at once (one memory round trip; V lands while the scores are computed).
 * Lane l holds dims [l*DPL, (l+1)*DPL) of the q rows and reads the same slice of each K/V row, so each
 * K/V row is read once for all the group's query heads. Per warp: s_j,h = T(T(q_h . k_j) * scale)
 * (the rows_v1 rounding) by warp butterflies, lane j keeps key j's scores; m_h = max_j s,
 * p = exp(s - m_h), l_h = sum_j p; acc_h = sum_j p_j v_j. Warps merge in warp order through shared
 * memory: M = max_w m_w, acc = sum_w exp(m_w - M) acc_w, L likewise; the block writes (M, L, acc[HD])
 * to part[head][sp]; decode_combine_kernel merges the splits in a fixed order. Deterministic (no
 * atomics); splits past `last` (possibly a device position) exit at once.
 * v2 (committed e926f05) loaded K then V into registers: two round trips, 22.8 us at S=4096. */
#define DEC_SPLIT 128
#define DEC_WARPS 8
#define DEC_KPW (DEC_SPLIT / DEC_WARPS)
#define DEC_GC 8

template <int DPL>
__device__ __forceinline__ void dec_unpack(float *x, const bf16 *p)
{
    uint4 u;
    if constexpr (DPL == 8) {
        u = *reinterpret_cast<const uint4 *>(p);
    } else {
        const uint2 v = *reinterpret_cast<const uint2 *>(p);
        u = make_uint4(v.x, v.y, 0, 0);
    }
    const bf16 *b = reinterpret_cast<const bf16 *>(&u);
#pragma unroll
    for (int i = 0; i < DPL; i++) x[i] = __bfloat162float(b[i]);
}

/* cp.async of n rows (row r at src + r*rs, 32*DPL bf16 each) into dst [n][32*DPL] by one warp. */
template <int DPL>
__device__ __forceinline__ void dec_rows_async(bf16 *dst, const bf16 *src, int64_t rs, int n, int lane)
{
    constexpr int per = 32 * DPL / 8; /* 16-byte chunks per row */
    for (int idx = lane; idx < n * per; idx += 32) {
        const int r = idx / per, c = (idx % per) * 8;
        cp_async16(dst + r * 32 * DPL + c, src + r * rs + c, 16);
    }
}

template <int DPL>
__global__ void __launch_bounds__(DEC_WARPS * 32) decode_v3_kernel(float *part, const bf16 *q, const bf16 *kc,
                                                                   const bf16 *vc, int64_t pos0, const int64_t *dpos,
                                                                   int64_t S, int NH, int NKV, int nsplit, float scale)
{
    constexpr int HD = 32 * DPL;
    /* K rows [DEC_SPLIT][HD], V rows [DEC_SPLIT][HD] (bf16); after its PV a warp reuses its own 16 V rows
     * (16*HD*2 bytes) for its scaled acc [DEC_GC][HD] (float, same size); mw, lw [DEC_WARPS][DEC_GC]. */
    extern __shared__ __align__(16) unsigned char dec_smem[];
    bf16 *Ksm = reinterpret_cast<bf16 *>(dec_smem), *Vsm = Ksm + DEC_SPLIT * HD;
    float *mw = reinterpret_cast<float *>(Vsm + DEC_SPLIT * HD), *lw = mw + DEC_WARPS * DEC_GC;
    int64_t last = dpos ? *dpos : pos0;
    if (last > S - 1) last = S - 1; /* a position past the cache reads no row outside it */
    const int sp = blockIdx.x;
    const int64_t s0 = (int64_t)sp * DEC_SPLIT;
    if (s0 > last) return;
    const int G = NH / NKV, nchunk = (G + DEC_GC - 1) / DEC_GC;
    const int kh = blockIdx.y / nchunk, c0 = (blockIdx.y % nchunk) * DEC_GC;
    const int gc = G - c0 < DEC_GC ? G - c0 : DEC_GC, h0 = kh * G + c0;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int64_t k0 = s0 + w * DEC_KPW;
    const int nk = last + 1 - k0 < DEC_KPW ? (int)(last + 1 - k0) : DEC_KPW; /* may be <= 0 */
    bf16 *Kw = Ksm + w * DEC_KPW * HD, *Vw = Vsm + w * DEC_KPW * HD;
    if (nk > 0) {
        dec_rows_async<DPL>(Kw, kc + (k0 * NKV + kh) * HD, NKV * HD, nk, lane);
        cp_async_commit();
        dec_rows_async<DPL>(Vw, vc + (k0 * NKV + kh) * HD, NKV * HD, nk, lane);
        cp_async_commit();
    }
    float sc[DEC_GC];
#pragma unroll
    for (int h = 0; h < DEC_GC; h++) sc[h] = -INFINITY;
    {
        float qr[DEC_GC][DPL];
#pragma unroll
        for (int h = 0; h < DEC_GC; h++) dec_unpack<DPL>(qr[h], q + (int64_t)(h0 + (h < gc ? h : 0)) * HD + lane * DPL);
        cp_async_wait<1>(); /* K rows */
        __syncwarp();
#pragma unroll 4
        for (int j = 0; j < nk; j++) {
            float kf[DPL];
            dec_unpack<DPL>(kf, Kw + j * HD + lane * DPL);
#pragma unroll
            for (int h = 0; h < DEC_GC; h++) {
                float d = 0.0f;
#pragma unroll
                for (int i = 0; i < DPL; i++) d += qr[h][i] * kf[i];
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
                const float sv = __bfloat162float(__float2bfloat16_rn(
                    __bfloat162float(__float2bfloat16_rn(d)) * scale));
                sc[h] = lane == j ? sv : sc[h];
            }
        }
    }
    float m[DEC_GC], l[DEC_GC], p[DEC_GC];
#pragma unroll
    for (int h = 0; h < DEC_GC; h++) {
        float mx = sc[h];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        m[h] = mx;
        p[h] = sc[h] == -INFINITY ? 0.0f : expf(sc[h] - mx);
        float sm = p[h];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) sm += __shfl_xor_sync(0xffffffffu, sm, o);
        l[h] = sm;
    }
    float acc[DEC_GC][DPL];
#pragma unroll
    for (int h = 0; h < DEC_GC; h++)
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[h][i] = 0.0f;
    cp_async_wait<0>(); /* V rows */
    __syncwarp();
#pragma unroll 4
    for (int j = 0; j < nk; j++) {
        float vf[DPL];
        dec_unpack<DPL>(vf, Vw + j * HD + lane * DPL);
#pragma unroll
        for (int h = 0; h < DEC_GC; h++) {
            const float pj = __shfl_sync(0xffffffffu, p[h], j);
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[h][i] += pj * vf[i];
        }
    }
    if (lane == 0)
#pragma unroll
        for (int h = 0; h < DEC_GC; h++) mw[w * DEC_GC + h] = m[h], lw[w * DEC_GC + h] = l[h];
    __syncthreads();
    float *aw = reinterpret_cast<float *>(Vw); /* this warp's V rows are consumed */
#pragma unroll
    for (int h = 0; h < DEC_GC; h++) {
        float M = -INFINITY;
        for (int u = 0; u < DEC_WARPS; u++) M = fmaxf(M, mw[u * DEC_GC + h]);
        const float f = m[h] == -INFINITY ? 0.0f : expf(m[h] - M);
#pragma unroll
        for (int i = 0; i < DPL; i++) aw[h * HD + i * 32 + lane] = acc[h][i] * f; /* dim lane*DPL+i, permuted */
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < gc * HD; idx += DEC_WARPS * 32) {
        const int h = idx / HD, e = idx % HD; /* e = i*32 + lane holds dim lane*DPL + i */
        const int d = (e % 32) * DPL + e / 32;
        float a = 0.0f;
        for (int u = 0; u < DEC_WARPS; u++)
            a += reinterpret_cast<const float *>(Vsm + u * DEC_KPW * HD)[h * HD + e];
        float *pp = part + ((int64_t)(h0 + h) * nsplit + sp) * (HD + 2);
        pp[2 + d] = a;
        if (e == 0) {
            float M = -INFINITY, L = 0.0f;
            for (int u = 0; u < DEC_WARPS; u++) M = fmaxf(M, mw[u * DEC_GC + h]);
            for (int u = 0; u < DEC_WARPS; u++)
                if (mw[u * DEC_GC + h] != -INFINITY) L += lw[u * DEC_GC + h] * expf(mw[u * DEC_GC + h] - M);
            pp[0] = M;
            pp[1] = L;
        }
    }
}

/* out[h, d] = sum_s exp(m_s - M) acc_s[d] / sum_s exp(m_s - M) l_s over the nact = last/DEC_SPLIT + 1
 * splits that hold keys, M = max_s m_s. Block (head, 32 dims), 8 warps: warp w sums splits w, w+8, ...
 * in order, then the 8 warp sums are added in warp order (fixed order: deterministic). */
__global__ void __launch_bounds__(256) decode_combine_kernel(bf16 *out, const float *part, int64_t pos0,
                                                             const int64_t *dpos, int64_t S, int HD, int nsplit)
{
    __shared__ float ra[8][32], rl[8];
    int64_t last = dpos ? *dpos : pos0;
    if (last > S - 1) last = S - 1;
    const int nact = (int)(last / DEC_SPLIT) + 1;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, d = blockIdx.y * 32 + lane;
    const float *pr = part + (int64_t)blockIdx.x * nsplit * (HD + 2);
    float M = -INFINITY;
    for (int s = lane; s < nact; s += 32) M = fmaxf(M, pr[(int64_t)s * (HD + 2)]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
    float a = 0.0f, L = 0.0f;
#pragma unroll 4
    for (int s = w; s < nact; s += 8) {
        const float *ps = pr + (int64_t)s * (HD + 2);
        const float f = expf(ps[0] - M);
        L += f * ps[1];
        if (d < HD) a += f * ps[2 + d];
    }
    ra[w][lane] = a;
    if (lane == 0) rl[w] = L;
    __syncthreads();
    if (w == 0 && d < HD) {
        float at = 0.0f, lt = 0.0f;
        for (int u = 0; u < 8; u++) at += ra[u][lane], lt += rl[u];
        out[(int64_t)blockIdx.x * HD + d] = __float2bfloat16_rn(at / lt);
    }
}

static int decode_v3_ok(int64_t HD, enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 && (HD == 128 || HD == 256);
}

static enum q3n_status decode_v3_launch(void *d_out, const void *d_q, const void *d_kc, const void *d_vc,
                                        float *d_scratch, int64_t pos0, const int64_t *d_pos, int64_t S, int64_t NH,
                                        int64_t NKV, int64_t HD, cudaStream_t stream, struct q3n_error *err)
{
    const int64_t nsplit = (S + DEC_SPLIT - 1) / DEC_SPLIT, nchunk = (NH / NKV + DEC_GC - 1) / DEC_GC;
    Q3N_REQUIRE(d_scratch != NULL && nsplit <= INT32_MAX && NKV * nchunk <= 65535 && NH <= 65535);
    const float scale = 1.0f / sqrtf((float)HD);
    const dim3 grid((unsigned)nsplit, (unsigned)(NKV * nchunk));
    const size_t smem = sizeof(bf16) * 2 * DEC_SPLIT * (size_t)HD + sizeof(float) * 2 * DEC_WARPS * DEC_GC;
    if (HD == 256) {
        CU_CHECK(cudaFuncSetAttribute(decode_v3_kernel<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        decode_v3_kernel<8><<<grid, DEC_WARPS * 32, smem, stream>>>(d_scratch, (const bf16 *)d_q, (const bf16 *)d_kc,
                                                                    (const bf16 *)d_vc, pos0, d_pos, S, (int)NH,
                                                                    (int)NKV, (int)nsplit, scale);
    } else {
        CU_CHECK(cudaFuncSetAttribute(decode_v3_kernel<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        decode_v3_kernel<4><<<grid, DEC_WARPS * 32, smem, stream>>>(d_scratch, (const bf16 *)d_q, (const bf16 *)d_kc,
                                                                    (const bf16 *)d_vc, pos0, d_pos, S, (int)NH,
                                                                    (int)NKV, (int)nsplit, scale);
    }
    CU_LAUNCHED("decode_v3_kernel");
    decode_combine_kernel<<<dim3((unsigned)NH, cdiv(HD, 32)), 256, 0, stream>>>((bf16 *)d_out, d_scratch, pos0, d_pos,
                                                                              S, (int)HD, (int)nsplit);
    CU_LAUNCHED("decode_combine_kernel");
    return Q3N_OK;
}

/* ---- flash_mma_bf16_v1 ---- */
#define FL_BR 64
#define FL_BC 64

__device__ __forceinline__ void mma_bf16(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}
__device__ __forceinline__ uint32_t pack_raw(bf16 lo, bf16 hi)
{
    __nv_bfloat162 v = __halves2bfloat162(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

/* Loads rows [r0, r0+64) of a [*, ld] bf16 matrix (row r at base + r*rs) into smem [64][HDP+8],
 * zero past nrows and past HD. */
template <int HDP>
__device__ __forceinline__ void fl_load(bf16 *dst, const bf16 *base, int64_t rs, int64_t r0, int64_t nrows, int64_t HD)
{
    const int LD = HDP + 8;
    const bool vec = (HD % 8) == 0;
    if (vec) {
        const int per = HDP / 8;
        for (int idx = threadIdx.x; idx < FL_BR * per; idx += blockDim.x) {
            const int r = idx / per, c = (idx % per) * 8;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (r0 + r < nrows && c < HD) v = *reinterpret_cast<const uint4 *>(base + (r0 + r) * rs + c);
            *reinterpret_cast<uint4 *>(dst + r * LD + c) = v;
        }
    } else {
        for (int idx = threadIdx.x; idx < FL_BR * HDP; idx += blockDim.x) {
            const int r = idx / HDP, c = idx % HDP;
            dst[r * LD + c] = (r0 + r < nrows && c < HD) ? base[(r0 + r) * rs + c] : __float2bfloat16_rn(0.0f);
        }
    }
}

template <int HDP>
__global__ void __launch_bounds__(128) flash_bf16_kernel(bf16 *out, const bf16 *q, const bf16 *kc, const bf16 *vc,
                                                         int64_t T, int64_t pos0, int64_t NH, int64_t NKV, int64_t HD,
                                                         float scale)
{
    extern __shared__ __align__(16) unsigned char fl_smem[];
    const int LD = HDP + 8;
    bf16 *Qs = reinterpret_cast<bf16 *>(fl_smem), *Ks = Qs + FL_BR * LD, *Vs = Ks + FL_BC * LD;
    const int64_t h = blockIdx.y, kh = h / (NH / NKV), qb = (int64_t)blockIdx.x * FL_BR;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    const int64_t S = pos0 + T;
    fl_load<HDP>(Qs, q + h * HD, NH * HD, qb, T, HD);
    float o[HDP / 8][4];
    for (int i = 0; i < HDP / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
    const int64_t qlast = qb + FL_BR - 1 < T - 1 ? qb + FL_BR - 1 : T - 1;
    const int64_t kend = pos0 + qlast + 1; /* keys [0, kend) */
    const int64_t qpos0 = pos0 + qb + w * 16 + g, qpos1 = qpos0 + 8;
    for (int64_t kb = 0; kb < kend; kb += FL_BC) {
        __syncthreads();
        fl_load<HDP>(Ks, kc + kh * HD, NKV * HD, kb, S, HD);
        fl_load<HDP>(Vs, vc + kh * HD, NKV * HD, kb, S, HD);
        __syncthreads();
        float s[FL_BC / 8][4];
        for (int n = 0; n < FL_BC / 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        const bf16 *qr0 = Qs + (w * 16 + g) * LD, *qr1 = qr0 + 8 * LD;
#pragma unroll
        for (int ks = 0; ks < HDP / 16; ks++) {
            const int c = ks * 16 + 2 * tq;
            const uint32_t a0 = *reinterpret_cast<const uint32_t *>(qr0 + c);
            const uint32_t a1 = *reinterpret_cast<const uint32_t *>(qr1 + c);
            const uint32_t a2 = *reinterpret_cast<const uint32_t *>(qr0 + c + 8);
            const uint32_t a3 = *reinterpret_cast<const uint32_t *>(qr1 + c + 8);
#pragma unroll
            for (int n = 0; n < FL_BC / 8; n++) {
                const bf16 *kr = Ks + (n * 8 + g) * LD + c;
                mma_bf16(s[n], a0, a1, a2, a3, *reinterpret_cast<const uint32_t *>(kr),
                         *reinterpret_cast<const uint32_t *>(kr + 8));
            }
        }
        /* scale, causal mask, online softmax (rows g and g+8 of this warp's 16) */
        float mx[2] = {mrow[0], mrow[1]};
#pragma unroll
        for (int n = 0; n < FL_BC / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int64_t key = kb + n * 8 + 2 * tq + (e & 1);
                const int64_t qp = e < 2 ? qpos0 : qpos1;
                const float v = (key <= qp && key < S) ? s[n][e] * scale : -INFINITY;
                s[n][e] = v;
                mx[e >> 1] = fmaxf(mx[e >> 1], v);
            }
        float alpha[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            alpha[r] = mx[r] == -INFINITY ? 1.0f : expf(mrow[r] - mx[r]);
            mrow[r] = mx[r];
        }
#pragma unroll
        for (int n = 0; n < FL_BC / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = e >> 1;
                const float p = mrow[r] == -INFINITY ? 0.0f : expf(s[n][e] - mrow[r]);
                s[n][e] = p;
                rs[r] += p;
            }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 1);
            rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 2);
            lrow[r] = lrow[r] * alpha[r] + rs[r];
        }
#pragma unroll
        for (int i = 0; i < HDP / 8; i++) {
            o[i][0] *= alpha[0];
            o[i][1] *= alpha[0];
            o[i][2] *= alpha[1];
            o[i][3] *= alpha[1];
        }
        /* O += P V; V's B fragments by ldmatrix.trans (two 8-dim n-tiles per instruction) */
#pragma unroll
        for (int j = 0; j < FL_BC / 16; j++) {
            const uint32_t a0 = pack_bf16(s[2 * j][0], s[2 * j][1]);
            const uint32_t a1 = pack_bf16(s[2 * j][2], s[2 * j][3]);
            const uint32_t a2 = pack_bf16(s[2 * j + 1][0], s[2 * j + 1][1]);
            const uint32_t a3 = pack_bf16(s[2 * j + 1][2], s[2 * j + 1][3]);
            const bf16 *vrow = Vs + (16 * j + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8;
#pragma unroll
            for (int i = 0; i < HDP / 8; i += 2) {
                uint32_t b0, b1, b2, b3;
                const uint32_t addr = (uint32_t)__cvta_generic_to_shared(vrow + i * 8);
                asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                             : "=r"(b0), "=r"(b1), "=r"(b2), "=r"(b3)
                             : "r"(addr));
                mma_bf16(o[i], a0, a1, a2, a3, b0, b1);
                mma_bf16(o[i + 1], a0, a1, a2, a3, b2, b3);
            }
        }
    }
    const int64_t t0 = qb + w * 16 + g, t1 = t0 + 8;
    const float inv0 = 1.0f / lrow[0], inv1 = 1.0f / lrow[1];
#pragma unroll
    for (int i = 0; i < HDP / 8; i++) {
        const int64_t d = i * 8 + 2 * tq;
        if (t0 < T) {
            if (d < HD) out[(t0 * NH + h) * HD + d] = __float2bfloat16_rn(o[i][0] * inv0);
            if (d + 1 < HD) out[(t0 * NH + h) * HD + d + 1] = __float2bfloat16_rn(o[i][1] * inv0);
        }
        if (t1 < T) {
            if (d < HD) out[(t1 * NH + h) * HD + d] = __float2bfloat16_rn(o[i][2] * inv1);
            if (d + 1 < HD) out[(t1 * NH + h) * HD + d + 1] = __float2bfloat16_rn(o[i][3] * inv1);
        }
    }
}

template <int HDP>
static cudaError_t launch_flash(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                                int64_t NH, int64_t NKV, int64_t HD, float scale, cudaStream_t stream)
{
    const size_t smem = sizeof(bf16) * (size_t)(FL_BR + 2 * FL_BC) * (HDP + 8);
    cudaError_t e = cudaFuncSetAttribute(flash_bf16_kernel<HDP>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)smem);
    if (e != cudaSuccess) return e;
    flash_bf16_kernel<HDP><<<dim3(cdiv(T, FL_BR), (unsigned)NH), 128, smem, stream>>>(
        (bf16 *)out, (const bf16 *)q, (const bf16 *)kc, (const bf16 *)vc, T, pos0, NH, NKV, HD, scale);
    return cudaSuccess;
}

/* ---- flash_mma_bf16_v3 ----
 * One block per (query head h, 128-query block), 8 warps of 16 query rows; 64-key K/V tiles double
 * buffered in shared memory by cp.async (tile j+1 in flight while tile j is used; one barrier per tile). Q, K (non-transposed) and V (transposed) mma fragments by
 * ldmatrix.x4. Per warp and tile: S = Q K^T (mma m16n8k16, fp32), x = S * scale * log2(e), keys past
 * a row's position masked to -inf, online softmax in base 2 (m = max x, p = 2^(x - m), l = sum p,
 * O *= 2^(m_old - m)), O += bf16(P) V. Causal: the block stops at its last row's key; a warp skips
 * tiles wholly past its rows and masks only tiles that cross its diagonal. Blocks are issued heaviest
 * (last query block) first, heads fastest. Rounding as v2 except exp2 vs exp (a few fp32 ULPs). */
#define V3_BQ 128 /* default shape: 8 warps x 16 query rows, 64-key tiles */
#define V3_BK 64

__device__ __forceinline__ void ldsm_x4(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, const bf16 *p)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, const bf16 *p)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(a));
}

/* cp.async of rows [r0, r0+ROWS) of a bf16 matrix (row r at base + r*rs, HD % 8 == 0) into smem
 * [ROWS][HDP+8]; rows >= nrows and columns >= HD are zero-filled (src-size 0). */
template <int HDP, int ROWS, int NT>
__device__ __forceinline__ void v3_load(bf16 *dst, const bf16 *base, int64_t rs, int64_t r0, int64_t nrows, int HD)
{
    constexpr int LD = HDP + 8, per = HDP / 8;
#pragma unroll
    for (int idx = threadIdx.x; idx < ROWS * per; idx += NT) {
        const int r = idx / per, c = (idx % per) * 8;
        const bool ok = r0 + r < nrows && c < HD;
        cp_async16(dst + r * LD + c, ok ? base + (r0 + r) * rs + c : base, ok ? 16 : 0);
    }
}

template <int HDP, int NW, int BK>
__global__ void __launch_bounds__(NW * 32, 8 / NW) flash_v3_kernel(bf16 *out, const bf16 *q, const bf16 *kc,
                                                                 const bf16 *vc, int64_t T, int64_t pos0, int64_t NH,
                                                                 int64_t NKV, int HD, float sl2)
{
    constexpr int LD = HDP + 8, BQ = NW * 16, NT = NW * 32;
    extern __shared__ __align__(16) unsigned char v3_smem[];
    bf16 *Qs = reinterpret_cast<bf16 *>(v3_smem), *Ks = Qs + BQ * LD, *Vs = Ks + 2 * BK * LD;
    const int64_t h = blockIdx.x, kh = h / (NH / NKV);
    const int64_t qb = (int64_t)(gridDim.y - 1 - blockIdx.y) * BQ;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    const int64_t S = pos0 + T;
    const int64_t qlast = qb + BQ - 1 < T - 1 ? qb + BQ - 1 : T - 1;
    const int ntiles = (int)((pos0 + qlast + 1 + BK - 1) / BK);
    const int64_t wq0 = pos0 + qb + w * 16; /* position of this warp's first row */
    const int64_t qpos0 = wq0 + g, qpos1 = qpos0 + 8;

    v3_load<HDP, BQ, NT>(Qs, q + h * HD, NH * HD, qb, T, HD);
    v3_load<HDP, BK, NT>(Ks, kc + kh * HD, NKV * HD, 0, S, HD);
    v3_load<HDP, BK, NT>(Vs, vc + kh * HD, NKV * HD, 0, S, HD);
    cp_async_commit();

    float o[HDP / 8][4];
#pragma unroll
    for (int i = 0; i < HDP / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
    float s[BK / 8][4];

    for (int j = 0; j < ntiles; j++) {
        const int64_t kb = (int64_t)j * BK;
        const bf16 *Kb = Ks + (j & 1) * BK * LD, *Vb = Vs + (j & 1) * BK * LD;
        cp_async_wait<0>(); /* tile j (and Q) landed for this thread ... */
        __syncthreads();    /* ... and for all; everyone is done with tile j-1, so its buffer is free */
        if (j + 1 < ntiles) {
            v3_load<HDP, BK, NT>(Ks + ((j + 1) & 1) * BK * LD, kc + kh * HD, NKV * HD, kb + BK, S, HD);
            v3_load<HDP, BK, NT>(Vs + ((j + 1) & 1) * BK * LD, vc + kh * HD, NKV * HD, kb + BK, S, HD);
        }
        cp_async_commit();
        const bool active = kb <= wq0 + 15;           /* some key of the tile is visible to some row */
        const bool diag = kb + BK - 1 > wq0;       /* some key is past some row: mask */
        if (active) {
#pragma unroll
            for (int n = 0; n < BK / 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            const bf16 *qa = Qs + (w * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8;
            const bf16 *kbp = Kb + ((lane & 7) + (lane >> 4) * 8) * LD + ((lane >> 3) & 1) * 8;
#pragma unroll
            for (int ks = 0; ks < HDP / 16; ks++) {
                uint32_t a0, a1, a2, a3;
                ldsm_x4(a0, a1, a2, a3, qa + ks * 16);
#pragma unroll
                for (int np = 0; np < BK / 16; np++) {
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4(b0, b1, b2, b3, kbp + np * 16 * LD + ks * 16);
                    mma_bf16(s[2 * np], a0, a1, a2, a3, b0, b1);
                    mma_bf16(s[2 * np + 1], a0, a1, a2, a3, b2, b3);
                }
            }
            /* raw scores; masked ones -inf. max in raw units (sl2 > 0), then base-2 exponent by one FMA */
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int n = 0; n < BK / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    if (diag) {
                        const int64_t key = kb + n * 8 + 2 * tq + (e & 1);
                        if (key > (e < 2 ? qpos0 : qpos1)) s[n][e] = -INFINITY;
                    }
                    mx[e >> 1] = fmaxf(mx[e >> 1], s[n][e]);
                }
            float alpha[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
            for (int r = 0; r < 2; r++) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
                const float mn = fmaxf(mrow[r], mx[r] * sl2);
                alpha[r] = mn == -INFINITY ? 1.0f : exp2f(mrow[r] - mn);
                mrow[r] = mn;
            }
            const float nm0 = mrow[0] == -INFINITY ? 0.0f : -mrow[0], nm1 = mrow[1] == -INFINITY ? 0.0f : -mrow[1];
#pragma unroll
            for (int n = 0; n < BK / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float pv = exp2f(fmaf(s[n][e], sl2, e < 2 ? nm0 : nm1));
                    s[n][e] = pv;
                    rs[e >> 1] += pv;
                }
#pragma unroll
            for (int r = 0; r < 2; r++) {
                rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 1);
                rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 2);
                lrow[r] = lrow[r] * alpha[r] + rs[r];
            }
#pragma unroll
            for (int i = 0; i < HDP / 8; i++) {
                o[i][0] *= alpha[0];
                o[i][1] *= alpha[0];
                o[i][2] *= alpha[1];
                o[i][3] *= alpha[1];
            }
        }
        if (active) {
#pragma unroll
            for (int jj = 0; jj < BK / 16; jj++) {
                const uint32_t a0 = pack_bf16(s[2 * jj][0], s[2 * jj][1]);
                const uint32_t a1 = pack_bf16(s[2 * jj][2], s[2 * jj][3]);
                const uint32_t a2 = pack_bf16(s[2 * jj + 1][0], s[2 * jj + 1][1]);
                const uint32_t a3 = pack_bf16(s[2 * jj + 1][2], s[2 * jj + 1][3]);
                const bf16 *vrow = Vb + (16 * jj + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8;
#pragma unroll
                for (int i = 0; i < HDP / 8; i += 2) {
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4_t(b0, b1, b2, b3, vrow + i * 8);
                    mma_bf16(o[i], a0, a1, a2, a3, b0, b1);
                    mma_bf16(o[i + 1], a0, a1, a2, a3, b2, b3);
                }
            }
        }
    }
    const int64_t t0 = qb + w * 16 + g, t1 = t0 + 8;
    const float inv0 = 1.0f / lrow[0], inv1 = 1.0f / lrow[1];
#pragma unroll
    for (int i = 0; i < HDP / 8; i++) {
        const int d = i * 8 + 2 * tq;
        if (d < HD) {
            if (t0 < T)
                *reinterpret_cast<uint32_t *>(out + (t0 * NH + h) * HD + d) = pack_bf16(o[i][0] * inv0, o[i][1] * inv0);
            if (t1 < T)
                *reinterpret_cast<uint32_t *>(out + (t1 * NH + h) * HD + d) = pack_bf16(o[i][2] * inv1, o[i][3] * inv1);
        }
    }
}

static int flash_v3_ok(int64_t T, int64_t HD, enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 && T > 1 && T <= (int64_t)65535 * V3_BQ && HD % 8 == 0 && HD <= 256;
}

template <int HDP, int NW, int BK>
static cudaError_t launch_flash_v3(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                                   int64_t NH, int64_t NKV, int64_t HD, cudaStream_t stream)
{
    const size_t smem = sizeof(bf16) * (size_t)(NW * 16 + 4 * BK) * (HDP + 8);
    cudaError_t e = cudaFuncSetAttribute(flash_v3_kernel<HDP, NW, BK>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)smem);
    if (e != cudaSuccess) return e;
    const float sl2 = 1.4426950408889634f / sqrtf((float)HD);
    flash_v3_kernel<HDP, NW, BK><<<dim3((unsigned)NH, cdiv(T, NW * 16)), NW * 32, smem, stream>>>(
        (bf16 *)out, (const bf16 *)q, (const bf16 *)kc, (const bf16 *)vc, T, pos0, NH, NKV, (int)HD, sl2);
    return cudaSuccess;
}

/* rows_v1 launch: T queries at positions pos0.. (or one at *d_pos), S keys in the cache (decode: S sizes
 * the split count only; splits past the position contribute nothing). */
static enum q3n_status rows_launch(void *d_out, const void *d_q, const void *d_kc, const void *d_vc,
                                   float *d_scratch, int64_t T, int64_t pos0, const int64_t *d_pos, int64_t S,
                                   int64_t NH, int64_t NKV, int64_t HD, enum q3n_compute_dtype dt, cudaStream_t stream,
                                   struct q3n_error *err)
{
    const float scale = 1.0f / sqrtf((float)HD);
    const int64_t nsplit = T == 1 ? (S + ROWS_SPLIT - 1) / ROWS_SPLIT : 1;
    const int64_t L = T == 1 ? ROWS_SPLIT : S;
    Q3N_REQUIRE(nsplit == 1 || d_scratch != NULL);
    Q3N_REQUIRE(nsplit <= 65535);
    const dim3 grid((unsigned)(T * NH), (unsigned)nsplit);
    const size_t smem = sizeof(float) * (size_t)HD;
    if (dt == Q3N_COMPUTE_BF16) {
        attn_rows_kernel<<<grid, 128, smem, stream>>>((bf16 *)d_out, d_scratch, (const bf16 *)d_q,
                                                      (const bf16 *)d_kc, (const bf16 *)d_vc, pos0, d_pos, NH, NKV,
                                                      HD, scale, L);
        CU_LAUNCHED("attn_rows_kernel");
        if (nsplit > 1) attn_combine_kernel<<<(unsigned)(T * NH), 128, 0, stream>>>((bf16 *)d_out, d_scratch, HD, nsplit);
    } else {
        attn_rows_kernel<<<grid, 128, smem, stream>>>((float *)d_out, d_scratch, (const float *)d_q,
                                                      (const float *)d_kc, (const float *)d_vc, pos0, d_pos, NH, NKV,
                                                      HD, scale, L);
        CU_LAUNCHED("attn_rows_kernel");
        if (nsplit > 1)
            attn_combine_kernel<<<(unsigned)(T * NH), 128, 0, stream>>>((float *)d_out, d_scratch, HD, nsplit);
    }
    CU_LAUNCHED("attn_combine_kernel");
    return Q3N_OK;
}

extern "C" const char *cuda_attention_kernel(int64_t T, int64_t HD, enum q3n_compute_dtype dt)
{
    if (flash_v3_ok(T, HD, dt)) return "flash_mma_bf16_v3";
    if (dt == Q3N_COMPUTE_BF16 && T > 1 && HD <= 256) return "flash_mma_bf16_v2";
    if (T == 1 && decode_v3_ok(HD, dt)) return "decode_split_bf16_v3";
    return T == 1 ? "rows_v1(split-K decode)" : "rows_v1";
}

/* Partials of the decode split-K kernels: rows_v1 (256-key splits) or decode_v3 (128-key splits). */
extern "C" int64_t cuda_attention_scratch(int64_t T, int64_t NH, int64_t HD, int64_t S)
{
    if (T != 1) return 0;
    const int64_t a = NH * ((S + ROWS_SPLIT - 1) / ROWS_SPLIT) * (HD + 2);
    const int64_t b = NH * ((S + DEC_SPLIT - 1) / DEC_SPLIT) * (HD + 2);
    return a > b ? a : b;
}

extern "C" enum q3n_status cuda_attention_forward(void *d_out, const void *d_q, const void *d_kc, const void *d_vc,
                                                  float *d_scratch, int64_t T, int64_t pos0, int64_t NH, int64_t NKV,
                                                  int64_t HD, enum q3n_compute_dtype dt, cudaStream_t stream,
                                                  struct q3n_error *err)
{
    return cuda_attention_forward_ver(d_out, d_q, d_kc, d_vc, d_scratch, T, pos0, NH, NKV, HD, 0, dt, stream, err);
}

extern "C" enum q3n_status cuda_attention_forward_ver(void *d_out, const void *d_q, const void *d_kc,
                                                      const void *d_vc, float *d_scratch, int64_t T, int64_t pos0,
                                                      int64_t NH, int64_t NKV, int64_t HD, int old,
                                                      enum q3n_compute_dtype dt, cudaStream_t stream,
                                                      struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && pos0 >= 0 && NH > 0 && NKV > 0 && NH % NKV == 0 && HD > 0 && HD <= 128 * ROWS_MAXD);
    Q3N_REQUIRE(T * NH <= INT32_MAX);
    if (T == 0) return Q3N_OK;
    const float scale = 1.0f / sqrtf((float)HD);
    if (!old && flash_v3_ok(T, HD, dt)) {
        cudaError_t e;
        if (HD <= 64)
            e = launch_flash_v3<64, 8, 64>(d_out, d_q, d_kc, d_vc, T, pos0, NH, NKV, HD, stream);
        else if (HD <= 128)
            e = launch_flash_v3<128, 8, 64>(d_out, d_q, d_kc, d_vc, T, pos0, NH, NKV, HD, stream);
        else
            e = launch_flash_v3<256, 8, 64>(d_out, d_q, d_kc, d_vc, T, pos0, NH, NKV, HD, stream);
        CU_CHECK(e);
        CU_LAUNCHED("flash_v3_kernel");
        return Q3N_OK;
    }
    if (dt == Q3N_COMPUTE_BF16 && T > 1 && HD <= 256) {
        cudaError_t e;
        if (HD <= 64)
            e = launch_flash<64>(d_out, d_q, d_kc, d_vc, T, pos0, NH, NKV, HD, scale, stream);
        else if (HD <= 128)
            e = launch_flash<128>(d_out, d_q, d_kc, d_vc, T, pos0, NH, NKV, HD, scale, stream);
        else
            e = launch_flash<256>(d_out, d_q, d_kc, d_vc, T, pos0, NH, NKV, HD, scale, stream);
        CU_CHECK(e);
        CU_LAUNCHED("flash_bf16_kernel");
        return Q3N_OK;
    }
    if (T == 1 && !old && decode_v3_ok(HD, dt))
        return decode_v3_launch(d_out, d_q, d_kc, d_vc, d_scratch, pos0, NULL, pos0 + 1, NH, NKV, HD, stream, err);
    return rows_launch(d_out, d_q, d_kc, d_vc, d_scratch, T, pos0, NULL, pos0 + T, NH, NKV, HD, dt, stream, err);
}

extern "C" enum q3n_status cuda_attention_decode_dpos(void *d_out, const void *d_q, const void *d_kc,
                                                      const void *d_vc, float *d_scratch, const int64_t *d_pos,
                                                      int64_t S_max, int64_t NH, int64_t NKV, int64_t HD,
                                                      enum q3n_compute_dtype dt, cudaStream_t stream,
                                                      struct q3n_error *err)
{
    Q3N_REQUIRE(d_pos != NULL && S_max > 0 && NH > 0 && NKV > 0 && NH % NKV == 0 && HD > 0 && HD <= 128 * ROWS_MAXD);
    if (decode_v3_ok(HD, dt))
        return decode_v3_launch(d_out, d_q, d_kc, d_vc, d_scratch, 0, d_pos, S_max, NH, NKV, HD, stream, err);
    return rows_launch(d_out, d_q, d_kc, d_vc, d_scratch, 1, 0, d_pos, S_max, NH, NKV, HD, dt, stream, err);
}

/* ---- sigmoid output gate ---- */
template <typename T>
__global__ void sigmoid_gate_kernel(T *out, const T *x, const T *gate, int64_t NH, int64_t HD, int64_t ldg,
                                    int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t th = i / HD, d = i % HD; /* th = t*NH + h */
        const float sg = rnd(sigmoid_f(ld(gate + th * ldg + d)), x);
        st(out + i, ld(x + i) * sg);
    }
    (void)NH;
}

extern "C" enum q3n_status cuda_sigmoid_gate_forward(void *d_out, const void *d_x, const void *d_gate, int64_t T,
                                                     int64_t NH, int64_t HD, int64_t ldg, enum q3n_compute_dtype dt,
                                                     cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && NH > 0 && HD > 0 && ldg >= HD);
    const int64_t n = T * NH * HD;
    if (n == 0) return Q3N_OK;
    const unsigned grid = (unsigned)(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536);
    if (dt == Q3N_COMPUTE_BF16)
        sigmoid_gate_kernel<<<grid, 256, 0, stream>>>((bf16 *)d_out, (const bf16 *)d_x, (const bf16 *)d_gate, NH, HD,
                                                      ldg, n);
    else
        sigmoid_gate_kernel<<<grid, 256, 0, stream>>>((float *)d_out, (const float *)d_x, (const float *)d_gate, NH,
                                                      HD, ldg, n);
    CU_LAUNCHED("sigmoid_gate_kernel");
    return Q3N_OK;
}
