/* config.c — parse and validate a Qwen3-Next config.json; see config.h.
 *
 * Follows transformers' Qwen3NextConfig (5.17): defaults where transformers has one that
 * a real config.json may omit (head_dim 256, partial_rotary_factor 0.25, rope_theta 1e4,
 * full_attention_interval 4, decoder_sparse_step 1, norm_topk_prob true, ...); the size
 * fields that define the architecture are required. rope_theta / partial_rotary_factor
 * inside rope_parameters (5.x; 4.x's rope_scaling is read the same way) win over the
 * top-level fields (4.57). Every failure names the source file and the first bad field. */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#define CONFIG_MAX_BYTES (16u << 20) /* a config.json is a few KB; refuse anything absurd */

/* ---- JSON field readers -------------------------------------------------------------------- */

/* A field counts as absent when missing or JSON null. */
static const cJSON *field(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

/* Reads an integer field: a JSON number with no fractional part and |v| < 2^53. */
static enum q3n_status get_int(const cJSON *obj, const char *name, int required, int64_t dflt, int64_t *out,
                               const char *src, struct q3n_error *err)
{
    const cJSON *v = field(obj, name);
    if (!v) {
        if (required) return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: %s is missing", src, name);
        *out = dflt;
        return Q3N_OK;
    }
    if (!cJSON_IsNumber(v))
        return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: %s is not a number", src, name);
    double d = v->valuedouble;
    if (!(fabs(d) < 9007199254740992.0) || d != floor(d))
        return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: %s (%g) is not an integer", src, name, d);
    *out = (int64_t)d;
    return Q3N_OK;
}

static enum q3n_status get_num(const cJSON *obj, const char *name, int required, double dflt, double *out,
                               const char *src, struct q3n_error *err)
{
    const cJSON *v = field(obj, name);
    if (!v) {
        if (required) return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: %s is missing", src, name);
        *out = dflt;
        return Q3N_OK;
    }
    if (!cJSON_IsNumber(v)) return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: %s is not a number", src, name);
    *out = v->valuedouble;
    return Q3N_OK;
}

/* Booleans: JSON true/false (0/1 integers are accepted too). */
static enum q3n_status get_bool(const cJSON *obj, const char *name, int dflt, int *out, const char *src,
                                struct q3n_error *err)
{
    const cJSON *v = field(obj, name);
    if (!v) {
        *out = dflt;
        return Q3N_OK;
    }
    if (cJSON_IsBool(v)) {
        *out = cJSON_IsTrue(v) ? 1 : 0;
        return Q3N_OK;
    }
    if (cJSON_IsNumber(v) && (v->valuedouble == 0.0 || v->valuedouble == 1.0)) {
        *out = v->valuedouble == 1.0;
        return Q3N_OK;
    }
    return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: %s is not a boolean", src, name);
}

/* Input text quoted in a message: control characters become '?', long text is cut, so a
 * message stays one printable line whatever the file holds. */
static const char *quoted(const char *s, char *buf, size_t cap)
{
    size_t n = 0;
    for (; s[n] && n + 4 < cap; n++)
        buf[n] = ((unsigned char)s[n] < 0x20 || (unsigned char)s[n] >= 0x7f) ? '?' : s[n];
    if (s[n]) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

/* ---- parse --------------------------------------------------------------------------------- */

static enum q3n_status parse_rope(struct q3n_config *cfg, const cJSON *root, const char *src, struct q3n_error *err)
{
    enum q3n_status st;
    double theta = 0.0, prf = 0.0;
    st = get_num(root, "rope_theta", 0, 10000.0, &theta, src, err);
    if (st != Q3N_OK) return st;
    st = get_num(root, "partial_rotary_factor", 0, 0.25, &prf, src, err);
    if (st != Q3N_OK) return st;
    const char *dict_name = "rope_parameters";
    const cJSON *rp = field(root, "rope_scaling"); /* 4.x name; transformers prefers it when set */
    if (rp)
        dict_name = "rope_scaling";
    else
        rp = field(root, "rope_parameters");
    if (rp) {
        if (!cJSON_IsObject(rp)) return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: %s is not an object", src, dict_name);
        const cJSON *type = field(rp, "rope_type");
        if (!type) type = field(rp, "type");
        if (type && (!cJSON_IsString(type) || strcmp(type->valuestring, "default") != 0))
        {
            char q[64];
            return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "%s: %s.rope_type '%s' is not supported (only 'default')",
                                 src, dict_name, cJSON_IsString(type) ? quoted(type->valuestring, q, sizeof q) : "?");
        }
        char name[64];
        snprintf(name, sizeof name, "%s.rope_theta", dict_name);
        const cJSON *v = field(rp, "rope_theta");
        if (v) {
            if (!cJSON_IsNumber(v)) return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: %s is not a number", src, name);
            theta = v->valuedouble;
        }
        snprintf(name, sizeof name, "%s.partial_rotary_factor", dict_name);
        v = field(rp, "partial_rotary_factor");
        if (v) {
            if (!cJSON_IsNumber(v)) return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: %s is not a number", src, name);
            prf = v->valuedouble;
        }
    }
    cfg->rope_theta = theta;
    cfg->partial_rotary_factor = prf;
    return Q3N_OK;
}

static enum q3n_status parse_layers(struct q3n_config *cfg, const cJSON *root, const char *src,
                                    struct q3n_error *err)
{
    int64_t L = cfg->num_hidden_layers;
    if (L < 1 || L > Q3N_MAX_LAYERS)
        return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: num_hidden_layers (%lld) outside 1..%d", src, (long long)L,
                             Q3N_MAX_LAYERS);
    const cJSON *types = field(root, "layer_types");
    if (types) {
        if (!cJSON_IsArray(types))
            return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: layer_types is not a list", src);
        int n = cJSON_GetArraySize(types);
        if (n != L)
            return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: layer_types has %d entries, num_hidden_layers is %lld",
                                 src, n, (long long)L);
        for (int i = 0; i < n; i++) {
            const cJSON *t = cJSON_GetArrayItem(types, i);
            const char *s = cJSON_IsString(t) ? t->valuestring : NULL;
            if (s && (strcmp(s, "linear_attention") == 0 || strcmp(s, "mamba") == 0 || strcmp(s, "conv") == 0))
                cfg->layer_type[i] = Q3N_LAYER_LINEAR_ATTENTION;
            else if (s && (strcmp(s, "full_attention") == 0 || strcmp(s, "attention") == 0))
                cfg->layer_type[i] = Q3N_LAYER_FULL_ATTENTION;
            else {
                char q[64];
                return q3n_error_set(err, Q3N_ERR_CONFIG,
                                     "%s: layer_types[%d] ('%s') is neither linear_attention nor full_attention", src,
                                     i, s ? quoted(s, q, sizeof q) : "not a string");
            }
        }
    } else {
        int64_t interval;
        enum q3n_status st = get_int(root, "full_attention_interval", 0, 4, &interval, src, err);
        if (st != Q3N_OK) return st;
        if (interval < 1)
            return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: full_attention_interval (%lld) must be >= 1", src,
                                 (long long)interval);
        for (int64_t i = 0; i < L; i++)
            cfg->layer_type[i] = ((i + 1) % interval) ? Q3N_LAYER_LINEAR_ATTENTION : Q3N_LAYER_FULL_ATTENTION;
    }
    if (cfg->decoder_sparse_step < 1)
        return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: decoder_sparse_step (%lld) must be >= 1", src,
                             (long long)cfg->decoder_sparse_step);
    for (int64_t i = 0; i < L; i++)
        cfg->layer_is_sparse[i] = cfg->num_experts > 0 && (i + 1) % cfg->decoder_sparse_step == 0;
    const cJSON *mlp_only = field(root, "mlp_only_layers");
    if (mlp_only) {
        if (!cJSON_IsArray(mlp_only))
            return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: mlp_only_layers is not a list", src);
        int n = cJSON_GetArraySize(mlp_only);
        for (int i = 0; i < n; i++) {
            const cJSON *v = cJSON_GetArrayItem(mlp_only, i);
            if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 0 ||
                v->valuedouble >= (double)L)
                return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: mlp_only_layers[%d] is not a layer index in 0..%lld",
                                     src, i, (long long)(L - 1));
            cfg->layer_is_sparse[(int64_t)v->valuedouble] = 0;
        }
    }
    return Q3N_OK;
}

enum q3n_status q3n_config_parse(struct q3n_config *cfg, const char *json_text, size_t len, const char *source,
                                 struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    const char *src = source ? source : "config.json";
    memset(cfg, 0, sizeof *cfg);
    cJSON *root = cJSON_ParseWithLength(json_text, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= json_text && at <= json_text + len ? (long)(at - json_text) : -1;
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: not valid JSON (near byte %ld)", src, off);
    }
    if (!cJSON_IsObject(root)) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: the top level is not a JSON object", src);
        goto cleanup;
    }
    const cJSON *mt = field(root, "model_type");
    char q[64];
    if (mt && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "qwen3_next") != 0)) {
        st = q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "%s: model_type '%s' is not qwen3_next", src,
                           cJSON_IsString(mt) ? quoted(mt->valuestring, q, sizeof q) : "?");
        goto cleanup;
    }

#define INT_FIELD(name, req, dflt)                                                      \
    do {                                                                                \
        st = get_int(root, #name, (req), (dflt), &cfg->name, src, err);                 \
        if (st != Q3N_OK) goto cleanup;                                                 \
    } while (0)
    INT_FIELD(vocab_size, 1, 0);
    INT_FIELD(hidden_size, 1, 0);
    INT_FIELD(num_hidden_layers, 1, 0);
    INT_FIELD(intermediate_size, 0, 5632);
    INT_FIELD(max_position_embeddings, 0, 32768);
    INT_FIELD(num_attention_heads, 1, 0);
    INT_FIELD(num_key_value_heads, 1, 0);
    INT_FIELD(head_dim, 0, 256);
    INT_FIELD(linear_num_key_heads, 1, 0);
    INT_FIELD(linear_num_value_heads, 1, 0);
    INT_FIELD(linear_key_head_dim, 1, 0);
    INT_FIELD(linear_value_head_dim, 1, 0);
    INT_FIELD(linear_conv_kernel_dim, 0, 4);
    INT_FIELD(num_experts, 1, 0);
    INT_FIELD(num_experts_per_tok, 0, 10);
    INT_FIELD(moe_intermediate_size, 0, 512);
    INT_FIELD(shared_expert_intermediate_size, 0, 512);
    INT_FIELD(decoder_sparse_step, 0, 1);
#undef INT_FIELD
    st = get_num(root, "rms_norm_eps", 0, 1e-6, &cfg->rms_norm_eps, src, err);
    if (st != Q3N_OK) goto cleanup;
    st = get_bool(root, "tie_word_embeddings", 0, &cfg->tie_word_embeddings, src, err);
    if (st != Q3N_OK) goto cleanup;
    st = get_bool(root, "attention_bias", 0, &cfg->attention_bias, src, err);
    if (st != Q3N_OK) goto cleanup;
    st = get_bool(root, "norm_topk_prob", 1, &cfg->norm_topk_prob, src, err);
    if (st != Q3N_OK) goto cleanup;
    const cJSON *act = field(root, "hidden_act");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0)) {
        st = q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "%s: hidden_act '%s' is not supported (only silu)", src,
                           cJSON_IsString(act) ? quoted(act->valuestring, q, sizeof q) : "?");
        goto cleanup;
    }

    /* MTP: vLLM reads num_nextn_predict_layers; some exports write mtp_num_hidden_layers. */
    int64_t nextn = 0, mtp_hidden = 0;
    int has_nextn = field(root, "num_nextn_predict_layers") != NULL;
    int has_mtp_hidden = field(root, "mtp_num_hidden_layers") != NULL;
    st = get_int(root, "num_nextn_predict_layers", 0, 0, &nextn, src, err);
    if (st != Q3N_OK) goto cleanup;
    st = get_int(root, "mtp_num_hidden_layers", 0, 0, &mtp_hidden, src, err);
    if (st != Q3N_OK) goto cleanup;
    if (nextn < 0 || mtp_hidden < 0) {
        st = q3n_error_set(err, Q3N_ERR_CONFIG, "%s: %s (%lld) is negative", src,
                           nextn < 0 ? "num_nextn_predict_layers" : "mtp_num_hidden_layers",
                           (long long)(nextn < 0 ? nextn : mtp_hidden));
        goto cleanup;
    }
    if (has_nextn && has_mtp_hidden && nextn != mtp_hidden) {
        st = q3n_error_set(err, Q3N_ERR_CONFIG, "%s: num_nextn_predict_layers (%lld) and mtp_num_hidden_layers "
                           "(%lld) disagree", src, (long long)nextn, (long long)mtp_hidden);
        goto cleanup;
    }
    cfg->num_mtp_layers = has_nextn ? nextn : mtp_hidden;

    st = parse_rope(cfg, root, src, err);
    if (st != Q3N_OK) goto cleanup;
    st = parse_layers(cfg, root, src, err);
    if (st != Q3N_OK) goto cleanup;
    if (cfg->head_dim > 0 && cfg->partial_rotary_factor > 0 && cfg->partial_rotary_factor <= 1)
        cfg->rotary_dim = (int64_t)((double)cfg->head_dim * cfg->partial_rotary_factor);
    st = q3n_config_validate(cfg, src, err);
cleanup:
    cJSON_Delete(root);
    return st;
}

enum q3n_status q3n_config_load(struct q3n_config *cfg, const char *path, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    char *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return q3n_error_set(err, Q3N_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: cannot seek", path);
        goto cleanup;
    }
    long size = ftell(f);
    if (size < 0 || (unsigned long)size > CONFIG_MAX_BYTES) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: size %ld is not that of a config.json (max %u bytes)", path,
                           size, CONFIG_MAX_BYTES);
        goto cleanup;
    }
    rewind(f);
    text = malloc((size_t)size + 1);
    if (!text) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", path);
        goto cleanup;
    }
    if (fread(text, 1, (size_t)size, f) != (size_t)size) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: short read", path);
        goto cleanup;
    }
    text[size] = '\0';
    st = q3n_config_parse(cfg, text, (size_t)size, path, err);
cleanup:
    free(text);
    fclose(f);
    return st;
}

/* ---- validation ------------------------------------------------------------------------------ */

static enum q3n_status check_range(const char *src, const char *name, int64_t v, int64_t lo, int64_t hi,
                                   struct q3n_error *err)
{
    if (v < lo || v > hi)
        return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: %s (%lld) outside %lld..%lld", src, name, (long long)v,
                             (long long)lo, (long long)hi);
    return Q3N_OK;
}

enum q3n_status q3n_config_validate(const struct q3n_config *cfg, const char *source, struct q3n_error *err)
{
    const char *src = source ? source : "config";
    enum q3n_status st;
    /* Generous bounds: the released 80B model is well inside; absurd values are refused
     * before any size is computed from them. */
#define RANGE(field, lo, hi)                                                  \
    do {                                                                      \
        st = check_range(src, #field, cfg->field, (lo), (hi), err);          \
        if (st != Q3N_OK) return st;                                          \
    } while (0)
    RANGE(vocab_size, 1, 1 << 24);
    RANGE(hidden_size, 1, 1 << 16);
    RANGE(num_hidden_layers, 1, Q3N_MAX_LAYERS);
    RANGE(max_position_embeddings, 1, (int64_t)1 << 32);
    RANGE(num_attention_heads, 1, 1024);
    RANGE(num_key_value_heads, 1, 1024);
    RANGE(head_dim, 2, 4096);
    RANGE(linear_num_key_heads, 1, 1024);
    RANGE(linear_num_value_heads, 1, 1024);
    RANGE(linear_key_head_dim, 1, 4096);
    RANGE(linear_value_head_dim, 1, 4096);
    RANGE(linear_conv_kernel_dim, 1, 64);
    RANGE(num_experts, 0, 1 << 16);
    RANGE(decoder_sparse_step, 1, Q3N_MAX_LAYERS);
    RANGE(shared_expert_intermediate_size, 0, 1 << 20);
    RANGE(num_mtp_layers, 0, 1 << 10);
#undef RANGE
    if (cfg->num_attention_heads % cfg->num_key_value_heads != 0)
        return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: num_attention_heads (%lld) is not a multiple of "
                             "num_key_value_heads (%lld)", src, (long long)cfg->num_attention_heads,
                             (long long)cfg->num_key_value_heads);
    if (cfg->linear_num_value_heads % cfg->linear_num_key_heads != 0)
        return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: linear_num_value_heads (%lld) is not a multiple of "
                             "linear_num_key_heads (%lld)", src, (long long)cfg->linear_num_value_heads,
                             (long long)cfg->linear_num_key_heads);
    if (!(cfg->rms_norm_eps > 0.0 && cfg->rms_norm_eps < 1.0))
        return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: rms_norm_eps (%g) outside (0, 1)", src, cfg->rms_norm_eps);
    if (!(cfg->rope_theta > 1.0 && cfg->rope_theta < 1e30))
        return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: rope_theta (%g) outside (1, 1e30)", src, cfg->rope_theta);
    if (!(cfg->partial_rotary_factor > 0.0 && cfg->partial_rotary_factor <= 1.0))
        return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: partial_rotary_factor (%g) outside (0, 1]", src,
                             cfg->partial_rotary_factor);
    int64_t rot = (int64_t)((double)cfg->head_dim * cfg->partial_rotary_factor);
    if (cfg->rotary_dim != rot)
        return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: rotary_dim (%lld) is not int(head_dim * "
                             "partial_rotary_factor) = %lld", src, (long long)cfg->rotary_dim, (long long)rot);
    if (rot < 2 || rot % 2 != 0)
        return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: head_dim (%lld) * partial_rotary_factor (%g) gives %lld "
                             "rotary dims; need an even number >= 2", src, (long long)cfg->head_dim,
                             cfg->partial_rotary_factor, (long long)rot);
    int any_dense = 0, any_sparse = 0;
    for (int64_t i = 0; i < cfg->num_hidden_layers; i++) {
        if (cfg->layer_type[i] > Q3N_LAYER_FULL_ATTENTION)
            return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: layer_types[%lld] is not a layer type", src, (long long)i);
        if (cfg->layer_is_sparse[i] > 1)
            return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: layer %lld sparse flag is not 0/1", src, (long long)i);
        any_sparse |= cfg->layer_is_sparse[i];
        any_dense |= !cfg->layer_is_sparse[i];
    }
    if (any_sparse && cfg->num_experts < 1)
        return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: num_experts is 0 but some layers are sparse", src);
    if (cfg->num_experts > 0) {
        st = check_range(src, "num_experts_per_tok", cfg->num_experts_per_tok, 1, cfg->num_experts, err);
        if (st != Q3N_OK) return st;
        st = check_range(src, "moe_intermediate_size", cfg->moe_intermediate_size, 1, 1 << 20, err);
        if (st != Q3N_OK) return st;
    }
    if (any_dense || cfg->num_mtp_layers > 0) {
        st = check_range(src, "intermediate_size", cfg->intermediate_size, any_dense ? 1 : 0, 1 << 20, err);
        if (st != Q3N_OK) return st;
    }
    if (cfg->num_mtp_layers > 1)
        return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "%s: num_nextn_predict_layers (%lld): only one MTP layer is "
                             "supported", src, (long long)cfg->num_mtp_layers);
    /* Every size derived from the config must fit easily in 64 bits. */
    double total = (double)cfg->hidden_size * (double)cfg->vocab_size * 2.0;
    double per_layer = (double)cfg->hidden_size *
                       ((double)q3n_config_qkvz_dim(cfg) + 4.0 * (double)cfg->num_attention_heads * cfg->head_dim +
                        3.0 * (double)cfg->num_experts * cfg->moe_intermediate_size +
                        3.0 * (double)cfg->intermediate_size + 3.0 * cfg->shared_expert_intermediate_size);
    total += per_layer * (double)(cfg->num_hidden_layers + 1);
    if (!(total < 1e15))
        return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: the sizes give %.3g parameters; refusing absurd configs "
                             "(limit 1e15)", src, total);
    return Q3N_OK;
}

/* ---- derived sizes --------------------------------------------------------------------------- */

int64_t q3n_config_conv_dim(const struct q3n_config *cfg)
{
    return 2 * cfg->linear_num_key_heads * cfg->linear_key_head_dim +
           cfg->linear_num_value_heads * cfg->linear_value_head_dim;
}

int64_t q3n_config_qkvz_dim(const struct q3n_config *cfg)
{
    return 2 * cfg->linear_num_key_heads * cfg->linear_key_head_dim +
           2 * cfg->linear_num_value_heads * cfg->linear_value_head_dim;
}

static int64_t full_attn_params(const struct q3n_config *c)
{
    int64_t D = c->hidden_size, HD = c->head_dim, NH = c->num_attention_heads, NKV = c->num_key_value_heads;
    int64_t n = NH * 2 * HD * D + 2 * NKV * HD * D + D * NH * HD + 2 * HD;
    if (c->attention_bias) n += NH * 2 * HD + 2 * NKV * HD + D;
    return n;
}

static int64_t linear_attn_params(const struct q3n_config *c)
{
    int64_t D = c->hidden_size, NV = c->linear_num_value_heads, DV = c->linear_value_head_dim;
    return q3n_config_qkvz_dim(c) * D + 2 * NV * D + q3n_config_conv_dim(c) * c->linear_conv_kernel_dim + 2 * NV +
           DV + D * NV * DV;
}

/* MoE block parameters; `routed` = how many experts count (E for the total, K per token). */
static int64_t moe_params(const struct q3n_config *c, int64_t routed)
{
    int64_t D = c->hidden_size, S = c->shared_expert_intermediate_size;
    int64_t n = c->num_experts * D + routed * 3 * c->moe_intermediate_size * D;
    if (S > 0) n += 3 * S * D + D;
    return n;
}

static int64_t count_params(const struct q3n_config *c, int active)
{
    int64_t D = c->hidden_size;
    int64_t n = c->vocab_size * D + D;          /* embed_tokens, final norm */
    if (!c->tie_word_embeddings) n += c->vocab_size * D;
    int64_t routed = active ? c->num_experts_per_tok : c->num_experts;
    for (int64_t i = 0; i < c->num_hidden_layers; i++) {
        n += 2 * D;
        n += c->layer_type[i] == Q3N_LAYER_FULL_ATTENTION ? full_attn_params(c) : linear_attn_params(c);
        n += c->layer_is_sparse[i] ? moe_params(c, routed) : 3 * c->intermediate_size * D;
    }
    if (!active && c->num_mtp_layers > 0) {
        /* fc, two pre-fc norms, one full-attention layer (sparse by layer 0's rule), norm */
        int mtp_sparse = q3n_config_mtp_layer_is_sparse(c);
        n += c->num_mtp_layers * (2 * D * D + 2 * D + 2 * D + full_attn_params(c) +
                                  (mtp_sparse ? moe_params(c, c->num_experts) : 3 * c->intermediate_size * D) + D);
    }
    return n;
}

int q3n_config_mtp_layer_is_sparse(const struct q3n_config *cfg)
{
    return cfg->layer_is_sparse[0];
}

int64_t q3n_config_param_count(const struct q3n_config *cfg)
{
    return count_params(cfg, 0);
}

int64_t q3n_config_active_param_count(const struct q3n_config *cfg)
{
    return count_params(cfg, 1);
}
