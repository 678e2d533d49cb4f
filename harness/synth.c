/* synth.c — synthetic Qwen3-Next models: presets and seeded random weights; see synth.h.
 *
 * One allocation holds everything: the per-layer weight structs, the expert tables and every
 * float. A single walk over the tensors (synth_layout) runs twice: first counting, then
 * pointing each weight into the block and filling it, so sizes and layout cannot drift. */
#include "synth.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

/* ---- presets ------------------------------------------------------------------------ */

static void set_layers(struct q3n_config *cfg, int64_t n_layers, int full_interval)
{
    cfg->num_hidden_layers = n_layers;
    for (int64_t i = 0; i < n_layers; i++) {
        cfg->layer_type[i] = ((i + 1) % full_interval == 0) ? Q3N_LAYER_FULL_ATTENTION : Q3N_LAYER_LINEAR_ATTENTION;
        cfg->layer_is_sparse[i] = cfg->num_experts > 0 ? 1 : 0;
    }
}

static void real_dims(struct q3n_config *cfg)
{
    cfg->vocab_size = 151936;
    cfg->hidden_size = 2048;
    cfg->intermediate_size = 5120;
    cfg->rms_norm_eps = 1e-6;
    cfg->tie_word_embeddings = 0;
    cfg->max_position_embeddings = 262144;
    cfg->num_attention_heads = 16;
    cfg->num_key_value_heads = 2;
    cfg->head_dim = 256;
    cfg->rope_theta = 1e7;
    cfg->partial_rotary_factor = 0.25;
    cfg->linear_num_key_heads = 16;
    cfg->linear_num_value_heads = 32;
    cfg->linear_key_head_dim = 128;
    cfg->linear_value_head_dim = 128;
    cfg->linear_conv_kernel_dim = 4;
    cfg->num_experts = 512;
    cfg->num_experts_per_tok = 10;
    cfg->moe_intermediate_size = 512;
    cfg->shared_expert_intermediate_size = 512;
    cfg->decoder_sparse_step = 1;
    cfg->norm_topk_prob = 1;
    cfg->num_mtp_layers = 0;
}

static const char *const preset_names[] = {"tiny", "odd", "bench-1k", "real-1l", "real-4l", NULL};

const char *const *q3n_synth_preset_names(void)
{
    return preset_names;
}

enum q3n_status q3n_synth_config(struct q3n_config *cfg, const char *preset, struct q3n_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->rms_norm_eps = 1e-6;
    cfg->rope_theta = 10000.0;
    cfg->partial_rotary_factor = 0.25;
    cfg->max_position_embeddings = 4096;
    cfg->decoder_sparse_step = 1;
    cfg->norm_topk_prob = 1;
    if (!preset) preset = "";
    if (strcmp(preset, "tiny") == 0) {
        cfg->vocab_size = 128;
        cfg->hidden_size = 64;
        cfg->intermediate_size = 96;
        cfg->num_attention_heads = 4;
        cfg->num_key_value_heads = 2;
        cfg->head_dim = 16;
        cfg->linear_num_key_heads = 2;
        cfg->linear_num_value_heads = 4;
        cfg->linear_key_head_dim = 16;
        cfg->linear_value_head_dim = 16;
        cfg->linear_conv_kernel_dim = 4;
        cfg->num_experts = 8;
        cfg->num_experts_per_tok = 2;
        cfg->moe_intermediate_size = 32;
        cfg->shared_expert_intermediate_size = 32;
        set_layers(cfg, 4, 4);
    } else if (strcmp(preset, "odd") == 0) {
        cfg->vocab_size = 97;
        cfg->hidden_size = 48;
        cfg->intermediate_size = 72;
        cfg->tie_word_embeddings = 1;
        cfg->num_attention_heads = 6;
        cfg->num_key_value_heads = 2;
        cfg->head_dim = 24;
        cfg->partial_rotary_factor = 0.5;
        cfg->rope_theta = 1e6;
        cfg->linear_num_key_heads = 2;
        cfg->linear_num_value_heads = 6;
        cfg->linear_key_head_dim = 24;
        cfg->linear_value_head_dim = 40;
        cfg->linear_conv_kernel_dim = 3;
        cfg->num_experts = 6;
        cfg->num_experts_per_tok = 3;
        cfg->moe_intermediate_size = 20;
        cfg->shared_expert_intermediate_size = 28;
        cfg->norm_topk_prob = 0;
        cfg->num_mtp_layers = 1;
        set_layers(cfg, 4, 4);
        cfg->layer_type[0] = Q3N_LAYER_FULL_ATTENTION; /* full, linear, linear, full */
        cfg->layer_is_sparse[2] = 0;                  /* mlp_only_layers = [2] */
    } else if (strcmp(preset, "bench-1k") == 0) {
        cfg->vocab_size = 8192;
        cfg->hidden_size = 1024;
        cfg->intermediate_size = 2816;
        cfg->num_attention_heads = 8;
        cfg->num_key_value_heads = 2;
        cfg->head_dim = 128;
        cfg->linear_num_key_heads = 4;
        cfg->linear_num_value_heads = 8;
        cfg->linear_key_head_dim = 128;
        cfg->linear_value_head_dim = 128;
        cfg->linear_conv_kernel_dim = 4;
        cfg->num_experts = 32;
        cfg->num_experts_per_tok = 4;
        cfg->moe_intermediate_size = 256;
        cfg->shared_expert_intermediate_size = 256;
        set_layers(cfg, 4, 4);
    } else if (strcmp(preset, "real-1l") == 0) {
        real_dims(cfg);
        cfg->num_experts = 16;
        set_layers(cfg, 2, 2); /* linear, full */
    } else if (strcmp(preset, "real-4l") == 0) {
        real_dims(cfg);
        set_layers(cfg, 4, 4);
    } else {
        return q3n_error_set(err, Q3N_ERR_USAGE,
                             "synth: unknown preset '%s' (known: tiny, odd, bench-1k, real-1l, real-4l)", preset);
    }
    cfg->rotary_dim = (int64_t)((double)cfg->head_dim * cfg->partial_rotary_factor);
    char source[64];
    snprintf(source, sizeof source, "synth preset %s", preset);
    return q3n_config_validate(cfg, source, err);
}

/* ---- weights ------------------------------------------------------------------------ */

enum dist {
    DIST_NORMAL,    /* N(0, scale^2) */
    DIST_NORM_W,    /* zero-centred norm weight: +-U(0.1, 0.5) */
    DIST_GATED_W,   /* gated-norm weight: 1 +- U(0.05, 0.3) */
    DIST_A_LOG,     /* log(U(1, 16)) */
    DIST_UNIFORM    /* U(-scale, scale) */
};

struct synth_ctx {
    struct q3n_rng rng;
    float *base;      /* NULL while counting */
    size_t used;      /* floats taken so far */
    int have_spare;   /* Box-Muller gives normals in pairs */
    double spare;
};

static double normal(struct synth_ctx *c)
{
    if (c->have_spare) {
        c->have_spare = 0;
        return c->spare;
    }
    double u1 = 1.0 - q3n_rng_uniform(&c->rng), u2 = q3n_rng_uniform(&c->rng);
    double r = sqrt(-2.0 * log(u1)), phi = 6.283185307179586 * u2;
    c->spare = r * sin(phi);
    c->have_spare = 1;
    return r * cos(phi);
}

/* Takes n floats from the block; when filling, draws them from dist. */
static const float *tensor(struct synth_ctx *c, size_t n, enum dist dist, double scale)
{
    size_t at = c->used;
    c->used += n;
    if (!c->base) return NULL;
    float *p = c->base + at;
    for (size_t i = 0; i < n; i++) {
        double v = 0.0;
        switch (dist) {
        case DIST_NORMAL: v = scale * normal(c); break;
        case DIST_NORM_W: {
            double m = q3n_rng_range(&c->rng, 0.1, 0.5);
            v = (q3n_rng_u64(&c->rng) & 1u) ? m : -m;
            break;
        }
        case DIST_GATED_W: {
            double m = q3n_rng_range(&c->rng, 0.05, 0.3);
            v = 1.0 + ((q3n_rng_u64(&c->rng) & 1u) ? m : -m);
            break;
        }
        case DIST_A_LOG: v = log(q3n_rng_range(&c->rng, 1.0, 16.0)); break;
        case DIST_UNIFORM: v = q3n_rng_range(&c->rng, -scale, scale); break;
        }
        p[i] = (float)v;
    }
    return p;
}

static const float *proj(struct synth_ctx *c, int64_t out, int64_t in)
{
    return tensor(c, (size_t)out * (size_t)in, DIST_NORMAL, 1.0 / sqrt((double)in));
}

static void mlp_layout(struct synth_ctx *c, struct q3n_mlp_weights *w, int64_t D, int64_t W)
{
    w->gate_proj = proj(c, W, D);
    w->up_proj = proj(c, W, D);
    w->down_proj = proj(c, D, W);
}

static void layer_layout(struct synth_ctx *c, struct q3n_layer_weights *lw, const struct q3n_config *cfg,
                         int full_attention, int sparse, struct q3n_mlp_weights *experts)
{
    int64_t D = cfg->hidden_size;
    lw->input_layernorm = tensor(c, (size_t)D, DIST_NORM_W, 0.0);
    lw->post_attention_layernorm = tensor(c, (size_t)D, DIST_NORM_W, 0.0);
    if (full_attention) {
        int64_t NH = cfg->num_attention_heads, NKV = cfg->num_key_value_heads, HD = cfg->head_dim;
        struct q3n_attn_weights *a = &lw->self_attn;
        a->q_proj = proj(c, NH * 2 * HD, D);
        a->k_proj = proj(c, NKV * HD, D);
        a->v_proj = proj(c, NKV * HD, D);
        a->o_proj = proj(c, D, NH * HD);
        a->q_norm = tensor(c, (size_t)HD, DIST_NORM_W, 0.0);
        a->k_norm = tensor(c, (size_t)HD, DIST_NORM_W, 0.0);
        if (cfg->attention_bias) {
            a->q_bias = tensor(c, (size_t)(NH * 2 * HD), DIST_NORMAL, 0.1);
            a->k_bias = tensor(c, (size_t)(NKV * HD), DIST_NORMAL, 0.1);
            a->v_bias = tensor(c, (size_t)(NKV * HD), DIST_NORMAL, 0.1);
            a->o_bias = tensor(c, (size_t)D, DIST_NORMAL, 0.1);
        }
    } else {
        int64_t NV = cfg->linear_num_value_heads, DV = cfg->linear_value_head_dim;
        int64_t Kc = cfg->linear_conv_kernel_dim;
        struct q3n_linear_attn_weights *l = &lw->linear_attn;
        l->in_proj_qkvz = proj(c, q3n_config_qkvz_dim(cfg), D);
        l->in_proj_ba = proj(c, 2 * NV, D);
        l->conv1d = tensor(c, (size_t)(q3n_config_conv_dim(cfg) * Kc), DIST_NORMAL, 1.0 / sqrt((double)Kc));
        l->dt_bias = tensor(c, (size_t)NV, DIST_UNIFORM, 1.0);
        l->A_log = tensor(c, (size_t)NV, DIST_A_LOG, 0.0);
        l->norm = tensor(c, (size_t)DV, DIST_GATED_W, 0.0);
        l->out_proj = proj(c, D, NV * DV);
    }
    if (sparse) {
        int64_t E = cfg->num_experts, I = cfg->moe_intermediate_size, S = cfg->shared_expert_intermediate_size;
        struct q3n_moe_weights *m = &lw->moe;
        m->router = tensor(c, (size_t)(E * D), DIST_NORMAL, 3.0 / sqrt((double)D));
        m->experts = experts;
        for (int64_t e = 0; e < E; e++) {
            struct q3n_mlp_weights tmp;
            mlp_layout(c, experts ? &experts[e] : &tmp, D, I);
        }
        if (S > 0) {
            mlp_layout(c, &m->shared_expert, D, S);
            m->shared_expert_gate = proj(c, 1, D);
        }
    } else {
        mlp_layout(c, &lw->mlp, D, cfg->intermediate_size);
    }
}

/* Walks every tensor of the model in a fixed order (the order fixes the random stream). */
static void synth_layout(struct synth_ctx *c, struct q3n_weights *w, const struct q3n_config *cfg,
                         struct q3n_mlp_weights *experts)
{
    int64_t D = cfg->hidden_size, V = cfg->vocab_size, E = cfg->num_experts;
    w->embed_tokens = tensor(c, (size_t)(V * D), DIST_NORMAL, 1.0);
    for (int64_t i = 0; i < cfg->num_hidden_layers; i++) {
        int sparse = cfg->layer_is_sparse[i];
        layer_layout(c, &w->layers[i], cfg, cfg->layer_type[i] == Q3N_LAYER_FULL_ATTENTION, sparse,
                     (sparse && experts) ? experts + i * E : NULL);
    }
    w->norm = tensor(c, (size_t)D, DIST_NORM_W, 0.0);
    w->lm_head = cfg->tie_word_embeddings ? w->embed_tokens : proj(c, V, D);
    if (cfg->num_mtp_layers > 0) {
        struct q3n_mtp_weights *m = &w->mtp;
        m->layer_is_sparse = E > 0;
        m->pre_fc_norm_embedding = tensor(c, (size_t)D, DIST_NORM_W, 0.0);
        m->pre_fc_norm_hidden = tensor(c, (size_t)D, DIST_NORM_W, 0.0);
        m->fc = proj(c, D, 2 * D);
        layer_layout(c, &m->layer, cfg, 1, m->layer_is_sparse,
                     experts ? experts + cfg->num_hidden_layers * E : NULL);
        m->norm = tensor(c, (size_t)D, DIST_NORM_W, 0.0);
    }
}

static void synth_release(struct q3n_model *model)
{
    free(model->owner);
    model->owner = NULL;
    memset(&model->weights, 0, sizeof model->weights);
}

static size_t round_up(size_t n, size_t a)
{
    return (n + a - 1) / a * a;
}

enum q3n_status q3n_synth_model_create(struct q3n_model **model, const struct q3n_config *cfg, uint64_t seed,
                                       struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    struct q3n_model *m = NULL;
    *model = NULL;
    st = q3n_config_validate(cfg, "synth", err);
    if (st != Q3N_OK) goto cleanup;

    m = calloc(1, sizeof *m);
    if (!m) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "synth: out of memory for the model struct");
        goto cleanup;
    }
    m->config = *cfg;

    /* Sizes table: layer structs, expert tables, floats. */
    size_t L = (size_t)cfg->num_hidden_layers, E = (size_t)cfg->num_experts;
    size_t n_expert_tables = (L + (cfg->num_mtp_layers > 0 ? 1u : 0u)) * E;
    struct q3n_layer_weights scratch_layers[Q3N_MAX_LAYERS];
    struct q3n_weights counting = {.layers = scratch_layers};
    struct synth_ctx c = {.base = NULL};
    synth_layout(&c, &counting, cfg, NULL);
    size_t bytes_layers = round_up(L * sizeof(struct q3n_layer_weights), 64);
    size_t bytes_experts = round_up(n_expert_tables * sizeof(struct q3n_mlp_weights), 64);
    size_t bytes_floats = 0, total = 0;
    if (!q3n_mul_size(&bytes_floats, c.used, sizeof(float)) ||
        !q3n_add_size(&total, bytes_layers + bytes_experts, bytes_floats)) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "synth: model size overflows");
        goto cleanup;
    }
    char *block = calloc(1, total);
    if (!block) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "synth: cannot allocate %zu bytes of weights", total);
        goto cleanup;
    }
    m->owner = block;
    m->release = synth_release;
    m->weights.layers = (struct q3n_layer_weights *)block;
    struct q3n_mlp_weights *experts = n_expert_tables ? (struct q3n_mlp_weights *)(block + bytes_layers) : NULL;

    memset(&c, 0, sizeof c);
    q3n_rng_seed(&c.rng, seed);
    c.base = (float *)(block + bytes_layers + bytes_experts);
    synth_layout(&c, &m->weights, cfg, experts);
    *model = m;
    m = NULL;

cleanup:
    q3n_model_close(m);
    return st;
}

/* ---- config.json ---------------------------------------------------------------------- */

struct jbuf {
    char *buf;
    size_t cap, len;
    int overflow;
};

static void jprintf(struct jbuf *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void jprintf(struct jbuf *j, const char *fmt, ...)
{
    if (j->overflow) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(j->buf + j->len, j->cap - j->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= j->cap - j->len) {
        j->overflow = 1;
        return;
    }
    j->len += (size_t)n;
}

enum q3n_status q3n_synth_config_json(char *buf, size_t cap, const struct q3n_config *cfg, struct q3n_error *err)
{
    if (cap == 0) return q3n_error_set(err, Q3N_ERR_NOMEM, "synth: config.json buffer is empty");
    struct jbuf j = {.buf = buf, .cap = cap};
    buf[0] = '\0';
    jprintf(&j, "{\n  \"architectures\": [\"Qwen3NextForCausalLM\"],\n  \"model_type\": \"qwen3_next\",\n");
    jprintf(&j, "  \"vocab_size\": %lld,\n  \"hidden_size\": %lld,\n  \"num_hidden_layers\": %lld,\n",
            (long long)cfg->vocab_size, (long long)cfg->hidden_size, (long long)cfg->num_hidden_layers);
    jprintf(&j, "  \"intermediate_size\": %lld,\n  \"rms_norm_eps\": %.17g,\n  \"tie_word_embeddings\": %s,\n",
            (long long)cfg->intermediate_size, cfg->rms_norm_eps, cfg->tie_word_embeddings ? "true" : "false");
    jprintf(&j, "  \"max_position_embeddings\": %lld,\n", (long long)cfg->max_position_embeddings);
    jprintf(&j, "  \"num_attention_heads\": %lld,\n  \"num_key_value_heads\": %lld,\n  \"head_dim\": %lld,\n",
            (long long)cfg->num_attention_heads, (long long)cfg->num_key_value_heads, (long long)cfg->head_dim);
    jprintf(&j,
            "  \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": %.17g, "
            "\"partial_rotary_factor\": %.17g},\n",
            cfg->rope_theta, cfg->partial_rotary_factor);
    jprintf(&j, "  \"attention_bias\": %s,\n", cfg->attention_bias ? "true" : "false");
    jprintf(&j,
            "  \"linear_num_key_heads\": %lld,\n  \"linear_num_value_heads\": %lld,\n"
            "  \"linear_key_head_dim\": %lld,\n  \"linear_value_head_dim\": %lld,\n"
            "  \"linear_conv_kernel_dim\": %lld,\n",
            (long long)cfg->linear_num_key_heads, (long long)cfg->linear_num_value_heads,
            (long long)cfg->linear_key_head_dim, (long long)cfg->linear_value_head_dim,
            (long long)cfg->linear_conv_kernel_dim);
    jprintf(&j,
            "  \"num_experts\": %lld,\n  \"num_experts_per_tok\": %lld,\n  \"moe_intermediate_size\": %lld,\n"
            "  \"shared_expert_intermediate_size\": %lld,\n  \"decoder_sparse_step\": %lld,\n"
            "  \"norm_topk_prob\": %s,\n",
            (long long)cfg->num_experts, (long long)cfg->num_experts_per_tok, (long long)cfg->moe_intermediate_size,
            (long long)cfg->shared_expert_intermediate_size, (long long)cfg->decoder_sparse_step,
            cfg->norm_topk_prob ? "true" : "false");
    if (cfg->num_mtp_layers > 0)
        jprintf(&j, "  \"num_nextn_predict_layers\": %lld,\n", (long long)cfg->num_mtp_layers);
    jprintf(&j, "  \"layer_types\": [");
    for (int64_t i = 0; i < cfg->num_hidden_layers; i++)
        jprintf(&j, "%s\"%s\"", i ? ", " : "",
                cfg->layer_type[i] == Q3N_LAYER_FULL_ATTENTION ? "full_attention" : "linear_attention");
    jprintf(&j, "],\n  \"mlp_only_layers\": [");
    int first = 1;
    for (int64_t i = 0; i < cfg->num_hidden_layers; i++) {
        if (cfg->layer_is_sparse[i] || cfg->num_experts == 0) continue;
        jprintf(&j, "%s%lld", first ? "" : ", ", (long long)i);
        first = 0;
    }
    jprintf(&j, "]\n}\n");
    if (j.overflow) return q3n_error_set(err, Q3N_ERR_NOMEM, "synth: config.json does not fit in %zu bytes", cap);
    return Q3N_OK;
}
