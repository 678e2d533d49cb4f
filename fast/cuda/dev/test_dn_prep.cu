/* test_dn_prep.cu — the fused prefill passes of the Gated DeltaNet mixer (deltanet_prep.cu and
 * cuda_delta_rule_chunked_tc_bf16) bitwise against the chain of launches linear_attn_block runs
 * with taps on, then both chains timed in the same process.
 *
 * Old chain: split -> conv1d + SiLU -> conv state update -> l2norm q (x DK^-0.5) -> l2norm k ->
 *            v to float32 -> gates -> cuda_delta_rule_chunked (float32 q/k/v) -> gated RMSNorm (z).
 * New chain: cuda_deltanet_prep_forward (q/k/v bf16 when the tensor-core delta rule takes them,
 *            else float32) -> cuda_delta_rule_chunked_tc_bf16 or cuda_delta_rule_chunked ->
 *            cuda_deltanet_gated_norm_forward (z read in place from the in_proj_qkvz output).
 * Each case (random in_proj outputs, conv weights, gates' parameters, conv state random or zero,
 * delta-rule state random): q, k (old float32 rounded to bf16 when the new ones are bf16), v (the
 * old float32 values themselves: they must be bf16-exact), g, beta, conv state, delta-rule output
 * and state, and the gated norm's output (the mixer output before out_proj) must be bitwise
 * equal; the new chain runs 3 times with each version of the prep and the gated norm (v1, v2) on
 * NaN-poisoned outputs (bitwise the same each time, guards after every new output intact). Dims
 * the delta rule cannot take (DK or DV not a multiple of 4) check the gated norm on a random core
 * instead.
 *
 *   test_dn_prep            all cases (real dims up to T=16384), then timings (median of 10)
 *   test_dn_prep --quick    cases up to T=4096, no timings (make check-cuda)
 *   test_dn_prep --bench    timings only
 * Exit status 0 when every case passes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "devkit.cuh"

#define CHUNK 64
#define EPS_L2 1e-6
#define EPS_RMS 1e-6

/* p[i] = a value in [lo, hi) from a hash of (seed, i), rounded to the activation dtype when bf. */
__global__ void fill_kernel(void *p, int64_t n, int bf, uint64_t seed, float lo, float hi)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        uint64_t x = (uint64_t)i * 0x9e3779b97f4a7c15ull + seed;
        x ^= x >> 30, x *= 0xbf58476d1ce4e5b9ull, x ^= x >> 27, x *= 0x94d049bb133111ebull, x ^= x >> 31;
        const float u = lo + (hi - lo) * (float)((x >> 40) * (1.0 / 16777216.0));
        if (bf)
            ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(u);
        else
            ((float *)p)[i] = u;
    }
}
static uint64_t g_seed = 1;
static void fill(const dbuf &b, int64_t n, int bf, float lo, float hi)
{
    fill_kernel<<<1024, 256, 0, g_stream>>>(b.p, n, bf, (g_seed++) * 0x2545f4914f6cdd1dull, lo, hi);
    CK(cudaGetLastError());
}
static void copy(const dbuf &dst, const dbuf &src) { CK(cudaMemcpyAsync(dst.p, src.p, src.bytes, cudaMemcpyDeviceToDevice, g_stream)); }

struct shape {
    int64_t NK, NV, DK, DV, K;
};

struct bufs {
    shape s;
    int64_t T;
    int bf, qbf, delta; /* bf16 mode; new q/k/v in bf16; run the delta rule */
    /* inputs */
    dbuf qkvz, ba, cw, A_log, dt_bias, gw, cst0, rst0, core_in;
    /* old chain */
    dbuf mixed, z, b, a, conv, qf, kf, vf, g, beta, cst, rst, core, gn, drs;
    /* new chain */
    dbuf q2, k2, v2, g2, beta2, cst2, rst2, core2, gn2, drs2;
};

static int64_t Qdim(const shape &s) { return s.NK * (2 * s.DK + 2 * (s.NV / s.NK) * s.DV); }
static int64_t Ccdim(const shape &s) { return 2 * s.NK * s.DK + s.NV * s.DV; }

static bufs make(const shape &s, int64_t T, int bf, int init)
{
    bufs B;
    B.s = s, B.T = T, B.bf = bf;
    B.delta = s.DK % 4 == 0 && s.DV % 4 == 0;
    B.qbf = bf && B.delta && cuda_delta_rule_chunked_tc_supported(s.DK, s.DV, CHUNK);
    const size_t as = bf ? 2 : 4, qs = B.qbf ? 2 : 4;
    const int64_t Q = Qdim(s), Cc = Ccdim(s), NK = s.NK, NV = s.NV, DK = s.DK, DV = s.DV;
    const size_t drs = (size_t)cuda_delta_rule_chunked_scratch(T, NV, DK, DV, CHUNK) * 4;
    B.qkvz = dnew(T * Q * as), B.ba = dnew(T * 2 * NV * as), B.cw = dnew(Cc * s.K * 4), B.A_log = dnew(NV * 4);
    B.dt_bias = dnew(NV * 4), B.gw = dnew(DV * 4), B.cst0 = dnew(Cc * s.K * 4), B.rst0 = dnew(NV * DK * DV * 4);
    B.core_in = dnew(T * NV * DV * as);
    fill(B.qkvz, T * Q, bf, -2.5f, 2.5f);
    fill(B.ba, T * 2 * NV, bf, -4.0f, 4.0f);
    fill(B.cw, Cc * s.K, 0, -0.7f, 0.7f);
    fill(B.A_log, NV, 0, -2.0f, 1.5f);
    fill(B.dt_bias, NV, 0, -1.0f, 1.0f);
    fill(B.gw, DV, 0, 0.5f, 1.5f);
    if (init)
        fill(B.cst0, Cc * s.K, 0, -2.5f, 2.5f);
    else
        CK(cudaMemset(B.cst0.p, 0, B.cst0.bytes));
    fill(B.rst0, NV * DK * DV, 0, -0.5f, 0.5f);
    fill(B.core_in, T * NV * DV, bf, -3.0f, 3.0f);
    B.mixed = dnew(T * Cc * as), B.z = dnew(T * NV * DV * as), B.b = dnew(T * NV * 4), B.a = dnew(T * NV * 4);
    B.conv = dnew(T * Cc * as), B.qf = dnew(T * NK * DK * 4), B.kf = dnew(T * NK * DK * 4);
    B.vf = dnew(T * NV * DV * 4), B.g = dnew(T * NV * 4), B.beta = dnew(T * NV * 4), B.cst = dnew(Cc * s.K * 4);
    B.rst = dnew(NV * DK * DV * 4), B.core = dnew(T * NV * DV * as), B.gn = dnew(T * NV * DV * as), B.drs = dnew(drs);
    B.q2 = dnew(T * NK * DK * qs), B.k2 = dnew(T * NK * DK * qs), B.v2 = dnew(T * NV * DV * qs);
    B.g2 = dnew(T * NV * 4), B.beta2 = dnew(T * NV * 4), B.cst2 = dnew(Cc * s.K * 4), B.rst2 = dnew(NV * DK * DV * 4);
    B.core2 = dnew(T * NV * DV * as), B.gn2 = dnew(T * NV * DV * as), B.drs2 = dnew(drs);
    if (!B.delta) { /* no delta rule: the gated norms read the same random core */
        copy(B.core, B.core_in);
        copy(B.core2, B.core_in);
    }
    CK(cudaStreamSynchronize(g_stream));
    return B;
}
static void release(bufs &B)
{
    dbuf *all[] = {&B.qkvz, &B.ba, &B.cw, &B.A_log, &B.dt_bias, &B.gw, &B.cst0, &B.rst0, &B.core_in, &B.mixed,
                   &B.z, &B.b, &B.a, &B.conv, &B.qf, &B.kf, &B.vf, &B.g, &B.beta, &B.cst, &B.rst, &B.core,
                   &B.gn, &B.drs, &B.q2, &B.k2, &B.v2, &B.g2, &B.beta2, &B.cst2, &B.rst2, &B.core2, &B.gn2,
                   &B.drs2};
    for (dbuf *d : all) dfree(*d);
}

/* The old chain exactly as linear_attn_block runs it with taps on (T > 1, chunked); ev: 4 events
 * (start, after the prep launches, after the delta rule, after the gated norm) or NULL. */
static void run_old(bufs &B, cudaEvent_t *ev)
{
    const shape &s = B.s;
    const int64_t T = B.T, Cc = Ccdim(s), NK = s.NK, NV = s.NV, DK = s.DK, DV = s.DV;
    const enum q3n_compute_dtype dt = DT(B.bf);
    const size_t as = B.bf ? 2 : 4;
    const float qscale = (float)pow((double)DK, -0.5);
    if (ev) CK(cudaEventRecord(ev[0], g_stream));
    RUN(cuda_deltanet_split_forward(B.mixed.p, B.z.p, (float *)B.b.p, (float *)B.a.p, B.qkvz.p, B.ba.p, T, NK, NV, DK,
                                    DV, dt, g_stream, &g_err));
    RUN(cuda_conv1d_causal_forward(B.conv.p, B.mixed.p, (float *)B.cw.p, (float *)B.cst.p, T, Cc, s.K, dt, g_stream,
                                   &g_err));
    RUN(cuda_conv1d_state_update((float *)B.cst.p, B.mixed.p, T, Cc, s.K, dt, g_stream, &g_err));
    RUN(cuda_l2norm_forward((float *)B.qf.p, B.conv.p, T, NK, DK, Cc, EPS_L2, qscale, 0, dt, g_stream, &g_err));
    RUN(cuda_l2norm_forward((float *)B.kf.p, (char *)B.conv.p + as * NK * DK, T, NK, DK, Cc, EPS_L2, 1.0f, 0, dt,
                            g_stream, &g_err));
    RUN(cuda_to_f32((float *)B.vf.p, (char *)B.conv.p + as * 2 * NK * DK, T, NV * DV, Cc, dt, g_stream, &g_err));
    RUN(cuda_deltanet_gates_forward((float *)B.g.p, (float *)B.beta.p, (float *)B.a.p, (float *)B.b.p,
                                    (float *)B.A_log.p, (float *)B.dt_bias.p, T, NV, dt, g_stream, &g_err));
    if (ev) CK(cudaEventRecord(ev[1], g_stream));
    if (B.delta)
        RUN(cuda_delta_rule_chunked(B.core.p, (float *)B.rst.p, (float *)B.qf.p, (float *)B.kf.p, (float *)B.vf.p,
                                    (float *)B.g.p, (float *)B.beta.p, (float *)B.drs.p, T, NK, NV, DK, DV, CHUNK, dt,
                                    g_stream, &g_err));
    if (ev) CK(cudaEventRecord(ev[2], g_stream));
    RUN(cuda_rmsnorm_gated_forward(B.gn.p, B.core.p, B.z.p, (float *)B.gw.p, T * NV, DV, EPS_RMS, dt, g_stream,
                                   &g_err));
    if (ev) CK(cudaEventRecord(ev[3], g_stream));
}

/* The new chain as linear_attn_block runs it with taps off; ver picks the prep's and the gated
 * norm's kernel versions (0: the defaults). */
static void run_new(bufs &B, cudaEvent_t *ev, int ver)
{
    const shape &s = B.s;
    const int64_t T = B.T, NK = s.NK, NV = s.NV, DK = s.DK, DV = s.DV;
    const enum q3n_compute_dtype dt = DT(B.bf);
    const float qscale = (float)pow((double)DK, -0.5);
    if (ev) CK(cudaEventRecord(ev[0], g_stream));
    RUN(cuda_deltanet_prep_forward_ver(B.q2.p, B.k2.p, B.v2.p, (float *)B.g2.p, (float *)B.beta2.p,
                                       (float *)B.cst2.p, B.qkvz.p, B.ba.p, (float *)B.cw.p, (float *)B.A_log.p,
                                       (float *)B.dt_bias.p, T, NK, NV, DK, DV, s.K, EPS_L2, qscale, 0, B.qbf, ver, dt,
                                       g_stream, &g_err));
    if (ev) CK(cudaEventRecord(ev[1], g_stream));
    if (B.delta && B.qbf)
        RUN(cuda_delta_rule_chunked_tc_bf16(B.core2.p, (float *)B.rst2.p, B.q2.p, B.k2.p, B.v2.p, (float *)B.g2.p,
                                            (float *)B.beta2.p, (float *)B.drs2.p, T, NK, NV, DK, DV, CHUNK, 0,
                                            g_stream, &g_err));
    else if (B.delta)
        RUN(cuda_delta_rule_chunked(B.core2.p, (float *)B.rst2.p, (float *)B.q2.p, (float *)B.k2.p, (float *)B.v2.p,
                                    (float *)B.g2.p, (float *)B.beta2.p, (float *)B.drs2.p, T, NK, NV, DK, DV, CHUNK,
                                    dt, g_stream, &g_err));
    if (ev) CK(cudaEventRecord(ev[2], g_stream));
    RUN(cuda_deltanet_gated_norm_forward_ver(B.gn2.p, B.core2.p, B.qkvz.p, (float *)B.gw.p, T, NK, NV, DK, DV,
                                             EPS_RMS, ver, dt, g_stream, &g_err));
    if (ev) CK(cudaEventRecord(ev[3], g_stream));
}

/* Bitwise comparison of n floats; on a mismatch prints the first few and returns 0. */
static int bits_equal(const char *what, const std::vector<float> &got, const std::vector<float> &want, char *why,
                      size_t whyn)
{
    if (got.size() != want.size()) {
        snprintf(why, whyn, "%s: size %zu vs %zu", what, got.size(), want.size());
        return 0;
    }
    int64_t bad = 0, first = -1, nonfinite = 0;
    for (size_t i = 0; i < got.size(); i++) {
        if (!isfinite(got[i])) nonfinite++;
        if (memcmp(&got[i], &want[i], 4) != 0) {
            if (first < 0) first = (int64_t)i;
            bad++;
        }
    }
    if (bad == 0 && nonfinite == 0) return 1;
    if (bad)
        snprintf(why, whyn, "%s: %lld of %zu differ, first at %lld (got %.9g want %.9g), nonfinite %lld", what,
                 (long long)bad, got.size(), (long long)first, got[first], want[first], (long long)nonfinite);
    else
        snprintf(why, whyn, "%s: %lld nonfinite (in both)", what, (long long)nonfinite);
    return 0;
}

struct outs {
    std::vector<float> q, k, v, g, beta, cst, core, rst, gn;
};
static outs fetch_new(const bufs &B)
{
    const shape &s = B.s;
    const int64_t T = B.T, Cc = Ccdim(s);
    outs o;
    o.q = down(B.q2, T * s.NK * s.DK, B.qbf), o.k = down(B.k2, T * s.NK * s.DK, B.qbf);
    o.v = down(B.v2, T * s.NV * s.DV, B.qbf), o.g = down(B.g2, T * s.NV, 0), o.beta = down(B.beta2, T * s.NV, 0);
    o.cst = down(B.cst2, Cc * s.K, 0), o.gn = down(B.gn2, T * s.NV * s.DV, B.bf);
    if (B.delta) o.core = down(B.core2, T * s.NV * s.DV, B.bf), o.rst = down(B.rst2, s.NV * s.DK * s.DV, 0);
    return o;
}
static int same_outs(const outs &a, const outs &b)
{
    return same_bits(a.q, b.q) && same_bits(a.k, b.k) && same_bits(a.v, b.v) && same_bits(a.g, b.g) &&
           same_bits(a.beta, b.beta) && same_bits(a.cst, b.cst) && same_bits(a.core, b.core) &&
           same_bits(a.rst, b.rst) && same_bits(a.gn, b.gn);
}

static void run_case(const shape &s, int64_t T, int bf, int init)
{
    g_cases++;
    bufs B = make(s, T, bf, init);
    const int64_t Cc = Ccdim(s);
    /* old chain */
    copy(B.cst, B.cst0);
    copy(B.rst, B.rst0);
    run_old(B, NULL);
    CK(cudaStreamSynchronize(g_stream));
    outs want;
    want.q = down(B.qf, T * s.NK * s.DK, 0), want.k = down(B.kf, T * s.NK * s.DK, 0);
    want.v = down(B.vf, T * s.NV * s.DV, 0), want.g = down(B.g, T * s.NV, 0), want.beta = down(B.beta, T * s.NV, 0);
    want.cst = down(B.cst, Cc * s.K, 0), want.gn = down(B.gn, T * s.NV * s.DV, bf);
    if (B.delta) want.core = down(B.core, T * s.NV * s.DV, bf), want.rst = down(B.rst, s.NV * s.DK * s.DV, 0);
    if (B.qbf) { /* what the tc delta rule stages from float32 q, k (v: already bf16-exact) */
        want.q = rounded(want.q);
        want.k = rounded(want.k);
    }
    /* new chain, 3 times on poisoned outputs with each version of the prep and the gated norm (v1:
     * a token / row per warp at a time, v2: two): all six runs bitwise the same */
    outs got;
    int det = 1, guards = 1;
    for (int rep = 0; rep < 2 * REPEAT; rep++) {
        dbuf *po[] = {&B.q2, &B.k2, &B.v2, &B.g2, &B.beta2, &B.gn2, &B.drs2};
        for (dbuf *d : po) poison(*d);
        if (B.delta) poison(B.core2);
        copy(B.cst2, B.cst0);
        copy(B.rst2, B.rst0);
        run_new(B, NULL, 1 + rep / REPEAT);
        CK(cudaStreamSynchronize(g_stream));
        outs o = fetch_new(B);
        if (rep == 0)
            got = o;
        else
            det &= same_outs(got, o);
        const dbuf *gd[] = {&B.q2, &B.k2, &B.v2, &B.g2, &B.beta2, &B.cst2, &B.rst2, &B.core2, &B.gn2};
        for (const dbuf *d : gd) guards &= guard_ok(*d);
    }
    char why[512] = "";
    int ok = det && guards;
    const char *names[] = {"q", "k", "v", "g", "beta", "conv_state", "core_out", "final_state", "norm.out"};
    const std::vector<float> *gv[] = {&got.q, &got.k, &got.v, &got.g, &got.beta, &got.cst, &got.core, &got.rst, &got.gn};
    const std::vector<float> *wv[] = {&want.q, &want.k, &want.v, &want.g, &want.beta, &want.cst, &want.core, &want.rst, &want.gn};
    for (int i = 0; i < 9 && ok; i++) ok &= bits_equal(names[i], *gv[i], *wv[i], why, sizeof why);
    if (!det) snprintf(why, sizeof why, "the new chain's runs (v1 and v2, 3 each) differ");
    if (!guards) snprintf(why, sizeof why, "a guard after a new output was overwritten");
    printf("dn_prep NK=%lld NV=%lld DK=%lld DV=%lld K=%lld T=%-5lld %-4s state=%s q/k/v=%s delta=%s: q k v g beta "
           "conv_state%s norm.out (z in place) bitwise, v1 and v2 x 3 runs, guards: %s%s%s\n",
           (long long)s.NK, (long long)s.NV, (long long)s.DK, (long long)s.DV, (long long)s.K, (long long)T, dtn(bf),
           init ? "rand" : "zero", B.qbf ? "bf16" : "f32",
           !B.delta ? "skipped" : B.qbf ? "tc_bf16" : cuda_delta_rule_chunked_kernel_for(s.DK, s.DV, CHUNK, DT(bf)),
           B.delta ? " core_out final_state" : "", ok ? "OK" : "FAIL", ok ? "" : ": ", why);
    if (!ok) g_fail++;
    release(B);
}

static float median(std::vector<float> v)
{
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5f * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

/* Old vs new chain, CUDA events, median of 10 after 2 warm-ups; one line. */
static void bench(const shape &s, int64_t T, int bf)
{
    bufs B = make(s, T, bf, 1);
    cudaEvent_t ev[4];
    for (auto &e : ev) CK(cudaEventCreate(&e));
    float med[2][4];
    for (int which = 0; which < 2; which++) {
        std::vector<float> part[4];
        for (int r = 0; r < 12; r++) {
            if (which == 0) run_old(B, ev);
            else run_new(B, ev, 0);
            CK(cudaEventSynchronize(ev[3]));
            if (r < 2) continue;
            for (int i = 0; i < 3; i++) {
                float ms;
                CK(cudaEventElapsedTime(&ms, ev[i], ev[i + 1]));
                part[i].push_back(ms);
            }
            float ms;
            CK(cudaEventElapsedTime(&ms, ev[0], ev[3]));
            part[3].push_back(ms);
        }
        for (int i = 0; i < 4; i++) med[which][i] = median(part[i]);
    }
    /* bytes the new prep must move: the q/k/v columns of in_proj_qkvz and in_proj_ba read, q, k, v, g, beta written */
    const double as = bf ? 2 : 4, qs = B.qbf ? 2 : 4, cc = (double)Ccdim(s);
    const double mb = ((double)T * (cc + 2.0 * s.NV) * as + (double)T * cc * qs + 2.0 * T * s.NV * 4) / 1e6;
    printf("TIME dn_prep NK=%lld NV=%lld DK=%lld DV=%lld T=%-5lld %-4s old: prep %.3f delta %.3f norm %.3f total %.3f ms"
           " | new: prep %.3f (%.0f MB, %.2f TB/s) delta %.3f norm %.3f total %.3f ms | prep x%.2f, total -%.3f ms (x%.2f)\n",
           (long long)s.NK, (long long)s.NV, (long long)s.DK, (long long)s.DV, (long long)T, dtn(bf), med[0][0],
           med[0][1], med[0][2], med[0][3], med[1][0], mb, mb / 1e6 / (med[1][0] * 1e-3), med[1][1], med[1][2],
           med[1][3], med[0][0] / med[1][0], med[0][3] - med[1][3], med[0][3] / med[1][3]);
    /* median ms of 10 timed calls of launch(ver) after 2 warm-ups, between ev[0] and ev[1]; before()
     * runs outside the timed span */
    auto timed = [&](auto before, auto launch, int ver) {
        std::vector<float> t;
        for (int r = 0; r < 12; r++) {
            before();
            CK(cudaEventRecord(ev[0], g_stream));
            launch(ver);
            CK(cudaEventRecord(ev[1], g_stream));
            CK(cudaEventSynchronize(ev[1]));
            float ms;
            CK(cudaEventElapsedTime(&ms, ev[0], ev[1]));
            if (r >= 2) t.push_back(ms);
        }
        return median(t);
    };
    /* the gated norm alone: v1 (a row per warp) against v2 (two rows per warp) */
    auto nothing = [] {};
    auto norm = [&](int ver) {
        RUN(cuda_deltanet_gated_norm_forward_ver(B.gn2.p, B.core2.p, B.qkvz.p, (float *)B.gw.p, T, s.NK, s.NV, s.DK,
                                                 s.DV, EPS_RMS, ver, DT(bf), g_stream, &g_err));
    };
    const float gn1 = timed(nothing, norm, 1), gn2 = timed(nothing, norm, 2);
    printf("TIME gated_norm T=%-5lld %-4s v1 %.4f ms, v2 %.4f ms (x%.2f)\n", (long long)T, dtn(bf), gn1, gn2,
           gn1 / gn2);
    /* the prep alone: v1 (a token per warp at a time) against v2 (two), each from the same conv state */
    const float qscale = (float)pow((double)s.DK, -0.5);
    auto reset_state = [&] { copy(B.cst2, B.cst0); };
    auto prep = [&](int ver) {
        RUN(cuda_deltanet_prep_forward_ver(B.q2.p, B.k2.p, B.v2.p, (float *)B.g2.p, (float *)B.beta2.p,
                                           (float *)B.cst2.p, B.qkvz.p, B.ba.p, (float *)B.cw.p, (float *)B.A_log.p,
                                           (float *)B.dt_bias.p, T, s.NK, s.NV, s.DK, s.DV, s.K, EPS_L2, qscale, 0,
                                           B.qbf, ver, DT(bf), g_stream, &g_err));
    };
    const float pr1 = timed(reset_state, prep, 1), pr2 = timed(reset_state, prep, 2);
    printf("TIME prep T=%-5lld %-4s v1 %.4f ms, v2 %.4f ms (x%.2f)\n", (long long)T, dtn(bf), pr1, pr2, pr1 / pr2);
    for (auto &e : ev) CK(cudaEventDestroy(e));
    release(B);
}

int main(int argc, char **argv)
{
    const int quick = argc > 1 && strcmp(argv[1], "--quick") == 0, bench_only = argc > 1 && strcmp(argv[1], "--bench") == 0;
    if (argc > 1 && !quick && !bench_only) {
        fprintf(stderr, "usage: test_dn_prep [--quick | --bench]\n");
        return 2;
    }
    CK(cudaStreamCreate(&g_stream));
    const shape real = {16, 32, 128, 128, 4};
    if (!bench_only) {
        struct {
            shape s;
            std::vector<int64_t> Ts;
        } cases[] = {
            {{1, 1, 16, 16, 4}, {1, 2, 3, 5, 64, 65, 300}},
            {{2, 6, 20, 36, 3}, {1, 2, 7, 100, 129}},      /* r = 3; bf16: not 16-byte vectors */
            {{3, 3, 13, 7, 5}, {1, 3, 4, 6, 70}},          /* odd dims: no delta rule, K = 5 */
            {{2, 4, 256, 64, 4}, {2, 65, 130}},            /* DK = 256: 128-thread l2norm blocks */
            {{4, 4, 200, 256, 8}, {5, 77}},                /* DV = 256: 128-thread gated-norm blocks, K = 8 */
            {{1, 2, 128, 128, 4}, {1, 2, 3, 63, 64, 65, 300}}, /* the tc delta rule */
            {{2, 4, 128, 128, 2}, {130, 257}},
            {real, {2, 64, 1000, 4096}},
        };
        for (auto &c : cases)
            for (int64_t T : c.Ts)
                for (int bf = 1; bf >= 0; bf--)
                    for (int init = 1; init >= 0; init--) {
                        if (T >= 1000 && !init) continue;
                        run_case(c.s, T, bf, init);
                    }
        if (!quick) run_case(real, 16384, 1, 1);
        printf("%d cases, %d failed\n", g_cases, g_fail);
        if (g_fail) return 1;
    }
    if (!quick) {
        bench(real, 4096, 1);
        bench(real, 16384, 1);
        bench(real, 4096, 0);
    }
    return 0;
}
