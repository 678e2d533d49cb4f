/* model.c — the whole Qwen3-Next forward of the scalar reference, read top to bottom.
 *
 * forward(): embed -> per layer [input norm -> Gated DeltaNet or gated attention -> residual ->
 * post norm -> sparse MoE or dense MLP -> residual] -> final norm -> lm_head, continuing from the
 * session's caches (positions cache.len ...). After every op the tensor goes to the tap sink
 * under its docs/golden-format.md name. forward_mtp(): the MTP head on the last forward's
 * positions. Path choice as transformers: T == 1 with a previous state -> recurrent delta rule
 * and conv-state update; otherwise the chunked delta rule and a full conv. */
#include <stdio.h>
#include <string.h>

#include "ops.h"
#include "session.h"
#include "testbug.h"

#define TRY(expr)                         \
    do {                                  \
        enum q3n_status st_ = (expr);     \
        if (st_ != Q3N_OK) return st_;    \
    } while (0)

/* Emits a ref_real tensor of rank 1-3 as "<pfx>.<point>"; the buffer is live (downstream ops
 * read it after the call), so an intervening sink may overwrite it. */
static enum q3n_status tap(const struct q3n_tap_sink *taps, struct q3n_error *err, ref_real *data, int rank,
                           int64_t d0, int64_t d1, int64_t d2, const char *pfx, const char *point)
{
    if (!taps || !taps->fn) return Q3N_OK;
    const int64_t dims[3] = {d0, d1, d2};
    return q3n_tap_emit_live(taps, REF_REAL_DTYPE, data, rank, dims, err, "%s.%s", pfx, point);
}

static int bug_is(const struct ref_session *s, const char *name)
{
    return strcmp(s->test_bug, name) == 0;
}

/* ---- Gated DeltaNet (linear_attn) ------------------------------------------------------- */

static enum q3n_status linear_attn(struct ref_session *s, ref_real *out, const ref_real *x,
                                   const struct q3n_linear_attn_weights *w, struct ref_layer_cache *lc, int layer,
                                   int64_t T, int recurrent, const char *pfx, const struct q3n_tap_sink *taps,
                                   struct q3n_error *err)
{
    const struct q3n_config *c = s->cfg;
    struct ref_scratch *b = &s->s;
    int64_t D = c->hidden_size, NK = c->linear_num_key_heads, NV = c->linear_num_value_heads;
    int64_t DK = c->linear_key_head_dim, DV = c->linear_value_head_dim, Kc = c->linear_conv_kernel_dim;
    int64_t Cc = q3n_config_conv_dim(c), QKVZ = q3n_config_qkvz_dim(c);
    char p[96];
    snprintf(p, sizeof p, "%s.linear_attn", pfx);

    ref_linear_forward(b->qkvz, x, w->in_proj_qkvz, NULL, T, QKVZ, D);
    TRY(tap(taps, err, b->qkvz, 2, T, QKVZ, 0, p, "in_proj_qkvz.out"));
    ref_linear_forward(b->ba, x, w->in_proj_ba, NULL, T, 2 * NV, D);
    TRY(tap(taps, err, b->ba, 2, T, 2 * NV, 0, p, "in_proj_ba.out"));
    ref_deltanet_split_forward(b->q, b->k, b->v, b->z, b->b, b->a, b->qkvz, b->ba, T, NK, NV, DK, DV);
    TRY(tap(taps, err, b->q, 3, T, NK, DK, p, "q"));
    TRY(tap(taps, err, b->k, 3, T, NK, DK, p, "k"));
    TRY(tap(taps, err, b->v, 3, T, NV, DV, p, "v"));
    TRY(tap(taps, err, b->z, 3, T, NV, DV, p, "z"));
    TRY(tap(taps, err, b->b, 2, T, NV, 0, p, "b"));
    TRY(tap(taps, err, b->a, 2, T, NV, 0, p, "a"));

    ref_deltanet_conv_concat(b->mixed, b->q, b->k, b->v, T, NK, NV, DK, DV);
    ref_conv1d_causal_forward(b->conv_out, b->mixed, w->conv1d, lc->conv_state, T, Cc, Kc);
    ref_conv1d_state_update(lc->conv_state, b->mixed, T, Cc, Kc);
    TRY(tap(taps, err, b->conv_out, 2, T, Cc, 0, p, "conv1d.out"));

    ref_deltanet_conv_split(b->cq, b->ck, b->cv, b->conv_out, T, NK, NV, DK, DV);
    ref_l2norm_forward(b->cq, b->cq, T * NK, DK, 1e-6);
    TRY(tap(taps, err, b->cq, 3, T, NK, DK, p, "q_l2"));
    ref_l2norm_forward(b->ck, b->ck, T * NK, DK, 1e-6);
    TRY(tap(taps, err, b->ck, 3, T, NK, DK, p, "k_l2"));
    ref_deltanet_q_scale(b->cq, T * NK * DK, DK, recurrent);
    ref_deltanet_gates_forward(b->g, b->beta, b->a, b->b, w->A_log, w->dt_bias, T, NV);
    TRY(tap(taps, err, b->g, 2, T, NV, 0, p, "g"));
    TRY(tap(taps, err, b->beta, 2, T, NV, 0, p, "beta"));

    if (recurrent)
        ref_delta_rule_recurrent(b->core, lc->recurrent_state, b->cq, b->ck, b->cv, b->g, b->beta, T, NK, NV, DK, DV);
    else if (bug_is(s, "chunk_off_by_one"))
        ref_delta_rule_chunked_bug_drop_last(b->core, lc->recurrent_state, b->cq, b->ck, b->cv, b->g, b->beta,
                                             b->delta, T, NK, NV, DK, DV, s->opt.chunk_size);
    else
        ref_delta_rule_chunked(b->core, lc->recurrent_state, b->cq, b->ck, b->cv, b->g, b->beta, b->delta, T, NK,
                               NV, DK, DV, s->opt.chunk_size);
    TRY(tap(taps, err, b->core, 3, T, NV, DV, p, "core_out"));
    TRY(tap(taps, err, lc->recurrent_state, 3, NV, DK, DV, p, "final_state"));

    const float *norm_w = w->norm;
    if (layer == 1 && bug_is(s, "weak_gated_norm_layer1")) {
        for (int64_t i = 0; i < DV; i++) s->s.bug_w[i] = w->norm[i] * 1.001f;
        norm_w = s->s.bug_w;
    }
    ref_rmsnorm_gated_forward(b->normed, b->core, b->z, norm_w, T * NV, DV, c->rms_norm_eps);
    TRY(tap(taps, err, b->normed, 3, T, NV, DV, p, "norm.out"));
    ref_linear_forward(out, b->normed, w->out_proj, NULL, T, D, NV * DV);
    return tap(taps, err, out, 2, T, D, 0, p, "out");
}

/* ---- gated attention (self_attn) -------------------------------------------------------- */

/* Swaps the two halves of the rotary dims: with it around ref_rope_forward the rotation runs
 * backwards (test_bug "rope_wrong_half": rotate_half as [x2, -x1]). */
static void swap_rot_halves(ref_real *x, int64_t rows, int64_t HD, int64_t rot)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < rot / 2; i++) {
            ref_real t = x[r * HD + i];
            x[r * HD + i] = x[r * HD + rot / 2 + i];
            x[r * HD + rot / 2 + i] = t;
        }
}

static void rope(struct ref_session *s, ref_real *x, int64_t T, int64_t N, int64_t pos0)
{
    const struct q3n_config *c = s->cfg;
    int wrong = bug_is(s, "rope_wrong_half");
    if (wrong) swap_rot_halves(x, T * N, c->head_dim, c->rotary_dim);
    ref_rope_forward(x, T, N, c->head_dim, c->rotary_dim, pos0, c->rope_theta);
    if (wrong) swap_rot_halves(x, T * N, c->head_dim, c->rotary_dim);
}

static enum q3n_status self_attn(struct ref_session *s, ref_real *out, const ref_real *x,
                                 const struct q3n_attn_weights *w, struct ref_layer_cache *lc, int64_t T,
                                 int64_t pos0, const char *pfx, const struct q3n_tap_sink *taps,
                                 struct q3n_error *err)
{
    const struct q3n_config *c = s->cfg;
    struct ref_scratch *b = &s->s;
    int64_t D = c->hidden_size, NH = c->num_attention_heads, NKV = c->num_key_value_heads, HD = c->head_dim;
    char p[96];
    snprintf(p, sizeof p, "%s.self_attn", pfx);

    ref_linear_forward(b->qg, x, w->q_proj, w->q_bias, T, NH * 2 * HD, D);
    TRY(tap(taps, err, b->qg, 2, T, NH * 2 * HD, 0, p, "q_proj.out"));
    ref_linear_forward(b->kp, x, w->k_proj, w->k_bias, T, NKV * HD, D);
    TRY(tap(taps, err, b->kp, 2, T, NKV * HD, 0, p, "k_proj.out"));
    ref_linear_forward(b->vp, x, w->v_proj, w->v_bias, T, NKV * HD, D);
    TRY(tap(taps, err, b->vp, 2, T, NKV * HD, 0, p, "v_proj.out"));
    ref_attn_split_qgate(b->aq, b->gate, b->qg, T, NH, HD);
    TRY(tap(taps, err, b->gate, 3, T, NH, HD, p, "gate"));

    ref_rmsnorm_forward(b->aq, b->aq, w->q_norm, T * NH, HD, c->rms_norm_eps);
    TRY(tap(taps, err, b->aq, 3, T, NH, HD, p, "q_norm.out"));
    ref_rmsnorm_forward(b->kp, b->kp, w->k_norm, T * NKV, HD, c->rms_norm_eps);
    TRY(tap(taps, err, b->kp, 3, T, NKV, HD, p, "k_norm.out"));
    rope(s, b->aq, T, NH, pos0);
    TRY(tap(taps, err, b->aq, 3, T, NH, HD, p, "q_rope"));
    rope(s, b->kp, T, NKV, pos0);
    TRY(tap(taps, err, b->kp, 3, T, NKV, HD, p, "k_rope"));

    memcpy(lc->key_cache + pos0 * NKV * HD, b->kp, (size_t)(T * NKV * HD) * sizeof(ref_real));
    memcpy(lc->value_cache + pos0 * NKV * HD, b->vp, (size_t)(T * NKV * HD) * sizeof(ref_real));
    ref_attention_forward(b->attn, b->aq, lc->key_cache, lc->value_cache, b->scores, T, pos0, NH, NKV, HD);
    TRY(tap(taps, err, b->attn, 3, T, NH, HD, p, "attn_out"));
    ref_sigmoid_gate_forward(b->gated, b->attn, b->gate, T * NH * HD);
    TRY(tap(taps, err, b->gated, 2, T, NH * HD, 0, p, "gated_out"));
    ref_linear_forward(out, b->gated, w->o_proj, w->o_bias, T, D, NH * HD);
    return tap(taps, err, out, 2, T, D, 0, p, "out");
}

/* ---- sparse MoE (mlp) ------------------------------------------------------------------- */

/* Routing overrides: forced routing from a golden (rows = absolute positions), then the
 * planted bug "router_flip_layer0" (position 0 of layer 0 takes the (K+1)-th expert instead of
 * the K-th). */
static void route_overrides(struct ref_session *s, int layer, int64_t T, int64_t pos0)
{
    const struct q3n_config *c = s->cfg;
    struct ref_scratch *b = &s->s;
    int64_t E = c->num_experts, K = c->num_experts_per_tok;
    const struct q3n_forced_routing *fr = s->opt.forced_routing;
    if (fr && layer >= 0 && fr->topk_idx && fr->topk_idx[layer] && fr->topk_weight && fr->topk_weight[layer]) {
        for (int64_t t = 0; t < T && pos0 + t < fr->tokens; t++)
            for (int64_t j = 0; j < K; j++) {
                b->topk_idx[t * K + j] = fr->topk_idx[layer][(pos0 + t) * K + j];
                b->topk_weight[t * K + j] = (ref_real)fr->topk_weight[layer][(pos0 + t) * K + j];
            }
    }
    if (layer == 0 && pos0 == 0 && T > 0 && K < E && bug_is(s, "router_flip_layer0")) {
        ref_topk_forward(b->bug_idx, b->bug_weight, b->probs, 1, E, K + 1, 0);
        b->topk_idx[K - 1] = b->bug_idx[K];
        ref_real sum = 0;
        for (int64_t j = 0; j < K; j++) {
            b->topk_weight[j] = b->probs[b->topk_idx[j]];
            sum += b->topk_weight[j];
        }
        if (c->norm_topk_prob)
            for (int64_t j = 0; j < K; j++) b->topk_weight[j] = b->topk_weight[j] / sum;
    }
}

static enum q3n_status sparse_moe(struct ref_session *s, ref_real *out, const ref_real *x,
                                  const struct q3n_moe_weights *w, int layer, int64_t T, int64_t pos0,
                                  const char *pfx, const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    const struct q3n_config *c = s->cfg;
    struct ref_scratch *b = &s->s;
    int64_t D = c->hidden_size, E = c->num_experts, K = c->num_experts_per_tok;
    int64_t I = c->moe_intermediate_size, SI = c->shared_expert_intermediate_size;
    char p[96];
    snprintf(p, sizeof p, "%s.mlp", pfx);

    /* transformers' order: shared expert, router, routed experts, shared-expert gate */
    int has_shared = w->shared_expert.gate_proj && SI > 0;
    if (has_shared) {
        ref_mlp_forward(b->shared_out, x, &w->shared_expert, b->mlp, T, D, SI);
        TRY(tap(taps, err, b->shared_out, 2, T, D, 0, p, "shared_expert.out"));
    }
    ref_linear_forward(b->router_logits, x, w->router, NULL, T, E, D);
    TRY(tap(taps, err, b->router_logits, 2, T, E, 0, p, "gate.logits"));
    ref_softmax_forward(b->probs, b->router_logits, T, E);
    TRY(tap(taps, err, b->probs, 2, T, E, 0, p, "gate.probs"));
    ref_topk_forward(b->topk_idx, b->topk_weight, b->probs, T, E, K, c->norm_topk_prob);
    route_overrides(s, layer, T, pos0);
    if (taps && taps->fn) {
        const int64_t dims[2] = {T, K};
        TRY(q3n_tap_emit_live(taps, Q3N_DTYPE_I64, b->topk_idx, 2, dims, err, "%s.gate.topk_idx", p));
    }
    TRY(tap(taps, err, b->topk_weight, 2, T, K, 0, p, "gate.topk_weight"));
    for (int64_t i = 0; i < T * K; i++)
        if (b->topk_idx[i] < 0 || b->topk_idx[i] >= E)
            return q3n_error_set(err, Q3N_ERR_USAGE, "ref: %s.gate.topk_idx[%lld] = %lld is not an expert (E = %lld)",
                                 p, (long long)i, (long long)b->topk_idx[i], (long long)E);

    ref_moe_experts_forward(b->experts_out, x, b->topk_idx, b->topk_weight, w->experts, b->mlp, T, D, I, K);
    TRY(tap(taps, err, b->experts_out, 2, T, D, 0, p, "experts.out"));
    const ref_real *shared = NULL;
    if (has_shared) {
        ref_linear_forward(b->shared_gate, x, w->shared_expert_gate, NULL, T, 1, D);
        TRY(tap(taps, err, b->shared_gate, 2, T, 1, 0, p, "shared_expert_gate.out"));
        shared = b->shared_out;
    }
    ref_moe_combine_forward(out, b->experts_out, shared, b->shared_gate, T, D);
    return Q3N_OK;
}

/* ---- one decoder layer ------------------------------------------------------------------ */

/* h [T,D] <- h + mixer(input_layernorm(h)); h <- h + mlp(post_attention_layernorm(h)).
 * layer: index for forced routing and planted bugs (-1 for the MTP layer). */
static enum q3n_status decoder_layer(struct ref_session *s, const struct q3n_layer_weights *lw, int layer,
                                     int full_attention, int sparse, struct ref_layer_cache *lc, int64_t T,
                                     int64_t pos0, int recurrent, const char *pfx, const struct q3n_tap_sink *taps,
                                     struct q3n_error *err)
{
    const struct q3n_config *c = s->cfg;
    struct ref_scratch *b = &s->s;
    int64_t D = c->hidden_size;

    TRY(tap(taps, err, b->h, 2, T, D, 0, pfx, "in"));
    const float *in_norm = lw->input_layernorm;
    if (layer == 0 && bug_is(s, "norm_no_offset")) {
        for (int64_t i = 0; i < D; i++) b->bug_w[i] = lw->input_layernorm[i] - 1.0f; /* 1 + w' = w */
        in_norm = b->bug_w;
    }
    ref_rmsnorm_forward(b->xn, b->h, in_norm, T, D, c->rms_norm_eps);
    TRY(tap(taps, err, b->xn, 2, T, D, 0, pfx, "input_layernorm.out"));
    if (full_attention)
        TRY(self_attn(s, b->mix, b->xn, &lw->self_attn, lc, T, pos0, pfx, taps, err));
    else
        TRY(linear_attn(s, b->mix, b->xn, &lw->linear_attn, lc, layer, T, recurrent, pfx, taps, err));
    ref_add_inplace(b->h, b->mix, T * D);

    TRY(tap(taps, err, b->h, 2, T, D, 0, pfx, "post_attention_layernorm.in"));
    ref_rmsnorm_forward(b->xn, b->h, lw->post_attention_layernorm, T, D, c->rms_norm_eps);
    TRY(tap(taps, err, b->xn, 2, T, D, 0, pfx, "post_attention_layernorm.out"));
    if (sparse) {
        TRY(sparse_moe(s, b->mix, b->xn, &lw->moe, layer, T, pos0, pfx, taps, err));
    } else {
        ref_mlp_forward(b->mix, b->xn, &lw->mlp, b->mlp, T, D, c->intermediate_size);
    }
    TRY(tap(taps, err, b->mix, 2, T, D, 0, pfx, "mlp.out"));
    ref_add_inplace(b->h, b->mix, T * D);
    return tap(taps, err, b->h, 2, T, D, 0, pfx, "out");
}

/* logits[t,:] = lm_head x[t,:], rounded to float row by row (V may be large). */
static void lm_head(struct ref_session *s, float *logits, const ref_real *x, int64_t T)
{
    int64_t D = s->cfg->hidden_size, V = s->cfg->vocab_size;
    for (int64_t t = 0; t < T; t++) {
        ref_linear_forward(s->s.logits_row, x + t * D, s->model->weights.lm_head, NULL, 1, V, D);
        for (int64_t v = 0; v < V; v++) logits[t * V + v] = (float)s->s.logits_row[v];
    }
}

static enum q3n_status check_tokens(const struct ref_session *s, const int64_t *tokens, int64_t T, int64_t pos0,
                                    struct q3n_error *err)
{
    for (int64_t t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= s->cfg->vocab_size)
            return q3n_error_set(err, Q3N_ERR_USAGE, "ref: token id %lld at position %lld is outside [0, %lld)",
                                 (long long)tokens[t], (long long)(pos0 + t), (long long)s->cfg->vocab_size);
    return Q3N_OK;
}

/* ---- the model -------------------------------------------------------------------------- */

enum q3n_status ref_model_forward(struct ref_session *s, float *logits, const int64_t *tokens, int64_t T,
                                  const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    const struct q3n_config *c = s->cfg;
    const struct q3n_weights *w = &s->model->weights;
    struct ref_scratch *b = &s->s;
    int64_t D = c->hidden_size, pos0 = s->cache.len;
    if (T < 1) return q3n_error_set(err, Q3N_ERR_USAGE, "ref: forward needs at least one token (T = %lld)", (long long)T);
    if (pos0 + T > s->cache.max_tokens)
        return q3n_error_set(err, Q3N_ERR_USAGE, "ref: %lld tokens after %lld exceed max_tokens = %lld", (long long)T,
                             (long long)pos0, (long long)s->cache.max_tokens);
    if (s->broken)
        return q3n_error_set(err, Q3N_ERR_USAGE, "ref: a previous forward failed half-way; reset the session");
    TRY(check_tokens(s, tokens, T, pos0, err));
    int recurrent = (T == 1 && s->cache.has_previous_state);
    /* Until this forward completes the caches are half-updated (a tap sink may stop it). */
    s->broken = 1;
    s->last_T = 0;

    ref_embed_forward(b->h, tokens, w->embed_tokens, T, D);
    TRY(tap(taps, err, b->h, 2, T, D, 0, "model.embed_tokens", "out"));
    for (int64_t i = 0; i < c->num_hidden_layers; i++) {
        char pfx[64];
        snprintf(pfx, sizeof pfx, "model.layers.%lld", (long long)i);
        TRY(decoder_layer(s, &w->layers[i], (int)i, c->layer_type[i] == Q3N_LAYER_FULL_ATTENTION,
                          c->layer_is_sparse[i], &s->cache.layers[i], T, pos0, recurrent, pfx, taps, err));
    }
    ref_rmsnorm_forward(b->hfin, b->h, w->norm, T, D, c->rms_norm_eps);
    TRY(tap(taps, err, b->hfin, 2, T, D, 0, "model.norm", "out"));
    lm_head(s, logits, b->hfin, T);

    s->cache.len += T;
    s->cache.has_previous_state = 1;
    s->broken = 0;
    s->last_T = T;
    s->last_pos0 = pos0;
    char path[48];
    if (recurrent)
        snprintf(path, sizeof path, "recurrent");
    else
        snprintf(path, sizeof path, "chunked(C=%lld)", (long long)s->opt.chunk_size);
    snprintf(s->describe, sizeof s->describe, "%s: deltanet=%s conv=%s attn=naive moe=loop%s%s", ref_impl.name, path,
             recurrent ? "update" : "full", s->test_bug[0] ? " test_bug=" : "", s->test_bug);
    return Q3N_OK;
}

/* MTP head (vLLM's qwen3_next_mtp layout) on the positions p = pos0 .. pos0+T-2 of the last
 * forward, each with its next token tokens[t+1]:
 *   x = fc(concat(pre_fc_norm_embedding(embed(tokens[t+1])), pre_fc_norm_hidden(h_t)))
 * (embedding first; h_t = the main model's final-normed hidden state), one full-attention
 * decoder layer with its own KV cache at RoPE position p, mtp.norm, the shared lm_head. */
enum q3n_status ref_model_forward_mtp(struct ref_session *s, float *mtp_logits, const int64_t *tokens, int64_t T,
                                      const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    const struct q3n_config *c = s->cfg;
    const struct q3n_mtp_weights *m = &s->model->weights.mtp;
    struct ref_scratch *b = &s->s;
    int64_t D = c->hidden_size, n = T - 1, pos0 = s->last_pos0;
    if (c->num_mtp_layers < 1) return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "ref: the model has no MTP layer");
    if (s->last_T < 1 || T != s->last_T)
        return q3n_error_set(err, Q3N_ERR_USAGE,
                             "ref: forward_mtp needs the %lld tokens of the last forward (got T = %lld)",
                             (long long)s->last_T, (long long)T);
    if (s->cache.mtp_len != pos0)
        return q3n_error_set(err, Q3N_ERR_USAGE,
                             "ref: the MTP cache holds %lld positions but the last forward started at %lld",
                             (long long)s->cache.mtp_len, (long long)pos0);
    TRY(check_tokens(s, tokens, T, pos0, err));
    if (n == 0) return Q3N_OK;

    ref_embed_forward(b->mix, tokens + 1, s->model->weights.embed_tokens, n, D);
    ref_rmsnorm_forward(b->mtp_e, b->mix, m->pre_fc_norm_embedding, n, D, c->rms_norm_eps);
    TRY(tap(taps, err, b->mtp_e, 2, n, D, 0, "mtp.pre_fc_norm_embedding", "out"));
    ref_rmsnorm_forward(b->mtp_h, b->hfin, m->pre_fc_norm_hidden, n, D, c->rms_norm_eps);
    TRY(tap(taps, err, b->mtp_h, 2, n, D, 0, "mtp.pre_fc_norm_hidden", "out"));
    for (int64_t t = 0; t < n; t++) {
        memcpy(b->mtp_cat + t * 2 * D, b->mtp_e + t * D, (size_t)D * sizeof(ref_real));
        memcpy(b->mtp_cat + t * 2 * D + D, b->mtp_h + t * D, (size_t)D * sizeof(ref_real));
    }
    ref_linear_forward(b->h, b->mtp_cat, m->fc, NULL, n, D, 2 * D);
    TRY(tap(taps, err, b->h, 2, n, D, 0, "mtp.fc", "out"));
    TRY(decoder_layer(s, &m->layer, -1, 1, m->layer_is_sparse, &s->cache.mtp, n, pos0, 0, "mtp.layers.0", taps,
                      err));
    s->cache.mtp_len += n;
    ref_rmsnorm_forward(b->xn, b->h, m->norm, n, D, c->rms_norm_eps);
    TRY(tap(taps, err, b->xn, 2, n, D, 0, "mtp.norm", "out"));
    lm_head(s, mtp_logits, b->xn, n);
    return Q3N_OK;
}
