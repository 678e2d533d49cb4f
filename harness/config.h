/* config.h — a validated Qwen3-Next model config (transformers' Qwen3NextConfig).
 *
 * Dimension letters used throughout q3n: T tokens, D hidden, NH/NKV attention heads,
 * HD head dim, NK/NV linear key/value heads, DK/DV their dims, E experts, K top-k,
 * I expert width, V vocab, C chunk. The struct is plain data: no pointers, no ownership. */
#ifndef Q3N_CONFIG_H
#define Q3N_CONFIG_H

#include <stdint.h>

#include "status.h"

#define Q3N_MAX_LAYERS 256

enum q3n_layer_type {
    Q3N_LAYER_LINEAR_ATTENTION = 0, /* Gated DeltaNet ("linear_attention") */
    Q3N_LAYER_FULL_ATTENTION = 1    /* gated softmax attention ("full_attention") */
};

struct q3n_config {
    int64_t vocab_size;              /* V */
    int64_t hidden_size;             /* D */
    int64_t num_hidden_layers;       /* L <= Q3N_MAX_LAYERS */
    int64_t intermediate_size;       /* dense MLP width (mlp_only_layers) */
    double rms_norm_eps;
    int tie_word_embeddings;         /* lm_head shares embed_tokens */
    int64_t max_position_embeddings;

    /* gated full attention */
    int64_t num_attention_heads;     /* NH */
    int64_t num_key_value_heads;     /* NKV, divides NH */
    int64_t head_dim;                /* HD */
    double rope_theta;
    double partial_rotary_factor;
    int64_t rotary_dim;              /* derived: int(HD * partial_rotary_factor), even */
    int attention_bias;              /* q/k/v/o_proj carry biases */

    /* Gated DeltaNet */
    int64_t linear_num_key_heads;    /* NK */
    int64_t linear_num_value_heads;  /* NV, a multiple of NK */
    int64_t linear_key_head_dim;     /* DK */
    int64_t linear_value_head_dim;   /* DV */
    int64_t linear_conv_kernel_dim;  /* conv kernel width (4 in the released models) */

    /* sparse MoE */
    int64_t num_experts;             /* E (0: every layer dense) */
    int64_t num_experts_per_tok;     /* K <= E */
    int64_t moe_intermediate_size;   /* I */
    int64_t shared_expert_intermediate_size; /* shared expert width (0: none) */
    int64_t decoder_sparse_step;
    int norm_topk_prob;

    /* multi-token prediction (vLLM layout; 0 when the checkpoint has none) */
    int64_t num_mtp_layers;

    /* per layer, derived from layer_types / full_attention_interval and mlp_only_layers */
    uint8_t layer_type[Q3N_MAX_LAYERS];   /* enum q3n_layer_type */
    uint8_t layer_is_sparse[Q3N_MAX_LAYERS]; /* 1: MoE block, 0: dense MLP */
};

/* Parses config.json text (transformers 4.57+ and 5.x layouts; rope fields at top level or
 * in rope_parameters; layer_types given or derived from full_attention_interval) and
 * validates it. `source` names the file in error messages. On failure the message names
 * the first bad field, e.g. "config.json: linear_num_value_heads (6) is not a multiple of
 * linear_num_key_heads (4)". */
enum q3n_status q3n_config_parse(struct q3n_config *cfg, const char *json_text, size_t len,
                                 const char *source, struct q3n_error *err);

/* Reads and parses a config.json file. */
enum q3n_status q3n_config_load(struct q3n_config *cfg, const char *path, struct q3n_error *err);

/* Checks ranges and consistency of an already-filled config (used by the parser and by
 * the fuzzer's config generator). */
enum q3n_status q3n_config_validate(const struct q3n_config *cfg, const char *source,
                                    struct q3n_error *err);

/* The MTP decoder layer (vLLM builds it as layer index 0 of its own stack) is a MoE block
 * exactly when main layer 0 is: not in mlp_only_layers, num_experts > 0, decoder_sparse_step 1. */
int q3n_config_mtp_layer_is_sparse(const struct q3n_config *cfg);

/* Writes cfg as a transformers-5.x config.json (model_type qwen3_next, architectures
 * [Qwen3NextForCausalLM], rope_parameters, layer_types, mlp_only_layers, and
 * num_nextn_predict_layers when cfg has MTP). *out_json is malloc'd; the caller frees it. */
enum q3n_status q3n_config_to_json(const struct q3n_config *cfg, char **out_json, struct q3n_error *err);

/* Derived sizes. */
int64_t q3n_config_conv_dim(const struct q3n_config *cfg);      /* 2*NK*DK + NV*DV */
int64_t q3n_config_qkvz_dim(const struct q3n_config *cfg);      /* 2*NK*DK + 2*NV*DV */
int64_t q3n_config_param_count(const struct q3n_config *cfg);   /* all weights, MTP included */
int64_t q3n_config_active_param_count(const struct q3n_config *cfg); /* per token */

#endif
