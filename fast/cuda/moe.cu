/* moe.cu — sparse MoE: token permutation, SwiGLU, expert GEMV for decode, weighted un-permute with
 * the shared expert (cuda twins of ref/moe.c; the router is in moe_router.cu).
 *
 * Prefill runs the routed experts as grouped GEMMs over the permuted rows (moe_grouped.cu, v3:
 * gather and SwiGLU fused, all experts in one launch; v1 and per-expert cuBLAS remain as
 * fallbacks, see blocks.cu, experts_gemm); decode (few rows) runs the expert GEMV v2
 * (moe_gemv.cu: routed + shared experts, combine fused), which reads the chosen experts on the
 * device, so a decode step never waits on the host (and can be captured in a CUDA graph). Deterministic: the permutation is a stable ballot scan
 * (tokens ascending inside each expert), the un-permute sums slots j = 0..K-1 in order. The
 * only atomics are integer counts, whose result does not depend on order. */
#include "common.cuh"

/* ---- permutation ---- */
__global__ void count_kernel(int32_t *counts, const int32_t *idx, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        atomicAdd(&counts[idx[i]], 1); /* integer: the result is order-independent */
}

__global__ void offsets_kernel(int32_t *offsets, const int32_t *counts, int64_t E)
{
    if (threadIdx.x != 0) return;
    int32_t acc = 0;
    for (int64_t e = 0; e < E; e++) {
        offsets[e] = acc;
        acc += counts[e];
    }
}

/* One block per expert: stable compaction of the assignments a (= t*K + j, ascending) with
 * idx[a] == e, by warp ballots and a block prefix in warp order. */
__global__ void __launch_bounds__(256) place_kernel(int32_t *perm_row, int32_t *pos, const int32_t *offsets,
                                                    const int32_t *idx, int64_t n)
{
    __shared__ int wsum[8];
    const int e = blockIdx.x, lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int base = offsets[e];
    for (int64_t a0 = 0; a0 < n; a0 += blockDim.x) {
        const int64_t a = a0 + threadIdx.x;
        const bool hit = a < n && idx[a] == e;
        const unsigned m = __ballot_sync(0xffffffffu, hit);
        if (lane == 0) wsum[w] = __popc(m);
        __syncthreads();
        int before = 0, total = 0;
        for (int k = 0; k < 8; k++) {
            if (k < w) before += wsum[k];
            total += wsum[k];
        }
        if (hit) {
            const int p = base + before + __popc(m & ((1u << lane) - 1u));
            perm_row[p] = (int32_t)a;
            pos[a] = p;
        }
        base += total;
        __syncthreads();
    }
}

extern "C" enum q3n_status cuda_moe_permute(int32_t *d_perm_row, int32_t *d_pos, int32_t *d_counts,
                                            int32_t *d_offsets, const int32_t *d_idx, int64_t T, int64_t E,
                                            int64_t K, cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && E > 0 && E <= INT32_MAX && K > 0 && T * K <= INT32_MAX);
    const int64_t n = T * K;
    CU_CHECK(cudaMemsetAsync(d_counts, 0, sizeof(int32_t) * (size_t)E, stream));
    if (n == 0) {
        CU_CHECK(cudaMemsetAsync(d_offsets, 0, sizeof(int32_t) * (size_t)E, stream));
        return Q3N_OK;
    }
    count_kernel<<<cdiv(n, 256) < 4096 ? cdiv(n, 256) : 4096, 256, 0, stream>>>(d_counts, d_idx, n);
    CU_LAUNCHED("moe count_kernel");
    offsets_kernel<<<1, 32, 0, stream>>>(d_offsets, d_counts, E);
    CU_LAUNCHED("moe offsets_kernel");
    place_kernel<<<(unsigned)E, 256, 0, stream>>>(d_perm_row, d_pos, d_offsets, d_idx, n);
    CU_LAUNCHED("moe place_kernel");
    return Q3N_OK;
}

/* ---- permutation v2: counting sort over chunks of 256 assignments (same output as v1) ----
 * v1's place_kernel has one block per expert scanning all T*K assignments (E passes over idx:
 * 0.35 ms at T=16384, E=512). v2 reads idx twice:
 *   1. chunk_count_kernel: one warp per chunk c of PC assignments: local histogram h_c[e];
 *   2. chunk_scan_kernel (one block): counts[e] = sum_c h_c[e], offsets = exclusive scan of
 *      counts over e, base_c[e] = offsets[e] + sum_{c' < c} h_c'[e];
 *   3. chunk_place_kernel: one warp per chunk, the chunk's assignments in order, 32 at a time:
 *      p = base_c[e] + (earlier ones of e in this chunk) + (lower lanes with the same e, by
 *      __match_any_sync); perm_row[p] = a, pos[a] = p.
 * Assignments of one expert keep their order (chunks ascending, ascending inside a chunk): the
 * stable grouping v1 gives, bit for bit. Histograms live in shared memory, E ints per warp. */
#define PC 256
#define PERM_SMEM_MAX 32768 /* bytes of per-warp histograms per block */

static int perm_warps(int64_t E)
{
    const int64_t w = PERM_SMEM_MAX / (4 * E);
    return (int)(w >= 8 ? 8 : w);
}

extern "C" int cuda_moe_permute_v2_ok(int64_t E)
{
    return E > 0 && perm_warps(E) >= 1;
}

__global__ void chunk_count_kernel(int32_t *hist, const int32_t *idx, int64_t n, int E, int pc)
{
    extern __shared__ int32_t ph[];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int64_t c = (int64_t)blockIdx.x * (blockDim.x >> 5) + w;
    int32_t *h = ph + w * E;
    for (int e = lane; e < E; e += 32) h[e] = 0;
    __syncwarp();
    if (c * pc < n) {
        for (int64_t a = c * pc + lane; a < n && a < (c + 1) * pc; a += 32) atomicAdd_block(&h[idx[a]], 1);
        __syncwarp();
        for (int e = lane; e < E; e += 32) hist[c * E + e] = h[e];
    }
}

/* One block walks every chunk of the histogram. BATCH 1 (v1): one load in flight per thread (50 us
 * per layer at T = 4096 under ncu, session 8: 160 chunks, a round trip each). BATCH 8 (v2, session
 * 9; the default since session 10, checked bitwise v1 and timed on an H100 by dev/test_moe_prefill;
 * under ncu 50 -> 22.5 us per layer): the loads of 8 chunks first, then their sums
 * (integers: any order gives the same result, so bitwise v1). */
#ifndef PERMUTE_SCAN_DEFAULT_VER /* EXTRA_NVCCFLAGS=-DPERMUTE_SCAN_DEFAULT_VER=1 keeps v1 */
/* session 10, H100: v2, permute T = 4096 0.049 -> 0.028 ms, T = 16384 0.147 -> 0.062; session 12: v3 */
#define PERMUTE_SCAN_DEFAULT_VER 3
#endif

template <int BATCH>
__global__ void __launch_bounds__(1024) chunk_scan_kernel(int32_t *base, int32_t *counts, int32_t *offsets,
                                                          const int32_t *hist, int64_t nchunks, int E)
{
    __shared__ int wsum[32];
    __shared__ int32_t carry;
    const int tid = threadIdx.x;
    if (tid == 0) carry = 0;
    __syncthreads();
    for (int e0 = 0; e0 < E; e0 += blockDim.x) {
        const int e = e0 + tid;
        int32_t tot = 0;
        if constexpr (BATCH == 1) {
            if (e < E)
                for (int64_t c = 0; c < nchunks; c++) tot += hist[c * E + e];
        } else if (e < E) {
#pragma unroll BATCH
            for (int64_t c = 0; c < nchunks; c++) tot += hist[c * E + e];
        }
        const int32_t off = block_exclusive_scan(tot, wsum) + carry; /* carry: set two barriers ago */
        if (e < E) {
            counts[e] = tot;
            offsets[e] = off;
            int32_t b = off;
            int64_t c = 0;
            if constexpr (BATCH > 1)
                for (; c + BATCH <= nchunks; c += BATCH) {
                    int32_t h[BATCH];
#pragma unroll
                    for (int j = 0; j < BATCH; j++) h[j] = hist[(c + j) * E + e];
#pragma unroll
                    for (int j = 0; j < BATCH; j++) {
                        base[(c + j) * E + e] = b;
                        b += h[j];
                    }
                }
            for (; c < nchunks; c++) {
                base[c * E + e] = b;
                b += hist[c * E + e];
            }
        }
        __syncthreads();
        if (tid == blockDim.x - 1) carry = off + tot;
        __syncthreads();
    }
}

/* v3's scan (session 12): the chunk sums spread over ceil(E / 32) blocks, where v1 / v2 walk every
 * chunk in one block (v2: 22.5 us per layer at T = 4096 under ncu, session 12, the longest kernel of
 * the permutation). Block of 1024 threads = 32 experts (lane) x 32 ranges of chunks (warp): each
 * thread sums its range (8 loads in flight), warp 0 turns the 32 range sums of its lane's expert
 * into exclusive prefixes (counts[e] = the total), and each thread writes base_c[e] = that prefix +
 * the chunks before c in its range. These bases leave out offsets[e] (a scan across experts, i.e.
 * across blocks): chunk_place3_kernel adds them. Integer sums: the same bases as v1 / v2. */
__global__ void __launch_bounds__(1024) chunk_scan3_kernel(int32_t *base, int32_t *counts, const int32_t *hist,
                                                           int nchunks, int E)
{
    __shared__ int32_t range_sum[32][33];
    const int el = threadIdx.x & 31, r = threadIdx.x >> 5, e = blockIdx.x * 32 + el;
    const int per = (nchunks + 31) / 32, c0 = min(r * per, nchunks), c1 = min(c0 + per, nchunks);
    int32_t sum = 0;
    if (e < E) {
#pragma unroll 8
        for (int c = c0; c < c1; c++) sum += hist[(int64_t)c * E + e];
    }
    range_sum[r][el] = sum;
    __syncthreads();
    if (r == 0) {
        int32_t run = 0;
        for (int q = 0; q < 32; q++) {
            const int32_t v = range_sum[q][el];
            range_sum[q][el] = run;
            run += v;
        }
        if (e < E) counts[e] = run;
    }
    __syncthreads();
    if (e >= E) return;
    int32_t b = range_sum[r][el];
    int c = c0;
    for (; c + 8 <= c1; c += 8) {
        int32_t h[8];
#pragma unroll
        for (int j = 0; j < 8; j++) h[j] = hist[(int64_t)(c + j) * E + e];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            base[(int64_t)(c + j) * E + e] = b;
            b += h[j];
        }
    }
    for (; c < c1; c++) {
        base[(int64_t)c * E + e] = b;
        b += hist[(int64_t)c * E + e];
    }
}

/* One warp per chunk: its assignments in order, 32 at a time, placed after the chunk's base for
 * their expert (see cuda_moe_permute_v2). With counts (v3's bases leave out offsets[e]) every block
 * first scans counts into offsets itself (E ints, cheap beside a launch) and block 0 stores them. */
__global__ void chunk_place_kernel(int32_t *perm_row, int32_t *pos, int32_t *offsets, const int32_t *base,
                                   const int32_t *counts, const int32_t *idx, int64_t n, int E, int pc)
{
    extern __shared__ int32_t ph[]; /* [warps][E], then (counts) offsets [E] */
    __shared__ int wsum[32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int32_t *off = ph + nw * E;
    if (counts) { /* the whole block, before any warp may leave */
        int32_t carry = 0;
        for (int e0 = 0; e0 < E; e0 += blockDim.x) {
            const int e = e0 + threadIdx.x;
            const int32_t v = e < E ? counts[e] : 0;
            const int32_t x = block_exclusive_scan(v, wsum) + carry;
            if (e < E) {
                off[e] = x;
                if (blockIdx.x == 0) offsets[e] = x;
            }
            carry += wsum[nw - 1]; /* this pass's total: the scan leaves the warps' inclusive sums there */
            __syncthreads();       /* before the next pass rewrites wsum */
        }
    }
    const int64_t c = (int64_t)blockIdx.x * nw + w;
    if (c * pc >= n) return;
    int32_t *h = ph + w * E;
    for (int e = lane; e < E; e += 32) h[e] = base[c * E + e] + (counts ? off[e] : 0);
    __syncwarp();
    for (int64_t a0 = c * pc; a0 < n && a0 < (c + 1) * pc; a0 += 32) {
        const int64_t a = a0 + lane;
        const bool in = a < n && a < (c + 1) * pc;
        const int e = in ? idx[a] : -1 - lane; /* lanes past the end match nobody */
        const unsigned same = __match_any_sync(0xffffffffu, e);
        if (in) {
            const int p = h[e] + __popc(same & ((1u << lane) - 1u));
            perm_row[p] = (int32_t)a;
            pos[a] = p;
        }
        __syncwarp();
        if (in && lane == 31 - __clz(same)) h[e] += __popc(same); /* highest lane of the group */
        __syncwarp();
    }
}

/* v3's place kernel holds the offsets beside the warps' histograms, and 128 bytes of its own: within
 * the default 48 KB (E = 4096 is not: v2's scan runs there) */
static int permute_v3_fits(int64_t E) { return 4 * E * (perm_warps(E) + 1) <= 47 * 1024; }

extern "C" int cuda_moe_permute_scan_ver_for(int64_t E)
{
    return PERMUTE_SCAN_DEFAULT_VER == 3 && !permute_v3_fits(E) ? 2 : PERMUTE_SCAN_DEFAULT_VER;
}

/* Assignments per chunk: v1 / v2's scan walks every chunk in one block, so their chunks are large;
 * v3's scan is spread over the experts, so its chunks are smaller and each warp of the count and
 * place kernels has a shorter chain (PC3 = 128: half of v2's, 320 chunks at T = 4096, K = 10). */
#define PC3 128
static int permute_chunk(int scan_ver) { return scan_ver == 3 ? PC3 : PC; }

/* Scratch of cuda_moe_permute (int32): the chunk histograms and bases, for the smaller chunk. */
extern "C" int64_t cuda_moe_permute_scratch(int64_t T, int64_t E, int64_t K)
{
    return 2 * ((T * K + PC3 - 1) / PC3) * E;
}

extern "C" enum q3n_status cuda_moe_permute_v2_ver(int32_t *d_perm_row, int32_t *d_pos, int32_t *d_counts,
                                                   int32_t *d_offsets, int32_t *d_scratch, const int32_t *d_idx,
                                                   int64_t T, int64_t E, int64_t K, int scan_ver,
                                                   cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && E > 0 && E <= INT32_MAX && K > 0 && T * K <= INT32_MAX && perm_warps(E) >= 1);
    Q3N_REQUIRE(scan_ver >= 0 && scan_ver <= 3);
    if (scan_ver == 0) scan_ver = cuda_moe_permute_scan_ver_for(E);
    if (scan_ver == 3 && !permute_v3_fits(E))
        return q3n_error_set(err, Q3N_ERR_USAGE, "cuda_moe_permute: scan v3 needs 4 E (warps + 1) <= 47 KB (E = %lld)",
                             (long long)E);
    const int pc = permute_chunk(scan_ver);
    const int64_t n = T * K, nchunks = (n + pc - 1) / pc;
    Q3N_REQUIRE(nchunks <= INT32_MAX);
    if (n == 0) {
        CU_CHECK(cudaMemsetAsync(d_counts, 0, sizeof(int32_t) * (size_t)E, stream));
        CU_CHECK(cudaMemsetAsync(d_offsets, 0, sizeof(int32_t) * (size_t)E, stream));
        return Q3N_OK;
    }
    const int wpb = perm_warps(E);
    const size_t smem = sizeof(int32_t) * (size_t)(wpb * E);
    int32_t *hist = d_scratch, *base = d_scratch + nchunks * E;
    chunk_count_kernel<<<cdiv(nchunks, wpb), 32 * wpb, smem, stream>>>(hist, d_idx, n, (int)E, pc);
    CU_LAUNCHED("moe chunk_count_kernel");
    if (scan_ver == 3)
        chunk_scan3_kernel<<<cdiv(E, 32), 1024, 0, stream>>>(base, d_counts, hist, (int)nchunks, (int)E);
    else if (scan_ver == 2)
        chunk_scan_kernel<8><<<1, 1024, 0, stream>>>(base, d_counts, d_offsets, hist, nchunks, (int)E);
    else
        chunk_scan_kernel<1><<<1, 1024, 0, stream>>>(base, d_counts, d_offsets, hist, nchunks, (int)E);
    CU_LAUNCHED("moe chunk_scan_kernel");
    /* v3: the place kernel also scans counts into offsets (E more ints of shared memory) */
    const int32_t *cnt3 = scan_ver == 3 ? d_counts : NULL;
    chunk_place_kernel<<<cdiv(nchunks, wpb), 32 * wpb, smem + (cnt3 ? sizeof(int32_t) * (size_t)E : 0), stream>>>(
        d_perm_row, d_pos, d_offsets, base, cnt3, d_idx, n, (int)E, pc);
    CU_LAUNCHED("moe chunk_place_kernel");
    return Q3N_OK;
}

extern "C" enum q3n_status cuda_moe_permute_v2(int32_t *d_perm_row, int32_t *d_pos, int32_t *d_counts,
                                               int32_t *d_offsets, int32_t *d_scratch, const int32_t *d_idx,
                                               int64_t T, int64_t E, int64_t K, cudaStream_t stream,
                                               struct q3n_error *err)
{
    return cuda_moe_permute_v2_ver(d_perm_row, d_pos, d_counts, d_offsets, d_scratch, d_idx, T, E, K, 0, stream, err);
}

template <typename T>
__global__ void gather_kernel(T *out, const T *x, const int32_t *rows, int64_t div, int64_t D)
{
    const int64_t p = blockIdx.x, src = rows[p] / div;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) out[p * D + d] = x[src * D + d];
}

extern "C" enum q3n_status cuda_gather_rows(void *d_out, const void *d_x, const int32_t *d_rows, int64_t n,
                                            int64_t div, int64_t D, enum q3n_compute_dtype dt, cudaStream_t stream,
                                            struct q3n_error *err)
{
    Q3N_REQUIRE(n >= 0 && n <= INT32_MAX && div > 0 && D > 0);
    if (n == 0) return Q3N_OK;
    if (dt == Q3N_COMPUTE_BF16)
        gather_kernel<<<(unsigned)n, 256, 0, stream>>>((bf16 *)d_out, (const bf16 *)d_x, d_rows, div, D);
    else
        gather_kernel<<<(unsigned)n, 256, 0, stream>>>((float *)d_out, (const float *)d_x, d_rows, div, D);
    CU_LAUNCHED("moe gather_kernel");
    return Q3N_OK;
}

template <typename T>
__global__ void swiglu_kernel(T *out, const T *gu, int64_t W, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / W, c = i % W;
        const float a = rnd(silu_f(ld(gu + r * 2 * W + c)), gu);
        st(out + i, a * ld(gu + r * 2 * W + W + c));
    }
}

/* v2 (bf16, W % 8 == 0; session 12): a thread per 8 outputs, 16-byte loads of gate and up, int32
 * indices (the generic loop's 64-bit division per element made it instruction-bound: 15 us for the
 * shared expert's 4096 x 512 under ncu, ~3x its bytes). The same operations per element:
 * out = T(T(silu(g)) u). */
__global__ void swiglu_v2_kernel(bf16 *out, const bf16 *gu, int W8, int n8)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    const int r = i / W8, c = i - r * W8;
    const uint4 *row = reinterpret_cast<const uint4 *>(gu) + (int64_t)r * 2 * W8;
    float g[8], u[8], o[8];
    unpack8_bf16(g, row[c]);
    unpack8_bf16(u, row[W8 + c]);
#pragma unroll
    for (int q = 0; q < 8; q++) o[q] = __bfloat162float(__float2bfloat16_rn(silu_f(g[q]))) * u[q];
    reinterpret_cast<uint4 *>(out)[i] = pack8_bf16(o);
}

static int swiglu_v2_ok(const void *d_out, const void *d_gu, int64_t n, int64_t W, enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 && W % 8 == 0 && n / 8 <= INT32_MAX && ((uintptr_t)d_out & 15) == 0 &&
           ((uintptr_t)d_gu & 15) == 0;
}

extern "C" enum q3n_status cuda_swiglu_forward_ver(void *d_out, const void *d_gu, int64_t rows, int64_t W, int ver,
                                                   enum q3n_compute_dtype dt, cudaStream_t stream,
                                                   struct q3n_error *err)
{
    Q3N_REQUIRE(rows >= 0 && W > 0 && ver >= 0 && ver <= 2);
    const int64_t n = rows * W;
    if (ver == 0) ver = swiglu_v2_ok(d_out, d_gu, n, W, dt) ? 2 : 1;
    if (ver == 2 && !swiglu_v2_ok(d_out, d_gu, n, W, dt))
        return q3n_error_set(err, Q3N_ERR_USAGE, "cuda_swiglu v2: needs bf16, W %% 8 == 0 and 16-byte aligned buffers");
    if (n == 0) return Q3N_OK;
    if (ver == 2) {
        swiglu_v2_kernel<<<cdiv(n / 8, 256), 256, 0, stream>>>((bf16 *)d_out, (const bf16 *)d_gu, (int)(W / 8),
                                                               (int)(n / 8));
        CU_LAUNCHED("swiglu_v2_kernel");
        return Q3N_OK;
    }
    const unsigned grid = (unsigned)(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536);
    if (dt == Q3N_COMPUTE_BF16)
        swiglu_kernel<<<grid, 256, 0, stream>>>((bf16 *)d_out, (const bf16 *)d_gu, W, n);
    else
        swiglu_kernel<<<grid, 256, 0, stream>>>((float *)d_out, (const float *)d_gu, W, n);
    CU_LAUNCHED("swiglu_kernel");
    return Q3N_OK;
}

extern "C" enum q3n_status cuda_swiglu_forward(void *d_out, const void *d_gu, int64_t rows, int64_t W,
                                               enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err)
{
    return cuda_swiglu_forward_ver(d_out, d_gu, rows, W, 0, dt, stream, err);
}

/* ---- expert GEMV (decode) ----
 * Block (row r, 8 outputs); warp per output n, lanes stride over k; x row staged in shared
 * memory as float. Warp sums in a fixed shuffle tree. */
template <typename T>
__global__ void __launch_bounds__(256) experts_gemv_kernel(T *out, const T *x, const int32_t *idx, const T *W,
                                                           int64_t div, int64_t N, int64_t Kin)
{
    extern __shared__ float xs[]; /* [Kin] */
    const int64_t r = blockIdx.x;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const T *xr = x + (r / div) * Kin;
    for (int64_t k = threadIdx.x; k < Kin; k += blockDim.x) xs[k] = ld(xr + k);
    __syncthreads();
    const int64_t n = (int64_t)blockIdx.y * 8 + w;
    if (n >= N) return;
    const T *wr = W + ((int64_t)idx[r] * N + n) * Kin;
    float acc = 0.0f;
    if (sizeof(T) == 2 && (Kin % 8) == 0) {
        for (int64_t k = lane * 8; k < Kin; k += 256) {
            const uint4 v = *reinterpret_cast<const uint4 *>(wr + k);
            const bf16 *b = reinterpret_cast<const bf16 *>(&v);
#pragma unroll
            for (int i = 0; i < 8; i++) acc += __bfloat162float(b[i]) * xs[k + i];
        }
    } else {
        for (int64_t k = lane; k < Kin; k += 32) acc += ld(wr + k) * xs[k];
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) st(out + r * N + n, acc);
}

extern "C" enum q3n_status cuda_moe_experts_gemv(void *d_out, const void *d_x, const int32_t *d_idx, const void *d_W,
                                                 int64_t rows, int64_t div, int64_t N, int64_t Kin,
                                                 enum q3n_compute_dtype dt, cudaStream_t stream,
                                                 struct q3n_error *err)
{
    Q3N_REQUIRE(rows >= 0 && rows <= INT32_MAX && div > 0 && N > 0 && Kin > 0 && Kin <= 12288);
    if (rows == 0) return Q3N_OK;
    const dim3 grid((unsigned)rows, cdiv(N, 8));
    const size_t smem = sizeof(float) * (size_t)Kin;
    if (dt == Q3N_COMPUTE_BF16)
        experts_gemv_kernel<<<grid, 256, smem, stream>>>((bf16 *)d_out, (const bf16 *)d_x, d_idx, (const bf16 *)d_W,
                                                         div, N, Kin);
    else
        experts_gemv_kernel<<<grid, 256, smem, stream>>>((float *)d_out, (const float *)d_x, d_idx,
                                                         (const float *)d_W, div, N, Kin);
    CU_LAUNCHED("experts_gemv_kernel");
    return Q3N_OK;
}

/* ---- un-permute + shared expert ---- */
template <typename T>
__global__ void combine_kernel(T *eout, T *mout, const T *y, const int32_t *pos, const float *weight, const T *shared,
                               const T *sg, int64_t D, int64_t K)
{
    const int64_t t = blockIdx.x;
    const float sgate = shared ? rnd(sigmoid_f(ld(sg + t)), y) : 0.0f;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int64_t j = 0; j < K; j++) {
            const int64_t p = pos ? pos[t * K + j] : t * K + j;
            acc += rnd(weight[t * K + j] * ld(y + p * D + d), y);
        }
        const float e = rnd(acc, y);
        if (eout) st(eout + t * D + d, e);
        const float m = shared ? e + rnd(sgate * ld(shared + t * D + d), y) : e;
        st(mout + t * D + d, m);
    }
}

/* v2 (bf16, D % 8 == 0): thread i of the grid owns outputs [8 c, 8 c + 8) of token t = i / (D / 8),
 * c = i % (D / 8), and loads its K slots' 16-byte chunks of y in batches of KB slots, each batch's
 * loads all in flight before any of them is summed, where v1's 2-byte loads one slot after another
 * leave the combine at about half of HBM bandwidth (0.45 ms per layer at T = 16384 reading 671 MB).
 * KB = COMBINE2_BATCH = 5 for every K. Until session 11 KB was 8, 12 or 16 >= K (one batch: K = 10
 * took 104 registers, so 25 % occupancy, and DRAM at 66 % under ncu,
 * fast/cuda/dev/logs/session11_glue_ncuglue_combine_v2_kernel.log); batches of 5 take 60 registers
 * and measured faster on an H100 (dev/test_moe2, session11_combine_moe2.log, K = 10 with the shared
 * expert): T = 4096 0.093 -> 0.082 ms, T = 16384 0.343 -> 0.300 ms (2.91 TB/s); batches of 4 gave
 * the same, of 2 0.087 / 0.309. Same operations per output, in the
 * same order: acc = sum over j = 0..K-1 ascending of T(weight[t, j] * y[p_j, d]) in float32 from
 * 0, e = T(acc), m = e or e + T(T(sigmoid(sg[t])) * shared[t, d]): bitwise v1 (dev/test_moe2). */
#define COMBINE2_THREADS 256
#define COMBINE2_BATCH 5

/* Token t's outputs [8 c, 8 c + 8): e = the routed sum T(acc), m = e or e + T(T(sigmoid(sg[t])) *
 * shared[t, d]), both as floats before the store rounds them (the shared chunk and gate logit are
 * loaded first, in flight with the slots'). */
template <int KB>
__device__ __forceinline__ void combine2_chunk(float *e, float *m, const bf16 *y, const int32_t *pos,
                                               const float *weight, const bf16 *shared, const bf16 *sg, int t, int c,
                                               int64_t D, int K)
{
    const uint4 sv = shared ? reinterpret_cast<const uint4 *>(shared + (int64_t)t * D)[c] : make_uint4(0, 0, 0, 0);
    const float sgl = shared ? __bfloat162float(sg[t]) : 0.0f;
    float acc[8];
#pragma unroll
    for (int q = 0; q < 8; q++) acc[q] = 0.0f;
    for (int j0 = 0; j0 < K; j0 += KB) {
        uint4 v[KB];
        float w[KB];
#pragma unroll
        for (int u = 0; u < KB; u++) { /* every load of the batch first */
            const int j = j0 + u;
            if (j < K) {
                const int64_t p = pos ? pos[(int64_t)t * K + j] : (int64_t)t * K + j;
                w[u] = weight[(int64_t)t * K + j];
                v[u] = __ldcs(reinterpret_cast<const uint4 *>(y + p * D) + c); /* read once: evict first */
            }
        }
#pragma unroll
        for (int u = 0; u < KB; u++) { /* then the sums, j ascending as v1 */
            if (j0 + u < K) {
                float f[8];
                unpack8_bf16(f, v[u]);
#pragma unroll
                for (int q = 0; q < 8; q++) acc[q] += __bfloat162float(__float2bfloat16_rn(w[u] * f[q]));
            }
        }
    }
#pragma unroll
    for (int q = 0; q < 8; q++) e[q] = __bfloat162float(__float2bfloat16_rn(acc[q]));
    if (shared) {
        const float sgate = __bfloat162float(__float2bfloat16_rn(sigmoid_f(sgl)));
        float s[8];
        unpack8_bf16(s, sv);
#pragma unroll
        for (int q = 0; q < 8; q++) m[q] = e[q] + __bfloat162float(__float2bfloat16_rn(sgate * s[q]));
    } else {
#pragma unroll
        for (int q = 0; q < 8; q++) m[q] = e[q];
    }
}

template <int KB>
__global__ void __launch_bounds__(COMBINE2_THREADS)
    combine_v2_kernel(bf16 *eout, bf16 *mout, const bf16 *y, const int32_t *pos, const float *weight,
                      const bf16 *shared, const bf16 *sg, int T, int D8, int K)
{
    const int64_t i = (int64_t)blockIdx.x * COMBINE2_THREADS + threadIdx.x;
    if (i >= (int64_t)T * D8) return;
    const int t = (int)(i / D8), c = (int)(i - (int64_t)t * D8);
    const int64_t D = 8 * (int64_t)D8;
    float e[8], m[8];
    combine2_chunk<KB>(e, m, y, pos, weight, shared, sg, t, c, D, K);
    if (eout) reinterpret_cast<uint4 *>(eout + (int64_t)t * D)[c] = pack8_bf16(e);
    reinterpret_cast<uint4 *>(mout + (int64_t)t * D)[c] = pack8_bf16(m);
}

/* The combine, the residual add and the next RMSNorm in one pass (prefill, taps off), bitwise the
 * chain combine v2 -> add_rmsnorm_reg_kernel<bf16, PER> (norm.cu) with its block of NT =
 * norm_threads(D) threads:
 *   u = T(m) (the stored mlp_out), v = T(h + u) -> h;  ss = block thread i's sum of v_j^2 over
 *   j = i, i + NT, .. (< PER terms, ascending), reduced by block_sum;  r = rms_scale(ss, D, eps);
 *   xn = T(v r (1 + w)).
 * Block per token, NT threads; a thread combines the chunks c = i, i + NT, .. < D / 8 into v (shared
 * memory, float [D]), so that the sum of squares runs over the add-norm kernel's own element order.
 * Saves the combine's two stores (experts_out, mlp_out) and the add-norm's reload of mlp_out. */
template <int PER>
__global__ void __launch_bounds__(256)
    combine_norm_kernel(bf16 *h, bf16 *xn, const bf16 *y, const int32_t *pos, const float *weight,
                        const bf16 *shared, const bf16 *sg, const float *nw, int D, int K, float eps)
{
    extern __shared__ float cn_v[]; /* [D] */
    __shared__ float red[32];
    const int t = blockIdx.x, D8 = D / 8;
    bf16 *hr = h + (int64_t)t * D;
    for (int c = threadIdx.x; c < D8; c += blockDim.x) {
        const uint4 hraw = reinterpret_cast<const uint4 *>(hr)[c]; /* in flight with the slots' loads */
        float e[8], m[8], hv[8], v[8];
        combine2_chunk<COMBINE2_BATCH>(e, m, y, pos, weight, shared, sg, t, c, D, K);
        unpack8_bf16(hv, hraw);
#pragma unroll
        for (int q = 0; q < 8; q++) {
            v[q] = __bfloat162float(__float2bfloat16_rn(hv[q] + __bfloat162float(__float2bfloat16_rn(m[q]))));
            cn_v[8 * c + q] = v[q];
        }
        reinterpret_cast<uint4 *>(hr)[c] = pack8_bf16(v); /* exact: v is already a bf16 value */
    }
    __syncthreads();
    norm_row_from_smem<PER>(xn + (int64_t)t * D, cn_v, nw, D, eps, red);
}

static int combine_default(int64_t D, enum q3n_compute_dtype dt)
{
    return dt == Q3N_COMPUTE_BF16 && D % 8 == 0 ? 2 : 1;
}

extern "C" const char *cuda_moe_combine_kernel(int64_t D, enum q3n_compute_dtype dt, int ver)
{
    if (ver == 0) ver = combine_default(D, dt);
    return ver == 2 ? "moe_combine_v2" : "moe_combine_v1";
}

static int aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

extern "C" enum q3n_status cuda_moe_combine_ver(void *d_experts_out, void *d_mlp_out, const void *d_y,
                                                const int32_t *d_pos, const float *d_weight, const void *d_shared,
                                                const void *d_sg, int64_t T, int64_t D, int64_t K, int ver,
                                                enum q3n_compute_dtype dt, cudaStream_t stream,
                                                struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && T <= INT32_MAX && D > 0 && K > 0 && ver >= 0 && ver <= 2);
    if (ver == 0) ver = combine_default(D, dt);
    Q3N_REQUIRE(ver == 1 || (dt == Q3N_COMPUTE_BF16 && D % 8 == 0 && D / 8 <= INT32_MAX && K <= INT32_MAX));
    if (T == 0) return Q3N_OK;
    if (ver == 2) {
        if (!aligned16(d_experts_out) || !aligned16(d_mlp_out) || !aligned16(d_y) || !aligned16(d_shared))
            return q3n_error_set(err, Q3N_ERR_USAGE,
                                 "cuda_moe_combine v2: buffers must be 16-byte aligned (16-byte loads and stores)");
        const int64_t threads = T * (D / 8);
        Q3N_REQUIRE(threads / COMBINE2_THREADS < INT32_MAX); /* gridDim.x */
        const unsigned grid = cdiv(threads, COMBINE2_THREADS);
        const int D8 = (int)(D / 8), t = (int)T, k = (int)K;
        combine_v2_kernel<COMBINE2_BATCH><<<grid, COMBINE2_THREADS, 0, stream>>>(
            (bf16 *)d_experts_out, (bf16 *)d_mlp_out, (const bf16 *)d_y, d_pos, d_weight, (const bf16 *)d_shared,
            (const bf16 *)d_sg, t, D8, k);
        CU_LAUNCHED("moe combine_v2_kernel");
        return Q3N_OK;
    }
    if (dt == Q3N_COMPUTE_BF16)
        combine_kernel<<<(unsigned)T, 256, 0, stream>>>((bf16 *)d_experts_out, (bf16 *)d_mlp_out, (const bf16 *)d_y,
                                                        d_pos, d_weight, (const bf16 *)d_shared, (const bf16 *)d_sg,
                                                        D, K);
    else
        combine_kernel<<<(unsigned)T, 256, 0, stream>>>((float *)d_experts_out, (float *)d_mlp_out,
                                                        (const float *)d_y, d_pos, d_weight, (const float *)d_shared,
                                                        (const float *)d_sg, D, K);
    CU_LAUNCHED("moe combine_kernel");
    return Q3N_OK;
}

extern "C" int cuda_moe_combine_norm_ok(int64_t D, enum q3n_compute_dtype dt)
{
    return norm_fold_ok(D, dt);
}

extern "C" enum q3n_status cuda_moe_combine_norm(void *d_h, void *d_xn, const void *d_y, const int32_t *d_pos,
                                                 const float *d_weight, const void *d_shared, const void *d_sg,
                                                 const float *d_norm_w, double eps, int64_t T, int64_t D, int64_t K,
                                                 enum q3n_compute_dtype dt, cudaStream_t stream,
                                                 struct q3n_error *err)
{
    Q3N_REQUIRE(T >= 0 && T <= INT32_MAX && K > 0 && K <= INT32_MAX);
    if (!cuda_moe_combine_norm_ok(D, dt))
        return q3n_error_set(err, Q3N_ERR_USAGE,
                             "cuda_moe_combine_norm: needs bf16 and D %% 8 == 0, D <= 16 norm_threads(D) (D = %lld)",
                             (long long)D);
    if (!aligned16(d_h) || !aligned16(d_xn) || !aligned16(d_y) || !aligned16(d_shared))
        return q3n_error_set(err, Q3N_ERR_USAGE,
                             "cuda_moe_combine_norm: buffers must be 16-byte aligned (16-byte loads and stores)");
    if (T == 0) return Q3N_OK;
    const unsigned nt = norm_threads(D);
    const size_t smem = sizeof(float) * (size_t)D;
    if (D <= 8 * (int64_t)nt)
        combine_norm_kernel<8><<<(unsigned)T, nt, smem, stream>>>(
            (bf16 *)d_h, (bf16 *)d_xn, (const bf16 *)d_y, d_pos, d_weight, (const bf16 *)d_shared,
            (const bf16 *)d_sg, d_norm_w, (int)D, (int)K, (float)eps);
    else
        combine_norm_kernel<16><<<(unsigned)T, nt, smem, stream>>>(
            (bf16 *)d_h, (bf16 *)d_xn, (const bf16 *)d_y, d_pos, d_weight, (const bf16 *)d_shared,
            (const bf16 *)d_sg, d_norm_w, (int)D, (int)K, (float)eps);
    CU_LAUNCHED("moe combine_norm_kernel");
    return Q3N_OK;
}

extern "C" enum q3n_status cuda_moe_combine(void *d_experts_out, void *d_mlp_out, const void *d_y,
                                            const int32_t *d_pos, const float *d_weight, const void *d_shared,
                                            const void *d_sg, int64_t T, int64_t D, int64_t K,
                                            enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err)
{
    return cuda_moe_combine_ver(d_experts_out, d_mlp_out, d_y, d_pos, d_weight, d_shared, d_sg, T, D, K, 0, dt,
                                stream, err);
}
