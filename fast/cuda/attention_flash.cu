/* attention_flash.cu — causal prefill attention on bf16 tensor cores: flash_mma_bf16_v2 (the
 * FlashAttention-2 form, kept as the fallback and for comparison) and flash_mma_bf16_v3
 * (attention_kernels.cuh; descriptions in attention.cu's header). */
#include "attention_flash.cuh"

/* ---- flash_mma_bf16_v1 ---- */
#define FL_BR 64
#define FL_BC 64

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
                mma_m16n8k16_bf16(s[n], a0, a1, a2, a3, *reinterpret_cast<const uint32_t *>(kr),
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
                mma_m16n8k16_bf16(o[i], a0, a1, a2, a3, b0, b1);
                mma_m16n8k16_bf16(o[i + 1], a0, a1, a2, a3, b2, b3);
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

    float o[HDP / 8][4], mrow[2], lrow[2], s[BK / 8][4];
    flash_rows_reset<HDP>(o, mrow, lrow);

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
                    mma_m16n8k16_bf16(s[2 * np], a0, a1, a2, a3, b0, b1);
                    mma_m16n8k16_bf16(s[2 * np + 1], a0, a1, a2, a3, b2, b3);
                }
            }
            flash_tile_softmax<HDP, BK>(s, o, mrow, lrow, kb, qpos0, qpos1, diag, sl2, tq);
        }
        if (active) flash_tile_pv<HDP, BK, LD>(s, o, Vb, lane);
    }
    flash_store_rows<HDP>(out, o, lrow, qb + w * 16 + g, T, NH, h, HD, tq);
}

int flash_v3_ok(int64_t T, int64_t HD, enum q3n_compute_dtype dt)
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

/* The launchers the dispatch in attention.cu calls: HD padded to 64, 128 or 256. */
cudaError_t flash_v2_launch(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                            int64_t NH, int64_t NKV, int64_t HD, float scale, cudaStream_t stream)
{
    if (HD <= 64) return launch_flash<64>(out, q, kc, vc, T, pos0, NH, NKV, HD, scale, stream);
    if (HD <= 128) return launch_flash<128>(out, q, kc, vc, T, pos0, NH, NKV, HD, scale, stream);
    return launch_flash<256>(out, q, kc, vc, T, pos0, NH, NKV, HD, scale, stream);
}

cudaError_t flash_v3_launch(void *out, const void *q, const void *kc, const void *vc, int64_t T, int64_t pos0,
                            int64_t NH, int64_t NKV, int64_t HD, cudaStream_t stream)
{
    if (HD <= 64) return launch_flash_v3<64, 8, 64>(out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
    if (HD <= 128) return launch_flash_v3<128, 8, 64>(out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
    return launch_flash_v3<256, 8, 64>(out, q, kc, vc, T, pos0, NH, NKV, HD, stream);
}
