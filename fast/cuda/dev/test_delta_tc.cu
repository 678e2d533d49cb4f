/* test_delta_tc.cu — the bf16 tensor-core chunked delta rule (deltanet_tc.cu) against
 * ref_delta_rule_chunked (libq3n.a, float32) on seeded random inputs, then timings against
 * chunk_v4 (the fp32 SIMT path) in the same process.
 *
 * Each case: NaN-poisoned o and scratch, a guard after o, 3 runs of the default path that must be
 * bitwise identical; then scan v2 in its three block shapes (identical bits) and scan v3 (where the
 * device has it: the default there, so the same bits as the default runs). Every path: rel L2 of o
 * <= 1e-2 and of the final state <= 5e-3 (bf16 operands, float32 accumulation). Then, on bf16
 * q, k, v: the pipelined run bitwise the sequential one, and prep v2 bitwise v1 (run_prep_case).
 *
 *   test_delta_tc            all cases, then timings at T=4096 and 16384 (NK=16 NV=32 DK=DV=128)
 *   test_delta_tc --cases    cases only
 *   test_delta_tc --bench    timings only
 *   test_delta_tc --pipe     the pipelined and prep v2 cases, then their timings
 *   test_delta_tc --bench-one T W [bf16]   one timing (NK=16 NV=32, scan_warps W: -1 prep only,
 *                                          100 = scan v3; bf16: q, k, v in bf16): for ncu */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "devkit.cuh"

static double g_worst_o = 0, g_worst_s = 0;
static int g_have_v3; /* the device runs scan v3 (the default there) */

struct inputs {
    std::vector<float> q, k, v, g, beta, s0;
};
/* As test_kernels: L2-normalised q, k (q scaled by DK^-0.5), v ~ N(0,1), g in [gmin, -1e-4],
 * beta in [0, 1], initial state ~ N(0, 0.5^2) or zero. */
static inputs make_inputs(int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV, double gmin, int init)
{
    inputs in;
    in.q.resize((size_t)(T * NK * DK));
    in.k.resize(in.q.size());
    for (auto &x : in.q) x = (float)q3n_rng_normal(&g_rng);
    for (auto &x : in.k) x = (float)q3n_rng_normal(&g_rng);
    for (int64_t r = 0; r < T * NK; r++) {
        double sq = 0, sk = 0;
        for (int64_t d = 0; d < DK; d++) sq += in.q[r * DK + d] * in.q[r * DK + d], sk += in.k[r * DK + d] * in.k[r * DK + d];
        for (int64_t d = 0; d < DK; d++) {
            in.q[r * DK + d] = (float)(in.q[r * DK + d] / sqrt(sq + 1e-6)) * (float)pow((double)DK, -0.5);
            in.k[r * DK + d] = (float)(in.k[r * DK + d] / sqrt(sk + 1e-6));
        }
    }
    in.v.resize((size_t)(T * NV * DV));
    for (auto &x : in.v) x = (float)q3n_rng_normal(&g_rng);
    in.g.resize((size_t)(T * NV));
    in.beta.resize(in.g.size());
    for (auto &x : in.g) x = (float)q3n_rng_range(&g_rng, gmin, -1e-4);
    for (auto &x : in.beta) x = (float)q3n_rng_range(&g_rng, 0.0, 1.0);
    in.s0.resize((size_t)(NV * DK * DV));
    for (auto &x : in.s0) x = init ? (float)(q3n_rng_normal(&g_rng) * 0.5) : 0.0f;
    return in;
}

static void *dup(const std::vector<float> &v)
{
    void *p;
    CK(cudaMalloc(&p, v.size() * 4));
    CK(cudaMemcpy(p, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
    return p;
}
static float bf2f(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* rel L2 of got vs want; non-finite values count as failure (returns inf). */
static double rel_l2(const std::vector<float> &got, const std::vector<float> &want)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); i++) {
        if (!isfinite(got[i])) return INFINITY;
        num += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
        den += (double)want[i] * want[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

#define GUARD 64
/* One case through cuda_delta_rule_chunked (the launcher the model calls) in bf16 mode. */
static void run_case(int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV, int64_t C, double gmin, int init)
{
    inputs in = make_inputs(T, NK, NV, DK, DV, gmin, init);
    std::vector<float> want((size_t)(T * NV * DV)), wst = in.s0;
    std::vector<float> scr((size_t)ref_delta_rule_chunked_scratch(C, DK, DV));
    ref_delta_rule_chunked(want.data(), wst.data(), in.q.data(), in.k.data(), in.v.data(), in.g.data(),
                           in.beta.data(), scr.data(), T, NK, NV, DK, DV, C);
    float *dq = (float *)dup(in.q), *dk = (float *)dup(in.k), *dv = (float *)dup(in.v), *dg = (float *)dup(in.g),
          *db = (float *)dup(in.beta), *ds;
    CK(cudaMalloc(&ds, wst.size() * 4));
    const size_t obytes = (size_t)(T * NV * DV) * 2, sbytes = (size_t)cuda_delta_rule_chunked_scratch(T, NV, DK, DV, C) * 4;
    char *o, *dscr;
    CK(cudaMalloc(&o, obytes + GUARD));
    CK(cudaMalloc(&dscr, sbytes));
    std::vector<uint16_t> o0, oc((size_t)(T * NV * DV));
    std::vector<float> s0v, sc(wst.size());
    int det = 1, guard = 1;
    for (int rep = 0; rep < 3; rep++) {
        CK(cudaMemset(o, 0xff, obytes));
        CK(cudaMemset(o + obytes, 0x5a, GUARD));
        CK(cudaMemset(dscr, 0xff, sbytes));
        CK(cudaMemcpy(ds, in.s0.data(), wst.size() * 4, cudaMemcpyHostToDevice));
        RUN(cuda_delta_rule_chunked(o, ds, dq, dk, dv, dg, db, (float *)dscr, T, NK, NV, DK, DV, C, Q3N_COMPUTE_BF16,
                                    g_stream, &g_err));
        CK(cudaStreamSynchronize(g_stream));
        CK(cudaMemcpy(oc.data(), o, obytes, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(sc.data(), ds, wst.size() * 4, cudaMemcpyDeviceToHost));
        unsigned char gb[GUARD];
        CK(cudaMemcpy(gb, o + obytes, GUARD, cudaMemcpyDeviceToHost));
        for (int i = 0; i < GUARD; i++) guard &= gb[i] == 0x5a;
        if (rep == 0) o0 = oc, s0v = sc;
        else det &= memcmp(o0.data(), oc.data(), obytes) == 0 && memcmp(s0v.data(), sc.data(), sc.size() * 4) == 0;
    }
    std::vector<float> of(o0.size());
    for (size_t i = 0; i < of.size(); i++) of[i] = bf2f(o0[i]);
    double eo = rel_l2(of, want), es = rel_l2(s0v, wst);
    /* scan v2 (every block shape: the same bits) and, where the device has it, v3 explicitly;
     * each meets the same bounds against the reference */
    if (cuda_delta_rule_chunked_tc_supported(DK, DV, C)) {
        const int sws[] = {2, 4, 8, Q3N_TC_SCAN_V3};
        std::vector<uint16_t> o2;
        std::vector<float> s2;
        for (int sw : sws) {
            if (sw == Q3N_TC_SCAN_V3 && !g_have_v3) continue;
            CK(cudaMemset(o, 0xff, obytes));
            CK(cudaMemcpy(ds, in.s0.data(), wst.size() * 4, cudaMemcpyHostToDevice));
            RUN(cuda_delta_rule_chunked_tc(o, ds, dq, dk, dv, dg, db, (float *)dscr, T, NK, NV, DK, DV, C, sw, g_stream,
                                           &g_err));
            CK(cudaStreamSynchronize(g_stream));
            CK(cudaMemcpy(oc.data(), o, obytes, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(sc.data(), ds, wst.size() * 4, cudaMemcpyDeviceToHost));
            if (sw == 2) o2 = oc, s2 = sc;
            else if (sw != Q3N_TC_SCAN_V3)
                det &= memcmp(o2.data(), oc.data(), obytes) == 0 && memcmp(s2.data(), sc.data(), sc.size() * 4) == 0;
            else /* the default on this device is v3: the same bits as the explicit call */
                det &= memcmp(o0.data(), oc.data(), obytes) == 0 && memcmp(s0v.data(), sc.data(), sc.size() * 4) == 0;
            for (size_t i = 0; i < of.size(); i++) of[i] = bf2f(oc[i]);
            eo = std::max(eo, rel_l2(of, want));
            es = std::max(es, rel_l2(sc, wst));
        }
    }
    const int ok = det && guard && eo <= 1e-2 && es <= 5e-3;
    g_cases++;
    g_fail += !ok;
    if (cuda_delta_rule_chunked_tc_supported(DK, DV, C)) {
        g_worst_o = std::max(g_worst_o, eo);
        g_worst_s = std::max(g_worst_s, es);
    }
    printf("%s T=%-5lld NK=%-2lld NV=%-2lld DK=%lld DV=%lld C=%lld g>=%-5g s0=%d: rel_l2 o %.3e state %.3e det %d guard %d [%s]\n",
           ok ? "ok  " : "FAIL", (long long)T, (long long)NK, (long long)NV, (long long)DK, (long long)DV, (long long)C,
           gmin, init, eo, es, det, guard, cuda_delta_rule_chunked_kernel_for(DK, DV, C, Q3N_COMPUTE_BF16));
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dg), cudaFree(db), cudaFree(ds), cudaFree(o), cudaFree(dscr);
}

/* float32 -> bf16 bits, round to nearest even (finite inputs). */
static std::vector<uint16_t> to_bf16(const std::vector<float> &x)
{
    std::vector<uint16_t> r(x.size());
    for (size_t i = 0; i < x.size(); i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        r[i] = (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    }
    return r;
}
static void *dup16(const std::vector<uint16_t> &v)
{
    void *p;
    CK(cudaMalloc(&p, v.size() * 2));
    CK(cudaMemcpy(p, v.data(), v.size() * 2, cudaMemcpyHostToDevice));
    return p;
}

/* path: -2 = chunk_v4 (simt, bf16 out), -1 = tc prep only, 0.. = tc with that scan_warps (0 auto,
 * Q3N_TC_SCAN_V3). bf16in: q, k, v in bf16 through cuda_delta_rule_chunked_tc_bf16 (what the model
 * calls, and what fla's chunk_gated_delta_rule takes); else float32. */
static void bench(int64_t T, int64_t NK, int64_t NV, int path, int bf16in = 0)
{
    const int64_t D = 128, C = 64;
    inputs in = make_inputs(T, NK, NV, D, D, -8.0, 1);
    float *dq = (float *)dup(in.q), *dk = (float *)dup(in.k), *dv = (float *)dup(in.v), *dg = (float *)dup(in.g),
          *db = (float *)dup(in.beta), *ds = (float *)dup(in.s0), *dscr;
    void *hq = dup16(to_bf16(in.q)), *hk = dup16(to_bf16(in.k)), *hv = dup16(to_bf16(in.v));
    void *o;
    CK(cudaMalloc(&o, (size_t)(T * NV * D) * 2));
    CK(cudaMalloc(&dscr, (size_t)cuda_delta_rule_chunked_scratch(T, NV, D, D, C) * 4));
    auto call = [&]() {
        if (path == -2)
            RUN(cuda_delta_rule_chunked_simt(o, ds, dq, dk, dv, dg, db, dscr, T, NK, NV, D, D, C, Q3N_COMPUTE_BF16,
                                             g_stream, &g_err));
        else if (bf16in)
            RUN(cuda_delta_rule_chunked_tc_bf16(o, ds, hq, hk, hv, dg, db, dscr, T, NK, NV, D, D, C, path, g_stream,
                                                &g_err));
        else
            RUN(cuda_delta_rule_chunked_tc(o, ds, dq, dk, dv, dg, db, dscr, T, NK, NV, D, D, C, path, g_stream, &g_err));
    };
    for (int r = 0; r < 3; r++) call();
    const int N = 20;
    std::vector<float> ms(N);
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int r = 0; r < N; r++) {
        CK(cudaEventRecord(a, g_stream));
        call();
        CK(cudaEventRecord(b, g_stream));
        CK(cudaEventSynchronize(b));
        CK(cudaEventElapsedTime(&ms[r], a, b));
    }
    double mean = 0;
    for (float x : ms) mean += x / N;
    std::sort(ms.begin(), ms.end());
    const char *name = path == -2 ? "chunk_v4 simt" : path == -1 ? "tc prep only" : path == Q3N_TC_SCAN_V3 ? "tc scan v3" : "tc";
    printf("BENCH %-13s scan_warps=%d %s in T=%lld NK=%lld NV=%lld DK=DV=128 C=64: median %.3f ms, mean %.3f ms (%d calls)\n",
           name, path, bf16in ? "bf16" : "f32", (long long)T, (long long)NK, (long long)NV, ms[N / 2], mean, N);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dg), cudaFree(db), cudaFree(ds), cudaFree(o), cudaFree(dscr);
    cudaFree(hq), cudaFree(hk), cudaFree(hv);
}

/* The median of 20 timed calls (after 3 untimed), CUDA events on g_stream. */
template <typename F>
static float median_ms(F call)
{
    for (int r = 0; r < 3; r++) call();
    std::vector<float> ms(20);
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (float &m : ms) {
        CK(cudaEventRecord(a, g_stream));
        call();
        CK(cudaEventRecord(b, g_stream));
        CK(cudaEventSynchronize(b));
        CK(cudaEventElapsedTime(&m, a, b));
    }
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    std::sort(ms.begin(), ms.end());
    return ms[10];
}

/* The device side of a case on bf16 q, k, v (NK, NV heads of dim 128, weak decay): inputs, o, scratch. */
struct bf16_case {
    static constexpr int64_t D = 128, C = 64;
    inputs in;
    float *dg, *db, *ds, *dscr;
    void *hq, *hk, *hv, *o;
    size_t obytes, sbytes, scr_bytes;
    bf16_case(int64_t T, int64_t NK, int64_t NV) : in(make_inputs(T, NK, NV, D, D, -0.05, 1))
    {
        dg = (float *)dup(in.g), db = (float *)dup(in.beta), ds = (float *)dup(in.s0);
        hq = dup16(to_bf16(in.q)), hk = dup16(to_bf16(in.k)), hv = dup16(to_bf16(in.v));
        obytes = (size_t)(T * NV * D) * 2, sbytes = in.s0.size() * 4;
        scr_bytes = (size_t)cuda_delta_rule_chunked_scratch(T, NV, D, D, C) * 4;
        CK(cudaMalloc(&o, obytes));
        CK(cudaMalloc(&dscr, scr_bytes));
    }
    ~bf16_case()
    {
        cudaFree(dg), cudaFree(db), cudaFree(ds), cudaFree(dscr), cudaFree(o), cudaFree(hq), cudaFree(hk), cudaFree(hv);
    }
    /* the initial state back in place, o and the scratch NaN-poisoned (on g_stream) */
    void reset()
    {
        CK(cudaMemcpyAsync(ds, in.s0.data(), sbytes, cudaMemcpyHostToDevice, g_stream));
        CK(cudaMemsetAsync(o, 0xff, obytes, g_stream));
        CK(cudaMemsetAsync(dscr, 0xff, scr_bytes, g_stream));
    }
};

/* The pipelined run (the scan on a high-priority stream beside the prep, a flag per (chunk, key head):
 * cuda_delta_rule_chunked_tc_bf16_piped) against the sequential one on the same bf16 inputs: o and the
 * final state bitwise, 3 runs; with timing, 20 calls of each (median). */
static cuda_tc_pipe g_pipe;
static void run_pipe_case(int64_t T, int64_t NK, int64_t NV, int timing)
{
    bf16_case b(T, NK, NV);
    const int64_t D = b.D, C = b.C;
    const size_t obytes = b.obytes, sbytes = b.sbytes;
    void *o = b.o;
    float *ds = b.ds;
    auto call = [&](int piped) {
        RUN(cuda_delta_rule_chunked_tc_bf16_piped(o, ds, b.hq, b.hk, b.hv, b.dg, b.db, b.dscr, T, NK, NV, D, D, C, 0,
                                                  g_stream, piped ? &g_pipe : NULL, &g_err));
    };
    std::vector<uint16_t> o_seq(obytes / 2), oc(obytes / 2);
    std::vector<float> s_seq(b.in.s0.size()), sc(b.in.s0.size());
    auto run = [&](int piped, std::vector<uint16_t> &ov, std::vector<float> &sv) {
        b.reset();
        call(piped);
        CK(cudaStreamSynchronize(g_stream));
        CK(cudaMemcpy(ov.data(), o, obytes, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(sv.data(), ds, sbytes, cudaMemcpyDeviceToHost));
    };
    run(0, o_seq, s_seq);
    int64_t dof = 0, dst = 0;
    for (int r = 0; r < 3; r++) {
        run(1, oc, sc);
        for (size_t i = 0; i < oc.size(); i++) dof += oc[i] != o_seq[i];
        dst += memcmp(sc.data(), s_seq.data(), sbytes) != 0;
    }
    const int ok = dof == 0 && dst == 0;
    g_cases++;
    g_fail += !ok;
    printf("%s pipelined == sequential bitwise T=%lld NK=%lld NV=%lld (3 runs): o %lld differ, state %s\n",
           ok ? "ok  " : "FAIL", (long long)T, (long long)NK, (long long)NV, (long long)dof, dst ? "DIFFERS" : "same");
    if (timing) {
        float t[2];
        for (int piped = 0; piped < 2; piped++) t[piped] = median_ms([&] { call(piped); });
        printf("BENCH tc prep + scan v3, bf16 in, T=%lld NK=%lld NV=%lld: sequential %.3f ms, pipelined %.3f ms (median of 20)\n",
               (long long)T, (long long)NK, (long long)NV, t[0], t[1]);
    }
}

/* Prep v2 (both value heads of a key head in one block) against v1 on the same bf16 inputs: the
 * whole scratch after the prep alone (NaN-poisoned before each run, 3 runs of v2), then o and the
 * final state of the full run, v2 pipelined where the device pipelines against v1 sequential, all
 * bitwise; with timing, each prep alone and each full run (median of 20). */
static void run_prep_case(int64_t T, int64_t NK, int64_t NV, int timing)
{
    bf16_case b(T, NK, NV);
    const int64_t D = b.D, C = b.C;
    const size_t obytes = b.obytes, sbytes = b.sbytes, scr_bytes = b.scr_bytes;
    void *o = b.o;
    float *ds = b.ds, *dscr = b.dscr;
    /* scan_warps -1: the prep alone; piped: the scan beside it where the device pipelines */
    auto call = [&](int prep_ver, int scan_warps, int piped) {
        RUN(cuda_delta_rule_chunked_tc_bf16_ver(o, ds, b.hq, b.hk, b.hv, b.dg, b.db, dscr, T, NK, NV, D, D, C, scan_warps,
                                                prep_ver, g_stream, piped ? &g_pipe : NULL, &g_err));
    };
    std::vector<unsigned char> scr1(scr_bytes), scr2(scr_bytes);
    std::vector<uint16_t> o1(obytes / 2), o2(obytes / 2);
    std::vector<float> s1(b.in.s0.size()), s2(b.in.s0.size());
    auto run = [&](int prep_ver, int scan_warps, int piped, std::vector<unsigned char> &scr, std::vector<uint16_t> &ov,
                   std::vector<float> &sv) {
        b.reset();
        call(prep_ver, scan_warps, piped);
        CK(cudaStreamSynchronize(g_stream));
        if (scan_warps < 0) {
            CK(cudaMemcpy(scr.data(), dscr, scr_bytes, cudaMemcpyDeviceToHost));
        } else {
            CK(cudaMemcpy(ov.data(), o, obytes, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(sv.data(), ds, sbytes, cudaMemcpyDeviceToHost));
        }
    };
    run(1, -1, 0, scr1, o1, s1);
    int64_t dscr_n = 0, dof = 0, dst = 0;
    for (int r = 0; r < 3; r++) {
        run(2, -1, 0, scr2, o2, s2);
        for (size_t i = 0; i < scr_bytes; i++) dscr_n += scr1[i] != scr2[i];
    }
    run(1, 0, 0, scr1, o1, s1);
    for (int r = 0; r < 3; r++) {
        run(2, 0, 1, scr2, o2, s2);
        for (size_t i = 0; i < o1.size(); i++) dof += o1[i] != o2[i];
        dst += memcmp(s1.data(), s2.data(), sbytes) != 0;
    }
    const int ok = dscr_n == 0 && dof == 0 && dst == 0;
    g_cases++;
    g_fail += !ok;
    printf("%s prep v2 == v1 bitwise T=%lld NK=%lld NV=%lld (3 runs): scratch %lld bytes differ, o %lld differ, state %s\n",
           ok ? "ok  " : "FAIL", (long long)T, (long long)NK, (long long)NV, (long long)dscr_n, (long long)dof,
           dst ? "DIFFERS" : "same");
    if (timing) {
        float t[4];
        for (int ver = 1; ver <= 2; ver++) {
            t[2 * ver - 2] = median_ms([&] { call(ver, -1, 0); });
            t[2 * ver - 1] = median_ms([&] { call(ver, 0, 1); });
        }
        printf("BENCH tc prep v1 / v2, bf16 in, T=%lld NK=%lld NV=%lld: prep alone %.3f / %.3f ms, prep + scan v3 "
               "pipelined %.3f / %.3f ms (median of 20)\n",
               (long long)T, (long long)NK, (long long)NV, t[0], t[2], t[1], t[3]);
    }
}

/* The recurrent form in bf16 mode (rec_v2) against ref_delta_rule_recurrent: o rel L2 <= 8e-3
 * (bf16 rounding of o), state <= 1e-5, 3 bitwise identical runs, NaN-poisoned o. */
static void run_rec_case(int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV)
{
    inputs in = make_inputs(T, NK, NV, DK, DV, -20.0, 1);
    std::vector<float> want((size_t)(T * NV * DV)), wst = in.s0;
    ref_delta_rule_recurrent(want.data(), wst.data(), in.q.data(), in.k.data(), in.v.data(), in.g.data(),
                             in.beta.data(), T, NK, NV, DK, DV);
    float *dq = (float *)dup(in.q), *dk = (float *)dup(in.k), *dv = (float *)dup(in.v), *dg = (float *)dup(in.g),
          *db = (float *)dup(in.beta), *ds;
    CK(cudaMalloc(&ds, wst.size() * 4));
    const size_t obytes = (size_t)(T * NV * DV) * 2;
    char *o;
    CK(cudaMalloc(&o, obytes));
    std::vector<uint16_t> o0, oc((size_t)(T * NV * DV));
    std::vector<float> s0v, sc(wst.size());
    int det = 1;
    for (int rep = 0; rep < 3; rep++) {
        CK(cudaMemset(o, 0xff, obytes));
        CK(cudaMemcpy(ds, in.s0.data(), wst.size() * 4, cudaMemcpyHostToDevice));
        RUN(cuda_delta_rule_recurrent(o, ds, dq, dk, dv, dg, db, T, NK, NV, DK, DV, Q3N_COMPUTE_BF16, g_stream, &g_err));
        CK(cudaStreamSynchronize(g_stream));
        CK(cudaMemcpy(oc.data(), o, obytes, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(sc.data(), ds, wst.size() * 4, cudaMemcpyDeviceToHost));
        if (rep == 0) o0 = oc, s0v = sc;
        else det &= memcmp(o0.data(), oc.data(), obytes) == 0 && memcmp(s0v.data(), sc.data(), sc.size() * 4) == 0;
    }
    std::vector<float> of(o0.size());
    for (size_t i = 0; i < of.size(); i++) of[i] = bf2f(o0[i]);
    const double eo = rel_l2(of, want), es = rel_l2(s0v, wst);
    const int ok = det && eo <= 8e-3 && es <= 1e-5;
    g_cases++;
    g_fail += !ok;
    printf("%s recurrent T=%lld NK=%lld NV=%lld DK=%lld DV=%lld: rel_l2 o %.3e state %.3e det %d [%s]\n", ok ? "ok  " : "FAIL",
           (long long)T, (long long)NK, (long long)NV, (long long)DK, (long long)DV, eo, es, det,
           cuda_delta_rule_recurrent_kernel_for(DK, DV, Q3N_COMPUTE_BF16));
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dg), cudaFree(db), cudaFree(ds), cudaFree(o);
}

/* One decode step (T=1) of the recurrent form, bf16 out: mean over 200 back-to-back launches. */
static void bench_recurrent(int64_t NK, int64_t NV)
{
    const int64_t D = 128;
    inputs in = make_inputs(1, NK, NV, D, D, -8.0, 1);
    float *dq = (float *)dup(in.q), *dk = (float *)dup(in.k), *dv = (float *)dup(in.v), *dg = (float *)dup(in.g),
          *db = (float *)dup(in.beta), *ds = (float *)dup(in.s0);
    void *o;
    CK(cudaMalloc(&o, (size_t)(NV * D) * 2));
    for (int r = 0; r < 10; r++)
        RUN(cuda_delta_rule_recurrent(o, ds, dq, dk, dv, dg, db, 1, NK, NV, D, D, Q3N_COMPUTE_BF16, g_stream, &g_err));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    const int N = 200;
    CK(cudaEventRecord(a, g_stream));
    for (int r = 0; r < N; r++)
        RUN(cuda_delta_rule_recurrent(o, ds, dq, dk, dv, dg, db, 1, NK, NV, D, D, Q3N_COMPUTE_BF16, g_stream, &g_err));
    CK(cudaEventRecord(b, g_stream));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    const double us = ms * 1e3 / N, mb = 2.0 * NV * D * D * 4 / 1e6;
    printf("BENCH recurrent step [%s] NK=%lld NV=%lld DK=DV=128: %.2f us/step (mean of %d), state r+w %.1f MB -> %.0f GB/s\n",
           cuda_delta_rule_recurrent_kernel_for(D, D, Q3N_COMPUTE_BF16), (long long)NK, (long long)NV, us, N, mb,
           mb * 1e6 / us / 1e3);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dg), cudaFree(db), cudaFree(ds), cudaFree(o);
}

int main(int argc, char **argv)
{
    q3n_rng_seed(&g_rng, 20261123);
    CK(cudaStreamCreate(&g_stream));
    {
        int least = 0, greatest = 0;
        CK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
        CK(cudaStreamCreateWithPriority(&g_pipe.stream, cudaStreamNonBlocking, greatest));
        CK(cudaEventCreateWithFlags(&g_pipe.fork, cudaEventDisableTiming));
        CK(cudaEventCreateWithFlags(&g_pipe.join, cudaEventDisableTiming));
    }
    g_have_v3 = cuda_delta_rule_chunked_tc_supported(128, 128, 64) && cuda_delta_rule_chunked_tc_has_v3();
    if (argc >= 2 && strcmp(argv[1], "--pipe") == 0) { /* the pipelined run's cases and timings only */
        const int64_t Ts[] = {1, 64, 65, 1000, 4096};
        for (int64_t T : Ts) run_pipe_case(T, 16, 32, 0), run_prep_case(T, 16, 32, 0);
        run_pipe_case(300, 2, 4, 0);
        run_prep_case(300, 2, 4, 0);
        run_prep_case(130, 1, 2, 0);
        run_pipe_case(4096, 16, 32, 1);
        run_pipe_case(16384, 16, 32, 1);
        run_prep_case(4096, 16, 32, 1);
        run_prep_case(16384, 16, 32, 1);
        printf("%d cases, %d failed\n", g_cases, g_fail);
        return g_fail ? 1 : 0;
    }
    if (argc >= 4 && strcmp(argv[1], "--bench-one") == 0) { /* one shape, for profilers */
        bench(atoll(argv[2]), 16, 32, atoi(argv[3]), argc > 4 && strcmp(argv[4], "bf16") == 0);
        return 0;
    }
    const int cases = argc < 2 || strcmp(argv[1], "--cases") == 0, timing = argc < 2 || strcmp(argv[1], "--bench") == 0;
    if (cases) {
        const int64_t Ts[] = {1, 63, 64, 65, 130, 300, 1000};
        const int64_t heads[][2] = {{1, 1}, {2, 4}, {16, 32}};
        for (auto &hk : heads)
            for (int64_t T : Ts)
                for (int init = 0; init < 2; init++) {
                    run_case(T, hk[0], hk[1], 128, 128, 64, -20.0, init); /* strong decay */
                    run_case(T, hk[0], hk[1], 128, 128, 64, -0.05, init); /* weak decay */
                }
        run_case(4096, 1, 2, 128, 128, 64, -0.01, 1); /* long, very weak decay */
        run_rec_case(1, 16, 32, 128, 128);
        run_rec_case(4, 2, 4, 128, 128);
        run_rec_case(3, 1, 3, 60, 100);
        run_rec_case(2, 2, 2, 256, 256);
        run_rec_case(2, 1, 2, 16, 16);
        /* bf16 mode, dims the tc path does not take: falls back to chunk_v4 */
        run_case(100, 1, 2, 64, 64, 64, -5.0, 1);
        run_case(130, 2, 4, 128, 128, 32, -5.0, 1);
        /* the pipelined prep + scan (the model's default on sm_90) against the sequential run */
        const int64_t Tp[] = {1, 64, 65, 1000, 4096};
        for (int64_t T : Tp) run_pipe_case(T, 16, 32, 0);
        run_pipe_case(300, 2, 4, 0);
        /* prep v2 against v1 (NV == 2 NK) */
        for (int64_t T : Tp) run_prep_case(T, 16, 32, 0);
        run_prep_case(300, 2, 4, 0);
        run_prep_case(130, 1, 2, 0);
        printf("%d cases, %d failed; worst tc rel_l2: o %.3e, state %.3e\n", g_cases, g_fail, g_worst_o, g_worst_s);
        if (g_fail) return 1;
    }
    if (timing) {
        bench_recurrent(16, 32);
        const int64_t Ts[] = {4096, 16384};
        for (int64_t T : Ts) {
            bench(T, 16, 32, -2);
            bench(T, 16, 32, -1);
            const int nws[] = {2, 4, 8, Q3N_TC_SCAN_V3};
            for (int nw : nws)
                if (nw != Q3N_TC_SCAN_V3 || g_have_v3) bench(T, 16, 32, nw);
            bench(T, 16, 32, -1, 1);
            bench(T, 16, 32, 0, 1); /* bf16 q, k, v, default scan, sequential */
            run_pipe_case(T, 16, 32, 1); /* the model's call: the same, pipelined */
            run_prep_case(T, 16, 32, 1);
        }
    }
    return 0;
}
