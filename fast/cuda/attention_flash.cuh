/* attention_flash.cuh — what the flash prefill kernels v3 (attention_flash.cu, mma.sync) and v4
 * (attention_flash_wgmma.cu, S = Q K^T on wgmma) share: fragment helpers, the padded-tile loader,
 * and the per-tile online softmax and P V of one warp's 16 query rows (internal to fast/cuda). */
#ifndef Q3N_CUDA_ATTENTION_FLASH_CUH
#define Q3N_CUDA_ATTENTION_FLASH_CUH

#include "attention_kernels.cuh"

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

/* A warp's running state over its 16 query rows before any key: o (flash_tile_pv's accumulator
 * layout) zero, the base-2 running maximum mrow of rows g and g + 8 at -inf, their sums lrow 0. */
template <int HDP>
__device__ __forceinline__ void flash_rows_reset(float (&o)[HDP / 8][4], float (&mrow)[2], float (&lrow)[2])
{
#pragma unroll
    for (int i = 0; i < HDP / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    mrow[0] = mrow[1] = -INFINITY;
    lrow[0] = lrow[1] = 0.0f;
}

/* One warp, one key tile: s [BK/8][4] holds the raw scores S = Q K^T of the warp's rows (the
 * mma.sync m16n8 accumulator layout: row g / g + 8, keys kb + 8 n + 2 tq + e % 2). Keys past a
 * row's position (diag tiles) become -inf; online softmax in base 2: m = max(m, max_j s * sl2),
 * p = 2^(s sl2 - m) (into s), l = l 2^(m_old - m) + sum p; alpha = 2^(m_old - m) of rows g and
 * g + 8, by which the caller scales o (flash_rescale_o) before it adds this tile's P V. */
template <int BK>
__device__ __forceinline__ void flash_tile_probs(float (&s)[BK / 8][4], float (&alpha)[2], float (&mrow)[2],
                                                 float (&lrow)[2], int64_t kb, int64_t qpos0, int64_t qpos1, bool diag,
                                                 float sl2, int tq)
{
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
    float rs[2] = {0.0f, 0.0f};
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
}

/* o *= alpha: rows g (o[.][0..1]) and g + 8 (o[.][2..3]) of the warp's 16. */
template <int HDP>
__device__ __forceinline__ void flash_rescale_o(float (&o)[HDP / 8][4], const float (&alpha)[2])
{
#pragma unroll
    for (int i = 0; i < HDP / 8; i++) {
        o[i][0] *= alpha[0];
        o[i][1] *= alpha[0];
        o[i][2] *= alpha[1];
        o[i][3] *= alpha[1];
    }
}

/* flash_tile_probs, then o *= alpha: the whole online-softmax step of one tile (v3 .. v7). */
template <int HDP, int BK>
__device__ __forceinline__ void flash_tile_softmax(float (&s)[BK / 8][4], float (&o)[HDP / 8][4], float (&mrow)[2],
                                                   float (&lrow)[2], int64_t kb, int64_t qpos0, int64_t qpos1,
                                                   bool diag, float sl2, int tq)
{
    float alpha[2];
    flash_tile_probs<BK>(s, alpha, mrow, lrow, kb, qpos0, qpos1, diag, sl2, tq);
    flash_rescale_o<HDP>(o, alpha);
}

/* o += bf16(P) V for the warp's 16 rows: P from s (flash_tile_softmax's p), V [BK][LD] bf16 in
 * shared memory through ldmatrix.trans, mma.sync m16n8k16 with float32 accumulators. */
template <int HDP, int BK, int LD>
__device__ __forceinline__ void flash_tile_pv(const float (&s)[BK / 8][4], float (&o)[HDP / 8][4], const bf16 *Vb,
                                              int lane)
{
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
            mma_m16n8k16_bf16(o[i], a0, a1, a2, a3, b0, b1);
            mma_m16n8k16_bf16(o[i + 1], a0, a1, a2, a3, b2, b3);
        }
    }
}

/* out[t, h, :] = bf16(o / l) for the warp's rows t0 (o[.][0..1], l[0]) and t0 + 8 (o[.][2..3], l[1]),
 * rows >= T and columns >= HD left alone; out is [T, NH, HD]. */
template <int HDP>
__device__ __forceinline__ void flash_store_rows(bf16 *out, const float (&o)[HDP / 8][4], const float (&lrow)[2],
                                                 int64_t t0, int64_t T, int64_t NH, int64_t h, int HD, int tq)
{
    const int64_t t1 = t0 + 8;
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

#endif
