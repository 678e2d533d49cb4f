/* test_attn2.cu — the attention kernels of session 2: device-position decode launchers (CUDA graph
 * decode), flash prefill v3 and the split-K decode kernel, each validated against ref_attention_forward
 * (linked from libq3n.a) and against the previous kernel before it is timed; decode split v4 against
 * split v3 (both versions' pos0 and device-position launches bitwise equal); flash v5 (S = Q K^T and
 * P V on wgmma), v7 (v5 with the warpgroups taking turns), v6 (v5 with a producer warpgroup and
 * mbarriers), v8 (v5 with P V overlapping the next tile's softmax) and v4 (S only) bitwise against
 * flash v3 on every shape tried (compute capability 9.0).
 *
 * Inputs are bf16-rounded random normals; outputs are NaN-poisoned with a sentinel guard; every case
 * runs REPEAT times and must be bitwise identical. One line per case; exit status 1 on any failure.
 *
 *   test_attn2            all cases, then timings (v2 .. v8) at T=4096/16384 and decode at S=4096/32768
 *                         (decode: rows_v1, v4 and v3 eager; v3 and v4 in a graph of 20 calls)
 *   test_attn2 --quick    cases only
 *   test_attn2 --bench    the prefill timings only (T=4096/16384; each kernel still checked against v2) */
#include <algorithm>

#include "devkit.cuh"

#define E (&g_err) /* launchers take `err` by name */

/* Whether the default bf16 prefill kernel for (T, HD) is flash v5 (compute capability 9.0; v4, v6, v7 too). */
static int flash_wg_ok_for_test(int64_t T, int64_t HD)
{
    /* any wgmma default (v5, v8): the prefix, so that a new default cannot skip these cases */
    return strncmp(cuda_attention_kernel(T, HD, Q3N_COMPUTE_BF16), "flash_wgmma_bf16_v", 18) == 0;
}

static std::vector<float> randb(int64_t n, int bf)
{
    auto v = randn(n, 1.0);
    return bf ? rounded(v) : v;
}

/* ---- prefill / forward: new kernel vs ref_attention_forward and vs the previous kernel ---- */
static void case_forward(int64_t T, int64_t pos0, int64_t NH, int64_t NKV, int64_t HD, int bf, int ver = 0)
{
    const int64_t S = pos0 + T, n = T * NH * HD;
    auto q = randb(n, bf), kc = randb(S * NKV * HD, bf), vc = randb(S * NKV * HD, bf);
    std::vector<float> want((size_t)n), scr((size_t)S);
    ref_attention_forward(want.data(), q.data(), kc.data(), vc.data(), scr.data(), T, pos0, NH, NKV, HD);
    const size_t as = bf ? 2 : 4;
    dbuf dq = up(q, bf), dk = up(kc, bf), dv = up(vc, bf), o = dnew(n * as), o1 = dnew(n * as);
    dbuf scratch = dnew((size_t)(cuda_attention_scratch(T, NH, HD, S) + 1) * 4);
    std::vector<float> first, old;
    int det = 1, det1 = 1;
    for (int r = 0; r < REPEAT; r++) {
        poison(o), poison(o1);
        if (ver == 0)
            RUN(cuda_attention_forward(o.p, dq.p, dk.p, dv.p, (float *)scratch.p, T, pos0, NH, NKV, HD, DT(bf),
                                       g_stream, E));
        else
            RUN(cuda_attention_forward_ver(o.p, dq.p, dk.p, dv.p, (float *)scratch.p, T, pos0, NH, NKV, HD, ver,
                                           DT(bf), g_stream, E));
        RUN(cuda_attention_forward_ver(o1.p, dq.p, dk.p, dv.p, (float *)scratch.p, T, pos0, NH, NKV, HD, 1, DT(bf),
                                       g_stream, E));
        CK(cudaStreamSynchronize(g_stream));
        auto got = down(o, n, bf), got1 = down(o1, n, bf);
        if (r == 0) first = got, old = got1;
        else det &= same_bits(first, got), det1 &= same_bits(old, got1);
    }
    char name[200];
    snprintf(name, sizeof name, "attention[%s] ver=%d T=%lld pos0=%lld NH=%lld NKV=%lld HD=%lld %s",
             T == 1 ? cuda_attention_decode_kernel(NH, NKV, HD, DT(bf), 0) : cuda_attention_kernel(T, HD, DT(bf)),
             ver, (long long)T, (long long)pos0, (long long)NH, (long long)NKV, (long long)HD, dtn(bf));
    check(name, first, want, bf ? 2e-2 : 2e-6, det, &o);
    snprintf(name, sizeof name, "  old kernel (ver 1) T=%lld pos0=%lld HD=%lld %s", (long long)T, (long long)pos0,
             (long long)HD, dtn(bf));
    check(name, old, want, bf ? 2e-2 : 2e-6, det1, &o1);
    snprintf(name, sizeof name, "  new vs old T=%lld pos0=%lld HD=%lld %s", (long long)T, (long long)pos0,
             (long long)HD, dtn(bf));
    check(name, first, old, bf ? 2e-2 : 2e-6, 1, NULL);
    dfree(dq), dfree(dk), dfree(dv), dfree(o), dfree(o1), dfree(scratch);
}

/* ---- the wgmma flash kernels against flash v3 (mma.sync): the default (v8), v7 (v5 with the
 * warpgroups taking turns on the tensor cores), v4 (S only), v6 (v5 with a producer warpgroup), v5
 * (S and P V on wgmma) and v8 (v5 with P V overlapping the next tile's softmax), each bitwise v3,
 * 3 runs each, guard; and the default vs the ref ---- */
static void case_flash_wg(int64_t T, int64_t pos0, int64_t NH, int64_t NKV, int64_t HD, int ref)
{
    if (!flash_wg_ok_for_test(T, HD)) return;
    const int64_t S = pos0 + T, n = T * NH * HD;
    auto q = randb(n, 1), kc = randb(S * NKV * HD, 1), vc = randb(S * NKV * HD, 1);
    const int vers[] = {0, 6, 3, 5, 4, 7}; /* cuda_attention_forward_ver's `old` */
    const char *names[] = {cuda_attention_kernel(T, HD, Q3N_COMPUTE_BF16), "flash_wgmma_bf16_v7",
                           "flash_wgmma_bf16_v4", "flash_wgmma_bf16_v6", "flash_wgmma_bf16_v5",
                           "flash_wgmma_bf16_v8"};
    const int nv = 6;
    dbuf dq = up(q, 1), dk = up(kc, 1), dv = up(vc, 1), o3 = dnew(n * 2);
    std::vector<dbuf> o;
    for (int v = 0; v < nv; v++) o.push_back(dnew(n * 2));
    std::vector<std::vector<float>> first(nv);
    std::vector<float> v3;
    int det[6] = {1, 1, 1, 1, 1, 1};
    for (int r = 0; r < REPEAT; r++) {
        poison(o3);
        for (int v = 0; v < nv; v++) {
            poison(o[v]);
            RUN(cuda_attention_forward_ver(o[v].p, dq.p, dk.p, dv.p, NULL, T, pos0, NH, NKV, HD, vers[v],
                                           Q3N_COMPUTE_BF16, g_stream, E));
        }
        RUN(cuda_attention_forward_ver(o3.p, dq.p, dk.p, dv.p, NULL, T, pos0, NH, NKV, HD, 2, Q3N_COMPUTE_BF16,
                                       g_stream, E));
        CK(cudaStreamSynchronize(g_stream));
        for (int v = 0; v < nv; v++) {
            auto got = down(o[v], n, 1);
            if (r == 0) first[v] = got;
            else det[v] &= same_bits(first[v], got);
        }
        if (r == 0) v3 = down(o3, n, 1);
    }
    char name[200];
    for (int v = 0; v < nv; v++) {
        if (v == 0)
            snprintf(name, sizeof name, "flash[%s] == flash v3 bitwise T=%lld pos0=%lld NH=%lld NKV=%lld HD=%lld",
                     names[v], (long long)T, (long long)pos0, (long long)NH, (long long)NKV, (long long)HD);
        else
            snprintf(name, sizeof name, "  flash[%s] == flash v3 bitwise T=%lld pos0=%lld HD=%lld", names[v],
                     (long long)T, (long long)pos0, (long long)HD);
        check(name, first[v], v3, 0.0, det[v] && same_bits(first[v], v3), &o[v]);
    }
    if (ref) {
        std::vector<float> want((size_t)n), scr((size_t)S);
        ref_attention_forward(want.data(), q.data(), kc.data(), vc.data(), scr.data(), T, pos0, NH, NKV, HD);
        snprintf(name, sizeof name, "  flash[%s] vs ref T=%lld pos0=%lld HD=%lld", names[0], (long long)T,
                 (long long)pos0, (long long)HD);
        check(name, first[0], want, 2e-2, det[0], &o[0]);
    }
    dfree(dq), dfree(dk), dfree(dv), dfree(o3);
    for (auto &b : o) dfree(b);
}

/* ---- device-position decode, captured once in a CUDA graph and replayed at several positions, against
 * the pos0 launchers (bitwise: q, both caches, attention output) and against ref_attention_forward ---- */
static void case_dpos(int64_t S_max, int64_t NH, int64_t NKV, int64_t HD, int bf, const std::vector<int64_t> &positions)
{
    const int64_t rot = (HD / 4) & ~(int64_t)1, nq = NH * HD, nc = S_max * NKV * HD;
    const size_t as = bf ? 2 : 4;
    auto qg = randb(2 * nq, bf), kp = randb(NKV * HD, bf), vp = randb(NKV * HD, bf), kc0 = randb(nc, bf),
         vc0 = randb(nc, bf);
    auto qw = randu(HD, -0.5, 0.5), kw = randu(HD, -0.5, 0.5);
    dbuf dqg = up(qg, bf), dkp = up(kp, bf), dvp = up(vp, bf), dqw = up(qw, 0), dkw = up(kw, 0);
    dbuf kinit = up(kc0, bf), vinit = up(vc0, bf);
    dbuf kA = dnew(nc * as), vA = dnew(nc * as), qA = dnew(nq * as), oA = dnew(nq * as);
    dbuf kB = dnew(nc * as), vB = dnew(nc * as), qB = dnew(nq * as), oB = dnew(nq * as);
    dbuf sA = dnew((size_t)(cuda_attention_scratch(1, NH, HD, S_max) + 1) * 4);
    dbuf sB = dnew((size_t)(cuda_attention_scratch(1, NH, HD, S_max) + 1) * 4);
    dbuf dpos = dnew(sizeof(int64_t));
    /* capture once */
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CK(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeThreadLocal));
    RUN(cuda_attn_qk_prep_dpos(qB.p, NULL, kB.p, vB.p, NULL, dqg.p, dkp.p, dvp.p, (float *)dqw.p, (float *)dkw.p,
                               (const int64_t *)dpos.p, NH, NKV, HD, rot, 1e7, 1e-6, DT(bf), g_stream, E));
    RUN(cuda_attention_decode_dpos(oB.p, qB.p, kB.p, vB.p, (float *)sB.p, (const int64_t *)dpos.p, S_max, NH, NKV, HD,
                                   DT(bf), g_stream, E));
    CK(cudaStreamEndCapture(g_stream, &graph));
    CK(cudaGraphInstantiate(&exec, graph, 0));
    for (int64_t pos : positions) {
        std::vector<float> first;
        int det = 1, same = 1;
        for (int r = 0; r < REPEAT; r++) {
            for (dbuf *b : {&qA, &oA, &qB, &oB}) poison(*b);
            CK(cudaMemcpy(kA.p, kinit.p, kinit.bytes, cudaMemcpyDeviceToDevice));
            CK(cudaMemcpy(vA.p, vinit.p, vinit.bytes, cudaMemcpyDeviceToDevice));
            CK(cudaMemcpy(kB.p, kinit.p, kinit.bytes, cudaMemcpyDeviceToDevice));
            CK(cudaMemcpy(vB.p, vinit.p, vinit.bytes, cudaMemcpyDeviceToDevice));
            CK(cudaMemcpy(dpos.p, &pos, sizeof pos, cudaMemcpyHostToDevice));
            RUN(cuda_attn_qk_prep(qA.p, NULL, kA.p, vA.p, NULL, dqg.p, dkp.p, dvp.p, (float *)dqw.p, (float *)dkw.p, 1,
                                  pos, NH, NKV, HD, rot, 1e7, 1e-6, DT(bf), g_stream, E));
            RUN(cuda_attention_forward(oA.p, qA.p, kA.p, vA.p, (float *)sA.p, 1, pos, NH, NKV, HD, DT(bf), g_stream,
                                       E));
            CK(cudaGraphLaunch(exec, g_stream));
            CK(cudaStreamSynchronize(g_stream));
            auto a = down(oA, nq, bf), b = down(oB, nq, bf);
            same &= same_bits(a, b) && same_bits(down(qA, nq, bf), down(qB, nq, bf)) &&
                    same_bits(down(kA, nc, bf), down(kB, nc, bf)) && same_bits(down(vA, nc, bf), down(vB, nc, bf));
            if (r == 0) first = b; else det &= same_bits(first, b);
        }
        /* reference on the caches the pos0 path produced (qk_prep itself is checked by test_kernels) */
        auto q = down(qA, nq, bf), kc = down(kA, (pos + 1) * NKV * HD, bf), vc = down(vA, (pos + 1) * NKV * HD, bf);
        std::vector<float> want((size_t)nq), scr((size_t)(pos + 1));
        ref_attention_forward(want.data(), q.data(), kc.data(), vc.data(), scr.data(), 1, pos, NH, NKV, HD);
        char name[200];
        snprintf(name, sizeof name, "decode_dpos(graph)[%s] pos=%lld S_max=%lld NH=%lld NKV=%lld HD=%lld %s",
                 cuda_attention_decode_kernel(NH, NKV, HD, DT(bf), 0), (long long)pos, (long long)S_max, (long long)NH, (long long)NKV,
                 (long long)HD, dtn(bf));
        check(name, first, want, bf ? 2e-2 : 2e-6, det, &oB);
        snprintf(name, sizeof name, "  dpos == pos0 launchers bitwise (q, kc, vc, out) pos=%lld", (long long)pos);
        check(name, first, first, 0.0, same, &kB);
    }
    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(graph));
    for (dbuf *b : {&dqg, &dkp, &dvp, &dqw, &dkw, &kinit, &vinit, &kA, &vA, &qA, &oA, &kB, &vB, &qB, &oB, &sA, &sB,
                    &dpos})
        dfree(*b);
}

/* ---- split-K decode v4 vs v3 vs ref_attention_forward, direct launches: for each position, the pos0
 * launch (S = pos+1) and the device-position launch (S = S_max) of each version must be bitwise equal,
 * each REPEAT times bitwise; v4 and v3 within bf16 rounding of the reference and of each other ---- */
static void case_decode_v34(int64_t S_max, int64_t NH, int64_t NKV, int64_t HD, const std::vector<int64_t> &positions)
{
    const int64_t nq = NH * HD, nc = S_max * NKV * HD;
    auto q = randb(nq, 1), kc = randb(nc, 1), vc = randb(nc, 1);
    dbuf dq = up(q, 1), dk = up(kc, 1), dv = up(vc, 1), dpos = dnew(sizeof(int64_t));
    dbuf o[2][2] = {{dnew(nq * 2), dnew(nq * 2)}, {dnew(nq * 2), dnew(nq * 2)}}; /* [v3, v4][pos0, dpos] */
    dbuf scr = dnew((size_t)(cuda_attention_scratch(1, NH, HD, S_max) + 1) * 4);
    const int vers[2] = {3, 4};
    for (int64_t pos : positions) {
        std::vector<float> first[2][2];
        int det = 1, same[2] = {1, 1};
        CK(cudaMemcpy(dpos.p, &pos, sizeof pos, cudaMemcpyHostToDevice));
        for (int r = 0; r < REPEAT; r++) {
            for (int v = 0; v < 2; v++) {
                poison(o[v][0]), poison(o[v][1]), poison(scr);
                RUN(cuda_attention_decode_ver(o[v][0].p, dq.p, dk.p, dv.p, (float *)scr.p, pos, NULL, pos + 1, NH, NKV,
                                              HD, vers[v], Q3N_COMPUTE_BF16, g_stream, E));
                poison(scr);
                RUN(cuda_attention_decode_ver(o[v][1].p, dq.p, dk.p, dv.p, (float *)scr.p, 0, (const int64_t *)dpos.p,
                                              S_max, NH, NKV, HD, vers[v], Q3N_COMPUTE_BF16, g_stream, E));
                CK(cudaStreamSynchronize(g_stream));
                for (int m = 0; m < 2; m++) {
                    auto got = down(o[v][m], nq, 1);
                    if (r == 0) first[v][m] = got;
                    else det &= same_bits(first[v][m], got);
                }
                same[v] &= same_bits(first[v][0], first[v][1]);
            }
        }
        std::vector<float> want((size_t)nq), sc((size_t)(pos + 1));
        ref_attention_forward(want.data(), q.data(), kc.data(), vc.data(), sc.data(), 1, pos, NH, NKV, HD);
        char name[200];
        for (int v = 1; v >= 0; v--) {
            snprintf(name, sizeof name, "decode[%s] pos=%lld S_max=%lld NH=%lld NKV=%lld HD=%lld",
                     cuda_attention_decode_kernel(NH, NKV, HD, Q3N_COMPUTE_BF16, vers[v]), (long long)pos,
                     (long long)S_max, (long long)NH, (long long)NKV, (long long)HD);
            check(name, first[v][0], want, 2e-2, det, &o[v][0]);
            snprintf(name, sizeof name, "  v%d dpos (S_max) == pos0 (S=pos+1) bitwise pos=%lld", vers[v],
                     (long long)pos);
            check(name, first[v][1], first[v][0], 0.0, same[v], &o[v][1]);
        }
        snprintf(name, sizeof name, "  v4 vs v3 pos=%lld", (long long)pos);
        check(name, first[1][0], first[0][0], 2e-2, 1, NULL);
    }
    for (dbuf *b : {&dq, &dk, &dv, &dpos, &o[0][0], &o[0][1], &o[1][0], &o[1][1], &scr}) dfree(*b);
}

/* ---- timings: CUDA events around each call, median of N after a warm-up ---- */
static float time_calls(int N, void (*fn)(void *), void *arg)
{
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    fn(arg);
    fn(arg);
    std::vector<float> ms;
    for (int r = 0; r < N; r++) {
        CK(cudaEventRecord(a, g_stream));
        fn(arg);
        CK(cudaEventRecord(b, g_stream));
        CK(cudaEventSynchronize(b));
        float t;
        CK(cudaEventElapsedTime(&t, a, b));
        ms.push_back(t);
    }
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
}

struct fwd_args {
    void *o, *q, *k, *v;
    float *scratch;
    int64_t T, pos0, NH, NKV, HD;
    int old;
    cudaGraphExec_t exec;
};
static void fwd_call(void *p)
{
    fwd_args *a = (fwd_args *)p;
    RUN(cuda_attention_forward_ver(a->o, a->q, a->k, a->v, a->scratch, a->T, a->pos0, a->NH, a->NKV, a->HD, a->old,
                                   Q3N_COMPUTE_BF16, g_stream, E));
}
static void graph_call(void *p) { CK(cudaGraphLaunch(((fwd_args *)p)->exec, g_stream)); }
struct dec_args {
    void *o, *q, *k, *v;
    float *scratch;
    int64_t pos0, S, NH, NKV, HD;
    int ver;
};
static void dec_call(void *p)
{
    dec_args *a = (dec_args *)p;
    RUN(cuda_attention_decode_ver(a->o, a->q, a->k, a->v, a->scratch, a->pos0, NULL, a->S, a->NH, a->NKV, a->HD,
                                  a->ver, Q3N_COMPUTE_BF16, g_stream, E));
}

static void bench_prefill(int64_t T, int64_t NH, int64_t NKV, int64_t HD)
{
    const size_t n = (size_t)(T * NH * HD), nk = (size_t)(T * NKV * HD);
    auto hq = randb((int64_t)n, 1), hk = randb((int64_t)nk, 1), hv = randb((int64_t)nk, 1);
    dbuf q = up(hq, 1), kc = up(hk, 1), vc = up(hv, 1), o = dnew(n * 2);
    const double flops = 4.0 * NH * HD * (double)T * (T + 1) / 2.0;
    /* ver 1 = flash_mma_bf16_v2, 2 = flash_mma_bf16_v3, 3 .. 6 = flash_wgmma_bf16_v4 .. v7
     * (compute capability 9.0), 0 = what cuda_attention_forward runs (v8 there) */
    const int vers[] = {1, 2, 3, 4, 5, 6, 0};
    const char *names[] = {"old: flash_mma_bf16_v2", "old: flash_mma_bf16_v3", "old: flash_wgmma_bf16_v4",
                           "old: flash_wgmma_bf16_v5", "alt: flash_wgmma_bf16_v6", "alt: flash_wgmma_bf16_v7",
                           cuda_attention_kernel(T, HD, Q3N_COMPUTE_BF16)};
    const int wg = flash_wg_ok_for_test(T, HD);
    std::vector<float> ref;
    for (int vi = 0; vi < 7; vi++) {
        if (vi >= 2 && vi <= 5 && !wg) continue;
        fwd_args a = {o.p, q.p, kc.p, vc.p, NULL, T, 0, NH, NKV, HD, vers[vi], NULL};
        poison(o);
        fwd_call(&a);
        CK(cudaStreamSynchronize(g_stream));
        auto got = down(o, (int64_t)n, 1);
        const float ms = time_calls(10, fwd_call, &a);
        printf("BENCH attention prefill[%s] T=%lld NH=%lld NKV=%lld HD=%lld causal bf16: %.3f ms (median of 10), "
               "%.0f TFLOP/s\n",
               names[vi], (long long)T, (long long)NH, (long long)NKV, (long long)HD, ms, flops / (ms * 1e-3) / 1e12);
        if (vi == 0) {
            ref = got;
        } else {
            char name[120];
            snprintf(name, sizeof name, "  prefill ver %d vs v2 at T=%lld (full size)", vers[vi], (long long)T);
            check(name, got, ref, 2e-2, 1, &o);
        }
    }
    dfree(q), dfree(kc), dfree(vc), dfree(o);
}

static void bench_decode(int64_t S, int64_t NH, int64_t NKV, int64_t HD)
{
    const size_t nk = (size_t)(S * NKV * HD);
    auto hq = randb(NH * HD, 1), hk = randb((int64_t)nk, 1), hv = randb((int64_t)nk, 1);
    dbuf q = up(hq, 1), kc = up(hk, 1), vc = up(hv, 1), o = dnew(NH * HD * 2);
    dbuf scratch = dnew((size_t)cuda_attention_scratch(1, NH, HD, S) * 4), dpos = dnew(8);
    const int64_t pos = S - 1;
    CK(cudaMemcpy(dpos.p, &pos, 8, cudaMemcpyHostToDevice));
    for (int old = 1; old >= 0; old--) {
        fwd_args a = {o.p, q.p, kc.p, vc.p, (float *)scratch.p, 1, S - 1, NH, NKV, HD, old, NULL};
        const float ms = time_calls(50, fwd_call, &a);
        printf("BENCH attention decode[%s] S=%lld NH=%lld NKV=%lld HD=%lld bf16: %.2f us (median of 50, launch incl.)\n",
               old ? "old: rows_v1(split-K decode)" : cuda_attention_decode_kernel(NH, NKV, HD, Q3N_COMPUTE_BF16, 0),
               (long long)S, (long long)NH, (long long)NKV, (long long)HD, ms * 1e3);
    }
    {
        dec_args a = {o.p, q.p, kc.p, vc.p, (float *)scratch.p, S - 1, S, NH, NKV, HD, 3};
        const float ms = time_calls(50, dec_call, &a);
        printf("BENCH attention decode[%s] S=%lld NH=%lld NKV=%lld HD=%lld bf16: %.2f us (median of 50, launch "
               "incl.)\n",
               cuda_attention_decode_kernel(NH, NKV, HD, Q3N_COMPUTE_BF16, 3), (long long)S, (long long)NH,
               (long long)NKV, (long long)HD, ms * 1e3);
    }
    /* the graph-decode form: 20 device-position calls in one graph, per-call device time; v3 (old) then
     * what cuda_attention_decode_dpos runs (v4) */
    for (int ver = 3; ver <= 4; ver++) {
        fwd_args a = {o.p, q.p, kc.p, vc.p, (float *)scratch.p, 1, S - 1, NH, NKV, HD, 0, NULL};
        cudaGraph_t graph;
        CK(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeThreadLocal));
        for (int i = 0; i < 20; i++) {
            if (ver == 4)
                RUN(cuda_attention_decode_dpos(o.p, q.p, kc.p, vc.p, (float *)scratch.p, (const int64_t *)dpos.p, S,
                                               NH, NKV, HD, Q3N_COMPUTE_BF16, g_stream, E));
            else
                RUN(cuda_attention_decode_ver(o.p, q.p, kc.p, vc.p, (float *)scratch.p, 0, (const int64_t *)dpos.p, S,
                                              NH, NKV, HD, 3, Q3N_COMPUTE_BF16, g_stream, E));
        }
        CK(cudaStreamEndCapture(g_stream, &graph));
        CK(cudaGraphInstantiate(&a.exec, graph, 0));
        const float ms = time_calls(20, graph_call, &a);
        printf("BENCH attention decode_dpos in a graph [%s] S=%lld: %.2f us per call (20 calls per graph, median of "
               "20; 2x%lld MB of K/V: %.2f TB/s)\n",
               cuda_attention_decode_kernel(NH, NKV, HD, Q3N_COMPUTE_BF16, ver), (long long)S, ms * 1e3 / 20,
               (long long)(S * NKV * HD * 2 >> 20), 2.0 * S * NKV * HD * 2 / (ms * 1e-3 / 20) / 1e12);
        CK(cudaGraphExecDestroy(a.exec));
        CK(cudaGraphDestroy(graph));
    }
    dfree(q), dfree(kc), dfree(vc), dfree(o), dfree(scratch), dfree(dpos);
}

int main(int argc, char **argv)
{
    q3n_rng_seed(&g_rng, 20261123);
    CK(cudaStreamCreate(&g_stream));
    const int quick = argc >= 2 && strcmp(argv[1], "--quick") == 0;
    if (argc >= 2 && strcmp(argv[1], "--bench") == 0) {
        bench_prefill(4096, 16, 2, 256);
        bench_prefill(16384, 16, 2, 256);
        return g_fail ? 1 : 0;
    }
    /* device-position decode (graph) vs the pos0 launchers */
    for (int bf = 1; bf >= 0; bf--) {
        case_dpos(300, 4, 2, 64, bf, {0, 1, 255, 256, 299});
        case_dpos(1000, 16, 2, 256, bf, {5, 511, 512, 999});
        case_dpos(700, 8, 1, 128, bf, {0, 640, 699});
    }
    /* split-K decode v4 vs v3: S = 1, splits of 64/128 and their edges, the last position; group sizes
     * 8 (real), 16 (two chunks of 8), 12 (chunks of 4), 4, 2, 3 and 1 (chunks of 1) */
    case_decode_v34(1000, 16, 2, 256, {0, 1, 62, 63, 64, 65, 127, 128, 129, 700, 999});
    case_decode_v34(4096, 16, 2, 256, {4095});
    case_decode_v34(300, 8, 1, 128, {0, 63, 64, 200, 299});
    case_decode_v34(200, 32, 2, 256, {0, 130, 199});
    case_decode_v34(200, 12, 1, 256, {5, 199});
    case_decode_v34(150, 4, 1, 256, {0, 77, 149});
    case_decode_v34(150, 4, 2, 128, {64, 149});
    case_decode_v34(150, 6, 2, 128, {0, 100, 149});
    /* more live splits than v4's grid.y (one wave of blocks): blocks loop over their splits */
    case_decode_v34(20000, 16, 2, 256, {9000, 19999});
    case_decode_v34(1000, 64, 64, 128, {500, 999});
    /* forward: T in {1, 63, 64, 65, 130, 300, 1000, 4096}, continuations, HD 256/128, GQA 8 */
    const int64_t Ts[] = {1, 63, 64, 65, 130, 300, 1000, 4096};
    for (int64_t T : Ts) /* the CPU reference is quadratic: fewer heads at T=4096 */
        T <= 1000 ? case_forward(T, 0, 16, 2, 256, 1) : case_forward(T, 0, 2, 1, 256, 1);
    for (int64_t T : Ts)
        if (T <= 1000) case_forward(T, 0, 8, 1, 128, 1);
    case_forward(65, 100, 16, 2, 256, 1);
    case_forward(130, 700, 16, 2, 256, 1);
    case_forward(1, 4095, 16, 2, 256, 1);
    case_forward(1, 777, 8, 1, 128, 1);
    case_forward(63, 1, 4, 2, 128, 1);
    case_forward(300, 64, 4, 1, 256, 1);
    case_forward(70, 3, 4, 2, 64, 1);
    case_forward(33, 40, 8, 2, 100, 1);
    case_forward(65, 0, 16, 2, 256, 0);
    case_forward(1, 700, 16, 2, 256, 0);
    /* flash v5 and v4 == v3 bitwise: T around the 64-key tiles and 128-query blocks, continuations (pos0 > 0),
     * HD 256 / 128 / 64 and padded (200 -> 256, 72 -> 128), GQA 8 / 4 / 1, the real dims */
    if (!flash_wg_ok_for_test(64, 256)) printf("flash v4/v5 (wgmma) not on this device: their cases skipped\n");
    const int64_t T4[] = {2, 63, 64, 65, 127, 128, 129, 300, 1000};
    for (int64_t T : T4) case_flash_wg(T, 0, 16, 2, 256, T <= 300);
    for (int64_t T : T4) case_flash_wg(T, 0, 8, 1, 128, 0);
    case_flash_wg(65, 100, 16, 2, 256, 1);
    case_flash_wg(130, 700, 16, 2, 256, 1);
    case_flash_wg(300, 64, 4, 1, 256, 0);
    case_flash_wg(200, 3, 4, 4, 64, 1);
    case_flash_wg(129, 17, 8, 2, 200, 1);
    case_flash_wg(100, 0, 4, 2, 72, 1);
    case_flash_wg(4096, 0, 16, 2, 256, 0);
    if (!quick) case_flash_wg(16384, 0, 16, 2, 256, 0);
    printf("%d cases, %d failed\n", g_cases, g_fail);
    if (g_fail) return 1;
    if (!quick) {
        bench_prefill(4096, 16, 2, 256); /* first: the clocks are up for the decode timings */
        bench_prefill(16384, 16, 2, 256);
        bench_decode(4096, 16, 2, 256);
        bench_decode(32768, 16, 2, 256);
    }
    return g_fail ? 1 : 0;
}
