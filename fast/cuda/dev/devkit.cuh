/* devkit.cuh — what every fast/cuda/dev test program shares (llm.c's dev/cuda pattern): seeded
 * inputs, device buffers poisoned with NaN and followed by a sentinel guard, upload/download in
 * float32 or bfloat16, and one comparison line per case through harness/compare.c (non-finite
 * mismatches, relative L2, the worst element, determinism, the guard). Header-only; each program
 * gets its own copy of the globals below (test programs, not the library). */
#ifndef Q3N_CUDA_DEVKIT_CUH
#define Q3N_CUDA_DEVKIT_CUH

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <vector>

#include "../cuda_ops.h"

extern "C" {
#include "../../../harness/compare.h"
#include "../../../harness/rng.h"
#include "../../../ref/ops.h"
}

#define REPEAT 3
#define GUARD 64
inline int g_fail = 0, g_cases = 0; /* cases failed / run */
inline cudaStream_t g_stream;
inline cublasHandle_t g_blas;

#define CK(call)                                                                                             \
    do {                                                                                                     \
        cudaError_t e_ = (call);                                                                             \
        if (e_ != cudaSuccess) {                                                                             \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));           \
            exit(2);                                                                                         \
        }                                                                                                    \
    } while (0)
inline struct q3n_error g_err; /* launchers report here; RUN prints it */
#define RUN(call)                                                                                            \
    do {                                                                                                     \
        if ((call) != Q3N_OK) {                                                                              \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, g_err.msg);                                   \
            exit(2);                                                                                         \
        }                                                                                                    \
    } while (0)

inline struct q3n_rng g_rng;
static inline std::vector<float> randn(int64_t n, double std)
{
    std::vector<float> v((size_t)n);
    for (auto &x : v) x = (float)(q3n_rng_normal(&g_rng) * std);
    return v;
}
static inline std::vector<float> randu(int64_t n, double lo, double hi)
{
    std::vector<float> v((size_t)n);
    for (auto &x : v) x = (float)q3n_rng_range(&g_rng, lo, hi);
    return v;
}
static inline float bf16_round(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}
static inline std::vector<float> rounded(std::vector<float> v)
{
    for (auto &x : v) x = bf16_round(x);
    return v;
}

/* Device buffer with NaN poison and a guard of GUARD sentinel bytes after it. */
struct dbuf {
    void *p = nullptr;
    size_t bytes = 0;
};
static inline dbuf dnew(size_t bytes)
{
    dbuf b;
    b.bytes = bytes;
    CK(cudaMalloc(&b.p, bytes + GUARD));
    CK(cudaMemset(b.p, 0xff, bytes)); /* 0xffffffff is a NaN in float32 and bfloat16 */
    CK(cudaMemset((char *)b.p + bytes, 0x5a, GUARD));
    return b;
}
static inline int guard_ok(const dbuf &b)
{
    unsigned char g[GUARD];
    CK(cudaMemcpy(g, (char *)b.p + b.bytes, GUARD, cudaMemcpyDeviceToHost));
    for (int i = 0; i < GUARD; i++)
        if (g[i] != 0x5a) return 0;
    return 1;
}
/* Synchronised: cudaMemset runs on the legacy default stream, which does not order itself with a
 * cudaStreamNonBlocking stream (test_moe2's); without the wait a large poison could land after the
 * kernel under test had written the buffer (seen: a 67 MB output read back as all NaN). */
static inline void poison(const dbuf &b)
{
    CK(cudaMemset(b.p, 0xff, b.bytes));
    CK(cudaDeviceSynchronize());
}
static inline void dfree(dbuf &b) { CK(cudaFree(b.p)); }

/* Upload as f32 or bf16 */
static inline dbuf up(const std::vector<float> &v, int bf)
{
    dbuf b = dnew(v.size() * (bf ? 2 : 4));
    if (!bf) {
        CK(cudaMemcpy(b.p, v.data(), b.bytes, cudaMemcpyHostToDevice));
    } else {
        std::vector<uint16_t> h(v.size());
        for (size_t i = 0; i < v.size(); i++) {
            float r = bf16_round(v[i]);
            uint32_t u;
            memcpy(&u, &r, 4);
            h[i] = (uint16_t)(u >> 16);
        }
        CK(cudaMemcpy(b.p, h.data(), b.bytes, cudaMemcpyHostToDevice));
    }
    return b;
}
static inline std::vector<float> down(const dbuf &b, int64_t n, int bf)
{
    std::vector<float> v((size_t)n);
    if (!bf) {
        CK(cudaMemcpy(v.data(), b.p, 4 * (size_t)n, cudaMemcpyDeviceToHost));
    } else {
        std::vector<uint16_t> h((size_t)n);
        CK(cudaMemcpy(h.data(), b.p, 2 * (size_t)n, cudaMemcpyDeviceToHost));
        for (int64_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)h[i] << 16;
            memcpy(&v[i], &u, 4);
        }
    }
    return v;
}

/* Compares got against want; prints one line; returns 1 on pass. */
static inline int check(const char *what, const std::vector<float> &got, const std::vector<float> &want,
                        double max_rel_l2, int deterministic, const dbuf *guard)
{
    g_cases++;
    std::vector<double> a(got.begin(), got.end()), b(want.begin(), want.end());
    struct q3n_tolerance tol;
    memset(&tol, 0, sizeof tol);
    tol.rtol = 0;
    tol.atol = 0;
    tol.small = 1e-30;
    tol.rel_l2 = max_rel_l2;
    struct q3n_metrics m;
    q3n_compare_f64(&m, a.data(), b.data(), (int64_t)a.size(), &tol, Q3N_ULP_F32);
    const int gok = guard ? guard_ok(*guard) : 1;
    const int pass = m.nonfinite_bad == 0 && m.nan_a == 0 && m.inf_a == 0 && m.rel_l2 <= max_rel_l2 &&
                     deterministic && gok && got.size() == want.size();
    printf("%-62s rel_l2=%.2e max_abs=%.2e at %lld (got %.6g want %.6g) ulp_max=%.0f nonfinite=%lld det=%s guard=%s "
           "tol=%.0e %s\n",
           what, m.rel_l2, m.max_abs, (long long)m.max_abs_index, m.a_at_max, m.b_at_max, m.ulp_max,
           (long long)(m.nan_a + m.inf_a), deterministic ? "yes" : "NO", gok ? "ok" : "BROKEN", max_rel_l2,
           pass ? "OK" : "FAIL");
    if (!pass) g_fail++;
    return pass;
}

static inline int same_bits(const std::vector<float> &a, const std::vector<float> &b)
{
    return a.size() == b.size() && memcmp(a.data(), b.data(), 4 * a.size()) == 0;
}

/* p[i] = amp * u, u in [-1, 1) from a splitmix64 hash of (seed, i), as bf16: large device-side
 * operands for timings at the real dims, the same on every run. */
__global__ void fill_bf16_hashed(__nv_bfloat16 *p, int64_t n, float amp, uint64_t seed)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        uint64_t z = seed + 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        p[i] = __float2bfloat16_rn(amp * ((float)(z >> 40) * (1.0f / 8388608.0f) - 1.0f));
    }
}

/* CUDA-event times of f (which enqueues on g_stream), each launch timed alone after `warmups`
 * untimed ones: the best and the median (the upper middle one) of reps. */
struct event_times {
    double best_ms, median_ms;
};
template <typename F> static inline event_times time_events(F f, int reps, int warmups)
{
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < warmups; i++) f();
    std::vector<float> t;
    for (int r = 0; r < reps; r++) {
        CK(cudaEventRecord(a, g_stream));
        f();
        CK(cudaEventRecord(b, g_stream));
        CK(cudaEventSynchronize(b));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms);
    }
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    std::sort(t.begin(), t.end());
    return {t.front(), t[t.size() / 2]};
}

static inline const char *dtn(int bf) { return bf ? "bf16" : "f32"; }
static inline enum q3n_compute_dtype DT(int bf) { return bf ? Q3N_COMPUTE_BF16 : Q3N_COMPUTE_F32; }

#endif
