/* cmd_inspect.c — `q3n inspect --model DIR`: check a checkpoint folder as every other command
 * does when it opens one (config.json validated, safetensors headers, every tensor matched
 * against the config, F64 exactness) but without converting weights, so it also works on
 * checkpoints larger than memory; then print the config summary and the tensor inventory.
 * Exit 0 when the checkpoint is usable; 2 with one line on stderr on any problem. */
#include <stdio.h>
#include <string.h>

#include "checkpoint.h"
#include "cmds.h"
#include "config.h"
#include "safetensors.h"
#include "weights.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: q3n inspect --model DIR [--no-tensors]\n"
                 "  Opens a Hugging Face Qwen3-Next checkpoint folder (config.json + model.safetensors or\n"
                 "  model.safetensors.index.json), checks every tensor against the config, and prints the\n"
                 "  config summary and the tensor inventory (name, dtype, shape, file).\n"
                 "  Exit 0: usable; 2: usage or input error (one line on stderr).\n");
}

static void print_count(const char *label, int64_t n)
{
    double x = (double)n;
    if (x >= 1e9)
        printf("%s%lld (%.2f B)\n", label, (long long)n, x / 1e9);
    else if (x >= 1e6)
        printf("%s%lld (%.2f M)\n", label, (long long)n, x / 1e6);
    else
        printf("%s%lld\n", label, (long long)n);
}

static void print_summary(const struct q3n_model *m)
{
    const struct q3n_config *c = &m->config;
    int64_t lin = 0, full = 0, sparse = 0;
    for (int64_t i = 0; i < c->num_hidden_layers; i++) {
        full += c->layer_type[i] == Q3N_LAYER_FULL_ATTENTION;
        lin += c->layer_type[i] == Q3N_LAYER_LINEAR_ATTENTION;
        sparse += c->layer_is_sparse[i];
    }
    printf("checkpoint: %s\n", m->dir);
    printf("layers: %lld (linear_attention %lld, full_attention %lld; MoE %lld, dense MLP %lld)\n",
           (long long)c->num_hidden_layers, (long long)lin, (long long)full, (long long)sparse,
           (long long)(c->num_hidden_layers - sparse));
    printf("layer pattern: ");
    for (int64_t i = 0; i < c->num_hidden_layers; i++)
        putchar(c->layer_type[i] == Q3N_LAYER_FULL_ATTENTION ? (c->layer_is_sparse[i] ? 'F' : 'f')
                                                             : (c->layer_is_sparse[i] ? 'L' : 'l'));
    printf("  (L/F linear/full attention + MoE, l/f + dense MLP)\n");
    printf("hidden: D=%lld, vocab V=%lld, rms_norm_eps %g, max_position_embeddings %lld, embeddings %s\n",
           (long long)c->hidden_size, (long long)c->vocab_size, c->rms_norm_eps, (long long)c->max_position_embeddings,
           c->tie_word_embeddings ? "tied" : "untied");
    printf("attention: NH=%lld NKV=%lld HD=%lld, rotary_dim %lld (partial_rotary_factor %g), rope_theta %g, "
           "bias %s\n",
           (long long)c->num_attention_heads, (long long)c->num_key_value_heads, (long long)c->head_dim,
           (long long)c->rotary_dim, c->partial_rotary_factor, c->rope_theta, c->attention_bias ? "yes" : "no");
    printf("linear attention: NK=%lld NV=%lld DK=%lld DV=%lld, conv kernel %lld (conv channels %lld)\n",
           (long long)c->linear_num_key_heads, (long long)c->linear_num_value_heads,
           (long long)c->linear_key_head_dim, (long long)c->linear_value_head_dim,
           (long long)c->linear_conv_kernel_dim, (long long)q3n_config_conv_dim(c));
    printf("experts: E=%lld, top-k K=%lld, I=%lld, shared expert %lld, norm_topk_prob %d, decoder_sparse_step %lld, "
           "dense width %lld\n",
           (long long)c->num_experts, (long long)c->num_experts_per_tok, (long long)c->moe_intermediate_size,
           (long long)c->shared_expert_intermediate_size, c->norm_topk_prob, (long long)c->decoder_sparse_step,
           (long long)c->intermediate_size);
    printf("MTP layers: %lld%s\n", (long long)c->num_mtp_layers,
           c->num_mtp_layers ? (m->weights.mtp.layer_is_sparse ? " (MoE)" : " (dense MLP)") : "");
    print_count("parameters: ", q3n_config_param_count(c));
    print_count("active parameters per token: ", q3n_config_active_param_count(c));
}

static void print_inventory(const struct q3n_safetensors *st)
{
    int64_t n = q3n_safetensors_count(st), by_dtype[Q3N_ST_BOOL + 1] = {0};
    for (int64_t i = 0; i < n; i++) by_dtype[q3n_safetensors_at(st, i)->dtype]++;
    printf("tensors: %lld in %d file%s (", (long long)n, q3n_safetensors_shard_count(st),
           q3n_safetensors_shard_count(st) == 1 ? "" : "s");
    const char *sep = "";
    for (int d = 0; d <= Q3N_ST_BOOL; d++)
        if (by_dtype[d]) {
            printf("%s%s %lld", sep, q3n_st_dtype_name((enum q3n_st_dtype)d), (long long)by_dtype[d]);
            sep = ", ";
        }
    printf(")\n");
    for (int64_t i = 0; i < n; i++) {
        const struct q3n_st_tensor *t = q3n_safetensors_at(st, i);
        char shape[128];
        size_t off = (size_t)snprintf(shape, sizeof shape, "[");
        for (int d = 0; d < t->rank && off < sizeof shape; d++)
            off += (size_t)snprintf(shape + off, sizeof shape - off, "%s%lld", d ? ", " : "", (long long)t->dims[d]);
        if (off < sizeof shape) snprintf(shape + off, sizeof shape - off, "]");
        const char *file = q3n_safetensors_shard_path(st, t->shard);
        const char *slash = strrchr(file, '/');
        printf("  %-60s %-5s %-22s %s\n", t->name, q3n_st_dtype_name(t->dtype), shape, slash ? slash + 1 : file);
    }
}

int q3n_cmd_inspect(int argc, char **argv)
{
    const char *dir = NULL;
    int tensors = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
            dir = argv[++i];
        } else if (strcmp(argv[i], "--no-tensors") == 0) {
            tensors = 0;
        } else {
            fprintf(stderr, "q3n inspect: unknown or incomplete argument '%s' (see q3n inspect --help)\n", argv[i]);
            return 2;
        }
    }
    if (!dir) {
        fprintf(stderr, "q3n inspect: --model DIR is required (see q3n inspect --help)\n");
        return 2;
    }
    struct q3n_model *model = NULL;
    struct q3n_error err = {0};
    if (q3n_checkpoint_check(&model, dir, &err) != Q3N_OK) {
        for (char *p = err.msg; *p; p++) /* names from files may hold control characters: keep one line */
            if ((unsigned char)*p < 0x20) *p = '?';
        fprintf(stderr, "q3n inspect: %s error: %s\n", q3n_status_name(err.status), err.msg);
        return 2;
    }
    print_summary(model);
    const struct q3n_safetensors *st = q3n_model_tensors(model);
    if (tensors && st) print_inventory(st);
    q3n_model_close(model);
    return 0;
}
