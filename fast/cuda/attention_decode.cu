/* attention_decode.cu — the one-token attention of a decode step, split-K over key blocks with one K/V
 * row load shared by a KV group's query heads (attention_kernels.cuh): decode_split_bf16_v4 (64-key
 * splits, transposed-butterfly dot products; the default) and decode_split_bf16_v3 (128-key splits),
 * both merged by decode_combine_kernel. */
#include "attention_kernels.cuh"

/* ---- decode_split_bf16_v3: one query per head (T = 1), split-K over blocks ----
 * Block (split sp, KV head kh, chunk of <= DEC_GC query heads of kh's group): keys
 * [sp*DEC3_SPLIT, (sp+1)*DEC3_SPLIT) ∩ [0, last], DEC_KPW keys per warp. Each warp cp.asyncs its K rows
 * and V rows into shared memory at once (one memory round trip; V lands while the scores are computed).
 * Lane l holds dims [l*DPL, (l+1)*DPL) of the q rows and reads the same slice of each K/V row, so each
 * K/V row is read once for all the group's query heads. Per warp: s_j,h = T(T(q_h . k_j) * scale)
 * (the rows_v1 rounding) by warp butterflies, lane j keeps key j's scores; m_h = max_j s,
 * p = exp(s - m_h), l_h = sum_j p; acc_h = sum_j p_j v_j. Warps merge in warp order through shared
 * memory: M = max_w m_w, acc = sum_w exp(m_w - M) acc_w, L likewise; the block writes (M, L, acc[HD])
 * to part[head][sp]; decode_combine_kernel merges the splits in a fixed order. Deterministic (no
 * atomics); splits past `last` (possibly a device position) exit at once.
 * v2 (committed e926f05) loaded K then V into registers: two round trips, 22.8 us at S=4096. */
#define DEC3_SPLIT 128 /* keys per block of v3 */
#define DEC_WARPS 8
#define DEC_KPW (DEC3_SPLIT / DEC_WARPS)
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
    /* K rows [DEC3_SPLIT][HD], V rows [DEC3_SPLIT][HD] (bf16); after its PV a warp reuses its own 16 V rows
     * (16*HD*2 bytes) for its scaled acc [DEC_GC][HD] (float, same size); mw, lw [DEC_WARPS][DEC_GC]. */
    extern __shared__ __align__(16) unsigned char dec_smem[];
    bf16 *Ksm = reinterpret_cast<bf16 *>(dec_smem), *Vsm = Ksm + DEC3_SPLIT * HD;
    float *mw = reinterpret_cast<float *>(Vsm + DEC3_SPLIT * HD), *lw = mw + DEC_WARPS * DEC_GC;
    int64_t last = dpos ? *dpos : pos0;
    if (last > S - 1) last = S - 1; /* a position past the cache reads no row outside it */
    const int sp = blockIdx.x;
    const int64_t s0 = (int64_t)sp * DEC3_SPLIT;
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

/* ---- decode_split_bf16_v4: v3's block shape with 64-key splits and a transposed butterfly ----
 * Block (KV head kh and chunk of GC query heads of kh's group on grid.x, GC = the largest of 8/4/2/1
 * dividing G = NH/NKV; on grid.y at most one wave of blocks, block y taking the splits sp = y,
 * y + gridDim.y, .. of DEC_SPLIT = 64 keys up to the position, so that a graph sized by a large S_max
 * dispatches no blocks that only exit), 8 warps of DEC4_KPW = 8 keys.
 * Each warp cp.asyncs its 8 K rows and 8 V rows into shared memory at once ([K 8][V 8] contiguous
 * per warp; rows past `last` are zero-filled, src-size 0, so the loops below have no key bounds).
 * Lane l holds dims [l*DPL, (l+1)*DPL) of the GC q rows and of each K/V row.
 * Scores, per key j: lane partials d_h = sum_i q_h[i] k_j[i] (i ascending, fma), then the transposed
 * butterfly: for o = 16, 8, .. (log2 GC steps) the lane keeps half of its heads (upper half when
 * lane & o) and adds the partner's partials of those: d_h' = d_h(own) + d_h(lane ^ o); then plain xor
 * steps for the remaining offsets. 9 shuffles per key for GC = 8 (v3: 40), and lane l ends holding the
 * whole dot of head c(l) = l >> (5 - log2 GC) (every lane of c's group the same bits).
 * s_j = T(T(dot) * scale) (the rows_v1 rounding), -inf for keys past `last`.
 * Softmax per lane, no shuffles: m = max_j s_j, p_j = exp(s_j - m), l = sum_j p_j (j ascending).
 * PV: acc_h[i] += p_hj v_j[i] (j ascending), p_hj shuffled from the first lane of head h's group.
 * Warps and splits merge as in v3: M = max_w m_w, acc = sum_w exp(m_w - M) acc_w in warp order, then
 * decode_combine_kernel over the splits in a fixed order. Deterministic: a split's partial does not
 * depend on the block (or grid) that computes it, so the pos0 and *d_pos launchers (grids sized by
 * pos0 + 1 and by S_max) give bitwise the same output.
 * v3 vs v4: the dot products' summation trees differ (v4 sums 8 lanes by the transposed steps, then
 * 4 by plain steps): not bitwise equal to v3, both within float32 rounding of the same sums.
 * Registers (sm_90a, nvcc 13): 128 at HD 256 / GC 8, no spills: 2 blocks/SM; 128 blocks at S = 4096. */
#define DEC4_KPW (DEC_SPLIT / DEC_WARPS)

template <int DPL, int GC>
__global__ void __launch_bounds__(DEC_WARPS * 32) decode_v4_kernel(float *part, const bf16 *q, const bf16 *kc,
                                                                   const bf16 *vc, int64_t pos0, const int64_t *dpos,
                                                                   int64_t S, int NH, int NKV, int nsplit, float scale)
{
    constexpr int HD = 32 * DPL;
    constexpr int LG = GC == 8 ? 3 : GC == 4 ? 2 : GC == 2 ? 1 : 0, SH = 5 - LG; /* lane's head: lane >> SH */
    /* per warp [K rows DEC4_KPW][V rows DEC4_KPW][HD] bf16 (2*8*HD*2 = GC_max*HD*4 bytes: after the PV the
     * warp reuses it for its scaled acc [GC][HD] float); then mw, lw [DEC_WARPS][GC] */
    extern __shared__ __align__(16) unsigned char dec_smem[];
    bf16 *Wsm = reinterpret_cast<bf16 *>(dec_smem);
    float *mw = reinterpret_cast<float *>(Wsm + DEC_WARPS * 2 * DEC4_KPW * HD), *lw = mw + DEC_WARPS * GC;
    int64_t last = dpos ? *dpos : pos0;
    if (last > S - 1) last = S - 1; /* a position past the cache reads no row outside it */
    const int G = NH / NKV, nchunk = G / GC;
    const int kh = blockIdx.x / nchunk, h0 = kh * G + (blockIdx.x % nchunk) * GC;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    /* splits sp = blockIdx.y, + gridDim.y, .. up to the position (the live low splits of every head are
     * dispatched first; a split's partial does not depend on which block computes it) */
    for (int sp = blockIdx.y; (int64_t)sp * DEC_SPLIT <= last; sp += gridDim.y) {
        const int64_t s0 = (int64_t)sp * DEC_SPLIT;
        const int64_t k0 = s0 + w * DEC4_KPW;
        const int nk = last + 1 - k0 < DEC4_KPW ? (int)(last + 1 - k0) : DEC4_KPW; /* may be <= 0 */
        bf16 *Kw = Wsm + w * 2 * DEC4_KPW * HD, *Vw = Kw + DEC4_KPW * HD;
        {
            constexpr int per = HD / 8; /* 16-byte chunks per row */
            for (int idx = lane; idx < DEC4_KPW * per; idx += 32) {
                const int r = idx / per, c = (idx % per) * 8;
                const int64_t off = r < nk ? ((k0 + r) * NKV + kh) * HD + c : 0;
                cp_async16(Kw + r * HD + c, kc + off, r < nk ? 16 : 0);
            }
            cp_async_commit();
            for (int idx = lane; idx < DEC4_KPW * per; idx += 32) {
                const int r = idx / per, c = (idx % per) * 8;
                const int64_t off = r < nk ? ((k0 + r) * NKV + kh) * HD + c : 0;
                cp_async16(Vw + r * HD + c, vc + off, r < nk ? 16 : 0);
            }
            cp_async_commit();
        }
        float s[DEC4_KPW]; /* scores of head lane >> SH */
        {
            float qr[GC][DPL];
#pragma unroll
            for (int h = 0; h < GC; h++) dec_unpack<DPL>(qr[h], q + (int64_t)(h0 + h) * HD + lane * DPL);
            cp_async_wait<1>(); /* K rows */
            __syncwarp();
#pragma unroll
            for (int j = 0; j < DEC4_KPW; j++) {
                float kf[DPL], d[GC];
                dec_unpack<DPL>(kf, Kw + j * HD + lane * DPL);
#pragma unroll
                for (int h = 0; h < GC; h++) {
                    float a = 0.0f;
#pragma unroll
                    for (int i = 0; i < DPL; i++) a = fmaf(qr[h][i], kf[i], a);
                    d[h] = a;
                }
                /* transposed butterfly: n heads -> n/2 per step; the upper half stays where lane & o */
#pragma unroll
                for (int st = 0; st < LG; st++) {
                    const int o = 16 >> st, n = GC >> st;
                    const bool up = (lane & o) != 0;
#pragma unroll
                    for (int h = 0; h < n / 2; h++) {
                        const float keep = up ? d[h + n / 2] : d[h], send = up ? d[h] : d[h + n / 2];
                        d[h] = keep + __shfl_xor_sync(0xffffffffu, send, o);
                    }
                }
#pragma unroll
                for (int o = 16 >> LG; o > 0; o >>= 1) d[0] += __shfl_xor_sync(0xffffffffu, d[0], o);
                const float dr = __bfloat162float(__float2bfloat16_rn(d[0]));
                s[j] = j < nk ? __bfloat162float(__float2bfloat16_rn(dr * scale)) : -INFINITY;
            }
        }
        float m = -INFINITY, l = 0.0f;
#pragma unroll
        for (int j = 0; j < DEC4_KPW; j++) m = fmaxf(m, s[j]);
#pragma unroll
        for (int j = 0; j < DEC4_KPW; j++) {
            s[j] = s[j] == -INFINITY ? 0.0f : expf(s[j] - m); /* s now holds p */
            l += s[j];
        }
        float acc[GC][DPL];
#pragma unroll
        for (int h = 0; h < GC; h++)
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[h][i] = 0.0f;
        cp_async_wait<0>(); /* V rows (zeros past `last`, where p = 0) */
        __syncwarp();
#pragma unroll
        for (int j = 0; j < DEC4_KPW; j++) {
            float vf[DPL];
            dec_unpack<DPL>(vf, Vw + j * HD + lane * DPL);
#pragma unroll
            for (int h = 0; h < GC; h++) {
                const float pj = __shfl_sync(0xffffffffu, s[j], h << SH);
#pragma unroll
                for (int i = 0; i < DPL; i++) acc[h][i] = fmaf(pj, vf[i], acc[h][i]);
            }
        }
        if ((lane & ((1 << SH) - 1)) == 0) mw[w * GC + (lane >> SH)] = m, lw[w * GC + (lane >> SH)] = l;
        __syncthreads();
        float *aw = reinterpret_cast<float *>(Kw); /* this warp's K/V rows are consumed */
#pragma unroll
        for (int h = 0; h < GC; h++) {
            float M = -INFINITY;
            for (int u = 0; u < DEC_WARPS; u++) M = fmaxf(M, mw[u * GC + h]);
            const float mh = mw[w * GC + h];
            const float f = mh == -INFINITY ? 0.0f : expf(mh - M);
#pragma unroll
            for (int i = 0; i < DPL; i++) aw[h * HD + i * 32 + lane] = acc[h][i] * f; /* dim lane*DPL+i, permuted */
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < GC * HD; idx += DEC_WARPS * 32) {
            const int h = idx / HD, e = idx % HD; /* e = i*32 + lane holds dim lane*DPL + i */
            const int dd = (e % 32) * DPL + e / 32;
            float a = 0.0f;
            for (int u = 0; u < DEC_WARPS; u++)
                a += reinterpret_cast<const float *>(Wsm + u * 2 * DEC4_KPW * HD)[h * HD + e];
            float *pp = part + ((int64_t)(h0 + h) * nsplit + sp) * (HD + 2);
            pp[2 + dd] = a;
            if (e == 0) {
                float M = -INFINITY, L = 0.0f;
                for (int u = 0; u < DEC_WARPS; u++) M = fmaxf(M, mw[u * GC + h]);
                for (int u = 0; u < DEC_WARPS; u++)
                    if (mw[u * GC + h] != -INFINITY) L += lw[u * GC + h] * expf(mw[u * GC + h] - M);
                pp[0] = M;
                pp[1] = L;
            }
        }
        __syncthreads(); /* the next split reuses the shared memory */
    }
}

/* out[h, d] = sum_s exp(m_s - M) acc_s[d] / sum_s exp(m_s - M) l_s over the nact = last/split + 1
 * splits that hold keys, M = max_s m_s. Block (head, 32 dims), 8 warps: warp w sums splits w, w+8, ...
 * in order, then the 8 warp sums are added in warp order (fixed order: deterministic). */
__global__ void __launch_bounds__(256) decode_combine_kernel(bf16 *out, const float *part, int64_t pos0,
                                                             const int64_t *dpos, int64_t S, int HD, int nsplit,
                                                             int split)
{
    __shared__ float ra[8][32], rl[8];
    int64_t last = dpos ? *dpos : pos0;
    if (last > S - 1) last = S - 1;
    const int nact = (int)(last / split) + 1;
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

int decode_v3_ok(int64_t HD, enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 && (HD == 128 || HD == 256);
}

/* v4 takes every shape v3 takes (a group of G heads runs in chunks of 8, 4, 2 or 1). */
int decode_v4_ok(int64_t NH, int64_t NKV, int64_t HD, enum q3n_compute_dtype dt)
{
    return decode_v3_ok(HD, dt) && NKV > 0 && NH % NKV == 0;
}

template <int DPL, int GC>
static cudaError_t v4_launch(float *part, const bf16 *q, const bf16 *kc, const bf16 *vc, int64_t pos0,
                             const int64_t *dpos, int64_t S, int NH, int NKV, int nsplit, float scale,
                             cudaStream_t stream)
{
    constexpr int HD = 32 * DPL;
    const size_t smem = sizeof(bf16) * 2 * DEC_SPLIT * (size_t)HD + sizeof(float) * 2 * DEC_WARPS * GC;
    cudaError_t e = cudaFuncSetAttribute(decode_v4_kernel<DPL, GC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)smem);
    if (e != cudaSuccess) return e;
    /* grid.y: at most one wave of blocks (resident blocks / head chunks), each looping over its splits,
     * so that a graph sized by a large S_max does not dispatch thousands of blocks that only exit */
    int dev = 0, sms = 0, per_sm = 0;
    if ((e = cudaGetDevice(&dev)) != cudaSuccess) return e;
    if ((e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess) return e;
    if ((e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, decode_v4_kernel<DPL, GC>, DEC_WARPS * 32,
                                                           smem)) != cudaSuccess)
        return e;
    const int gx = NKV * ((NH / NKV) / GC);
    int gy = (sms * (per_sm > 0 ? per_sm : 1)) / gx;
    gy = gy < 1 ? 1 : gy > nsplit ? nsplit : gy;
    const dim3 grid((unsigned)gx, (unsigned)gy);
    decode_v4_kernel<DPL, GC><<<grid, DEC_WARPS * 32, smem, stream>>>(part, q, kc, vc, pos0, dpos, S, NH, NKV, nsplit,
                                                                       scale);
    return cudaGetLastError();
}

template <int DPL>
static cudaError_t v4_launch_gc(float *part, const bf16 *q, const bf16 *kc, const bf16 *vc, int64_t pos0,
                                const int64_t *dpos, int64_t S, int NH, int NKV, int nsplit, float scale,
                                cudaStream_t stream)
{
    const int G = NH / NKV;
    if (G % 8 == 0) return v4_launch<DPL, 8>(part, q, kc, vc, pos0, dpos, S, NH, NKV, nsplit, scale, stream);
    if (G % 4 == 0) return v4_launch<DPL, 4>(part, q, kc, vc, pos0, dpos, S, NH, NKV, nsplit, scale, stream);
    if (G % 2 == 0) return v4_launch<DPL, 2>(part, q, kc, vc, pos0, dpos, S, NH, NKV, nsplit, scale, stream);
    return v4_launch<DPL, 1>(part, q, kc, vc, pos0, dpos, S, NH, NKV, nsplit, scale, stream);
}

enum q3n_status decode_split_launch(void *d_out, const void *d_q, const void *d_kc, const void *d_vc,
                                    float *d_scratch, int64_t pos0, const int64_t *d_pos, int64_t S, int64_t NH,
                                    int64_t NKV, int64_t HD, int ver, cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(ver == 0 || ver == 3 || ver == 4);
    Q3N_REQUIRE(HD == 128 || HD == 256);
    Q3N_REQUIRE(NH > 0 && NKV > 0 && NH % NKV == 0 && S > 0);
    if (ver == 0) ver = decode_v4_ok(NH, NKV, HD, Q3N_COMPUTE_BF16) ? 4 : 3;
    const int split = ver == 4 ? DEC_SPLIT : DEC3_SPLIT;
    const int64_t nsplit = (S + split - 1) / split;
    Q3N_REQUIRE(d_scratch != NULL && nsplit <= INT32_MAX && NH <= 65535);
    const float scale = 1.0f / sqrtf((float)HD);
    const bf16 *q = (const bf16 *)d_q, *kc = (const bf16 *)d_kc, *vc = (const bf16 *)d_vc;
    if (ver == 4) {
        if (HD == 256)
            CU_CHECK(v4_launch_gc<8>(d_scratch, q, kc, vc, pos0, d_pos, S, (int)NH, (int)NKV, (int)nsplit, scale,
                                     stream));
        else
            CU_CHECK(v4_launch_gc<4>(d_scratch, q, kc, vc, pos0, d_pos, S, (int)NH, (int)NKV, (int)nsplit, scale,
                                     stream));
        CU_LAUNCHED("decode_v4_kernel");
    } else {
        const int64_t nchunk = (NH / NKV + DEC_GC - 1) / DEC_GC;
        const dim3 grid((unsigned)nsplit, (unsigned)(NKV * nchunk));
        const size_t smem = sizeof(bf16) * 2 * DEC3_SPLIT * (size_t)HD + sizeof(float) * 2 * DEC_WARPS * DEC_GC;
        if (HD == 256) {
            CU_CHECK(cudaFuncSetAttribute(decode_v3_kernel<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
            decode_v3_kernel<8><<<grid, DEC_WARPS * 32, smem, stream>>>(d_scratch, q, kc, vc, pos0, d_pos, S, (int)NH,
                                                                        (int)NKV, (int)nsplit, scale);
        } else {
            CU_CHECK(cudaFuncSetAttribute(decode_v3_kernel<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
            decode_v3_kernel<4><<<grid, DEC_WARPS * 32, smem, stream>>>(d_scratch, q, kc, vc, pos0, d_pos, S, (int)NH,
                                                                        (int)NKV, (int)nsplit, scale);
        }
        CU_LAUNCHED("decode_v3_kernel");
    }
    decode_combine_kernel<<<dim3((unsigned)NH, cdiv(HD, 32)), 256, 0, stream>>>((bf16 *)d_out, d_scratch, pos0, d_pos,
                                                                              S, (int)HD, (int)nsplit, split);
    CU_LAUNCHED("decode_combine_kernel");
    return Q3N_OK;
}

/* The default split-K decode (v4 where decode_v4_ok, else v3); attention.cu's dispatch calls this. */
enum q3n_status decode_v3_launch(void *d_out, const void *d_q, const void *d_kc, const void *d_vc, float *d_scratch,
                                 int64_t pos0, const int64_t *d_pos, int64_t S, int64_t NH, int64_t NKV, int64_t HD,
                                 cudaStream_t stream, struct q3n_error *err)
{
    return decode_split_launch(d_out, d_q, d_kc, d_vc, d_scratch, pos0, d_pos, S, NH, NKV, HD, 0, stream, err);
}

extern "C" const char *cuda_attention_decode_kernel(int64_t NH, int64_t NKV, int64_t HD, enum q3n_compute_dtype dt,
                                                    int ver)
{
    if (!decode_v3_ok(HD, dt)) return "rows_v1(split-K decode)";
    if (ver == 3) return "decode_split_bf16_v3";
    if (ver == 4 || decode_v4_ok(NH, NKV, HD, dt)) return "decode_split_bf16_v4";
    return "decode_split_bf16_v3";
}

extern "C" enum q3n_status cuda_attention_decode_ver(void *d_out, const void *d_q, const void *d_kc, const void *d_vc,
                                                     float *d_scratch, int64_t pos0, const int64_t *d_pos, int64_t S,
                                                     int64_t NH, int64_t NKV, int64_t HD, int ver,
                                                     enum q3n_compute_dtype dt, cudaStream_t stream,
                                                     struct q3n_error *err)
{
    Q3N_REQUIRE(decode_v3_ok(HD, dt) && (ver == 0 || ver == 3 || (ver == 4 && decode_v4_ok(NH, NKV, HD, dt))));
    Q3N_REQUIRE(pos0 >= 0 && (d_pos != NULL || S > pos0));
    return decode_split_launch(d_out, d_q, d_kc, d_vc, d_scratch, pos0, d_pos, S, NH, NKV, HD, ver, stream, err);
}
