/* bench_model.cu — the CUDA session on the real-80B-A3B-dims 4-layer stack ("real-4l": 3 linear
 * + 1 full attention layer, 512 experts top-10, V = 151936), random weights drawn on the device.
 *
 *   bench_model [--dtype bf16|f32] [--prefill 4096,16384] [--decode-prompt 4096] [--decode-steps 32]
 *               [--long 32768] [--pack-experts] [--overlap-shared | --no-overlap-shared] [--default-check N]
 *
 * Prefill: tokens/s of one forward of T tokens from an empty cache, lm_head on the last token
 * only (as generation does), host wall clock around the synchronised call; best and mean of
 * `reps`. Decode: ms/token of one-token forwards after a prompt (lm_head + logits copy included),
 * eagerly and replayed from the CUDA graph; the per-phase split comes from an eager step. Then
 * --graph-check N steps run both ways after the same prompt must give bitwise equal logits.
 * Long: one prefill of --long tokens, then checks the last logits are finite.
 * --pack-experts runs all of it with run_options.pack_experts (the routed experts packed at open,
 * fast/cuda/experts_layout.cu), --overlap-shared / --no-overlap-shared with the prefill MoE blocks'
 * shared expert on a second stream or not (fast/cuda/side_stream.cu; on by default since session
 * 12). --default-check N then reopens the stack with the session's defaults (same seed, same
 * weights) and requires bitwise the same logits: the last token of a 37-token prefill and of every
 * --prefill length, and N decode steps after --decode-prompt. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../cuda_model.h"

extern "C" {
#include "../../../harness/synth.h"
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define TRY(call)                                                                                            \
    do {                                                                                                     \
        if ((call) != Q3N_OK) {                                                                              \
            fprintf(stderr, "bench_model: %s\n", err.msg);                                                   \
            return 2;                                                                                        \
        }                                                                                                    \
    } while (0)

/* FNV-1a over the bits of the last token's logits: two builds (variants of a kernel, commits) that
 * print the same value gave bitwise the same logits, the same seed and weights being drawn. */
static uint64_t logits_fnv(const float *logits, int64_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &logits[i], 4);
        for (int b = 0; b < 4; b++) h = (h ^ ((u >> (8 * b)) & 0xffu)) * 1099511628211ull;
    }
    return h;
}

/* The logits --default-check compares (V each, in out): the last token of a 37-token prefill, of each
 * prefill length, then `steps` decode steps after a `prompt`-token prefill. */
static enum q3n_status layout_logits(void *s, float *out, const int64_t *tok, const int64_t *Ts, int64_t nT,
                                     int64_t prompt, int64_t steps, int64_t V, struct q3n_error *err)
{
    int64_t at = 0;
    enum q3n_status st = Q3N_OK;
    for (int64_t i = -1; st == Q3N_OK && i < nT; i++) {
        cuda_impl.reset(s);
        st = cuda_session_forward_last(s, out + V * at++, tok, i < 0 ? 37 : Ts[i], err);
    }
    cuda_impl.reset(s);
    /* the prompt's logits go where the first step's will, which overwrite them */
    if (st == Q3N_OK) st = cuda_session_forward_last(s, out + V * at, tok, prompt, err);
    for (int64_t i = 0; st == Q3N_OK && i < steps; i++)
        st = cuda_session_forward_last(s, out + V * at++, tok + prompt + i, 1, err);
    return st;
}

int main(int argc, char **argv)
{
    struct q3n_error err = {};
    const char *dtype = "bf16", *prefill = "4096,16384";
    int64_t dprompt = 4096, dsteps = 32, longT = 0, gcheck = 8;
    int reps = 3, pack = 0, overlap = -1; /* -1: the session's default (SHARED_OVERLAP_DEFAULT) */
    int64_t pcheck = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dtype") && i + 1 < argc) dtype = argv[++i];
        else if (!strcmp(argv[i], "--prefill") && i + 1 < argc) prefill = argv[++i];
        else if (!strcmp(argv[i], "--decode-prompt") && i + 1 < argc) dprompt = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--decode-steps") && i + 1 < argc) dsteps = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--long") && i + 1 < argc) longT = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--graph-check") && i + 1 < argc) gcheck = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--pack-experts")) pack = 1;
        else if (!strcmp(argv[i], "--overlap-shared")) overlap = 1;
        else if (!strcmp(argv[i], "--no-overlap-shared")) overlap = 0;
        else if (!strcmp(argv[i], "--default-check") && i + 1 < argc) pcheck = atoll(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_model [--dtype bf16|f32] [--prefill T,T] [--decode-prompt P] "
                            "[--decode-steps N] [--long T] [--reps R] [--graph-check N] [--pack-experts] "
                            "[--overlap-shared | --no-overlap-shared] [--default-check N]\n");
            return 2;
        }
    }
    struct q3n_config cfg;
    TRY(q3n_synth_config(&cfg, "real-4l", &err));
    int64_t Ts[8], nT = 0, Tmax = dprompt + (dsteps > gcheck ? dsteps : gcheck) + 1;
    if (dprompt + pcheck + 1 > Tmax) Tmax = dprompt + pcheck + 1;
    for (const char *p = prefill; *p && nT < 8;) {
        Ts[nT] = atoll(p);
        if (Ts[nT] > Tmax) Tmax = Ts[nT];
        nT++;
        const char *c = strchr(p, ',');
        if (!c) break;
        p = c + 1;
    }
    if (longT > Tmax) Tmax = longT;
    struct q3n_run_options opt;
    q3n_run_options_default(&opt);
    opt.dtype = strcmp(dtype, "f32") == 0 ? Q3N_COMPUTE_F32 : Q3N_COMPUTE_BF16;
    opt.max_tokens = Tmax;
    opt.pack_experts = pack;
    void *s = NULL;
    double t0 = now_s();
    TRY(cuda_session_open_random(&s, &cfg, 1234, &opt, &err));
    if (overlap >= 0) TRY(cuda_session_shared_overlap(s, overlap, &err));
    printf("options: pack_experts=%d overlap_shared=%s\n", pack, overlap < 0 ? "default" : overlap ? "1" : "0");
    printf("config real-4l: D=%lld L=%lld (3 linear + 1 full) NH=%lld NKV=%lld HD=%lld NK=%lld NV=%lld DK=%lld "
           "E=%lld K=%lld I=%lld shared=%lld V=%lld dtype=%s; session open (device random weights) %.1f s\n",
           (long long)cfg.hidden_size, (long long)cfg.num_hidden_layers, (long long)cfg.num_attention_heads,
           (long long)cfg.num_key_value_heads, (long long)cfg.head_dim, (long long)cfg.linear_num_key_heads,
           (long long)cfg.linear_num_value_heads, (long long)cfg.linear_key_head_dim, (long long)cfg.num_experts,
           (long long)cfg.num_experts_per_tok, (long long)cfg.moe_intermediate_size,
           (long long)cfg.shared_expert_intermediate_size, (long long)cfg.vocab_size, dtype, now_s() - t0);
    int64_t *tok = (int64_t *)malloc(sizeof(int64_t) * (size_t)Tmax);
    float *logits = (float *)malloc(sizeof(float) * (size_t)cfg.vocab_size);
    for (int64_t i = 0; i < Tmax; i++) tok[i] = (i * 7919 + 13) % cfg.vocab_size;
    /* warm-up */
    cuda_impl.reset(s);
    TRY(cuda_session_forward_last(s, logits, tok, Ts[0] < 1024 ? Ts[0] : 1024, &err));
    for (int64_t i = 0; i < nT; i++) {
        const int64_t T = Ts[i];
        double best = 1e30, sum = 0;
        for (int r = 0; r < reps; r++) {
            cuda_impl.reset(s);
            TRY(cuda_session_sync(s, &err));
            const double a = now_s();
            TRY(cuda_session_forward_last(s, logits, tok, T, &err));
            const double dt = now_s() - a;
            sum += dt;
            if (dt < best) best = dt;
        }
        double ms4[4];
        TRY(cuda_session_profile(s, 1, NULL, &err));
        cuda_impl.reset(s);
        TRY(cuda_session_forward_last(s, logits, tok, T, &err));
        TRY(cuda_session_profile(s, 0, ms4, &err));
        printf("PROFILE prefill T=%lld (one extra run, CUDA events): deltanet mixers %.2f ms, attention mixer %.2f ms, "
               "MoE blocks %.2f ms, other (embed, norms, residuals) %.2f ms\n",
               (long long)T, ms4[0], ms4[1], ms4[2], ms4[3]);
        int finite = 1;
        for (int64_t v = 0; v < cfg.vocab_size; v++) finite &= isfinite(logits[v]) != 0;
        printf("RESULT cuda prefill T=%lld dtype=%s: best %.2f ms (%.0f tokens/s), mean %.2f ms over %d; logits "
               "finite=%d fnv=%016llx; kernels: %s\n",
               (long long)T, dtype, best * 1e3, (double)T / best, sum / reps * 1e3, reps, finite,
               (unsigned long long)logits_fnv(logits, cfg.vocab_size), cuda_impl.describe(s));
        fflush(stdout);
    }
    for (int graph = 0; graph < 2 && dsteps > 1; graph++) {
        TRY(cuda_session_decode_graph(s, graph, &err));
        cuda_impl.reset(s);
        TRY(cuda_session_forward_last(s, logits, tok, dprompt, &err));
        TRY(cuda_session_forward_last(s, logits, tok + dprompt, 1, &err)); /* first decode step: warm (capture) */
        double best = 1e30, gms = 0, cms = 0;
        TRY(cuda_session_decode_times(s, NULL, NULL, &err));
        const double a = now_s();
        for (int64_t i = 1; i < dsteps; i++) {
            const double b = now_s();
            TRY(cuda_session_forward_last(s, logits, tok + dprompt + i, 1, &err));
            const double e = now_s() - b;
            if (e < best) best = e;
        }
        const double dt = (now_s() - a) / (double)(dsteps - 1);
        TRY(cuda_session_decode_times(s, &gms, &cms, &err));
        int finite = 1;
        for (int64_t v = 0; v < cfg.vocab_size; v++) finite &= isfinite(logits[v]) != 0;
        printf("RESULT cuda decode (%s) after %lld-token prompt dtype=%s: %.3f ms/token (mean of %lld steps, best "
               "%.3f); logits finite=%d; graph: %s; kernels: %s\n",
               graph ? "graph" : "eager", (long long)dprompt, dtype, dt * 1e3, (long long)(dsteps - 1), best * 1e3,
               finite, cuda_session_graph_status(s), cuda_impl.describe(s));
        if (!graph) {
            double ms4[4];
            TRY(cuda_session_profile(s, 1, NULL, &err));
            TRY(cuda_session_forward_last(s, logits, tok + dprompt + dsteps, 1, &err));
            TRY(cuda_session_profile(s, 0, ms4, &err));
            printf("PROFILE decode step (eager, CUDA events): deltanet mixers %.3f ms, attention mixer %.3f ms, MoE "
                   "blocks %.3f ms, other %.3f ms, sum %.3f ms (device time without the lm_head)\n",
                   ms4[0], ms4[1], ms4[2], ms4[3], ms4[0] + ms4[1] + ms4[2] + ms4[3]);
        }
        if (graph)
            printf("TIMES decode graph replay: %.3f ms device per step (CUDA events around the replay: embed .. "
                   "lm_head .. float32 logits in pinned host memory), then the host copy to the caller %.3f ms\n",
                   gms, cms);
        fflush(stdout);
    }
    if (gcheck > 0) {
        const int64_t V = cfg.vocab_size;
        float *ref = (float *)malloc(sizeof(float) * (size_t)(V * gcheck));
        int64_t ndiff = 0, first = -1;
        for (int graph = 0; graph < 2; graph++) {
            TRY(cuda_session_decode_graph(s, graph, &err));
            cuda_impl.reset(s);
            TRY(cuda_session_forward_last(s, logits, tok, dprompt, &err));
            for (int64_t i = 0; i < gcheck; i++) {
                TRY(cuda_session_forward_last(s, graph ? logits : ref + i * V, tok + dprompt + i, 1, &err));
                if (graph)
                    for (int64_t v = 0; v < V; v++)
                        if (memcmp(&logits[v], &ref[i * V + v], sizeof(float)) != 0) {
                            ndiff++;
                            if (first < 0) first = i;
                        }
            }
        }
        printf("CHECK decode graph vs eager, %lld steps after a %lld-token prompt: %s (%lld logits differ, first "
               "step %lld); kernels: %s\n",
               (long long)gcheck, (long long)dprompt, ndiff == 0 ? "bitwise equal" : "DIFFERENT", (long long)ndiff,
               (long long)first, cuda_impl.describe(s));
        free(ref);
        fflush(stdout);
        if (ndiff) return 1;
    }
    if (longT > 0) {
        cuda_impl.reset(s);
        const double a = now_s();
        TRY(cuda_session_forward_last(s, logits, tok, longT, &err));
        const double dt = now_s() - a;
        int64_t nonfinite = 0;
        double amax = 0;
        for (int64_t v = 0; v < cfg.vocab_size; v++) {
            if (!isfinite(logits[v])) nonfinite++;
            else if (fabs(logits[v]) > amax) amax = fabs(logits[v]);
        }
        printf("RESULT cuda long prefill T=%lld dtype=%s: %.2f ms (%.0f tokens/s); last logits nonfinite=%lld "
               "max|logit|=%.3g\n",
               (long long)longT, dtype, dt * 1e3, (double)longT / dt, (long long)nonfinite, amax);
    }
    if (pcheck > 0) {
        const int64_t V = cfg.vocab_size, nl = 1 + nT + pcheck;
        float *a = (float *)malloc(sizeof(float) * (size_t)(V * nl)), *b = (float *)malloc(sizeof(float) * (size_t)(V * nl));
        char desc[2][512];
        TRY(layout_logits(s, a, tok, Ts, nT, dprompt, pcheck, V, &err));
        snprintf(desc[0], sizeof desc[0], "%s", cuda_impl.describe(s));
        cuda_impl.close(s);
        s = NULL;
        opt.pack_experts = 0;
        TRY(cuda_session_open_random(&s, &cfg, 1234, &opt, &err));
        TRY(layout_logits(s, b, tok, Ts, nT, dprompt, pcheck, V, &err));
        snprintf(desc[1], sizeof desc[1], "%s", cuda_impl.describe(s));
        int64_t ndiff = 0, first = -1;
        for (int64_t i = 0; i < V * nl; i++)
            if (memcmp(&a[i], &b[i], sizeof(float)) != 0 && ndiff++ == 0) first = i / V;
        printf("CHECK pack_experts=%d overlap_shared=%d (-1: default) vs the defaults (prefill T=37 and --prefill, %lld decode steps "
               "after %lld): %s (%lld logits differ, first in set %lld); kernels: [%s] vs [%s]\n",
               pack, overlap, (long long)pcheck, (long long)dprompt, ndiff == 0 ? "bitwise equal" : "DIFFERENT", (long long)ndiff,
               (long long)first, desc[0], desc[1]);
        free(a);
        free(b);
        fflush(stdout);
        if (ndiff) {
            cuda_impl.close(s);
            return 1;
        }
    }
    cuda_impl.close(s);
    free(tok);
    free(logits);
    return 0;
}
