/* moe_wgmma5.cu — grouped expert GEMM v5: v4's contract, tile table, gather, zero fill and
 * roundings (moe_wgmma.cu, moe_grouped.cu) with a warp-specialised pipeline and 128 x 256 tiles.
 *
 * out[p, n] = sum_k A[p, k] W[e][n, k] for the rows p of expert e (A row p = x[rows[p] / div]
 * with the gather; with SwiGLU, h = T(T(silu(T(gate))) * T(up)) in the epilogue as in v3/v4).
 * Why: v4 (371 / 301 TFLOP/s on an H100 at the real dims) makes every thread both copy and
 * multiply and ends each k-tile in a block barrier, so the tensor cores wait for the slowest
 * warp's copies every 64 k. Here the copies and the products run in different warpgroups that
 * meet only at per-stage mbarriers, and each wgmma is twice as wide (n256: half the A re-reads
 * and half the instructions per FLOP of v4's n128).
 *
 * Block: 384 threads = 3 warpgroups, 1 block per SM (192 KB of stages), a tile of 128 rows x BN
 * outputs (BN 256, or 128 for comparison), k-tiles of 64 (128-byte rows, g3_off<64>'s swizzle =
 * wgmma's 128-byte swizzle, every operand tile on a 1024-byte boundary).
 *  - warpgroup 0, producer: thread t copies 16-byte chunk t % 8 of tile rows t / 8 + 16 i (A: 8
 *    rows, B: BN / 16 rows; with TMA, the production choice since session 6, B is instead one or
 *    two tensor copies by thread 0, whose bytes full[s] also waits for) with cp.async into stage s
 *    of an ST-deep ring, zero fill past the expert's rows, N and Kin (as v3), then
 *    cp.async.mbarrier.arrive.noinc on full[s]: the hardware
 *    arrives for the thread once its copies have landed, so full[s] (128 arrivals) completes when the
 *    whole stage is in shared memory, and the producer never waits for its own copies; it waits only
 *    on empty[s] before refilling a stage.
 *  - warpgroups 1 and 2, consumers: rows [64 c, 64 c + 64) of the tile, all BN outputs (wgmma
 *    m64nBNk16, BN / 2 float32 accumulators per thread). Per k-tile: wait full[s]; fence.proxy.async;
 *    4 wgmma (k 16 at a time, ascending); commit; wgmma.wait_group 1 (the previous k-tile's batch has
 *    retired, so its stage is no longer read) -> lane 0 of each warp arrives on that stage's empty
 *    barrier (8 arrivals: 4 warps x 2 consumers).
 *  - Where the proxy fence goes: cp.async writes shared memory through the generic proxy, wgmma
 *    reads it through the async proxy. The producer cannot fence its copies (they are still in
 *    flight when it arrives: the arrival is made later, by the hardware), so each consumer thread
 *    fences after its wait on full[s] has made the copies visible to it, before its wgmma's.
 *  - No block barrier after the set-up one: consumers never wait for each other, and the producer
 *    runs up to ST k-tiles ahead, across tile boundaries too.
 *  - Persistent (both GEMMs' default, measured below): gridDim.x = SMs, block b does the work
 *    items b, b + grid, ... (item = tile * nbx + output block), so the producer fills the next
 *    item's stages while the consumers run the epilogue of the last one; or one block per item.
 *  - Ring depth ST (template): 4 x 48 KB for BN 256 by default; 3 or 2 for the down GEMM (Kin = 512
 *    is only 8 k-tiles). Fewer stages do not buy a second block per SM: 2 x 384 threads get 85
 *    registers each, and a consumer holds BN / 2 = 128 float32 accumulators alone (ptxas refuses
 *    BN 128 wgmma under 90), so the register file, not shared memory, keeps v5 at 1 block per SM.
 *    What 3 stages buy is room for an output staging buffer (the epilogues below).
 *  - Epilogue EPI (template): 0 = v4's, each thread stores its fragments (bf16 pairs, 4-byte
 *    stores: one warp instruction writes 8 rows x 16 bytes); 1 and 2 first write the consumer's 64
 *    x BNO tile (BNO = BN outputs, BN / 2 h columns with SwiGLU) into its own shared staging buffer
 *    (rows padded by 16 bytes: the 8 rows x 4 lanes of one fragment store hit 32 distinct banks),
 *    then 1 = the warpgroup copies it out with 16-byte coalesced stores (a warp writes 512
 *    contiguous bytes), 2 = warp 0 hands each row to the bulk-copy engine (cp.async.bulk
 *    shared -> global, 2 rows per lane, one bulk group per lane) and the consumers go straight on to
 *    the next item's k-tiles: the tile's HBM write overlaps the next item's products. Before the
 *    staging buffer is rewritten, warp 0 waits for its bulk copies to have read it
 *    (cp.async.bulk.wait_group.read) and a named barrier (1 + consumer, 128 threads) tells the
 *    other warps; writers fence (fence.proxy.async) before the barrier that publishes the tile,
 *    since the bulk copy reads through the async proxy. Same values, same roundings: only the
 *    route of the bytes changes.
 *  - Half tiles (runtime flag half_tiles; measured, not adopted: G5_HALF_TILES below). The tile table cuts each expert's
 *    rows into 128-row tiles, so an expert's last tile is often partly zero rows; when it has
 *    <= 64 valid rows (rend - r0 <= 64, a block-uniform test on the table) consumer 1 would
 *    multiply 64 zero rows while consumer 0 does all the work, and the item would cost a full
 *    item's time. Instead both consumers take the A rows [0, 64) of the stage and split the
 *    outputs: plain, consumer c computes outputs [BN/2 c, BN/2 c + BN/2) (one m64n(BN/2)k16 per
 *    k16 step, B rows BN/2 c ..); SwiGLU, consumer c computes h columns [BN/4 c, BN/4 c + BN/4)
 *    of the item's BN/2, from gate rows BN/4 c .. and up rows BN/2 + BN/4 c .. (two m64n(BN/4)k16
 *    per k16 step, gate into acc[0 .. BN/8), up into acc[BN/8 .. BN/4): the layout of a tile
 *    BN/2 wide, so the epilogues run unchanged with BN/2 in place of BN and a column offset). The
 *    item then takes about half the consumer time. The producer is unchanged (it still copies the
 *    whole stage: the A rows past rend are zero fill, no DRAM reads, and B is needed whole).
 *    Gain at the real dims, T = 16384 (T K = 163840 rows over E = 512 experts, Binomial(16384,
 *    10/512) rows each: mean 320, sd 17.7): an expert has 3.0 tiles on average and 1/6 of the
 *    tensor-core work is on zero rows (1 - 320 / (128 x 3.0)); its last tile has <= 64 rows with
 *    probability 0.51 (320 = 2 x 128 + 64 is the middle of the spread), so half tiles cut the
 *    consumer work per expert from 3.0 to 2.74 tile-times (-8.6%) and the zero-row share to 8.8%.
 *    That is the ceiling of the gain, reached where the tensor cores are the limit: the bytes
 *    copied do not change, so during a half item the producer must deliver the same stages in
 *    half the time, and where the copies (L2 -> shared memory) keep up only partly the gain is
 *    smaller. dev/test_moe_prefill times each configuration with half tiles off and on.
 *
 * Phases. Per block the producer and both consumers walk the same sequence of k-tiles; i counts
 * them over all of the block's items. k-tile i uses stage s = i % ST for the f-th time, f = i / ST.
 * full[s] completes its phase f when fill f has landed; empty[s] completes phase f when both
 * consumers have finished reading fill f. The producer waits empty[s] phase f - 1 (parity
 * (f - 1) & 1) before fill f (no wait for f = 0); a consumer waits full[s] phase f (parity f & 1).
 * Each wait happens while the barrier is in the awaited phase or the next, never the one before
 * (the rule wb_wait needs): the consumer has itself waited for phase f - 1 of full[s] (k-tile
 * i - ST), and full[s] cannot pass phase f before this consumer releases fill f; the producer
 * waited for phase f - 2 of empty[s] before fill f - 1, and empty[s] cannot pass phase f - 1
 * before fill f is made. Any ST >= 2, ktiles < ST or not a multiple of ST, and tiles with few rows
 * (zero-filled copies still arrive) follow the same rule. Half tiles change none of this: they
 * change which rows and columns of a stage a consumer reads, not which stages it waits for or
 * releases. Each consumer still waits for and releases every k-tile of every item, full or half
 * (g5_item's one loop, ktiles long either way), so empty[s] still gets 8 arrivals per fill, and
 * the i sequence is the producer's (the producer does not look at the flag at all). A block with
 * no item returns before the barriers exist, all 384 threads on the same condition
 * (blockIdx.x >= items, from tiles[0]).
 *
 * Each configuration instantiated (g5_launch_cfg): BN 256 with ST 4 (default), 3, 2 and EPI 0, ST 3
 * with EPI 1 and 2; BN 128 with ST 6, EPI 0; each with half tiles (a runtime choice, both paths in
 * every kernel). The two TMA ones (BN 256, ST 4 EPI 0 and ST 3 EPI 1) also with TMA 2: the weights
 * packed by cuda_moe_pack_v5 (moe_pack.cu), one contiguous 32 KB tensor copy per stage instead of
 * 256 runs of 128 bytes Kin * 2 bytes apart (session 7, aimed at T = 4096, where the weight stream
 * sets the time; written without a GPU: dev/test_moe_prefill checks and times it, not run yet).
 * The same two with TMA 1 also with A by TMA rows (ACL 1, 2, 4: session 11) and with weight pairs
 * (PAIRS: clusters of 2 blocks sharing the weight tile by multicast, g5_load_b_pair; session 18).
 * Shared memory: ST x stage + (EPI > 0) 2 x 64 rows x pitch + barriers: BN 256 ST 3 EPI 2 = 144 +
 * 66 KB (a half tile stages 64 rows of BN/2 outputs, in the same buffer).
 *
 * Numerics: every output accumulates in float32 over the k-tiles ascending, 16 k at a time
 * ascending, as v3 (mma.sync) and v4 (wgmma n128) do; inside one 16-deep step the order is the
 * tensor core's. The tile shape changes which block and which instruction computes an element, not
 * the order of its terms (half tiles: n128 / n64 for BN 256, n64 / n32 for BN 128, still 16 k per
 * step, ascending). v4 is bitwise v3 on an H100; dev/test_moe_prefill requires the same of v5
 * (half tiles on and off): on an H100 it is bitwise v3 on every shape and configuration tried
 * (session 4, 190 cases; session 6 with half tiles, 1186 cases).
 * Deterministic (no atomics, fixed order). */
#include <cuda.h> /* CUtensorMap (types only: the encoder is reached through the runtime) */
#include <string.h>
#include <string>
#include <cudaTypedefs.h>

#include "common.cuh"
#include "moe_grouped.cuh"
#include "wgmma.cuh"

#define G5_BK 64                                           /* k per stage: 128-byte rows */
#define G5_AB (G3_BM * G5_BK * 2)                          /* bytes of the A tile: 16 KB */
#define G5_STAGES(BN) ((BN) == 256 ? 4 : 6)                /* default depth: 4 x 48 KB or 6 x 32 KB */
#define G5_STAGE_BYTES(BN) (G5_AB + (BN) * G5_BK * 2)
/* Output staging (EPI 1, 2): one consumer's 64 rows of BNO bf16, each row padded by 16 bytes. */
#define G5_OUT_COLS(SW, BN) ((SW) ? (BN) / 2 : (BN))
#define G5_OUT_PITCH(SW, BN) (2 * G5_OUT_COLS(SW, BN) + 16)
#define G5_OUT_BYTES(SW, BN) (64 * G5_OUT_PITCH(SW, BN))
/* stages, the two consumers' staging buffers, 2 x ST 8-byte barriers, 1024 for the base alignment */
#define G5_SMEM(BN, ST, EPI, SW) \
    ((ST) * G5_STAGE_BYTES(BN) + ((EPI) ? 2 * G5_OUT_BYTES(SW, BN) : 0) + 2 * 8 * (ST) + 1024)
#define G5_SMEM_MAX (227 * 1024) /* an H100 block's opt-in limit */
#define G5_THREADS 384
/* Registers: __launch_bounds__(384, 1) allows 168 per thread (65536 / 384, rounded down to 8);
 * ptxas -v fits every instantiation in 112..168 with no spills, so no setmaxnreg: moving registers
 * from the producer (40) to the consumers (232) made the producer spill its source rows. With half
 * tiles: 112..168, no spills, no serialised wgmma (ptxas 13.0; see g5_item for the one layout
 * that did serialise). */

/* L2 eviction hints of the producer's copies (the kernel's l2 argument, bits; the production entries'
 * choice: g5_l2_auto, with the measurements):
 *  - G5_L2_A_LAST: the A rows are read with evict_last. Each tile's A rows are read once per output
 *    block (4 times for gate_up, 8 for down), while the expert weights stream through L2 (2.1 GB
 *    for gate_up through 50 MB), and each token's row of x is wanted by 10 experts at scattered
 *    times: under plain replacement the weight stream pushes the rows out between those reads.
 *  - G5_L2_W_FIRST: the weight tiles are read with evict_first (the other way to the same end;
 *    measured slower, kept for the tests).
 * Hints change where bytes come from, not which bytes: bitwise the same outputs. */
#define G5_L2_W_FIRST 1
#define G5_L2_A_LAST 2

/* B source row of tile row rr (output n = BN x + rr), -1 for zero fill; with SWIGLU (W holds Nw / 2
 * gate rows, then Nw / 2 up rows) block x covers h columns c in [BN/2 x, BN/2 x + BN/2): tile rows
 * rr < BN/2 are gate rows c, rr >= BN/2 up rows Nw / 2 + c (v3's pairing, BN/2 columns wide). */
template <bool SWIGLU, int BN>
__device__ __forceinline__ int g5_brow(int rr, int xb, int Nw)
{
    if (SWIGLU) {
        const int Wh = Nw / 2, c = xb * (BN / 2) + rr % (BN / 2);
        return c < Wh ? c + (rr / (BN / 2)) * Wh : -1;
    }
    const int n = xb * BN + rr;
    return n < Nw ? n : -1;
}

/* The weight tile of k-tile kt of item (e, xb) by TMA into the stage's B part at sb (TMA 1: one box
 * of BN rows, or with SwiGLU the item's BN / 2 gate rows then its BN / 2 up rows; TMA 2: the packed
 * k-tile, one contiguous box). Rows past N (or, SwiGLU, gate rows past N / 2: up rows, never stored)
 * and k past Kin: the boxes hold zeros or unused rows where g5_brow's copies zero-fill. Issued by one
 * thread; the bytes land on bar; with hint, under the L2 eviction policy pol. */
/* One tensor copy, with the L2 policy pol where hint (else the plain copy, as before session 15). */
__device__ __forceinline__ void g5_tma(bool hint, uint32_t dst, const void *map, int c0, int c1, int c2, uint32_t bar,
                                       uint64_t pol)
{
    if (hint)
        tma_load_3d_hint(dst, map, c0, c1, c2, bar, pol);
    else
        tma_load_3d(dst, map, c0, c1, c2, bar);
}
template <bool SWIGLU, int BN, int TMA>
__device__ __forceinline__ void g5_load_b(uint32_t sb, const void *wmap, int e, int xb, int kt, int N, int nbx,
                                          int ktiles, uint32_t bar, bool hint, uint64_t pol)
{
    if (TMA == 2) {
        g5_tma(hint, sb, wmap, 0, 0, (e * nbx + xb) * ktiles + kt, bar, pol);
    } else if (SWIGLU) {
        g5_tma(hint, sb, wmap, kt * G5_BK, xb * (BN / 2), e, bar, pol);
        g5_tma(hint, sb + (BN / 2) * 128, wmap, kt * G5_BK, N / 2 + xb * (BN / 2), e, bar, pol);
    } else {
        g5_tma(hint, sb, wmap, kt * G5_BK, xb * BN, e, bar, pol);
    }
}

/* The weight tile of k-tile kt of item (e, xb) with weight pairs (PAIRS): a cluster of 2 CTAs whose
 * tiles (2 p, 2 p + 1 of the table) share the output block xb. The tile is two boxes of BN / 2 rows
 * (the map's box: g5_weight_map with BN / 2 rows; SwiGLU: the gate rows, then the up rows, as
 * g5_load_b; plain: rows BN xb .., then BN xb + BN / 2 ..). Where both tiles are of the same expert
 * (shared) the CTA of rank r reads half r once and multicasts it to both CTAs, so the pair's weight
 * tile leaves L2 once instead of twice; else (the pair straddles two experts) each CTA reads both
 * halves of its own expert's tile. Either way BN x 128 bytes land in each CTA per k-tile, the
 * bytes full[s] expects. Issued by one thread of each CTA. */
template <bool SWIGLU, int BN>
__device__ __forceinline__ void g5_load_b_pair(uint32_t sb, const void *wmap, int e, int xb, int kt, int N,
                                               bool shared, int rank, uint32_t bar)
{
    const int k0 = kt * G5_BK;
    const int row0 = SWIGLU ? xb * (BN / 2) : xb * BN;       /* the first half's first W row */
    const int step = SWIGLU ? N / 2 : BN / 2;                /* the second half's rows: + step */
    if (shared) {
        tma_load_3d_multicast(sb + (uint32_t)(rank * (BN / 2) * 128), wmap, k0, row0 + rank * step, e, bar, 3);
    } else {
        tma_load_3d(sb, wmap, k0, row0, e, bar);
        tma_load_3d(sb + (BN / 2) * 128, wmap, k0, row0 + step, e, bar);
    }
}

/* Which items a block does (see the header): a block of the persistent grid does the work items
 * first, first + step, ... < groups x per_tile, where a group is tmul neighbouring tiles of the tile
 * table; item w is tile (w / per_tile) tmul + trank, output block (w % per_tile) width + sub.
 * Without clusters (ACL 0 or 1, no pairs) an item is one output block of one tile (tmul 1, width
 * 1, sub 0, per_tile nbx); with clusters of ACL CTAs (ACL >= 2) the cluster takes the items
 * together, a group of ACL neighbouring output blocks of one tile, and the CTA of rank sub does the
 * group's output block sub (per_tile = the groups of a tile; blocks past nbx: see g5_produce_rows);
 * with weight pairs (PAIRS, g5_load_b_pair) a cluster of 2 CTAs takes one output block of the tile
 * pair (2 p, 2 p + 1), the CTA of rank r tile 2 p + r (past the table: see g5_tile). */
struct g5_sched {
    int first, step, per_tile, width, sub, tmul, trank;
    /* tiles[0]: the tile count */
    __device__ int items(const int32_t *tiles) const { return (tiles[0] + tmul - 1) / tmul * per_tile; }
    __device__ int tile_of(int w) const { return w / per_tile * tmul + trank; }
    __device__ int block_of(int w) const { return w % per_tile * width + sub; }
};
template <int ACL, bool PAIRS>
__device__ __forceinline__ g5_sched g5_schedule(int nbx)
{
    static_assert(!(PAIRS && ACL), "weight pairs and A clusters are separate configurations");
    if constexpr (ACL >= 2)
        return g5_sched{(int)blockIdx.x / ACL, (int)gridDim.x / ACL, (nbx + ACL - 1) / ACL, ACL, (int)cl_rank(), 1, 0};
    else if constexpr (PAIRS)
        return g5_sched{(int)blockIdx.x / 2, (int)gridDim.x / 2, nbx, 1, 0, 2, (int)cl_rank()};
    else
        return g5_sched{(int)blockIdx.x, (int)gridDim.x, nbx, 1, 0, 1, 0};
}
/* The tile of item w for this CTA. With weight pairs the table's last pair may have one tile only
 * (an odd count): its rank-1 CTA then does a ghost of rank 0's tile, which keeps the cluster's
 * protocol (it copies and consumes every stage: the multicast lands in both CTAs) but has no valid
 * row (g5_produce: all A rows zero fill; g5_item: nothing stored). */
__device__ __forceinline__ int g5_tile(const g5_sched &sc, const int32_t *tiles, int w, bool &ghost)
{
    const int t = sc.tile_of(w);
    ghost = t >= tiles[0];
    return ghost ? t - 1 : t;
}

/* Warpgroup 0: every k-tile of every item of this block into the ring (see the header). TMA 1: the
 * weight tile by tensor copies from thread 0 (wmap: W as [E][N][Kin], boxes of 64 k x BN (plain)
 * or BN / 2 (SwiGLU: gate rows, then up rows) rows, 128-byte swizzle = g3_off<64>'s layout), its
 * bytes expected on full[s] by thread 0's extra arrival; TMA 2: W packed by cuda_moe_pack_v5
 * (moe_pack.cu: k-tile kt of item (e, xb) is the contiguous box (e nbx + xb) ktiles + kt of 256 rows
 * x 64 k, gate rows then up rows with SwiGLU, so the same stage layout from one copy); A always by
 * cp.async (gathered rows). */
template <bool GATHER, bool SWIGLU, int BN, int ST, int TMA, bool PAIRS>
__device__ __forceinline__ void g5_produce(const bf16 *X, const int32_t *xrows, int div, const bf16 *W,
                                           const void *wmap, const int32_t *tiles, const int32_t *counts,
                                           const int32_t *offsets, int N, int Kin, int nbx, int ktiles, int l2,
                                           uint32_t sbase, uint32_t full0, uint32_t empty0)
{
    constexpr int SB = G5_STAGE_BYTES(BN), AP = G3_BM / 16, BP = BN / 16;
    /* l2 == 0: the plain copies (an explicit evict_normal policy is not known to be the same) */
    const bool hw = l2 & G5_L2_W_FIRST, ha = l2 & G5_L2_A_LAST;
    const uint64_t pw = l2_policy(hw ? L2_EVICT_FIRST : L2_EVICT_NORMAL);
    const uint64_t pa = l2_policy(ha ? L2_EVICT_LAST : L2_EVICT_NORMAL);
    static_assert(TMA != 2 || BN == 256, "the packed layout has 256-row tiles");
    static_assert(!PAIRS || TMA == 1, "weight pairs: the weights by TMA from the checkpoint layout");
    const int t = threadIdx.x, lr = t >> 3, lc = t & 7; /* rows lr + 16 i, 16-byte chunk lc */
    /* row lr + 16 i has (row & 7) = lr & 7: one swizzled chunk offset for all of this thread's rows */
    const uint32_t so = (uint32_t)(lr * 128 + ((lc ^ (lr & 7)) << 4));
    const g5_sched sc = g5_schedule<0, PAIRS>(nbx);
    const int n = sc.items(tiles);
    uint32_t i = 0; /* k-tiles produced by this block so far */
    for (int w = sc.first; w < n; w += sc.step) {
        bool ghost;
        const int tile = g5_tile(sc, tiles, w, ghost), xb = sc.block_of(w);
        const int e = tiles[1 + 2 * tile], r0 = tiles[2 + 2 * tile];
        const int rend = ghost ? r0 : offsets[e] + counts[e]; /* rows [r0, min(r0 + 128, rend)) */
        /* weight pairs: both CTAs read the pair's two table entries, so they agree on `shared` (a
         * missing second tile is a ghost of the first: the same expert) */
        const int tp = w / sc.per_tile * 2;
        const bool shared = PAIRS && (tp + 1 >= tiles[0] || tiles[1 + 2 * tp] == tiles[3 + 2 * tp]);
        const bf16 *We = W + (size_t)e * N * Kin;
        int asrc[AP]; /* A source rows, -1: zero fill */
#pragma unroll
        for (int a = 0; a < AP; a++) {
            const int p = r0 + lr + 16 * a;
            asrc[a] = p < rend ? (GATHER ? xrows[p] / div : p) : -1;
        }
        for (int kt = 0; kt < ktiles; kt++, i++) {
            const uint32_t s = i % ST, f = i / ST;
            if (f > 0) wb_wait(empty0 + 8 * s, (f - 1) & 1);
            const int k = kt * G5_BK + lc * 8;
            const bool kin = k < Kin;
            const uint32_t sa = sbase + s * SB + so, sb = sa + G5_AB;
#pragma unroll
            for (int a = 0; a < AP; a++) {
                const bool ok = kin && asrc[a] >= 0;
                const void *src = ok ? X + (size_t)asrc[a] * Kin + k : X;
                if (ha)
                    g3_cp16_hint(sa + a * 16 * 128, src, ok, pa);
                else
                    g3_cp16(sa + a * 16 * 128, src, ok);
            }
            if constexpr (TMA) {
                if (t == 0) {
                    wb_arrive_expect_tx(full0 + 8 * s, (uint32_t)(BN * G5_BK * 2));
                    if constexpr (PAIRS)
                        g5_load_b_pair<SWIGLU, BN>(sbase + s * SB + G5_AB, wmap, e, xb, kt, N, shared, sc.trank,
                                                   full0 + 8 * s);
                    else
                        g5_load_b<SWIGLU, BN, TMA>(sbase + s * SB + G5_AB, wmap, e, xb, kt, N, nbx, ktiles,
                                                   full0 + 8 * s, hw, pw);
                }
            } else {
#pragma unroll
                for (int b = 0; b < BP; b++) {
                    const int n = g5_brow<SWIGLU, BN>(lr + 16 * b, xb, N);
                    const bool ok = kin && n >= 0;
                    const void *src = ok ? We + (size_t)n * Kin + k : W;
                    if (hw)
                        g3_cp16_hint(sb + b * 16 * 128, src, ok, pw);
                    else
                        g3_cp16(sb + b * 16 * 128, src, ok);
                }
            }
            wb_arrive_cp_async(full0 + 8 * s);
        }
    }
    wb_cp_async_drain(); /* leave no copy of this thread in flight at exit */
}

/* Warp 0 of warpgroup 0 with A by TMA (ACL >= 1, the weights by TMA too): every k-tile of every item
 * of this block into the ring, A's gathered rows one TMA row box each (a row's 64 k = 128 bytes at
 * sa + 128 r, swizzled by address as a whole-tile copy would be: tma_load_2d), so the producer issues
 * a few copies per k-tile instead of 8 cp.async per thread. With clusters (ACL >= 2) the CTAs of a
 * cluster work on ACL output blocks of the same tile at once, so they need the same A k-tiles: the
 * CTA of rank r copies rows [r RS, r RS + RS) (RS = 128 / ACL) once, multicast to the same stage of
 * every CTA of the cluster, so each A row leaves L2 once per k-tile instead of ACL times.
 *  - full[s] (1 arrival, lane 0's expect_tx) completes when this CTA's own weight tile (BN x 128
 *    bytes) and all nv valid A rows (nv x 128 bytes, from every rank) have landed. A peer's rows may
 *    land before lane 0's expect_tx: the transaction count may go below zero meanwhile, and the phase
 *    cannot complete before lane 0's arrival.
 *  - empty[s] (8 x max(ACL, 1) arrivals: every consumer warp of every CTA of the cluster,
 *    g5_release) completes when all CTAs have finished reading the stage, so no rank's multicast
 *    overwrites a stage a peer still reads. The phase rule of the header holds per CTA as before:
 *    a peer's fill f of stage s is issued after this CTA's consumers released fill f - 1, i.e. after
 *    this CTA's full[s] completed phase f - 1.
 *  - Rows past the tile's nv valid ones are not copied: those stage rows keep stale values, which
 *    reach only accumulator rows >= nv, never stored (each output row depends on its own A row
 *    only). k past Kin: the row box's out-of-range part is zeros, as in the weight box.
 *  - A cluster CTA whose output block is past nbx (nbx not a multiple of ACL) still copies its A rows
 *    and consumes every stage (the cluster's barriers need it); it loads the last real block's
 *    weights, and its outputs (columns >= the output width) are not stored. */
template <bool GATHER, bool SWIGLU, int BN, int ST, int TMA, int ACL>
__device__ __forceinline__ void g5_produce_rows(const int32_t *xrows, int div, const void *wmap, const void *amap,
                                                const int32_t *tiles, const int32_t *counts, const int32_t *offsets,
                                                int N, int nbx, int ktiles, int l2, uint32_t sbase, uint32_t full0,
                                                uint32_t empty0)
{
    constexpr int SB = G5_STAGE_BYTES(BN), RS = G3_BM / (ACL > 1 ? ACL : 1), RQ = RS / 32;
    const bool hw = l2 & G5_L2_W_FIRST;
    const uint64_t pw = l2_policy(hw ? L2_EVICT_FIRST : L2_EVICT_NORMAL);
    static_assert(TMA >= 1 && RS % 32 == 0, "A rows by TMA: the weights by TMA, 32 rows per lane sweep");
    const int lane = threadIdx.x & 31;
    const g5_sched sc = g5_schedule<ACL, false>(nbx);
    const int n = sc.items(tiles);
    uint32_t i = 0; /* k-tiles produced by this block so far */
    for (int w = sc.first; w < n; w += sc.step) {
        const int tile = sc.tile_of(w), xb = min(sc.block_of(w), nbx - 1);
        const int e = tiles[1 + 2 * tile], r0 = tiles[2 + 2 * tile];
        const int nv = min(G3_BM, offsets[e] + counts[e] - r0); /* valid rows of the tile, 1 .. 128 */
        int asrc[RQ];                                               /* source rows, -1: not copied */
#pragma unroll
        for (int q = 0; q < RQ; q++) {
            const int j = sc.sub * RS + 32 * q + lane;
            asrc[q] = j < nv ? (GATHER ? xrows[r0 + j] / div : r0 + j) : -1;
        }
        const uint32_t bytes = (uint32_t)(BN + nv) * (G5_BK * 2);
        for (int kt = 0; kt < ktiles; kt++, i++) {
            const uint32_t s = i % ST, f = i / ST, sa = sbase + s * SB, bar = full0 + 8 * s;
            if (f > 0) wb_wait(empty0 + 8 * s, (f - 1) & 1);
            if (lane == 0) {
                wb_arrive_expect_tx(bar, bytes);
                g5_load_b<SWIGLU, BN, TMA>(sa + G5_AB, wmap, e, xb, kt, N, nbx, ktiles, bar, hw, pw);
            }
#pragma unroll
            for (int q = 0; q < RQ; q++) {
                if (asrc[q] < 0) continue;
                const uint32_t dst = sa + (uint32_t)(sc.sub * RS + 32 * q + lane) * 128u;
                if constexpr (ACL >= 2)
                    tma_load_2d_multicast(dst, amap, kt * G5_BK, asrc[q], bar, (uint16_t)((1u << ACL) - 1));
                else
                    tma_load_2d(dst, amap, kt * G5_BK, asrc[q], bar);
            }
        }
    }
}

/* A consumer warp's release of stage barrier bar (its offset in every CTA): lane 0 arrives on this
 * CTA's, or with clusters lane r on the one of the CTA of rank r (g5_produce_rows). */
template <int ACL>
__device__ __forceinline__ void g5_release(uint32_t bar, int lane)
{
    if constexpr (ACL >= 2) {
        if (lane < ACL) wb_arrive_cluster(bar, (uint32_t)lane);
    } else {
        if (lane == 0) wb_arrive(bar);
    }
}

/* The final bf16 pair of accumulator pair (4 j + 2 hf, + 1) (v4's roundings) of a consumer's
 * accumulator tile BNA wide (BN for a full tile, BN / 2 for a half tile: g5_item): the outputs
 * themselves, or with SWIGLU h = T(T(silu(T(gate))) * T(up)) from gate block j and up block
 * j + BNA / 16 (h column 8 j + .. of the tile's BNA / 2, j < BNA / 16). */
template <bool SWIGLU, int BNA>
__device__ __forceinline__ __nv_bfloat162 g5_pair(const float *acc, int j, int hf)
{
    float h[2];
#pragma unroll
    for (int q = 0; q < 2; q++) {
        if (SWIGLU) {
            const float gt = __bfloat162float(__float2bfloat16_rn(acc[4 * j + 2 * hf + q]));
            const float up = __bfloat162float(__float2bfloat16_rn(acc[4 * (j + BNA / 16) + 2 * hf + q]));
            h[q] = __bfloat162float(__float2bfloat16_rn(silu_f(gt))) * up;
        } else {
            h[q] = acc[4 * j + 2 * hf + q];
        }
    }
    return __floats2bfloat162_rn(h[0], h[1]);
}

/* Epilogue 0 of one consumer warpgroup: its accumulator tile (BNA wide, as g5_pair), 64 rows from
 * out row row0 x COLS outputs (h columns with SWIGLU) from out column col0, from registers to out
 * (v4's rounding; acc[4 j + q]: row 16 (warp % 4) + lane / 4 + 8 (q / 2), column 8 j + 2 (lane % 4)
 * + q % 2); rows >= rend and columns >= the output width are not stored. */
template <bool SWIGLU, int BNA>
__device__ __forceinline__ void g5_store(bf16 *out, const float *acc, int row0, int rend, int col0, int N)
{
    constexpr int COLS = G5_OUT_COLS(SWIGLU, BNA);
    const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3, g = lane >> 2, tq = lane & 3;
    const int Nout = SWIGLU ? N / 2 : N; /* SWIGLU: h width */
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int row = row0 + warp * 16 + g + 8 * hf;
        if (row >= rend) continue;
#pragma unroll
        for (int j = 0; j < COLS / 8; j++) {
            const int col = col0 + 8 * j + 2 * tq;
            if (col >= Nout) continue;
            *reinterpret_cast<__nv_bfloat162 *>(out + (size_t)row * Nout + col) = g5_pair<SWIGLU, BNA>(acc, j, hf);
        }
    }
}

/* ---- shared-memory staging for epilogues 1 and 2 (see the header) ---- */
/* Barrier `id` (1 + consumer) among the 128 threads of one consumer warpgroup (0 is __syncthreads). */
__device__ __forceinline__ void g5_bar_wg(int id)
{
    asm volatile("bar.sync %0, 128;\n" ::"r"(id) : "memory");
}
__device__ __forceinline__ void g5_st_shared_b32(uint32_t addr, __nv_bfloat162 v)
{
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(*reinterpret_cast<const uint32_t *>(&v)) : "memory");
}
__device__ __forceinline__ uint4 g5_ld_shared_v4(uint32_t addr)
{
    uint4 v;
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(addr)
                 : "memory");
    return v;
}
/* bytes (a multiple of 16, both addresses 16-byte aligned) from shared memory to global memory by
 * the bulk-copy engine, in this thread's current bulk group; commit closes the group; wait_read
 * returns once every group this thread committed has finished reading its shared memory. */
__device__ __forceinline__ void g5_bulk_store(void *gdst, uint32_t ssrc, uint32_t bytes)
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(gdst), "r"(ssrc), "r"(bytes)
                 : "memory");
#endif
}
__device__ __forceinline__ void g5_bulk_commit()
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void g5_bulk_wait_read()
{
#ifdef Q3N_HAVE_WGMMA
    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
#endif
}

/* Epilogues 1 and 2 of one consumer warpgroup: the same bf16 values as g5_store (same arguments),
 * through its staging buffer stg (64 rows of G5_OUT_PITCH(SWIGLU, BNA) bytes, at most the
 * G5_OUT_BYTES(SWIGLU, BN) reserved). Only rows < rend and columns < Nout leave shared memory
 * (Nout % 8 == 0 by cuda_moe_grouped_v3_ok and col0 % 8 == 0, so a row's valid part is whole
 * 16-byte chunks, 16-byte aligned in out). */
template <bool SWIGLU, int BNA, int EPI>
__device__ __forceinline__ void g5_store_staged(bf16 *out, const float *acc, uint32_t stg, int row0, int rend,
                                                int col0, int N)
{
    constexpr int COLS = G5_OUT_COLS(SWIGLU, BNA), PITCH = G5_OUT_PITCH(SWIGLU, BNA), CH = COLS / 8;
    const int tid = threadIdx.x & 127, lane = tid & 31, warp = tid >> 5, g = lane >> 2, tq = lane & 3;
    const int bar = threadIdx.x >> 7; /* consumer c uses barrier 1 + c */
    const int Nout = SWIGLU ? N / 2 : N;
    /* ncol <= 0 (a half tile's second half past Nout) or nrow <= 0: nothing to store */
    const int ncol = min(COLS, Nout - col0), nrow = ncol > 0 ? min(64, rend - row0) : 0;
    if (EPI == 2 && warp == 0) g5_bulk_wait_read(); /* the last item's copies are done reading stg */
    g5_bar_wg(bar);
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const uint32_t rowa = stg + (uint32_t)((warp * 16 + g + 8 * hf) * PITCH + 4 * tq);
#pragma unroll
        for (int j = 0; j < CH; j++) g5_st_shared_b32(rowa + 16 * j, g5_pair<SWIGLU, BNA>(acc, j, hf));
    }
    if (EPI == 2) wg_proxy_fence(); /* these generic-proxy writes before the bulk copies' reads */
    g5_bar_wg(bar);
    if (EPI == 1) {
        /* chunk i: row i / CH, 16-byte chunk i % CH; a warp writes 512 bytes: 1 row (2 h rows) of a
         * full tile, 2 rows (4 h rows) of a half tile */
#pragma unroll
        for (int k = 0; k < 64 * CH / 128; k++) {
            const int i = tid + 128 * k, r = i / CH, ch = i - r * CH;
            if (r < nrow && 8 * ch < ncol)
                *reinterpret_cast<uint4 *>(out + (size_t)(row0 + r) * Nout + col0 + 8 * ch) =
                    g5_ld_shared_v4(stg + (uint32_t)(r * PITCH + 16 * ch));
        }
    } else if (warp == 0) {
        for (int r = lane; r < nrow; r += 32)
            g5_bulk_store(out + (size_t)(row0 + r) * Nout + col0, stg + (uint32_t)(r * PITCH), 2u * (uint32_t)ncol);
        g5_bulk_commit();
    }
}

/* d[64 x NW] += A[64 x 16] B[16 x NW] (wgmma.cuh's wrappers, by width). */
template <int NW>
__device__ __forceinline__ void g5_mma(float *d, uint64_t da, uint64_t db)
{
    static_assert(NW == 256 || NW == 128 || NW == 64 || NW == 32, "a wgmma width wgmma.cuh wraps");
    if constexpr (NW == 256)
        wg_mma_m64n256k16(d, da, db);
    else if constexpr (NW == 128)
        wg_mma_m64n128k16(d, da, db);
    else if constexpr (NW == 64)
        wg_mma_m64n64k16(d, da, db);
    else
        wg_mma_m64n32k16(d, da, db);
}

/* 4 wgmma's (k 16 at a time, ascending) of one consumer warpgroup on one stage: its 64 A rows (sa)
 * x all BN B rows (sb) into acc[0 .. BN / 2). */
template <int BN>
__device__ __forceinline__ void g5_mma_stage(float *acc, uint32_t sa, uint32_t sb)
{
#pragma unroll
    for (int ks = 0; ks < G5_BK / 16; ks++) g5_mma<BN>(acc, wg_desc(sa + 32 * ks), wg_desc(sb + 32 * ks));
}

/* The same stage for consumer c of a half tile (see the header): A = the tile's rows 0..63 (sa, the
 * same for both consumers), consumer c's half of the B rows, into acc[0 .. BN / 4) laid out as a
 * BN / 2 wide tile (g5_pair<SWIGLU, BN / 2>). Plain: B rows [BN/2 c, BN/2 c + BN/2), one
 * m64n(BN/2) per k16 step. SWIGLU: gate rows [BN/4 c, BN/4 c + BN/4) into acc[0 .. BN / 8) and the
 * matching up rows BN/2 + [BN/4 c, ..) into acc[BN / 8 .. BN / 4), two m64n(BN/4) per k16 step
 * (gate, then up: each output still takes its k16 steps in ascending order). B row offsets are
 * multiples of 32 rows = 4096 bytes, so each operand still starts on a 1024-byte boundary: the
 * 128-byte swizzle (chunk c of row r at c ^ (r % 8), r % 8 = address bits 7-9) and wg_desc's
 * 1024-byte 8-row-group stride read the sub-tile exactly as a tile of its own. */
template <bool SWIGLU, int BN>
__device__ __forceinline__ void g5_mma_stage_half(float *acc, uint32_t sa, uint32_t sb, int c)
{
    if constexpr (SWIGLU) {
        const uint32_t sg = sb + (uint32_t)(c * (BN / 4) * 128), su = sg + (BN / 2) * 128;
#pragma unroll
        for (int ks = 0; ks < G5_BK / 16; ks++) {
            g5_mma<BN / 4>(acc, wg_desc(sa + 32 * ks), wg_desc(sg + 32 * ks));
            g5_mma<BN / 4>(acc + BN / 8, wg_desc(sa + 32 * ks), wg_desc(su + 32 * ks));
        }
    } else {
        const uint32_t sh = sb + (uint32_t)(c * (BN / 2) * 128);
#pragma unroll
        for (int ks = 0; ks < G5_BK / 16; ks++) g5_mma<BN / 2>(acc, wg_desc(sa + 32 * ks), wg_desc(sh + 32 * ks));
    }
}

/* One item (output block xb of tile table entry `tile`) of one consumer (c), HALF: as a half tile: the products
 * of its k-tiles, i counting the block's k-tiles on, then its epilogue. Per k-tile: wait full[s],
 * fence, one batch of wgmma's, commit, wait for the previous batch, release its stage; after the
 * last, wait for every batch and release the last stage. The accumulators are this function's own
 * (BN / 4 floats for a half tile, BN / 2 for a full one), written only by the wgmma's between the
 * pins, and the whole fence .. commit .. wait sequence sits inside one branch of g5_consume's
 * block-uniform test: ptxas sees two separate straight pipelines and no accumulator shared by
 * both (sharing one array across the branches made it serialise the wgmma's, C7511). */
template <bool SWIGLU, int BN, int ST, int EPI, bool HALF, int ACL>
__device__ __forceinline__ void g5_item(bf16 *out, const int32_t *tiles, const int32_t *counts,
                                        const int32_t *offsets, int N, int xb, int tile, bool ghost, int ktiles,
                                        int c, int early, uint32_t &i, uint32_t sbase, uint32_t stg, uint32_t full0,
                                        uint32_t empty0)
{
    constexpr int SB = G5_STAGE_BYTES(BN), NA = HALF ? BN / 4 : BN / 2; /* accumulators */
    const int lane = threadIdx.x & 31;
    const uint32_t aoff = HALF ? 0u : (uint32_t)(c * (64 * 128)); /* A rows 64 c .., or 0 .. for both */
    float acc[NA];
#pragma unroll
    for (int a = 0; a < NA; a++) acc[a] = 0.0f;
    for (int kt = 0; kt < ktiles; kt++, i++) {
        const uint32_t s = i % ST, f = i / ST;
        wb_wait(full0 + 8 * s, f & 1);
        __syncwarp();     /* the spin loop may leave the warp diverged; wgmma is .sync.aligned */
        wg_proxy_fence(); /* the copies (generic proxy) before this thread's wgmma reads (async proxy) */
        const uint32_t sa = sbase + s * SB + aoff, sb = sbase + s * SB + G5_AB;
        wg_pin<NA>(acc);
        wg_fence();
        if constexpr (HALF)
            g5_mma_stage_half<SWIGLU, BN>(acc, sa, sb, c);
        else
            g5_mma_stage<BN>(acc, sa, sb);
        wg_commit();
        if (early) { /* this batch has retired: its own stage may be refilled now (see g5_consume) */
            wg_wait<0>();
            wg_pin<NA>(acc);
            g5_release<ACL>(empty0 + 8 * s, lane);
        } else {
            wg_wait<1>(); /* k-tile i - 1's batch has retired: its stage may be refilled */
            wg_pin<NA>(acc);
            if (kt > 0) g5_release<ACL>(empty0 + 8 * ((i - 1) % ST), lane);
        }
    }
    wg_wait<0>();
    wg_pin<NA>(acc);
    if (!early) g5_release<ACL>(empty0 + 8 * ((i - 1) % ST), lane);
    const int e = tiles[1 + 2 * tile], r0 = tiles[2 + 2 * tile];
    const int rend = ghost ? r0 : offsets[e] + counts[e]; /* a ghost (g5_tile) stores nothing */
    /* full: rows r0 + 64 c .., all the item's columns; half: rows r0 .. for both consumers, consumer
     * c's half of the columns (an accumulator tile BN / 2 wide) */
    constexpr int BNA = HALF ? BN / 2 : BN;
    const int row0 = HALF ? r0 : r0 + 64 * c;
    const int col0 = xb * G5_OUT_COLS(SWIGLU, BN) + (HALF ? c * G5_OUT_COLS(SWIGLU, BNA) : 0);
    if (EPI == 0)
        g5_store<SWIGLU, BNA>(out, acc, row0, rend, col0, N);
    else
        g5_store_staged<SWIGLU, BNA, EPI>(out, acc, stg, row0, rend, col0, N);
}

/* One item of a consumer none of whose 64 rows is valid (g5_consume, G5_SKIP_EMPTY_ROWS): it waits for
 * each of the item's k-tiles and releases its stage at once, with no product and nothing stored, so
 * that the other consumer has the SM's tensor cores to itself meanwhile. The stage protocol is
 * g5_item's: one release per k-tile per warp, in the same order. */
template <int ST, int REL>
__device__ __forceinline__ void g5_item_idle(int ktiles, uint32_t &i, uint32_t full0, uint32_t empty0)
{
    const int lane = threadIdx.x & 31;
    for (int kt = 0; kt < ktiles; kt++, i++) {
        const uint32_t s = i % ST;
        wb_wait(full0 + 8 * s, (i / ST) & 1);
        __syncwarp();
        g5_release<REL>(empty0 + 8 * s, lane);
    }
}

/* Valid rows of tile `tile`: rend - r0, 1 .. 128 (rows [r0, min(r0 + 128, rend)), see g5_produce). */
__device__ __forceinline__ int g5_rows(const int32_t *tiles, const int32_t *counts, const int32_t *offsets, int tile)
{
    const int e = tiles[1 + 2 * tile];
    return offsets[e] + counts[e] - tiles[2 + 2 * tile];
}

/* A consumer whose rows of the item are all past its expert's rows (consumer 1 of a tile with <= 64
 * valid rows; both for a ghost) skips the item's products (g5_item_idle) instead of multiplying zero
 * rows: at T = 16384 (~320 rows per expert) about half the experts' last tiles. The rows it would
 * have computed are never stored, so the outputs are bitwise the same (session 18 on an H100:
 * dev/test_moe_prefill --only l2a/early built with it, 111 cases, 0 failed; q3n verify 12 of 12;
 * fast/cuda/dev/logs/session18_c3_*). Slower: the production gate_up at T = 16384 1.39 ms (calls 1
 * and 2 of that session) -> 1.82 ms, bench_model T = 16384 25.51 -> 26.33 ms in the same run (+3.2 %,
 * session18_c3_ab_summary.md). One warpgroup alone, with one batch in flight behind the one that
 * runs, does not keep the tensor pipe busy, and the idle consumer runs ahead into the next item's
 * stages while the other still holds the ring. Off. */
#ifndef G5_SKIP_EMPTY_ROWS
#define G5_SKIP_EMPTY_ROWS 0
#endif

/* Warpgroups 1 and 2: every item of this block (see the header); stg0: consumer 0's staging buffer
 * (EPI > 0), consumer 1's follows it. half_tiles: items with <= 64 valid rows are done as half
 * tiles (the header).
 * early (runtime, block-uniform): when a stage is released. 0: after the next k-tile's batch is
 * issued (wgmma.wait_group 1): the tensor cores always have a batch queued, but while a consumer
 * waits for stage i + 1 it still holds stage i, so at most ST - 1 stages are being filled. Where the
 * weight stream sets the time (T = 4096: ~80 rows per expert, ~0.6 us of products per 1.4 us
 * stage) that was thought to cap the bytes in flight at 3 of 4 stages (3 stages measure 0.90 ms
 * against 4 stages' 0.81 for the T = 4096 gate_up), but 1 did not pay there (G5_EARLY_RELEASE's
 * measurements). 1: wait for this k-tile's own batch
 * (wait_group 0) and release its stage at once, so all ST stages fill while the consumer waits;
 * the cost is the next batch's issue no longer overlapping this one's products. Same wgmma's in the
 * same order into the same accumulators: bitwise the same outputs. */
template <bool SWIGLU, int BN, int ST, int EPI, int ACL, bool PAIRS>
__device__ __forceinline__ void g5_consume(bf16 *out, const int32_t *tiles, const int32_t *counts,
                                           const int32_t *offsets, int N, int nbx, int ktiles, int half_tiles,
                                           int early, uint32_t sbase, uint32_t stg0, uint32_t full0, uint32_t empty0)
{
    const int c = (threadIdx.x >> 7) - 1; /* consumer 0 or 1: rows 64 c .. of a full tile */
    const uint32_t stg = stg0 + (uint32_t)(c * G5_OUT_BYTES(SWIGLU, BN));
    const g5_sched sc = g5_schedule<ACL, PAIRS>(nbx);
    constexpr int REL = PAIRS ? 2 : ACL; /* the CTAs whose empty barriers a stage's release goes to */
    const int n = sc.items(tiles);
    uint32_t i = 0; /* k-tiles consumed by this block so far */
    for (int w = sc.first; w < n; w += sc.step) {
        bool ghost;
        const int tile = g5_tile(sc, tiles, w, ghost), xb = sc.block_of(w);
        /* the same for every thread of the block (same w, same table): a block-uniform branch; the
         * idle one is the same for the whole warpgroup (c) */
        if (G5_SKIP_EMPTY_ROWS && !half_tiles && (ghost || g5_rows(tiles, counts, offsets, tile) <= 64 * c))
            g5_item_idle<ST, REL>(ktiles, i, full0, empty0);
        else if (half_tiles && g5_rows(tiles, counts, offsets, tile) <= 64)
            g5_item<SWIGLU, BN, ST, EPI, true, REL>(out, tiles, counts, offsets, N, xb, tile, ghost, ktiles, c, early,
                                                    i, sbase, stg, full0, empty0);
        else
            g5_item<SWIGLU, BN, ST, EPI, false, REL>(out, tiles, counts, offsets, N, xb, tile, ghost, ktiles, c,
                                                     early, i, sbase, stg, full0, empty0);
    }
    /* the block's shared memory must outlive the reads of the last bulk copies */
    if (EPI == 2 && ((threadIdx.x & 127) >> 5) == 0) g5_bulk_wait_read();
}

template <bool GATHER, bool SWIGLU, int BN, int ST, int EPI, int TMA, int ACL, bool PAIRS>
__global__ void __launch_bounds__(G5_THREADS, 1)
    grouped_gemm_v5_kernel(bf16 *out, const bf16 *X, const int32_t *xrows, int div, const bf16 *W,
                           const __grid_constant__ CUtensorMap wmap, const __grid_constant__ CUtensorMap amap,
                           const int32_t *tiles, const int32_t *counts, const int32_t *offsets, int N, int Kin,
                           int nbx, int half_tiles, int early, int l2)
{
    static_assert(ACL == 0 || (TMA == 1 && EPI < 2), "A by TMA rows: weights by TMA 1; epilogue 0 or 1");
    static_assert(!PAIRS || (TMA == 1 && ACL == 0), "weight pairs: weights by TMA 1, A by cp.async");
    /* A consumer keeps k-tile i's batch in flight while it waits for i + 1: with one stage that
     * would wait for its own release (deadlock); two or more are enough. */
    static_assert(ST >= 2, "the ring needs at least 2 stages");
    static_assert(EPI >= 0 && EPI <= 2, "epilogue 0, 1 or 2");
    static_assert(G5_SMEM(BN, ST, EPI, SWIGLU) <= G5_SMEM_MAX, "stages + staging exceed an SM's shared memory");
#ifdef Q3N_HAVE_WGMMA
    constexpr int CL = PAIRS ? 2 : ACL; /* cluster size (0 or 1: no cluster) */
    extern __shared__ unsigned char g5s[];
    const g5_sched sc = g5_schedule<ACL, PAIRS>(nbx);
    /* the whole block (with clusters the whole cluster: same first item), before any barrier exists */
    if (sc.first >= sc.items(tiles)) return;
    /* [stages | staging (EPI > 0) | full barriers | empty barriers], from a 1024-byte boundary */
    const uint32_t sbase = ((uint32_t)__cvta_generic_to_shared(g5s) + 1023u) & ~1023u;
    const uint32_t stg0 = sbase + ST * G5_STAGE_BYTES(BN);
    const uint32_t full0 = stg0 + (EPI ? 2 * G5_OUT_BYTES(SWIGLU, BN) : 0), empty0 = full0 + 8 * ST;
    if (threadIdx.x == 0) {
        for (int s = 0; s < ST; s++) {
            /* one cp.async-tracking arrival per producer thread (+ thread 0's expect_tx with TMA);
             * A by TMA rows: lane 0's expect_tx alone */
            wb_init(full0 + 8 * s, ACL ? 1 : TMA ? 129 : 128);
            wb_init(empty0 + 8 * s, 8 * (CL > 1 ? CL : 1)); /* each consumer warp (of each cluster CTA) */
        }
        wb_init_fence();
    }
    if (CL >= 2)
        cl_sync(); /* the peers' barriers exist before any multicast or remote arrival reaches them */
    else
        __syncthreads();
    const int ktiles = (Kin + G5_BK - 1) / G5_BK;
    if (threadIdx.x < 128) {
        if constexpr (ACL == 0)
            g5_produce<GATHER, SWIGLU, BN, ST, TMA, PAIRS>(X, xrows, div, W, &wmap, tiles, counts, offsets, N, Kin, nbx,
                                                        ktiles, l2, sbase, full0, empty0);
        else if (threadIdx.x < 32)
            g5_produce_rows<GATHER, SWIGLU, BN, ST, TMA, ACL>(xrows, div, &wmap, &amap, tiles, counts, offsets, N,
                                                              nbx, ktiles, l2, sbase, full0, empty0);
    } else {
        g5_consume<SWIGLU, BN, ST, EPI, ACL, PAIRS>(out, tiles, counts, offsets, N, nbx, ktiles, half_tiles, early,
                                                 sbase, stg0, full0, empty0);
    }
    if (CL >= 2) { /* no CTA leaves while a peer may still arrive on or copy into it */
        __syncwarp();   /* barrier.cluster is .aligned: whole warps */
        cl_sync();
    }
#else
    __trap(); /* launched only where cuda_moe_grouped_v4_supported(): sm_90a code */
#endif
}

/* Production configuration, chosen from dev/test_moe_prefill's timings (H100, T = 16384, real dims,
 * fast/cuda/dev/logs/session4_moe5b.log): 128 x 256 tiles for both GEMMs.
 *  - gate_up: persistent grid, 4 stages, fragments stored from registers: 1.55 ms (a block per
 *    tile 1.89; 3 stages with the shared-memory epilogue 1.84-2.38: the 4th stage matters at 32
 *    k-tiles per item);
 *  - down: persistent grid, 3 stages, output tile staged through shared memory and written with
 *    16-byte stores (epilogue 1): 0.94 ms, against 1.19 for a block per tile with 4 stages and the
 *    register epilogue, 1.01 for a block per tile with epilogue 1, 1.00 with the bulk-copy
 *    epilogue (2) on the persistent grid. */
#define G5_BN_DEFAULT 256
#define G5_PERSISTENT_GATE_UP 1
#define G5_PERSISTENT_DOWN 1
#define G5_STAGES_DOWN 3
#define G5_EPILOGUE_DOWN 1
/* Half tiles off (fast/cuda/dev/logs/session6_moe_half_tiles.log, one H100 run, T = 16384): on
 * the production configurations gate_up went 1.559 -> 1.95 ms (the production entry with them on:
 * 1.87) and down 0.935 -> 0.916; only the block-per-tile configurations gained (gate_up 1.82 ->
 * 1.72, bn128 2.38 -> 2.22), and none of those beats the persistent grid without half tiles. */
#define G5_HALF_TILES 0
/* Weight tiles by TMA (tensor copies) instead of 16-byte cp.async: see g5_produce. Measured in one
 * H100 run (fast/cuda/dev/logs/session6_moe_tma.log, T = 16384): down (persistent, 3 stages, epilogue
 * 1) 0.938 -> 0.838 ms, the production entry's down 0.826; gate_up 1.556 -> 1.578 with TMA, the
 * production entry's 1.472 (noise of a few %); T = 4096 gate_up 0.819 -> 0.794. Model (bench_model
 * T = 16384, session6_r6_tma.log): MoE blocks 12.89 -> 12.10 ms. Bitwise v3: 1394 cases. */
#define G5_TMA 1
/* Stages released as soon as their own batch retires (g5_consume's early). Measured on an H100 in
 * session 10 (dev/test_moe_prefill, fast/cuda/dev/logs/session10_tests.log): bitwise v3 on every
 * case; T = 4096 gate_up 0.818 -> 0.827 ms (st3: 0.917 -> 0.884), down 0.453 -> 0.461; T = 16384
 * gate_up 1.563 -> 1.479, down 1.416 -> 1.464; bench_model unchanged (9.68 / 30.03 ms against
 * 9.65 / 30.03, session10_ab.log). Off. */
#ifndef G5_EARLY_RELEASE
#define G5_EARLY_RELEASE 0
#endif
/* Early release for gate_up alone, where the experts average at least this many rows (session 10's
 * -5 % was gate_up's at T = 16384, where down lost; at T = 4096 gate_up lost too). INT32_MAX: never.
 * Measured on an H100 in session 18 with 192 (T = 16384 only), beside gate_up's L2 hint:
 * dev/test_moe_prefill --only early (session18_c2_moe_early.log) gate_up 1.453 / 1.501 ms against
 * the production entry's 1.387 / 1.606 in the same passes; bench_model T = 16384 25.49 -> 25.85 ms
 * (+1.4 %, session18_c2_ab_summary.md). No gain: off. */
#ifndef G5_EARLY_GATE_UP_MIN_ROWS
#define G5_EARLY_GATE_UP_MIN_ROWS INT32_MAX
#endif
static int g5_early_auto(int swiglu, int64_t rows, int64_t E)
{
    return G5_EARLY_RELEASE || (swiglu && rows >= (int64_t)G5_EARLY_GATE_UP_MIN_ROWS * E);
}
/* A (the gathered x rows of gate_up, h of down) by TMA row boxes, multicast over clusters of 2 or 4
 * CTAs that share a tile (g5_produce_rows; session 11, aimed at T = 4096, where gate_up reads each
 * expert's A rows once per output block with L2 at 90 %): 0 = cp.async per block, 1 = TMA rows per
 * block, 2 / 4 = clusters. Measured on an H100 in session 11 (dev/test_moe_prefill, 2342 cases, every
 * configuration bitwise v3; fast/cuda/dev/logs/session11_cl_moe_prefill.log), T = 4096 gate_up /
 * down: cp.async 0.805 / 0.454 ms (the production entry 0.804 / 0.436), TMA rows 1.57 / 0.77, clusters
 * of 2 1.21 / 0.61, of 4 1.30 / 0.63; T = 16384: 1.49 / 1.39 against 6.4 / 3.1, 3.4 / 1.8, 3.3 / 1.8.
 * bench_model T = 4096: 9.51 ms -> 12.9 (rows), 11.1 (2), 11.4 (4), 12.2 (4 for down too). ncu of
 * the cluster-4 gate_up (session11_cl_ncu_bench_model_gu4.log): 1.38 ms with DRAM at 50 % and L2 at
 * 64 %: neither is the limit any more, the TMA unit is: one 128-byte box per row costs about as much
 * as a 32 KB weight box (80 row boxes + 2 weight boxes per k-tile), and multicast does not change the
 * boxes each SM receives. Gathered rows want a gathering copy engine (sm_100's TMA gather4), not
 * Hopper's. Off; kept, with its test cases, as the measured alternative. */
#ifndef G5_A_CLUSTER_GATE_UP
#define G5_A_CLUSTER_GATE_UP 0
#endif
#ifndef G5_A_CLUSTER_DOWN
#define G5_A_CLUSTER_DOWN 0
#endif

/* Weight pairs (g5_load_b_pair) in the production entries: on for gate_up / down where the experts
 * average at least G5_B_PAIR_MIN_ROWS rows (two tiles or more: at fewer, most pairs straddle two
 * experts and only lock two blocks together). Aimed at T = 16384, where the premise was that L2
 * (76 % busy) limits gate_up. Measured on an H100 in session 18 (dev/test_moe_prefill --only bpair,
 * 151 cases bitwise v3; fast/cuda/dev/logs/session18_c1_moe_bpair.log, two passes): T = 16384
 * gate_up 1.387-1.392 -> 2.448-2.450 ms, down 0.810-0.813 -> 1.129-1.136 (its epilogue-1 twin); T =
 * 4096, where every pair straddles two experts, gate_up 0.77 -> 0.94. bench_model T = 16384 25.5 ->
 * 30.5 ms (session18_c1/c2_ab_summary.md). ncu of the pairs' gate_up (session18_c2_ncu_bpair.log.xz):
 * L2 86 % busy (76 % without), tensor pipe 42 % active (70 %), DRAM 3.30 GB read (2.89): the pairs
 * lock two blocks to the slower one's pace and save no DRAM bytes. Off; kept with its test cases. */
#ifndef G5_B_PAIR_GATE_UP
#define G5_B_PAIR_GATE_UP 0
#endif
#ifndef G5_B_PAIR_DOWN
#define G5_B_PAIR_DOWN 0
#endif
#ifndef G5_B_PAIR_MIN_ROWS
#define G5_B_PAIR_MIN_ROWS 192
#endif
static int g5_b_pair_auto(int swiglu, int64_t rows, int64_t E)
{
    return (swiglu ? G5_B_PAIR_GATE_UP : G5_B_PAIR_DOWN) && rows >= (int64_t)G5_B_PAIR_MIN_ROWS * E;
}

/* The arguments every instantiation takes, and the grid: at most SMs x blocks per SM when persistent. */
struct g5_args {
    bf16 *out;
    const bf16 *x, *W;
    const int32_t *rows, *tiles, *counts, *offsets;
    int div, N, Kin, nbx, persistent, sms, half_tiles, early, l2;
    int64_t max_items, max_tiles;
    CUtensorMap wmap; /* with TMA: W as [E][N][Kin] (g5_weight_map) */
    CUtensorMap amap; /* with A by TMA rows: X as [rows of X][Kin] (g5_rows_map) */
};

/* cuTensorMapEncodeTiled of a bf16 tensor (rank 2 or 3, dims innermost first, byte strides of the
 * outer dims) with boxes `box` in the 128-byte swizzle, zeros outside the tensor. The encoder is the
 * driver's, reached through the runtime (no -lcuda). */
static enum q3n_status g5_encode(CUtensorMap *map, const void *base, int rank, const cuuint64_t *dims,
                                 const cuuint64_t *strides, const cuuint32_t *box, CUtensorMapL2promotion promo,
                                 const char *what, struct q3n_error *err)
{
    void *fn = NULL;
    cudaDriverEntryPointQueryResult found;
    CU_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || !fn)
        return q3n_error_set(err, Q3N_ERR_DEVICE, "%s:%d: the CUDA driver has no cuTensorMapEncodeTiled", __FILE__,
                             __LINE__);
    const cuuint32_t estr[3] = {1, 1, 1};
    const CUresult r = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn)(
        map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, (cuuint32_t)rank, const_cast<void *>(base), dims, strides, box, estr,
        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, promo, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        return q3n_error_set(err, Q3N_ERR_DEVICE, "%s:%d: cuTensorMapEncodeTiled failed (%d) for %s [%llu x %llu ...]",
                             __FILE__, __LINE__, (int)r, what, (unsigned long long)dims[rank - 1],
                             (unsigned long long)dims[rank - 2]);
    return Q3N_OK;
}

/* The tensor map of the A operand X [xrows][Kin] bf16 for g5_produce_rows: boxes of one row x 64 k
 * (128 bytes), rows gathered one box at a time; X is read again by the other output blocks, so L2
 * keeps it (promotion to 128-byte lines, the size of a row's box). */
static enum q3n_status g5_rows_map(CUtensorMap *map, const void *X, int64_t xrows, int64_t Kin,
                                   struct q3n_error *err)
{
    const cuuint64_t dims[2] = {(cuuint64_t)Kin, (cuuint64_t)xrows}, strides[1] = {(cuuint64_t)Kin * 2};
    const cuuint32_t box[2] = {G5_BK, 1};
    return g5_encode(map, X, 2, dims, strides, box, CU_TENSOR_MAP_L2_PROMOTION_L2_128B, "X", err);
}

/* The tensor map of the expert weights W [E][N][Kin] bf16 for TMA: dimensions innermost first
 * (Kin, N, E), boxes of 64 k (128 bytes, the 128-byte swizzle's row) x rows x 1 expert, zeros
 * outside the tensor; packed (tma 2, W from cuda_moe_pack_v5): (64, 256, E x items x k-tiles), one
 * box = one contiguous k-tile. The encoder is the driver's, reached through the runtime (no -lcuda). */
static enum q3n_status g5_weight_map(CUtensorMap *map, const void *W, int64_t E, int64_t N, int64_t Kin,
                                     int box_rows, int packed, struct q3n_error *err)
{
    const cuuint64_t tiles = (cuuint64_t)(E * N * Kin / (256 * G5_BK)); /* packed: E x items x k-tiles */
    const cuuint64_t dims[3] = {packed ? (cuuint64_t)G5_BK : (cuuint64_t)Kin, packed ? 256 : (cuuint64_t)N,
                                packed ? tiles : (cuuint64_t)E};
    const cuuint64_t strides[2] = {dims[0] * 2, dims[0] * dims[1] * 2}; /* bytes, dims 1 and 2 */
    const cuuint32_t box[3] = {G5_BK, packed ? 256u : (cuuint32_t)box_rows, 1};
    return g5_encode(map, W, 3, dims, strides, box, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, "W", err);
}

/* The cluster launch of g5_launch (ACL >= 2): clusters of ACL CTAs along x; persistent: as many
 * clusters as fit at once (cudaOccupancyMaxActiveClusters: a GPC whose SM count is not a multiple
 * of ACL leaves SMs idle), else one cluster per item group. */
template <typename K>
static enum q3n_status g5_launch_clusters(K kernel, int acl, bool pairs, int smem, const struct g5_args &a,
                                          cudaStream_t stream, struct q3n_error *err)
{
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = (unsigned)acl, attr[0].val.clusterDim.y = 1, attr[0].val.clusterDim.z = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)acl), cfg.blockDim = dim3(G5_THREADS), cfg.dynamicSmemBytes = (size_t)smem;
    cfg.stream = stream, cfg.attrs = attr, cfg.numAttrs = 1;
    int clusters = 0;
    CU_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg));
    if (clusters < 1)
        return q3n_error_set(err, Q3N_ERR_DEVICE, "%s:%d: grouped_gemm_v5_kernel: no cluster of %d CTAs fits", __FILE__,
                             __LINE__, acl);
    /* a cluster's items: ACL output blocks of one tile, or (pairs) one output block of two tiles */
    const int64_t items = pairs ? cdiv(a.max_tiles, 2) * a.nbx : a.max_tiles * cdiv(a.nbx, acl);
    cfg.gridDim = dim3((unsigned)(acl * (a.persistent && clusters < items ? clusters : items)));
    CU_CHECK(cudaLaunchKernelEx(&cfg, kernel, a.out, a.x, a.rows, a.div, a.W, a.wmap, a.amap, a.tiles, a.counts,
                                a.offsets, a.N, a.Kin, a.nbx, a.half_tiles, a.early, a.l2));
    CU_LAUNCHED("moe grouped_gemm_v5_kernel (clusters)");
    return Q3N_OK;
}

template <bool G, bool S, int BN, int ST, int EPI, int TMA, int ACL, bool PAIRS>
static enum q3n_status g5_launch(const struct g5_args &a, cudaStream_t stream, struct q3n_error *err)
{
    constexpr int smem = G5_SMEM(BN, ST, EPI, S);
    auto *const kernel = grouped_gemm_v5_kernel<G, S, BN, ST, EPI, TMA, ACL, PAIRS>;
    CU_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    if (ACL >= 2 || PAIRS) return g5_launch_clusters(kernel, PAIRS ? 2 : ACL, PAIRS, smem, a, stream, err);
    int per_sm = 0;
    CU_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, G5_THREADS, smem));
    if (per_sm < 1)
        return q3n_error_set(err, Q3N_ERR_DEVICE,
                             "%s:%d: grouped_gemm_v5_kernel (BN %d, %d stages, epilogue %d) does not fit an SM",
                             __FILE__, __LINE__, BN, ST, EPI);
    const int64_t fill = (int64_t)a.sms * per_sm, grid = a.persistent && fill < a.max_items ? fill : a.max_items;
    kernel<<<(unsigned)grid, G5_THREADS, smem, stream>>>(a.out, a.x, a.rows, a.div, a.W, a.wmap, a.amap, a.tiles,
                                                         a.counts, a.offsets, a.N, a.Kin, a.nbx, a.half_tiles, a.early,
                                                         a.l2);
    CU_LAUNCHED("moe grouped_gemm_v5_kernel");
    return Q3N_OK;
}

/* The L2 hints (G5_L2_*) of the production entries. Measured on an H100 (session 15,
 * dev/test_moe_prefill --l2, fast/cuda/dev/logs/session15_c3_l2.log; medians of 10, two passes):
 *  - A rows evict_last: gate_up T = 4096 0.846-0.851 -> 0.810-0.811 ms (-4.5 %), T = 16384 1.540-1.555
 *    -> 1.495-1.512 (-3 %); down (4 stages, epilogue 0) T = 4096 0.465 -> 0.456, T = 16384 1.414 ->
 *    1.369. The rows of one tile are read by its nbx output blocks at about the same time, and the
 *    weight stream no longer pushes them out in between.
 *  - weights evict_first: no gain for gate_up (0.845), a loss for down (0.465 -> 0.531 ms; the
 *    production down 0.453 -> 0.566).
 * The model lost at first: bench_model with gate_up's A rows evict_last (and q/k prep v4's loads
 * ahead) against main, alternated three times on one H100 (session15_c4_l2a_qkp_ab_summary.md):
 * T = 4096 8.94 -> 9.01 ms (+0.8 %), T = 16384 25.82 -> 26.57 (+2.9 %). Lines marked evict_last keep
 * that priority after the kernel and hold L2 against the kernels that follow.
 * With X's lines put back to evict_normal after the kernel (G5_L2_RESET, l2_priority_normal: one
 * applypriority per 128-byte line, a few us) it wins (session 16, bench_model alternated on one H100,
 * fast/cuda/dev/logs/session16_c1_ab_summary.md and session16_c2_ab_summary.md, medians of 4 and 7
 * runs): T = 4096 8.975 -> 8.850 ms and 8.990 -> 8.870 (-1.4 %, -1.3 %); T = 16384 25.93 -> 26.02 and
 * 26.45 -> 26.38 (within that metric's spread: the same binary's medians moved 2.5 % between the
 * runs); decode unchanged (no grouped GEMM there). Limiting the hint to X of at most 25 MB
 * (G5_L2_A_MAX_BYTES, i.e. T = 4096 but not 16384) measured the same at T = 4096 (8.845, 8.860 ms).
 * So the production entries mark gate_up's gathered rows evict_last and reset them (G5_L2_HINTS 1).
 * Down's flat A stays plain (G5_L2_A_LAST_DOWN 0): with the hint and reset it measured no gain in the
 * model (session 17, session17_c1_ab_summary.md, medians of 5: T = 4096 8.780 ms for every T, 8.760
 * with G5_L2_DOWN_MAX_BYTES 5e7 (T = 4096 only), against 8.730 without). */
#ifndef G5_L2_HINTS
#define G5_L2_HINTS 1
#endif
#ifndef G5_L2_A_LAST_DOWN
#define G5_L2_A_LAST_DOWN 0
#endif
/* With the hints: A's rows are marked evict_last only while X takes at most this many bytes
 * (measured with 25000000: no better than without a limit, above). */
#ifndef G5_L2_A_MAX_BYTES
#define G5_L2_A_MAX_BYTES INT64_MAX
#endif
/* With the hints: after the kernel, X's lines are put back to evict_normal (applypriority), so that
 * they do not keep their place in L2 from the kernels that follow. */
#ifndef G5_L2_RESET
#define G5_L2_RESET 1
#endif
/* With G5_L2_A_LAST_DOWN: down's flat A is marked only while it takes at most this many bytes. */
#ifndef G5_L2_DOWN_MAX_BYTES
#define G5_L2_DOWN_MAX_BYTES INT64_MAX
#endif
static int g5_l2_auto(int gathered, int64_t x_bytes)
{
    if (!G5_L2_HINTS || x_bytes > (int64_t)G5_L2_A_MAX_BYTES) return 0;
    if (!gathered && (!G5_L2_A_LAST_DOWN || x_bytes > (int64_t)G5_L2_DOWN_MAX_BYTES)) return 0;
    return G5_L2_A_LAST;
}

/* The production entries' options for the run's report ("/l2a": gate_up's gathered rows evict_last,
 * then reset, "+down" down's A too; "/bpair": weight pairs; "/early(gate_up)": early release for gate_up at large T), fixed
 * when this file is compiled (a constant, built once). */
extern "C" const char *cuda_moe_grouped_v5_variant(void)
{
    static const std::string name =
        std::string(G5_L2_HINTS ? (G5_L2_A_MAX_BYTES < INT64_MAX ? "/l2a(small)" : "/l2a") : "") +
        (G5_L2_HINTS && G5_L2_A_LAST_DOWN ? (G5_L2_DOWN_MAX_BYTES < INT64_MAX ? "+down(small)" : "+down") : "") +
        (G5_B_PAIR_GATE_UP || G5_B_PAIR_DOWN ? "/bpair" : "") +
        (G5_EARLY_RELEASE ? "/early" : G5_EARLY_GATE_UP_MIN_ROWS < INT32_MAX ? "/early(gate_up)" : "");
    return name.c_str();
}

/* Puts the 128-byte lines of [p, p + lines 128) back to the normal eviction priority in L2 (PTX
 * applypriority, sm_80+; lines not in L2 are left alone). p is 128-byte aligned. */
__global__ void l2_priority_normal_kernel(const char *p, int64_t lines)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < lines; i += (int64_t)gridDim.x * blockDim.x)
        asm volatile("applypriority.global.L2::evict_normal [%0], 128;\n" ::"l"(p + i * 128) : "memory");
#endif
}

/* ... for every line that holds a byte of [p, p + bytes) */
static enum q3n_status l2_priority_normal(const void *p, int64_t bytes, cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(bytes >= 0);
    const uintptr_t first = (uintptr_t)p & ~(uintptr_t)127;
    const int64_t lines = cdiv((int64_t)((uintptr_t)p - first) + bytes, 128);
    if (lines == 0) return Q3N_OK;
    const int threads = 256;
    const int blocks = (int)(lines / threads < 1024 ? cdiv(lines, threads) : 1024);
    l2_priority_normal_kernel<<<blocks, threads, 0, stream>>>((const char *)first, lines);
    CU_LAUNCHED("moe l2_priority_normal_kernel");
    return Q3N_OK;
}

/* One configuration for every gather / SwiGLU combination. */
template <int BN, int ST, int EPI, int TMA = 0, int ACL = 0, bool PAIRS = false>
static enum q3n_status g5_launch_cfg(const struct g5_args &a, int swiglu, cudaStream_t stream, struct q3n_error *err)
{
    if (a.rows && swiglu) return g5_launch<true, true, BN, ST, EPI, TMA, ACL, PAIRS>(a, stream, err);
    if (a.rows) return g5_launch<true, false, BN, ST, EPI, TMA, ACL, PAIRS>(a, stream, err);
    if (swiglu) return g5_launch<false, true, BN, ST, EPI, TMA, ACL, PAIRS>(a, stream, err);
    return g5_launch<false, false, BN, ST, EPI, TMA, ACL, PAIRS>(a, stream, err);
}

/* The two configurations with the weights by TMA (stages 4 with epilogue 0, or 3 with epilogue 1),
 * with A by cp.async (a_cluster 0) or by TMA rows: per block (1) or multicast over 2 or 4 CTAs; or
 * (b_pair) A by cp.async and the weights multicast over the CTA pairs of g5_load_b_pair. */
template <int ST, int EPI>
static enum q3n_status g5_launch_tma(const struct g5_args &a, int swiglu, int a_cluster, int b_pair,
                                     cudaStream_t stream, struct q3n_error *err)
{
    if (b_pair) return g5_launch_cfg<256, ST, EPI, 1, 0, true>(a, swiglu, stream, err);
    switch (a_cluster) {
    case 1: return g5_launch_cfg<256, ST, EPI, 1, 1>(a, swiglu, stream, err);
    case 2: return g5_launch_cfg<256, ST, EPI, 1, 2>(a, swiglu, stream, err);
    case 4: return g5_launch_cfg<256, ST, EPI, 1, 4>(a, swiglu, stream, err);
    default: return g5_launch_cfg<256, ST, EPI, 1>(a, swiglu, stream, err);
    }
}

/* The kernel of the configuration (bn, stages, epilogue, weights by TMA, A's cluster), launched. */
static enum q3n_status g5_dispatch(struct g5_args &a, int swiglu, int st, int epilogue, int bn, int tma,
                                   int a_cluster, int b_pair, int64_t E, int64_t N, int64_t Kin, const void *d_W,
                                   cudaStream_t stream, struct q3n_error *err)
{
    if (tma) {
        /* boxes of BN / 2 rows: the gate / up halves with SwiGLU, the pair's halves (g5_load_b_pair) */
        Q3N_TRY(g5_weight_map(&a.wmap, d_W, E, N, Kin, swiglu || b_pair ? bn / 2 : bn, tma == 2, err));
        if (tma == 2)
            return epilogue == 1 ? g5_launch_cfg<256, 3, 1, 2>(a, swiglu, stream, err)
                                 : g5_launch_cfg<256, 4, 0, 2>(a, swiglu, stream, err);
        if (epilogue == 1) return g5_launch_tma<3, 1>(a, swiglu, a_cluster, b_pair, stream, err);
        return g5_launch_tma<4, 0>(a, swiglu, a_cluster, b_pair, stream, err);
    }
    memset(&a.wmap, 0, sizeof a.wmap); /* unused without TMA */
    if (bn == 128) return g5_launch_cfg<128, 6, 0>(a, swiglu, stream, err);
    if (epilogue == 1) return g5_launch_cfg<256, 3, 1>(a, swiglu, stream, err);
    if (epilogue == 2) return g5_launch_cfg<256, 3, 2>(a, swiglu, stream, err);
    if (st == 2) return g5_launch_cfg<256, 2, 0>(a, swiglu, stream, err);
    if (st == 3) return g5_launch_cfg<256, 3, 0>(a, swiglu, stream, err);
    return g5_launch_cfg<256, 4, 0>(a, swiglu, stream, err);
}

extern "C" enum q3n_status cuda_moe_grouped_gemm_v5_cfg(
    void *d_out, const void *d_x, const int32_t *d_rows, int64_t div, const void *d_W, const int32_t *d_counts,
    const int32_t *d_offsets, const int32_t *d_tiles, int64_t rows, int64_t E, int64_t N, int64_t Kin, int swiglu,
    int bn, int persistent, int stages, int epilogue, int half_tiles, int tma, int early_release, int a_cluster,
    int b_pair, int l2_hints, enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err)
{
    Q3N_REQUIRE(cuda_moe_grouped_v3_ok(N, Kin, swiglu, dt) && cuda_moe_grouped_v4_supported() &&
                (bn == 128 || bn == 256) && (persistent == 0 || persistent == 1) &&
                (half_tiles == 0 || half_tiles == 1) && (tma >= 0 && tma <= 2) &&
                (early_release == 0 || early_release == 1) && l2_hints >= -1 && l2_hints <= 3);
    const int st = stages ? stages : G5_STAGES(bn);
    /* the instantiated configurations (see the header); TMA: the two production ones */
    Q3N_REQUIRE(bn == 128 ? st == 6 && epilogue == 0
                          : (epilogue == 0 && st >= 2 && st <= 4) || (st == 3 && (epilogue == 1 || epilogue == 2)));
    Q3N_REQUIRE(!tma || (bn == 256 && ((st == 4 && epilogue == 0) || (st == 3 && epilogue == 1))));
    /* A by TMA rows: with the weights by TMA from the checkpoint layout */
    Q3N_REQUIRE((a_cluster == 0 || a_cluster == 1 || a_cluster == 2 || a_cluster == 4) && (!a_cluster || tma == 1));
    /* weight pairs: the weights by TMA from the checkpoint layout, A by cp.async, no weight hint */
    Q3N_REQUIRE((b_pair == 0 || b_pair == 1) &&
                (!b_pair || (tma == 1 && a_cluster == 0 && (l2_hints < 0 || !(l2_hints & G5_L2_W_FIRST)))));
    /* packed: box indices (e nbx + xb) ktiles + kt stay in int */
    Q3N_REQUIRE(tma != 2 || (cuda_moe_v5_packable(N, Kin, swiglu) && E * N * Kin / (256 * G5_BK) <= INT32_MAX));
    Q3N_REQUIRE(rows >= 0 && rows <= INT32_MAX && E > 0 && E <= INT32_MAX && div > 0);
    if (rows == 0) return Q3N_OK;
    /* output blocks per tile; the tile table has at most rows / 128 + E tiles (cdiv per expert) */
    const int64_t nbx = swiglu ? cdiv(N / 2, bn / 2) : cdiv(N, bn);
    const int64_t max_items = nbx * (rows / G3_BM + E + 1);
    Q3N_REQUIRE(max_items <= INT32_MAX / 2); /* item indices + gridDim.x stay in int */
    int dev = 0, sms = 0;
    CU_CHECK(cudaGetDevice(&dev));
    CU_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    /* the rows of X: a gathered row is x[rows[p] / div], below cdiv(rows, div); else X has `rows` */
    const int64_t x_rows = d_rows ? cdiv(rows, div) : rows, x_bytes = x_rows * Kin * 2;
    if (l2_hints < 0) l2_hints = g5_l2_auto(d_rows != NULL, x_bytes);
    struct g5_args a;
    a.out = (bf16 *)d_out, a.x = (const bf16 *)d_x, a.W = (const bf16 *)d_W;
    a.rows = d_rows, a.tiles = d_tiles, a.counts = d_counts, a.offsets = d_offsets;
    a.div = (int)div, a.N = (int)N, a.Kin = (int)Kin, a.nbx = (int)nbx, a.persistent = persistent, a.sms = sms;
    a.max_items = max_items, a.max_tiles = max_items / nbx, a.half_tiles = half_tiles, a.early = early_release;
    a.l2 = l2_hints;
    memset(&a.amap, 0, sizeof a.amap); /* unused with A by cp.async */
    if (a_cluster) Q3N_TRY(g5_rows_map(&a.amap, d_x, x_rows, Kin, err));
    Q3N_TRY(g5_dispatch(a, swiglu, st, epilogue, bn, tma, a_cluster, b_pair, E, N, Kin, d_W, stream, err));
    if ((a.l2 & G5_L2_A_LAST) && G5_L2_RESET) Q3N_TRY(l2_priority_normal(d_x, x_bytes, stream, err));
    return Q3N_OK;
}

extern "C" enum q3n_status cuda_moe_grouped_gemm_v5(void *d_out, const void *d_x, const int32_t *d_rows, int64_t div,
                                                    const void *d_W, const int32_t *d_counts,
                                                    const int32_t *d_offsets, const int32_t *d_tiles, int64_t rows,
                                                    int64_t E, int64_t N, int64_t Kin, int swiglu,
                                                    enum q3n_compute_dtype dt, cudaStream_t stream,
                                                    struct q3n_error *err)
{
    return cuda_moe_grouped_gemm_v5_cfg(d_out, d_x, d_rows, div, d_W, d_counts, d_offsets, d_tiles, rows, E, N, Kin,
                                        swiglu, G5_BN_DEFAULT, swiglu ? G5_PERSISTENT_GATE_UP : G5_PERSISTENT_DOWN,
                                        swiglu ? 0 : G5_STAGES_DOWN, swiglu ? 0 : G5_EPILOGUE_DOWN, G5_HALF_TILES,
                                        G5_TMA, g5_early_auto(swiglu, rows, E),
                                        swiglu ? G5_A_CLUSTER_GATE_UP : G5_A_CLUSTER_DOWN,
                                        g5_b_pair_auto(swiglu, rows, E), -1, dt, stream, err);
}

extern "C" enum q3n_status cuda_moe_grouped_gemm_v5_packed(void *d_out, const void *d_x, const int32_t *d_rows,
                                                           int64_t div, const void *d_W, const int32_t *d_counts,
                                                           const int32_t *d_offsets, const int32_t *d_tiles,
                                                           int64_t rows, int64_t E, int64_t N, int64_t Kin, int swiglu,
                                                           enum q3n_compute_dtype dt, cudaStream_t stream,
                                                           struct q3n_error *err)
{
    return cuda_moe_grouped_gemm_v5_cfg(d_out, d_x, d_rows, div, d_W, d_counts, d_offsets, d_tiles, rows, E, N, Kin,
                                        swiglu, G5_BN_DEFAULT, swiglu ? G5_PERSISTENT_GATE_UP : G5_PERSISTENT_DOWN,
                                        swiglu ? 0 : G5_STAGES_DOWN, swiglu ? 0 : G5_EPILOGUE_DOWN, G5_HALF_TILES, 2,
                                        G5_EARLY_RELEASE, 0, 0, -1, dt, stream, err);
}
