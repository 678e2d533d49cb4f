/* moe_gemv.cu — the MoE block of a decode step (few rows) as two bandwidth-bound launches:
 * gate_up + SwiGLU for the routed and shared experts, then down + weighted combine. Launchers
 * in cuda_ops.h (moe section); the v1 expert GEMV and the routing are in moe.cu. */
#include "common.cuh"
#include "moe_pack.h"

/* ---- expert GEMV v2 (decode; bandwidth-bound, no host round trip) ----
 * Two launches per MoE block, routed experts and the shared expert together:
 *  gate_up: one warp per output (row r, column i): g = W[e_r][i,:] . x, u = W[e_r][W+i,:] . x
 *           (16-byte weight loads, 8 per lane in flight at D = 2048), h = T(T(silu(T(g))) * T(u));
 *           the shared expert's columns follow the routed ones (row t, its own width Ws), then
 *           one warp per token for the shared-expert gate logit.
 *  down+combine: one block per output (token t, d), 16 lanes per slot (the K routed experts,
 *           then the shared one; 4 weight loads per lane in flight at I = 512),
 *           y_j = T(Wdn[e_j][d,:] . h_j); thread 0 then sums T(w_j y_j) for j ascending, as
 *           cuda_moe_combine does, and adds T(T(sigmoid(sg)) * s).
 * Warp sums use a fixed xor-shuffle tree: deterministic. The down+combine default is v3 below (the
 * same sums, more bytes in flight); v2 stays as cuda_moe_gemv2_down_combine_ver(ver = 2).
 * Packed experts (PK, moe_pack.h; bf16): the routed rows are read from the packed layout, chunk c
 * of row n at row_base(n) + k_offset(c): the same 8-k chunks in the same order, so the same bits
 * (the shared expert keeps its checkpoint layout). */
__device__ __forceinline__ void ld8(float *v, const bf16 *p)
{
    const uint4 u = *reinterpret_cast<const uint4 *>(p);
    const __nv_bfloat162 *b = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 f = __bfloat1622float2(b[i]);
        v[2 * i] = f.x;
        v[2 * i + 1] = f.y;
    }
}
__device__ __forceinline__ void ld8(float *v, const float *p)
{
    const float4 a = *reinterpret_cast<const float4 *>(p), b = *reinterpret_cast<const float4 *>(p + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
/* Partial dot of n (% 8 == 0) elements: this lane takes 8-element chunks lane0, lane0 + step, ...
 * (U chunks unrolled: U weight loads in flight per lane); PK: w is a packed row's base. */
template <int U, bool PK = false, typename T>
__device__ __forceinline__ float dot8(const T *w, const T *x, int n, int lane0, int step)
{
    float acc = 0.0f;
#pragma unroll U
    for (int c = lane0 * 8; c < n; c += step * 8) {
        float a[8], b[8];
        ld8(a, w + (PK ? q3n_pack_k_offset(c) : c));
        ld8(b, x + c);
#pragma unroll
        for (int i = 0; i < 8; i++) acc = fmaf(a[i], b[i], acc);
    }
    return acc;
}

template <typename T, bool PK = false>
__global__ void __launch_bounds__(256) moe_gemv_gu_kernel(T *h, T *hs, T *sg, const T *x, const int32_t *idx,
                                                          const T *Wgu, const T *Wsgu, const T *Wsg, int Tn, int K,
                                                          int D, int I, int Ws)
{
    const int lane = threadIdx.x & 31;
    const int64_t task = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5), routed = (int64_t)Tn * K * I,
                  shared = Wsgu ? (int64_t)Tn * Ws : 0;
    const T *wg, *wu, *xr;
    T *o;
    if (task < routed) {
        const int64_t r = task / I, i = task % I;
        const T *we = Wgu + (int64_t)idx[r] * 2 * I * D;
        if (PK)
            wg = we + q3n_pack_row_base((int)i, 2 * I, D / Q3N_PACK_K, 1),
            wu = we + q3n_pack_row_base(I + (int)i, 2 * I, D / Q3N_PACK_K, 1);
        else
            wg = we + i * D, wu = we + (I + i) * D;
        xr = x + (r / K) * D, o = h + task;
    } else if (task < routed + shared) {
        const int64_t s = task - routed;
        const int64_t t = s / Ws, i = s % Ws;
        wg = Wsgu + i * D, wu = Wsgu + (Ws + i) * D, xr = x + t * D, o = hs + s;
    } else {
        /* shared-expert gate logit sg[t] = T(x[t] . Wsg) (a [1, D] linear) */
        const int64_t t = task - routed - shared;
        if (!Wsg || t >= Tn) return;
        float v = dot8<8>(Wsg, x + t * D, D, lane, 32);
        for (int of = 16; of > 0; of >>= 1) v += __shfl_xor_sync(0xffffffffu, v, of);
        if (lane == 0) st(sg + t, v);
        return;
    }
    const bool pk = PK && task < routed; /* the shared expert's rows are not packed */
    float g = pk ? dot8<8, true>(wg, xr, D, lane, 32) : dot8<8>(wg, xr, D, lane, 32);
    float u = pk ? dot8<8, true>(wu, xr, D, lane, 32) : dot8<8>(wu, xr, D, lane, 32);
    for (int of = 16; of > 0; of >>= 1) {
        g += __shfl_xor_sync(0xffffffffu, g, of);
        u += __shfl_xor_sync(0xffffffffu, u, of);
    }
    if (lane == 0) {
        g = rnd(g, x), u = rnd(u, x);
        st(o, rnd(silu_f(g), x) * u);
    }
}

#define GEMV2_MAXK 63 /* K + the shared expert <= 64 slots, 2 per warp */
template <typename T>
__global__ void __launch_bounds__(1024) moe_gemv_dn_kernel(T *eo, T *mout, T *sout, const T *h, const T *hs,
                                                           const int32_t *idx, const float *wt, const T *Wdn,
                                                           const T *Wsdn, const T *sg, int K, int D, int I, int Ws)
{
    __shared__ float ys[64];
    const int lane = threadIdx.x & 31, j = (threadIdx.x >> 5) * 2 + (lane >> 4), gl = lane & 15;
    const int64_t task = blockIdx.x, t = task / D, d = task % D;
    const int S = K + (Wsdn ? 1 : 0); /* slots: K routed, then the shared expert */
    float v = 0.0f;
    if (j < K) {
        const int64_t r = t * K + j;
        v = dot8<4>(Wdn + ((int64_t)idx[r] * D + d) * I, h + r * I, I, gl, 16);
    } else if (j < S) {
        v = dot8<4>(Wsdn + d * Ws, hs + t * Ws, Ws, gl, 16);
    }
    for (int of = 8; of > 0; of >>= 1) v += __shfl_xor_sync(0xffffffffu, v, of);
    if (gl == 0 && j < S) ys[j] = rnd(v, h);
    __syncthreads();
    if (threadIdx.x != 0) return;
    float acc = 0.0f;
    for (int jj = 0; jj < K; jj++) acc += rnd(wt[t * K + jj] * ys[jj], h);
    const float e = rnd(acc, h);
    if (eo) st(eo + task, e);
    float m = e;
    if (Wsdn) {
        const float sv = ys[K], sgate = rnd(sigmoid_f(ld(sg + t)), h);
        if (sout) st(sout + task, sv);
        m = e + rnd(sgate * sv, h);
    }
    st(mout + task, m);
}

/* ---- down+combine v3: whole rows in flight, several outputs per block ----
 * Block (token t, DN3_DB = 8 consecutive outputs d0..d0+7), min(S, 16) warps, S = K (+1 shared)
 * slots; warp w takes slots j = w, w + nwarps, ..; its half-warp hf the DN3_R = 4 rows
 * d0 + 4 hf .. d0 + 4 hf + 3 of slot j's matrix (Wdn[e_j] or Wsdn). Per row the 16 lanes compute
 * exactly v2's partials (lane gl: 8-element chunks gl, gl + 16, .. ascending, fma over each chunk
 * in order) and v2's xor tree (8, 4, 2, 1), so y_j = T(row . h_j) has v2's bits; but the 4 rows'
 * chunks are loaded U rounds at a time before the first fma: U = 2 (default; 80 registers, 2 blocks of
 * 11 warps per SM) or U = 4 (ver 4: a whole 1 KB row per 16 lanes, 16 loads of 16 bytes in flight per
 * lane, 111 registers, 1 block per SM); v2 had 4 loads per lane. Threads 0..7 then combine output d0 + tid
 * as v2's thread 0 does (T(w_j y_j) summed for j ascending in float32, T(T(sigmoid(sg)) * s) added):
 * bitwise v2's outputs. */
#define DN3_DB 8
#define DN3_R 4
template <typename T> struct raw8;
template <> struct raw8<bf16> {
    uint4 a;
};
template <> struct raw8<float> {
    float4 a, b;
};
__device__ __forceinline__ raw8<bf16> ldraw(const bf16 *p) { return {__ldg(reinterpret_cast<const uint4 *>(p))}; }
__device__ __forceinline__ raw8<float> ldraw(const float *p)
{
    return {__ldg(reinterpret_cast<const float4 *>(p)), __ldg(reinterpret_cast<const float4 *>(p) + 1)};
}
__device__ __forceinline__ void cvt8(float *v, const raw8<bf16> &r)
{
    const __nv_bfloat162 *b = reinterpret_cast<const __nv_bfloat162 *>(&r.a);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 f = __bfloat1622float2(b[i]);
        v[2 * i] = f.x;
        v[2 * i + 1] = f.y;
    }
}
__device__ __forceinline__ void cvt8(float *v, const raw8<float> &r)
{
    v[0] = r.a.x, v[1] = r.a.y, v[2] = r.a.z, v[3] = r.a.w, v[4] = r.b.x, v[5] = r.b.y, v[6] = r.b.z, v[7] = r.b.w;
}

/* acc[r] = v2's 16-lane partial of lane gl for rows w + r*n (r < R) against x (n % 8 == 0): chunks
 * c = gl*8, gl*8 + 128, .. < n ascending; U chunks per row loaded before they are used. PK: w is
 * the packed base of the first row, and the R rows are consecutive rows of one tile (64 apart). */
template <bool PK, typename T>
__device__ __forceinline__ const T *row_chunk(const T *w, int r, int n, int c, int dc)
{
    return PK ? w + r * Q3N_PACK_K + q3n_pack_k_offset(c + dc) : w + (int64_t)r * n + c + dc;
}
template <int R, int U, bool PK = false, typename T>
__device__ __forceinline__ void dot8_rows(float *acc, const T *w, const T *x, int n, int gl)
{
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    int c = gl * 8;
    for (; c + (U - 1) * 128 < n; c += U * 128) {
        raw8<T> xr[U], wr[U][R];
#pragma unroll
        for (int m = 0; m < U; m++) {
            xr[m] = ldraw(x + c + m * 128);
#pragma unroll
            for (int r = 0; r < R; r++) wr[m][r] = ldraw(row_chunk<PK>(w, r, n, c, m * 128));
        }
#pragma unroll
        for (int m = 0; m < U; m++) {
            float b[8];
            cvt8(b, xr[m]);
#pragma unroll
            for (int r = 0; r < R; r++) {
                float a[8];
                cvt8(a, wr[m][r]);
#pragma unroll
                for (int i = 0; i < 8; i++) acc[r] = fmaf(a[i], b[i], acc[r]);
            }
        }
    }
    for (; c < n; c += 128) {
        float b[8];
        cvt8(b, ldraw(x + c));
#pragma unroll
        for (int r = 0; r < R; r++) {
            float a[8];
            cvt8(a, ldraw(row_chunk<PK>(w, r, n, c, 0)));
#pragma unroll
            for (int i = 0; i < 8; i++) acc[r] = fmaf(a[i], b[i], acc[r]);
        }
    }
}

template <typename T, int U, bool PK = false>
__global__ void __launch_bounds__(512, 1) moe_gemv_dn3_kernel(T *eo, T *mout, T *sout, const T *h, const T *hs,
                                                           const int32_t *idx, const float *wt, const T *Wdn,
                                                           const T *Wsdn, const T *sg, int K, int D, int I, int Ws)
{
    __shared__ float ys[GEMV2_MAXK + 1][DN3_DB];
    const int lane = threadIdx.x & 31, hf = lane >> 4, gl = lane & 15, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int nb = D / DN3_DB;
    const int64_t t = blockIdx.x / nb;
    const int db = (int)(blockIdx.x % nb) * DN3_DB, d0 = db + hf * DN3_R;
    const int S = K + (Wsdn ? 1 : 0); /* slots: K routed, then the shared expert */
    for (int j = w; j < S; j += nw) {
        float acc[DN3_R];
        if (j < K) {
            const int64_t r = t * K + j;
            if (PK) /* rows d0 .. d0 + 3 of one 256-row tile: d0 % 4 == 0 */
                dot8_rows<DN3_R, U, true>(acc, Wdn + (int64_t)idx[r] * D * I + q3n_pack_row_base(d0, D, I / Q3N_PACK_K, 0),
                                          h + r * I, I, gl);
            else
                dot8_rows<DN3_R, U>(acc, Wdn + ((int64_t)idx[r] * D + d0) * I, h + r * I, I, gl);
        } else {
            dot8_rows<DN3_R, U>(acc, Wsdn + (int64_t)d0 * Ws, hs + t * Ws, Ws, gl);
        }
#pragma unroll
        for (int r = 0; r < DN3_R; r++) {
            float v = acc[r];
            for (int of = 8; of > 0; of >>= 1) v += __shfl_xor_sync(0xffffffffu, v, of);
            if (gl == 0) ys[j][hf * DN3_R + r] = rnd(v, h);
        }
    }
    __syncthreads();
    if (threadIdx.x >= DN3_DB) return;
    const int64_t task = t * D + db + threadIdx.x;
    float acc = 0.0f;
    for (int jj = 0; jj < K; jj++) acc += rnd(wt[t * K + jj] * ys[jj][threadIdx.x], h);
    const float e = rnd(acc, h);
    if (eo) st(eo + task, e);
    float m = e;
    if (Wsdn) {
        const float sv = ys[K][threadIdx.x], sgate = rnd(sigmoid_f(ld(sg + t)), h);
        if (sout) st(sout + task, sv);
        m = e + rnd(sgate * sv, h);
    }
    st(mout + task, m);
}

extern "C" int cuda_moe_gemv2_ok(int64_t D, int64_t I, int64_t Ws, int64_t K)
{
    return D > 0 && I > 0 && D % 8 == 0 && I % 8 == 0 && Ws % 8 == 0 && Ws >= 0 && K > 0 && K <= GEMV2_MAXK &&
           D <= INT32_MAX / 2 && I <= INT32_MAX / 2 && Ws <= INT32_MAX / 2;
}

static enum q3n_status gemv2_gate_up(void *d_h, void *d_hs, void *d_sg, const void *d_x, const int32_t *d_idx,
                                     const void *d_Wgu, const void *d_Wsgu, const void *d_Wsg, int64_t T, int64_t K,
                                     int64_t D, int64_t I, int64_t Ws, bool packed, enum q3n_compute_dtype dt,
                                     cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && T <= INT32_MAX && cuda_moe_gemv2_ok(D, I, d_Wsgu ? Ws : 0, K));
    Q3N_REQUIRE(!d_Wsg || d_sg);
    Q3N_REQUIRE(!packed || (dt == Q3N_COMPUTE_BF16 && q3n_pack_fits(2 * I, D, 1)));
    const int64_t tasks = T * K * I + (d_Wsgu ? T * Ws : 0) + (d_Wsg ? T : 0);
    if (tasks == 0) return Q3N_OK;
    Q3N_REQUIRE(tasks / 8 + 1 <= INT32_MAX);
    const unsigned grid = (unsigned)((tasks + 7) / 8);
    const int ws = d_Wsgu ? (int)Ws : 0;
    if (packed)
        moe_gemv_gu_kernel<bf16, true><<<grid, 256, 0, stream>>>(
            (bf16 *)d_h, (bf16 *)d_hs, (bf16 *)d_sg, (const bf16 *)d_x, d_idx, (const bf16 *)d_Wgu,
            (const bf16 *)d_Wsgu, (const bf16 *)d_Wsg, (int)T, (int)K, (int)D, (int)I, ws);
    else if (dt == Q3N_COMPUTE_BF16)
        moe_gemv_gu_kernel<<<grid, 256, 0, stream>>>((bf16 *)d_h, (bf16 *)d_hs, (bf16 *)d_sg, (const bf16 *)d_x, d_idx,
                                                     (const bf16 *)d_Wgu, (const bf16 *)d_Wsgu, (const bf16 *)d_Wsg, (int)T, (int)K,
                                                     (int)D, (int)I, ws);
    else
        moe_gemv_gu_kernel<<<grid, 256, 0, stream>>>((float *)d_h, (float *)d_hs, (float *)d_sg, (const float *)d_x, d_idx,
                                                     (const float *)d_Wgu, (const float *)d_Wsgu, (const float *)d_Wsg, (int)T, (int)K,
                                                     (int)D, (int)I, ws);
    CU_LAUNCHED("moe_gemv_gu_kernel");
    return Q3N_OK;
}

extern "C" enum q3n_status cuda_moe_gemv2_gate_up(void *d_h, void *d_hs, void *d_sg, const void *d_x,
                                                  const int32_t *d_idx, const void *d_Wgu, const void *d_Wsgu,
                                                  const void *d_Wsg, int64_t T, int64_t K, int64_t D, int64_t I,
                                                  int64_t Ws, enum q3n_compute_dtype dt, cudaStream_t stream,
                                                  struct q3n_error *err)
{
    return gemv2_gate_up(d_h, d_hs, d_sg, d_x, d_idx, d_Wgu, d_Wsgu, d_Wsg, T, K, D, I, Ws, false, dt, stream, err);
}

extern "C" enum q3n_status cuda_moe_gemv2_gate_up_packed(void *d_h, void *d_hs, void *d_sg, const void *d_x,
                                                         const int32_t *d_idx, const void *d_Wgu, const void *d_Wsgu,
                                                         const void *d_Wsg, int64_t T, int64_t K, int64_t D,
                                                         int64_t I, int64_t Ws, enum q3n_compute_dtype dt,
                                                         cudaStream_t stream, struct q3n_error *err)
{
    return gemv2_gate_up(d_h, d_hs, d_sg, d_x, d_idx, d_Wgu, d_Wsgu, d_Wsg, T, K, D, I, Ws, true, dt, stream, err);
}

extern "C" const char *cuda_moe_gemv2_down_kernel(int ver)
{
    return ver == 2 ? "moe_gemv_dn_v2" : ver == 4 ? "moe_gemv_dn_v3(U=4)" : "moe_gemv_dn_v3";
}

extern "C" enum q3n_status cuda_moe_gemv2_down_combine_ver(void *d_eo, void *d_mout, void *d_sout, const void *d_h,
                                                           const void *d_hs, const int32_t *d_idx,
                                                           const float *d_weight, const void *d_Wdn,
                                                           const void *d_Wsdn, const void *d_sg, int64_t T, int64_t K,
                                                           int64_t D, int64_t I, int64_t Ws, int ver,
                                                           enum q3n_compute_dtype dt, cudaStream_t stream,
                                                           struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && T <= INT32_MAX && cuda_moe_gemv2_ok(D, I, d_Wsdn ? Ws : 0, K));
    Q3N_REQUIRE(!d_Wsdn || (d_hs && d_sg && Ws > 0));
    Q3N_REQUIRE(ver >= 0 && ver <= 4 && ver != 1);
    if (T == 0) return Q3N_OK;
    Q3N_REQUIRE(T * D <= INT32_MAX);
    const int ws = d_Wsdn ? (int)Ws : 0;
    const int S = (int)K + (d_Wsdn ? 1 : 0);
    if (ver != 2) {
        /* block per (token, 8 outputs), one warp per slot (up to 16 warps); f32 keeps one chunk per round */
        const unsigned grid = (unsigned)(T * (D / DN3_DB)), threads = 32 * (unsigned)(S < 16 ? S : 16);
        if (dt == Q3N_COMPUTE_BF16 && ver == 4)
            moe_gemv_dn3_kernel<bf16, 4><<<grid, threads, 0, stream>>>(
                (bf16 *)d_eo, (bf16 *)d_mout, (bf16 *)d_sout, (const bf16 *)d_h, (const bf16 *)d_hs, d_idx, d_weight,
                (const bf16 *)d_Wdn, (const bf16 *)d_Wsdn, (const bf16 *)d_sg, (int)K, (int)D, (int)I, ws);
        else if (dt == Q3N_COMPUTE_BF16)
            moe_gemv_dn3_kernel<bf16, 2><<<grid, threads, 0, stream>>>(
                (bf16 *)d_eo, (bf16 *)d_mout, (bf16 *)d_sout, (const bf16 *)d_h, (const bf16 *)d_hs, d_idx, d_weight,
                (const bf16 *)d_Wdn, (const bf16 *)d_Wsdn, (const bf16 *)d_sg, (int)K, (int)D, (int)I, ws);
        else
            moe_gemv_dn3_kernel<float, 1><<<grid, threads, 0, stream>>>(
                (float *)d_eo, (float *)d_mout, (float *)d_sout, (const float *)d_h, (const float *)d_hs, d_idx,
                d_weight, (const float *)d_Wdn, (const float *)d_Wsdn, (const float *)d_sg, (int)K, (int)D, (int)I, ws);
        CU_LAUNCHED("moe_gemv_dn3_kernel");
        return Q3N_OK;
    }
    /* v2: one block per output (t, d): 16 lanes per slot, two slots per warp */
    const unsigned grid = (unsigned)(T * D), threads = 32 * cdiv(S, 2);
    if (dt == Q3N_COMPUTE_BF16)
        moe_gemv_dn_kernel<<<grid, threads, 0, stream>>>((bf16 *)d_eo, (bf16 *)d_mout, (bf16 *)d_sout, (const bf16 *)d_h,
                                                     (const bf16 *)d_hs, d_idx, d_weight, (const bf16 *)d_Wdn,
                                                     (const bf16 *)d_Wsdn, (const bf16 *)d_sg, (int)K, (int)D, (int)I,
                                                     ws);
    else
        moe_gemv_dn_kernel<<<grid, threads, 0, stream>>>((float *)d_eo, (float *)d_mout, (float *)d_sout,
                                                     (const float *)d_h, (const float *)d_hs, d_idx, d_weight,
                                                     (const float *)d_Wdn, (const float *)d_Wsdn, (const float *)d_sg,
                                                     (int)K, (int)D, (int)I, ws);
    CU_LAUNCHED("moe_gemv_dn_kernel");
    return Q3N_OK;
}

/* Packed routed experts (moe_pack.h): the production down+combine (v3, U = 2) reading them packed. */
extern "C" enum q3n_status cuda_moe_gemv2_down_combine_packed(void *d_eo, void *d_mout, void *d_sout, const void *d_h,
                                                              const void *d_hs, const int32_t *d_idx,
                                                              const float *d_weight, const void *d_Wdn,
                                                              const void *d_Wsdn, const void *d_sg, int64_t T,
                                                              int64_t K, int64_t D, int64_t I, int64_t Ws,
                                                              enum q3n_compute_dtype dt, cudaStream_t stream,
                                                              struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && T <= INT32_MAX && cuda_moe_gemv2_ok(D, I, d_Wsdn ? Ws : 0, K));
    Q3N_REQUIRE(!d_Wsdn || (d_hs && d_sg && Ws > 0));
    Q3N_REQUIRE(dt == Q3N_COMPUTE_BF16 && q3n_pack_fits(D, I, 0));
    if (T == 0) return Q3N_OK;
    Q3N_REQUIRE(T * D <= INT32_MAX);
    const int S = (int)K + (d_Wsdn ? 1 : 0);
    const unsigned grid = (unsigned)(T * (D / DN3_DB)), threads = 32 * (unsigned)(S < 16 ? S : 16);
    moe_gemv_dn3_kernel<bf16, 2, true><<<grid, threads, 0, stream>>>(
        (bf16 *)d_eo, (bf16 *)d_mout, (bf16 *)d_sout, (const bf16 *)d_h, (const bf16 *)d_hs, d_idx, d_weight,
        (const bf16 *)d_Wdn, (const bf16 *)d_Wsdn, (const bf16 *)d_sg, (int)K, (int)D, (int)I,
        d_Wsdn ? (int)Ws : 0);
    CU_LAUNCHED("moe_gemv_dn3_kernel (packed)");
    return Q3N_OK;
}

extern "C" enum q3n_status cuda_moe_gemv2_down_combine(void *d_eo, void *d_mout, void *d_sout, const void *d_h,
                                                       const void *d_hs, const int32_t *d_idx, const float *d_weight,
                                                       const void *d_Wdn, const void *d_Wsdn, const void *d_sg,
                                                       int64_t T, int64_t K, int64_t D, int64_t I, int64_t Ws,
                                                       enum q3n_compute_dtype dt, cudaStream_t stream,
                                                       struct q3n_error *err)
{
    return cuda_moe_gemv2_down_combine_ver(d_eo, d_mout, d_sout, d_h, d_hs, d_idx, d_weight, d_Wdn, d_Wsdn, d_sg, T, K,
                                           D, I, Ws, 0, dt, stream, err);
}
