/* bench_stream.cu — how fast can the expert weights stream into shared memory, by which route and
 * in which layout? A probe for the grouped expert GEMM at T = 4096 (about 80 rows per expert),
 * where the weights, not the products, set the time: it streams the same bytes as grouped v5's
 * producer, with no products, and prints GB/s per pattern.
 *
 * Patterns (E experts of W [N][Kin] bf16, items = (expert, BN-row block), k-tiles of 64):
 *   ldg      plain 16-byte loads over the whole buffer in address order (HBM's own read rate)
 *   rows     v5's TMA boxes: per k-tile, 64 k (128 bytes) of each of BN rows 4*Kin/2 bytes apart
 *   rows2    the same, two adjacent k-tiles per stage (256 contiguous bytes per row per stage)
 *   packed   the same bytes laid out per (item, k-tile): each stage is one contiguous BN x 128 B run
 *   rows+A   rows, plus v5's A operand: warpgroup 0 gathers a 128-row A tile per stage by cp.async
 *            (16-byte chunks, zero fill past the expert's R rows, v5's swizzle) from token rows of an
 *            x [4096][K] buffer (L2-resident, as x is at T = 4096), R = 80 rows per expert (T K / E
 *            at T = 4096) or R = 0 (the same kernel, no A bytes). Does the A traffic from L2 cost
 *            the weight stream its rate? (v5 at T = 4096: 2.64 TB/s, these streams 3.04.)
 * Each TMA pattern runs with the consumer releasing a stage at once (delay 0) and after a spin that
 * stands in for the tensor-core time of a 128 x BN x 64 stage (delay in SM cycles).
 *   bench_stream [--E 512] [--N 1024] [--K 2048] [--reps 5]
 * Timing by CUDA events, best of reps; one block per SM, persistent over the items, as v5. */
#include <cuda.h>
#include <cudaTypedefs.h>

#include "../common.cuh"
#include "../moe_grouped.cuh"
#include "../wgmma.cuh"
#include "devkit.cuh"

#define BK 64
enum pattern { ROWS, ROWS2, PACKED };

/* The stand-in consumer of one stage: wait for fill f of stage s (at sa), spin `delay` cycles (the
 * tensor cores' time), read one word into acc, release the stage. */
__device__ __forceinline__ void consume_stage(uint32_t full, uint32_t empty, uint32_t f, uint32_t sa,
                                              long long delay, unsigned &acc)
{
    wb_wait(full, f & 1);
    if (delay > 0) {
        const long long t0 = clock64();
        while (clock64() - t0 < delay) {}
    }
    unsigned v;
    asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(sa));
    acc += v;
    wb_arrive(empty);
}

/* Thread 0 fills an ST-deep ring of stages (KPS boxes of BN x 64 each) by TMA; lane 0 of warp 1
 * waits for each stage, spins `delay` cycles, reads one word and releases it. */
template <int BN, int ST, int KPS>
__global__ void __launch_bounds__(64, 1) stream_kernel(const __grid_constant__ CUtensorMap map, int pattern,
                                                       int items, int nbx, int ktiles, long long delay,
                                                       unsigned *sink)
{
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    constexpr uint32_t BOX = BN * BK * 2, SB = KPS * BOX;
    const uint32_t base = ((uint32_t)__cvta_generic_to_shared(smem_raw) + 1023) & ~1023u;
    const uint32_t full0 = base + ST * SB, empty0 = full0 + 8 * ST;
    if (threadIdx.x == 0) {
        for (int s = 0; s < ST; s++) {
            wb_init(full0 + 8 * s, 1);
            wb_init(empty0 + 8 * s, 1);
        }
        wb_init_fence();
    }
    __syncthreads();
    uint32_t i = 0;
    unsigned acc = 0;
    for (int w = blockIdx.x; w < items; w += gridDim.x) {
        const int e = w / nbx, xb = w - e * nbx;
        for (int kt = 0; kt < ktiles; kt += KPS, i++) {
            const uint32_t s = i % ST, f = i / ST;
            if (threadIdx.x == 0) {
                if (f > 0) wb_wait(empty0 + 8 * s, (f - 1) & 1);
                wb_arrive_expect_tx(full0 + 8 * s, SB);
                for (int j = 0; j < KPS; j++) {
                    const uint32_t dst = base + s * SB + j * BOX;
                    if (pattern == PACKED) tma_load_3d(dst, &map, 0, 0, w * ktiles + kt + j, full0 + 8 * s);
                    else tma_load_3d(dst, &map, (kt + j) * BK, xb * BN, e, full0 + 8 * s);
                }
            } else if (threadIdx.x == 32) {
                consume_stage(full0 + 8 * s, empty0 + 8 * s, f, base + s * SB, delay, acc);
            }
        }
    }
    if (threadIdx.x == 32 && acc == 0x12345678u) sink[0] = acc;
}

/* rows+A (see the header): threads 0..127 produce (A by cp.async, as g5_produce; thread 0 also the
 * B box by TMA, its bytes expected on full[s]), lane 0 of warp 4 consumes as stream_kernel's. */
template <int BN, int ST>
__global__ void __launch_bounds__(160, 1) stream_a_kernel(const __grid_constant__ CUtensorMap map, const bf16 *X,
                                                          const int *xrows, int R, int Kin, int items, int nbx,
                                                          int ktiles, long long delay, unsigned *sink)
{
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    constexpr uint32_t AB = 128 * BK * 2, BOX = BN * BK * 2, SB = AB + BOX;
    const uint32_t base = ((uint32_t)__cvta_generic_to_shared(smem_raw) + 1023) & ~1023u;
    const uint32_t full0 = base + ST * SB, empty0 = full0 + 8 * ST;
    if (threadIdx.x == 0) {
        for (int s = 0; s < ST; s++) {
            wb_init(full0 + 8 * s, 129); /* 128 cp.async arrivals + thread 0's expect_tx */
            wb_init(empty0 + 8 * s, 1);
        }
        wb_init_fence();
    }
    __syncthreads();
    uint32_t i = 0;
    unsigned acc = 0;
    if (threadIdx.x < 128) {
        const int t = threadIdx.x, lr = t >> 3, lc = t & 7;
        const uint32_t so = (uint32_t)(lr * 128 + ((lc ^ (lr & 7)) << 4));
        for (int w = blockIdx.x; w < items; w += gridDim.x) {
            const int e = w / nbx, xb = w - e * nbx;
            int asrc[8];
#pragma unroll
            for (int a = 0; a < 8; a++) asrc[a] = lr + 16 * a < R ? xrows[e * R + lr + 16 * a] : -1;
            for (int kt = 0; kt < ktiles; kt++, i++) {
                const uint32_t s = i % ST, f = i / ST;
                if (f > 0) wb_wait(empty0 + 8 * s, (f - 1) & 1);
                const int k = kt * BK + lc * 8;
                const uint32_t sa = base + s * SB + so;
#pragma unroll
                for (int a = 0; a < 8; a++) {
                    const bool ok = asrc[a] >= 0;
                    g3_cp16(sa + a * 16 * 128, ok ? X + (size_t)asrc[a] * Kin + k : X, ok);
                }
                if (t == 0) {
                    wb_arrive_expect_tx(full0 + 8 * s, BOX);
                    tma_load_3d(base + s * SB + AB, &map, kt * BK, xb * BN, e, full0 + 8 * s);
                }
                wb_arrive_cp_async(full0 + 8 * s);
            }
        }
        wb_cp_async_drain();
    } else if (threadIdx.x == 128) {
        for (int w = blockIdx.x; w < items; w += gridDim.x)
            for (int kt = 0; kt < ktiles; kt++, i++) {
                const uint32_t s = i % ST;
                consume_stage(full0 + 8 * s, empty0 + 8 * s, i / ST, base + s * SB, delay, acc);
            }
        if (acc == 0x12345678u) sink[0] = acc;
    }
}

/* Every 16-byte chunk of the buffer once, in address order (grid-stride). */
__global__ void ldg_kernel(const uint4 *p, size_t n, unsigned *sink)
{
    unsigned acc = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const uint4 v = __ldg(p + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x12345678u) sink[0] = acc;
}

static void encode(CUtensorMap *map, void *W, const cuuint64_t dims[3], int box_rows)
{
    void *fn = NULL;
    cudaDriverEntryPointQueryResult found;
    CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || !fn) {
        fprintf(stderr, "bench_stream: the driver has no cuTensorMapEncodeTiled\n");
        exit(2);
    }
    const cuuint64_t strides[2] = {dims[0] * 2, dims[0] * dims[1] * 2};
    const cuuint32_t box[3] = {BK, (cuuint32_t)box_rows, 1}, estr[3] = {1, 1, 1};
    const CUresult r = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn)(
        map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, W, dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "bench_stream: cuTensorMapEncodeTiled failed (%d)\n", (int)r);
        exit(2);
    }
}

struct shape {
    int64_t E, N, K;
};

/* Fastest of reps launches of f, by CUDA events on the default stream. */
template <typename F>
static float best_ms(int reps, F f)
{
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    float best = 1e30f;
    for (int r = 0; r < reps; r++) {
        CK(cudaEventRecord(a));
        f();
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        CK(cudaGetLastError());
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, a, b));
        if (ms < best) best = ms;
    }
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    return best;
}

template <int BN, int ST, int KPS>
static float run_tma(void *W, const shape &sh, int pattern, long long delay, int sms, int reps, unsigned *sink)
{
    const int nbx = (int)(sh.N / BN), ktiles = (int)(sh.K / BK), items = (int)sh.E * nbx;
    CUtensorMap map;
    if (pattern == PACKED) {
        const cuuint64_t dims[3] = {BK, BN, (cuuint64_t)items * ktiles};
        encode(&map, W, dims, BN);
    } else {
        const cuuint64_t dims[3] = {(cuuint64_t)sh.K, (cuuint64_t)sh.N, (cuuint64_t)sh.E};
        encode(&map, W, dims, BN);
    }
    const int smem = ST * KPS * BN * BK * 2 + 16 * ST + 1024;
    CK(cudaFuncSetAttribute(stream_kernel<BN, ST, KPS>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    return best_ms(reps, [&] {
        stream_kernel<BN, ST, KPS><<<sms, 64, smem>>>(map, pattern, items, nbx, ktiles, delay, sink);
    });
}

/* rows+A: X [XT][K] with every element 1, xrows[e][r] random token rows (fixed seed) */
template <int BN, int ST>
static float run_tma_a(void *W, const shape &sh, const bf16 *X, const int *xrows, int R, long long delay, int sms,
                       int reps, unsigned *sink)
{
    const int nbx = (int)(sh.N / BN), ktiles = (int)(sh.K / BK), items = (int)sh.E * nbx;
    CUtensorMap map;
    const cuuint64_t dims[3] = {(cuuint64_t)sh.K, (cuuint64_t)sh.N, (cuuint64_t)sh.E};
    encode(&map, W, dims, BN);
    const int smem = ST * (128 + BN) * BK * 2 + 16 * ST + 1024;
    CK(cudaFuncSetAttribute(stream_a_kernel<BN, ST>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    return best_ms(reps, [&] {
        stream_a_kernel<BN, ST><<<sms, 160, smem>>>(map, X, xrows, R, (int)sh.K, items, nbx, ktiles, delay, sink);
    });
}

static void report(const char *what, const shape &sh, float ms)
{
    const double bytes = (double)sh.E * sh.N * sh.K * 2;
    printf("STREAM E=%lld N=%lld K=%lld %-34s %.3f ms = %.2f TB/s\n", (long long)sh.E, (long long)sh.N,
           (long long)sh.K, what, ms, bytes / (ms * 1e-3) / 1e12);
}

int main(int argc, char **argv)
{
    shape sh = {512, 1024, 2048};
    int reps = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--E")) sh.E = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--N")) sh.N = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--K")) sh.K = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "bench_stream: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (sh.N % 256 || sh.K % 128 || sh.E < 1) {
        fprintf(stderr, "bench_stream: N must be a multiple of 256 and K of 128\n");
        return 2;
    }
    int dev = 0, sms = 0;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    const size_t bytes = (size_t)sh.E * sh.N * sh.K * 2;
    void *W = NULL;
    unsigned *sink = NULL;
    CK(cudaMalloc(&W, bytes));
    CK(cudaMalloc(&sink, 4));
    CK(cudaMemset(W, 1, bytes));
    const float best = best_ms(reps, [&] { ldg_kernel<<<sms * 8, 256>>>((const uint4 *)W, bytes / 16, sink); });
    report("ldg (address order)", sh, best);
    /* ~0.8 us of tensor-core time per 128 x 256 x 64 stage at 1.7 GHz is ~1400 cycles */
    const long long delays[2] = {0, 1400};
    for (int d = 0; d < 2; d++) {
        char what[64];
        const long long dl = delays[d];
        snprintf(what, sizeof what, "rows BN256 st4 delay %lld", dl);
        report(what, sh, run_tma<256, 4, 1>(W, sh, ROWS, dl, sms, reps, sink));
        snprintf(what, sizeof what, "rows BN256 st6 delay %lld", dl);
        report(what, sh, run_tma<256, 6, 1>(W, sh, ROWS, dl, sms, reps, sink));
        snprintf(what, sizeof what, "rows2 BN256 st3 delay %lld", dl);
        report(what, sh, run_tma<256, 3, 2>(W, sh, ROWS2, 2 * dl, sms, reps, sink));
        snprintf(what, sizeof what, "packed BN256 st4 delay %lld", dl);
        report(what, sh, run_tma<256, 4, 1>(W, sh, PACKED, dl, sms, reps, sink));
        snprintf(what, sizeof what, "packed BN256 st6 delay %lld", dl);
        report(what, sh, run_tma<256, 6, 1>(W, sh, PACKED, dl, sms, reps, sink));
        snprintf(what, sizeof what, "rows BN128 st8 delay %lld", dl);
        report(what, sh, run_tma<128, 8, 1>(W, sh, ROWS, dl / 2, sms, reps, sink));
        snprintf(what, sizeof what, "packed BN128 st8 delay %lld", dl);
        report(what, sh, run_tma<128, 8, 1>(W, sh, PACKED, dl / 2, sms, reps, sink));
    }
    /* rows+A: the gathered A operand beside the weight stream */
    const int XT = 4096, RMAX = 80;
    bf16 *X = NULL;
    int *xrows = NULL;
    CK(cudaMalloc(&X, (size_t)XT * sh.K * 2));
    CK(cudaMemset(X, 1, (size_t)XT * sh.K * 2));
    CK(cudaMalloc(&xrows, sizeof(int) * sh.E * RMAX));
    {
        int *h = (int *)malloc(sizeof(int) * sh.E * RMAX);
        uint64_t st = 12345;
        for (int64_t j = 0; j < sh.E * RMAX; j++) {
            st = st * 6364136223846793005ull + 1442695040888963407ull;
            h[j] = (int)((st >> 33) % XT);
        }
        CK(cudaMemcpy(xrows, h, sizeof(int) * sh.E * RMAX, cudaMemcpyHostToDevice));
        free(h);
    }
    for (int d = 0; d < 2; d++)
        for (int R = 0; R <= RMAX; R += RMAX) {
            char what[64];
            snprintf(what, sizeof what, "rows+A%d BN256 st4 delay %lld", R, delays[d]);
            report(what, sh, run_tma_a<256, 4>(W, sh, X, xrows, R, delays[d], sms, reps, sink));
        }
    CK(cudaFree(X));
    CK(cudaFree(xrows));
    CK(cudaFree(W));
    CK(cudaFree(sink));
    return 0;
}
