/* attention.cu — gated full attention: q/k norm + partial RoPE + cache write, causal GQA
 * softmax attention, and the sigmoid output gate (cuda twins of ref/attention.c).
 *
 * Attention kernels; cuda_attention_kernel() names the one that runs:
 *  - flash_wgmma_bf16_v8 (as v3, on compute capability 9.0; attention_flash_ov.cu): v5 with each
 *    warpgroup's P V of the previous tile running during its softmax of the next; bitwise v3
 *    (dev/test_attn2); 24-27 % faster than v5 on an H100 (session 14).
 *  - flash_wgmma_bf16_v5 (there, old = 4; attention_flash_wgmma.cu; the default before v8): v3
 *    with S = Q K^T and P V on Hopper wgmma (P from registers, Q/K/V in swizzled shared memory);
 *    bitwise v3.
 *  - flash_wgmma_bf16_v7 (there, old = 6): v5 with the two warpgroups taking turns on the tensor
 *    cores inside each tile (named barriers); bitwise v3, but 5 % slower than v5 on an H100.
 *  - flash_wgmma_bf16_v4 (there, old = 3): only S = Q K^T on wgmma; bitwise v3.
 *  - flash_wgmma_bf16_v6 (there, old = 5; attention_flash_ws.cu): v5's products with the K/V copies
 *    in a producer warpgroup meeting the consumers at mbarriers; bitwise v3, but 6 % slower than
 *    v5 on an H100 (kept as the measured alternative: fast/cuda/NOTES.md, session 4).
 *  - flash_mma_bf16_v3 (bf16, T > 1, HD % 8 == 0, HD <= 256; other devices, and old = 2):
 *    128 queries per block (8 warps of 16 rows), cp.async double-buffered 64-key K/V tiles,
 *    ldmatrix fragments, mma.sync m16n8k16 with float32 accumulators, base-2 online softmax in
 *    float32, causal tile skipping per warp.
 *  - flash_mma_bf16_v2 (other bf16 shapes with T > 1, and cuda_attention_forward_ver(old = 1)):
 *    FlashAttention-2 style, 64 queries per block, 64-key tiles loaded synchronously, V fragments by
 *    ldmatrix.trans. HD padded to 64/128/256.
 *  - decode_split_bf16_v4 / _v3 (bf16 T = 1, HD 128 or 256; attention_decode.cu): split-K over 64-
 *    (v4) or 128-key (v3) blocks sharing each K/V row between the query heads of a KV group,
 *    combine kernel in split order; cuda_attention_decode_kernel names the one that runs.
 *  - rows_v1 (f32 mode, other bf16 decode shapes, old = 1): one block per (query, head, key split),
 *    warp-per-key dot products, online softmax in float32; decode splits the keys over blocks and a
 *    combine kernel merges the partial (max, sum, acc) in split order.
 * All deterministic (no atomics). The *_dpos launchers read the decode position on the device (one
 * CUDA graph serves every step) and run the same kernels as the pos0 launchers.
 * This file: q/k prep, rows_v1, the dispatch and the output gate; the flash kernels are in
 * attention_flash.cu, the split-K decode kernel in attention_decode.cu (attention_kernels.cuh). */
#include "attention_kernels.cuh"

/* ---- q/k norm + partial RoPE + cache write ---- */
/* Partial RoPE of element d < rot of a normed row xs (transformers' rotate_half form, pair i = d mod
 * rot / 2): y cos(pos theta^(-2i/rot)) + rh sin(..), rh = -xs[d + half] below half, xs[d - half]
 * above, each product and the sum rounded to the activation type as transformers does. I: the index
 * type (int64 in v1, int in v2: the same values, so the same float operations and bits). */
template <typename I, typename T>
__device__ __forceinline__ void rope_cs(float &c, float &s, I i, I rot, int64_t pos, float theta, const T *like)
{
    const float inv = 1.0f / powf(theta, (float)(2 * i) / (float)rot);
    const float ang = (float)pos * inv;
    c = rnd(cosf(ang), like);
    s = rnd(sinf(ang), like);
}
template <typename I, typename T>
__device__ __forceinline__ float rope_apply(float y, const float *xs, I d, I half, float c, float s, const T *like)
{
    const float rh = d < half ? -xs[d + half] : xs[d - half];
    return rnd(rnd(y * c, like) + rnd(rh * s, like), like);
}
template <typename I, typename T>
__device__ __forceinline__ float rope_elem(float y, const float *xs, I d, I half, I rot, int64_t pos, float theta,
                                           const T *like)
{
    float c, s;
    rope_cs(c, s, d % half, rot, pos, theta, like);
    return rope_apply(y, xs, d, half, c, s, like);
}

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
        const float y = d < rot ? rope_elem<int64_t>(xs[d], xs, d, half, rot, pos, theta, src) : xs[d];
        st(dst + d, y);
    }
    if (!isq)
        for (int64_t d = threadIdx.x; d < HD; d += blockDim.x)
            vc[(pos * NKV + hh) * HD + d] = v[(t * NKV + hh) * HD + d];
}

/* v2 (bf16, HD <= 256): one warp per (token, head) row, 8 rows per block, where v1 spends a
 * 128-thread block and three barriers on each row (~18 rows per token, latency-bound: 172 us at the
 * real dims' T = 4096, ncu session 8). Lane l holds the elements l + 32 m, all loaded before the
 * sum; warp_block_sum_sq<4> is block_sum over v1's 128 threads, and every element goes through
 * v1's float operations in v1's order, so v2 is bitwise v1 (dev/test_kernels). The normed row
 * sits in the warp's shared row for RoPE's partner element (d +- rot / 2). */
#define QKP2_ROWS 8
/* Row `slot` of token t (slot < NH: q head slot, else k head slot - NH), by one warp, its normed
 * values in yw (shared, 32 NM floats). cs_c / cs_s: the token's RoPE cosines and sines by pair
 * (v3's table), or NULL: each element computes its own (v2). The same float operations either way. */
template <int NM>
__device__ __forceinline__ void qk_prep_row(int t, int slot, float *yw, const float *cs_c, const float *cs_s,
                                            bf16 *qo, bf16 *qn, bf16 *kc, bf16 *vc, bf16 *kn, const bf16 *qg,
                                            const bf16 *k, const bf16 *v, const float *qw, const float *kw,
                                            int64_t pos0, int NH, int NKV, int HD, int rot, float theta, float eps)
{
    const int lane = threadIdx.x & 31;
    const int isq = slot < NH, hh = isq ? slot : slot - NH;
    const bf16 *src = isq ? qg + ((int64_t)t * NH + hh) * 2 * HD : k + ((int64_t)t * NKV + hh) * HD;
    const float *w = isq ? qw : kw;
    float x[NM];
#pragma unroll
    for (int m = 0; m < NM; m++) {
        const int d = lane + 32 * m;
        x[m] = d < HD ? ld(src + d) : 0.0f;
    }
    const float tot = warp_block_sum_sq<4, NM>(x, HD, lane);
    const float r = 1.0f / sqrtf(tot / (float)HD + eps);
    bf16 *nout = isq ? (qn ? qn + ((int64_t)t * NH + hh) * HD : nullptr)
                     : (kn ? kn + ((int64_t)t * NKV + hh) * HD : nullptr);
#pragma unroll
    for (int m = 0; m < NM; m++) {
        const int d = lane + 32 * m;
        if (d < HD) {
            x[m] = rnd(x[m] * r * (1.0f + w[d]), src);
            yw[d] = x[m];
            if (nout) st(nout + d, x[m]);
        }
    }
    __syncwarp();
    const int64_t pos = pos0 + t;
    const int half = rot / 2;
    bf16 *dst = isq ? qo + ((int64_t)t * NH + hh) * HD : kc + (pos * NKV + hh) * HD;
#pragma unroll
    for (int m = 0; m < NM; m++) {
        const int d = lane + 32 * m;
        if (d >= HD) continue;
        float y = x[m];
        if (d < rot)
            y = cs_c ? rope_apply<int>(x[m], yw, d, half, cs_c[d % half], cs_s[d % half], src)
                     : rope_elem<int>(x[m], yw, d, half, rot, pos, theta, src);
        st(dst + d, y);
    }
    if (!isq)
#pragma unroll
        for (int m = 0; m < NM; m++) {
            const int d = lane + 32 * m;
            if (d < HD) vc[(pos * NKV + hh) * HD + d] = v[((int64_t)t * NKV + hh) * HD + d];
        }
    __syncwarp(); /* yw is reused by the warp's next row (v3) */
}

#define QKP_ARGS_DECL                                                                                                 \
    bf16 *qo, bf16 *qn, bf16 *kc, bf16 *vc, bf16 *kn, const bf16 *qg, const bf16 *k, const bf16 *v, const float *qw, \
        const float *kw, int64_t pos0, const int64_t *dpos, int NH, int NKV, int HD, int rot, float theta, float eps
#define QKP_ROW_ARGS qo, qn, kc, vc, kn, qg, k, v, qw, kw, pos0, NH, NKV, HD, rot, theta, eps

template <int NM>
__global__ void __launch_bounds__(32 * QKP2_ROWS) qk_prep_v2_kernel(QKP_ARGS_DECL, int rows)
{
    __shared__ float ys[QKP2_ROWS][32 * NM];
    if (dpos) pos0 = *dpos;
    const int wi = threadIdx.x >> 5, row = blockIdx.x * QKP2_ROWS + wi;
    if (row >= rows) return; /* whole warps: only __syncwarp below */
    const int t = row / (NH + NKV), slot = row - t * (NH + NKV);
    qk_prep_row<NM>(t, slot, ys[wi], nullptr, nullptr, QKP_ROW_ARGS);
}

/* v3 (bf16, HD <= 256, session 12): a block per token, QKP3_WARPS warps taking its NH + NKV rows in
 * turn. The RoPE angle depends on the position and the pair only, so the block computes the token's
 * rot / 2 (cos, sin) pairs once (rope_cs: the same powf, division, cosf and sinf as rope_elem) where v2
 * computes them for every element of every head (18 rows x 64 elements a token at the real dims:
 * ~150 instructions each). Every element goes through v2's operations: bitwise v2 (dev/test_kernels). */
#define QKP3_WARPS 6

/* v4 (bf16, HD % 8 == 0, 16-byte aligned rows; session 13): v3's block per token with every row
 * moved as 16-byte vectors. Lane l holds the elements 8 l .. 8 l + 7 where v3 holds l + 32 m, read by
 * one 16-byte load where v3 issues 8 two-byte loads (ncu, session 12: v3 84 us at T = 4096 for ~75 MB,
 * ~0.9 TB/s). The sum of squares still runs over v3's layout (the row passes through the warp's shared
 * row, lane l reading the elements l + 32 m), and every element goes through v3's float operations:
 * bitwise v3 (dev/test_kernels). */
template <int NM>
__device__ __forceinline__ void qk_prep_row16(int t, int slot, float *yw, const float *cs_c, const float *cs_s,
                                              bf16 *qo, bf16 *qn, bf16 *kc, bf16 *vc, bf16 *kn, const bf16 *qg,
                                              const bf16 *k, const bf16 *v, const float *qw, const float *kw,
                                              int64_t pos0, int NH, int NKV, int HD, int rot, float theta, float eps)
{
    const int lane = threadIdx.x & 31, d0 = 8 * lane, mine = d0 < HD;
    const int isq = slot < NH, hh = isq ? slot : slot - NH;
    const bf16 *src = isq ? qg + ((int64_t)t * NH + hh) * 2 * HD : k + ((int64_t)t * NKV + hh) * HD;
    const float *w = isq ? qw : kw;
    float x[8];
    if (mine) {
        unpack8_bf16(x, *reinterpret_cast<const uint4 *>(src + d0));
#pragma unroll
        for (int i = 0; i < 8; i++) yw[d0 + i] = x[i];
    }
    __syncwarp();
    float xv[NM]; /* v3's layout: xv[m] = element lane + 32 m */
#pragma unroll
    for (int m = 0; m < NM; m++) {
        const int d = lane + 32 * m;
        xv[m] = d < HD ? yw[d] : 0.0f;
    }
    const float tot = warp_block_sum_sq<4, NM>(xv, HD, lane);
    const float r = 1.0f / sqrtf(tot / (float)HD + eps);
    __syncwarp(); /* every lane has read x from yw: the normed row replaces it */
    bf16 *nout = isq ? (qn ? qn + ((int64_t)t * NH + hh) * HD : nullptr)
                     : (kn ? kn + ((int64_t)t * NKV + hh) * HD : nullptr);
    if (mine) {
        const float4 w0 = *reinterpret_cast<const float4 *>(w + d0), w1 = *reinterpret_cast<const float4 *>(w + d0 + 4);
        const float wv[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
        for (int i = 0; i < 8; i++) {
            x[i] = rnd(x[i] * r * (1.0f + wv[i]), src);
            yw[d0 + i] = x[i];
        }
        if (nout) *reinterpret_cast<uint4 *>(nout + d0) = pack8_bf16(x);
    }
    __syncwarp();
    const int64_t pos = pos0 + t;
    const int half = rot / 2;
    if (mine) {
        float y[8];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int d = d0 + i;
            y[i] = d < rot ? rope_apply<int>(x[i], yw, d, half, cs_c[d % half], cs_s[d % half], src) : x[i];
        }
        bf16 *dst = isq ? qo + ((int64_t)t * NH + hh) * HD : kc + (pos * NKV + hh) * HD;
        *reinterpret_cast<uint4 *>(dst + d0) = pack8_bf16(y);
        if (!isq)
            *reinterpret_cast<uint4 *>(vc + (pos * NKV + hh) * HD + d0) =
                *reinterpret_cast<const uint4 *>(v + ((int64_t)t * NKV + hh) * HD + d0);
    }
    __syncwarp(); /* yw is reused by the warp's next row */
}

/* v3 (ROW16 false) and v4 (true): a block per token, its RoPE table first, then the warps take the
 * token's NH + NKV rows in turn. */
template <int NM, bool ROW16>
__global__ void __launch_bounds__(32 * QKP3_WARPS) qk_prep_token_kernel(QKP_ARGS_DECL)
{
    __shared__ __align__(16) float ys[QKP3_WARPS][32 * NM];
    __shared__ float cs[2][16 * NM]; /* half = rot / 2 <= HD / 2 <= 16 NM */
    if (dpos) pos0 = *dpos;
    const int t = blockIdx.x, wi = threadIdx.x >> 5, half = rot / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) rope_cs<int>(cs[0][i], cs[1][i], i, rot, pos0 + t, theta, qg);
    __syncthreads();
    for (int slot = wi; slot < NH + NKV; slot += QKP3_WARPS) {
        if constexpr (ROW16)
            qk_prep_row16<NM>(t, slot, ys[wi], cs[0], cs[1], QKP_ROW_ARGS);
        else
            qk_prep_row<NM>(t, slot, ys[wi], cs[0], cs[1], QKP_ROW_ARGS);
    }
}
#undef QKP_ROW_ARGS
#undef QKP_ARGS_DECL

/* Default versions of the q/k prep and the output gate where v2 applies. v2 of both (session 9) was
 * checked bitwise v1 on an H100 in session 10 (dev/test_kernels) and timed there: one T = 4096
 * prefill under ncu (base clocks, fast/cuda/dev/logs/session10_ncu4096.log) q/k prep 171.7 -> 110.1
 * us, gate 100.4 -> 33.2 us; `BENCH sigmoid_gate` 0.094 -> 0.037 ms. Prefill only (T > 1): the
 * builds with v2 everywhere decoded 1 % slower (0.578 -> 0.584 ms/token, session10_ab.log), and one
 * token is too few rows for v2's warp per (token, head) or 8 elements per thread to pay. */
#ifndef QK_PREP_DEFAULT_VER /* EXTRA_NVCCFLAGS=-DQK_PREP_DEFAULT_VER=1 keeps v1, =2 v2 */
#define QK_PREP_DEFAULT_VER 4 /* session 13: v4, v3 with 16-byte rows */
#endif
/* The wgmma flash prefill kernel on compute capability 9.0: v5 (attention_flash_wgmma.cu) or v8
 * (attention_flash_ov.cu: v5 with each warpgroup's P V of the previous tile overlapping its
 * softmax; bitwise v5). EXTRA_NVCCFLAGS=-DFLASH_WGMMA_DEFAULT_VER=5 keeps v5. */
#ifndef FLASH_WGMMA_DEFAULT_VER
#define FLASH_WGMMA_DEFAULT_VER 8
#endif
#ifndef SIGMOID_GATE_DEFAULT_VER /* EXTRA_NVCCFLAGS=-DSIGMOID_GATE_DEFAULT_VER=1 keeps v1 */
#define SIGMOID_GATE_DEFAULT_VER 2
#endif

static int qk_prep_v2_ok(int64_t HD, enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 && HD <= 256;
}

/* v4 also needs 16-byte rows: HD % 8 == 0 (the session's buffers are 256-byte aligned). */
extern "C" int cuda_attn_qk_prep_ver_for(int64_t T, int64_t HD, enum q3n_compute_dtype dt)
{
    if (QK_PREP_DEFAULT_VER < 2 || T <= 1 || !qk_prep_v2_ok(HD, dt)) return 1;
    return QK_PREP_DEFAULT_VER == 4 && HD % 8 != 0 ? 3 : QK_PREP_DEFAULT_VER;
}

static int qk_prep_v4_aligned(const void *q, const void *qn, const void *kc, const void *vc, const void *kn,
                              const void *qg, const void *k, const void *v, const float *qw, const float *kw)
{
    const uintptr_t a = (uintptr_t)q | (uintptr_t)qn | (uintptr_t)kc | (uintptr_t)vc | (uintptr_t)kn |
                        (uintptr_t)qg | (uintptr_t)k | (uintptr_t)v | (uintptr_t)qw | (uintptr_t)kw;
    return (a & 15) == 0;
}

/* d_pos NULL: positions pos0..; else one token (T = 1) at position *d_pos. */
static enum q3n_status qk_prep_launch(void *d_q, void *d_qn, void *d_kc, void *d_vc, void *d_kn, const void *d_qg,
                                      const void *d_k, const void *d_v, const float *d_qnorm_w,
                                      const float *d_knorm_w, int64_t T, int64_t pos0, const int64_t *d_pos,
                                      int64_t NH, int64_t NKV, int64_t HD, int64_t rot, double theta, double eps,
                                      int ver, enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && pos0 >= 0 && NH > 0 && NKV > 0 && NH % NKV == 0 && HD > 0 && rot >= 0 && rot <= HD);
    Q3N_REQUIRE(rot % 2 == 0 && T * (NH + NKV) <= INT32_MAX - QKP2_ROWS && ver >= 0 && ver <= 4);
    if (ver >= 2 && !qk_prep_v2_ok(HD, dt))
        return q3n_error_set(err, Q3N_ERR_USAGE, "cuda attention qk_prep v%d: needs bf16 and HD <= 256 (got HD=%lld)",
                             ver, (long long)HD);
    const int aligned = qk_prep_v4_aligned(d_q, d_qn, d_kc, d_vc, d_kn, d_qg, d_k, d_v, d_qnorm_w, d_knorm_w);
    if (ver == 4 && (HD % 8 != 0 || !aligned))
        return q3n_error_set(err, Q3N_ERR_USAGE, "cuda attention qk_prep v4: needs HD %% 8 == 0 (got %lld) and "
                             "16-byte aligned buffers", (long long)HD);
    if (T == 0) return Q3N_OK;
    if (ver == 0) ver = cuda_attn_qk_prep_ver_for(T, HD, dt);
    if (ver == 4 && !aligned) ver = 3; /* a caller's offset view: v3, the same bits */
    if (ver >= 2) {
        const int rows = (int)(T * (NH + NKV));
#define QKP2_ARGS                                                                                                     \
    (bf16 *)d_q, (bf16 *)d_qn, (bf16 *)d_kc, (bf16 *)d_vc, (bf16 *)d_kn, (const bf16 *)d_qg, (const bf16 *)d_k,     \
        (const bf16 *)d_v, d_qnorm_w, d_knorm_w, pos0, d_pos, (int)NH, (int)NKV, (int)HD, (int)rot, (float)theta,     \
        (float)eps
        if (ver >= 3) { /* a block per token; 4 (8) elements of a row per lane up to HD 128 (256) */
            Q3N_REQUIRE(T <= INT32_MAX);
            const auto kernel = ver == 4 ? (HD <= 128 ? qk_prep_token_kernel<4, true> : qk_prep_token_kernel<8, true>)
                                         : (HD <= 128 ? qk_prep_token_kernel<4, false> : qk_prep_token_kernel<8, false>);
            kernel<<<(unsigned)T, 32 * QKP3_WARPS, 0, stream>>>(QKP2_ARGS);
            CU_LAUNCHED(ver == 4 ? "attention qk_prep_token_kernel (v4)" : "attention qk_prep_token_kernel (v3)");
            return Q3N_OK;
        }
        const unsigned grid = cdiv(rows, QKP2_ROWS);
        if (HD <= 128)
            qk_prep_v2_kernel<4><<<grid, 32 * QKP2_ROWS, 0, stream>>>(QKP2_ARGS, rows);
        else
            qk_prep_v2_kernel<8><<<grid, 32 * QKP2_ROWS, 0, stream>>>(QKP2_ARGS, rows);
#undef QKP2_ARGS
        CU_LAUNCHED("attention qk_prep_v2_kernel");
        return Q3N_OK;
    }
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
                          HD, rot, theta, eps, 0, dt, stream, err);
}

extern "C" enum q3n_status cuda_attn_qk_prep_ver(void *d_q, void *d_qn, void *d_kc, void *d_vc, void *d_kn,
                                                 const void *d_qg, const void *d_k, const void *d_v,
                                                 const float *d_qnorm_w, const float *d_knorm_w, int64_t T,
                                                 int64_t pos0, int64_t NH, int64_t NKV, int64_t HD, int64_t rot,
                                                 double theta, double eps, int ver, enum q3n_compute_dtype dt,
                                                 cudaStream_t stream, struct q3n_error *err)
{
    return qk_prep_launch(d_q, d_qn, d_kc, d_vc, d_kn, d_qg, d_k, d_v, d_qnorm_w, d_knorm_w, T, pos0, NULL, NH, NKV,
                          HD, rot, theta, eps, ver, dt, stream, err);
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
                          HD, rot, theta, eps, 0, dt, stream, err);
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
    if (flash_v4_ok(T, HD, dt)) return FLASH_WGMMA_DEFAULT_VER == 8 ? "flash_wgmma_bf16_v8" : "flash_wgmma_bf16_v5";
    if (flash_v3_ok(T, HD, dt)) return "flash_mma_bf16_v3";
    if (dt == Q3N_COMPUTE_BF16 && T > 1 && HD <= 256) return "flash_mma_bf16_v2";
    if (T == 1 && decode_v3_ok(HD, dt)) return "decode_split_bf16 (v4 or v3 by head group)";
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
    if ((!old || (old >= 3 && old <= 7)) && flash_v4_ok(T, HD, dt)) {
        const int ver = old ? old + 1 : FLASH_WGMMA_DEFAULT_VER;
        cudaError_t (*launch)(void *, const void *, const void *, const void *, int64_t, int64_t, int64_t, int64_t,
                              int64_t, cudaStream_t) = ver == 4   ? flash_v4_launch
                                                       : ver == 6 ? flash_v6_launch
                                                       : ver == 7 ? flash_v7_launch
                                                       : ver == 8 ? flash_v8_launch
                                                                  : flash_v5_launch;
        CU_CHECK(launch(d_out, d_q, d_kc, d_vc, T, pos0, NH, NKV, HD, stream));
        CU_LAUNCHED("flash_wgmma_bf16 (v4 .. v8)");
        return Q3N_OK;
    }
    if ((!old || old == 2) && flash_v3_ok(T, HD, dt)) {
        CU_CHECK(flash_v3_launch(d_out, d_q, d_kc, d_vc, T, pos0, NH, NKV, HD, stream));
        CU_LAUNCHED("flash_v3_kernel");
        return Q3N_OK;
    }
    if (dt == Q3N_COMPUTE_BF16 && T > 1 && HD <= 256) {
        CU_CHECK(flash_v2_launch(d_out, d_q, d_kc, d_vc, T, pos0, NH, NKV, HD, scale, stream));
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

/* ---- sigmoid output gate ----
 * out[t, h, d] = T(x[t, h, d] * T(sigmoid(gate[(t NH + h) ldg + d]))).
 * v1: one element per thread (any dtype and shape). v2 (bf16, HD % 8 == 0, ldg % 8 == 0, 16-byte
 * aligned buffers): eight elements per thread through 16-byte loads and stores, 32-bit indices;
 * the same float operations on each element, so bitwise v1 (dev/test_kernels). v1 spent about
 * 100 us on the real dims' T = 4096 (ncu, session 8) against ~35 us of HBM traffic: 64-bit divides
 * and 2-byte accesses. */
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

__global__ void __launch_bounds__(256) sigmoid_gate_v2_kernel(bf16 *__restrict__ out, const bf16 *__restrict__ x,
                                                              const bf16 *__restrict__ gate, int HD8, int ldg8,
                                                              int n8)
{
    const int i = blockIdx.x * 256 + threadIdx.x; /* the 8-element chunk i of out and x */
    if (i >= n8) return;
    const int th = i / HD8, c = i - th * HD8;     /* row th = t NH + h, chunk c of the head */
    const uint4 xv = reinterpret_cast<const uint4 *>(x)[i];
    const uint4 gv = reinterpret_cast<const uint4 *>(gate)[(int64_t)th * ldg8 + c];
    const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w}, gw[4] = {gv.x, gv.y, gv.z, gv.w};
    uint32_t ow[4];
#pragma unroll
    for (int u = 0; u < 4; u++) { /* word u: elements 2u (low half) and 2u + 1 (high half) */
        const float x0 = __uint_as_float(xw[u] << 16), x1 = __uint_as_float(xw[u] & 0xffff0000u);
        const float g0 = __uint_as_float(gw[u] << 16), g1 = __uint_as_float(gw[u] & 0xffff0000u);
        const float s0 = __bfloat162float(__float2bfloat16_rn(sigmoid_f(g0)));
        const float s1 = __bfloat162float(__float2bfloat16_rn(sigmoid_f(g1)));
        const __nv_bfloat162 o = __floats2bfloat162_rn(x0 * s0, x1 * s1);
        ow[u] = *reinterpret_cast<const uint32_t *>(&o);
    }
    reinterpret_cast<uint4 *>(out)[i] = make_uint4(ow[0], ow[1], ow[2], ow[3]);
}

static int sigmoid_gate_v2_ok(const void *out, const void *x, const void *gate, int64_t T, int64_t NH, int64_t HD,
                              int64_t ldg, enum q3n_compute_dtype dt)
{
    const int64_t n8 = T * NH * HD / 8;
    return dt == Q3N_COMPUTE_BF16 && HD % 8 == 0 && ldg % 8 == 0 && ((uintptr_t)out & 15) == 0 &&
           ((uintptr_t)x & 15) == 0 && ((uintptr_t)gate & 15) == 0 && n8 <= INT32_MAX - 256 &&
           ldg / 8 <= INT32_MAX;
}

extern "C" int cuda_sigmoid_gate_ver_for(const void *d_out, const void *d_x, const void *d_gate, int64_t T, int64_t NH,
                                         int64_t HD, int64_t ldg, enum q3n_compute_dtype dt)
{
    return SIGMOID_GATE_DEFAULT_VER == 2 && T > 1 && sigmoid_gate_v2_ok(d_out, d_x, d_gate, T, NH, HD, ldg, dt) ? 2 : 1;
}

extern "C" enum q3n_status cuda_sigmoid_gate_forward_ver(void *d_out, const void *d_x, const void *d_gate, int64_t T,
                                                         int64_t NH, int64_t HD, int64_t ldg, int ver,
                                                         enum q3n_compute_dtype dt, cudaStream_t stream,
                                                         struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && NH > 0 && HD > 0 && ldg >= HD && ver >= 0 && ver <= 2);
    const int64_t n = T * NH * HD;
    if (n == 0) return Q3N_OK;
    const int v2 = sigmoid_gate_v2_ok(d_out, d_x, d_gate, T, NH, HD, ldg, dt);
    if (ver == 2 && !v2)
        return q3n_error_set(err, Q3N_ERR_USAGE,
                             "cuda_sigmoid_gate v2: needs bf16, HD and ldg multiples of 8, 16-byte aligned buffers");
    if (ver == 0) ver = cuda_sigmoid_gate_ver_for(d_out, d_x, d_gate, T, NH, HD, ldg, dt);
    if (ver == 2) {
        const int n8 = (int)(n / 8);
        sigmoid_gate_v2_kernel<<<cdiv(n8, 256), 256, 0, stream>>>((bf16 *)d_out, (const bf16 *)d_x,
                                                                  (const bf16 *)d_gate, (int)(HD / 8),
                                                                  (int)(ldg / 8), n8);
        CU_LAUNCHED("sigmoid_gate_v2_kernel");
        return Q3N_OK;
    }
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

extern "C" enum q3n_status cuda_sigmoid_gate_forward(void *d_out, const void *d_x, const void *d_gate, int64_t T,
                                                     int64_t NH, int64_t HD, int64_t ldg, enum q3n_compute_dtype dt,
                                                     cudaStream_t stream, struct q3n_error *err)
{
    return cuda_sigmoid_gate_forward_ver(d_out, d_x, d_gate, T, NH, HD, ldg, 0, dt, stream, err);
}
