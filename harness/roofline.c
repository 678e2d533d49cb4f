/* roofline.c — byte and FLOP floors of prefill and decode (see roofline.h). */
#include "roofline.h"

#include <math.h>

/* Weights of one layer's token mixer (projections, norms, conv), in elements. */
static double mixer_weights(const struct q3n_config *c, int64_t l)
{
    const double D = (double)c->hidden_size;
    if (c->layer_type[l] == Q3N_LAYER_FULL_ATTENTION) {
        const double NH = (double)c->num_attention_heads, NKV = (double)c->num_key_value_heads, HD = (double)c->head_dim;
        return NH * 2 * HD * D + 2 * NKV * HD * D + D * NH * HD + 2 * HD;
    }
    const double NV = (double)c->linear_num_value_heads, DV = (double)c->linear_value_head_dim;
    return (double)q3n_config_qkvz_dim(c) * D + 2 * NV * D +
           (double)q3n_config_conv_dim(c) * (double)c->linear_conv_kernel_dim + 2 * NV + DV + D * NV * DV;
}

/* Weights of one layer's MLP block that every token uses (router, shared expert, or the dense
 * MLP), in elements; the routed experts are counted apart. */
static double mlp_fixed_weights(const struct q3n_config *c, int64_t l)
{
    const double D = (double)c->hidden_size;
    if (!c->layer_is_sparse[l]) return 3 * (double)c->intermediate_size * D;
    double n = (double)c->num_experts * D;
    if (c->shared_expert_intermediate_size > 0) n += 3 * (double)c->shared_expert_intermediate_size * D + D;
    return n;
}

/* Multiply-adds per token of the delta rule in its recurrent form, per linear layer: S^T k,
 * the rank-1 update k (v - S^T k)^T and the read-out S^T q, each DK*DV per value head. */
static double delta_rule_macs(const struct q3n_config *c)
{
    return 3.0 * (double)c->linear_num_value_heads * (double)c->linear_key_head_dim *
           (double)c->linear_value_head_dim;
}

static void finish(struct q3n_roofline *r, double bw, double peak)
{
    const double tb = (r->weight_bytes + r->other_bytes) / bw, tf = r->flops / peak;
    r->bytes_bound = tb >= tf;
    r->seconds = r->bytes_bound ? tb : tf;
}

void q3n_roofline_prefill(const struct q3n_config *c, int64_t T, double wbytes, double bw, double peak,
                          struct q3n_roofline *out)
{
    const double D = (double)c->hidden_size, V = (double)c->vocab_size, Tn = (double)T;
    const double E = (double)c->num_experts, K = (double)c->num_experts_per_tok, I = (double)c->moe_intermediate_size;
    const double expert = 3 * I * D;
    const double hit = E > 0 ? E * (1.0 - pow(1.0 - K / E, Tn)) : 0.0;
    double w = Tn * D + D + V * D; /* embedding rows gathered, final norm, lm_head */
    double other = 0.0, macs = V * D;   /* lm_head on the last row */
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        const double mix = mixer_weights(c, l), fixed = mlp_fixed_weights(c, l);
        w += 2 * D + mix + fixed + (c->layer_is_sparse[l] ? hit * expert : 0.0);
        macs += Tn * (mix + fixed + (c->layer_is_sparse[l] ? K * expert : 0.0));
        other += 4 * Tn * D * wbytes; /* hidden state into and out of the two blocks */
        if (c->layer_type[l] == Q3N_LAYER_FULL_ATTENTION) {
            const double NH = (double)c->num_attention_heads, NKV = (double)c->num_key_value_heads,
                         HD = (double)c->head_dim;
            macs += 2 * NH * HD * Tn * (Tn + 1) / 2; /* causal QK^T and PV */
            other += 2 * Tn * NKV * HD * wbytes;     /* K and V cache written */
        } else {
            macs += Tn * delta_rule_macs(c);
            other += 4.0 * (double)c->linear_num_value_heads * (double)c->linear_key_head_dim *
                     (double)c->linear_value_head_dim; /* final float32 state written */
        }
    }
    out->weight_bytes = w * wbytes;
    out->other_bytes = other;
    out->flops = 2 * macs;
    finish(out, bw, peak);
}

void q3n_roofline_decode(const struct q3n_config *c, int64_t S, double wbytes, double bw, double peak,
                         struct q3n_roofline *out)
{
    const double D = (double)c->hidden_size, V = (double)c->vocab_size;
    const double K = (double)c->num_experts_per_tok, I = (double)c->moe_intermediate_size;
    double w = D + D + V * D; /* one embedding row, final norm, lm_head */
    double other = 0.0, macs = V * D;
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        const double mix = mixer_weights(c, l), fixed = mlp_fixed_weights(c, l);
        const double routed = c->layer_is_sparse[l] ? K * 3 * I * D : 0.0;
        w += 2 * D + mix + fixed + routed;
        macs += mix + fixed + routed;
        other += 4 * D * wbytes;
        if (c->layer_type[l] == Q3N_LAYER_FULL_ATTENTION) {
            const double NH = (double)c->num_attention_heads, NKV = (double)c->num_key_value_heads,
                         HD = (double)c->head_dim, keys = (double)S + 1;
            macs += 2 * NH * HD * keys;
            other += 2 * keys * NKV * HD * wbytes; /* the whole cache read (the new row written) */
        } else {
            macs += delta_rule_macs(c);
            const double state = 4.0 * (double)c->linear_num_value_heads * (double)c->linear_key_head_dim *
                                 (double)c->linear_value_head_dim;
            const double conv = 4.0 * (double)q3n_config_conv_dim(c) * (double)c->linear_conv_kernel_dim;
            other += 2 * (state + conv); /* read and written */
        }
    }
    out->weight_bytes = w * wbytes;
    out->other_bytes = other;
    out->flops = 2 * macs;
    finish(out, bw, peak);
}
