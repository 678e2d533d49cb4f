/* test_moe_prefill.cu — the MoE prefill path's kernels: the permutation v2 (counting sort over
 * chunks, moe.cu) against v1, and the grouped expert GEMMs v4 (wgmma, moe_wgmma.cu) and v5
 * (warp-specialised wgmma, moe_wgmma5.cu) against v3 (mma.sync) and the CPU reference; then old vs
 * new timings at the real dims (llm.c dev/cuda pattern: every kernel checked before it is timed).
 *
 * Checks, each on NaN-poisoned outputs, 3 runs bitwise identical:
 *  - permute v2 == v1 bit for bit (perm_row, pos, counts, offsets): T 1..16384, E 8..8192,
 *    K 1..10, skewed loads with empty experts;
 *  - v4 gate_up (gather + SwiGLU) and v4 down vs v3 on the same inputs: bitwise equal (the k order
 *    is the same; inside a 16-deep step the order is the tensor core's, which gave the same bits
 *    for mma.sync and wgmma on an H100), for both pipeline depths;
 *  - v5 gate_up and down vs v3: bitwise equal (same k order), for the default (cuda_moe_grouped_gemm_v5)
 *    and every configuration of V5_CFGS (tile width 128/256, persistent grid or a block per tile,
 *    ring depth 2..4, epilogue from registers / through shared memory with 16-byte stores / with
 *    bulk async copies), each with half tiles on and off ("/nohalf": an expert's last tile with
 *    <= 64 rows split by columns between the consumers, moe_wgmma5.cu's header); also the two
 *    products the model does not run but the kernels instantiate: gate_up without the gather
 *    ("gate_up+swiglu/flat", A = v3's down output) and down with it ("down/gather", A row p =
 *    h[perm[p]]), against v3 on the same inputs;
 *  - permute + v4 (and v5) gate_up + down + combine vs ref_moe_experts_forward (as test_moe2 checks v3);
 *  - shapes: T 1..4096, E 8/64/512, K 1/2/10, D and I not tile multiples, skewed loads with empty
 *    experts, the real dims (D=2048, E=512, K=10, I=512) at T=4096 and 16384, and forced expert
 *    row counts (1, 63, 64, 65, 127, 128, 129, 192, 193, 200, 256, 320, 0, ...) so that last tiles of
 *    1..64, 65..127 and exactly 128 rows all occur; each case prints how many tiles of each kind
 *    it has.
 * Timings (CUDA events, median of 10): gate_up and down of one layer, v3 vs v4 (3 and 4 stages) vs v5
 * (the default, then each configuration with half tiles off, then on, and the ratio).
 *
 *   test_moe_prefill           checks + real-dims timings
 *   test_moe_prefill --quick   checks only (make check-cuda)
 *   test_moe_prefill --l2      the L2-hint configurations (and the two they vary) at the real dims:
 *                              checks, then timings alternated twice
 *   test_moe_prefill --only S  the same for the configurations whose name contains S, after the
 *                              forced-rows shapes (e.g. --only bpair, --only early) */
#include <algorithm>
#include <functional>
#include <vector>

#include "devkit.cuh"

#define E_ (&g_err)

static float time_ms(const std::function<void()> &f, int reps);

/* Routing: K distinct experts per token; skew: half the tokens pick expert 0 first and every
 * other choice comes from the lower half of the experts (the upper half gets no rows). */
static std::vector<int32_t> routing(int64_t T, int64_t Ex, int64_t K, int skew)
{
    std::vector<int32_t> idx((size_t)(T * K));
    const int64_t pool = skew && Ex / 2 >= K + 1 ? Ex / 2 : Ex;
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < K; j++) {
            int64_t e;
            for (;;) {
                e = (skew && j == 0 && q3n_rng_uniform(&g_rng) < 0.5) ? 0 : q3n_rng_int(&g_rng, 0, pool - 1);
                int dup = 0;
                for (int64_t i = 0; i < j; i++) dup |= idx[t * K + i] == e;
                if (!dup) break;
            }
            idx[t * K + j] = (int32_t)e;
        }
    return idx;
}

/* Routing that gives expert e exactly counts[e] tokens (sum = T K, each <= T): the experts' slots
 * listed in expert order, slot s = token s % T, choice s / T; an expert's run of <= T consecutive
 * slots never meets the same token twice, so each token's K experts are distinct. */
static std::vector<int32_t> routing_counts(int64_t T, int64_t K, const std::vector<int32_t> &counts)
{
    std::vector<int32_t> idx((size_t)(T * K));
    int64_t s = 0;
    for (size_t e = 0; e < counts.size(); e++) {
        if (counts[e] > T) {
            fprintf(stderr, "routing_counts: expert %zu has %d > T = %lld rows\n", e, counts[e], (long long)T);
            exit(2);
        }
        for (int32_t r = 0; r < counts[e]; r++, s++) idx[(size_t)((s % T) * K + s / T)] = (int32_t)e;
    }
    if (s != T * K) {
        fprintf(stderr, "routing_counts: counts sum to %lld, not T K = %lld\n", (long long)s, (long long)(T * K));
        exit(2);
    }
    return idx;
}

/* One MoE layer's routed-expert inputs on the device and the buffers of both versions. */
struct layer {
    int64_t T, D, Ex, K, I, n;
    dbuf x, gu, dn, idx, wt, perm, pos, cnt, off, tiles, h3, y3, h4, y4, eo, mo;
    dbuf hf3, yg3; /* v3's crossings (compare_versions): gate_up of y3 without gather, down of h3 gathered */
    dbuf gup, dnp; /* gu and dn packed for v5's tma 2 (pack_layer; NULL where the shapes are not packable) */
};

static void layer_alloc(layer &L)
{
    const int64_t n = L.T * L.K;
    L.n = n;
    L.perm = dnew(4 * n), L.pos = dnew(4 * n), L.cnt = dnew(4 * L.Ex), L.off = dnew(4 * L.Ex);
    L.tiles = dnew(4 * cuda_moe_grouped_tiles(n, L.Ex));
    L.h3 = dnew(2 * n * L.I), L.h4 = dnew(2 * n * L.I), L.y3 = dnew(2 * n * L.D), L.y4 = dnew(2 * n * L.D);
    L.eo = dnew(2 * L.T * L.D), L.mo = dnew(2 * L.T * L.D);
    L.hf3 = dnew(2 * n * L.I), L.yg3 = dnew(2 * n * L.D);
}
static void layer_free(layer &L)
{
    dbuf *bs[] = {&L.x, &L.gu, &L.dn, &L.idx, &L.wt, &L.perm, &L.pos, &L.cnt, &L.off, &L.tiles,
                  &L.h3, &L.y3, &L.h4, &L.y4, &L.eo, &L.mo, &L.hf3, &L.yg3, &L.gup, &L.dnp};
    for (dbuf *b : bs)
        if (b->p) dfree(*b);
}
/* The layer's weights packed for v5's tma 2 by the library's cuda_moe_pack_v5, when both GEMMs'
 * shapes allow it (the layout itself is checked apart, by case_pack). */
static void pack_layer(layer &L)
{
    if (!cuda_moe_v5_packable(2 * L.I, L.D, 1) || !cuda_moe_v5_packable(L.D, L.I, 0)) return;
    L.gup = dnew(2 * L.Ex * 2 * L.I * L.D), L.dnp = dnew(2 * L.Ex * L.D * L.I);
    RUN(cuda_moe_pack_v5(L.gup.p, L.gu.p, L.Ex, 2 * L.I, L.D, 1, Q3N_COMPUTE_BF16, g_stream, E_));
    RUN(cuda_moe_pack_v5(L.dnp.p, L.dn.p, L.Ex, L.D, L.I, 0, Q3N_COMPUTE_BF16, g_stream, E_));
    CK(cudaStreamSynchronize(g_stream));
}
static void route(layer &L)
{
    RUN(cuda_moe_permute((int32_t *)L.perm.p, (int32_t *)L.pos.p, (int32_t *)L.cnt.p, (int32_t *)L.off.p,
                         (const int32_t *)L.idx.p, L.T, L.Ex, L.K, g_stream, E_));
    RUN(cuda_moe_grouped_tiles_v3((int32_t *)L.tiles.p, (const int32_t *)L.cnt.p, (const int32_t *)L.off.p, L.n, L.Ex,
                                  g_stream, E_));
}
/* ver 3: v3 (bk 64); ver 4: v4 with `stages`. gate_up (gather, SwiGLU) into h, down of `hin` into y. */
static void gate_up_gemm(layer &L, int ver, int stages, dbuf &h)
{
    if (ver == 3)
        RUN(cuda_moe_grouped_gemm_v3(h.p, L.x.p, (const int32_t *)L.perm.p, L.K, L.gu.p, (const int32_t *)L.cnt.p,
                                     (const int32_t *)L.off.p, (const int32_t *)L.tiles.p, L.n, L.Ex, 2 * L.I, L.D, 1,
                                     Q3N_COMPUTE_BF16, g_stream, E_));
    else
        RUN(cuda_moe_grouped_gemm_v4_st(h.p, L.x.p, (const int32_t *)L.perm.p, L.K, L.gu.p, (const int32_t *)L.cnt.p,
                                        (const int32_t *)L.off.p, (const int32_t *)L.tiles.p, L.n, L.Ex, 2 * L.I, L.D,
                                        1, stages, Q3N_COMPUTE_BF16, g_stream, E_));
}
/* v5 configurations checked and timed beside the default: tiles of bn outputs, persistent grid
 * ("grid") or a block per tile ("tiles"), ring depth (st; 0 = the default, 4 for bn 256, 6 for
 * bn 128) and epilogue (0: fragments from registers; 1 "smem16": staged in shared memory, 16-byte
 * stores; 2 "bulk": staged, bulk async copies overlapping the next tile). Session 5 added the st and
 * epilogue ones, aimed at the down GEMM (Kin = 512: 8 k-tiles per tile); each runs both GEMMs.
 * early: stages released as soon as their own products retire (session 10, aimed at T = 4096: the
 * two production configurations with it). acl (session 11): A by TMA row boxes, per block (1,
 * "arows") or multicast over clusters of 2 or 4 blocks ("acl2", "acl4"), on the same two. l2
 * (session 15): L2 eviction hints, weights evict_first ("l2w"), A rows evict_last ("l2a"), both
 * ("l2wa"); 0 = none (the production entry picks them from the shape: g5_l2_auto). bpair
 * (session 18): clusters of 2 blocks on one output block of two neighbouring tiles, the weight tile
 * multicast where both tiles are of one expert ("bpair"), on the same two. */
struct v5_cfg {
    int bn, persistent, stages, epilogue, tma, early, acl, l2;
    const char *name;
    int bpair;
};
/* --l2 (session 15), --only SUBSTR (session 18): only the configurations whose name has g_only in
 * it, and the production entry (checks and timings). NULL: all. */
static const char *g_only = NULL;
static bool cfg_on(const v5_cfg *c) { return !c || !g_only || strstr(c->name, g_only) || !strcmp(c->name, "v5/bn256/grid/tma") || !strcmp(c->name, "v5/bn256/grid/st3/smem16/tma"); }
static const v5_cfg V5_CFGS[] = {{256, 1, 0, 0, 0, 0, 0, 0, "v5/bn256/grid"},
                                 {256, 1, 0, 0, 1, 0, 0, 0, "v5/bn256/grid/tma"},
                                 {256, 0, 0, 0, 0, 0, 0, 0, "v5/bn256/tiles"},
                                 {128, 1, 0, 0, 0, 0, 0, 0, "v5/bn128/grid"},
                                 {128, 0, 0, 0, 0, 0, 0, 0, "v5/bn128/tiles"},
                                 {256, 0, 3, 0, 0, 0, 0, 0, "v5/bn256/tiles/st3"},
                                 {256, 0, 2, 0, 0, 0, 0, 0, "v5/bn256/tiles/st2"},
                                 {256, 0, 3, 1, 0, 0, 0, 0, "v5/bn256/tiles/st3/smem16"},
                                 {256, 1, 3, 1, 0, 0, 0, 0, "v5/bn256/grid/st3/smem16"},
                                 {256, 1, 3, 1, 1, 0, 0, 0, "v5/bn256/grid/st3/smem16/tma"},
                                 {256, 0, 3, 2, 0, 0, 0, 0, "v5/bn256/tiles/st3/bulk"},
                                 {256, 1, 3, 2, 0, 0, 0, 0, "v5/bn256/grid/st3/bulk"},
                                 {256, 1, 0, 0, 2, 0, 0, 0, "v5/bn256/grid/tmapacked"},
                                 {256, 1, 3, 1, 2, 0, 0, 0, "v5/bn256/grid/st3/smem16/tmapacked"},
                                 {256, 1, 0, 0, 1, 1, 0, 0, "v5/bn256/grid/tma/early"},
                                 {256, 1, 3, 1, 1, 1, 0, 0, "v5/bn256/grid/st3/smem16/tma/early"},
                                 {256, 1, 0, 0, 1, 0, 1, 0, "v5/bn256/grid/tma/arows"},
                                 {256, 1, 0, 0, 1, 0, 2, 0, "v5/bn256/grid/tma/acl2"},
                                 {256, 1, 0, 0, 1, 0, 4, 0, "v5/bn256/grid/tma/acl4"},
                                 {256, 1, 3, 1, 1, 0, 1, 0, "v5/bn256/grid/st3/smem16/tma/arows"},
                                 {256, 1, 3, 1, 1, 0, 2, 0, "v5/bn256/grid/st3/smem16/tma/acl2"},
                                 {256, 1, 3, 1, 1, 0, 4, 0, "v5/bn256/grid/st3/smem16/tma/acl4"},
                                 {256, 1, 0, 0, 1, 0, 0, 1, "v5/bn256/grid/tma/l2w"},
                                 {256, 1, 0, 0, 1, 0, 0, 2, "v5/bn256/grid/tma/l2a"},
                                 {256, 1, 0, 0, 1, 0, 0, 3, "v5/bn256/grid/tma/l2wa"},
                                 {256, 1, 3, 1, 1, 0, 0, 1, "v5/bn256/grid/st3/smem16/tma/l2w"},
                                 {256, 1, 3, 1, 1, 0, 0, 2, "v5/bn256/grid/st3/smem16/tma/l2a"},
                                 {256, 1, 3, 1, 1, 0, 0, 3, "v5/bn256/grid/st3/smem16/tma/l2wa"},
                                 {256, 1, 0, 0, 1, 1, 0, 2, "v5/bn256/grid/tma/l2a/early"},
                                 {256, 1, 0, 0, 1, 0, 0, 0, "v5/bn256/grid/tma/bpair", 1},
                                 {256, 1, 0, 0, 1, 0, 0, 2, "v5/bn256/grid/tma/l2a/bpair", 1},
                                 {256, 1, 3, 1, 1, 0, 0, 0, "v5/bn256/grid/st3/smem16/tma/bpair", 1}};
#define N_V5_CFGS (int)(sizeof V5_CFGS / sizeof V5_CFGS[0])
/* One v5 GEMM of the layer's routing: out = A W^T (A row p = x[rows[p] / div], or x[p] without rows);
 * c NULL: the production entry cuda_moe_grouped_gemm_v5 (half tiles off, G5_HALF_TILES), else
 * configuration c with half tiles on (half 1) or off (0); tma 2 reads the packed copy of W. */
static void v5_gemm(layer &L, const v5_cfg *c, int half, void *out, const void *x, const int32_t *rows, int64_t div,
                    const void *W, int64_t N, int64_t Kin, int swiglu)
{
    if (c && c->tma == 2) W = W == L.gu.p ? L.gup.p : L.dnp.p;
    if (!c)
        RUN(cuda_moe_grouped_gemm_v5(out, x, rows, div, W, (const int32_t *)L.cnt.p, (const int32_t *)L.off.p,
                                     (const int32_t *)L.tiles.p, L.n, L.Ex, N, Kin, swiglu, Q3N_COMPUTE_BF16, g_stream,
                                     E_));
    else
        RUN(cuda_moe_grouped_gemm_v5_cfg(out, x, rows, div, W, (const int32_t *)L.cnt.p, (const int32_t *)L.off.p,
                                         (const int32_t *)L.tiles.p, L.n, L.Ex, N, Kin, swiglu, c->bn, c->persistent,
                                         c->stages, c->epilogue, half, c->tma, c->early, c->acl, c->bpair, c->l2,
                                         Q3N_COMPUTE_BF16, g_stream, E_));
}
/* v5 gate_up (x gathered, SwiGLU) into h and down (of hin) into y, as the model runs them */
static void gate_up_v5(layer &L, const v5_cfg *c, int half, dbuf &h)
{
    v5_gemm(L, c, half, h.p, L.x.p, (const int32_t *)L.perm.p, L.K, L.gu.p, 2 * L.I, L.D, 1);
}
static void down_v5(layer &L, const v5_cfg *c, int half, const dbuf &hin, dbuf &y)
{
    v5_gemm(L, c, half, y.p, hin.p, NULL, 1, L.dn.p, L.D, L.I, 0);
}
/* The crossings (ver 3: v3, else v5 c / half): gate_up of a [n, D] input without the gather into h,
 * down of a [n, I] input gathered by perm (div 1: A row p = hin[perm[p]]) into y. */
static void gate_up_flat(layer &L, int ver, const v5_cfg *c, int half, const dbuf &a, dbuf &h)
{
    if (ver == 3)
        RUN(cuda_moe_grouped_gemm_v3(h.p, a.p, NULL, 1, L.gu.p, (const int32_t *)L.cnt.p, (const int32_t *)L.off.p,
                                     (const int32_t *)L.tiles.p, L.n, L.Ex, 2 * L.I, L.D, 1, Q3N_COMPUTE_BF16,
                                     g_stream, E_));
    else
        v5_gemm(L, c, half, h.p, a.p, NULL, 1, L.gu.p, 2 * L.I, L.D, 1);
}
static void down_gather(layer &L, int ver, const v5_cfg *c, int half, const dbuf &hin, dbuf &y)
{
    if (ver == 3)
        RUN(cuda_moe_grouped_gemm_v3(y.p, hin.p, (const int32_t *)L.perm.p, 1, L.dn.p, (const int32_t *)L.cnt.p,
                                     (const int32_t *)L.off.p, (const int32_t *)L.tiles.p, L.n, L.Ex, L.D, L.I, 0,
                                     Q3N_COMPUTE_BF16, g_stream, E_));
    else
        v5_gemm(L, c, half, y.p, hin.p, (const int32_t *)L.perm.p, 1, L.dn.p, L.D, L.I, 0);
}
static void down_gemm(layer &L, int ver, int stages, const dbuf &hin, dbuf &y)
{
    if (ver == 3)
        RUN(cuda_moe_grouped_gemm_v3(y.p, hin.p, NULL, 1, L.dn.p, (const int32_t *)L.cnt.p, (const int32_t *)L.off.p,
                                     (const int32_t *)L.tiles.p, L.n, L.Ex, L.D, L.I, 0, Q3N_COMPUTE_BF16, g_stream,
                                     E_));
    else
        RUN(cuda_moe_grouped_gemm_v4_st(y.p, hin.p, NULL, 1, L.dn.p, (const int32_t *)L.cnt.p,
                                        (const int32_t *)L.off.p, (const int32_t *)L.tiles.p, L.n, L.Ex, L.D, L.I, 0,
                                        stages, Q3N_COMPUTE_BF16, g_stream, E_));
}

/* Rows [0, c) and [n - c, n) of a bf16 [n, w] buffer (c = min(n, 8192) / 2, all rows when n <= 8192):
 * enough to cover the first and last experts without copying gigabytes at the real dims. */
static std::vector<float> rows_sample(const dbuf &b, int64_t n, int64_t w)
{
    if (n <= 8192) return down(b, n * w, 1);
    const int64_t c = 4096;
    std::vector<uint16_t> h((size_t)(2 * c * w));
    CK(cudaMemcpy(h.data(), b.p, 2 * (size_t)(c * w), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(h.data() + c * w, (const char *)b.p + 2 * (size_t)((n - c) * w), 2 * (size_t)(c * w),
                  cudaMemcpyDeviceToHost));
    std::vector<float> v(h.size());
    for (size_t i = 0; i < h.size(); i++) {
        const uint32_t u = (uint32_t)h[i] << 16;
        memcpy(&v[i], &u, 4);
    }
    return v;
}

/* Elements whose bits differ between two bf16 buffers of n elements, counted on the device: the
 * whole output, where rows_sample copies only the first and last 4096 rows at the real dims. */
__global__ void diff_count_kernel(unsigned long long *cnt, const uint16_t *a, const uint16_t *b, int64_t n)
{
    unsigned long long c = 0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        c += a[i] != b[i];
    if (c) atomicAdd(cnt, c);
}
static int64_t diff_count(const dbuf &a, const dbuf &b, int64_t n)
{
    unsigned long long *d = NULL, h = 0;
    CK(cudaMalloc(&d, sizeof h));
    CK(cudaMemsetAsync(d, 0, sizeof h, g_stream));
    diff_count_kernel<<<1024, 256, 0, g_stream>>>(d, (const uint16_t *)a.p, (const uint16_t *)b.p, n);
    CK(cudaGetLastError());
    CK(cudaMemcpyAsync(&h, d, sizeof h, cudaMemcpyDeviceToHost, g_stream));
    CK(cudaStreamSynchronize(g_stream));
    CK(cudaFree(d));
    return (int64_t)h;
}

/* The tiles of the routing in L (after route): how many have 1..64 valid rows (done as half tiles
 * when half tiles are on), 65..127, and 128, from the device's counts (the tile table cuts each
 * expert's rows into 128-row tiles). */
static void tile_kinds(const layer &L, int64_t kinds[3])
{
    std::vector<int32_t> cnt((size_t)L.Ex);
    CK(cudaMemcpy(cnt.data(), L.cnt.p, 4 * L.Ex, cudaMemcpyDeviceToHost));
    kinds[0] = kinds[1] = kinds[2] = 0;
    for (int32_t c : cnt)
        for (int32_t r0 = 0; r0 < c; r0 += 128) {
            const int32_t rows = std::min(c - r0, 128);
            kinds[rows <= 64 ? 0 : rows < 128 ? 1 : 2]++;
        }
}

/* One v5 configuration (c NULL: the production entry) with half tiles on or off vs v3's outputs
 * (want: h3, y3, hf3, yg3, sampled by rows_sample): the model's gate_up and down and the two
 * crossings, each bitwise over the whole output (diff_count) and on the sample, 3 runs bitwise. */
static void check_v5(layer &L, const char *name, const v5_cfg *c, int half, const std::vector<float> want[4])
{
    if (c && c->tma == 2 && !L.gup.p) {
        printf("%s %s%s: the shapes are not packable (cuda_moe_v5_packable), not run\n", name, c->name,
               half ? "" : "/nohalf");
        return;
    }
    static const char *const what_of[4] = {"gate_up+swiglu", "down", "gate_up+swiglu/flat", "down/gather"};
    const dbuf *ref[4] = {&L.h3, &L.y3, &L.hf3, &L.yg3};
    std::vector<float> first[4];
    int det[4] = {1, 1, 1, 1};
    int64_t diff[4] = {0, 0, 0, 0}; /* most elements != v3 in one run, over the whole outputs */
    for (int r = 0; r < REPEAT; r++) {
        for (int k = 0; k < 4; k++) {
            dbuf &o = k % 2 ? L.y4 : L.h4;
            const int64_t w = k % 2 ? L.D : L.I;
            poison(o);
            if (k == 0) gate_up_v5(L, c, half, o);
            if (k == 1) down_v5(L, c, half, L.h3, o);
            if (k == 2) gate_up_flat(L, 5, c, half, L.y3, o);
            if (k == 3) down_gather(L, 5, c, half, L.h3, o);
            CK(cudaStreamSynchronize(g_stream));
            diff[k] = std::max(diff[k], diff_count(o, *ref[k], L.n * w));
            auto got = rows_sample(o, L.n, w);
            if (r == 0)
                first[k] = got;
            else
                det[k] &= same_bits(got, first[k]);
            if (r == REPEAT - 1) {
                char what[240];
                snprintf(what, sizeof what, "%s %s%s %s == v3 bitwise (%lld of %lld differ)", name, c ? c->name : "v5",
                         half ? "" : "/nohalf", what_of[k], (long long)diff[k], (long long)(L.n * w));
                check(what, first[k], want[k], 0.0, det[k] && same_bits(first[k], want[k]) && diff[k] == 0, &o);
            }
        }
    }
}

/* v4 and v5 vs v3 on the same routed inputs: h (gate_up), y (down of v3's h), bitwise equal for v4's
 * two depths and every v5 configuration with half tiles on and off (check_v5), 3 runs bitwise each.
 * h4/y4 hold the last version's outputs. */
static void compare_versions(layer &L, const char *name)
{
    route(L);
    gate_up_gemm(L, 3, 0, L.h3);
    down_gemm(L, 3, 0, L.h3, L.y3);
    gate_up_flat(L, 3, NULL, 0, L.y3, L.hf3);
    down_gather(L, 3, NULL, 0, L.h3, L.yg3);
    CK(cudaStreamSynchronize(g_stream));
    int64_t kinds[3];
    tile_kinds(L, kinds);
    printf("%s: tiles with 1..64 rows (half tiles) %lld, 65..127 rows %lld, 128 rows %lld\n", name,
           (long long)kinds[0], (long long)kinds[1], (long long)kinds[2]);
    const auto h3 = rows_sample(L.h3, L.n, L.I), y3 = rows_sample(L.y3, L.n, L.D);
    std::vector<float> h_st[2], y_st[2];
    for (int si = 0; si < 2; si++) {
        const int st = 3 + si;
        int det = 1;
        for (int r = 0; r < REPEAT; r++) {
            poison(L.h4);
            poison(L.y4);
            gate_up_gemm(L, 4, st, L.h4);
            down_gemm(L, 4, st, L.h3, L.y4);
            CK(cudaStreamSynchronize(g_stream));
            auto h = rows_sample(L.h4, L.n, L.I), y = rows_sample(L.y4, L.n, L.D);
            if (r == 0)
                h_st[si] = h, y_st[si] = y;
            else
                det &= same_bits(h, h_st[si]) && same_bits(y, y_st[si]);
        }
        char what[240];
        snprintf(what, sizeof what, "%s v4/st%d gate_up+swiglu == v3 bitwise", name, st);
        check(what, h_st[si], h3, 0.0, det && same_bits(h_st[si], h3), &L.h4);
        snprintf(what, sizeof what, "%s v4/st%d down == v3 bitwise", name, st);
        check(what, y_st[si], y3, 0.0, det && same_bits(y_st[si], y3), &L.y4);
    }
    char what[240];
    snprintf(what, sizeof what, "%s v4 st3 == st4 bitwise", name);
    check(what, h_st[0], h_st[1], 0.0, same_bits(h_st[0], h_st[1]) && same_bits(y_st[0], y_st[1]), NULL);
    const std::vector<float> want[4] = {h3, y3, rows_sample(L.hf3, L.n, L.I), rows_sample(L.yg3, L.n, L.D)};
    check_v5(L, name, NULL, 1, want);
    for (int ci = 0; ci < N_V5_CFGS; ci++)
        for (int half = g_only ? 0 : 1; half >= 0 && cfg_on(&V5_CFGS[ci]); half--) check_v5(L, name, &V5_CFGS[ci], half, want);
}

/* cuda_moe_pack_v5's layout against the one moe_pack.cu documents, written out again here from
 * the documentation: W [E][N][Kin] holds 16-bit codes of each element's index (pass 0: the low 16
 * bits, pass 1: the high ones), so an element packed to the wrong place shows in one pass or the
 * other; packed on the device and compared with the host's placement; NaN-poisoned output, guard,
 * 3 runs bitwise. */
static void case_pack(int64_t E, int64_t N, int64_t Kin, int swiglu)
{
    const int64_t n = E * N * Kin, ktiles = Kin / 64;
    std::vector<int64_t> place((size_t)n); /* packed position of W element i */
    for (int64_t e = 0; e < E; e++)
        for (int64_t r = 0; r < N; r++) {
            /* which item and tile row holds W row r */
            int64_t xb, rr;
            if (swiglu) {
                const int64_t h = N / 2, c = r % h;
                xb = c / 128, rr = (r >= h ? 128 : 0) + c % 128;
            } else {
                xb = r / 256, rr = r % 256;
            }
            for (int64_t k = 0; k < Kin; k++)
                place[(size_t)(e * N * Kin + r * Kin + k)] =
                    e * N * Kin + ((xb * ktiles + k / 64) * 256 + rr) * 64 + k % 64;
        }
    dbuf src = dnew(2 * n), dst = dnew(2 * n);
    int64_t diff = 0;
    int det = 1, guard = 1;
    for (int pass = 0; pass < 2; pass++) {
        std::vector<uint16_t> w((size_t)n), want((size_t)n), first((size_t)n), got((size_t)n);
        for (int64_t i = 0; i < n; i++) {
            w[(size_t)i] = (uint16_t)(pass ? i >> 16 : i);
            want[(size_t)place[(size_t)i]] = w[(size_t)i];
        }
        CK(cudaMemcpy(src.p, w.data(), 2 * n, cudaMemcpyHostToDevice));
        for (int r = 0; r < REPEAT; r++) {
            poison(dst);
            RUN(cuda_moe_pack_v5(dst.p, src.p, E, N, Kin, swiglu, Q3N_COMPUTE_BF16, g_stream, E_));
            CK(cudaStreamSynchronize(g_stream));
            CK(cudaMemcpy(r ? got.data() : first.data(), dst.p, 2 * n, cudaMemcpyDeviceToHost));
            if (r) det &= got == first;
        }
        for (int64_t i = 0; i < n; i++) diff += first[(size_t)i] != want[(size_t)i];
        guard &= guard_ok(dst);
    }
    g_cases++;
    const int pass = det && diff == 0 && guard;
    if (!pass) g_fail++;
    char name[160];
    snprintf(name, sizeof name, "pack v5 E=%lld N=%lld Kin=%lld %s", (long long)E, (long long)N, (long long)Kin,
             swiglu ? "swiglu" : "plain");
    printf("%-62s %lld of %lld codes misplaced det=%s guard=%s %s\n", name, (long long)diff, (long long)(2 * n),
           det ? "yes" : "NO", guard ? "ok" : "BROKEN", pass ? "OK" : "FAIL");
    dfree(src);
    dfree(dst);
}

/* Permutation v2 (scans 1, 2, 3) vs v1 on the same routing: every output bitwise, 3 runs each;
 * timed when asked. */
static void case_permute(int64_t T, int64_t Ex, int64_t K, int skew, int timing)
{
    std::vector<int32_t> idx = routing(T, Ex, K, skew);
    const int64_t n = T * K;
    dbuf di = dnew(4 * n), p1 = dnew(4 * n), q1 = dnew(4 * n), c1 = dnew(4 * Ex), o1 = dnew(4 * Ex), p2 = dnew(4 * n),
         q2 = dnew(4 * n), c2 = dnew(4 * Ex), o2 = dnew(4 * Ex), scr = dnew(4 * cuda_moe_permute_scratch(T, Ex, K));
    CK(cudaMemcpy(di.p, idx.data(), 4 * n, cudaMemcpyHostToDevice));
    auto v1 = [&] {
        RUN(cuda_moe_permute((int32_t *)p1.p, (int32_t *)q1.p, (int32_t *)c1.p, (int32_t *)o1.p, (const int32_t *)di.p,
                             T, Ex, K, g_stream, E_));
    };
    int scan = 1; /* the chunk scan's version: each of 1, 2 and 3 is checked below */
    auto v2 = [&] {
        RUN(cuda_moe_permute_v2_ver((int32_t *)p2.p, (int32_t *)q2.p, (int32_t *)c2.p, (int32_t *)o2.p,
                                    (int32_t *)scr.p, (const int32_t *)di.p, T, Ex, K, scan, g_stream, E_));
    };
    auto all = [&](dbuf &p, dbuf &q, dbuf &c, dbuf &o) {
        std::vector<int32_t> v((size_t)(2 * n + 2 * Ex));
        CK(cudaMemcpy(v.data(), p.p, 4 * n, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(v.data() + n, q.p, 4 * n, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(v.data() + 2 * n, c.p, 4 * Ex, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(v.data() + 2 * n + Ex, o.p, 4 * Ex, cudaMemcpyDeviceToHost));
        return v;
    };
    v1();
    CK(cudaStreamSynchronize(g_stream));
    const std::vector<int32_t> want = all(p1, q1, c1, o1);
    std::vector<int32_t> first;
    int det = 1;
    for (int r = 0; r < 3 * REPEAT; r++) { /* scan v1, v2, then v3, 3 runs each: all the same bits */
        scan = 1 + r / REPEAT;
        if (scan == 3 && cuda_moe_permute_scan_ver_for(Ex) != 3) scan = 2; /* v3 does not fit this E */
        poison(p2), poison(q2), poison(c2), poison(o2);
        v2();
        CK(cudaStreamSynchronize(g_stream));
        auto got = all(p2, q2, c2, o2);
        if (r == 0)
            first = got;
        else
            det &= got == first;
    }
    int64_t diff = 0;
    for (size_t i = 0; i < want.size(); i++) diff += first[i] != want[i];
    g_cases++;
    const int pass = det && diff == 0 && guard_ok(p2) && guard_ok(q2) && guard_ok(c2) && guard_ok(o2) && guard_ok(scr);
    if (!pass) g_fail++;
    char name[160];
    snprintf(name, sizeof name, "permute v2 (scan 1, 2, 3) == v1 bitwise T=%lld E=%lld K=%lld %s", (long long)T, (long long)Ex,
             (long long)K, skew ? "skewed" : "uniform");
    printf("%-62s %lld of %lld ints differ det=%s guard=%s %s\n", name, (long long)diff, (long long)want.size(),
           det ? "yes" : "NO", pass ? "ok" : "?", pass ? "OK" : "FAIL");
    if (timing) {
        scan = 1;
        const double t1 = time_ms(v1, 10), t21 = time_ms(v2, 10);
        scan = 2;
        const double t22 = time_ms(v2, 10);
        scan = 3;
        const double t23 = time_ms(v2, 10);
        printf("TIME permute T=%lld E=%lld K=%lld: v1 %.3f ms, v2 %.3f ms (scan v1), %.3f ms (scan v2), %.3f ms (scan v3)\n",
               (long long)T, (long long)Ex, (long long)K, t1, t21, t22, t23);
    }
    dbuf *bs[] = {&di, &p1, &q1, &c1, &o1, &p2, &q2, &c2, &o2, &scr};
    for (dbuf *b : bs) dfree(*b);
}

/* Small shapes: host data, v4 and v5 vs v3, then the whole v4 and v5 chains + combine vs the CPU
 * reference. counts: NULL for random routing (skew as in routing()), else each expert's rows
 * (routing_counts; Ex = counts->size()). */
static void case_small(int64_t T, int64_t D, int64_t Ex, int64_t K, int64_t I, int skew,
                       const std::vector<int32_t> *counts = NULL)
{
    char name[160];
    snprintf(name, sizeof name, "T=%lld D=%lld E=%lld K=%lld I=%lld %s", (long long)T, (long long)D, (long long)Ex,
             (long long)K, (long long)I, counts ? "counts" : skew ? "skewed" : "uniform");
    if (!cuda_moe_grouped_v3_ok(2 * I, D, 1, Q3N_COMPUTE_BF16) || !cuda_moe_grouped_v3_ok(D, I, 0, Q3N_COMPUTE_BF16)) {
        printf("%-62s v3/v4 not usable here (other paths)\n", name);
        return;
    }
    layer L;
    L.T = T, L.D = D, L.Ex = Ex, L.K = K, L.I = I;
    auto x = rounded(randn(T * D, 1.0)), gu = rounded(randn(Ex * 2 * I * D, 1.0 / sqrt((double)D))),
         dn = rounded(randn(Ex * D * I, 1.0 / sqrt((double)I)));
    std::vector<int32_t> idx = counts ? routing_counts(T, K, *counts) : routing(T, Ex, K, skew);
    auto wt = rounded(randu(T * K, 0.02, 0.5));
    L.x = up(x, 1), L.gu = up(gu, 1), L.dn = up(dn, 1), L.wt = up(wt, 0);
    L.idx = dnew(4 * idx.size());
    CK(cudaMemcpy(L.idx.p, idx.data(), 4 * idx.size(), cudaMemcpyHostToDevice));
    layer_alloc(L);
    pack_layer(L);
    compare_versions(L, name);

    /* the production chain with v4 vs ref_moe_experts_forward */
    std::vector<int64_t> idx64(idx.begin(), idx.end());
    std::vector<struct q3n_mlp_weights> ew((size_t)Ex);
    for (int64_t e = 0; e < Ex; e++) {
        ew[e].gate_proj = gu.data() + e * 2 * I * D;
        ew[e].up_proj = gu.data() + e * 2 * I * D + I * D;
        ew[e].down_proj = dn.data() + e * D * I;
    }
    std::vector<float> want((size_t)(T * D)), scr((size_t)(2 * I + D));
    ref_moe_experts_forward(want.data(), x.data(), idx64.data(), wt.data(), ew.data(), scr.data(), T, D, I, K);
    poison(L.eo);
    gate_up_gemm(L, 4, 3, L.h4);
    down_gemm(L, 4, 3, L.h4, L.y4);
    RUN(cuda_moe_combine(L.eo.p, L.mo.p, L.y4.p, (const int32_t *)L.pos.p, (const float *)L.wt.p, NULL, NULL, T, D, K,
                         Q3N_COMPUTE_BF16, g_stream, E_));
    CK(cudaStreamSynchronize(g_stream));
    char what[240];
    snprintf(what, sizeof what, "%s v4 chain vs ref_moe_experts_forward", name);
    check(what, down(L.eo, T * D, 1), want, 2e-2, 1, &L.eo);
    poison(L.eo);
    gate_up_v5(L, NULL, 1, L.h4);
    down_v5(L, NULL, 1, L.h4, L.y4);
    RUN(cuda_moe_combine(L.eo.p, L.mo.p, L.y4.p, (const int32_t *)L.pos.p, (const float *)L.wt.p, NULL, NULL, T, D, K,
                         Q3N_COMPUTE_BF16, g_stream, E_));
    CK(cudaStreamSynchronize(g_stream));
    snprintf(what, sizeof what, "%s v5 chain vs ref_moe_experts_forward", name);
    check(what, down(L.eo, T * D, 1), want, 2e-2, 1, &L.eo);
    layer_free(L);
}

/* Real dims: device-filled weights, v4 and v5 vs v3 on every row, then timings. */
static void case_real(int64_t T, int timing)
{
    layer L;
    L.T = T, L.D = 2048, L.Ex = 512, L.K = 10, L.I = 512;
    L.x = dnew(2 * T * L.D), L.gu = dnew(2 * L.Ex * 2 * L.I * L.D), L.dn = dnew(2 * L.Ex * L.D * L.I);
    fill_bf16_hashed<<<1024, 256, 0, g_stream>>>((__nv_bfloat16 *)L.x.p, T * L.D, 1.0f, 1);
    fill_bf16_hashed<<<1024, 256, 0, g_stream>>>((__nv_bfloat16 *)L.gu.p, L.Ex * 2 * L.I * L.D, 0.038f, 2);
    fill_bf16_hashed<<<1024, 256, 0, g_stream>>>((__nv_bfloat16 *)L.dn.p, L.Ex * L.D * L.I, 0.077f, 3);
    CK(cudaGetLastError());
    std::vector<int32_t> idx = routing(T, L.Ex, L.K, 0);
    L.idx = dnew(4 * idx.size());
    CK(cudaMemcpy(L.idx.p, idx.data(), 4 * idx.size(), cudaMemcpyHostToDevice));
    L.wt = up(randu(T * L.K, 0.02, 0.5), 0);
    layer_alloc(L);
    pack_layer(L);
    char name[160];
    snprintf(name, sizeof name, "real dims T=%lld", (long long)T);
    compare_versions(L, name);
    if (timing && g_only) { /* the filtered configurations and the production entry, half tiles off, twice */
        const double gu_fl = 2.0 * L.n * L.D * 2 * L.I, dn_fl = 2.0 * L.n * L.I * L.D;
        for (int pass = 0; pass < 2; pass++)
            for (int ci = -1; ci < N_V5_CFGS; ci++) {
                const v5_cfg *c = ci < 0 ? NULL : &V5_CFGS[ci];
                if (!cfg_on(c)) continue;
                const float g5 = time_ms([&] { gate_up_v5(L, c, 0, L.h4); }, 10);
                const float d5 = time_ms([&] { down_v5(L, c, 0, L.h3, L.y4); }, 10);
                printf("TIME grouped %s T=%lld pass %d: gate_up+swiglu %.3f ms (%.0f TFLOP/s), down %.3f ms (%.0f "
                       "TFLOP/s), sum %.3f ms\n",
                       c ? c->name : "v5 (production entry)", (long long)T, pass, g5, gu_fl / g5 * 1e-9, d5,
                       dn_fl / d5 * 1e-9, g5 + d5);
            }
        /* Session 19: x's rows written once in expert order (cuda_gather_rows), then gate_up on those
         * contiguous rows (no gather: A tiles are whole runs of memory) by the production entry and
         * without its L2 hint, against the fused gather above: the most that permuting x could save. */
        const v5_cfg *plain = NULL; /* the production configuration without the L2 hint */
        for (int ci = 0; ci < N_V5_CFGS; ci++)
            if (!strcmp(V5_CFGS[ci].name, "v5/bn256/grid/tma")) plain = &V5_CFGS[ci];
        for (int pass = 0; pass < 2 && plain; pass++) {
            const float gp = time_ms([&] {
                RUN(cuda_gather_rows(L.y4.p, L.x.p, (const int32_t *)L.perm.p, L.n, L.K, L.D, Q3N_COMPUTE_BF16,
                                     g_stream, E_));
            }, 10);
            const float gf = time_ms([&] { gate_up_flat(L, 5, NULL, 0, L.y4, L.h4); }, 10);
            const float gfn = time_ms([&] { gate_up_flat(L, 5, plain, 0, L.y4, L.h4); }, 10);
            printf("TIME permuted x T=%lld pass %d: gather_rows %.3f ms; gate_up+swiglu on the permuted rows %.3f ms "
                   "(%.0f TFLOP/s; %s: %.3f ms); sum %.3f ms\n",
                   (long long)T, pass, gp, gf, gu_fl / gf * 1e-9, plain->name, gfn, gp + gf);
        }
    } else if (timing) {
        const double gu_fl = 2.0 * L.n * L.D * 2 * L.I, dn_fl = 2.0 * L.n * L.I * L.D;
        const float g3 = time_ms([&] { gate_up_gemm(L, 3, 0, L.h3); }, 10), d3 = time_ms([&] { down_gemm(L, 3, 0, L.h3, L.y3); }, 10);
        printf("TIME grouped v3 T=%lld: gate_up+swiglu %.3f ms (%.0f TFLOP/s), down %.3f ms (%.0f TFLOP/s), sum %.3f ms\n",
               (long long)T, g3, gu_fl / g3 * 1e-9, d3, dn_fl / d3 * 1e-9, g3 + d3);
        float v4sum = 0.0f; /* st3, v4's default */
        for (int st = 3; st <= 4; st++) {
            const float g4 = time_ms([&] { gate_up_gemm(L, 4, st, L.h4); }, 10),
                        d4 = time_ms([&] { down_gemm(L, 4, st, L.h3, L.y4); }, 10);
            printf("TIME grouped v4/st%d T=%lld: gate_up+swiglu %.3f ms (%.0f TFLOP/s), down %.3f ms (%.0f TFLOP/s), "
                   "sum %.3f ms (%.2fx v3)\n",
                   st, (long long)T, g4, gu_fl / g4 * 1e-9, d4, dn_fl / d4 * 1e-9, g4 + d4, (g3 + d3) / (g4 + d4));
            if (st == 3) v4sum = g4 + d4;
        }
        /* the production entry (half tiles off: G5_HALF_TILES), then each configuration with half tiles off, on */
        for (int ci = -1; ci < N_V5_CFGS; ci++) {
            const v5_cfg *c = ci < 0 ? NULL : &V5_CFGS[ci];
            if (c && c->tma == 2 && !L.gup.p) continue;
            float g5[2] = {0, 0}, d5[2] = {0, 0}; /* [half] */
            for (int half = c ? 0 : 1; half <= 1; half++) {
                g5[half] = time_ms([&] { gate_up_v5(L, c, half, L.h4); }, 10);
                d5[half] = time_ms([&] { down_v5(L, c, half, L.h3, L.y4); }, 10);
                printf("TIME grouped %s%s T=%lld: gate_up+swiglu %.3f ms (%.0f TFLOP/s), down %.3f ms (%.0f TFLOP/s), "
                       "sum %.3f ms (%.2fx v3, %.2fx v4/st3)\n",
                       c ? c->name : "v5", half ? "" : "/nohalf", (long long)T, g5[half], gu_fl / g5[half] * 1e-9,
                       d5[half], dn_fl / d5[half] * 1e-9, g5[half] + d5[half], (g3 + d3) / (g5[half] + d5[half]),
                       v4sum / (g5[half] + d5[half]));
            }
            if (c)
                printf("TIME half tiles %s T=%lld: gate_up+swiglu %.3f -> %.3f ms (%.3fx), down %.3f -> %.3f ms "
                       "(%.3fx), sum %.3f -> %.3f ms (%.3fx)\n",
                       c->name, (long long)T, g5[0], g5[1], g5[1] / g5[0], d5[0], d5[1], d5[1] / d5[0],
                       g5[0] + d5[0], g5[1] + d5[1], (g5[1] + d5[1]) / (g5[0] + d5[0]));
        }
    }
    layer_free(L);
}

/* Median of reps CUDA-event timings of f (one warm-up call first). */
static float time_ms(const std::function<void()> &f, int reps) { return (float)time_events(f, reps, 1).median_ms; }

/* Forced expert rows: last tiles of 1..64 rows (half tiles), 65..127 and exactly 128, an empty
 * expert. D = 328, I = 136: the last output block of each GEMM is partly past N, and in a half
 * tile the second consumer's half of it lies wholly past N (nothing to store) at BN 256 for
 * both GEMMs, at BN 128 for gate_up; Kin 328 / 136: a partial last k-tile. Then the real D, I
 * (whole k-tiles, N a multiple of BN). Tile tables of 25, 13 and 14 tiles: with weight pairs the
 * odd ones end in a ghost (moe_wgmma5.cu's g5_tile), and each has pairs of one expert (the weight
 * tile multicast) and pairs straddling two experts. */
static void forced_rows_cases()
{
    std::vector<int32_t> c = {1, 63, 64, 65, 127, 128, 129, 192, 193, 200, 256, 320, 0, 448};
    int32_t sum = 0;
    for (int32_t v : c) sum += v;
    c.push_back(2 * 1200 - sum); /* 214: a last tile of 86 */
    case_small(1200, 328, (int64_t)c.size(), 2, 136, 0, &c);
    std::vector<int32_t> r = {1, 64, 65, 128, 192, 320, 0};
    sum = 0;
    for (int32_t v : r) sum += v;
    r.push_back(2 * 600 - sum); /* 430: a last tile of 46 */
    case_small(600, 2048, (int64_t)r.size(), 2, 512, 0, &r);
    /* 3 + 3 + 2 + 2 + 1 + 2 + 1 = 14 tiles, the pairs: one expert, two, one, one, one, two, two */
    const std::vector<int32_t> p = {320, 320, 256, 129, 1, 254, 64}; /* sum 1344 = 2 x 672 */
    case_small(672, 328, (int64_t)p.size(), 2, 136, 0, &p);
}

int main(int argc, char **argv)
{
    const int quick = argc > 1 && !strcmp(argv[1], "--quick");
    CK(cudaStreamCreate(&g_stream));
    q3n_rng_seed(&g_rng, 20261205);
    /* --l2: the L2-hint configurations at the real dims only; --only SUBSTR: the configurations
     * whose name has SUBSTR, on the forced-rows shapes (odd and even tile counts, partial blocks
     * and k-tiles) and then the real dims */
    const int only = argc > 2 && !strcmp(argv[1], "--only");
    if ((argc > 1 && !strcmp(argv[1], "--l2")) || only) {
        g_only = only ? argv[2] : "l2";
        if (!cuda_moe_grouped_v4_supported()) {
            printf("grouped v5 (wgmma) needs compute capability 9.0: not tested on this device\n");
            return 0;
        }
        if (only) forced_rows_cases();
        case_real(4096, 1);
        case_real(16384, 1);
        printf("%d cases, %d failed\n", g_cases, g_fail);
        return g_fail ? 1 : 0;
    }
    /* permutation: T, E, K, skew, timing */
    case_permute(1, 8, 1, 0, 0);
    case_permute(7, 64, 10, 1, 0);
    case_permute(300, 512, 10, 1, 0);
    case_permute(1000, 4096, 8, 0, 0);
    case_permute(50, 8192, 4, 1, 0); /* one warp per block */
    case_permute(4096, 512, 10, 0, !quick);
    case_permute(16384, 512, 10, 1, !quick);
    /* grouped GEMM: T, D, E, K, I, skew */
    if (!cuda_moe_grouped_v4_supported()) {
        printf("grouped v4/v5 (wgmma) need compute capability 9.0: not tested on this device\n");
        printf("%d cases, %d failed\n", g_cases, g_fail);
        return g_fail ? 1 : 0;
    }
    /* the packed layout of v5's tma 2: E, N, Kin, swiglu (packable shapes only) */
    case_pack(3, 512, 128, 0);
    case_pack(2, 256, 192, 1);
    case_pack(2, 1024, 64, 1);
    case_pack(1, 2048, 512, 0); /* the real down GEMM's expert */
    case_small(1, 256, 8, 1, 128, 0);
    case_small(2, 256, 8, 2, 128, 0);
    case_small(7, 200, 64, 10, 72, 1);  /* D, I not tile multiples */
    case_small(63, 264, 64, 2, 136, 1); /* Kin of the down GEMM = 136: a partial k-tile */
    case_small(200, 256, 512, 10, 128, 1);
    case_small(1000, 328, 64, 10, 96, 1);
    case_small(1000, 256, 8, 2, 64, 1); /* ~250+ rows per expert, one hot */
    case_small(4096, 136, 8, 1, 40, 0); /* many tiles per expert */
    case_small(300, 2048, 8, 2, 512, 0); /* real D, I */
    forced_rows_cases();
    case_real(4096, !quick);
    if (!quick) case_real(16384, 1);
    printf("%d cases, %d failed\n", g_cases, g_fail);
    return g_fail ? 1 : 0;
}
