/* attention.cu — gated full attention: q/k norm + partial RoPE + cache write, causal GQA
 * softmax attention, and the sigmoid output gate (cuda twins of ref/attention.c).
 *
 * Two attention kernels; cuda_attention_kernel() names the one that runs:
 *  - flash_mma_bf16_v2 (bf16, T > 1): FlashAttention-2 style, one warp per 16 query rows,
 *    64-key tiles in shared memory, QK^T and PV on bf16 tensor cores (mma.sync m16n8k16) with
 *    float32 accumulators, online softmax in float32 registers, V fragments by ldmatrix.trans
 *    (v1 gathered them with 16-bit loads). HD padded to 64/128/256.
 *  - rows_v1 (f32 mode, and bf16 decode T = 1): one block per (query, head, key split), warp-per-key
 *    dot products, online softmax in float32; decode splits the keys over blocks and a combine
 *    kernel merges the partial (max, sum, acc) in split order. Deterministic: no atomics. */
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
    if (dt == Q3N_COMPUTE_BF16 && T > 1 && HD <= 256) return "flash_mma_bf16_v2";
    return T == 1 ? "rows_v1(split-K decode)" : "rows_v1";
}

extern "C" int64_t cuda_attention_scratch(int64_t T, int64_t NH, int64_t HD, int64_t S)
{
    if (T != 1) return 0;
    return NH * ((S + ROWS_SPLIT - 1) / ROWS_SPLIT) * (HD + 2);
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
    (void)old;
    Q3N_REQUIRE(T >= 0 && pos0 >= 0 && NH > 0 && NKV > 0 && NH % NKV == 0 && HD > 0 && HD <= 128 * ROWS_MAXD);
    Q3N_REQUIRE(T * NH <= INT32_MAX);
    if (T == 0) return Q3N_OK;
    const float scale = 1.0f / sqrtf((float)HD);
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
    return rows_launch(d_out, d_q, d_kc, d_vc, d_scratch, T, pos0, NULL, pos0 + T, NH, NKV, HD, dt, stream, err);
}

extern "C" enum q3n_status cuda_attention_decode_dpos(void *d_out, const void *d_q, const void *d_kc,
                                                      const void *d_vc, float *d_scratch, const int64_t *d_pos,
                                                      int64_t S_max, int64_t NH, int64_t NKV, int64_t HD,
                                                      enum q3n_compute_dtype dt, cudaStream_t stream,
                                                      struct q3n_error *err)
{
    Q3N_REQUIRE(d_pos != NULL && S_max > 0 && NH > 0 && NKV > 0 && NH % NKV == 0 && HD > 0 && HD <= 128 * ROWS_MAXD);
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
