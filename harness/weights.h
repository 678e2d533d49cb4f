/* weights.h — a loaded Qwen3-Next checkpoint: config plus float32 views of every weight.
 *
 * Every weight is exposed as `const float *`, row-major, in transformers' shapes
 * (nn.Linear weight = [out, in]). Weights stored as F32 and 4-byte aligned point straight
 * into the memory-mapped safetensors file; BF16/F16 (and misaligned F32) tensors are
 * converted once into buffers the model owns. Either way the pointers live until
 * q3n_model_close. The reference's float64 build reads these floats exactly (float ->
 * double is exact), so one weights struct serves ref, ref64, cpu and (by upload) cuda. */
#ifndef Q3N_WEIGHTS_H
#define Q3N_WEIGHTS_H

#include <stdint.h>

#include "config.h"
#include "status.h"

/* A SwiGLU MLP: down(silu(gate(x)) * up(x)). Used for routed experts, the shared expert
 * and dense-MLP layers. W = width (I, shared width, or intermediate_size). */
struct q3n_mlp_weights {
    const float *gate_proj; /* [W, D] */
    const float *up_proj;   /* [W, D] */
    const float *down_proj; /* [D, W] */
};

struct q3n_moe_weights {
    const float *router;                /* mlp.gate.weight [E, D] */
    struct q3n_mlp_weights *experts;    /* E entries (per-expert keys or views into fused gate_up/down) */
    struct q3n_mlp_weights shared_expert;        /* gate_proj NULL when there is none */
    const float *shared_expert_gate;    /* [1, D], NULL when there is no shared expert */
};

struct q3n_linear_attn_weights {
    const float *in_proj_qkvz; /* [2*NK*DK + 2*NV*DV, D], head-grouped (see ref/deltanet.c) */
    const float *in_proj_ba;   /* [2*NV, D], head-grouped */
    const float *conv1d;       /* [2*NK*DK + NV*DV, K] (torch's [C, 1, K] squeezed) */
    const float *dt_bias;      /* [NV] */
    const float *A_log;        /* [NV] */
    const float *norm;         /* [DV] gated RMSNorm weight (not zero-centred) */
    const float *out_proj;     /* [D, NV*DV] */
};

struct q3n_attn_weights {
    const float *q_proj;  /* [NH*2*HD, D]: per head, HD query rows then HD gate rows */
    const float *k_proj;  /* [NKV*HD, D] */
    const float *v_proj;  /* [NKV*HD, D] */
    const float *o_proj;  /* [D, NH*HD] */
    const float *q_norm;  /* [HD] zero-centred */
    const float *k_norm;  /* [HD] zero-centred */
    const float *q_bias, *k_bias, *v_bias, *o_bias; /* NULL unless attention_bias */
};

struct q3n_layer_weights {
    const float *input_layernorm;          /* [D] zero-centred */
    const float *post_attention_layernorm; /* [D] zero-centred */
    struct q3n_linear_attn_weights linear_attn; /* when layer_type is linear attention */
    struct q3n_attn_weights self_attn;          /* when layer_type is full attention */
    struct q3n_moe_weights moe;                 /* when layer_is_sparse */
    struct q3n_mlp_weights mlp;                 /* dense MLP when !layer_is_sparse */
};

/* The MTP head, vLLM's layout: fc(concat(norm_e(embed(t+1)), norm_h(h_t))) -> one decoder
 * layer (full attention + MoE) -> norm -> shared lm_head. */
struct q3n_mtp_weights {
    const float *pre_fc_norm_embedding; /* [D] zero-centred */
    const float *pre_fc_norm_hidden;    /* [D] zero-centred */
    const float *fc;                    /* [D, 2D] */
    struct q3n_layer_weights layer;     /* mtp.layers.0.*, always full attention */
    int layer_is_sparse;                /* MoE (1) or dense MLP (0) */
    const float *norm;                  /* [D] zero-centred */
};

struct q3n_weights {
    const float *embed_tokens;          /* [V, D] */
    struct q3n_layer_weights *layers;   /* num_hidden_layers entries */
    const float *norm;                  /* [D] zero-centred final norm */
    const float *lm_head;               /* [V, D]; == embed_tokens when tied */
    struct q3n_mtp_weights mtp;         /* valid when config.num_mtp_layers > 0 */
};

/* A checkpoint folder opened for use: config, mapped safetensors, weights. */
struct q3n_model {
    struct q3n_config config;
    struct q3n_weights weights;
    char dir[4096];             /* the checkpoint folder ("" for a synthetic in-memory model) */
    void *owner;                /* whatever holds the weight memory (mappings, converted or synthetic buffers) */
    void (*release)(struct q3n_model *model); /* frees `owner` and weights.layers etc.; called by q3n_model_close */
};

/* Opens a Hugging Face checkpoint folder: config.json plus model.safetensors or a sharded
 * model.safetensors.index.json. Refuses pickle (.bin/.pt) checkpoints. Reports every
 * missing, extra or mis-shaped tensor at once (the message lists them by name). */
enum q3n_status q3n_model_open(struct q3n_model **model, const char *dir, struct q3n_error *err);

/* Calls model->release (if set), then frees the struct. Accepts NULL. Works for models from
 * q3n_model_open and from harness/synth.h alike. */
void q3n_model_close(struct q3n_model *model);

#endif
