/* impl.c — the reference as a harness implementation (harness/impl.h): a session owns the
 * caches and scratch for one sequence in one allocation, sized by the table in ref_layout();
 * the forward itself is ref/model.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "session.h"

static const char *const known_bugs[] = {"rope_wrong_half", "norm_no_offset", "chunk_off_by_one",
                                         "router_flip_layer0", "weak_gated_norm_layer1", NULL};

/* The sizes table: walks every buffer in a fixed order, either counting bytes (base NULL) or
 * pointing the session's pointers into base. Each buffer is 64-byte aligned. */
struct layout {
    char *base;
    size_t used;
    int overflow;
};

static void *take(struct layout *l, int64_t count, size_t elem)
{
    size_t bytes = 0, at = l->used;
    if (count < 0 || !q3n_mul_size(&bytes, (size_t)count, elem) || !q3n_add_size(&bytes, bytes, 63)) {
        l->overflow = 1;
        return NULL;
    }
    bytes &= ~(size_t)63;
    if (!q3n_add_size(&l->used, l->used, bytes)) l->overflow = 1;
    return (l->base && !l->overflow) ? l->base + at : NULL;
}

#define TAKE_R(l, n) ((ref_real *)take((l), (n), sizeof(ref_real)))

static int64_t max3(int64_t a, int64_t b, int64_t c)
{
    int64_t m = a > b ? a : b;
    return m > c ? m : c;
}

static void ref_layout(struct layout *l, struct ref_session *s)
{
    const struct q3n_config *c = s->cfg;
    struct ref_scratch *b = &s->s;
    int64_t Tm = s->cache.max_tokens, D = c->hidden_size, V = c->vocab_size;
    int64_t NK = c->linear_num_key_heads, NV = c->linear_num_value_heads, DK = c->linear_key_head_dim;
    int64_t DV = c->linear_value_head_dim, Kc = c->linear_conv_kernel_dim;
    int64_t Cc = q3n_config_conv_dim(c), QKVZ = q3n_config_qkvz_dim(c);
    int64_t NH = c->num_attention_heads, NKV = c->num_key_value_heads, HD = c->head_dim;
    int64_t E = c->num_experts, K = c->num_experts_per_tok, I = c->moe_intermediate_size;
    int64_t W = max3(c->intermediate_size, c->shared_expert_intermediate_size, 1);
    int64_t L = c->num_hidden_layers;
    int any_linear = 0, any_full = c->num_mtp_layers > 0, any_sparse = 0;
    for (int64_t i = 0; i < L; i++) {
        any_linear |= c->layer_type[i] == Q3N_LAYER_LINEAR_ATTENTION;
        any_full |= c->layer_type[i] == Q3N_LAYER_FULL_ATTENTION;
        any_sparse |= c->layer_is_sparse[i];
    }
    any_sparse |= c->num_mtp_layers > 0 && E > 0;
    int64_t lin = any_linear ? Tm : 0, full = any_full ? Tm : 0, moe = any_sparse ? Tm : 0;

    s->cache.layers = take(l, L, sizeof(struct ref_layer_cache));
    for (int64_t i = 0; i < L; i++) {
        struct ref_layer_cache lc = {0};
        if (c->layer_type[i] == Q3N_LAYER_LINEAR_ATTENTION) {
            lc.conv_state = TAKE_R(l, Cc * Kc);
            lc.recurrent_state = TAKE_R(l, NV * DK * DV);
        } else {
            lc.key_cache = TAKE_R(l, Tm * NKV * HD);
            lc.value_cache = TAKE_R(l, Tm * NKV * HD);
        }
        if (s->cache.layers) s->cache.layers[i] = lc;
    }
    if (c->num_mtp_layers > 0) {
        s->cache.mtp.key_cache = TAKE_R(l, Tm * NKV * HD);
        s->cache.mtp.value_cache = TAKE_R(l, Tm * NKV * HD);
    }

    b->h = TAKE_R(l, Tm * D);
    b->xn = TAKE_R(l, Tm * D);
    b->mix = TAKE_R(l, Tm * D);
    b->hfin = TAKE_R(l, Tm * D);
    b->qkvz = TAKE_R(l, lin * QKVZ);
    b->ba = TAKE_R(l, lin * 2 * NV);
    b->q = TAKE_R(l, lin * NK * DK);
    b->k = TAKE_R(l, lin * NK * DK);
    b->v = TAKE_R(l, lin * NV * DV);
    b->z = TAKE_R(l, lin * NV * DV);
    b->b = TAKE_R(l, lin * NV);
    b->a = TAKE_R(l, lin * NV);
    b->mixed = TAKE_R(l, lin * Cc);
    b->conv_out = TAKE_R(l, lin * Cc);
    b->cq = TAKE_R(l, lin * NK * DK);
    b->ck = TAKE_R(l, lin * NK * DK);
    b->cv = TAKE_R(l, lin * NV * DV);
    b->g = TAKE_R(l, lin * NV);
    b->beta = TAKE_R(l, lin * NV);
    b->core = TAKE_R(l, lin * NV * DV);
    b->normed = TAKE_R(l, lin * NV * DV);
    b->delta = TAKE_R(l, any_linear ? ref_delta_rule_chunked_scratch(s->opt.chunk_size, DK, DV) : 0);
    b->qg = TAKE_R(l, full * NH * 2 * HD);
    b->aq = TAKE_R(l, full * NH * HD);
    b->gate = TAKE_R(l, full * NH * HD);
    b->kp = TAKE_R(l, full * NKV * HD);
    b->vp = TAKE_R(l, full * NKV * HD);
    b->attn = TAKE_R(l, full * NH * HD);
    b->gated = TAKE_R(l, full * NH * HD);
    b->scores = TAKE_R(l, full);
    b->router_logits = TAKE_R(l, moe * E);
    b->probs = TAKE_R(l, moe * E);
    b->topk_weight = TAKE_R(l, moe * K);
    b->topk_idx = take(l, moe * K, sizeof(int64_t));
    b->experts_out = TAKE_R(l, moe * D);
    b->shared_out = TAKE_R(l, moe * D);
    b->shared_gate = TAKE_R(l, moe);
    b->mlp = TAKE_R(l, Tm * 2 * W + 2 * I + D);
    b->mtp_e = TAKE_R(l, c->num_mtp_layers > 0 ? Tm * D : 0);
    b->mtp_h = TAKE_R(l, c->num_mtp_layers > 0 ? Tm * D : 0);
    b->mtp_cat = TAKE_R(l, c->num_mtp_layers > 0 ? Tm * 2 * D : 0);
    b->logits_row = TAKE_R(l, V);
    b->bug_w = take(l, D > DV ? D : DV, sizeof(float));
    b->bug_idx = take(l, K + 1, sizeof(int64_t));
    b->bug_weight = TAKE_R(l, K + 1);
}

static void ref_reset(void *session)
{
    struct ref_session *s = session;
    const struct q3n_config *c = s->cfg;
    int64_t Tm = s->cache.max_tokens, NKV = c->num_key_value_heads, HD = c->head_dim;
    for (int64_t i = 0; i < c->num_hidden_layers; i++) {
        struct ref_layer_cache *lc = &s->cache.layers[i];
        if (lc->conv_state) {
            memset(lc->conv_state, 0, (size_t)(q3n_config_conv_dim(c) * c->linear_conv_kernel_dim) * sizeof(ref_real));
            memset(lc->recurrent_state, 0,
                   (size_t)(c->linear_num_value_heads * c->linear_key_head_dim * c->linear_value_head_dim) *
                       sizeof(ref_real));
        }
        if (lc->key_cache) {
            memset(lc->key_cache, 0, (size_t)(Tm * NKV * HD) * sizeof(ref_real));
            memset(lc->value_cache, 0, (size_t)(Tm * NKV * HD) * sizeof(ref_real));
        }
    }
    if (s->cache.mtp.key_cache) {
        memset(s->cache.mtp.key_cache, 0, (size_t)(Tm * NKV * HD) * sizeof(ref_real));
        memset(s->cache.mtp.value_cache, 0, (size_t)(Tm * NKV * HD) * sizeof(ref_real));
    }
    s->cache.len = 0;
    s->cache.mtp_len = 0;
    s->cache.has_previous_state = 0;
    s->last_T = 0;
    s->broken = 0;
    s->last_pos0 = 0;
    snprintf(s->describe, sizeof s->describe, "%s: no forward yet", ref_impl.name);
}

static void ref_close(void *session)
{
    struct ref_session *s = session;
    if (!s) return;
    free(s->block);
    free(s);
}

static enum q3n_status ref_open(void **session, const struct q3n_model *model, const struct q3n_run_options *opt,
                                struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    struct ref_session *s = NULL;
    *session = NULL;
    struct q3n_run_options def;
    if (!opt) {
        q3n_run_options_default(&def);
        opt = &def;
    }
    enum q3n_compute_dtype want = REF_REAL_DTYPE == Q3N_DTYPE_F64 ? Q3N_COMPUTE_F64 : Q3N_COMPUTE_F32;
    if (opt->dtype != want) {
        st = q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "%s: computes in %s only (dtype option %d)", ref_impl.name,
                           want == Q3N_COMPUTE_F64 ? "float64" : "float32", (int)opt->dtype);
        goto cleanup;
    }
    if (opt->chunk_size < 1 || opt->max_tokens < 1) {
        st = q3n_error_set(err, Q3N_ERR_USAGE, "%s: chunk_size (%lld) and max_tokens (%lld) must be >= 1",
                           ref_impl.name, (long long)opt->chunk_size, (long long)opt->max_tokens);
        goto cleanup;
    }
    if (opt->test_bug) {
        int found = 0;
        for (int i = 0; known_bugs[i]; i++) found |= strcmp(opt->test_bug, known_bugs[i]) == 0;
        if (!found) {
            st = q3n_error_set(err, Q3N_ERR_USAGE,
                               "%s: unknown test_bug '%s' (known: rope_wrong_half, norm_no_offset, "
                               "chunk_off_by_one, router_flip_layer0, weak_gated_norm_layer1)",
                               ref_impl.name, opt->test_bug);
            goto cleanup;
        }
    }
    s = calloc(1, sizeof *s);
    if (!s) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory for the session", ref_impl.name);
        goto cleanup;
    }
    s->model = model;
    s->cfg = &model->config;
    s->opt = *opt;
    s->opt.test_bug = NULL;
    if (opt->test_bug) snprintf(s->test_bug, sizeof s->test_bug, "%s", opt->test_bug);
    s->cache.max_tokens = opt->max_tokens;

    struct layout l = {0};
    ref_layout(&l, s);
    if (l.overflow) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: caches for max_tokens = %lld overflow", ref_impl.name,
                           (long long)opt->max_tokens);
        goto cleanup;
    }
    s->block = calloc(1, l.used);
    if (!s->block) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: cannot allocate %zu bytes of caches and scratch (max_tokens = %lld)",
                           ref_impl.name, l.used, (long long)opt->max_tokens);
        goto cleanup;
    }
    size_t total = l.used;
    l = (struct layout){.base = s->block};
    ref_layout(&l, s);
    Q3N_REQUIRE(l.used == total && !l.overflow);
    /* Scratch (everything after the caches) starts as NaN, so an op that reads a buffer before
     * anything wrote it shows up in the logits instead of passing as zeros. */
    memset(s->s.h, 0xFF, total - (size_t)((char *)s->s.h - (char *)s->block));
    ref_reset(s);
    *session = s;
    s = NULL;

cleanup:
    ref_close(s);
    return st;
}

static enum q3n_status ref_forward(void *session, float *logits, const int64_t *tokens, int64_t T,
                                   const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    return ref_model_forward(session, logits, tokens, T, taps, err);
}

static enum q3n_status ref_forward_mtp(void *session, float *mtp_logits, const int64_t *tokens, int64_t T,
                                       const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    return ref_model_forward_mtp(session, mtp_logits, tokens, T, taps, err);
}

static const char *ref_describe(void *session)
{
    return ((struct ref_session *)session)->describe;
}

const struct ref_cache *ref_session_cache(const void *session)
{
    return &((const struct ref_session *)session)->cache;
}

const struct q3n_impl ref_impl = {
#ifdef Q3N_REF64
    .name = "ref64",
#else
    .name = "ref",
#endif
    .open = ref_open,
    .forward = ref_forward,
    .forward_mtp = ref_forward_mtp,
    .reset = ref_reset,
    .describe = ref_describe,
    .close = ref_close,
};
