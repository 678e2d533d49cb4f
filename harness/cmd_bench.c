/* cmd_bench.c — `q3n bench`: prefill and decode speed of one implementation on a synthetic
 * model (harness/synth.h presets), with peak memory and the kernel path that ran.
 *
 *   q3n bench --impl cpu|ref [--preset bench-1k] [--tokens 1024] [--decode 16]
 *   (--impl cuda has its own options: cmd_bench_cuda.c)
 *             [--threads N] [--repeat 3] [--layers L] [--seed 1] [--versus IMPL]
 *             [--versus-transformers [--python PY] [--tf-script fast/cpu/bench_transformers.py]]
 *
 * Prints prefill tokens/s (best of --repeat prompts, each from a reset session), decode
 * ms/token (mean over --decode one-token steps after a prefill), peak RSS (VmHWM), describe().
 * For --impl cpu it also prints the time per phase and, for the GEMM-bound phases (dense
 * projections and MoE / MLP), the time a bare cblas_sgemm of exactly the GEMM shapes those
 * phases issued takes in this process, and the ratio bare / phase (1.0 = the phase runs at
 * bare-GEMM speed; issue 6 asks for >= 0.5). --layers keeps the first L layers of the preset
 * (to time a slow implementation on fewer layers; say so when extrapolating). --versus IMPL
 * then runs one prefill of the same prompt on the same model with IMPL in the same process,
 * prints its time, the speedup, and how far the two logits are apart (rel L2, max |diff|,
 * argmax agreement); it fails (exit 1) when rel L2 exceeds 1e-4, the float32 logits bound used
 * here. --checkpoint f32|bf16 writes the synthetic model as a safetensors checkpoint of that
 * dtype into a temporary folder and benchmarks the model q3n_model_open loads from it (bf16
 * weights are converted to float32 once, at open: the open time and RSS show that cost).
 * --versus-transformers then times transformers on the CPU on the same model and prompt
 * (cmd_bench_tf.c; golden/.venv's Python by default) and prints the speed-up over it. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <dirent.h>
#include <unistd.h>

#include "../fast/cpu/model.h"
#include "args.h"
#include "checkpoint.h"
#include "clock.h"
#include "cmds.h"
#include "impl.h"
#include "synth.h"


/* Peak resident set (VmHWM) in MiB, -1 if unknown. */
static double peak_rss_mib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1.0;
    char line[256];
    double kib = -1.0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) kib = strtod(line + 6, NULL);
    fclose(f);
    return kib < 0 ? -1.0 : kib / 1024.0;
}

static void usage(void)
{
    fprintf(stderr, "usage: q3n bench --impl cpu|ref|cuda [--preset NAME] [--tokens T] [--decode N] [--threads N]\n"
                    "                 [--repeat R] [--layers L] [--seed S] [--versus IMPL] [--checkpoint f32|bf16]\n"
                    "                 [--versus-transformers] [--python PY] [--tf-script PATH]\n");
}

/* Times a bare cblas_sgemm (sgemv for M = 1) over every logged shape: x [M,K] row-major times
 * W [N,K]^T into C [M,N], each shape with its own W region (like distinct weights). Best of
 * `repeat` passes, in seconds; -1 when out of memory. */
static double bare_gemm_seconds(const struct cpu_profile *p, int repeat)
{
    int64_t maxA = 1, maxC = 1, sumB = 0;
    for (int64_t i = 0; i < p->n_shapes; i++) {
        const struct cpu_gemm_shape *g = &p->shapes[i];
        if (g->M * g->K > maxA) maxA = g->M * g->K;
        if (g->M * g->N > maxC) maxC = g->M * g->N;
        sumB += g->N * g->K;
    }
    float *A = malloc((size_t)maxA * sizeof(float)), *B = malloc((size_t)(sumB + 1) * sizeof(float));
    float *C = malloc((size_t)maxC * sizeof(float));
    double best = -1.0;
    if (!A || !B || !C) goto done;
    for (int64_t i = 0; i < maxA; i++) A[i] = (float)((i % 13) - 6) * 0.01f;
    for (int64_t i = 0; i < sumB; i++) B[i] = (float)((i % 7) - 3) * 0.01f;
    for (int r = 0; r < repeat; r++) {
        double t0 = q3n_now_s();
        const float *W = B;
        for (int64_t i = 0; i < p->n_shapes; i++) {
            const struct cpu_gemm_shape *g = &p->shapes[i];
            if (g->M == 1)
                cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint)g->N, (blasint)g->K, 1.0f, W, (blasint)g->K, A, 1,
                            0.0f, C, 1);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)g->M, (blasint)g->N, (blasint)g->K,
                            1.0f, A, (blasint)g->K, W, (blasint)g->K, 0.0f, C, (blasint)g->N);
            W += g->N * g->K;
        }
        double t = q3n_now_s() - t0;
        if (best < 0 || t < best) best = t;
    }
done:
    free(A);
    free(B);
    free(C);
    return best;
}

int q3n_cmd_bench(int argc, char **argv)
{
    for (int i = 0; i + 1 < argc; i++)
        if (strcmp(argv[i], "--impl") == 0 && strcmp(argv[i + 1], "cuda") == 0) return q3n_cmd_bench_cuda(argc, argv);
    const char *impl_name = NULL, *preset = "bench-1k", *versus = NULL, *ckpt = NULL;
    const char *tf_python = access("golden/.venv/bin/python", X_OK) == 0 ? "golden/.venv/bin/python" : "python3";
    const char *tf_script = "fast/cpu/bench_transformers.py";
    int versus_tf = 0;
    long long T = 1024, N = 16, threads = 0, repeat = 3, layers = 0, seed = 1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (strcmp(a, "--versus-transformers") == 0) {
            versus_tf = 1;
            continue;
        }
        if (strcmp(a, "--impl") == 0 && v)
            impl_name = v;
        else if (strcmp(a, "--preset") == 0 && v)
            preset = v;
        else if (strcmp(a, "--versus") == 0 && v)
            versus = v;
        else if (strcmp(a, "--checkpoint") == 0 && v && (strcmp(v, "f32") == 0 || strcmp(v, "bf16") == 0))
            ckpt = v;
        else if (strcmp(a, "--python") == 0 && v)
            tf_python = v;
        else if (strcmp(a, "--tf-script") == 0 && v)
            tf_script = v;
        else if (strcmp(a, "--tokens") == 0 && v)
            ok = q3n_arg_ll(v, 1, &T);
        else if (strcmp(a, "--decode") == 0 && v)
            ok = q3n_arg_ll(v, 0, &N);
        else if (strcmp(a, "--threads") == 0 && v)
            ok = q3n_arg_ll(v, 0, &threads);
        else if (strcmp(a, "--repeat") == 0 && v)
            ok = q3n_arg_ll(v, 1, &repeat);
        else if (strcmp(a, "--layers") == 0 && v)
            ok = q3n_arg_ll(v, 1, &layers);
        else if (strcmp(a, "--seed") == 0 && v)
            ok = q3n_arg_ll(v, 0, &seed);
        else if (strcmp(a, "bench") == 0 && i == 0)
            continue; /* tolerate the subcommand name in argv[0] */
        else
            ok = 0;
        if (!ok) {
            fprintf(stderr, "q3n bench: bad argument '%s'%s%s\n", a, v ? " " : "", v ? v : "");
            usage();
            return 2;
        }
        i++;
    }
    if (!impl_name) {
        usage();
        return 2;
    }
    const struct q3n_impl *impl = q3n_impl_find(impl_name);
    if (!impl) {
        fprintf(stderr, "q3n bench: implementation '%s' is not built into this binary\n", impl_name);
        return 2;
    }

    struct q3n_error err;
    struct q3n_config cfg;
    struct q3n_model *model = NULL;
    void *session = NULL;
    float *logits = NULL, *last = NULL;
    int64_t *tokens = NULL;
    struct cpu_profile prof = {0};
    int rc = 2;
    if (q3n_synth_config(&cfg, preset, &err) != Q3N_OK) {
        fprintf(stderr, "q3n bench: %s\n", err.msg);
        goto done;
    }
    if (layers > 0) {
        if (layers > cfg.num_hidden_layers) {
            fprintf(stderr, "q3n bench: --layers %lld > the preset's %lld layers\n", layers,
                    (long long)cfg.num_hidden_layers);
            goto done;
        }
        cfg.num_hidden_layers = layers;
    }
    double t_make = q3n_now_s();
    if (q3n_synth_model_create(&model, &cfg, (uint64_t)seed, &err) != Q3N_OK) {
        fprintf(stderr, "q3n bench: %s\n", err.msg);
        goto done;
    }
    t_make = q3n_now_s() - t_make;
    char ckdir[4096] = "";
    double t_write = 0.0, t_open = 0.0, rss_before_open = 0.0;
    if (ckpt) {
        const char *tmp = getenv("TMPDIR");
        char base[2048];
        snprintf(base, sizeof base, "%s/q3n-bench-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(base)) {
            fprintf(stderr, "q3n bench: cannot create a temporary folder under %s\n", tmp && *tmp ? tmp : "/tmp");
            goto done;
        }
        snprintf(ckdir, sizeof ckdir, "%s/ckpt", base);
        struct q3n_checkpoint_layout lay = {.dtype = strcmp(ckpt, "bf16") == 0 ? Q3N_ST_BF16 : Q3N_ST_F32,
                                            .fused_experts = 0, .shards = 1};
        double t0 = q3n_now_s();
        enum q3n_status wst = q3n_checkpoint_write(ckdir, model, &lay, &err);
        t_write = q3n_now_s() - t0;
        q3n_model_close(model);
        model = NULL;
        if (wst != Q3N_OK) {
            fprintf(stderr, "q3n bench: writing the %s checkpoint: %s\n", ckpt, err.msg);
            rmdir(base);
            goto done;
        }
        rss_before_open = peak_rss_mib();
        t0 = q3n_now_s();
        enum q3n_status ost = q3n_model_open(&model, ckdir, &err);
        t_open = q3n_now_s() - t0;
        if (ost != Q3N_OK) {
            fprintf(stderr, "q3n bench: opening the %s checkpoint: %s\n", ckpt, err.msg);
            q3n_bench_remove_flat_dir(ckdir);
            rmdir(base);
            goto done;
        }
        q3n_bench_remove_flat_dir(ckdir); /* the open model keeps what it needs (mapped or converted) */
        rmdir(base);
    }

    struct q3n_run_options opt;
    q3n_run_options_default(&opt);
    opt.max_tokens = T + N;
    opt.n_threads = (int)threads;
    if (impl->open(&session, model, &opt, &err) != Q3N_OK) {
        fprintf(stderr, "q3n bench: %s\n", err.msg);
        goto done;
    }
    int64_t V = cfg.vocab_size;
    logits = malloc((size_t)(T * V) * sizeof(float));
    last = malloc((size_t)V * sizeof(float));
    tokens = malloc((size_t)(T + N) * sizeof(int64_t));
    if (!logits || !last || !tokens) {
        fprintf(stderr, "q3n bench: out of memory for T=%lld logits\n", T);
        goto done;
    }
    for (int64_t t = 0; t < T + N; t++) tokens[t] = (int64_t)((t * 2654435761ull + (uint64_t)seed) % (uint64_t)V);

    int is_cpu = strcmp(impl->name, "cpu") == 0;
    if (is_cpu) {
        prof.cap = 64 + cfg.num_hidden_layers * (8 + 3 * (cfg.num_experts > 0 ? cfg.num_experts : 1) + 3);
        prof.shapes = malloc((size_t)prof.cap * sizeof *prof.shapes);
        if (!prof.shapes) goto done;
    }
    printf("q3n bench: impl=%s preset=%s layers=%lld D=%lld T=%lld decode=%lld threads=%lld repeat=%lld seed=%lld\n",
           impl->name, preset, (long long)cfg.num_hidden_layers, (long long)cfg.hidden_size, T, N, threads, repeat,
           seed);
    printf("  model: %.1f s to generate %.0f MiB of float weights\n", t_make,
           (double)q3n_config_param_count(&cfg) * 4.0 / 1048576.0);
    if (ckpt)
        printf("  checkpoint: %s safetensors written in %.1f s; q3n_model_open took %.2f s (%s); peak RSS before "
               "the open %.0f MiB\n",
               ckpt, t_write, t_open,
               strcmp(ckpt, "bf16") == 0 ? "bf16 -> float32 conversion once" : "float32 mapped in place", rss_before_open);

    double best = -1.0, best_phase[CPU_PHASE_COUNT] = {0};
    for (long long r = 0; r < repeat; r++) {
        impl->reset(session);
        struct cpu_profile run = prof;
        run.n_shapes = 0;
        run.overflow = 0;
        memset(run.seconds, 0, sizeof run.seconds);
        if (is_cpu) cpu_session_set_profile(session, &run);
        double t0 = q3n_now_s();
        if (impl->forward(session, logits, tokens, T, NULL, &err) != Q3N_OK) {
            fprintf(stderr, "q3n bench: prefill: %s\n", err.msg);
            goto done;
        }
        double t = q3n_now_s() - t0;
        if (is_cpu) cpu_session_set_profile(session, NULL);
        printf("  prefill run %lld: %.3f s\n", r + 1, t);
        if (best < 0 || t < best) {
            best = t;
            memcpy(best_phase, run.seconds, sizeof best_phase);
            prof.n_shapes = run.n_shapes;
            prof.overflow = run.overflow;
        }
    }
    printf("prefill: %.1f tokens/s (%.3f s for T=%lld, best of %lld)\n", (double)T / best, best, T, repeat);
    memcpy(last, logits + (T - 1) * V, (size_t)V * sizeof(float)); /* the decode steps overwrite row 0 */

    double dec = 0.0;
    struct cpu_profile dprof = prof;
    dprof.n_shapes = 0;
    dprof.cap = 0; /* phase times only */
    memset(dprof.seconds, 0, sizeof dprof.seconds);
    if (is_cpu) cpu_session_set_profile(session, &dprof);
    for (long long s = 0; s < N; s++) {
        double t0 = q3n_now_s();
        if (impl->forward(session, logits, tokens + T + s, 1, NULL, &err) != Q3N_OK) {
            fprintf(stderr, "q3n bench: decode step %lld: %s\n", s, err.msg);
            goto done;
        }
        dec += q3n_now_s() - t0;
    }
    if (is_cpu) cpu_session_set_profile(session, NULL);
    if (N > 0) {
        printf("decode: %.3f ms/token (mean of %lld steps after the %lld-token prefill)\n", 1e3 * dec / (double)N, N, T);
        if (is_cpu)
            printf("  decode phases ms/token: projections %.3f, moe+mlp %.3f, delta rule %.3f, attention %.3f, other %.3f\n",
                   1e3 * dprof.seconds[CPU_PHASE_PROJ] / (double)N, 1e3 * dprof.seconds[CPU_PHASE_MOE] / (double)N,
                   1e3 * dprof.seconds[CPU_PHASE_DELTA] / (double)N, 1e3 * dprof.seconds[CPU_PHASE_ATTN] / (double)N,
                   1e3 * (dec - dprof.seconds[0] - dprof.seconds[1] - dprof.seconds[2] - dprof.seconds[3]) / (double)N);
    }
    printf("peak RSS: %.0f MiB (VmHWM)\n", peak_rss_mib());
    printf("kernels: %s\n", impl->describe ? impl->describe(session) : "(no describe)");

    if (is_cpu) {
        static const char *const names[CPU_PHASE_COUNT] = {"projections", "moe+mlp", "delta rule", "attention"};
        double sum = 0.0;
        for (int p = 0; p < CPU_PHASE_COUNT; p++) {
            printf("  phase %-12s %8.3f s (%4.1f%%)\n", names[p], best_phase[p], 100.0 * best_phase[p] / best);
            sum += best_phase[p];
        }
        printf("  phase %-12s %8.3f s (%4.1f%%)\n", "other", best - sum, 100.0 * (best - sum) / best);
        if (prof.overflow) {
            printf("gemm: shape log overflowed (%lld entries); no ratio\n", (long long)prof.cap);
        } else {
            double gemm_phase = best_phase[CPU_PHASE_PROJ] + best_phase[CPU_PHASE_MOE];
            double bare = bare_gemm_seconds(&prof, (int)repeat);
            double flops = 0.0;
            for (int64_t i = 0; i < prof.n_shapes; i++)
                flops += 2.0 * (double)prof.shapes[i].M * (double)prof.shapes[i].N * (double)prof.shapes[i].K;
            if (bare < 0) {
                printf("gemm: out of memory for the bare sgemm run\n");
            } else {
                printf("gemm-bound phases: %.3f s for %lld GEMMs, %.1f GFLOP/s\n", gemm_phase,
                       (long long)prof.n_shapes, flops / gemm_phase * 1e-9);
                printf("bare cblas_sgemm, same shapes: %.3f s, %.1f GFLOP/s\n", bare, flops / bare * 1e-9);
                printf("ratio bare/phase: %.2f (issue 6 asks >= 0.50)\n", bare / gemm_phase);
            }
        }
    }
    rc = 0;
    if (versus) {
        const struct q3n_impl *vi = q3n_impl_find(versus);
        void *vs = NULL;
        float *vl = malloc((size_t)(T * V) * sizeof(float));
        if (!vi || !vl) {
            fprintf(stderr, "q3n bench: --versus '%s' is not built in (or out of memory)\n", versus);
            free(vl);
            rc = 2;
            goto done;
        }
        /* the bench impl's logits of the prompt again (decode overwrote row 0) */
        impl->reset(session);
        if (impl->forward(session, logits, tokens, T, NULL, &err) != Q3N_OK || vi->open(&vs, model, &opt, &err) != Q3N_OK) {
            fprintf(stderr, "q3n bench: --versus: %s\n", err.msg);
            free(vl);
            rc = 2;
            goto done;
        }
        double t0 = q3n_now_s();
        enum q3n_status vst = vi->forward(vs, vl, tokens, T, NULL, &err);
        double vt = q3n_now_s() - t0;
        if (vst != Q3N_OK) {
            fprintf(stderr, "q3n bench: --versus %s prefill: %s\n", versus, err.msg);
            vi->close(vs);
            free(vl);
            rc = 2;
            goto done;
        }
        double dd = 0.0, yy = 0.0, maxd = 0.0;
        int64_t agree = 0;
        for (int64_t t = 0; t < T; t++) {
            int64_t a1 = 0, a2 = 0;
            for (int64_t v = 0; v < V; v++) {
                double a = logits[t * V + v], b = vl[t * V + v], d = a - b;
                dd += d * d;
                yy += b * b;
                if (!(fabs(d) <= maxd)) maxd = fabs(d); /* NaN sticks */
                if (logits[t * V + v] > logits[t * V + a1]) a1 = v;
                if (vl[t * V + v] > vl[t * V + a2]) a2 = v;
            }
            agree += a1 == a2;
        }
        double rel = sqrt(dd) / sqrt(yy);
        printf("versus %s: prefill %.3f s (%.1f tokens/s); %s is %.1fx faster (%s best of %lld vs one %s run)\n",
               versus, vt, (double)T / vt, impl->name, vt / best, impl->name, repeat, versus);
        printf("versus %s: logits rel_l2=%.3e max|diff|=%.3e argmax agree %lld/%lld [%s]\n", versus, rel, maxd,
               (long long)agree, T, vi->describe ? vi->describe(vs) : "");
        int within = rel <= 1e-4;
        printf("versus %s: %s (float32 logits bound rel_l2 <= 1e-4)\n", versus, within ? "AGREE" : "DISAGREE");
        if (!within) rc = 1;
        vi->close(vs);
        free(vl);
    }
    if (versus_tf) {
        const struct q3n_bench_tf a = {.python = tf_python, .script = tf_script, .T = T, .N = N,
                                       .threads = (int)threads, .repeat = (int)repeat, .q3n_prefill_s = best,
                                       .q3n_decode_ms = N > 0 ? 1e3 * dec / (double)N : 0.0};
        const int trc = q3n_bench_versus_transformers_cpu(model, tokens, last, &a);
        if (trc > rc) rc = trc;
    }
done:
    if (session) impl->close(session);
    q3n_model_close(model);
    free(last);
    free(logits);
    free(tokens);
    free(prof.shapes);
    return rc;
}
