/* cmd_bench_cuda.c — `q3n bench --impl cuda`: prefill and decode speed of the CUDA port at the
 * real dims, its roofline, and (--versus-transformers) transformers' own speed in the same run.
 *
 *   q3n bench --impl cuda [--preset real-4l] [--dtype bf16|f32] [--tokens 4096,16384]
 *             [--decode 32] [--decode-prompt 4096] [--repeat 3] [--seed 1]
 *             [--peak-bw 3.35e12] [--peak-flops 989e12] [--pack-experts]
 *             [--versus-transformers] [--python python3] [--tf-script fast/cuda/dev/bench_transformers.py]
 *
 * Weights are drawn on the device (cuda_session_open_random: no 13 GB host copy at the real dims);
 * --pack-experts re-lays the routed experts out at open (run_options.pack_experts; the kernels line
 * says "experts=packed", or why the session kept the checkpoint layout).
 * Prefill: one forward of T tokens from an empty cache, logits of the last token (as generation
 * does), host clock around the synchronised call, best of --repeat after a warm-up; then one more
 * run with CUDA events per phase. Decode: ms/token over --decode one-token steps after a
 * --decode-prompt prompt (the first step is a warm-up), logits copied to the host every step.
 * Each figure is printed beside its two rooflines (harness/roofline.h: block by block, the one the
 * targets are set against, and overlapped) for the peak bandwidth and
 * FLOP rate given (defaults: H100 SXM datasheet, bf16 dense). --versus-transformers runs the
 * transformers script on the same GPU after q3n has released it, relays its RESULT lines and
 * prints q3n's speed-up over each transformers path. Exit: 0, 1 when transformers failed, 2 on
 * bad arguments or a CUDA error. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "args.h"
#include "clock.h"
#include "cmds.h"
#include "impl.h"
#include "roofline.h"
#include "synth.h"
#ifdef HAVE_CUDA
#include "../fast/cuda/cuda_model.h"
#endif

#define MAX_TS 8

struct cuda_bench_args {
    const char *preset, *dtype, *python, *tf_script;
    int64_t Ts[MAX_TS];
    int nT;
    long long decode, prompt, repeat, seed;
    double peak_bw, peak_flops;
    int versus_tf, pack_experts;
};

struct measured {
    double prefill_ms[MAX_TS];
    double decode_ms;
};


static void usage(void)
{
    fprintf(stderr, "usage: q3n bench --impl cuda [--preset real-4l] [--dtype bf16|f32] [--tokens T[,T...]] [--decode N]\n"
                    "                 [--decode-prompt P] [--repeat R] [--seed S] [--peak-bw B/s] [--peak-flops F/s]\n"
                    "                 [--pack-experts] [--versus-transformers] [--python PY] [--tf-script PATH]\n");
}

static int parse_args(int argc, char **argv, struct cuda_bench_args *a)
{
    *a = (struct cuda_bench_args){.preset = "real-4l", .dtype = "bf16", .python = "python3",
                                  .tf_script = "fast/cuda/dev/bench_transformers.py", .Ts = {4096, 16384}, .nT = 2,
                                  .decode = 32, .prompt = 4096, .repeat = 3, .seed = 1, .peak_bw = 3.35e12,
                                  .peak_flops = 989e12};
    for (int i = 0; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1, flag = 0;
        if (strcmp(k, "bench") == 0 && i == 0) continue;
        if (strcmp(k, "--versus-transformers") == 0) a->versus_tf = flag = 1;
        else if (strcmp(k, "--pack-experts") == 0) a->pack_experts = flag = 1;
        else if (!v) ok = 0;
        else if (strcmp(k, "--impl") == 0) ok = strcmp(v, "cuda") == 0;
        else if (strcmp(k, "--preset") == 0) a->preset = v;
        else if (strcmp(k, "--dtype") == 0) ok = (strcmp(v, "bf16") == 0 || strcmp(v, "f32") == 0) && (a->dtype = v);
        else if (strcmp(k, "--tokens") == 0) ok = q3n_arg_i64_list(v, 1, a->Ts, MAX_TS, &a->nT);
        else if (strcmp(k, "--decode") == 0) ok = q3n_arg_ll(v, 0, &a->decode) && a->decode != 1;
        else if (strcmp(k, "--decode-prompt") == 0) ok = q3n_arg_ll(v, 1, &a->prompt);
        else if (strcmp(k, "--repeat") == 0) ok = q3n_arg_ll(v, 1, &a->repeat);
        else if (strcmp(k, "--seed") == 0) ok = q3n_arg_ll(v, 0, &a->seed);
        else if (strcmp(k, "--peak-bw") == 0) ok = q3n_arg_pos_double(v, &a->peak_bw);
        else if (strcmp(k, "--peak-flops") == 0) ok = q3n_arg_pos_double(v, &a->peak_flops);
        else if (strcmp(k, "--python") == 0) a->python = v;
        else if (strcmp(k, "--tf-script") == 0) a->tf_script = v;
        else ok = 0;
        if (!ok) {
            fprintf(stderr, "q3n bench: bad argument '%s'%s%s\n", k, v && !flag ? " " : "", v && !flag ? v : "");
            usage();
            return 0;
        }
        if (!flag) i++;
    }
    if (a->versus_tf && strcmp(a->preset, "real-4l") != 0) {
        fprintf(stderr, "q3n bench: --versus-transformers builds the real-4l stack: use --preset real-4l\n");
        return 0;
    }
    if (strchr(a->python, '\'') || strchr(a->tf_script, '\'')) {
        fprintf(stderr, "q3n bench: --python / --tf-script must not contain a single quote\n");
        return 0;
    }
    return 1;
}

#ifdef HAVE_CUDA
static void print_floor(const char *what, const struct q3n_roofline *r, double ms, const struct cuda_bench_args *a)
{
    printf("  roofline %s: %.3f ms block by block (%.0f %% of it in bandwidth-bound blocks), %.3f ms overlapped "
           "(%s-bound: %.2f GB at %.2f TB/s, %.2f TFLOP at %.0f TFLOP/s); measured / floor = %.2fx (%.1f %% of the "
           "block-by-block roofline, %.1f %% of the overlapped one)\n",
           what, 1e3 * r->serial_seconds, 100.0 * r->serial_bytes_share, 1e3 * r->seconds,
           r->bytes_bound ? "bandwidth" : "compute", 1e-9 * (r->weight_bytes + r->other_bytes), 1e-12 * a->peak_bw,
           1e-12 * r->flops, 1e-12 * a->peak_flops, ms / (1e3 * r->serial_seconds),
           100.0 * 1e3 * r->serial_seconds / ms, 100.0 * 1e3 * r->seconds / ms);
}

/* The CUDA-event phases of one run beside their block-by-block floors (ms4: delta-rule mixers,
 * attention mixers, MoE/MLP, other; the events stop before the lm_head, so "other" is compared with
 * nothing and the floor of embedding + lm_head is printed apart). */
static void print_phases(const char *what, const double ms4[4], const struct q3n_roofline *r)
{
    static const char *const names[3] = {"delta-rule mixers", "attention mixers", "MoE/MLP"};
    printf("  phases of %s (CUDA events; in brackets the block-by-block floor and measured / floor):", what);
    for (int i = 0; i < 3; i++) {
        const double f = 1e3 * r->phase_seconds[i];
        if (f > 0)
            printf(" %s %.3f ms (%.3f, %.2fx),", names[i], ms4[i], f, ms4[i] / f);
        else
            printf(" %s %.3f ms,", names[i], ms4[i]);
    }
    printf(" other %.3f ms; floor of embedding + lm_head %.3f ms (the lm_head runs after the events)\n", ms4[3],
           1e3 * r->phase_seconds[Q3N_PHASE_OTHER]);
}

#define CTRY(call)                                                                                                     \
    do {                                                                                                               \
        if ((call) != Q3N_OK) {                                                                                        \
            fprintf(stderr, "q3n bench: %s\n", err.msg);                                                               \
            goto fail;                                                                                                 \
        }                                                                                                              \
    } while (0)

/* Runs the q3n side; fills m. Returns 0, or 2 after printing the error. */
static int bench_q3n(const struct q3n_config *cfg, const struct cuda_bench_args *a, struct measured *m)
{
    struct q3n_error err = {0};
    struct q3n_run_options opt;
    q3n_run_options_default(&opt);
    opt.dtype = strcmp(a->dtype, "f32") == 0 ? Q3N_COMPUTE_F32 : Q3N_COMPUTE_BF16;
    int64_t Tmax = a->prompt + a->decode + 1;
    for (int i = 0; i < a->nT; i++) Tmax = a->Ts[i] > Tmax ? a->Ts[i] : Tmax;
    opt.max_tokens = Tmax;
    opt.pack_experts = a->pack_experts;
    const double wbytes = opt.dtype == Q3N_COMPUTE_F32 ? 4.0 : 2.0;
    void *s = NULL;
    int64_t *tok = malloc(sizeof(int64_t) * (size_t)Tmax);
    float *logits = malloc(sizeof(float) * (size_t)cfg->vocab_size);
    if (!tok || !logits) {
        fprintf(stderr, "q3n bench: out of memory for %lld tokens\n", (long long)Tmax);
        goto fail;
    }
    for (int64_t i = 0; i < Tmax; i++) tok[i] = (int64_t)(((uint64_t)i * 2654435761ull + (uint64_t)a->seed) % (uint64_t)cfg->vocab_size);
    double t0 = q3n_now_s();
    CTRY(cuda_session_open_random(&s, cfg, (uint64_t)a->seed, &opt, &err));
    printf("  session: weights drawn on the device in %.1f s\n", q3n_now_s() - t0);
    cuda_impl.reset(s);
    CTRY(cuda_session_forward_last(s, logits, tok, a->Ts[0] < 1024 ? a->Ts[0] : 1024, &err)); /* warm-up */
    for (int i = 0; i < a->nT; i++) {
        const int64_t T = a->Ts[i];
        double best = 1e30;
        for (long long r = 0; r < a->repeat; r++) {
            cuda_impl.reset(s);
            CTRY(cuda_session_sync(s, &err));
            const double t = q3n_now_s();
            CTRY(cuda_session_forward_last(s, logits, tok, T, &err));
            const double dt = q3n_now_s() - t;
            best = dt < best ? dt : best;
        }
        double ms4[4];
        CTRY(cuda_session_profile(s, 1, NULL, &err));
        cuda_impl.reset(s);
        CTRY(cuda_session_forward_last(s, logits, tok, T, &err));
        CTRY(cuda_session_profile(s, 1, ms4, &err));
        int64_t bad = 0;
        for (int64_t v = 0; v < cfg->vocab_size; v++) bad += !isfinite(logits[v]);
        m->prefill_ms[i] = 1e3 * best;
        printf("prefill T=%lld: %.2f ms = %.0f tokens/s (best of %lld)%s\n", (long long)T, 1e3 * best, (double)T / best,
               a->repeat, bad ? " NON-FINITE LOGITS" : "");
        struct q3n_roofline r;
        q3n_roofline_prefill(cfg, T, wbytes, a->peak_bw, a->peak_flops, &r);
        print_phases("one more prefill", ms4, &r);
        print_floor("prefill", &r, 1e3 * best, a);
        printf("  kernels: %s\n", cuda_impl.describe(s)); /* of this T (the version choice depends on T) */
        if (bad) goto fail;
    }
    if (a->decode > 0) {
        cuda_impl.reset(s);
        CTRY(cuda_session_forward_last(s, logits, tok, a->prompt, &err));
        CTRY(cuda_session_forward_last(s, logits, tok + a->prompt, 1, &err)); /* warm step */
        const double t = q3n_now_s();
        for (long long i = 1; i < a->decode; i++) CTRY(cuda_session_forward_last(s, logits, tok + a->prompt + i, 1, &err));
        const double ms = 1e3 * (q3n_now_s() - t) / (double)(a->decode - 1);
        double ms4[4];
        CTRY(cuda_session_profile(s, 1, NULL, &err));
        CTRY(cuda_session_forward_last(s, logits, tok + a->prompt + a->decode, 1, &err));
        CTRY(cuda_session_profile(s, 1, ms4, &err));
        m->decode_ms = ms;
        printf("decode after a %lld-token prompt: %.3f ms/token (mean of %lld steps)\n", a->prompt, ms, a->decode - 1);
        struct q3n_roofline r;
        q3n_roofline_decode(cfg, a->prompt + 1, wbytes, a->peak_bw, a->peak_flops, &r);
        print_phases("one more decode step, eager", ms4, &r);
        print_floor("decode", &r, ms, a);
        printf("  kernels: %s\n", cuda_impl.describe(s));
    }
    cuda_impl.close(s);
    free(tok);
    free(logits);
    return 0;
fail:
    if (s) cuda_impl.close(s);
    free(tok);
    free(logits);
    return 2;
}
#endif

/* What the relayed transformers lines are compared with, and how many RESULT figures came. */
struct tf_versus {
    const struct cuda_bench_args *a;
    const struct measured *m;
    int results;
};

/* Prints q3n's speed-up over one relayed RESULT line (prefill at a length q3n ran, or decode). */
static void versus_line(const char *line, void *ctx)
{
    struct tf_versus *v = ctx;
    const char *at;
    long long T;
    double ms;
    if ((at = strstr(line, "prefill T=")) && sscanf(at, "prefill T=%lld: best %lf ms", &T, &ms) == 2) {
        v->results++;
        for (int i = 0; i < v->a->nT; i++)
            if (v->a->Ts[i] == T && v->m->prefill_ms[i] > 0)
                printf("    q3n is %.1fx faster than this at T=%lld\n", ms / v->m->prefill_ms[i], T);
    } else if ((at = strstr(line, "prompt: ")) && sscanf(at, "prompt: %lf ms/token", &ms) == 1) {
        v->results++;
        if (v->m->decode_ms > 0) printf("    q3n decode is %.1fx faster than this\n", ms / v->m->decode_ms);
    }
}

/* Runs the transformers script, relays its lines, prints q3n's speed-up over each of its
 * RESULT figures. Returns 0, or 1 when the script failed or printed no RESULT. */
static int versus_transformers(const struct cuda_bench_args *a, const struct measured *m)
{
    char toks[256] = "", cmd[2048];
    size_t used = 0;
    for (int i = 0; i < a->nT; i++)
        used += (size_t)snprintf(toks + used, sizeof toks - used, "%s%lld", i ? "," : "", (long long)a->Ts[i]);
    long long steps = a->decode > 8 ? 8 : (a->decode > 1 ? a->decode : 2);
    snprintf(cmd, sizeof cmd, "'%s' '%s' --prefill %s --decode-prompt %lld --decode-steps %lld 2>&1", a->python,
             a->tf_script, toks, a->prompt, steps);
    printf("transformers, same GPU, same run: %s\n", cmd);
    fflush(stdout);
    static const char *const relayed[] = {"RESULT", "torch ", NULL};
    struct tf_versus v = {.a = a, .m = m};
    const int st = q3n_bench_relay(cmd, relayed, versus_line, &v, NULL, 0);
    if (st != 0 || v.results == 0) {
        fprintf(stderr, "q3n bench: transformers run failed (status %d, %d results): run the command above to see why\n",
                st, v.results);
        return 1;
    }
    return 0;
}

int q3n_cmd_bench_cuda(int argc, char **argv)
{
    struct cuda_bench_args a;
    if (!parse_args(argc, argv, &a)) return 2;
#ifndef HAVE_CUDA
    fprintf(stderr, "q3n bench: this q3n was built without CUDA (no nvcc at build time)\n");
    return 2;
#endif
    struct q3n_config cfg;
    struct q3n_error err = {0};
    if (q3n_synth_config(&cfg, a.preset, &err) != Q3N_OK) {
        fprintf(stderr, "q3n bench: %s\n", err.msg);
        return 2;
    }
    printf("q3n bench: impl=cuda preset=%s dtype=%s layers=%lld D=%lld E=%lld top-%lld V=%lld seed=%lld\n", a.preset,
           a.dtype, (long long)cfg.num_hidden_layers, (long long)cfg.hidden_size, (long long)cfg.num_experts,
           (long long)cfg.num_experts_per_tok, (long long)cfg.vocab_size, a.seed);
    struct measured m = {{0}, 0};
#ifdef HAVE_CUDA
    int rc = bench_q3n(&cfg, &a, &m);
    if (rc != 0) return rc;
#endif
    return a.versus_tf ? versus_transformers(&a, &m) : 0;
}
