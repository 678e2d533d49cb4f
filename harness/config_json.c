/* config_json.c — write a q3n_config as a transformers-5.x config.json; see config.h.
 *
 * The output loads with transformers' Qwen3NextConfig.from_pretrained and parses back
 * through q3n_config_parse into the same struct. Sparse layers are expressed with
 * decoder_sparse_step + mlp_only_layers; when the struct's sparse pattern cannot be
 * written with its own step, the step is written as 1 and every dense layer listed. */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

/* A float field written with the fewest digits (15..17) that read back exactly and always a '.' or exponent, so
 * Python reads it back as a float (transformers' strict config types check this). */
static int add_float(cJSON *obj, const char *name, double v)
{
    char buf[64];
    for (int prec = 15; prec <= 17; prec++) { /* the shortest text that reads back exactly */
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    if (!strpbrk(buf, ".eEn")) strncat(buf, ".0", sizeof buf - strlen(buf) - 1);
    return cJSON_AddItemToObject(obj, name, cJSON_CreateRaw(buf)) ? 1 : 0;
}

static int add_int(cJSON *obj, const char *name, int64_t v)
{
    return cJSON_AddNumberToObject(obj, name, (double)v) != NULL;
}

static int add_bool(cJSON *obj, const char *name, int v)
{
    return cJSON_AddBoolToObject(obj, name, v ? 1 : 0) != NULL;
}

/* 1 when every layer's sparse flag follows num_experts, `step` and a dense list (i.e. no
 * layer is sparse where the step rule says dense). */
static int step_expresses(const struct q3n_config *c, int64_t step)
{
    for (int64_t i = 0; i < c->num_hidden_layers; i++) {
        int by_rule = c->num_experts > 0 && (i + 1) % step == 0;
        if (c->layer_is_sparse[i] && !by_rule) return 0;
    }
    return 1;
}

enum q3n_status q3n_config_to_json(const struct q3n_config *c, char **out_json, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    *out_json = NULL;
    st = q3n_config_validate(c, "q3n_config_to_json", err);
    if (st != Q3N_OK) return st;
    cJSON *root = cJSON_CreateObject();
    int ok = root != NULL;
    cJSON *arch = cJSON_CreateStringArray((const char *const[]){"Qwen3NextForCausalLM"}, 1);
    ok = ok && arch && cJSON_AddItemToObject(root, "architectures", arch);
    ok = ok && cJSON_AddStringToObject(root, "model_type", "qwen3_next");
    ok = ok && add_int(root, "vocab_size", c->vocab_size);
    ok = ok && add_int(root, "hidden_size", c->hidden_size);
    ok = ok && add_int(root, "intermediate_size", c->intermediate_size);
    ok = ok && add_int(root, "num_hidden_layers", c->num_hidden_layers);
    ok = ok && add_int(root, "num_attention_heads", c->num_attention_heads);
    ok = ok && add_int(root, "num_key_value_heads", c->num_key_value_heads);
    ok = ok && add_int(root, "head_dim", c->head_dim);
    ok = ok && cJSON_AddStringToObject(root, "hidden_act", "silu");
    ok = ok && add_int(root, "max_position_embeddings", c->max_position_embeddings);
    ok = ok && add_float(root, "rms_norm_eps", c->rms_norm_eps);
    ok = ok && add_bool(root, "tie_word_embeddings", c->tie_word_embeddings);
    ok = ok && add_bool(root, "attention_bias", c->attention_bias);
    cJSON *rope = cJSON_CreateObject();
    ok = ok && rope && cJSON_AddItemToObject(root, "rope_parameters", rope);
    ok = ok && cJSON_AddStringToObject(rope, "rope_type", "default");
    ok = ok && add_float(rope, "rope_theta", c->rope_theta);
    ok = ok && add_float(rope, "partial_rotary_factor", c->partial_rotary_factor);
    ok = ok && add_int(root, "linear_conv_kernel_dim", c->linear_conv_kernel_dim);
    ok = ok && add_int(root, "linear_key_head_dim", c->linear_key_head_dim);
    ok = ok && add_int(root, "linear_value_head_dim", c->linear_value_head_dim);
    ok = ok && add_int(root, "linear_num_key_heads", c->linear_num_key_heads);
    ok = ok && add_int(root, "linear_num_value_heads", c->linear_num_value_heads);
    int64_t step = step_expresses(c, c->decoder_sparse_step) ? c->decoder_sparse_step : 1;
    ok = ok && add_int(root, "decoder_sparse_step", step);
    ok = ok && add_int(root, "moe_intermediate_size", c->moe_intermediate_size);
    ok = ok && add_int(root, "shared_expert_intermediate_size", c->shared_expert_intermediate_size);
    ok = ok && add_int(root, "num_experts_per_tok", c->num_experts_per_tok);
    ok = ok && add_int(root, "num_experts", c->num_experts);
    ok = ok && add_bool(root, "norm_topk_prob", c->norm_topk_prob);
    cJSON *mlp_only = cJSON_CreateArray();
    ok = ok && mlp_only && cJSON_AddItemToObject(root, "mlp_only_layers", mlp_only);
    cJSON *types = cJSON_CreateArray();
    ok = ok && types && cJSON_AddItemToObject(root, "layer_types", types);
    for (int64_t i = 0; ok && i < c->num_hidden_layers; i++) {
        int by_rule = c->num_experts > 0 && (i + 1) % step == 0;
        if (by_rule && !c->layer_is_sparse[i]) ok = cJSON_AddItemToArray(mlp_only, cJSON_CreateNumber((double)i));
        const char *t = c->layer_type[i] == Q3N_LAYER_FULL_ATTENTION ? "full_attention" : "linear_attention";
        ok = ok && cJSON_AddItemToArray(types, cJSON_CreateString(t));
    }
    if (ok && c->num_mtp_layers > 0) ok = add_int(root, "num_nextn_predict_layers", c->num_mtp_layers);
    if (!ok) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "q3n_config_to_json: out of memory");
        goto cleanup;
    }
    *out_json = cJSON_Print(root);
    if (!*out_json) st = q3n_error_set(err, Q3N_ERR_NOMEM, "q3n_config_to_json: out of memory");
cleanup:
    cJSON_Delete(root);
    return st;
}
