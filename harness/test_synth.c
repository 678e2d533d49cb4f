/* test_synth.c — synthetic presets and models: presets validate, weights are deterministic per
 * seed and drawn in distribution, the MTP head and tied embeddings appear where the preset says,
 * and the generated config.json parses back into the same config. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "synth.h"

static struct q3n_model *make(const char *preset, uint64_t seed)
{
    struct q3n_config cfg;
    struct q3n_error err = {0};
    struct q3n_model *m = NULL;
    if (q3n_synth_config(&cfg, preset, &err) != Q3N_OK) fail_msg("%s", err.msg);
    if (q3n_synth_model_create(&m, &cfg, seed, &err) != Q3N_OK) fail_msg("%s", err.msg);
    return m;
}

static void every_preset_validates_and_unknown_ones_are_refused(void **state)
{
    (void)state;
    for (const char *const *p = q3n_synth_preset_names(); *p; p++) {
        struct q3n_config cfg;
        struct q3n_error err = {0};
        if (q3n_synth_config(&cfg, *p, &err) != Q3N_OK) fail_msg("preset %s: %s", *p, err.msg);
        assert_int_equal(cfg.rotary_dim, (int64_t)((double)cfg.head_dim * cfg.partial_rotary_factor));
    }
    struct q3n_config cfg;
    struct q3n_error err = {0};
    assert_int_equal(q3n_synth_config(&cfg, "huge", &err), Q3N_ERR_USAGE);
    assert_non_null(strstr(err.msg, "huge"));
    assert_int_equal(q3n_synth_config(&cfg, "real-4l", &err), Q3N_OK);
    assert_int_equal(cfg.num_experts, 512);
    assert_int_equal(cfg.num_experts_per_tok, 10);
    assert_int_equal(cfg.hidden_size, 2048);
}

static void same_seed_gives_the_same_weights_and_another_seed_does_not(void **state)
{
    (void)state;
    struct q3n_model *a = make("tiny", 5), *b = make("tiny", 5), *c = make("tiny", 6);
    int64_t n = a->config.vocab_size * a->config.hidden_size;
    assert_int_equal(memcmp(a->weights.embed_tokens, b->weights.embed_tokens, (size_t)n * sizeof(float)), 0);
    const float *ea = a->weights.layers[0].moe.experts[7].down_proj, *eb = b->weights.layers[0].moe.experts[7].down_proj;
    assert_int_equal(memcmp(ea, eb, (size_t)(a->config.hidden_size * a->config.moe_intermediate_size) * sizeof(float)),
                     0);
    assert_int_not_equal(memcmp(a->weights.embed_tokens, c->weights.embed_tokens, (size_t)n * sizeof(float)), 0);
    q3n_model_close(a);
    q3n_model_close(b);
    q3n_model_close(c);
}

static void weights_are_drawn_in_distribution(void **state)
{
    (void)state;
    struct q3n_model *m = make("odd", 1);
    const struct q3n_config *c = &m->config;
    int64_t D = c->hidden_size;
    for (int64_t i = 0; i < c->num_hidden_layers; i++) {
        const struct q3n_layer_weights *l = &m->weights.layers[i];
        for (int64_t d = 0; d < D; d++) {
            float w = l->input_layernorm[d];
            assert_true(fabsf(w) >= 0.1f && fabsf(w) <= 0.5f); /* zero-centred, away from 0 */
        }
        if (c->layer_type[i] == Q3N_LAYER_LINEAR_ATTENTION) {
            for (int64_t d = 0; d < c->linear_value_head_dim; d++) {
                float dev = fabsf(l->linear_attn.norm[d] - 1.0f);
                assert_true(dev >= 0.04f && dev <= 0.31f); /* near 1, never 1 */
            }
            for (int64_t h = 0; h < c->linear_num_value_heads; h++) {
                float A = expf(l->linear_attn.A_log[h]);
                assert_true(A >= 0.999f && A <= 16.01f);
            }
        }
    }
    /* projections: std ~ 1/sqrt(fan_in) */
    const float *W = m->weights.layers[0].self_attn.q_proj; /* layer 0 is full attention */
    int64_t n = c->num_attention_heads * 2 * c->head_dim * D;
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)W[i] * W[i];
    double std = sqrt(ss / (double)n) * sqrt((double)D);
    assert_true(std > 0.9 && std < 1.1);
    /* odd: tied, MTP present, layer 2 dense */
    assert_ptr_equal(m->weights.lm_head, m->weights.embed_tokens);
    assert_non_null(m->weights.mtp.fc);
    assert_non_null(m->weights.mtp.layer.self_attn.q_proj);
    assert_int_equal(c->layer_is_sparse[2], 0);
    assert_non_null(m->weights.layers[2].mlp.gate_proj);
    q3n_model_close(m);
}

static void config_json_parses_back_into_the_same_config(void **state)
{
    (void)state;
    const char *presets[] = {"tiny", "odd", "real-4l"};
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        struct q3n_config a, b;
        struct q3n_error err = {0};
        char buf[8192];
        assert_int_equal(q3n_synth_config(&a, presets[i], &err), Q3N_OK);
        assert_int_equal(q3n_synth_config_json(buf, sizeof buf, &a, &err), Q3N_OK);
        if (q3n_config_parse(&b, buf, strlen(buf), presets[i], &err) != Q3N_OK) fail_msg("%s: %s", presets[i], err.msg);
        assert_int_equal(a.hidden_size, b.hidden_size);
        assert_int_equal(a.num_hidden_layers, b.num_hidden_layers);
        assert_int_equal(a.linear_num_value_heads, b.linear_num_value_heads);
        assert_int_equal(a.linear_conv_kernel_dim, b.linear_conv_kernel_dim);
        assert_int_equal(a.rotary_dim, b.rotary_dim);
        assert_int_equal(a.tie_word_embeddings, b.tie_word_embeddings);
        assert_int_equal(a.norm_topk_prob, b.norm_topk_prob);
        assert_int_equal(a.num_mtp_layers, b.num_mtp_layers);
        assert_true(a.rope_theta == b.rope_theta);
        assert_int_equal(memcmp(a.layer_type, b.layer_type, sizeof a.layer_type), 0);
        assert_int_equal(memcmp(a.layer_is_sparse, b.layer_is_sparse, sizeof a.layer_is_sparse), 0);
    }
    struct q3n_config a;
    struct q3n_error err = {0};
    char small[64];
    assert_int_equal(q3n_synth_config(&a, "tiny", &err), Q3N_OK);
    assert_int_equal(q3n_synth_config_json(small, sizeof small, &a, &err), Q3N_ERR_NOMEM);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_preset_validates_and_unknown_ones_are_refused),
        cmocka_unit_test(same_seed_gives_the_same_weights_and_another_seed_does_not),
        cmocka_unit_test(weights_are_drawn_in_distribution),
        cmocka_unit_test(config_json_parses_back_into_the_same_config),
    };
    return cmocka_run_group_tests_name("harness_synth", tests, NULL, NULL);
}
