/* cmd_roofline.c — `q3n roofline`: the least prefill and decode can cost for a config on a given
 * machine (harness/roofline.h), with no GPU and no weights: the floors `q3n bench --impl cuda`
 * prints beside its measurements, for any config and any machine's figures.
 *
 *   q3n roofline [--preset real-4l | --config config.json] [--tokens 4096,16384] [--decode-prompt 4096]
 *                [--dtype bf16|f32] [--peak-bw 3.35e12] [--peak-flops 989e12]
 *
 * Per prefill length: the block-by-block floor (each block's own max of bytes / bandwidth and
 * FLOPs / peak, summed along the chain of blocks; the floor targets are read against) in ms and
 * tokens/s, its split by phase, and the overlapped floor (one max over the whole forward). Then one
 * decode token after --decode-prompt cached tokens (0: none). Defaults: the H100 SXM datasheet,
 * bf16 dense. Exit 0, or 2 on a bad argument or config (one line naming it). */
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "cmds.h"
#include "config.h"
#include "roofline.h"
#include "synth.h"

#define ROOF_MAX_TS 16

struct roof_args {
    const char *preset, *config_path;
    int64_t Ts[ROOF_MAX_TS];
    int nT;
    long long prompt;
    double wbytes, peak_bw, peak_flops;
};

static void usage(void)
{
    fprintf(stderr, "usage: q3n roofline [--preset NAME | --config config.json] [--tokens 4096,16384] "
                    "[--decode-prompt 4096] [--dtype bf16|f32] [--peak-bw 3.35e12] [--peak-flops 989e12]\n");
}

static int parse_args(int argc, char **argv, struct roof_args *a)
{
    *a = (struct roof_args){.preset = "real-4l", .Ts = {4096, 16384}, .nT = 2, .prompt = 4096, .wbytes = 2.0,
                            .peak_bw = 3.35e12, .peak_flops = 989e12};
    for (int i = 1; i < argc; i += 2) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = v != NULL;
        if (!ok) {
        } else if (strcmp(k, "--preset") == 0) {
            a->preset = v;
        } else if (strcmp(k, "--config") == 0) {
            a->config_path = v;
        } else if (strcmp(k, "--tokens") == 0) {
            ok = q3n_arg_i64_list(v, 1, a->Ts, ROOF_MAX_TS, &a->nT);
        } else if (strcmp(k, "--decode-prompt") == 0) {
            ok = q3n_arg_ll(v, 0, &a->prompt);
        } else if (strcmp(k, "--dtype") == 0) {
            ok = strcmp(v, "bf16") == 0 || strcmp(v, "f32") == 0;
            a->wbytes = strcmp(v, "f32") == 0 ? 4.0 : 2.0;
        } else if (strcmp(k, "--peak-bw") == 0) {
            ok = q3n_arg_pos_double(v, &a->peak_bw);
        } else if (strcmp(k, "--peak-flops") == 0) {
            ok = q3n_arg_pos_double(v, &a->peak_flops);
        } else {
            ok = 0;
        }
        if (!ok) {
            fprintf(stderr, "q3n roofline: bad argument '%s'%s%s\n", k, v ? " " : " (no value)", v ? v : "");
            usage();
            return 0;
        }
    }
    return 1;
}

static void print_phases(const struct q3n_roofline *r)
{
    printf("  by phase: delta-rule mixers %.4g ms, attention mixers %.4g ms, MLP/MoE %.4g ms, embedding + "
           "lm_head %.4g ms\n",
           1e3 * r->phase_seconds[Q3N_PHASE_DELTA_MIXERS], 1e3 * r->phase_seconds[Q3N_PHASE_ATTENTION_MIXERS],
           1e3 * r->phase_seconds[Q3N_PHASE_MLP], 1e3 * r->phase_seconds[Q3N_PHASE_OTHER]);
    printf("  overlapped: %.4g ms (%s-bound: %.4g GB, %.4g TFLOP)\n", 1e3 * r->seconds,
           r->bytes_bound ? "bandwidth" : "compute", 1e-9 * (r->weight_bytes + r->other_bytes), 1e-12 * r->flops);
}

int q3n_cmd_roofline(int argc, char **argv)
{
    struct roof_args a;
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage();
        return 0;
    }
    if (!parse_args(argc, argv, &a)) return 2;
    struct q3n_config cfg;
    struct q3n_error err = {0};
    const char *source = a.config_path ? a.config_path : a.preset;
    if ((a.config_path ? q3n_config_load(&cfg, a.config_path, &err) : q3n_synth_config(&cfg, a.preset, &err)) !=
        Q3N_OK) {
        fprintf(stderr, "q3n roofline: %s\n", err.msg);
        return 2;
    }
    int64_t linear = 0, sparse = 0;
    for (int64_t l = 0; l < cfg.num_hidden_layers; l++) {
        linear += cfg.layer_type[l] == Q3N_LAYER_LINEAR_ATTENTION;
        sparse += cfg.layer_is_sparse[l] != 0;
    }
    printf("q3n roofline: %s: %lld layers (%lld linear, %lld full attention; %lld sparse MoE), D=%lld, E=%lld "
           "top-%lld, V=%lld; %s weights, %.2f TB/s, %.0f TFLOP/s\n",
           source, (long long)cfg.num_hidden_layers, (long long)linear, (long long)(cfg.num_hidden_layers - linear),
           (long long)sparse, (long long)cfg.hidden_size, (long long)cfg.num_experts,
           (long long)cfg.num_experts_per_tok, (long long)cfg.vocab_size, a.wbytes == 4.0 ? "f32" : "bf16",
           1e-12 * a.peak_bw, 1e-12 * a.peak_flops);
    for (int i = 0; i < a.nT; i++) {
        struct q3n_roofline r;
        q3n_roofline_prefill(&cfg, a.Ts[i], a.wbytes, a.peak_bw, a.peak_flops, &r);
        printf("prefill T=%lld: %.4g ms block by block = %.0f tokens/s (%.0f %% of it in bandwidth-bound blocks)\n",
               (long long)a.Ts[i], 1e3 * r.serial_seconds, (double)a.Ts[i] / r.serial_seconds,
               100.0 * r.serial_bytes_share);
        print_phases(&r);
    }
    if (a.prompt > 0) {
        struct q3n_roofline r;
        q3n_roofline_decode(&cfg, a.prompt, a.wbytes, a.peak_bw, a.peak_flops, &r);
        printf("decode after %lld tokens: %.4g ms/token block by block (%.0f %% of it in bandwidth-bound blocks)\n",
               a.prompt, 1e3 * r.serial_seconds, 100.0 * r.serial_bytes_share);
        print_phases(&r);
    }
    return 0;
}
