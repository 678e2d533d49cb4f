/* cmd_bench_tf.c — `q3n bench --impl cpu|ref --versus-transformers`: transformers on the CPU, on
 * the model and prompt q3n just ran, in the same process run. That is what a user without q3n
 * runs on a CPU (cmd_bench_cuda.c does the same on the GPU).
 *
 * How: the synthetic model is written as a float32 safetensors checkpoint (q3n_checkpoint_write:
 * config.json + per-expert weights) into a temporary folder, together with the token ids (int64)
 * and q3n's last-token prefill logits (float32). Then fast/cpu/bench_transformers.py (by default
 * with golden/.venv's Python: `make golden-deps`) loads the checkpoint with transformers, times
 * prefill and decode on the same number of threads, and compares its logits with q3n's. q3n relays
 * the script's RESULT lines and prints its own speed-up over each. The logits must agree within
 * rel L2 1e-4, the float32 bound `--versus` uses: otherwise the two did not run the same model, and
 * the speed-up means nothing (exit 1). The folder is removed afterwards, whatever happened. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dirent.h>
#include <unistd.h>

#include "checkpoint.h"
#include "cmds.h"

#define TF_LOGITS_BOUND 1e-4

void q3n_bench_remove_flat_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char path[4096];
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* Writes n items of `size` bytes to path; 0 on success, else prints why. */
static int write_raw(const char *path, const void *data, size_t size, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "q3n bench: cannot create %s\n", path);
        return -1;
    }
    const int ok = fwrite(data, size, n, f) == n;
    if (fclose(f) != 0 || !ok) {
        fprintf(stderr, "q3n bench: writing %s failed\n", path);
        return -1;
    }
    return 0;
}

int q3n_bench_relay(const char *cmd, const char *const *prefixes, void (*on_line)(const char *line, void *ctx),
                    void *ctx, char *last, size_t last_cap)
{
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[2048];
    if (last_cap) last[0] = '\0';
    while (fgets(line, sizeof line, p)) {
        if (last_cap) snprintf(last, last_cap, "%.*s", (int)strcspn(line, "\n"), line);
        int relay = 0;
        for (const char *const *q = prefixes; *q && !relay; q++) relay = strncmp(line, *q, strlen(*q)) == 0;
        if (!relay) continue;
        fputs("  ", stdout);
        fputs(line, stdout);
        on_line(line, ctx);
    }
    return pclose(p);
}

/* The figures q3n compares itself with, read off the script's RESULT lines. */
struct tf_figures {
    const struct q3n_bench_tf *a;
    int prefill, decode, logits;
    double prefill_s, decode_ms, rel_l2;
};

static void read_line(const char *line, void *ctx)
{
    struct tf_figures *f = ctx;
    const struct q3n_bench_tf *a = f->a;
    const char *at;
    if ((at = strstr(line, " prefill T=")) && sscanf(at, " prefill T=%*d: best %lf s", &f->prefill_s) == 1) {
        f->prefill = 1;
        printf("    q3n (%.4f s) is %.1fx faster than this\n", a->q3n_prefill_s, f->prefill_s / a->q3n_prefill_s);
    } else if ((at = strstr(line, " decode: ")) && sscanf(at, " decode: %lf ms/token", &f->decode_ms) == 1) {
        f->decode = 1;
        if (a->q3n_decode_ms > 0)
            printf("    q3n decode (%.3f ms/token) is %.1fx faster than this\n", a->q3n_decode_ms,
                   f->decode_ms / a->q3n_decode_ms);
    } else if ((at = strstr(line, "rel_l2 ")) && sscanf(at, "rel_l2 %lf", &f->rel_l2) == 1) {
        f->logits = 1;
    }
}

static int run_script(const char *dir, const struct q3n_bench_tf *a)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "'%s' '%s' --checkpoint '%s/ckpt' --tokens '%s/tokens.i64' --q3n-logits '%s/logits.f32' --prefill %lld "
             "--decode %lld --threads %d --reps %d 2>&1",
             a->python, a->script, dir, dir, dir, (long long)a->T, (long long)a->N, a->threads, a->repeat);
    printf("transformers, same machine, same run: %s\n", cmd);
    fflush(stdout);
    static const char *const relayed[] = {"RESULT", "torch ", "loaded ", NULL};
    char last[2048];
    struct tf_figures f = {.a = a};
    const int st = q3n_bench_relay(cmd, relayed, read_line, &f, last, sizeof last);
    if (st != 0 || !f.prefill || !f.logits || (a->N > 0 && !f.decode)) {
        fprintf(stderr, "q3n bench: the transformers run failed (status %d; last line: %s): run the command above to "
                        "see why\n",
                st, last[0] ? last : "none");
        return 1;
    }
    if (!(f.rel_l2 <= TF_LOGITS_BOUND)) {
        fprintf(stderr, "q3n bench: transformers' logits differ from q3n's by rel L2 %.3e > %.0e: not the same model, "
                        "so the speed-up above means nothing\n",
                f.rel_l2, TF_LOGITS_BOUND);
        return 1;
    }
    printf("  same model: logits rel L2 %.2e <= %.0e\n", f.rel_l2, TF_LOGITS_BOUND);
    return 0;
}

int q3n_bench_versus_transformers_cpu(const struct q3n_model *model, const int64_t *tokens, const float *last_logits,
                                      const struct q3n_bench_tf *a)
{
    if (strchr(a->python, '\'') || strchr(a->script, '\'')) {
        fprintf(stderr, "q3n bench: --python / --tf-script must not contain a single quote\n");
        return 2;
    }
    const char *tmp = getenv("TMPDIR");
    char base[2048], path[4096];
    snprintf(base, sizeof base, "%s/q3n-bench-tf-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (strchr(base, '\'') || !mkdtemp(base)) {
        fprintf(stderr, "q3n bench: cannot create a temporary folder for the transformers run under %s\n",
                tmp && *tmp ? tmp : "/tmp");
        return 2;
    }
    int rc = 2;
    struct q3n_error err;
    const struct q3n_checkpoint_layout lay = {.dtype = Q3N_ST_F32, .fused_experts = 0, .shards = 1};
    snprintf(path, sizeof path, "%s/ckpt", base);
    if (q3n_checkpoint_write(path, model, &lay, &err) != Q3N_OK) {
        fprintf(stderr, "q3n bench: writing the checkpoint for transformers: %s\n", err.msg);
        goto done;
    }
    snprintf(path, sizeof path, "%s/tokens.i64", base);
    if (write_raw(path, tokens, sizeof *tokens, (size_t)(a->T + a->N)) != 0) goto done;
    snprintf(path, sizeof path, "%s/logits.f32", base);
    if (write_raw(path, last_logits, sizeof *last_logits, (size_t)model->config.vocab_size) != 0) goto done;
    rc = run_script(base, a);
done:
    snprintf(path, sizeof path, "%s/ckpt", base);
    q3n_bench_remove_flat_dir(path);
    q3n_bench_remove_flat_dir(base);
    return rc;
}
