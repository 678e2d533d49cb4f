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

/* Sums over the blocks of one forward (a prefill or a decode step): totals, and each block's own
 * floor added in order, also by phase. */
struct floors {
    double bw, peak, wbytes;
    double w, other, macs;      /* weights (elements), other bytes, multiply-adds: totals */
    double serial, serial_bytes; /* sum of the blocks' floors; the part from bandwidth-bound blocks */
    double phase[Q3N_ROOFLINE_PHASES]; /* serial by phase */
};

/* One block of `phase`: `weights` elements read, `other` bytes moved, `macs` multiply-adds; its
 * floor is max(bytes / bw, 2 macs / peak). */
static void add_block(struct floors *p, enum q3n_roofline_phase phase, double weights, double other, double macs)
{
    p->w += weights;
    p->other += other;
    p->macs += macs;
    const double tb = (weights * p->wbytes + other) / p->bw, tf = 2 * macs / p->peak;
    p->serial += tb >= tf ? tb : tf;
    p->phase[phase] += tb >= tf ? tb : tf;
    if (tb >= tf) p->serial_bytes += tb;
}

static void finish(const struct floors *p, struct q3n_roofline *r)
{
    r->weight_bytes = p->w * p->wbytes;
    r->other_bytes = p->other;
    r->flops = 2 * p->macs;
    const double tb = (r->weight_bytes + r->other_bytes) / p->bw, tf = r->flops / p->peak;
    r->bytes_bound = tb >= tf;
    r->seconds = r->bytes_bound ? tb : tf;
    r->serial_seconds = p->serial;
    r->serial_bytes_share = p->serial > 0 ? p->serial_bytes / p->serial : 0.0;
    for (int i = 0; i < Q3N_ROOFLINE_PHASES; i++) r->phase_seconds[i] = p->phase[i];
}

void q3n_roofline_prefill(const struct q3n_config *c, int64_t T, double wbytes, double bw, double peak,
                          struct q3n_roofline *out)
{
    const double D = (double)c->hidden_size, V = (double)c->vocab_size, Tn = (double)T;
    const double E = (double)c->num_experts, K = (double)c->num_experts_per_tok, I = (double)c->moe_intermediate_size;
    const double expert = 3 * I * D;
    const double hit = E > 0 ? E * (1.0 - pow(1.0 - K / E, Tn)) : 0.0;
    const double hidden = 2 * Tn * D * wbytes; /* the hidden state into and out of a block */
    struct floors p = {bw, peak, wbytes, 0, 0, 0, 0, 0, {0, 0, 0, 0}};
    add_block(&p, Q3N_PHASE_OTHER, Tn * D, 0.0, 0.0); /* embedding rows gathered */
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        const double mix = mixer_weights(c, l), fixed = mlp_fixed_weights(c, l);
        if (c->layer_type[l] == Q3N_LAYER_FULL_ATTENTION) {
            const double NH = (double)c->num_attention_heads, NKV = (double)c->num_key_value_heads,
                         HD = (double)c->head_dim;
            /* causal QK^T and PV; the K and V cache written */
            add_block(&p, Q3N_PHASE_ATTENTION_MIXERS, D + mix, hidden + 2 * Tn * NKV * HD * wbytes,
                      Tn * mix + 2 * NH * HD * Tn * (Tn + 1) / 2);
        } else {
            const double state = 4.0 * (double)c->linear_num_value_heads * (double)c->linear_key_head_dim *
                                 (double)c->linear_value_head_dim; /* final float32 state written */
            add_block(&p, Q3N_PHASE_DELTA_MIXERS, D + mix, hidden + state, Tn * (mix + delta_rule_macs(c)));
        }
        const double routed = c->layer_is_sparse[l] ? 1.0 : 0.0;
        add_block(&p, Q3N_PHASE_MLP, D + fixed + routed * hit * expert, hidden,
                  Tn * (fixed + routed * K * expert));
    }
    add_block(&p, Q3N_PHASE_OTHER, D + V * D, 0.0, V * D); /* final norm, lm_head on the last row */
    finish(&p, out);
}

void q3n_roofline_decode(const struct q3n_config *c, int64_t S, double wbytes, double bw, double peak,
                         struct q3n_roofline *out)
{
    const double D = (double)c->hidden_size, V = (double)c->vocab_size;
    const double K = (double)c->num_experts_per_tok, I = (double)c->moe_intermediate_size;
    const double hidden = 2 * D * wbytes;
    struct floors p = {bw, peak, wbytes, 0, 0, 0, 0, 0, {0, 0, 0, 0}};
    add_block(&p, Q3N_PHASE_OTHER, D, 0.0, 0.0); /* one embedding row */
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        const double mix = mixer_weights(c, l), fixed = mlp_fixed_weights(c, l);
        if (c->layer_type[l] == Q3N_LAYER_FULL_ATTENTION) {
            const double NH = (double)c->num_attention_heads, NKV = (double)c->num_key_value_heads,
                         HD = (double)c->head_dim, keys = (double)S + 1;
            /* the whole cache read (the new row written) */
            add_block(&p, Q3N_PHASE_ATTENTION_MIXERS, D + mix, hidden + 2 * keys * NKV * HD * wbytes,
                      mix + 2 * NH * HD * keys);
        } else {
            const double state = 4.0 * (double)c->linear_num_value_heads * (double)c->linear_key_head_dim *
                                 (double)c->linear_value_head_dim;
            const double conv = 4.0 * (double)q3n_config_conv_dim(c) * (double)c->linear_conv_kernel_dim;
            /* the states read and written */
            add_block(&p, Q3N_PHASE_DELTA_MIXERS, D + mix, hidden + 2 * (state + conv), mix + delta_rule_macs(c));
        }
        const double routed = c->layer_is_sparse[l] ? K * 3 * I * D : 0.0;
        add_block(&p, Q3N_PHASE_MLP, D + fixed + routed, hidden, fixed + routed);
    }
    add_block(&p, Q3N_PHASE_OTHER, D + V * D, 0.0, V * D); /* final norm, lm_head */
    finish(&p, out);
}
