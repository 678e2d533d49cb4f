/* fuzz_cases.c — drawing the shape fuzzer's model cases; see fuzz_cases.h and docs/fuzzing.md. */
#include "fuzz_cases.h"

#include <stdio.h>
#include <string.h>

#include "rng.h"

/* Streams derived from one case seed, so adding draws to one does not shift the others. */
#define STREAM_CONFIG 0x636f6e666967ull /* "config" */
#define STREAM_TOKENS 0x746f6b656e73ull /* "tokens" */
#define STREAM_WEIGHTS 0x776569676874ull /* "weight" */

static uint64_t mix64(uint64_t x)
{
    struct q3n_rng r;
    q3n_rng_seed(&r, x);
    return q3n_rng_u64(&r);
}

uint64_t q3n_fuzz_case_seed(uint64_t run_seed, int64_t index)
{
    return mix64(mix64(run_seed) ^ (uint64_t)index);
}

const char *q3n_fuzz_family_name(enum q3n_fuzz_family family)
{
    switch (family) {
    case Q3N_FUZZ_SMALL: return "small";
    case Q3N_FUZZ_ODD: return "odd";
    case Q3N_FUZZ_REAL_HEADS: return "real-heads";
    case Q3N_FUZZ_FAMILY_COUNT: break;
    }
    return "unknown";
}

static int64_t pick(struct q3n_rng *r, const int64_t *v, int64_t n)
{
    return v[q3n_rng_int(r, 0, n - 1)];
}

int q3n_fuzz_set_rotary(struct q3n_config *cfg, double partial_rotary_factor)
{
    cfg->partial_rotary_factor = partial_rotary_factor;
    /* transformers: int(head_dim * partial_rotary_factor), a double product truncated. */
    cfg->rotary_dim = (int64_t)((double)cfg->head_dim * partial_rotary_factor);
    return cfg->rotary_dim >= 2 && cfg->rotary_dim <= cfg->head_dim && cfg->rotary_dim % 2 == 0;
}

void q3n_fuzz_set_sparse_layers(struct q3n_config *cfg, uint64_t mlp_only_mask)
{
    for (int64_t l = 0; l < cfg->num_hidden_layers; l++) {
        int mlp_only = l < 64 && ((mlp_only_mask >> l) & 1u);
        int sparse = !mlp_only && cfg->num_experts > 0 && (l + 1) % cfg->decoder_sparse_step == 0;
        cfg->layer_is_sparse[l] = (uint8_t)sparse;
    }
}

/* A partial rotary factor giving an even rotary dim: the released 0.25 and 0.5 / 1.0 when
 * they work, else rot/HD for a random even rot (rounded up by a hair so the truncation in
 * int(HD * f) lands on rot). */
static void draw_rotary(struct q3n_config *cfg, struct q3n_rng *r)
{
    static const double common[] = {0.25, 0.5, 1.0, 0.75};
    double f = common[q3n_rng_int(r, 0, 3)];
    if (q3n_rng_uniform(r) < 0.6 && q3n_fuzz_set_rotary(cfg, f)) return;
    for (int tries = 0; tries < 64; tries++) {
        int64_t rot = 2 * q3n_rng_int(r, 1, cfg->head_dim / 2);
        f = ((double)rot + 0.25) / (double)cfg->head_dim;
        if (f > 1.0) f = 1.0;
        if (q3n_fuzz_set_rotary(cfg, f)) return;
    }
    Q3N_REQUIRE(q3n_fuzz_set_rotary(cfg, 1.0)); /* head_dim is even when we get here */
}

/* Layer-type patterns: the released "every 4th is full", other intervals, all linear,
 * all full, random. */
static void draw_layer_types(struct q3n_config *cfg, struct q3n_rng *r)
{
    int64_t L = cfg->num_hidden_layers;
    int mode = (int)q3n_rng_int(r, 0, 4);
    int64_t interval = q3n_rng_int(r, 2, 4);
    for (int64_t l = 0; l < L; l++) {
        int full;
        switch (mode) {
        case 0: full = (l + 1) % 4 == 0; break;
        case 1: full = (l + 1) % interval == 0; break;
        case 2: full = 0; break;
        case 3: full = 1; break;
        default: full = q3n_rng_uniform(r) < 0.4; break;
        }
        cfg->layer_type[l] = (uint8_t)(full ? Q3N_LAYER_FULL_ATTENTION : Q3N_LAYER_LINEAR_ATTENTION);
    }
}

static void draw_moe(struct q3n_config *cfg, struct q3n_rng *r, int64_t max_e, int64_t max_width)
{
    cfg->num_experts = q3n_rng_uniform(r) < 0.15 ? 0 : q3n_rng_int(r, 1, max_e);
    cfg->num_experts_per_tok = cfg->num_experts > 0 ? q3n_rng_int(r, 1, cfg->num_experts < 4 ? cfg->num_experts : 4)
                                                    : 0;
    cfg->moe_intermediate_size = q3n_rng_int(r, 2, max_width);
    cfg->shared_expert_intermediate_size = q3n_rng_uniform(r) < 0.2 ? 0 : q3n_rng_int(r, 2, max_width);
    cfg->norm_topk_prob = q3n_rng_uniform(r) < 0.7;
    cfg->decoder_sparse_step = q3n_rng_uniform(r) < 0.8 ? 1 : 2;
    uint64_t mask = 0;
    for (int64_t l = 0; l < cfg->num_hidden_layers; l++)
        if (q3n_rng_uniform(r) < 0.2) mask |= 1ull << l;
    q3n_fuzz_set_sparse_layers(cfg, mask);
}

static void draw_common(struct q3n_config *cfg, struct q3n_rng *r)
{
    static const double eps[] = {1e-6, 1e-5};
    static const double theta[] = {10000.0, 1000000.0, 10000000.0};
    cfg->rms_norm_eps = eps[q3n_rng_int(r, 0, 1)];
    cfg->rope_theta = theta[q3n_rng_int(r, 0, 2)];
    cfg->max_position_embeddings = 4096;
    cfg->tie_word_embeddings = q3n_rng_uniform(r) < 0.4;
    cfg->num_mtp_layers = q3n_rng_uniform(r) < 0.25;
    cfg->attention_bias = 0; /* Qwen3-Next's attention has no biases; kept off */
}

static void draw_small(struct q3n_config *cfg, struct q3n_rng *r, int odd)
{
    static const int64_t hd_small[] = {4, 6, 8, 10, 12, 16, 24, 32};
    static const int64_t hd_odd[] = {24, 60, 100, 14, 18, 26, 9, 15}; /* odd HD: rotary on an even prefix */
    static const int64_t lin_odd[] = {24, 60, 100, 7, 13, 33, 1, 3};
    cfg->num_hidden_layers = q3n_rng_int(r, 1, 4);
    cfg->hidden_size = q3n_rng_int(r, 4, 48);
    cfg->vocab_size = q3n_rng_int(r, 8, 96);
    cfg->intermediate_size = q3n_rng_int(r, 2, 40);
    cfg->num_key_value_heads = q3n_rng_int(r, 1, 3);
    cfg->num_attention_heads = cfg->num_key_value_heads * q3n_rng_int(r, 1, 4);
    cfg->linear_num_key_heads = q3n_rng_int(r, 1, 3);
    cfg->linear_num_value_heads = cfg->linear_num_key_heads * q3n_rng_int(r, 1, 4);
    if (odd) {
        cfg->head_dim = pick(r, hd_odd, 8);
        cfg->linear_key_head_dim = pick(r, lin_odd, 8);
        cfg->linear_value_head_dim = pick(r, lin_odd, 8);
        if (cfg->head_dim >= 60) cfg->num_attention_heads = cfg->num_key_value_heads; /* keep it cheap */
    } else {
        cfg->head_dim = pick(r, hd_small, 8);
        cfg->linear_key_head_dim = q3n_rng_int(r, 2, 32);
        cfg->linear_value_head_dim = q3n_rng_int(r, 2, 32);
    }
    cfg->linear_conv_kernel_dim = q3n_rng_int(r, 2, 5);
    draw_rotary(cfg, r);
    draw_layer_types(cfg, r);
    draw_moe(cfg, r, 8, 24);
    draw_common(cfg, r);
}

/* 80B-A3B head shapes, with a narrow hidden size, few layers and few experts. */
static void draw_real_heads(struct q3n_config *cfg, struct q3n_rng *r)
{
    cfg->num_hidden_layers = q3n_rng_uniform(r) < 0.5 ? 2 : 4;
    cfg->hidden_size = 128;
    cfg->vocab_size = 64;
    cfg->intermediate_size = 64;
    cfg->num_attention_heads = 16;
    cfg->num_key_value_heads = 2;
    cfg->head_dim = 256;
    Q3N_REQUIRE(q3n_fuzz_set_rotary(cfg, 0.25)); /* 64 rotary dims */
    cfg->linear_num_key_heads = 16;
    cfg->linear_num_value_heads = 32;
    cfg->linear_key_head_dim = 128;
    cfg->linear_value_head_dim = 128;
    cfg->linear_conv_kernel_dim = 4;
    for (int64_t l = 0; l < cfg->num_hidden_layers; l++)
        cfg->layer_type[l] = (uint8_t)((l + 1) % 4 == 0 || (cfg->num_hidden_layers == 2 && l == 1)
                                           ? Q3N_LAYER_FULL_ATTENTION
                                           : Q3N_LAYER_LINEAR_ATTENTION);
    cfg->num_experts = 8;
    cfg->num_experts_per_tok = 2;
    cfg->moe_intermediate_size = 32;
    cfg->shared_expert_intermediate_size = 32;
    cfg->norm_topk_prob = 1;
    cfg->decoder_sparse_step = 1;
    q3n_fuzz_set_sparse_layers(cfg, 0);
    draw_common(cfg, r);
    cfg->rope_theta = 10000000.0;
    cfg->rms_norm_eps = 1e-6;
}

/* T around chunk boundaries: 1, C-1, C, C+1, 2C+-1, a few fixed break points, or random. */
static int64_t draw_T(struct q3n_rng *r, int64_t C, int64_t t_max)
{
    static const int64_t fixed[] = {1, 2, 63, 65, 75, 127, 129};
    int64_t T;
    switch (q3n_rng_int(r, 0, 6)) {
    case 0: T = pick(r, fixed, 7); break;
    case 1: T = C - 1; break;
    case 2: T = C; break;
    case 3: T = C + 1; break;
    case 4: T = 2 * C + (q3n_rng_uniform(r) < 0.5 ? -1 : 1); break;
    default: T = q3n_rng_int(r, 1, 3 * C + 1); break;
    }
    if (T < 1) T = 1;
    if (T > t_max) T = q3n_rng_int(r, 1, t_max);
    return T;
}

void q3n_fuzz_case_draw(struct q3n_fuzz_case *c, uint64_t seed, int family)
{
    static const int64_t chunks[] = {1, 2, 3, 4, 5, 7, 8, 16, 32, 63, 65, 128};
    struct q3n_rng r;
    memset(c, 0, sizeof *c);
    c->seed = seed;
    q3n_rng_seed(&r, seed ^ STREAM_CONFIG);
    if (family < 0 || family >= Q3N_FUZZ_FAMILY_COUNT) {
        double u = q3n_rng_uniform(&r);
        family = u < 0.125 ? Q3N_FUZZ_REAL_HEADS : u < 0.375 ? Q3N_FUZZ_ODD : Q3N_FUZZ_SMALL;
    }
    c->family = (enum q3n_fuzz_family)family;
    if (c->family == Q3N_FUZZ_REAL_HEADS)
        draw_real_heads(&c->cfg, &r);
    else
        draw_small(&c->cfg, &r, c->family == Q3N_FUZZ_ODD);

    /* real-heads cases cost seconds each (ref is scalar): T <= 48 with chunks that T crosses */
    static const int64_t real_chunks[] = {8, 16, 32, 64};
    int real = c->family == Q3N_FUZZ_REAL_HEADS;
    c->chunk_size = real ? pick(&r, real_chunks, 4) : q3n_rng_uniform(&r) < 0.5 ? 64 : pick(&r, chunks, 12);
    int64_t t_max = real ? 48 : 200;
    c->T = draw_T(&r, c->chunk_size, t_max);
    c->prefill = q3n_rng_int(&r, 1, c->T);
    c->split1 = q3n_rng_int(&r, 1, c->T);
    c->split2 = q3n_rng_int(&r, 0, c->T - c->split1);
    c->weight_seed = mix64(seed ^ STREAM_WEIGHTS);
}

void q3n_fuzz_case_tokens(const struct q3n_fuzz_case *c, int64_t *tokens)
{
    struct q3n_rng r;
    q3n_rng_seed(&r, c->seed ^ STREAM_TOKENS);
    for (int64_t t = 0; t < c->T; t++) tokens[t] = q3n_rng_int(&r, 0, c->cfg.vocab_size - 1);
}

void q3n_fuzz_case_describe(const struct q3n_fuzz_case *c, char *buf, size_t cap)
{
    const struct q3n_config *g = &c->cfg;
    char pattern[Q3N_MAX_LAYERS + 1];
    int64_t L = g->num_hidden_layers < Q3N_MAX_LAYERS ? g->num_hidden_layers : Q3N_MAX_LAYERS;
    for (int64_t l = 0; l < L; l++) {
        int full = g->layer_type[l] == Q3N_LAYER_FULL_ATTENTION;
        pattern[l] = g->layer_is_sparse[l] ? (full ? 'F' : 'L') : (full ? 'f' : 'l');
    }
    pattern[L] = '\0';
    snprintf(buf, cap,
             "%s L=%lld[%s] D=%lld V=%lld NH/NKV=%lld/%lld HD=%lld rot=%lld NK/NV=%lld/%lld DK=%lld DV=%lld "
             "Kc=%lld E=%lld K=%lld I=%lld Is=%lld norm_topk=%d tied=%d mtp=%lld T=%lld C=%lld P=%lld "
             "split=%lld+%lld",
             q3n_fuzz_family_name(c->family), (long long)g->num_hidden_layers, pattern, (long long)g->hidden_size,
             (long long)g->vocab_size, (long long)g->num_attention_heads, (long long)g->num_key_value_heads,
             (long long)g->head_dim, (long long)g->rotary_dim, (long long)g->linear_num_key_heads,
             (long long)g->linear_num_value_heads, (long long)g->linear_key_head_dim,
             (long long)g->linear_value_head_dim, (long long)g->linear_conv_kernel_dim, (long long)g->num_experts,
             (long long)g->num_experts_per_tok, (long long)g->moe_intermediate_size,
             (long long)g->shared_expert_intermediate_size, g->norm_topk_prob, g->tie_word_embeddings,
             (long long)g->num_mtp_layers, (long long)c->T, (long long)c->chunk_size, (long long)c->prefill,
             (long long)c->split1, (long long)c->split2);
}
