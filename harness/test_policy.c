/* test_policy.c — policy parsing, rule precedence, errors that name the line or tensor, and
 * the committed default policy covering every tap of docs/golden-format.md (harness/policy.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "policy.h"
#include "testkit.h"

static struct q3n_policy *parse_ok(const char *text)
{
    struct q3n_policy *p = NULL;
    struct q3n_error err = {0};
    enum q3n_status st = q3n_policy_parse(&p, text, strlen(text), "test.policy", &err);
    if (st != Q3N_OK) fail_msg("parse failed: %s", err.msg);
    return p;
}

static const char *base_text = "# comment line\n"
                               "\n"
                               "*  float32  rtol=1e-3 atol=1e-4 small=1e-2 rel_l2=1e-4 oracle_k=4 oracle_floor=1e-6 # f32 base\n"
                               "*  bfloat16 rtol=5e-2 atol=5e-2 small=1e-1 rel_l2=5e-2\n"
                               "model.layers.*.linear_attn.final_state * rel_l2=3e-4 # states accumulate\n"
                               "*.mlp.gate.topk_idx * kind=topk margin=1e-4 near_tie=report\n"
                               "*.mlp.gate.topk_idx bfloat16 margin=1e-2\n"
                               "model.norm.out float32 kind=skip\n";

static void later_rules_override_only_the_keys_they_name(void **state)
{
    (void)state;
    struct q3n_policy *p = parse_ok(base_text);
    struct q3n_tolerance t;
    struct q3n_error err;
    assert_int_equal(q3n_policy_lookup(p, "model.layers.2.linear_attn.final_state", "float32", &t, &err), Q3N_OK);
    assert_true(t.rel_l2 == 3e-4);
    assert_true(t.rtol == 1e-3 && t.atol == 1e-4 && t.small == 1e-2);
    assert_true(t.oracle_k == 4 && t.oracle_floor == 1e-6);
    assert_int_equal(t.line, 5);
    assert_string_equal(t.reason, "states accumulate");
    assert_int_equal(q3n_policy_lookup(p, "model.layers.2.linear_attn.out", "float32", &t, &err), Q3N_OK);
    assert_true(t.rel_l2 == 1e-4);
    assert_string_equal(t.reason, "f32 base");
    q3n_policy_free(p);
}

static void the_dtype_column_selects_rules(void **state)
{
    (void)state;
    struct q3n_policy *p = parse_ok(base_text);
    struct q3n_tolerance t;
    struct q3n_error err;
    assert_int_equal(q3n_policy_lookup(p, "model.layers.0.mlp.gate.topk_idx", "float32", &t, &err), Q3N_OK);
    assert_int_equal(t.kind, Q3N_KIND_TOPK);
    assert_true(t.margin == 1e-4);
    assert_int_equal(t.near_tie_report, 1);
    assert_int_equal(q3n_policy_lookup(p, "model.layers.0.mlp.gate.topk_idx", "bfloat16", &t, &err), Q3N_OK);
    assert_true(t.margin == 1e-2);
    assert_true(t.rel_l2 == 5e-2);
    assert_int_equal(q3n_policy_lookup(p, "model.norm.out", "float32", &t, &err), Q3N_OK);
    assert_int_equal(t.kind, Q3N_KIND_SKIP);
    assert_int_equal(q3n_policy_lookup(p, "model.norm.out", "bfloat16", &t, &err), Q3N_OK);
    assert_int_equal(t.kind, Q3N_KIND_FLOAT);
    q3n_policy_free(p);
}

static void a_tensor_not_fully_covered_is_an_error_naming_it(void **state)
{
    (void)state;
    const char *text = "* float32 rtol=1e-3 atol=1e-4 rel_l2=1e-4\n";
    struct q3n_policy *p = parse_ok(text);
    struct q3n_tolerance t;
    struct q3n_error err = {0};
    assert_int_equal(q3n_policy_lookup(p, "model.layers.1.out", "float32", &t, &err), Q3N_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "model.layers.1.out"));
    assert_non_null(strstr(err.msg, "small"));
    assert_int_equal(q3n_policy_lookup(p, "model.layers.1.out", "bfloat16", &t, &err), Q3N_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "no rule matches"));
    q3n_policy_free(p);
}

static void parse_errors_name_the_line(void **state)
{
    (void)state;
    static const struct {
        const char *text, *expect;
    } cases[] = {
        {"* float32 rtol=1e-3\n* float32 rtl=1\n", "test.policy:2: unknown key 'rtl'"},
        {"* float32 rtol=abc\n", "test.policy:1: rtol must be a finite number >= 0"},
        {"* float32 rtol=-1\n", "test.policy:1: rtol must be"},
        {"* float32 rtol=nan\n", "test.policy:1: rtol must be"},
        {"* float33 rtol=1\n", "test.policy:1: dtype must be"},
        {"* float32\n", "test.policy:1: expected '<glob> <dtype> key=value ...'"},
        {"* float32 kind=vector\n", "kind must be float, topk, exact or skip"},
        {"* float32 near_tie=maybe\n", "near_tie must be report or fail"},
        {"* float32 rtol\n", "expected key=value"},
        {"# only comments\n\n", "no rules"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct q3n_policy *p = (struct q3n_policy *)1;
        struct q3n_error err = {0};
        enum q3n_status st = q3n_policy_parse(&p, cases[i].text, strlen(cases[i].text), "test.policy", &err);
        if (st == Q3N_OK || !strstr(err.msg, cases[i].expect))
            fail_msg("case %zu: status %d message '%s', expected '%s'", i, (int)st, err.msg, cases[i].expect);
        assert_null(p);
    }
}

static void a_missing_policy_file_is_an_io_error_naming_it(void **state)
{
    (void)state;
    struct q3n_policy *p = NULL;
    struct q3n_error err = {0};
    assert_int_equal(q3n_policy_load(&p, "build/no/such.policy", &err), Q3N_ERR_IO);
    assert_non_null(strstr(err.msg, "build/no/such.policy"));
    assert_null(p);
    q3n_policy_free(NULL);
}

/* The fuzzer's finding (harness/testdata/bad/policy_message_control_char_key.policy: an unknown
 * key that is an ESC byte): refused with one printable line naming the file, line and key. */
static void a_control_character_in_a_key_stays_out_of_the_message(void **state)
{
    (void)state;
    const char *path = "harness/testdata/bad/policy_message_control_char_key.policy";
    struct q3n_policy *p = NULL;
    struct q3n_error err = {0};
    assert_int_equal(q3n_policy_load(&p, path, &err), Q3N_ERR_FORMAT);
    assert_null(p);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "unknown key '?'"));
    for (const unsigned char *c = (const unsigned char *)err.msg; *c; c++)
        if (*c < 0x20 || *c == 0x7f) fail_msg("control character 0x%02x in: %s", *c, err.msg);
}

/* Every tap of docs/golden-format.md (a 4-layer model: 3 linear + 1 full attention, MoE and
 * a dense layer) plus logits, at every dtype the policy claims to cover. */
static void the_default_policy_covers_every_tap_at_every_dtype(void **state)
{
    (void)state;
    static const char *points_linear[] = {"in_proj_qkvz.out", "in_proj_ba.out", "q", "k", "v", "z", "b", "a",
                                          "conv1d.out", "q_l2", "k_l2", "g", "beta", "core_out", "final_state",
                                          "norm.out", "out"};
    static const char *points_attn[] = {"q_proj.out", "k_proj.out", "v_proj.out", "gate", "q_norm.out",
                                        "k_norm.out", "q_rope", "k_rope", "attn_out", "gated_out", "out"};
    static const char *points_moe[] = {"gate.logits", "gate.probs", "gate.topk_idx", "gate.topk_weight",
                                       "experts.out", "shared_expert.out", "shared_expert_gate.out", "out"};
    static const char *misc[] = {"model.embed_tokens.out", "model.norm.out", "mtp.pre_fc_norm_embedding.out",
                                 "mtp.pre_fc_norm_hidden.out", "mtp.fc.out", "mtp.norm.out", "logits",
                                 "mtp_logits", "decode/logits", "mtp.layers.0.self_attn.q_rope",
                                 "mtp.layers.0.mlp.gate.topk_idx"};
    static const char *dtypes[] = {"float32", "bfloat16", "float64"};
    struct q3n_policy *p = NULL;
    struct q3n_error err = {0};
    if (q3n_policy_load(&p, "harness/policy/default.policy", &err) != Q3N_OK) fail_msg("%s", err.msg);
    char name[200];
    int checked = 0;
    for (size_t d = 0; d < sizeof dtypes / sizeof dtypes[0]; d++) {
        struct q3n_tolerance t;
#define CHECK(...)                                                                           \
    do {                                                                                     \
        snprintf(name, sizeof name, __VA_ARGS__);                                            \
        if (q3n_policy_lookup(p, name, dtypes[d], &t, &err) != Q3N_OK) fail_msg("%s", err.msg); \
        if (strstr(name, "topk_idx")) assert_int_equal(t.kind, Q3N_KIND_TOPK);               \
        else if (strcmp(name, "model.embed_tokens.out") == 0 && strcmp(dtypes[d], "bfloat16")) \
            assert_int_equal(t.kind, Q3N_KIND_EXACT);                                         \
        else assert_true(t.kind == Q3N_KIND_FLOAT && t.rel_l2 > 0 && t.rtol > 0);            \
        checked++;                                                                           \
    } while (0)
        for (int l = 0; l < 4; l++) {
            CHECK("model.layers.%d.in", l);
            CHECK("model.layers.%d.input_layernorm.out", l);
            CHECK("model.layers.%d.post_attention_layernorm.in", l);
            CHECK("model.layers.%d.post_attention_layernorm.out", l);
            CHECK("model.layers.%d.out", l);
            for (size_t i = 0; i < sizeof points_linear / sizeof points_linear[0]; i++)
                CHECK("model.layers.%d.linear_attn.%s", l, points_linear[i]);
            for (size_t i = 0; i < sizeof points_attn / sizeof points_attn[0]; i++)
                CHECK("model.layers.%d.self_attn.%s", l, points_attn[i]);
            for (size_t i = 0; i < sizeof points_moe / sizeof points_moe[0]; i++)
                CHECK("model.layers.%d.mlp.%s", l, points_moe[i]);
        }
        for (size_t i = 0; i < sizeof misc / sizeof misc[0]; i++) CHECK("%s", misc[i]);
#undef CHECK
    }
    assert_true(checked > 400);
    q3n_policy_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(later_rules_override_only_the_keys_they_name),
        cmocka_unit_test(the_dtype_column_selects_rules),
        cmocka_unit_test(a_tensor_not_fully_covered_is_an_error_naming_it),
        cmocka_unit_test(parse_errors_name_the_line),
        cmocka_unit_test(a_missing_policy_file_is_an_io_error_naming_it),
        cmocka_unit_test(a_control_character_in_a_key_stays_out_of_the_message),
        cmocka_unit_test(the_default_policy_covers_every_tap_at_every_dtype),
    };
    return cmocka_run_group_tests_name("harness_policy", tests, NULL, NULL);
}
