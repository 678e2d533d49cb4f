/* test_model.c — the whole reference forward on synthetic models (harness/synth.h): prefill +
 * decode equals one full forward (logits and every layer's caches), split prefills too; reset
 * equals a fresh session; the chunk size does not matter; bad token ids are usage errors that
 * name the position; every golden-format tap is emitted with its shape; the MTP head's inputs
 * are wired causally. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../harness/rng.h"
#include "../harness/synth.h"
#include "ops.h"
#include "testref.h"

#ifdef Q3N_REF64
#define SPLIT_TOL 1e-10
#else
#define SPLIT_TOL 1e-5
#endif

static struct q3n_model *make_model(const char *preset, uint64_t seed)
{
    struct q3n_config cfg;
    struct q3n_error err = {0};
    struct q3n_model *m = NULL;
    if (q3n_synth_config(&cfg, preset, &err) != Q3N_OK) fail_msg("%s", err.msg);
    if (q3n_synth_model_create(&m, &cfg, seed, &err) != Q3N_OK) fail_msg("%s", err.msg);
    return m;
}

static void *open_session(const struct q3n_model *m, int64_t chunk, int64_t max_tokens, const char *bug)
{
    struct q3n_run_options opt;
    q3n_run_options_default(&opt);
    opt.chunk_size = chunk;
    opt.max_tokens = max_tokens;
    opt.test_bug = bug;
    struct q3n_error err = {0};
    void *s = NULL;
    if (ref_impl.open(&s, m, &opt, &err) != Q3N_OK) fail_msg("%s", err.msg);
    return s;
}

static void random_tokens(int64_t *tok, int64_t T, int64_t V, uint64_t seed)
{
    struct q3n_rng rng;
    q3n_rng_seed(&rng, seed);
    for (int64_t t = 0; t < T; t++) tok[t] = q3n_rng_int(&rng, 0, V - 1);
}

/* Runs tokens through the session as forwards of the given sizes (0-terminated; the rest one
 * token at a time), writing logits [T,V]. */
static void run_split(void *s, float *logits, const int64_t *tok, int64_t T, int64_t V, const int64_t *sizes)
{
    struct q3n_error err = {0};
    int64_t done = 0;
    for (int i = 0; sizes && sizes[i] && done < T; i++) {
        int64_t n = sizes[i] < T - done ? sizes[i] : T - done;
        if (ref_impl.forward(s, logits + done * V, tok + done, n, NULL, &err) != Q3N_OK) fail_msg("%s", err.msg);
        done += n;
    }
    for (; done < T; done++)
        if (ref_impl.forward(s, logits + done * V, tok + done, 1, NULL, &err) != Q3N_OK) fail_msg("%s", err.msg);
}

/* Worst rel L2 over every layer's conv state, recurrent state and KV cache rows [0, len). */
static double caches_rel_l2(const struct q3n_config *c, const struct ref_cache *a, const struct ref_cache *b)
{
    double worst = 0.0;
    assert_int_equal(a->len, b->len);
    for (int64_t i = 0; i < c->num_hidden_layers; i++) {
        const struct ref_layer_cache *x = &a->layers[i], *y = &b->layers[i];
        double e[4] = {0, 0, 0, 0};
        if (x->conv_state) {
            e[0] = testkit_rel_l2_real(x->conv_state, y->conv_state,
                                       q3n_config_conv_dim(c) * c->linear_conv_kernel_dim);
            e[1] = testkit_rel_l2_real(x->recurrent_state, y->recurrent_state,
                                       c->linear_num_value_heads * c->linear_key_head_dim * c->linear_value_head_dim);
        } else {
            int64_t n = a->len * c->num_key_value_heads * c->head_dim;
            e[2] = testkit_rel_l2_real(x->key_cache, y->key_cache, n);
            e[3] = testkit_rel_l2_real(x->value_cache, y->value_cache, n);
        }
        for (int j = 0; j < 4; j++) {
            if (isnan(e[j])) return NAN;
            if (e[j] > worst) worst = e[j];
        }
    }
    return worst;
}

/* rel L2 of split-run logits and caches against one full forward. */
static void split_vs_full(const char *preset, const int64_t *sizes, int64_t T, int64_t chunk, const char *bug,
                          double *logits_err, double *cache_err)
{
    struct q3n_model *m = make_model(preset, 11);
    int64_t V = m->config.vocab_size;
    int64_t *tok = malloc((size_t)T * sizeof *tok);
    float *full = malloc((size_t)(T * V) * sizeof(float)), *split = malloc((size_t)(T * V) * sizeof(float));
    assert_true(tok && full && split);
    random_tokens(tok, T, V, 99);
    void *a = open_session(m, chunk, T, bug), *b = open_session(m, chunk, T, bug);
    struct q3n_error err = {0};
    if (ref_impl.forward(a, full, tok, T, NULL, &err) != Q3N_OK) fail_msg("%s", err.msg);
    run_split(b, split, tok, T, V, sizes);
    *logits_err = testkit_rel_l2_f32(split, full, T * V);
    *cache_err = caches_rel_l2(&m->config, ref_session_cache(a), ref_session_cache(b));
    ref_impl.close(a);
    ref_impl.close(b);
    free(tok);
    free(full);
    free(split);
    q3n_model_close(m);
}

static void check_split(const char *preset, const int64_t *sizes, const char *what)
{
    double el, ec;
    split_vs_full(preset, sizes, 40, 16, NULL, &el, &ec);
    printf("%s %s vs full forward (T=40, C=16): logits rel_l2 = %.3g, caches rel_l2 = %.3g (tol %.0e)\n", preset,
           what, el, ec, SPLIT_TOL);
    if (!(el <= SPLIT_TOL && ec <= SPLIT_TOL))
        fail_msg("%s %s: logits rel_l2 %.3g, caches rel_l2 %.3g > %.0e", preset, what, el, ec, SPLIT_TOL);
}

static const int64_t prefill_then_decode[] = {17, 0};
static const int64_t split_prefill_then_decode[] = {13, 12, 0};
static const int64_t token_by_token[] = {0};

static void prefill_then_decode_equals_full_forward_on_tiny(void **state)
{
    (void)state;
    check_split("tiny", prefill_then_decode, "prefill 17 + decode");
    check_split("tiny", split_prefill_then_decode, "prefill 13 + 12 + decode");
    check_split("tiny", token_by_token, "token by token");
}

static void prefill_then_decode_equals_full_forward_on_odd(void **state)
{
    (void)state;
    check_split("odd", prefill_then_decode, "prefill 17 + decode");
    check_split("odd", split_prefill_then_decode, "prefill 13 + 12 + decode");
    check_split("odd", token_by_token, "token by token");
}

/* The consistency check must see the planted chunked-form bug. */
static void split_check_catches_a_chunk_that_drops_its_last_token(void **state)
{
    (void)state;
    double el, ec;
    split_vs_full("tiny", prefill_then_decode, 40, 16, "chunk_off_by_one", &el, &ec);
    if (!(el > 100 * SPLIT_TOL)) fail_msg("chunk_off_by_one went unnoticed: logits rel_l2 %.3g", el);
}

static void chunk_size_does_not_change_the_logits(void **state)
{
    (void)state;
    struct q3n_model *m = make_model("tiny", 3);
    int64_t T = 70, V = m->config.vocab_size;
    int64_t tok[70];
    float *a = malloc((size_t)(T * V) * sizeof(float)), *b = malloc((size_t)(T * V) * sizeof(float));
    assert_true(a && b);
    random_tokens(tok, T, V, 5);
    const int64_t chunks[] = {64, 1, 7, 128};
    struct q3n_error err = {0};
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        void *s = open_session(m, chunks[i], T, NULL);
        if (ref_impl.forward(s, i == 0 ? a : b, tok, T, NULL, &err) != Q3N_OK) fail_msg("%s", err.msg);
        char name[32];
        snprintf(name, sizeof name, "logits C=%lld", (long long)chunks[i]);
        if (i > 0) assert_rel_l2_within_f32(name, b, a, T * V, SPLIT_TOL);
        assert_non_null(strstr(ref_impl.describe(s), "chunked"));
        ref_impl.close(s);
    }
    free(a);
    free(b);
    q3n_model_close(m);
}

static void reset_session_equals_a_fresh_one(void **state)
{
    (void)state;
    struct q3n_model *m = make_model("odd", 4);
    int64_t T = 20, V = m->config.vocab_size;
    int64_t tok[20], other[20];
    random_tokens(tok, T, V, 6);
    random_tokens(other, T, V, 7);
    float *a = malloc((size_t)(T * V) * sizeof(float)), *b = malloc((size_t)(T * V) * sizeof(float));
    assert_true(a && b);
    void *fresh = open_session(m, 64, 2 * T, NULL), *used = open_session(m, 64, 2 * T, NULL);
    struct q3n_error err = {0};
    run_split(used, b, other, T, V, prefill_then_decode);
    ref_impl.reset(used);
    run_split(fresh, a, tok, T, V, prefill_then_decode);
    run_split(used, b, tok, T, V, prefill_then_decode);
    assert_int_equal(memcmp(a, b, (size_t)(T * V) * sizeof(float)), 0);
    assert_true(caches_rel_l2(&m->config, ref_session_cache(fresh), ref_session_cache(used)) == 0.0);
    assert_non_null(strstr(ref_impl.describe(used), "recurrent"));
    (void)err;
    ref_impl.close(fresh);
    ref_impl.close(used);
    free(a);
    free(b);
    q3n_model_close(m);
}

static void token_out_of_range_is_a_usage_error_naming_its_position(void **state)
{
    (void)state;
    struct q3n_model *m = make_model("tiny", 1);
    void *s = open_session(m, 64, 8, NULL);
    int64_t tok[4] = {1, 2, 3, m->config.vocab_size};
    float logits[4 * 128];
    struct q3n_error err = {0};
    assert_int_equal(ref_impl.forward(s, logits, tok, 4, NULL, &err), Q3N_ERR_USAGE);
    assert_non_null(strstr(err.msg, "position 3"));
    tok[3] = -1;
    assert_int_equal(ref_impl.forward(s, logits, tok, 4, NULL, &err), Q3N_ERR_USAGE);
    tok[3] = 4;
    assert_int_equal(ref_impl.forward(s, logits, tok, 4, NULL, &err), Q3N_OK);
    /* capacity: 4 more tokens fit, 5 do not */
    int64_t more[5] = {1, 1, 1, 1, 1};
    assert_int_equal(ref_impl.forward(s, logits, more, 5, NULL, &err), Q3N_ERR_USAGE);
    ref_impl.close(s);
    q3n_model_close(m);
}

static enum q3n_status stop_at_layer_1(void *user, const struct q3n_tap *tap, struct q3n_error *err)
{
    (void)user;
    if (strcmp(tap->name, "model.layers.1.in") == 0) return q3n_error_set(err, Q3N_ERR_IO, "sink: disk full");
    return Q3N_OK;
}

/* A sink error stops the forward with the sink's status; the half-updated session then refuses
 * to continue until reset, after which it equals a fresh one. */
static void a_failed_forward_requires_a_reset(void **state)
{
    (void)state;
    struct q3n_model *m = make_model("tiny", 1);
    int64_t tok[6] = {1, 2, 3, 4, 5, 6}, V = m->config.vocab_size;
    float a[6 * 128], b[6 * 128];
    struct q3n_tap_sink sink = {.fn = stop_at_layer_1};
    struct q3n_error err = {0};
    void *s = open_session(m, 64, 6, NULL), *fresh = open_session(m, 64, 6, NULL);
    assert_int_equal(ref_impl.forward(s, a, tok, 6, &sink, &err), Q3N_ERR_IO);
    assert_non_null(strstr(err.msg, "disk full"));
    assert_int_equal(ref_impl.forward(s, a, tok, 6, NULL, &err), Q3N_ERR_USAGE);
    assert_non_null(strstr(err.msg, "reset"));
    ref_impl.reset(s);
    assert_int_equal(ref_impl.forward(s, a, tok, 6, NULL, &err), Q3N_OK);
    assert_int_equal(ref_impl.forward(fresh, b, tok, 6, NULL, &err), Q3N_OK);
    assert_int_equal(memcmp(a, b, (size_t)(6 * V) * sizeof(float)), 0);
    ref_impl.close(s);
    ref_impl.close(fresh);
    q3n_model_close(m);
}

static void unknown_test_bug_is_refused(void **state)
{
    (void)state;
    struct q3n_model *m = make_model("tiny", 1);
    struct q3n_run_options opt;
    q3n_run_options_default(&opt);
    opt.test_bug = "no_such_bug";
    void *s = NULL;
    struct q3n_error err = {0};
    assert_int_equal(ref_impl.open(&s, m, &opt, &err), Q3N_ERR_USAGE);
    assert_null(s);
    assert_non_null(strstr(err.msg, "no_such_bug"));
    q3n_model_close(m);
}

/* ---- taps ----------------------------------------------------------------------------- */

struct seen {
    int n;
    char name[400][Q3N_TAP_NAME_MAX];
    int rank[400];
    int64_t dims[400][Q3N_MAX_RANK];
};

static enum q3n_status record_tap(void *user, const struct q3n_tap *tap, struct q3n_error *err)
{
    (void)err;
    struct seen *s = user;
    if (s->n >= 400) return Q3N_OK;
    snprintf(s->name[s->n], Q3N_TAP_NAME_MAX, "%s", tap->name);
    s->rank[s->n] = tap->rank;
    for (int i = 0; i < tap->rank; i++) s->dims[s->n][i] = tap->dims[i];
    s->n++;
    return Q3N_OK;
}

static void expect_tap(const struct seen *s, const char *name, int rank, int64_t d0, int64_t d1, int64_t d2)
{
    const int64_t want[3] = {d0, d1, d2};
    for (int i = 0; i < s->n; i++) {
        if (strcmp(s->name[i], name) != 0) continue;
        if (s->rank[i] != rank) fail_msg("tap %s: rank %d, want %d", name, s->rank[i], rank);
        for (int j = 0; j < rank; j++)
            if (s->dims[i][j] != want[j])
                fail_msg("tap %s: dim %d is %lld, want %lld", name, j, (long long)s->dims[i][j], (long long)want[j]);
        return;
    }
    fail_msg("tap %s was not emitted", name);
}

static void every_golden_format_tap_is_emitted_with_its_shape(void **state)
{
    (void)state;
    struct q3n_model *m = make_model("odd", 2);
    const struct q3n_config *c = &m->config;
    int64_t T = 6, D = c->hidden_size, NK = c->linear_num_key_heads, NV = c->linear_num_value_heads;
    int64_t DK = c->linear_key_head_dim, DV = c->linear_value_head_dim, Cc = q3n_config_conv_dim(c);
    int64_t NH = c->num_attention_heads, NKV = c->num_key_value_heads, HD = c->head_dim;
    int64_t E = c->num_experts, K = c->num_experts_per_tok;
    int64_t tok[6] = {1, 5, 9, 2, 7, 3};
    float *logits = malloc((size_t)(T * c->vocab_size) * sizeof(float));
    struct seen *seen = calloc(1, sizeof *seen);
    assert_true(logits && seen);
    struct q3n_tap_sink sink = {.fn = record_tap, .user = seen};
    void *s = open_session(m, 4, T, NULL);
    struct q3n_error err = {0};
    if (ref_impl.forward(s, logits, tok, T, &sink, &err) != Q3N_OK) fail_msg("%s", err.msg);
    expect_tap(seen, "model.embed_tokens.out", 2, T, D, 0);
    /* odd: layer 0 full + MoE, layer 1 linear + MoE, layer 2 linear + dense MLP, layer 3 full */
    const char *L0 = "model.layers.1";
    char n[160];
#define EXPECT(pfx, point, r, a, b, cc)                          \
    do {                                                         \
        snprintf(n, sizeof n, "%s.%s", pfx, point);              \
        expect_tap(seen, n, r, a, b, cc);                        \
    } while (0)
    EXPECT(L0, "in", 2, T, D, 0);
    EXPECT(L0, "input_layernorm.out", 2, T, D, 0);
    EXPECT(L0, "linear_attn.in_proj_qkvz.out", 2, T, q3n_config_qkvz_dim(c), 0);
    EXPECT(L0, "linear_attn.in_proj_ba.out", 2, T, 2 * NV, 0);
    EXPECT(L0, "linear_attn.q", 3, T, NK, DK);
    EXPECT(L0, "linear_attn.k", 3, T, NK, DK);
    EXPECT(L0, "linear_attn.v", 3, T, NV, DV);
    EXPECT(L0, "linear_attn.z", 3, T, NV, DV);
    EXPECT(L0, "linear_attn.b", 2, T, NV, 0);
    EXPECT(L0, "linear_attn.a", 2, T, NV, 0);
    EXPECT(L0, "linear_attn.conv1d.out", 2, T, Cc, 0);
    EXPECT(L0, "linear_attn.q_l2", 3, T, NK, DK);
    EXPECT(L0, "linear_attn.k_l2", 3, T, NK, DK);
    EXPECT(L0, "linear_attn.g", 2, T, NV, 0);
    EXPECT(L0, "linear_attn.beta", 2, T, NV, 0);
    EXPECT(L0, "linear_attn.core_out", 3, T, NV, DV);
    EXPECT(L0, "linear_attn.final_state", 3, NV, DK, DV);
    EXPECT(L0, "linear_attn.norm.out", 3, T, NV, DV);
    EXPECT(L0, "linear_attn.out", 2, T, D, 0);
    EXPECT(L0, "post_attention_layernorm.in", 2, T, D, 0);
    EXPECT(L0, "post_attention_layernorm.out", 2, T, D, 0);
    EXPECT(L0, "mlp.gate.logits", 2, T, E, 0);
    EXPECT(L0, "mlp.gate.probs", 2, T, E, 0);
    EXPECT(L0, "mlp.gate.topk_idx", 2, T, K, 0);
    EXPECT(L0, "mlp.gate.topk_weight", 2, T, K, 0);
    EXPECT(L0, "mlp.experts.out", 2, T, D, 0);
    EXPECT(L0, "mlp.shared_expert.out", 2, T, D, 0);
    EXPECT(L0, "mlp.shared_expert_gate.out", 2, T, 1, 0);
    EXPECT(L0, "mlp.out", 2, T, D, 0);
    EXPECT(L0, "out", 2, T, D, 0);
    const char *L1 = "model.layers.0";
    EXPECT(L1, "self_attn.q_proj.out", 2, T, NH * 2 * HD, 0);
    EXPECT(L1, "self_attn.k_proj.out", 2, T, NKV * HD, 0);
    EXPECT(L1, "self_attn.v_proj.out", 2, T, NKV * HD, 0);
    EXPECT(L1, "self_attn.gate", 3, T, NH, HD);
    EXPECT(L1, "self_attn.q_norm.out", 3, T, NH, HD);
    EXPECT(L1, "self_attn.k_norm.out", 3, T, NKV, HD);
    EXPECT(L1, "self_attn.q_rope", 3, T, NH, HD);
    EXPECT(L1, "self_attn.k_rope", 3, T, NKV, HD);
    EXPECT(L1, "self_attn.attn_out", 3, T, NH, HD);
    EXPECT(L1, "self_attn.gated_out", 2, T, NH * HD, 0);
    EXPECT(L1, "self_attn.out", 2, T, D, 0);
    EXPECT("model.layers.2", "mlp.out", 2, T, D, 0);
    expect_tap(seen, "model.norm.out", 2, T, D, 0);
    for (int i = 0; i < seen->n; i++)
        if (strstr(seen->name[i], "model.layers.2.mlp.gate")) fail_msg("dense layer 2 emitted %s", seen->name[i]);

    seen->n = 0;
    float *mtp = malloc((size_t)((T - 1) * c->vocab_size) * sizeof(float));
    assert_non_null(mtp);
    if (ref_impl.forward_mtp(s, mtp, tok, T, &sink, &err) != Q3N_OK) fail_msg("%s", err.msg);
    expect_tap(seen, "mtp.pre_fc_norm_embedding.out", 2, T - 1, D, 0);
    expect_tap(seen, "mtp.pre_fc_norm_hidden.out", 2, T - 1, D, 0);
    expect_tap(seen, "mtp.fc.out", 2, T - 1, D, 0);
    expect_tap(seen, "mtp.layers.0.self_attn.q_rope", 3, T - 1, NH, HD);
    expect_tap(seen, "mtp.layers.0.mlp.gate.topk_idx", 2, T - 1, K, 0);
    expect_tap(seen, "mtp.layers.0.out", 2, T - 1, D, 0);
    expect_tap(seen, "mtp.norm.out", 2, T - 1, D, 0);
#undef EXPECT
    ref_impl.close(s);
    free(mtp);
    free(seen);
    free(logits);
    q3n_model_close(m);
}

/* ---- forced routing --------------------------------------------------------------------- */

struct routing_capture {
    int64_t idx[4][64 * 8];
    float weight[4][64 * 8];
};

static enum q3n_status capture_routing(void *user, const struct q3n_tap *tap, struct q3n_error *err)
{
    (void)err;
    struct routing_capture *rc = user;
    int layer = -1;
    char point[64];
    if (sscanf(tap->name, "model.layers.%d.mlp.gate.%63s", &layer, point) != 2 || layer < 0 || layer >= 4)
        return Q3N_OK;
    int64_t n = q3n_tap_numel(tap);
    if (strcmp(point, "topk_idx") == 0)
        memcpy(rc->idx[layer], tap->data, (size_t)n * sizeof(int64_t));
    else if (strcmp(point, "topk_weight") == 0)
        for (int64_t i = 0; i < n; i++) rc->weight[layer][i] = (float)((const ref_real *)tap->data)[i];
    return Q3N_OK;
}

/* Forcing the router's own choice changes nothing; forcing another expert set is what runs. */
static void forced_routing_replaces_the_routers_choice(void **state)
{
    (void)state;
    struct q3n_model *m = make_model("tiny", 21);
    int64_t T = 9, V = m->config.vocab_size, K = m->config.num_experts_per_tok, E = m->config.num_experts;
    int64_t tok[9];
    random_tokens(tok, T, V, 22);
    float *a = malloc((size_t)(T * V) * sizeof(float)), *b = malloc((size_t)(T * V) * sizeof(float));
    struct routing_capture *rc = calloc(1, sizeof *rc), *rc2 = calloc(1, sizeof *rc2);
    assert_true(a && b && rc && rc2);
    struct q3n_tap_sink sink = {.fn = capture_routing, .user = rc};
    struct q3n_error err = {0};
    void *s = open_session(m, 64, T, NULL);
    assert_int_equal(ref_impl.forward(s, a, tok, T, &sink, &err), Q3N_OK);
    ref_impl.close(s);

    const int64_t *idx[4] = {rc->idx[0], rc->idx[1], rc->idx[2], rc->idx[3]};
    const float *w[4] = {rc->weight[0], rc->weight[1], rc->weight[2], rc->weight[3]};
    struct q3n_forced_routing fr = {.topk_idx = idx, .topk_weight = w, .tokens = T};
    struct q3n_run_options opt;
    q3n_run_options_default(&opt);
    opt.max_tokens = T;
    opt.forced_routing = &fr;
    assert_int_equal(ref_impl.open(&s, m, &opt, &err), Q3N_OK);
    assert_int_equal(ref_impl.forward(s, b, tok, T, NULL, &err), Q3N_OK);
    /* forced weights are float (q3n_forced_routing), so ref64 sees them rounded: 1e-6, not 1e-10 */
    assert_rel_l2_within_f32("logits, forced = natural routing", b, a, T * V, 1e-6);
    memcpy(a, b, (size_t)(T * V) * sizeof(float)); /* the forced baseline */
    ref_impl.close(s);

    /* layer 0, token 4: swap in an expert the router did not pick */
    int64_t other = 0;
    while (other == rc->idx[0][4 * K] || other == rc->idx[0][4 * K + 1]) other++;
    assert_true(other < E);
    rc->idx[0][4 * K + 1] = other;
    sink.user = rc2;
    assert_int_equal(ref_impl.open(&s, m, &opt, &err), Q3N_OK);
    assert_int_equal(ref_impl.forward(s, b, tok, T, &sink, &err), Q3N_OK);
    assert_int_equal(rc2->idx[0][4 * K + 1], other);
    assert_int_equal(memcmp(a, b, (size_t)(4 * V) * sizeof(float)), 0); /* earlier positions untouched */
    assert_true(testkit_rel_l2_f32(b + 4 * V, a + 4 * V, V) > 1e-4);
    ref_impl.close(s);
    free(a);
    free(b);
    free(rc);
    free(rc2);
    q3n_model_close(m);
}

/* ---- MTP ------------------------------------------------------------------------------ */

/* Row t of the MTP logits sees tokens[0..t+1] only: changing tokens[j] leaves rows < j-1 alone
 * and changes row j-1 (the position whose next token it is). */
static void mtp_rows_are_causal_in_the_next_token(void **state)
{
    (void)state;
    struct q3n_model *m = make_model("odd", 8);
    int64_t T = 8, V = m->config.vocab_size, j = 5;
    int64_t tok[8];
    random_tokens(tok, T, V, 12);
    float *logits = malloc((size_t)(T * V) * sizeof(float));
    float *a = malloc((size_t)((T - 1) * V) * sizeof(float)), *b = malloc((size_t)((T - 1) * V) * sizeof(float));
    assert_true(logits && a && b);
    struct q3n_error err = {0};
    void *s = open_session(m, 64, T, NULL);
    assert_int_equal(ref_impl.forward(s, logits, tok, T, NULL, &err), Q3N_OK);
    assert_int_equal(ref_impl.forward_mtp(s, a, tok, T, NULL, &err), Q3N_OK);
    ref_impl.reset(s);
    tok[j] = (tok[j] + 1) % V;
    assert_int_equal(ref_impl.forward(s, logits, tok, T, NULL, &err), Q3N_OK);
    assert_int_equal(ref_impl.forward_mtp(s, b, tok, T, NULL, &err), Q3N_OK);
    assert_int_equal(memcmp(a, b, (size_t)((j - 1) * V) * sizeof(float)), 0);
    assert_int_not_equal(memcmp(a + (j - 1) * V, b + (j - 1) * V, (size_t)V * sizeof(float)), 0);
    for (int64_t i = 0; i < (T - 1) * V; i++) assert_true(isfinite(a[i]));
    ref_impl.close(s);

    struct q3n_model *tiny = make_model("tiny", 1);
    s = open_session(tiny, 64, 4, NULL);
    assert_int_equal(ref_impl.forward(s, logits, tok, 2, NULL, &err), Q3N_OK);
    assert_int_equal(ref_impl.forward_mtp(s, a, tok, 2, NULL, &err), Q3N_ERR_UNSUPPORTED);
    ref_impl.close(s);
    q3n_model_close(tiny);
    free(logits);
    free(a);
    free(b);
    q3n_model_close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(prefill_then_decode_equals_full_forward_on_tiny),
        cmocka_unit_test(prefill_then_decode_equals_full_forward_on_odd),
        cmocka_unit_test(split_check_catches_a_chunk_that_drops_its_last_token),
        cmocka_unit_test(chunk_size_does_not_change_the_logits),
        cmocka_unit_test(reset_session_equals_a_fresh_one),
        cmocka_unit_test(token_out_of_range_is_a_usage_error_naming_its_position),
        cmocka_unit_test(a_failed_forward_requires_a_reset),
        cmocka_unit_test(unknown_test_bug_is_refused),
        cmocka_unit_test(every_golden_format_tap_is_emitted_with_its_shape),
        cmocka_unit_test(mtp_rows_are_causal_in_the_next_token),
        cmocka_unit_test(forced_routing_replaces_the_routers_choice),
    };
    return cmocka_run_group_tests_name("ref_model", tests, NULL, NULL);
}
