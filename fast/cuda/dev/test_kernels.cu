/* test_kernels.cu — validate-then-benchmark for every fast/cuda kernel (llm.c's dev/cuda pattern).
 *
 * Each case draws seeded inputs in their real ranges, runs the ref_ op (linked from libq3n.a,
 * never pasted) and the cuda_ launcher on the same data, and compares with harness/compare.c:
 * non-finite mismatches first, then relative L2 and the worst element. Device outputs are
 * poisoned with NaN before each launch and followed by a sentinel guard checked afterwards.
 * Every case runs REPEAT times and must be bitwise identical each time (determinism).
 * One line per case; exit status 1 on any failure. Timings only after all cases pass.
 *
 *   test_kernels            all cases, then timings
 *   test_kernels --small    a few small cases, no timings (for compute-sanitizer)
 *   test_kernels --bench-delta T NK NV DK   time the chunked delta rule alone
 *   test_kernels --long T   long-context weak-decay run (f32 chunked and recurrent, bf16 chunked vs ref, drift) */
#include "devkit.cuh"

#define E (&g_err) /* launchers take `err` by name */

/* ---- norms ---- */
static void case_rmsnorm(int64_t rows, int64_t n, int bf)
{
    auto x = randn(rows * n, 1.0), w = randu(n, -0.5, 0.5), z = randn(rows * n, 1.0);
    if (bf) x = rounded(x), z = rounded(z);
    std::vector<float> want((size_t)(rows * n)), wantg((size_t)(rows * n));
    ref_rmsnorm_forward(want.data(), x.data(), w.data(), rows, n, 1e-6);
    auto wg = randu(n, 0.7, 1.3);
    ref_rmsnorm_gated_forward(wantg.data(), x.data(), z.data(), wg.data(), rows, n, 1e-6);
    dbuf dx = up(x, bf), dz = up(z, bf), dw = up(w, 0), dwg = up(wg, 0), o = dnew(rows * n * (bf ? 2 : 4));
    std::vector<float> first, firstg;
    int det = 1;
    for (int r = 0; r < REPEAT; r++) {
        poison(o);
        RUN(cuda_rmsnorm_forward(o.p, dx.p, (float *)dw.p, rows, n, 1e-6, DT(bf), g_stream, E));
        CK(cudaStreamSynchronize(g_stream));
        auto got = down(o, rows * n, bf);
        if (r == 0) first = got; else det &= same_bits(first, got);
    }
    char name[160];
    snprintf(name, sizeof name, "rmsnorm rows=%lld n=%lld %s", (long long)rows, (long long)n, dtn(bf));
    check(name, first, want, bf ? 8e-3 : 1e-6, det, &o);
    det = 1;
    for (int r = 0; r < REPEAT; r++) {
        poison(o);
        RUN(cuda_rmsnorm_gated_forward(o.p, dx.p, dz.p, (float *)dwg.p, rows, n, 1e-6, DT(bf), g_stream, E));
        CK(cudaStreamSynchronize(g_stream));
        auto got = down(o, rows * n, bf);
        if (r == 0) firstg = got; else det &= same_bits(firstg, got);
    }
    snprintf(name, sizeof name, "rmsnorm_gated rows=%lld n=%lld %s", (long long)rows, (long long)n, dtn(bf));
    check(name, firstg, wantg, bf ? 1e-2 : 1e-6, det, &o);
    /* l2norm (float32 out) */
    std::vector<float> want2((size_t)(rows * n));
    ref_l2norm_forward(want2.data(), x.data(), rows, n, 1e-6);
    dbuf o2 = dnew(rows * n * 4);
    RUN(cuda_l2norm_forward((float *)o2.p, dx.p, rows, 1, n, n, 1e-6, 1.0f, 0, DT(bf), g_stream, E));
    CK(cudaStreamSynchronize(g_stream));
    snprintf(name, sizeof name, "l2norm rows=%lld n=%lld %s", (long long)rows, (long long)n, dtn(bf));
    check(name, down(o2, rows * n, 0), want2, 4e-6, 1, &o2); /* sum of n squares in tree order */
    dfree(dx), dfree(dz), dfree(dw), dfree(dwg), dfree(o), dfree(o2);
}

/* ---- conv ---- */
static void case_conv(int64_t T, int64_t Cc, int64_t K, int with_state)
{
    auto x = randn(T * Cc, 1.0), w = randn(Cc * K, 1.0 / sqrt((double)K));
    auto st = with_state ? randn(Cc * K, 1.0) : std::vector<float>((size_t)(Cc * K), 0.0f);
    std::vector<float> want((size_t)(T * Cc)), wst = st;
    ref_conv1d_causal_forward(want.data(), x.data(), w.data(), with_state ? st.data() : NULL, T, Cc, K);
    ref_conv1d_state_update(wst.data(), x.data(), T, Cc, K);
    dbuf dx = up(x, 0), dw = up(w, 0), dst = up(st, 0), o = dnew(T * Cc * 4);
    RUN(cuda_conv1d_causal_forward(o.p, dx.p, (float *)dw.p, with_state ? (float *)dst.p : NULL, T, Cc, K,
                                   Q3N_COMPUTE_F32, g_stream, E));
    RUN(cuda_conv1d_state_update((float *)dst.p, dx.p, T, Cc, K, Q3N_COMPUTE_F32, g_stream, E));
    CK(cudaStreamSynchronize(g_stream));
    char name[160];
    snprintf(name, sizeof name, "conv1d T=%lld Cc=%lld K=%lld state=%d f32", (long long)T, (long long)Cc,
             (long long)K, with_state);
    check(name, down(o, T * Cc, 0), want, 1e-6, 1, &o);
    snprintf(name, sizeof name, "conv1d_state_update T=%lld Cc=%lld K=%lld f32", (long long)T, (long long)Cc,
             (long long)K);
    check(name, down(dst, Cc * K, 0), wst, 0.0, 1, &dst);
    dfree(dx), dfree(dw), dfree(dst), dfree(o);
}

/* ---- deltanet split + gates ---- */
static void case_split_gates(int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV)
{
    const int64_t r = NV / NK, Q = NK * (2 * DK + 2 * r * DV), Cc = 2 * NK * DK + NV * DV;
    auto qkvz = randn(T * Q, 1.0), ba = randn(T * 2 * NV, 1.0);
    std::vector<float> q((size_t)(T * NK * DK)), k(q.size()), v((size_t)(T * NV * DV)), z(v.size()),
        b((size_t)(T * NV)), a(b.size());
    ref_deltanet_split_forward(q.data(), k.data(), v.data(), z.data(), b.data(), a.data(), qkvz.data(), ba.data(), T,
                               NK, NV, DK, DV);
    std::vector<float> want_mixed;
    for (int64_t t = 0; t < T; t++) {
        want_mixed.insert(want_mixed.end(), q.begin() + t * NK * DK, q.begin() + (t + 1) * NK * DK);
        want_mixed.insert(want_mixed.end(), k.begin() + t * NK * DK, k.begin() + (t + 1) * NK * DK);
        want_mixed.insert(want_mixed.end(), v.begin() + t * NV * DV, v.begin() + (t + 1) * NV * DV);
    }
    dbuf dq = up(qkvz, 0), dba = up(ba, 0), mixed = dnew(T * Cc * 4), dz = dnew(T * NV * DV * 4), db = dnew(T * NV * 4),
         da = dnew(T * NV * 4);
    RUN(cuda_deltanet_split_forward(mixed.p, dz.p, (float *)db.p, (float *)da.p, dq.p, dba.p, T, NK, NV, DK, DV,
                                    Q3N_COMPUTE_F32, g_stream, E));
    CK(cudaStreamSynchronize(g_stream));
    char name[160];
    snprintf(name, sizeof name, "deltanet_split(q|k|v) T=%lld NK=%lld NV=%lld DK=%lld DV=%lld", (long long)T,
             (long long)NK, (long long)NV, (long long)DK, (long long)DV);
    check(name, down(mixed, T * Cc, 0), want_mixed, 0.0, 1, &mixed);
    snprintf(name, sizeof name, "deltanet_split(z) T=%lld NV=%lld", (long long)T, (long long)NV);
    check(name, down(dz, T * NV * DV, 0), z, 0.0, 1, &dz);
    snprintf(name, sizeof name, "deltanet_split(b) T=%lld NV=%lld", (long long)T, (long long)NV);
    check(name, down(db, T * NV, 0), b, 0.0, 1, &db);
    snprintf(name, sizeof name, "deltanet_split(a) T=%lld NV=%lld", (long long)T, (long long)NV);
    check(name, down(da, T * NV, 0), a, 0.0, 1, &da);
    auto A_log = randu(NV, 0.0, 2.77), dtb = randu(NV, -1, 1);
    std::vector<float> g((size_t)(T * NV)), beta(g.size());
    ref_deltanet_gates_forward(g.data(), beta.data(), a.data(), b.data(), A_log.data(), dtb.data(), T, NV);
    dbuf dA = up(A_log, 0), ddt = up(dtb, 0), dg = dnew(T * NV * 4), dbeta = dnew(T * NV * 4);
    RUN(cuda_deltanet_gates_forward((float *)dg.p, (float *)dbeta.p, (float *)da.p, (float *)db.p, (float *)dA.p,
                                    (float *)ddt.p, T, NV, Q3N_COMPUTE_F32, g_stream, E));
    CK(cudaStreamSynchronize(g_stream));
    snprintf(name, sizeof name, "deltanet_gates(g) T=%lld NV=%lld f32", (long long)T, (long long)NV);
    check(name, down(dg, T * NV, 0), g, 1e-6, 1, &dg);
    snprintf(name, sizeof name, "deltanet_gates(beta) T=%lld NV=%lld f32", (long long)T, (long long)NV);
    check(name, down(dbeta, T * NV, 0), beta, 1e-6, 1, &dbeta);
    dfree(dq), dfree(dba), dfree(mixed), dfree(dz), dfree(db), dfree(da), dfree(dA), dfree(ddt), dfree(dg),
        dfree(dbeta);
}

/* ---- delta rule ---- */
struct dr_in {
    std::vector<float> q, k, v, g, beta, s0;
};
static dr_in dr_inputs(int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV, double gmin, int recurrent_scale)
{
    dr_in in;
    in.q = randn(T * NK * DK, 1.0);
    in.k = randn(T * NK * DK, 1.0);
    /* L2-normalised q and k, q scaled as transformers does */
    for (int64_t r = 0; r < T * NK; r++) {
        double sq = 0, sk = 0;
        for (int64_t d = 0; d < DK; d++) sq += in.q[r * DK + d] * in.q[r * DK + d], sk += in.k[r * DK + d] * in.k[r * DK + d];
        for (int64_t d = 0; d < DK; d++) {
            in.q[r * DK + d] = (float)(in.q[r * DK + d] / sqrt(sq + 1e-6));
            in.q[r * DK + d] = recurrent_scale ? in.q[r * DK + d] / (float)sqrt((double)DK)
                                               : in.q[r * DK + d] * (float)pow((double)DK, -0.5);
            in.k[r * DK + d] = (float)(in.k[r * DK + d] / sqrt(sk + 1e-6));
        }
    }
    in.v = randn(T * NV * DV, 1.0);
    in.g = randu(T * NV, gmin, -1e-4);
    in.beta = randu(T * NV, 0.0, 1.0);
    in.s0 = randn(NV * DK * DV, 0.5);
    return in;
}

static void case_delta_chunked(int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV, int64_t C, double gmin,
                               int bf_out)
{
    dr_in in = dr_inputs(T, NK, NV, DK, DV, gmin, 0);
    std::vector<float> want((size_t)(T * NV * DV)), wst = in.s0;
    std::vector<float> scr((size_t)ref_delta_rule_chunked_scratch(C, DK, DV));
    ref_delta_rule_chunked(want.data(), wst.data(), in.q.data(), in.k.data(), in.v.data(), in.g.data(),
                           in.beta.data(), scr.data(), T, NK, NV, DK, DV, C);
    dbuf dq = up(in.q, 0), dk = up(in.k, 0), dv = up(in.v, 0), dg = up(in.g, 0), db = up(in.beta, 0);
    dbuf ds = dnew(NV * DK * DV * 4), o = dnew(T * NV * DV * (bf_out ? 2 : 4));
    dbuf scratch = dnew((size_t)cuda_delta_rule_chunked_scratch(T, NV, DK, DV, C) * 4);
    std::vector<float> fo, fs;
    int det = 1;
    for (int r = 0; r < REPEAT; r++) {
        poison(o), poison(scratch);
        CK(cudaMemcpy(ds.p, in.s0.data(), ds.bytes, cudaMemcpyHostToDevice));
        RUN(cuda_delta_rule_chunked(o.p, (float *)ds.p, (float *)dq.p, (float *)dk.p, (float *)dv.p, (float *)dg.p,
                                    (float *)db.p, (float *)scratch.p, T, NK, NV, DK, DV, C, DT(bf_out), g_stream, E));
        CK(cudaStreamSynchronize(g_stream));
        auto go = down(o, T * NV * DV, bf_out), gs = down(ds, NV * DK * DV, 0);
        if (r == 0) fo = go, fs = gs;
        else det &= same_bits(fo, go) && same_bits(fs, gs);
    }
    char name[200];
    snprintf(name, sizeof name, "delta_chunked(o) T=%lld NK=%lld NV=%lld DK=%lld DV=%lld C=%lld g>=%.0f %s",
             (long long)T, (long long)NK, (long long)NV, (long long)DK, (long long)DV, (long long)C, gmin,
             bf_out ? "bf16-out" : "f32");
    check(name, fo, want, bf_out ? 1e-2 : 2e-5, det, &o); /* bf16: tensor-core path, bf16 operands */
    snprintf(name, sizeof name, "delta_chunked(state) T=%lld NK=%lld NV=%lld DK=%lld DV=%lld C=%lld", (long long)T,
             (long long)NK, (long long)NV, (long long)DK, (long long)DV, (long long)C);
    check(name, fs, wst, bf_out ? 5e-3 : 2e-5, det, &ds);
    dfree(dq), dfree(dk), dfree(dv), dfree(dg), dfree(db), dfree(ds), dfree(o), dfree(scratch);
}

static void case_delta_recurrent(int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV)
{
    dr_in in = dr_inputs(T, NK, NV, DK, DV, -20.0, 1);
    std::vector<float> want((size_t)(T * NV * DV)), wst = in.s0;
    ref_delta_rule_recurrent(want.data(), wst.data(), in.q.data(), in.k.data(), in.v.data(), in.g.data(),
                             in.beta.data(), T, NK, NV, DK, DV);
    dbuf dq = up(in.q, 0), dk = up(in.k, 0), dv = up(in.v, 0), dg = up(in.g, 0), db = up(in.beta, 0);
    dbuf ds = dnew(NV * DK * DV * 4), o = dnew(T * NV * DV * 4);
    std::vector<float> fo, fs;
    int det = 1;
    for (int r = 0; r < REPEAT; r++) {
        poison(o);
        CK(cudaMemcpy(ds.p, in.s0.data(), ds.bytes, cudaMemcpyHostToDevice));
        RUN(cuda_delta_rule_recurrent(o.p, (float *)ds.p, (float *)dq.p, (float *)dk.p, (float *)dv.p, (float *)dg.p,
                                      (float *)db.p, T, NK, NV, DK, DV, Q3N_COMPUTE_F32, g_stream, E));
        CK(cudaStreamSynchronize(g_stream));
        auto go = down(o, T * NV * DV, 0), gs = down(ds, NV * DK * DV, 0);
        if (r == 0) fo = go, fs = gs;
        else det &= same_bits(fo, go) && same_bits(fs, gs);
    }
    char name[200];
    snprintf(name, sizeof name, "delta_recurrent(o) T=%lld NK=%lld NV=%lld DK=%lld DV=%lld f32", (long long)T,
             (long long)NK, (long long)NV, (long long)DK, (long long)DV);
    check(name, fo, want, 1e-5, det, &o);
    snprintf(name, sizeof name, "delta_recurrent(state) T=%lld NK=%lld NV=%lld DK=%lld DV=%lld f32", (long long)T,
             (long long)NK, (long long)NV, (long long)DK, (long long)DV);
    check(name, fs, wst, 1e-5, det, &ds);
    dfree(dq), dfree(dk), dfree(dv), dfree(dg), dfree(db), dfree(ds), dfree(o);
}

/* ---- attention ---- */
/* a case that passes only when got and want have the same bits (a faster kernel against the one
 * it replaces) */
static void check_bitwise(const char *what, const std::vector<float> &got, const std::vector<float> &want,
                          const dbuf *guard)
{
    g_cases++;
    size_t diff = 0;
    for (size_t i = 0; i < got.size() && i < want.size(); i++) diff += memcmp(&got[i], &want[i], 4) != 0;
    const int gok = guard ? guard_ok(*guard) : 1;
    const int pass = diff == 0 && got.size() == want.size() && gok;
    printf("%-62s %zu of %zu differ guard=%s %s\n", what, diff, want.size(), gok ? "ok" : "BROKEN",
           pass ? "OK" : "FAIL");
    if (!pass) g_fail++;
}

static void case_attention(int64_t T, int64_t pos0, int64_t NH, int64_t NKV, int64_t HD, int bf)
{
    const int64_t S = pos0 + T, rot = (HD / 4) & ~(int64_t)1;
    auto qg = randn(T * NH * 2 * HD, 1.0), kp = randn(T * NKV * HD, 1.0), vp = randn(T * NKV * HD, 1.0);
    auto qw = randu(HD, -0.5, 0.5), kw = randu(HD, -0.5, 0.5);
    auto kc_old = randn(pos0 * NKV * HD, 1.0), vc_old = randn(pos0 * NKV * HD, 1.0);
    if (bf) qg = rounded(qg), kp = rounded(kp), vp = rounded(vp), kc_old = rounded(kc_old), vc_old = rounded(vc_old);
    /* reference: split, norms, rope, cache, attention, gate */
    std::vector<float> q((size_t)(T * NH * HD)), gate(q.size()), kn((size_t)(T * NKV * HD));
    ref_attn_split_qgate(q.data(), gate.data(), qg.data(), T, NH, HD);
    ref_rmsnorm_forward(q.data(), q.data(), qw.data(), T * NH, HD, 1e-6);
    ref_rmsnorm_forward(kn.data(), kp.data(), kw.data(), T * NKV, HD, 1e-6);
    ref_rope_forward(q.data(), T, NH, HD, rot, pos0, 1e7);
    ref_rope_forward(kn.data(), T, NKV, HD, rot, pos0, 1e7);
    std::vector<float> kc = kc_old, vc = vc_old;
    kc.insert(kc.end(), kn.begin(), kn.end());
    vc.insert(vc.end(), vp.begin(), vp.end());
    std::vector<float> att((size_t)(T * NH * HD)), scr((size_t)S), gated(att.size());
    ref_attention_forward(att.data(), q.data(), kc.data(), vc.data(), scr.data(), T, pos0, NH, NKV, HD);
    ref_sigmoid_gate_forward(gated.data(), att.data(), gate.data(), T * NH * HD);
    /* device */
    const size_t as = bf ? 2 : 4;
    dbuf dqg = up(qg, bf), dkp = up(kp, bf), dvp = up(vp, bf), dqw = up(qw, 0), dkw = up(kw, 0);
    dbuf dkc = dnew(S * NKV * HD * as), dvc = dnew(S * NKV * HD * as), dq = dnew(T * NH * HD * as);
    if (pos0) {
        dbuf t1 = up(kc_old, bf), t2 = up(vc_old, bf);
        CK(cudaMemcpy(dkc.p, t1.p, t1.bytes, cudaMemcpyDeviceToDevice));
        CK(cudaMemcpy(dvc.p, t2.p, t2.bytes, cudaMemcpyDeviceToDevice));
        dfree(t1), dfree(t2);
    }
    dbuf o = dnew(T * NH * HD * as), og = dnew(T * NH * HD * as);
    dbuf scratch = dnew((size_t)(cuda_attention_scratch(T, NH, HD, S) + 1) * 4);
    RUN(cuda_attn_qk_prep(dq.p, NULL, dkc.p, dvc.p, NULL, dqg.p, dkp.p, dvp.p, (float *)dqw.p, (float *)dkw.p, T, pos0,
                          NH, NKV, HD, rot, 1e7, 1e-6, DT(bf), g_stream, E));
    std::vector<float> first;
    int det = 1;
    for (int r = 0; r < REPEAT; r++) {
        poison(o);
        RUN(cuda_attention_forward(o.p, dq.p, dkc.p, dvc.p, (float *)scratch.p, T, pos0, NH, NKV, HD, DT(bf), g_stream,
                                   E));
        CK(cudaStreamSynchronize(g_stream));
        auto got = down(o, T * NH * HD, bf);
        if (r == 0) first = got; else det &= same_bits(first, got);
    }
    RUN(cuda_sigmoid_gate_forward(og.p, o.p, (char *)dqg.p + as * HD, T, NH, HD, 2 * HD, DT(bf), g_stream, E));
    CK(cudaStreamSynchronize(g_stream));
    char name[200];
    snprintf(name, sizeof name, "attn_qk_prep(q_rope) T=%lld pos0=%lld NH=%lld HD=%lld rot=%lld %s", (long long)T,
             (long long)pos0, (long long)NH, (long long)HD, (long long)rot, dtn(bf));
    check(name, down(dq, T * NH * HD, bf), q, bf ? 8e-3 : 1e-6, 1, &dq);
    snprintf(name, sizeof name, "attn_qk_prep(k_cache) T=%lld pos0=%lld NKV=%lld HD=%lld %s", (long long)T,
             (long long)pos0, (long long)NKV, (long long)HD, dtn(bf));
    check(name, down(dkc, S * NKV * HD, bf), kc, bf ? 8e-3 : 1e-6, 1, &dkc);
    if (bf && HD <= 256) { /* qk_prep v2 (a warp per row), v3 (a RoPE table per token) and v4 (16-byte rows, HD % 8
                            * == 0) against v1, taps on: bitwise */
        const size_t nq = (size_t)(T * NH * HD), nk = (size_t)(T * NKV * HD), nc = (size_t)(S * NKV * HD);
        const int top = HD % 8 == 0 ? 4 : 3;
        dbuf qv[5], qnv[5], knv[5], kcv[5], vcv[5];
        for (int ver = 1; ver <= top; ver++) {
            qv[ver] = dnew(nq * as), qnv[ver] = dnew(nq * as), knv[ver] = dnew(nk * as);
            kcv[ver] = dnew(nc * as), vcv[ver] = dnew(nc * as);
            poison(qv[ver]), poison(qnv[ver]), poison(knv[ver]), poison(kcv[ver]), poison(vcv[ver]);
            if (pos0) { /* the cached rows before pos0, as the default run found them */
                CK(cudaMemcpy(kcv[ver].p, dkc.p, (size_t)(pos0 * NKV * HD) * as, cudaMemcpyDeviceToDevice));
                CK(cudaMemcpy(vcv[ver].p, dvc.p, (size_t)(pos0 * NKV * HD) * as, cudaMemcpyDeviceToDevice));
            }
            RUN(cuda_attn_qk_prep_ver(qv[ver].p, qnv[ver].p, kcv[ver].p, vcv[ver].p, knv[ver].p, dqg.p, dkp.p, dvp.p,
                                      (float *)dqw.p, (float *)dkw.p, T, pos0, NH, NKV, HD, rot, 1e7, 1e-6, ver,
                                      DT(bf), g_stream, E));
        }
        CK(cudaStreamSynchronize(g_stream));
        const struct { const char *what; dbuf *b; size_t n; } outs[] = {
            {"q", qv, nq}, {"q_norm", qnv, nq}, {"k_norm", knv, nk}, {"k_cache", kcv, nc}, {"v_cache", vcv, nc}};
        for (const auto &o : outs)
            for (int ver = 2; ver <= top; ver++) {
                snprintf(name, sizeof name, "attn_qk_prep v%d == v1 bitwise (%s) T=%lld pos0=%lld HD=%lld rot=%lld",
                         ver, o.what, (long long)T, (long long)pos0, (long long)HD, (long long)rot);
                check_bitwise(name, down(o.b[ver], (int64_t)o.n, bf), down(o.b[1], (int64_t)o.n, bf), &o.b[ver]);
            }
        for (int ver = 1; ver <= top; ver++) dfree(qv[ver]), dfree(qnv[ver]), dfree(knv[ver]), dfree(kcv[ver]), dfree(vcv[ver]);
    }
    snprintf(name, sizeof name, "attention[%s] T=%lld pos0=%lld NH=%lld NKV=%lld HD=%lld %s",
             cuda_attention_kernel(T, HD, DT(bf)), (long long)T, (long long)pos0, (long long)NH, (long long)NKV,
             (long long)HD, dtn(bf));
    check(name, first, att, bf ? 2e-2 : 2e-6, det, &o);
    snprintf(name, sizeof name, "sigmoid_gate T=%lld NH=%lld HD=%lld %s", (long long)T, (long long)NH, (long long)HD,
             dtn(bf));
    check(name, down(og, T * NH * HD, bf), gated, bf ? 2e-2 : 2e-6, 1, &og);
    if (bf && HD % 8 == 0) { /* v2 (8 elements per thread) against v1 (one): bitwise */
        dbuf og1 = dnew(T * NH * HD * as), og2 = dnew(T * NH * HD * as);
        poison(og1), poison(og2);
        RUN(cuda_sigmoid_gate_forward_ver(og1.p, o.p, (char *)dqg.p + as * HD, T, NH, HD, 2 * HD, 1, DT(bf), g_stream,
                                          E));
        RUN(cuda_sigmoid_gate_forward_ver(og2.p, o.p, (char *)dqg.p + as * HD, T, NH, HD, 2 * HD, 2, DT(bf), g_stream,
                                          E));
        CK(cudaStreamSynchronize(g_stream));
        snprintf(name, sizeof name, "sigmoid_gate v2 == v1 bitwise T=%lld NH=%lld HD=%lld bf16", (long long)T,
                 (long long)NH, (long long)HD);
        check_bitwise(name, down(og2, T * NH * HD, bf), down(og1, T * NH * HD, bf), &og2);
        dfree(og1), dfree(og2);
    }
    dfree(dqg), dfree(dkp), dfree(dvp), dfree(dqw), dfree(dkw), dfree(dkc), dfree(dvc), dfree(dq), dfree(o),
        dfree(og), dfree(scratch);
}

/* ---- MoE: router + experts (both paths) + combine ---- */
static void case_moe(int64_t T, int64_t D, int64_t Ex, int64_t K, int64_t I, int bf)
{
    const size_t as = bf ? 2 : 4;
    auto x = randn(T * D, 1.0), logits = randn(T * Ex, 2.0);
    if (bf) x = rounded(x), logits = rounded(logits);
    std::vector<float> probs((size_t)(T * Ex)), tw((size_t)(T * K));
    std::vector<int64_t> ti((size_t)(T * K));
    ref_softmax_forward(probs.data(), logits.data(), T, Ex);
    ref_topk_forward(ti.data(), tw.data(), probs.data(), T, Ex, K, 1);
    dbuf dl = up(logits, bf), dp = dnew(T * Ex * 4), di = dnew(T * K * 4), dw = dnew(T * K * 4);
    RUN(cuda_router_topk_forward((float *)dp.p, (int32_t *)di.p, (float *)dw.p, dl.p, T, Ex, K, 1, DT(bf), g_stream, E));
    CK(cudaStreamSynchronize(g_stream));
    std::vector<int32_t> gi((size_t)(T * K));
    CK(cudaMemcpy(gi.data(), di.p, 4 * (size_t)(T * K), cudaMemcpyDeviceToHost));
    int64_t idx_bad = 0;
    for (int64_t i = 0; i < T * K; i++) idx_bad += gi[i] != ti[i];
    char name[200];
    snprintf(name, sizeof name, "router_probs T=%lld E=%lld %s", (long long)T, (long long)Ex, dtn(bf));
    check(name, down(dp, T * Ex, 0), probs, 1e-6, 1, &dp);
    g_cases++;
    printf("%-62s mismatches=%lld %s\n", "router_topk_idx (exact)", (long long)idx_bad, idx_bad ? "FAIL" : "OK");
    if (idx_bad) g_fail++;
    snprintf(name, sizeof name, "router_topk_weight T=%lld K=%lld %s", (long long)T, (long long)K, dtn(bf));
    check(name, down(dw, T * K, 0), bf ? rounded(tw) : tw, bf ? 1e-2 : 1e-6, 1, &dw);
    /* experts with the reference routing */
    std::vector<std::vector<float>> gw, uw, dwn;
    std::vector<struct q3n_mlp_weights> ew((size_t)Ex);
    std::vector<float> gu_stack, dn_stack;
    for (int64_t e = 0; e < Ex; e++) {
        gw.push_back(randn(I * D, 1.0 / sqrt((double)D)));
        uw.push_back(randn(I * D, 1.0 / sqrt((double)D)));
        dwn.push_back(randn(D * I, 1.0 / sqrt((double)I)));
        if (bf) gw.back() = rounded(gw.back()), uw.back() = rounded(uw.back()), dwn.back() = rounded(dwn.back());
    }
    for (int64_t e = 0; e < Ex; e++) {
        ew[e].gate_proj = gw[e].data(), ew[e].up_proj = uw[e].data(), ew[e].down_proj = dwn[e].data();
        gu_stack.insert(gu_stack.end(), gw[e].begin(), gw[e].end());
        gu_stack.insert(gu_stack.end(), uw[e].begin(), uw[e].end());
        dn_stack.insert(dn_stack.end(), dwn[e].begin(), dwn[e].end());
    }
    std::vector<float> want((size_t)(T * D)), scr((size_t)(2 * I + D));
    auto wts = bf ? rounded(tw) : tw;
    ref_moe_experts_forward(want.data(), x.data(), ti.data(), wts.data(), ew.data(), scr.data(), T, D, I, K);
    dbuf dx = up(x, bf), dgu = up(gu_stack, bf), ddn = up(dn_stack, bf);
    dbuf gu = dnew(T * K * 2 * I * as), hm = dnew(T * K * I * as), ey = dnew(T * K * D * as), eo = dnew(T * D * as),
         mo = dnew(T * D * as);
    dbuf perm = dnew(T * K * 4), pos = dnew(T * K * 4), cnt = dnew(Ex * 4), off = dnew(Ex * 4), xp = dnew(T * K * D * as);
    dbuf tiles = dnew((size_t)cuda_moe_grouped_tiles(T * K, Ex) * 4);
    for (int path = 0; path < 3; path++) {
        if (path == 2 && !(cuda_moe_grouped_gemm_ok(2 * I, D, DT(bf)) && cuda_moe_grouped_gemm_ok(D, I, DT(bf))))
            continue;
        if (path == 2) {
            poison(gu), poison(hm), poison(ey), poison(eo);
            RUN(cuda_moe_permute((int32_t *)perm.p, (int32_t *)pos.p, (int32_t *)cnt.p, (int32_t *)off.p,
                                 (int32_t *)di.p, T, Ex, K, g_stream, E));
            RUN(cuda_gather_rows(xp.p, dx.p, (int32_t *)perm.p, T * K, K, D, DT(bf), g_stream, E));
            RUN(cuda_moe_grouped_gemm(gu.p, xp.p, dgu.p, (int32_t *)cnt.p, (int32_t *)off.p, (int32_t *)tiles.p, T * K,
                                      Ex, 2 * I, D, DT(bf), g_stream, E));
            RUN(cuda_swiglu_forward(hm.p, gu.p, T * K, I, DT(bf), g_stream, E));
            RUN(cuda_moe_grouped_gemm(ey.p, hm.p, ddn.p, (int32_t *)cnt.p, (int32_t *)off.p, (int32_t *)tiles.p, T * K,
                                      Ex, D, I, DT(bf), g_stream, E));
            RUN(cuda_moe_combine(eo.p, mo.p, ey.p, (int32_t *)pos.p, (float *)dw.p, NULL, NULL, T, D, K, DT(bf),
                                 g_stream, E));
        } else if (path == 0) {
            RUN(cuda_moe_experts_gemv(gu.p, dx.p, (int32_t *)di.p, dgu.p, T * K, K, 2 * I, D, DT(bf), g_stream, E));
            RUN(cuda_swiglu_forward(hm.p, gu.p, T * K, I, DT(bf), g_stream, E));
            RUN(cuda_moe_experts_gemv(ey.p, hm.p, (int32_t *)di.p, ddn.p, T * K, 1, D, I, DT(bf), g_stream, E));
            RUN(cuda_moe_combine(eo.p, mo.p, ey.p, NULL, (float *)dw.p, NULL, NULL, T, D, K, DT(bf), g_stream, E));
        } else {
            RUN(cuda_moe_permute((int32_t *)perm.p, (int32_t *)pos.p, (int32_t *)cnt.p, (int32_t *)off.p,
                                 (int32_t *)di.p, T, Ex, K, g_stream, E));
            RUN(cuda_gather_rows(xp.p, dx.p, (int32_t *)perm.p, T * K, K, D, DT(bf), g_stream, E));
            std::vector<int32_t> hc((size_t)Ex), ho((size_t)Ex);
            CK(cudaMemcpy(hc.data(), cnt.p, 4 * (size_t)Ex, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(ho.data(), off.p, 4 * (size_t)Ex, cudaMemcpyDeviceToHost));
            for (int64_t e = 0; e < Ex; e++)
                if (hc[e])
                    RUN(cuda_linear_forward((char *)gu.p + as * ho[e] * 2 * I, (char *)xp.p + as * ho[e] * D,
                                            (char *)dgu.p + as * e * 2 * I * D, NULL, hc[e], 2 * I, D, DT(bf), g_blas,
                                            g_stream, E));
            RUN(cuda_swiglu_forward(hm.p, gu.p, T * K, I, DT(bf), g_stream, E));
            for (int64_t e = 0; e < Ex; e++)
                if (hc[e])
                    RUN(cuda_linear_forward((char *)ey.p + as * ho[e] * D, (char *)hm.p + as * ho[e] * I,
                                            (char *)ddn.p + as * e * D * I, NULL, hc[e], D, I, DT(bf), g_blas,
                                            g_stream, E));
            RUN(cuda_moe_combine(eo.p, mo.p, ey.p, (int32_t *)pos.p, (float *)dw.p, NULL, NULL, T, D, K, DT(bf),
                                 g_stream, E));
        }
        CK(cudaStreamSynchronize(g_stream));
        snprintf(name, sizeof name, "moe_experts[%s] T=%lld D=%lld E=%lld K=%lld I=%lld %s",
                 path == 2 ? "permute+grouped_mma" : path ? "permute+cublas" : "gemv", (long long)T, (long long)D, (long long)Ex, (long long)K,
                 (long long)I, dtn(bf));
        check(name, down(eo, T * D, bf), want, bf ? 2e-2 : 2e-6, 1, &eo);
    }
    /* combine with a shared expert */
    auto sh = randn(T * D, 1.0), sgl = randn(T, 1.0);
    if (bf) sh = rounded(sh), sgl = rounded(sgl);
    auto eo_h = down(eo, T * D, bf);
    std::vector<float> wantc((size_t)(T * D));
    ref_moe_combine_forward(wantc.data(), eo_h.data(), sh.data(), sgl.data(), T, D);
    dbuf dsh = up(sh, bf), dsg = up(sgl, bf), ones = up(std::vector<float>((size_t)T, 1.0f), 0);
    RUN(cuda_moe_combine(NULL, mo.p, eo.p, NULL, (float *)ones.p, dsh.p, dsg.p, T, D, 1, DT(bf), g_stream, E));
    CK(cudaStreamSynchronize(g_stream));
    snprintf(name, sizeof name, "moe_combine(shared) T=%lld D=%lld %s", (long long)T, (long long)D, dtn(bf));
    check(name, down(mo, T * D, bf), wantc, bf ? 1e-2 : 1e-6, 1, &mo);
    dfree(dl), dfree(dp), dfree(di), dfree(dw), dfree(dx), dfree(dgu), dfree(ddn), dfree(gu), dfree(hm), dfree(ey),
        dfree(eo), dfree(mo), dfree(perm), dfree(pos), dfree(cnt), dfree(off), dfree(xp), dfree(dsh), dfree(dsg), dfree(ones), dfree(tiles);
}

/* ---- timing of the chunked delta rule alone (inputs float32 as the model feeds them) ---- */
static void bench_delta(int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV, int64_t C)
{
    dr_in in = dr_inputs(T, NK, NV, DK, DV, -8.0, 0);
    dbuf dq = up(in.q, 0), dk = up(in.k, 0), dv = up(in.v, 0), dg = up(in.g, 0), db = up(in.beta, 0);
    dbuf ds = dnew(NV * DK * DV * 4), o = dnew(T * NV * DV * 2);
    dbuf scratch = dnew((size_t)cuda_delta_rule_chunked_scratch(T, NV, DK, DV, C) * 4);
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int r = 0; r < 3; r++)
        RUN(cuda_delta_rule_chunked(o.p, (float *)ds.p, (float *)dq.p, (float *)dk.p, (float *)dv.p, (float *)dg.p,
                                    (float *)db.p, (float *)scratch.p, T, NK, NV, DK, DV, C, Q3N_COMPUTE_BF16,
                                    g_stream, E));
    const int N = 10;
    CK(cudaEventRecord(a, g_stream));
    for (int r = 0; r < N; r++)
        RUN(cuda_delta_rule_chunked(o.p, (float *)ds.p, (float *)dq.p, (float *)dk.p, (float *)dv.p, (float *)dg.p,
                                    (float *)db.p, (float *)scratch.p, T, NK, NV, DK, DV, C, Q3N_COMPUTE_BF16,
                                    g_stream, E));
    CK(cudaEventRecord(b, g_stream));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    const double nc = (double)((T + C - 1) / C);
    const double flops = 2.0 * nc * NV *
                         (2.0 * C * C * DK + C * C * (DK + DV) / 2.0 + /* prep: KK^T, QK^T, solve */
                          C * DK * DV * 3.0 + C * C * DV / 2.0);    /* scan: WS, QS, K^T V', Aqk V' */
    printf("BENCH delta_chunked[%s] T=%lld NK=%lld NV=%lld DK=%lld DV=%lld C=%lld: %.3f ms/call (mean of %d), "
           "%.1f TFLOP/s fp32 SIMT\n",
           cuda_delta_rule_chunked_kernel(), (long long)T, (long long)NK, (long long)NV, (long long)DK, (long long)DV,
           (long long)C, ms / N, N, flops / (ms / N * 1e-3) / 1e12);
    dfree(dq), dfree(dk), dfree(dv), dfree(dg), dfree(db), dfree(ds), dfree(o), dfree(scratch);
}

static void bench_attention(int64_t T, int64_t NH, int64_t NKV, int64_t HD)
{
    const size_t n = (size_t)(T * NH * HD), nk = (size_t)(T * NKV * HD);
    dbuf q = dnew(n * 2), kc = dnew(nk * 2), vc = dnew(nk * 2), o = dnew(n * 2);
    CK(cudaMemset(q.p, 0x3c, n * 2));
    CK(cudaMemset(kc.p, 0x3c, nk * 2));
    CK(cudaMemset(vc.p, 0x3c, nk * 2));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    RUN(cuda_attention_forward(o.p, q.p, kc.p, vc.p, NULL, T, 0, NH, NKV, HD, Q3N_COMPUTE_BF16, g_stream, E));
    const int N = 5;
    CK(cudaEventRecord(a, g_stream));
    for (int r = 0; r < N; r++)
        RUN(cuda_attention_forward(o.p, q.p, kc.p, vc.p, NULL, T, 0, NH, NKV, HD, Q3N_COMPUTE_BF16, g_stream, E));
    CK(cudaEventRecord(b, g_stream));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    const double flops = 4.0 * NH * HD * (double)T * (T + 1) / 2.0;
    printf("BENCH attention[%s] T=%lld NH=%lld NKV=%lld HD=%lld causal: %.3f ms/call, %.0f TFLOP/s (bf16 dense peak "
           "~990)\n",
           cuda_attention_kernel(T, HD, Q3N_COMPUTE_BF16), (long long)T, (long long)NH, (long long)NKV, (long long)HD,
           ms / N, flops / (ms / N * 1e-3) / 1e12);
    dfree(q), dfree(kc), dfree(vc), dfree(o);
}

/* The attention output gate at the real dims (T tokens, 16 heads of 256, the gate inside q_proj's
 * output): v1 (one element per thread) against v2 (eight), ms per call. */
static void bench_sigmoid_gate(int64_t T, int64_t NH, int64_t HD)
{
    const size_t n = (size_t)(T * NH * HD);
    dbuf x = dnew(n * 2), qg = dnew(2 * n * 2), o = dnew(n * 2);
    CK(cudaMemset(x.p, 0x3c, n * 2));
    CK(cudaMemset(qg.p, 0x3c, 2 * n * 2));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    float ms[3] = {0, 0, 0};
    const int N = 20;
    for (int ver = 1; ver <= 2; ver++) {
        RUN(cuda_sigmoid_gate_forward_ver(o.p, x.p, (char *)qg.p + 2 * HD, T, NH, HD, 2 * HD, ver, Q3N_COMPUTE_BF16,
                                          g_stream, E));
        CK(cudaEventRecord(a, g_stream));
        for (int r = 0; r < N; r++)
            RUN(cuda_sigmoid_gate_forward_ver(o.p, x.p, (char *)qg.p + 2 * HD, T, NH, HD, 2 * HD, ver,
                                              Q3N_COMPUTE_BF16, g_stream, E));
        CK(cudaEventRecord(b, g_stream));
        CK(cudaEventSynchronize(b));
        CK(cudaEventElapsedTime(&ms[ver], a, b));
    }
    const double gb = 3.0 * n * 2 / 1e9; /* x, the gate half of q_proj's output, out */
    printf("BENCH sigmoid_gate T=%lld NH=%lld HD=%lld bf16: v1 %.4f ms, v2 %.4f ms/call (%.2f TB/s)\n", (long long)T,
           (long long)NH, (long long)HD, ms[1] / N, ms[2] / N, gb / (ms[2] / N * 1e-3) / 1e3);
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    dfree(x), dfree(qg), dfree(o);
}

/* Long context, weak decay: chunked (GPU) vs recurrent (GPU) vs ref recurrent (CPU, float32) over T
 * tokens; reports NaN/Inf, max |S| and the drift (relative L2) of the final state and outputs. */
/* The same long run through the bf16 path (the tensor-core chunked kernel at DK = DV = 128, C = 64:
 * bf16 operands, the state carried in float32 across all T / 64 chunks, o rounded to bf16) against
 * the float32 reference recurrent form: o and the final state within the bf16 kernel bound, and no
 * drift: the error of the last 1024 tokens at most twice that of the first 1024 (+1e-3). */
static void long_context_bf16(int64_t T, const dr_in &in, const std::vector<float> &want,
                              const std::vector<float> &wst)
{
    const int64_t NK = 1, NV = 2, DK = 128, DV = 128, C = 64, n = T * NV * DV;
    dbuf dq = up(in.q, 0), dk = up(in.k, 0), dv = up(in.v, 0), dg = up(in.g, 0), db = up(in.beta, 0);
    dbuf ds = dnew(NV * DK * DV * 4), o = dnew(n * 2);
    dbuf scratch = dnew((size_t)cuda_delta_rule_chunked_scratch(T, NV, DK, DV, C) * 4);
    CK(cudaMemset(ds.p, 0, ds.bytes));
    RUN(cuda_delta_rule_chunked(o.p, (float *)ds.p, (float *)dq.p, (float *)dk.p, (float *)dv.p, (float *)dg.p,
                                (float *)db.p, (float *)scratch.p, T, NK, NV, DK, DV, C, Q3N_COMPUTE_BF16, g_stream,
                                E));
    CK(cudaStreamSynchronize(g_stream));
    auto co = down(o, n, 1), cs = down(ds, NV * DK * DV, 0);
    char name[160];
    snprintf(name, sizeof name, "long bf16 %.24s(o) vs ref recurrent T=%lld",
             cuda_delta_rule_chunked_kernel_for(DK, DV, C, Q3N_COMPUTE_BF16), (long long)T);
    check(name, co, want, 1e-2, 1, &o);
    snprintf(name, sizeof name, "long bf16 chunked(state) vs ref recurrent T=%lld", (long long)T);
    check(name, cs, wst, 1e-2, 1, &ds);
    const int64_t W = 1024 * NV * DV;
    std::vector<float> a(co.begin(), co.begin() + W), b(want.begin(), want.begin() + W);
    std::vector<float> a2(co.end() - W, co.end()), b2(want.end() - W, want.end());
    struct q3n_tolerance tol;
    memset(&tol, 0, sizeof tol);
    tol.small = 1e-30;
    tol.rel_l2 = 1;
    std::vector<double> fa(a.begin(), a.end()), fb(b.begin(), b.end()), la(a2.begin(), a2.end()),
        lb(b2.begin(), b2.end());
    struct q3n_metrics first, last;
    q3n_compare_f64(&first, fa.data(), fb.data(), W, &tol, Q3N_ULP_F32);
    q3n_compare_f64(&last, la.data(), lb.data(), W, &tol, Q3N_ULP_F32);
    const double bound = 2 * first.rel_l2 + 1e-3;
    snprintf(name, sizeof name, "long bf16 chunked(o) last 1024 tokens (first: %.2e)", first.rel_l2);
    check(name, a2, b2, bound, 1, NULL);
    dfree(dq), dfree(dk), dfree(dv), dfree(dg), dfree(db), dfree(ds), dfree(o), dfree(scratch);
}

static int long_context(int64_t T)
{
    const int64_t NK = 1, NV = 2, DK = 128, DV = 128, C = 64;
    dr_in in = dr_inputs(T, NK, NV, DK, DV, -0.01, 0);
    for (auto &x : in.s0) x = 0.0f;
    std::vector<float> want((size_t)(T * NV * DV)), wst = in.s0;
    ref_delta_rule_recurrent(want.data(), wst.data(), in.q.data(), in.k.data(), in.v.data(), in.g.data(),
                             in.beta.data(), T, NK, NV, DK, DV);
    dbuf dq = up(in.q, 0), dk = up(in.k, 0), dv = up(in.v, 0), dg = up(in.g, 0), db = up(in.beta, 0);
    dbuf ds = dnew(NV * DK * DV * 4), ds2 = dnew(NV * DK * DV * 4), o = dnew(T * NV * DV * 4), o2 = dnew(T * NV * DV * 4);
    dbuf scratch = dnew((size_t)cuda_delta_rule_chunked_scratch(T, NV, DK, DV, C) * 4);
    CK(cudaMemset(ds.p, 0, ds.bytes));
    CK(cudaMemset(ds2.p, 0, ds2.bytes));
    RUN(cuda_delta_rule_chunked(o.p, (float *)ds.p, (float *)dq.p, (float *)dk.p, (float *)dv.p, (float *)dg.p,
                                (float *)db.p, (float *)scratch.p, T, NK, NV, DK, DV, C, Q3N_COMPUTE_F32, g_stream, E));
    RUN(cuda_delta_rule_recurrent(o2.p, (float *)ds2.p, (float *)dq.p, (float *)dk.p, (float *)dv.p, (float *)dg.p,
                                  (float *)db.p, T, NK, NV, DK, DV, Q3N_COMPUTE_F32, g_stream, E));
    CK(cudaStreamSynchronize(g_stream));
    auto co = down(o, T * NV * DV, 0), cs = down(ds, NV * DK * DV, 0), ro = down(o2, T * NV * DV, 0),
         rs = down(ds2, NV * DK * DV, 0);
    double smax = 0;
    for (float x : cs) smax = fmax(smax, fabs(x));
    printf("long context T=%lld NV=%lld DK=DV=128 g in [-0.01,-1e-4] (weak decay), state from 0: max|S_chunked|=%.3g\n",
           (long long)T, (long long)NV, smax);
    char name[160];
    snprintf(name, sizeof name, "long chunked(o) vs ref recurrent T=%lld", (long long)T);
    check(name, co, want, 1e-4, 1, &o);
    snprintf(name, sizeof name, "long chunked(state) vs ref recurrent T=%lld", (long long)T);
    check(name, cs, wst, 1e-4, 1, &ds);
    snprintf(name, sizeof name, "long gpu recurrent(o) vs ref recurrent T=%lld", (long long)T);
    check(name, ro, want, 1e-4, 1, &o2);
    snprintf(name, sizeof name, "long gpu recurrent(state) vs ref recurrent T=%lld", (long long)T);
    check(name, rs, wst, 1e-4, 1, &ds2);
    /* drift over time: rel L2 of o in the last 1024 tokens vs the first 1024 */
    const int64_t W = 1024 * NV * DV;
    std::vector<float> a(co.begin(), co.begin() + W), b(want.begin(), want.begin() + W);
    std::vector<float> a2(co.end() - W, co.end()), b2(want.end() - W, want.end());
    snprintf(name, sizeof name, "long chunked(o) first 1024 tokens");
    check(name, a, b, 1e-4, 1, NULL);
    snprintf(name, sizeof name, "long chunked(o) last 1024 tokens");
    check(name, a2, b2, 1e-4, 1, NULL);
    dfree(dq), dfree(dk), dfree(dv), dfree(dg), dfree(db), dfree(ds), dfree(ds2), dfree(o), dfree(o2), dfree(scratch);
    long_context_bf16(T, in, want, wst);
    printf("%d cases, %d failed\n", g_cases, g_fail);
    return g_fail ? 1 : 0;
}

int main(int argc, char **argv)
{
    q3n_rng_seed(&g_rng, 20261123);
    CK(cudaStreamCreate(&g_stream));
    if (cublasCreate(&g_blas) != CUBLAS_STATUS_SUCCESS || cublasSetMathMode(g_blas, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cublas init failed\n");
        return 2;
    }
    if (argc >= 2 && strcmp(argv[1], "--bench-delta") == 0) {
        const int64_t T = argc > 2 ? atoll(argv[2]) : 16384, NK = argc > 3 ? atoll(argv[3]) : 16,
                      NV = argc > 4 ? atoll(argv[4]) : 32, DK = argc > 5 ? atoll(argv[5]) : 128;
        bench_delta(T, NK, NV, DK, DK, 64);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "--long") == 0) return long_context(argc > 2 ? atoll(argv[2]) : 32768);
    const int small = argc >= 2 && strcmp(argv[1], "--small") == 0;
    if (small) {
        case_rmsnorm(3, 64, 0);
        case_conv(5, 40, 4, 1);
        case_split_gates(3, 2, 4, 16, 16);
        case_delta_chunked(70, 2, 4, 16, 24, 64, -20.0, 0);
        case_delta_recurrent(2, 1, 2, 16, 16);
        case_attention(70, 3, 4, 2, 64, 1);
        case_attention(5, 3, 4, 2, 60, 0);
        case_attention(1, 300, 4, 2, 64, 1);
        case_moe(40, 64, 8, 2, 32, 0);
        case_moe(100, 128, 16, 4, 64, 1);
    } else {
        for (int bf = 0; bf < 2; bf++) {
            case_rmsnorm(7, 2048, bf);
            case_rmsnorm(33, 256, bf);
            case_rmsnorm(5, 60, bf);
        }
        case_conv(1, 100, 4, 1);
        case_conv(67, 8192, 4, 0);
        case_conv(5, 300, 3, 1);
        case_split_gates(5, 2, 4, 16, 24);
        case_split_gates(3, 16, 32, 128, 128);
        const int64_t Ts[] = {1, 63, 64, 65, 130, 200};
        for (int64_t T : Ts) case_delta_chunked(T, 2, 4, 128, 128, 64, -20.0, 0);
        case_delta_chunked(100, 1, 1, 16, 16, 64, -20.0, 0);   /* one head */
        case_delta_chunked(129, 1, 3, 60, 100, 64, -5.0, 0);   /* GQA 3, odd dims */
        case_delta_chunked(70, 2, 2, 256, 256, 64, -20.0, 0);  /* dims 256 */
        case_delta_chunked(90, 2, 4, 128, 128, 32, -1.0, 0);   /* C=32 */
        case_delta_chunked(40, 1, 2, 24, 40, 17, -1.0, 0);     /* odd C, the "odd" preset's dims */
        case_delta_chunked(300, 2, 4, 128, 128, 64, -0.05, 0); /* weak decay, 5 chunks */
        case_delta_chunked(130, 2, 4, 128, 128, 64, -20.0, 1); /* bf16 output */
        case_delta_recurrent(1, 2, 4, 128, 128);
        case_delta_recurrent(4, 1, 3, 60, 100);
        case_delta_recurrent(2, 2, 2, 256, 256);
        const int64_t HDs[] = {60, 100, 128, 256};
        for (int64_t HD : HDs) {
            case_attention(70, 0, 4, 2, HD, 0);
            case_attention(1, 700, 4, 2, HD, 0);
            case_attention(70, 0, 4, 2, HD, 1);
            case_attention(33, 40, 8, 2, HD, 1);
            case_attention(1, 700, 4, 2, HD, 1);
        }
        case_attention(130, 0, 1, 1, 128, 1); /* one head */
        /* q/k prep v3/v4 at the real model's 16 + 2 heads (18 rows: 3 for each of the 6 warps) and
         * at 24 + 4 (28 rows: warps take a fourth and fifth row) */
        case_attention(17, 0, 16, 2, 256, 1);
        case_attention(33, 40, 24, 4, 128, 1);
        case_moe(3, 128, 16, 4, 64, 0);
        case_moe(50, 128, 16, 4, 64, 0);
        case_moe(50, 256, 64, 10, 64, 1);
        case_moe(300, 256, 32, 4, 128, 1); /* several 64-row tiles per expert */
        case_moe(7, 128, 512, 10, 64, 1);  /* many empty experts */
        case_moe(600, 128, 8, 2, 64, 1);   /* ~150 rows per expert: 128-row tiles */
    }
    printf("%d cases, %d failed\n", g_cases, g_fail);
    if (g_fail) return 1;
    if (!small) {
        bench_delta(16384, 16, 32, 128, 128, 64);
        bench_delta(4096, 16, 32, 128, 128, 64);
        bench_attention(4096, 16, 2, 256);
        bench_attention(16384, 16, 2, 256);
        bench_sigmoid_gate(4096, 16, 256);
    }
    return 0;
}
