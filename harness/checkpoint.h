/* checkpoint.h — Hugging Face checkpoint folders: q3n_model_open / q3n_model_close (declared
 * in weights.h, defined in checkpoint.c), the tensor naming plan, and a writer.
 *
 * Key names (transformers' Qwen3NextForCausalLM; MTP as vLLM's qwen3_next_mtp.py loads it):
 *   model.embed_tokens.weight [V,D], model.norm.weight [D], lm_head.weight [V,D] (absent when tied)
 *   model.layers.{i}.input_layernorm.weight, .post_attention_layernorm.weight [D]
 *   linear attention: model.layers.{i}.linear_attn.{in_proj_qkvz,in_proj_ba,out_proj}.weight,
 *     .conv1d.weight [Cc,1,Kc], .dt_bias [NV], .A_log [NV], .norm.weight [DV]
 *   full attention: model.layers.{i}.self_attn.{q,k,v,o}_proj.weight (+ .bias when attention_bias),
 *     .q_norm.weight, .k_norm.weight [HD]
 *   MoE: model.layers.{i}.mlp.gate.weight [E,D]; experts either per expert
 *     mlp.experts.{e}.{gate,up,down}_proj.weight or fused mlp.experts.gate_up_proj [E,2I,D]
 *     (gate rows first) + mlp.experts.down_proj [E,D,I]; mlp.shared_expert.{gate,up,down}_proj.weight,
 *     mlp.shared_expert_gate.weight [1,D] (when shared_expert_intermediate_size > 0)
 *   dense MLP (mlp_only_layers): model.layers.{i}.mlp.{gate,up,down}_proj.weight
 *   MTP: mtp.fc.weight [D,2D], mtp.pre_fc_norm_embedding.weight, mtp.pre_fc_norm_hidden.weight,
 *     mtp.layers.0.* (a full-attention decoder layer), mtp.norm.weight [D]
 * docs/checkpoints.md has the full list, the accepted dtypes and every error. */
#ifndef Q3N_CHECKPOINT_H
#define Q3N_CHECKPOINT_H

#include <stdint.h>

#include "safetensors.h"
#include "status.h"
#include "weights.h"

/* How q3n_checkpoint_write lays a model out on disk. Tied embeddings follow the config
 * (no lm_head.weight when tie_word_embeddings). */
struct q3n_checkpoint_layout {
    enum q3n_st_dtype dtype; /* Q3N_ST_F32 or Q3N_ST_BF16 (Q3N_ST_F16 also accepted) */
    int fused_experts;       /* 1: mlp.experts.gate_up_proj / down_proj; 0: per-expert keys */
    int shards;              /* 1: model.safetensors; N > 1: N shards + model.safetensors.index.json */
};

/* Writes config.json (q3n_config_to_json) and the weights of `model` into a new folder
 * `dir`, atomically: everything is written into a temporary sibling folder that is renamed
 * onto `dir` at the end, so a failure leaves nothing behind. `dir` must not exist (or be
 * an empty folder). MTP weights are written when config.num_mtp_layers > 0. */
enum q3n_status q3n_checkpoint_write(const char *dir, const struct q3n_model *model,
                                     const struct q3n_checkpoint_layout *layout, struct q3n_error *err);

/* Everything q3n_model_open checks (config, safetensors headers, FP8 refusal, every tensor's
 * name, shape and dtype against the config, F64 exactness) without converting or copying any
 * weight: for `q3n inspect` on checkpoints too large to convert (the 80B release in BF16 would
 * need 320 GB as float32). The returned model has config, dir and q3n_model_tensors, but
 * weights.layers is NULL and every weight pointer is NULL: do not run it. Close with
 * q3n_model_close. */
enum q3n_status q3n_checkpoint_check(struct q3n_model **model, const char *dir, struct q3n_error *err);

/* For `q3n inspect`: the mapped tensors of an opened checkpoint (NULL for synthetic models).
 * Lives as long as the model. */
const struct q3n_safetensors *q3n_model_tensors(const struct q3n_model *model);

#endif
