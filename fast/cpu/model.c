/* model.c — the OpenBLAS implementation's session (harness/impl.h, "cpu").
 *
 * The forward mirrors ref/model.c op for op and emits the same taps (docs/golden-format.md)
 * through the same names; every op is the cpu_ twin of the ref_ op (fast/cpu/ops.h).
 * Activations and caches are float32; weights are the float views of harness/weights.h
 * (bf16 checkpoints are converted once at load by harness/checkpoint.c). Work is spread over
 * the cores by fast/cpu/par.c (run_options.n_threads, 0 = all cores; stored as OpenBLAS's thread
 * count, while OpenBLAS itself only ever runs single-threaded inside fast/cpu's threads); a
 * fixed count gives bitwise identical results run to run.
 *
 * Caches, as ref's: per linear layer the conv state [Cc,Kc] and the recurrent state
 * [NV,DK,DV]; per full layer the KV cache [max_tokens,NKV,HD]; the MTP layer its own KV cache.
 * A forward of T > 1 tokens, or with no previous state, runs the chunked delta rule and the
 * full conv continuing from the cached state; one token with a previous state runs the
 * recurrent step. */
#include <cblas.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../harness/clock.h"
#include "model.h"
#include "ops.h"

struct cpu_layer_cache {
    float *conv_state;      /* linear: [Cc, Kc] */
    float *recurrent_state; /* linear: [NV, DK, DV] */
    float *key_cache;       /* full: [max_tokens, NKV, HD] */
    float *value_cache;     /* full: [max_tokens, NKV, HD] */
};

/* Activation buffers for one forward of up to `cap` tokens, carved from one allocation. */
struct cpu_work {
    int64_t cap;
    float *base;
    float *h, *xn, *mix, *mlp;                                  /* [T,D] */
    float *qkvz, *ba, *q, *k, *v, *z, *b, *a, *mixed, *conv;    /* linear attention */
    float *ql2, *kl2, *qs, *g, *beta, *core, *normo, *dscratch;
    float *qg, *kp, *vp, *qa, *gate, *attn, *gated, *ascratch;  /* full attention */
    float *rlogits, *probs, *topw, *eo, *se, *sgl, *mscratch;   /* MoE */
    int64_t *topi;
    float *cat;                                                  /* MTP [T, 2D] */
};

struct cpu_session {
    const struct q3n_model *model;
    struct q3n_run_options opt;
    int64_t len;                /* tokens processed so far */
    int has_previous_state;
    struct cpu_layer_cache *layers;
    struct cpu_layer_cache mtp;
    int64_t mtp_len;            /* positions in the MTP KV cache */
    struct cpu_work work;
    float *last_hidden;         /* [max_tokens, D]: final-norm hidden of the last forward */
    int64_t last_T, last_pos0;
    int used_chunked, used_recurrent, used_attn;
    int64_t threads;
    char test_bug[64];          /* planted bug (run_options.test_bug), "" when none */
    float *bug_w;               /* [max(D, DV)] modified norm weight for planted bugs */
    int64_t *bug_idx;           /* [K+1] */
    float *bug_weight;          /* [K+1] */
    char desc[256];
    struct cpu_profile *prof;   /* NULL unless a bench attached one */
    int64_t *expert_count;      /* [E] tokens per expert, for the profile's shape log */
};

static const char *const known_bugs[] = {"rope_wrong_half", "norm_no_offset", "chunk_off_by_one",
                                         "router_flip_layer0", "weak_gated_norm_layer1", NULL};

static int bug_is(const struct cpu_session *s, const char *name)
{
    return strcmp(s->test_bug, name) == 0;
}

/* ---- profile ------------------------------------------------------------------------ */


static double prof_begin(const struct cpu_session *s)
{
    return s->prof ? q3n_now_s() : 0.0;
}

static void prof_end(const struct cpu_session *s, enum cpu_phase phase, double t0)
{
    if (s->prof) s->prof->seconds[phase] += q3n_now_s() - t0;
}

static void prof_shape(const struct cpu_session *s, int64_t M, int64_t N, int64_t K)
{
    struct cpu_profile *p = s->prof;
    if (!p || M <= 0) return;
    if (p->n_shapes >= p->cap) {
        p->overflow = 1;
        return;
    }
    p->shapes[p->n_shapes++] = (struct cpu_gemm_shape){M, N, K};
}

/* A dense projection, timed as CPU_PHASE_PROJ. */
static void proj(const struct cpu_session *s, float *out, const float *x, const float *W, const float *bias,
                 int64_t T, int64_t N, int64_t Kin)
{
    double t0 = prof_begin(s);
    cpu_linear_forward(out, x, W, bias, T, N, Kin);
    prof_end(s, CPU_PHASE_PROJ, t0);
    prof_shape(s, T, N, Kin);
}

/* A SwiGLU MLP (shared expert or dense layer), timed as CPU_PHASE_MOE. */
static void mlp(const struct cpu_session *s, float *out, const float *x, const struct q3n_mlp_weights *mw,
                float *scratch, int64_t T, int64_t D, int64_t W)
{
    double t0 = prof_begin(s);
    cpu_mlp_forward(out, x, mw, scratch, T, D, W);
    prof_end(s, CPU_PHASE_MOE, t0);
    prof_shape(s, T, W, D);
    prof_shape(s, T, W, D);
    prof_shape(s, T, D, W);
}

void cpu_session_set_profile(void *session, struct cpu_profile *prof)
{
    ((struct cpu_session *)session)->prof = prof;
}

/* ---- taps --------------------------------------------------------------------------- */

static enum q3n_status tap(const struct q3n_tap_sink *taps, enum q3n_dtype dtype, void *data, int rank,
                           const int64_t *dims, struct q3n_error *err, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static enum q3n_status tap(const struct q3n_tap_sink *taps, enum q3n_dtype dtype, void *data, int rank,
                           const int64_t *dims, struct q3n_error *err, const char *fmt, ...)
{
    if (!taps || !taps->fn) return Q3N_OK;
    char name[Q3N_TAP_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    Q3N_REQUIRE(n > 0 && (size_t)n < sizeof name);
    return q3n_tap_emit_live(taps, dtype, data, rank, dims, err, "%s", name);
}

#define TAP2(buf, d0, d1, ...)                                                                    \
    do {                                                                                          \
        int64_t dims_[2] = {(d0), (d1)};                                                          \
        st = tap(taps, Q3N_DTYPE_F32, (buf), 2, dims_, err, __VA_ARGS__);                         \
        if (st != Q3N_OK) goto done;                                                              \
    } while (0)
#define TAP3(buf, d0, d1, d2, ...)                                                                \
    do {                                                                                          \
        int64_t dims_[3] = {(d0), (d1), (d2)};                                                    \
        st = tap(taps, Q3N_DTYPE_F32, (buf), 3, dims_, err, __VA_ARGS__);                         \
        if (st != Q3N_OK) goto done;                                                              \
    } while (0)

/* ---- workspace ---------------------------------------------------------------------- */

static int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

/* Lays out the workspace for T tokens; counts floats when w->base is NULL. */
static int64_t work_layout(struct cpu_work *w, const struct q3n_config *c, int64_t T, int64_t S)
{
    int64_t D = c->hidden_size, NK = c->linear_num_key_heads, NV = c->linear_num_value_heads;
    int64_t DK = c->linear_key_head_dim, DV = c->linear_value_head_dim;
    int64_t NH = c->num_attention_heads, NKV = c->num_key_value_heads, HD = c->head_dim;
    int64_t E = c->num_experts > 0 ? c->num_experts : 1, K = c->num_experts_per_tok > 0 ? c->num_experts_per_tok : 1;
    int64_t Cc = q3n_config_conv_dim(c), Q = q3n_config_qkvz_dim(c);
    int64_t Iw = c->moe_intermediate_size > 0 ? c->moe_intermediate_size : 1;
    int64_t Wmax = max64(max64(c->intermediate_size, c->shared_expert_intermediate_size), 1);
    int64_t used = 0;
#define TAKE(ptr, n)                                                    \
    do {                                                                \
        w->ptr = w->base ? w->base + used : NULL;                       \
        used += ((n) + 15) / 16 * 16; /* 64-byte alignment */           \
    } while (0)
    TAKE(h, T * D);
    TAKE(xn, T * D);
    TAKE(mix, T * D);
    TAKE(mlp, T * D);
    TAKE(qkvz, T * Q);
    TAKE(ba, T * 2 * NV);
    TAKE(q, T * NK * DK);
    TAKE(k, T * NK * DK);
    TAKE(v, T * NV * DV);
    TAKE(z, T * NV * DV);
    TAKE(b, T * NV);
    TAKE(a, T * NV);
    TAKE(mixed, T * Cc);
    TAKE(conv, T * Cc);
    TAKE(ql2, T * NK * DK);
    TAKE(kl2, T * NK * DK);
    TAKE(qs, T * NK * DK);
    TAKE(g, T * NV);
    TAKE(beta, T * NV);
    TAKE(core, T * NV * DV);
    TAKE(normo, T * NV * DV);
    TAKE(qg, T * NH * 2 * HD);
    TAKE(kp, T * NKV * HD);
    TAKE(vp, T * NKV * HD);
    TAKE(qa, T * NH * HD);
    TAKE(gate, T * NH * HD);
    TAKE(attn, T * NH * HD);
    TAKE(gated, T * NH * HD);
    TAKE(ascratch, cpu_attention_scratch(T, S - T, NH, NKV, HD));
    TAKE(rlogits, T * E);
    TAKE(probs, T * E);
    TAKE(topw, T * K);
    TAKE(eo, T * D);
    TAKE(se, T * D);
    TAKE(sgl, T);
    TAKE(mscratch, max64(cpu_moe_experts_scratch(T, D, Iw, K), T * 2 * Wmax));
    TAKE(cat, T * 2 * D);
    w->topi = w->base ? (int64_t *)(void *)(w->base + used) : NULL;
    used += T * K * 2;
#undef TAKE
    return used;
}

static enum q3n_status work_reserve(struct cpu_session *s, int64_t T, int64_t chunk, struct q3n_error *err)
{
    if (s->work.base && s->work.cap >= T) return Q3N_OK;
    free(s->work.base);
    memset(&s->work, 0, sizeof s->work);
    const struct q3n_config *c = &s->model->config;
    int64_t n = work_layout(&s->work, c, T, s->opt.max_tokens);
    int64_t dn = cpu_delta_rule_chunked_scratch(chunk, c->linear_key_head_dim, c->linear_value_head_dim);
    size_t bytes;
    if (!q3n_mul_size(&bytes, (size_t)(n + dn + 64), sizeof(float)))
        return q3n_error_set(err, Q3N_ERR_NOMEM, "cpu: workspace size overflows for T=%lld", (long long)T);
    s->work.base = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!s->work.base)
        return q3n_error_set(err, Q3N_ERR_NOMEM, "cpu: cannot allocate %zu bytes of workspace", bytes);
    work_layout(&s->work, c, T, s->opt.max_tokens);
    /* the delta-rule scratch sized for the session's chunk lives at the end */
    s->work.dscratch = s->work.base + n;
    s->work.cap = T;
    return Q3N_OK;
}

/* ---- blocks ------------------------------------------------------------------------- */

/* Gated DeltaNet block: mix [T,D] <- linear_attn(xn). */
static enum q3n_status linear_attn_block(struct cpu_session *s, int layer, int64_t T,
                                         const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    const struct q3n_config *c = &s->model->config;
    const struct q3n_linear_attn_weights *lw = &s->model->weights.layers[layer].linear_attn;
    struct cpu_layer_cache *cache = &s->layers[layer];
    struct cpu_work *w = &s->work;
    int64_t D = c->hidden_size, NK = c->linear_num_key_heads, NV = c->linear_num_value_heads;
    int64_t DK = c->linear_key_head_dim, DV = c->linear_value_head_dim, Kc = c->linear_conv_kernel_dim;
    int64_t Cc = q3n_config_conv_dim(c), Q = q3n_config_qkvz_dim(c);
    const char *p = "model.layers";
    int chunked = T > 1 || !s->has_previous_state;

    proj(s, w->qkvz, w->xn, lw->in_proj_qkvz, NULL, T, Q, D);
    TAP2(w->qkvz, T, Q, "%s.%d.linear_attn.in_proj_qkvz.out", p, layer);
    proj(s, w->ba, w->xn, lw->in_proj_ba, NULL, T, 2 * NV, D);
    TAP2(w->ba, T, 2 * NV, "%s.%d.linear_attn.in_proj_ba.out", p, layer);
    cpu_deltanet_split_forward(w->q, w->k, w->v, w->z, w->b, w->a, w->qkvz, w->ba, T, NK, NV, DK, DV);
    TAP3(w->q, T, NK, DK, "%s.%d.linear_attn.q", p, layer);
    TAP3(w->k, T, NK, DK, "%s.%d.linear_attn.k", p, layer);
    TAP3(w->v, T, NV, DV, "%s.%d.linear_attn.v", p, layer);
    TAP3(w->z, T, NV, DV, "%s.%d.linear_attn.z", p, layer);
    TAP2(w->b, T, NV, "%s.%d.linear_attn.b", p, layer);
    TAP2(w->a, T, NV, "%s.%d.linear_attn.a", p, layer);

    cpu_deltanet_conv_concat(w->mixed, w->q, w->k, w->v, T, NK, NV, DK, DV);
    cpu_conv1d_causal_forward(w->conv, w->mixed, lw->conv1d, s->has_previous_state ? cache->conv_state : NULL, T,
                              Cc, Kc);
    if (!s->has_previous_state) memset(cache->conv_state, 0, (size_t)(Cc * Kc) * sizeof(float));
    cpu_conv1d_state_update(cache->conv_state, w->mixed, T, Cc, Kc);
    TAP2(w->conv, T, Cc, "%s.%d.linear_attn.conv1d.out", p, layer);

    cpu_deltanet_conv_split(w->q, w->k, w->v, w->conv, T, NK, NV, DK, DV);
    cpu_l2norm_forward(w->ql2, w->q, T * NK, DK, 1e-6);
    cpu_l2norm_forward(w->kl2, w->k, T * NK, DK, 1e-6);
    TAP3(w->ql2, T, NK, DK, "%s.%d.linear_attn.q_l2", p, layer);
    TAP3(w->kl2, T, NK, DK, "%s.%d.linear_attn.k_l2", p, layer);
    memcpy(w->qs, w->ql2, (size_t)(T * NK * DK) * sizeof(float));
    cpu_deltanet_q_scale(w->qs, T * NK * DK, DK, !chunked);

    cpu_deltanet_gates_forward(w->g, w->beta, w->a, w->b, lw->A_log, lw->dt_bias, T, NV);
    TAP2(w->g, T, NV, "%s.%d.linear_attn.g", p, layer);
    TAP2(w->beta, T, NV, "%s.%d.linear_attn.beta", p, layer);

    if (!s->has_previous_state) memset(cache->recurrent_state, 0, (size_t)(NV * DK * DV) * sizeof(float));
    double t0 = prof_begin(s);
    if (chunked && bug_is(s, "chunk_off_by_one")) {
        cpu_delta_rule_chunked_bug_drop_last(w->core, cache->recurrent_state, w->qs, w->kl2, w->v, w->g, w->beta,
                                             w->dscratch, T, NK, NV, DK, DV, s->opt.chunk_size);
        s->used_chunked = 1;
    } else if (chunked) {
        cpu_delta_rule_chunked(w->core, cache->recurrent_state, w->qs, w->kl2, w->v, w->g, w->beta, w->dscratch, T,
                               NK, NV, DK, DV, s->opt.chunk_size);
        s->used_chunked = 1;
    } else {
        cpu_delta_rule_recurrent(w->core, cache->recurrent_state, w->qs, w->kl2, w->v, w->g, w->beta, T, NK, NV, DK,
                                 DV);
        s->used_recurrent = 1;
    }
    prof_end(s, CPU_PHASE_DELTA, t0);
    TAP3(w->core, T, NV, DV, "%s.%d.linear_attn.core_out", p, layer);
    TAP3(cache->recurrent_state, NV, DK, DV, "%s.%d.linear_attn.final_state", p, layer);

    const float *norm_w = lw->norm;
    if (layer == 1 && bug_is(s, "weak_gated_norm_layer1")) {
        for (int64_t i = 0; i < DV; i++) s->bug_w[i] = lw->norm[i] * 1.001f;
        norm_w = s->bug_w;
    }
    cpu_rmsnorm_gated_forward(w->normo, w->core, w->z, norm_w, T * NV, DV, c->rms_norm_eps);
    TAP3(w->normo, T, NV, DV, "%s.%d.linear_attn.norm.out", p, layer);
    proj(s, w->mix, w->normo, lw->out_proj, NULL, T, D, NV * DV);
    TAP2(w->mix, T, D, "%s.%d.linear_attn.out", p, layer);
done:
    return st;
}

/* Swaps the two halves of the rotary dims: around cpu_rope_forward the rotation runs backwards
 * (planted bug "rope_wrong_half", as ref plants it). */
static void swap_rot_halves(float *x, int64_t rows, int64_t HD, int64_t rot)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < rot / 2; i++) {
            float t = x[r * HD + i];
            x[r * HD + i] = x[r * HD + rot / 2 + i];
            x[r * HD + rot / 2 + i] = t;
        }
}

static void rope(const struct cpu_session *s, float *x, int64_t T, int64_t N, int64_t pos0)
{
    const struct q3n_config *c = &s->model->config;
    int wrong = bug_is(s, "rope_wrong_half");
    if (wrong) swap_rot_halves(x, T * N, c->head_dim, c->rotary_dim);
    cpu_rope_forward(x, T, N, c->head_dim, c->rotary_dim, pos0, c->rope_theta);
    if (wrong) swap_rot_halves(x, T * N, c->head_dim, c->rotary_dim);
}

/* Gated attention block: mix [T,D] <- self_attn(xn) at positions pos0.., KV cache kc/vc. */
static enum q3n_status attn_block(struct cpu_session *s, const char *p, const struct q3n_attn_weights *aw,
                                  float *kcache, float *vcache, int64_t T, int64_t pos0,
                                  const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    const struct q3n_config *c = &s->model->config;
    struct cpu_work *w = &s->work;
    int64_t D = c->hidden_size, NH = c->num_attention_heads, NKV = c->num_key_value_heads, HD = c->head_dim;

    proj(s, w->qg, w->xn, aw->q_proj, aw->q_bias, T, NH * 2 * HD, D);
    TAP2(w->qg, T, NH * 2 * HD, "%s.self_attn.q_proj.out", p);
    proj(s, w->kp, w->xn, aw->k_proj, aw->k_bias, T, NKV * HD, D);
    TAP2(w->kp, T, NKV * HD, "%s.self_attn.k_proj.out", p);
    proj(s, w->vp, w->xn, aw->v_proj, aw->v_bias, T, NKV * HD, D);
    TAP2(w->vp, T, NKV * HD, "%s.self_attn.v_proj.out", p);
    cpu_attn_split_qgate(w->qa, w->gate, w->qg, T, NH, HD);
    TAP3(w->gate, T, NH, HD, "%s.self_attn.gate", p);
    cpu_rmsnorm_forward(w->qa, w->qa, aw->q_norm, T * NH, HD, c->rms_norm_eps);
    TAP3(w->qa, T, NH, HD, "%s.self_attn.q_norm.out", p);
    float *kn = kcache + pos0 * NKV * HD;
    cpu_rmsnorm_forward(kn, w->kp, aw->k_norm, T * NKV, HD, c->rms_norm_eps);
    TAP3(kn, T, NKV, HD, "%s.self_attn.k_norm.out", p);
    rope(s, w->qa, T, NH, pos0);
    TAP3(w->qa, T, NH, HD, "%s.self_attn.q_rope", p);
    rope(s, kn, T, NKV, pos0);
    TAP3(kn, T, NKV, HD, "%s.self_attn.k_rope", p);
    memcpy(vcache + pos0 * NKV * HD, w->vp, (size_t)(T * NKV * HD) * sizeof(float));

    double t0 = prof_begin(s);
    cpu_attention_forward(w->attn, w->qa, kcache, vcache, w->ascratch, T, pos0, NH, NKV, HD);
    prof_end(s, CPU_PHASE_ATTN, t0);
    s->used_attn = 1;
    TAP3(w->attn, T, NH, HD, "%s.self_attn.attn_out", p);
    cpu_sigmoid_gate_forward(w->gated, w->attn, w->gate, T * NH * HD);
    TAP2(w->gated, T, NH * HD, "%s.self_attn.gated_out", p);
    proj(s, w->mix, w->gated, aw->o_proj, aw->o_bias, T, D, NH * HD);
    TAP2(w->mix, T, D, "%s.self_attn.out", p);
done:
    return st;
}

/* MLP block: mlp [T,D] <- sparse MoE or dense MLP of xn. `layer` indexes forced routing
 * (-1 for the MTP layer). */
static enum q3n_status mlp_block(struct cpu_session *s, const char *p, const struct q3n_layer_weights *lw,
                                 int sparse, int layer, int64_t T, int64_t pos0, const struct q3n_tap_sink *taps,
                                 struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    const struct q3n_config *c = &s->model->config;
    struct cpu_work *w = &s->work;
    int64_t D = c->hidden_size;
    if (!sparse) {
        mlp(s, w->mlp, w->xn, &lw->mlp, w->mscratch, T, D, c->intermediate_size);
        TAP2(w->mlp, T, D, "%s.mlp.out", p);
        goto done;
    }
    int64_t E = c->num_experts, K = c->num_experts_per_tok;
    const struct q3n_moe_weights *mw = &lw->moe;
    /* transformers' order (as ref): shared expert, router, routed experts, shared-expert gate */
    int has_shared = mw->shared_expert.gate_proj && c->shared_expert_intermediate_size > 0;
    if (has_shared) {
        mlp(s, w->se, w->xn, &mw->shared_expert, w->mscratch, T, D, c->shared_expert_intermediate_size);
        TAP2(w->se, T, D, "%s.mlp.shared_expert.out", p);
    }
    proj(s, w->rlogits, w->xn, mw->router, NULL, T, E, D);
    TAP2(w->rlogits, T, E, "%s.mlp.gate.logits", p);
    cpu_softmax_forward(w->probs, w->rlogits, T, E);
    TAP2(w->probs, T, E, "%s.mlp.gate.probs", p);
    cpu_topk_forward(w->topi, w->topw, w->probs, T, E, K, c->norm_topk_prob);
    /* routing overrides, as ref: forced routing (rows = absolute positions), then the planted
     * bug "router_flip_layer0" (position 0 of layer 0 takes the (K+1)-th expert for the K-th) */
    const struct q3n_forced_routing *fr = s->opt.forced_routing;
    if (fr && layer >= 0 && fr->topk_idx && fr->topk_idx[layer] && fr->topk_weight && fr->topk_weight[layer]) {
        for (int64_t t = 0; t < T && pos0 + t < fr->tokens; t++)
            for (int64_t j = 0; j < K; j++) {
                w->topi[t * K + j] = fr->topk_idx[layer][(pos0 + t) * K + j];
                w->topw[t * K + j] = fr->topk_weight[layer][(pos0 + t) * K + j];
            }
    }
    if (layer == 0 && pos0 == 0 && T > 0 && K < E && bug_is(s, "router_flip_layer0")) {
        cpu_topk_forward(s->bug_idx, s->bug_weight, w->probs, 1, E, K + 1, 0);
        w->topi[K - 1] = s->bug_idx[K];
        float sum = 0.0f;
        for (int64_t j = 0; j < K; j++) {
            w->topw[j] = w->probs[w->topi[j]];
            sum += w->topw[j];
        }
        if (c->norm_topk_prob)
            for (int64_t j = 0; j < K; j++) w->topw[j] = w->topw[j] / sum;
    }
    {
        int64_t dims[2] = {T, K};
        st = tap(taps, Q3N_DTYPE_I64, w->topi, 2, dims, err, "%s.mlp.gate.topk_idx", p);
        if (st != Q3N_OK) goto done;
    }
    TAP2(w->topw, T, K, "%s.mlp.gate.topk_weight", p);
    for (int64_t i = 0; i < T * K; i++)
        if (w->topi[i] < 0 || w->topi[i] >= E) {
            st = q3n_error_set(err, Q3N_ERR_USAGE, "cpu: %s.mlp.gate.topk_idx[%lld] = %lld is not an expert (E = %lld)",
                               p, (long long)i, (long long)w->topi[i], (long long)E);
            goto done;
        }
    double t0 = prof_begin(s);
    cpu_moe_experts_forward(w->eo, w->xn, w->topi, w->topw, mw->experts, w->mscratch, T, D,
                            c->moe_intermediate_size, K);
    prof_end(s, CPU_PHASE_MOE, t0);
    if (s->prof) {
        for (int64_t e = 0; e < E; e++) s->expert_count[e] = 0;
        for (int64_t i = 0; i < T * K; i++) s->expert_count[w->topi[i]]++;
        for (int64_t e = 0; e < E; e++) {
            prof_shape(s, s->expert_count[e], c->moe_intermediate_size, D);
            prof_shape(s, s->expert_count[e], c->moe_intermediate_size, D);
            prof_shape(s, s->expert_count[e], D, c->moe_intermediate_size);
        }
    }
    TAP2(w->eo, T, D, "%s.mlp.experts.out", p);
    if (has_shared) {
        proj(s, w->sgl, w->xn, mw->shared_expert_gate, NULL, T, 1, D);
        TAP2(w->sgl, T, 1, "%s.mlp.shared_expert_gate.out", p);
        cpu_moe_combine_forward(w->mlp, w->eo, w->se, w->sgl, T, D);
    } else {
        cpu_moe_combine_forward(w->mlp, w->eo, NULL, NULL, T, D);
    }
    TAP2(w->mlp, T, D, "%s.mlp.out", p);
done:
    return st;
}

/* One decoder layer on w->h (in place). */
static enum q3n_status decoder_layer(struct cpu_session *s, const char *p, int layer, int is_mtp, int64_t T,
                                     int64_t pos0, const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    const struct q3n_config *c = &s->model->config;
    const struct q3n_layer_weights *lw =
        is_mtp ? &s->model->weights.mtp.layer : &s->model->weights.layers[layer];
    struct cpu_work *w = &s->work;
    int64_t D = c->hidden_size;
    int full = is_mtp || c->layer_type[layer] == Q3N_LAYER_FULL_ATTENTION;
    int sparse = is_mtp ? s->model->weights.mtp.layer_is_sparse : c->layer_is_sparse[layer];

    TAP2(w->h, T, D, "%s.in", p);
    const float *in_norm = lw->input_layernorm;
    if (!is_mtp && layer == 0 && bug_is(s, "norm_no_offset")) {
        for (int64_t i = 0; i < D; i++) s->bug_w[i] = lw->input_layernorm[i] - 1.0f; /* 1 + w' = w */
        in_norm = s->bug_w;
    }
    cpu_rmsnorm_forward(w->xn, w->h, in_norm, T, D, c->rms_norm_eps);
    TAP2(w->xn, T, D, "%s.input_layernorm.out", p);
    if (full) {
        struct cpu_layer_cache *cache = is_mtp ? &s->mtp : &s->layers[layer];
        st = attn_block(s, p, &lw->self_attn, cache->key_cache, cache->value_cache, T, pos0, taps, err);
    } else {
        st = linear_attn_block(s, layer, T, taps, err);
    }
    if (st != Q3N_OK) goto done;
    cpu_add_inplace(w->h, w->mix, T * D);
    TAP2(w->h, T, D, "%s.post_attention_layernorm.in", p);
    cpu_rmsnorm_forward(w->xn, w->h, lw->post_attention_layernorm, T, D, c->rms_norm_eps);
    TAP2(w->xn, T, D, "%s.post_attention_layernorm.out", p);
    st = mlp_block(s, p, lw, sparse, is_mtp ? -1 : layer, T, pos0, taps, err);
    if (st != Q3N_OK) goto done;
    cpu_add_inplace(w->h, w->mlp, T * D);
    TAP2(w->h, T, D, "%s.out", p);
done:
    return st;
}

/* ---- the session -------------------------------------------------------------------- */

static void cpu_close(void *session);

static enum q3n_status cpu_open(void **session, const struct q3n_model *model, const struct q3n_run_options *opt,
                                struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    *session = NULL;
    struct cpu_session *s = calloc(1, sizeof *s);
    if (!s) return q3n_error_set(err, Q3N_ERR_NOMEM, "cpu: cannot allocate a session");
    s->model = model;
    if (opt)
        s->opt = *opt;
    else
        q3n_run_options_default(&s->opt);
    const struct q3n_config *c = &model->config;
    if (s->opt.dtype != Q3N_COMPUTE_F32) {
        st = q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "cpu: only float32 compute is implemented");
        goto fail;
    }
    if (s->opt.chunk_size <= 0) s->opt.chunk_size = 64;
    if (s->opt.max_tokens <= 0) s->opt.max_tokens = 4096;
    if (s->opt.test_bug) {
        int found = 0;
        for (int i = 0; known_bugs[i]; i++) found |= strcmp(s->opt.test_bug, known_bugs[i]) == 0;
        if (!found) {
            st = q3n_error_set(err, Q3N_ERR_USAGE,
                               "cpu: unknown test_bug '%s' (known: rope_wrong_half, norm_no_offset, "
                               "chunk_off_by_one, router_flip_layer0, weak_gated_norm_layer1)",
                               s->opt.test_bug);
            goto fail;
        }
        snprintf(s->test_bug, sizeof s->test_bug, "%s", s->opt.test_bug);
    }
    s->opt.test_bug = NULL;
    if (s->opt.n_threads > 0) openblas_set_num_threads(s->opt.n_threads);
    s->threads = openblas_get_num_threads();

    int64_t L = c->num_hidden_layers, D = c->hidden_size, M = s->opt.max_tokens;
    int64_t Cc = q3n_config_conv_dim(c), Kc = c->linear_conv_kernel_dim;
    int64_t NV = c->linear_num_value_heads, DK = c->linear_key_head_dim, DV = c->linear_value_head_dim;
    int64_t kv = M * c->num_key_value_heads * c->head_dim;
    s->layers = calloc((size_t)L, sizeof *s->layers);
    s->last_hidden = malloc((size_t)(M * D) * sizeof(float));
    s->bug_w = malloc((size_t)(D > DV ? D : DV) * sizeof(float));
    s->bug_idx = malloc((size_t)(c->num_experts_per_tok + 1) * sizeof(int64_t));
    s->bug_weight = malloc((size_t)(c->num_experts_per_tok + 1) * sizeof(float));
    s->expert_count = calloc((size_t)(c->num_experts > 0 ? c->num_experts : 1), sizeof(int64_t));
    if (!s->layers || !s->last_hidden || !s->bug_w || !s->bug_idx || !s->bug_weight || !s->expert_count) goto nomem;
    for (int64_t l = 0; l < L; l++) {
        struct cpu_layer_cache *lc = &s->layers[l];
        if (c->layer_type[l] == Q3N_LAYER_FULL_ATTENTION) {
            lc->key_cache = malloc((size_t)kv * sizeof(float));
            lc->value_cache = malloc((size_t)kv * sizeof(float));
            if (!lc->key_cache || !lc->value_cache) goto nomem;
        } else {
            lc->conv_state = calloc((size_t)(Cc * Kc), sizeof(float));
            lc->recurrent_state = calloc((size_t)(NV * DK * DV), sizeof(float));
            if (!lc->conv_state || !lc->recurrent_state) goto nomem;
        }
    }
    if (c->num_mtp_layers > 0) {
        s->mtp.key_cache = malloc((size_t)kv * sizeof(float));
        s->mtp.value_cache = malloc((size_t)kv * sizeof(float));
        if (!s->mtp.key_cache || !s->mtp.value_cache) goto nomem;
    }
    *session = s;
    return Q3N_OK;
nomem:
    st = q3n_error_set(err, Q3N_ERR_NOMEM, "cpu: cannot allocate caches for max_tokens=%lld",
                       (long long)s->opt.max_tokens);
fail:
    cpu_close(s);
    return st;
}

static enum q3n_status check_tokens(const struct cpu_session *s, const int64_t *tokens, int64_t T, int64_t pos0,
                                    struct q3n_error *err)
{
    const struct q3n_config *c = &s->model->config;
    if (T <= 0) return q3n_error_set(err, Q3N_ERR_USAGE, "cpu: forward of %lld tokens", (long long)T);
    if (pos0 + T > s->opt.max_tokens)
        return q3n_error_set(err, Q3N_ERR_USAGE, "cpu: %lld tokens exceed max_tokens %lld", (long long)(pos0 + T),
                             (long long)s->opt.max_tokens);
    for (int64_t t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= c->vocab_size)
            return q3n_error_set(err, Q3N_ERR_USAGE, "cpu: token %lld at index %lld is outside [0, %lld)",
                                 (long long)tokens[t], (long long)t, (long long)c->vocab_size);
    return Q3N_OK;
}

static enum q3n_status cpu_forward(void *session, float *logits, const int64_t *tokens, int64_t T,
                                   const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    struct cpu_session *s = session;
    const struct q3n_config *c = &s->model->config;
    const struct q3n_weights *wt = &s->model->weights;
    int64_t D = c->hidden_size, pos0 = s->len;
    enum q3n_status st = check_tokens(s, tokens, T, pos0, err);
    if (st != Q3N_OK) return st;
    st = work_reserve(s, T, s->opt.chunk_size, err);
    if (st != Q3N_OK) return st;
    struct cpu_work *w = &s->work;
    char p[64];
    s->last_T = 0; /* a failed forward leaves the caches half-updated: reset the session */

    cpu_embed_forward(w->h, tokens, wt->embed_tokens, T, D);
    TAP2(w->h, T, D, "model.embed_tokens.out");
    for (int l = 0; l < c->num_hidden_layers; l++) {
        snprintf(p, sizeof p, "model.layers.%d", l);
        st = decoder_layer(s, p, l, 0, T, pos0, taps, err);
        if (st != Q3N_OK) goto done;
    }
    float *hn = s->last_hidden + pos0 * D;
    cpu_rmsnorm_forward(hn, w->h, wt->norm, T, D, c->rms_norm_eps);
    TAP2(hn, T, D, "model.norm.out");
    proj(s, logits, hn, wt->lm_head, NULL, T, c->vocab_size, D);
    s->len += T;
    s->has_previous_state = 1;
    s->last_T = T;
    s->last_pos0 = pos0;
done:
    return st;
}

/* MTP head on the last forward's positions pos0 .. pos0+T-2: row t combines the embedding of
 * tokens[t+1] with the final-norm hidden of position pos0+t; its layer runs at RoPE positions
 * pos0+t with the MTP KV cache. */
static enum q3n_status cpu_forward_mtp(void *session, float *mtp_logits, const int64_t *tokens, int64_t T,
                                       const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    struct cpu_session *s = session;
    const struct q3n_config *c = &s->model->config;
    const struct q3n_weights *wt = &s->model->weights;
    const struct q3n_mtp_weights *mw = &wt->mtp;
    int64_t D = c->hidden_size;
    enum q3n_status st = Q3N_OK;
    if (c->num_mtp_layers <= 0) return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "cpu: the model has no MTP layer");
    if (s->last_T < 1 || T != s->last_T)
        return q3n_error_set(err, Q3N_ERR_USAGE,
                             "cpu: forward_mtp needs the %lld tokens of the last forward (got T = %lld)",
                             (long long)s->last_T, (long long)T);
    if (s->mtp_len != s->last_pos0)
        return q3n_error_set(err, Q3N_ERR_USAGE,
                             "cpu: the MTP cache holds %lld positions but the last forward started at %lld",
                             (long long)s->mtp_len, (long long)s->last_pos0);
    st = check_tokens(s, tokens, T, 0, err);
    if (st != Q3N_OK) return st;
    if (T == 1) return Q3N_OK;
    struct cpu_work *w = &s->work;
    int64_t n = T - 1, pos0 = s->last_pos0;

    cpu_embed_forward(w->mix, tokens + 1, wt->embed_tokens, n, D);
    cpu_rmsnorm_forward(w->xn, w->mix, mw->pre_fc_norm_embedding, n, D, c->rms_norm_eps);
    TAP2(w->xn, n, D, "mtp.pre_fc_norm_embedding.out");
    cpu_rmsnorm_forward(w->mlp, s->last_hidden + pos0 * D, mw->pre_fc_norm_hidden, n, D, c->rms_norm_eps);
    TAP2(w->mlp, n, D, "mtp.pre_fc_norm_hidden.out");
    for (int64_t t = 0; t < n; t++) {
        memcpy(w->cat + t * 2 * D, w->xn + t * D, (size_t)D * sizeof(float));
        memcpy(w->cat + t * 2 * D + D, w->mlp + t * D, (size_t)D * sizeof(float));
    }
    proj(s, w->h, w->cat, mw->fc, NULL, n, D, 2 * D);
    TAP2(w->h, n, D, "mtp.fc.out");
    st = decoder_layer(s, "mtp.layers.0", 0, 1, n, pos0, taps, err);
    if (st != Q3N_OK) goto done;
    s->mtp_len += n;
    cpu_rmsnorm_forward(w->xn, w->h, mw->norm, n, D, c->rms_norm_eps);
    TAP2(w->xn, n, D, "mtp.norm.out");
    proj(s, mtp_logits, w->xn, wt->lm_head, NULL, n, c->vocab_size, D);
done:
    return st;
}

static void cpu_reset(void *session)
{
    struct cpu_session *s = session;
    s->len = 0;
    s->mtp_len = 0;
    s->has_previous_state = 0;
    s->last_T = 0;
    s->last_pos0 = 0;
    s->used_chunked = s->used_recurrent = s->used_attn = 0;
}

static const char *cpu_describe(void *session)
{
    struct cpu_session *s = session;
    const char *dn = s->used_chunked && s->used_recurrent ? "chunked-wy+recurrent"
                     : s->used_recurrent                  ? "recurrent"
                     : s->used_chunked                    ? "chunked-wy"
                                                          : "none";
    /* compact (verify appends "; decode: <this>" into a 256-byte field): chunked-wy = the WY/UT
     * chunked delta rule (sgemm + forward substitution); flash(QBxKB) = blocked attention with an online
     * softmax; moe=grouped-sgemm = per-expert gathered GEMMs. */
    snprintf(s->desc, sizeof s->desc,
             "cpu: deltanet=%s(C=%lld) attn=%s moe=grouped-sgemm blas=openblas-%s threads=%lld%s%s", dn,
             (long long)s->opt.chunk_size, s->used_attn ? "flash(64x256)" : "none", openblas_get_corename(),
             (long long)s->threads, s->test_bug[0] ? " test_bug=" : "", s->test_bug);
    return s->desc;
}

static void cpu_close(void *session)
{
    struct cpu_session *s = session;
    if (!s) return;
    if (s->layers) {
        for (int64_t l = 0; l < s->model->config.num_hidden_layers; l++) {
            free(s->layers[l].conv_state);
            free(s->layers[l].recurrent_state);
            free(s->layers[l].key_cache);
            free(s->layers[l].value_cache);
        }
        free(s->layers);
    }
    free(s->mtp.key_cache);
    free(s->mtp.value_cache);
    free(s->last_hidden);
    free(s->bug_w);
    free(s->bug_idx);
    free(s->bug_weight);
    free(s->expert_count);
    free(s->work.base);
    free(s);
}

const struct q3n_impl cpu_impl = {
    .name = "cpu",
    .open = cpu_open,
    .forward = cpu_forward,
    .forward_mtp = cpu_forward_mtp,
    .reset = cpu_reset,
    .describe = cpu_describe,
    .close = cpu_close,
};
