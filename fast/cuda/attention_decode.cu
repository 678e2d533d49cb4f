/* attention_decode.cu — decode_split_bf16_v3: the one-token attention of a decode step, split-K over
 * 128-key blocks with one K/V row load shared by a KV group's query heads (attention_kernels.cuh). */
#include "attention_kernels.cuh"

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

int decode_v3_ok(int64_t HD, enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 && (HD == 128 || HD == 256);
}

enum q3n_status decode_v3_launch(void *d_out, const void *d_q, const void *d_kc, const void *d_vc, float *d_scratch,
                                 int64_t pos0, const int64_t *d_pos, int64_t S, int64_t NH, int64_t NKV, int64_t HD,
                                 cudaStream_t stream, struct q3n_error *err)
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
