/* cmd_run.c — `q3n run`: runs an implementation on a token list, optionally as prefill + decode,
 * and optionally dumps the run in the golden schema (harness/dump.h). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cmds.h"
#include "dump.h"
#include "impl.h"
#include "synth.h"
#include "tensorfile.h"
#include "tokens.h"
#include "weights.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: q3n run (--model DIR | --synth PRESET [--seed N]) (--tokens 1,2,3 | --tokens-from F.h5)\n"
            "               [--prefill P]"
            "               [--impl NAME] [--dump OUT.h5] [--chunk C] [--dtype f32|bf16|f64] [--test-bug NAME]\n"
            "\n"
            "Runs the model on the tokens and prints the argmax token per position.\n"
            "  --model DIR      Hugging Face checkpoint folder (config.json + safetensors)\n"
            "  --synth PRESET   a synthetic model instead (tiny, odd, bench-1k, real-1l, real-4l), weights from --seed\n"
            "  --tokens LIST    comma-separated token ids\n"
            "  --tokens-from F  the tokens of a golden or dump (its /inputs/input_ids)\n"
            "  --prefill P      run the first P tokens in one forward, the rest one token at a time\n"
            "                   (default: all tokens in one forward)\n"
            "  --impl NAME      implementation (default: the reference)\n"
            "  --dump OUT.h5    write /logits [T,V] (one row per position either way), the taps of the first\n"
            "                   forward under /tensors, /inputs/input_ids, /config, and /mtp_logits when the model\n"
            "                   has an MTP head and no --prefill is given. Nothing is written on error.\n"
            "  --chunk C        delta-rule chunk size (default 64)\n"
            "  --dtype D        compute dtype where the implementation offers a choice\n"
            "  --test-bug NAME  plant a named test bug (for proving checks catch it)\n"
            "Exit codes: 0 ok, 1 non-finite logits, 2 usage or input error.\n");
}

/* Reads a whole text file into a malloc'd NUL-terminated buffer. */
static enum q3n_status read_text(const char *path, char **out, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    char *buf = NULL;
    FILE *f = fopen(path, "rb");
    *out = NULL;
    if (!f) return q3n_error_set(err, Q3N_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: cannot seek", path);
        goto cleanup;
    }
    long len = ftell(f);
    if (len < 0 || fseek(f, 0, SEEK_SET) != 0) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: cannot tell its size", path);
        goto cleanup;
    }
    buf = malloc((size_t)len + 1);
    if (!buf) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory (%ld bytes)", path, len);
        goto cleanup;
    }
    if (fread(buf, 1, (size_t)len, f) != (size_t)len) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: short read", path);
        goto cleanup;
    }
    buf[len] = '\0';
    *out = buf;
    buf = NULL;

cleanup:
    free(buf);
    fclose(f);
    return st;
}

/* The /inputs/input_ids [T] of a golden or dump, as a malloc'd array. */
static enum q3n_status read_input_ids(const char *path, int64_t **out, int64_t *n, struct q3n_error *err)
{
    struct q3n_tensorfile *tf = NULL;
    struct q3n_tensor_info info;
    int64_t *ids = NULL;
    *out = NULL;
    *n = 0;
    enum q3n_status st = q3n_tensorfile_open(&tf, path, err);
    if (st == Q3N_OK) st = q3n_tensorfile_info(tf, "/inputs/input_ids", &info, err);
    if (st == Q3N_OK && (info.rank != 1 || info.numel < 1))
        st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: /inputs/input_ids has rank %d and %lld elements, want [T >= 1]",
                           path, info.rank, (long long)info.numel);
    if (st == Q3N_OK) {
        ids = malloc((size_t)info.numel * sizeof *ids);
        if (!ids) st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory for %lld tokens", path, (long long)info.numel);
    }
    if (st == Q3N_OK) st = q3n_tensorfile_read(tf, "/inputs/input_ids", Q3N_DTYPE_I64, ids, info.numel, NULL, err);
    if (st == Q3N_OK) {
        *out = ids;
        *n = info.numel;
        ids = NULL;
    }
    free(ids);
    q3n_tensorfile_close(tf);
    return st;
}

static const char *dtype_name(enum q3n_compute_dtype d)
{
    switch (d) {
    case Q3N_COMPUTE_F32: return "float32";
    case Q3N_COMPUTE_BF16: return "bfloat16";
    case Q3N_COMPUTE_F64: return "float64";
    }
    return "unknown";
}

struct run_args {
    const char *model_dir, *synth, *tokens, *tokens_from, *impl, *dump, *test_bug, *dtype;
    int64_t prefill, chunk, seed;
    int help;
};

static int parse_args(int argc, char **argv, struct run_args *a)
{
    memset(a, 0, sizeof *a);
    a->prefill = -1;
    a->chunk = 64;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
            a->help = 1;
            return 1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "q3n run: %s needs a value (or is unknown)\n", o);
            return 0;
        }
        const char *v = argv[++i];
        if (strcmp(o, "--model") == 0) a->model_dir = v;
        else if (strcmp(o, "--synth") == 0) a->synth = v;
        else if (strcmp(o, "--tokens") == 0) a->tokens = v;
        else if (strcmp(o, "--tokens-from") == 0) a->tokens_from = v;
        else if (strcmp(o, "--impl") == 0) a->impl = v;
        else if (strcmp(o, "--dump") == 0) a->dump = v;
        else if (strcmp(o, "--test-bug") == 0) a->test_bug = v;
        else if (strcmp(o, "--dtype") == 0) a->dtype = v;
        else if (strcmp(o, "--prefill") == 0 || strcmp(o, "--chunk") == 0 || strcmp(o, "--seed") == 0) {
            long long x;
            if (!q3n_arg_ll(v, LLONG_MIN, &x)) {
                fprintf(stderr, "q3n run: %s expects an integer, got '%s'\n", o, v);
                return 0;
            }
            if (strcmp(o, "--prefill") == 0) a->prefill = x;
            else if (strcmp(o, "--chunk") == 0) a->chunk = x;
            else a->seed = x;
        } else {
            fprintf(stderr, "q3n run: unknown option %s\n", o);
            return 0;
        }
    }
    if (!a->model_dir == !a->synth) {
        fprintf(stderr, "q3n run: give exactly one of --model DIR or --synth PRESET\n");
        return 0;
    }
    if (!a->tokens == !a->tokens_from) {
        fprintf(stderr, "q3n run: give exactly one of --tokens LIST or --tokens-from FILE.h5\n");
        return 0;
    }
    return 1;
}

int q3n_cmd_run(int argc, char **argv)
{
    int rc = 2;
    struct run_args a;
    struct q3n_error err = {0};
    struct q3n_model *model = NULL;
    int64_t *tokens = NULL, T = 0;
    float *logits = NULL, *mtp_logits = NULL;
    char *config_json = NULL;
    void *session = NULL;
    struct q3n_dump *dump = NULL;
    const struct q3n_impl *impl = NULL;

    if (!parse_args(argc, argv, &a)) {
        usage(stderr);
        return 2;
    }
    if (a.help) {
        usage(stdout);
        return 0;
    }
    if (a.tokens && q3n_parse_tokens(a.tokens, &tokens, &T, &err) != Q3N_OK) goto fail;
    if (a.tokens_from && read_input_ids(a.tokens_from, &tokens, &T, &err) != Q3N_OK) goto fail;
    if (a.prefill < 0) a.prefill = T;
    if (a.prefill < 1 || a.prefill > T) {
        q3n_error_set(&err, Q3N_ERR_USAGE, "--prefill %lld is outside [1, %lld] (the number of tokens)",
                      (long long)a.prefill, (long long)T);
        goto fail;
    }
    const char *impl_name = a.impl ? a.impl : q3n_impl_names()[0];
    impl = q3n_impl_find(impl_name);
    if (!impl) {
        q3n_error_set(&err, Q3N_ERR_USAGE, "--impl %s: not built into this binary", impl_name);
        goto fail;
    }

    if (a.synth) {
        struct q3n_config cfg;
        if (q3n_synth_config(&cfg, a.synth, &err) != Q3N_OK) goto fail;
        if (q3n_synth_model_create(&model, &cfg, (uint64_t)a.seed, &err) != Q3N_OK) goto fail;
        size_t cap = 1 << 16;
        config_json = malloc(cap);
        if (!config_json) {
            q3n_error_set(&err, Q3N_ERR_NOMEM, "out of memory for config.json");
            goto fail;
        }
        if (q3n_synth_config_json(config_json, cap, &cfg, &err) != Q3N_OK) goto fail;
    } else {
        if (q3n_model_open(&model, a.model_dir, &err) != Q3N_OK) goto fail;
        char path[4200];
        snprintf(path, sizeof path, "%s/config.json", a.model_dir);
        if (read_text(path, &config_json, &err) != Q3N_OK) goto fail;
    }
    int64_t V = model->config.vocab_size;
    int want_mtp = a.dump && model->config.num_mtp_layers > 0 && a.prefill == T && T > 1 && impl->forward_mtp;

    struct q3n_run_options opt;
    q3n_run_options_default(&opt);
    opt.chunk_size = a.chunk;
    opt.max_tokens = T;
    opt.test_bug = a.test_bug;
    if (a.dtype) {
        if (strcmp(a.dtype, "f32") == 0) opt.dtype = Q3N_COMPUTE_F32;
        else if (strcmp(a.dtype, "bf16") == 0) opt.dtype = Q3N_COMPUTE_BF16;
        else if (strcmp(a.dtype, "f64") == 0) opt.dtype = Q3N_COMPUTE_F64;
        else {
            q3n_error_set(&err, Q3N_ERR_USAGE, "--dtype %s: expected f32, bf16 or f64", a.dtype);
            goto fail;
        }
    }
    size_t nl = 0;
    if (!q3n_mul_size(&nl, (size_t)T, (size_t)V) || !q3n_mul_size(&nl, nl, sizeof(float))) {
        q3n_error_set(&err, Q3N_ERR_NOMEM, "logits [%lld, %lld] overflow", (long long)T, (long long)V);
        goto fail;
    }
    logits = malloc(nl);
    mtp_logits = want_mtp ? malloc(nl) : NULL;
    if (!logits || (want_mtp && !mtp_logits)) {
        q3n_error_set(&err, Q3N_ERR_NOMEM, "out of memory for logits [%lld, %lld]", (long long)T, (long long)V);
        goto fail;
    }
    if (impl->open(&session, model, &opt, &err) != Q3N_OK) goto fail;
    if (a.dump && q3n_dump_create(&dump, a.dump, &err) != Q3N_OK) goto fail;

    struct q3n_tap_sink sink = {0};
    if (dump) sink = q3n_dump_sink(dump);
    if (impl->forward(session, logits, tokens, a.prefill, &sink, &err) != Q3N_OK) goto fail;
    char kernels[512];
    if (snprintf(kernels, sizeof kernels, "%s", impl->describe ? impl->describe(session) : impl->name) < 0)
        kernels[0] = '\0';
    if (want_mtp && impl->forward_mtp(session, mtp_logits, tokens, T, &sink, &err) != Q3N_OK) goto fail;
    for (int64_t t = a.prefill; t < T; t++)
        if (impl->forward(session, logits + t * V, tokens + t, 1, NULL, &err) != Q3N_OK) goto fail;
    if (T > a.prefill) {
        char dec[sizeof kernels];
        int n = snprintf(dec, sizeof dec, "%s; decode: %s", kernels, impl->describe ? impl->describe(session) : "");
        if (n > 0) memcpy(kernels, dec, sizeof kernels);
    }

    int64_t nonfinite = 0, first_bad = -1;
    for (int64_t i = 0; i < T * V; i++)
        if (!isfinite(logits[i])) {
            if (first_bad < 0) first_bad = i;
            nonfinite++;
        }

    if (dump) {
        struct q3n_dump_info info = {
            .generator = "q3n run",
            .dtype = dtype_name(opt.dtype),
            .impl = impl->name,
            .kernels = kernels,
            .checkpoint = a.model_dir ? a.model_dir : "",
            .device = strcmp(impl->name, "cuda") == 0 ? "cuda" : "cpu",
            .preset = a.synth,
            .seed = a.seed,
            .config_json = config_json,
        };
        const int64_t dt[1] = {T}, dl[2] = {T, V}, dm[2] = {T - 1, V};
        if (q3n_dump_write_info(dump, &info, &err) != Q3N_OK) goto fail;
        if (q3n_tensorfile_set_attr_i64(q3n_dump_file(dump), "/", "prefill_tokens", a.prefill, &err) != Q3N_OK)
            goto fail;
        if (q3n_dump_write(dump, "/inputs/input_ids", Q3N_DTYPE_I64, 1, dt, tokens, &err) != Q3N_OK) goto fail;
        if (q3n_dump_write(dump, "/logits", Q3N_DTYPE_F32, 2, dl, logits, &err) != Q3N_OK) goto fail;
        if (want_mtp && q3n_dump_write(dump, "/mtp_logits", Q3N_DTYPE_F32, 2, dm, mtp_logits, &err) != Q3N_OK)
            goto fail;
        struct q3n_dump *d = dump;
        dump = NULL;
        if (q3n_dump_commit(d, &err) != Q3N_OK) goto fail;
    }

    printf("q3n run: %s, %lld tokens (prefill %lld), vocab %lld\n", kernels, (long long)T, (long long)a.prefill,
           (long long)V);
    printf("argmax:");
    for (int64_t t = 0; t < T; t++) {
        int64_t best = 0;
        for (int64_t v = 1; v < V; v++)
            if (logits[t * V + v] > logits[t * V + best]) best = v;
        printf(" %lld", (long long)best);
    }
    printf("\n");
    if (a.dump) printf("wrote %s\n", a.dump);
    if (nonfinite) {
        fprintf(stderr, "q3n run: %lld non-finite logits, first at position %lld, token %lld\n", (long long)nonfinite,
                (long long)(first_bad / V), (long long)(first_bad % V));
        rc = 1;
    } else {
        rc = 0;
    }
    goto cleanup;

fail:
    fprintf(stderr, "q3n run: %s\n", err.msg[0] ? err.msg : "failed");
    rc = (err.status == Q3N_ERR_NUMERIC) ? 1 : 2;

cleanup:
    q3n_dump_close(dump);
    if (impl && session) impl->close(session);
    q3n_model_close(model);
    free(config_json);
    free(logits);
    free(mtp_logits);
    free(tokens);
    return rc;
}
