/* deltanet_tc.cuh — what the two phases of the tensor-core chunked delta rule share (internal to
 * fast/cuda): the chunk and head sizes, the scratch layout the prep (deltanet_tc.cu) writes and
 * the scans read, and the launcher of scan v3 (deltanet_tc_scan3.cu). */
#ifndef Q3N_CUDA_DELTANET_TC_CUH
#define Q3N_CUDA_DELTANET_TC_CUH

#include "common.cuh"

#define TC_C 64  /* chunk length */
#define TC_D 128 /* DK = DV */

/* Byte offsets of the scratch arrays. Per (chunk, value head): W bf16 [C,D], Aqk bf16 [C,C],
 * U float [C,D], G float [C] (the cumulative log decay inside the chunk). Per (chunk, key head):
 * q, k bf16 [C,D]. Rows of a chunk past T are zero (G: flat). */
struct tc_layout {
    size_t w, a, u, g, q, k, flags, end;
};

static inline tc_layout tc_layout_of(int64_t nc, int64_t NK, int64_t NV)
{
    tc_layout l;
    const size_t rv = (size_t)nc * NV, rk = (size_t)nc * NK;
    l.w = 0;
    l.a = l.w + rv * TC_C * TC_D * 2;
    l.u = l.a + rv * TC_C * TC_C * 2;
    l.g = l.u + rv * TC_C * TC_D * 4;
    l.q = l.g + rv * TC_C * 4;
    l.k = l.q + rk * TC_C * TC_D * 2;
    l.flags = l.k + rk * TC_C * TC_D * 2; /* int32 [nc][NK]: (chunk, key head) prepped (pipelined runs) */
    l.end = l.flags + rk * 4;
    return l;
}

/* Pipelined runs (cuda_delta_rule_chunked_tc_bf16_piped): the prep sets flags[n NK + kh] = 1 (a
 * release at gpu scope, after every thread's stores and a fence) once block (n, kh) has written
 * chunk n of key head kh; the scan's thread 0 waits for the flag (acquire) before the block's
 * barrier and its copies of that chunk. */
__device__ __forceinline__ void tc_flag_release(int *p)
{
    asm volatile("st.release.gpu.global.s32 [%0], %1;\n" ::"l"(p), "r"(1) : "memory");
}
__device__ __forceinline__ void tc_flag_wait(const int *p)
{
    int v;
    for (;;) {
        asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
        if (v) return;
        __nanosleep(200);
    }
}

/* Scan v3 (wgmma, one warpgroup per 64 value columns of a head): needs compute capability 9.0
 * and its opt-in shared memory (tc_scan3_smem bytes a block). extra_smem: shared memory a block
 * takes beyond that and leaves unused, so that no prep block fits on its SM (pipelined runs). */
int tc_scan3_ok(void);
int tc_scan3_smem(void);
enum q3n_status tc_scan3_launch(bf16 *o, float *state, const char *scr, const tc_layout &lay, int T, int NK, int NV,
                                int nc, const int *flags, int extra_smem, cudaStream_t stream, struct q3n_error *err);

#endif
