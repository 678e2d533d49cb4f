/* test_config.c — config.json parsing (transformers 4.57 and 5.x layouts), validation of
 * every field (first bad one named), parameter counts against transformers' own model
 * (harness/testdata/config/param_counts.txt, written by make_configs.py), and the
 * config.json writer round trip. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "config.h"

#define CFG_DIR "harness/testdata/config/"

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s (tests run from the repository root)", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Looks up transformers' counts for a fixture in param_counts.txt. */
static void expected_counts(const char *file, long long *total, long long *active)
{
    char *text = slurp(CFG_DIR "param_counts.txt");
    int found = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char name[128];
        if (line[0] == '#') continue;
        if (sscanf(line, "%127s %lld %lld", name, total, active) == 3 && strcmp(name, file) == 0) found = 1;
        if (found) break;
    }
    free(text);
    if (!found) fail_msg("%s not in param_counts.txt", file);
}

static void test_the_released_457_config_derives_layer_types_and_top_level_rope(void **state)
{
    (void)state;
    struct q3n_config cfg;
    struct q3n_error err = {0};
    assert_int_equal(q3n_config_load(&cfg, CFG_DIR "qwen3next_80b_457.json", &err), Q3N_OK);
    assert_int_equal(cfg.num_hidden_layers, 48);
    assert_int_equal(cfg.hidden_size, 2048);
    assert_int_equal(cfg.head_dim, 256);
    assert_int_equal(cfg.rotary_dim, 64);
    assert_true(cfg.rope_theta == 1e7);
    assert_true(cfg.partial_rotary_factor == 0.25);
    assert_int_equal(cfg.num_mtp_layers, 0);
    assert_false(cfg.tie_word_embeddings);
    assert_true(cfg.norm_topk_prob);
    for (int i = 0; i < 48; i++) {
        assert_int_equal(cfg.layer_type[i], (i % 4 == 3) ? Q3N_LAYER_FULL_ATTENTION : Q3N_LAYER_LINEAR_ATTENTION);
        assert_int_equal(cfg.layer_is_sparse[i], 1);
    }
    assert_int_equal(q3n_config_conv_dim(&cfg), 2 * 16 * 128 + 32 * 128);
    long long total, active;
    expected_counts("qwen3next_80b_457.json", &total, &active);
    assert_int_equal(q3n_config_param_count(&cfg), total);
    assert_int_equal(q3n_config_active_param_count(&cfg), active);

    struct q3n_config cfg5;
    assert_int_equal(q3n_config_load(&cfg5, CFG_DIR "qwen3next_80b_5x.json", &err), Q3N_OK);
    assert_memory_equal(&cfg, &cfg5, sizeof cfg); /* the same model in both layouts */
}

static void test_a_5x_config_takes_rope_parameters_over_top_level_fields(void **state)
{
    (void)state;
    struct q3n_config cfg;
    struct q3n_error err = {0};
    assert_int_equal(q3n_config_load(&cfg, CFG_DIR "tiny_5x.json", &err), Q3N_OK);
    /* the file has top-level partial_rotary_factor 0.25 and rope_parameters 0.5 */
    assert_true(cfg.partial_rotary_factor == 0.5);
    assert_true(cfg.rope_theta == 50000.0);
    assert_int_equal(cfg.rotary_dim, 8);
    assert_true(cfg.tie_word_embeddings);
    const uint8_t types[5] = {0, 1, 0, 0, 1}, sparse[5] = {1, 1, 0, 1, 1};
    assert_memory_equal(cfg.layer_type, types, 5);
    assert_memory_equal(cfg.layer_is_sparse, sparse, 5);
    long long total, active;
    expected_counts("tiny_5x.json", &total, &active);
    assert_int_equal(q3n_config_param_count(&cfg), total);
    assert_int_equal(q3n_config_active_param_count(&cfg), active);
}

static void test_defaults_follow_transformers_when_fields_are_absent(void **state)
{
    (void)state;
    const char *json = "{\"vocab_size\": 10, \"hidden_size\": 8, \"num_hidden_layers\": 9, "
                       "\"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"linear_num_key_heads\": 1, "
                       "\"linear_num_value_heads\": 2, \"linear_key_head_dim\": 4, \"linear_value_head_dim\": 4, "
                       "\"num_experts\": 0, \"num_mtp_layers_is_not_a_field\": 3}";
    struct q3n_config cfg;
    struct q3n_error err = {0};
    assert_int_equal(q3n_config_parse(&cfg, json, strlen(json), "inline.json", &err), Q3N_OK);
    assert_int_equal(cfg.head_dim, 256);
    assert_int_equal(cfg.rotary_dim, 64);
    assert_true(cfg.rope_theta == 10000.0);
    assert_int_equal(cfg.linear_conv_kernel_dim, 4);
    assert_int_equal(cfg.num_mtp_layers, 0);
    for (int i = 0; i < 9; i++) {
        assert_int_equal(cfg.layer_type[i], i % 4 == 3);
        assert_int_equal(cfg.layer_is_sparse[i], 0); /* no experts: every layer dense */
    }
    const char *mtp = "{\"vocab_size\": 10, \"hidden_size\": 8, \"num_hidden_layers\": 2, \"num_attention_heads\": 2,"
                      " \"num_key_value_heads\": 1, \"linear_num_key_heads\": 1, \"linear_num_value_heads\": 2,"
                      " \"linear_key_head_dim\": 4, \"linear_value_head_dim\": 4, \"num_experts\": 4,"
                      " \"num_experts_per_tok\": 2, \"decoder_sparse_step\": 2, \"mtp_num_hidden_layers\": 1,"
                      " \"full_attention_interval\": 2}";
    assert_int_equal(q3n_config_parse(&cfg, mtp, strlen(mtp), "inline.json", &err), Q3N_OK);
    assert_int_equal(cfg.num_mtp_layers, 1);
    assert_int_equal(cfg.layer_is_sparse[0], 0);
    assert_int_equal(cfg.layer_is_sparse[1], 1);
    assert_int_equal(cfg.layer_type[1], Q3N_LAYER_FULL_ATTENTION);
    assert_int_equal(q3n_config_mtp_layer_is_sparse(&cfg), 0);
}

/* One malformed config: a path into tiny_5x.json, the JSON value to put there (NULL:
 * delete the field), the status, and the text the message must contain. */
struct bad_case {
    const char *field;  /* "a" or "a.b" */
    const char *value;  /* JSON text */
    enum q3n_status status;
    const char *names;
};

static const struct bad_case bad_cases[] = {
    {"hidden_size", NULL, Q3N_ERR_CONFIG, "hidden_size is missing"},
    {"hidden_size", "-3", Q3N_ERR_CONFIG, "hidden_size (-3)"},
    {"hidden_size", "1e12", Q3N_ERR_CONFIG, "hidden_size"},
    {"hidden_size", "32.5", Q3N_ERR_CONFIG, "hidden_size (32.5) is not an integer"},
    {"hidden_size", "\"32\"", Q3N_ERR_CONFIG, "hidden_size is not a number"},
    {"vocab_size", "0", Q3N_ERR_CONFIG, "vocab_size (0)"},
    {"num_hidden_layers", "300", Q3N_ERR_CONFIG, "num_hidden_layers (300)"},
    {"num_key_value_heads", "3", Q3N_ERR_CONFIG, "num_attention_heads (4) is not a multiple of num_key_value_heads"},
    {"linear_num_value_heads", "5", Q3N_ERR_CONFIG, "linear_num_value_heads (5) is not a multiple"},
    {"num_experts_per_tok", "7", Q3N_ERR_CONFIG, "num_experts_per_tok (7)"},
    {"num_experts_per_tok", "0", Q3N_ERR_CONFIG, "num_experts_per_tok (0)"},
    {"moe_intermediate_size", "0", Q3N_ERR_CONFIG, "moe_intermediate_size (0)"},
    {"layer_types", "[\"linear_attention\"]", Q3N_ERR_CONFIG, "layer_types has 1 entries"},
    {"layer_types", "[\"linear_attention\", \"sliding\", \"full_attention\", \"full_attention\", \"full_attention\"]",
     Q3N_ERR_CONFIG, "layer_types[1] ('sliding')"},
    {"layer_types", "7", Q3N_ERR_CONFIG, "layer_types is not a list"},
    {"mlp_only_layers", "[9]", Q3N_ERR_CONFIG, "mlp_only_layers[0]"},
    {"decoder_sparse_step", "0", Q3N_ERR_CONFIG, "decoder_sparse_step (0)"},
    {"rms_norm_eps", "0", Q3N_ERR_CONFIG, "rms_norm_eps (0)"},
    {"rms_norm_eps", "1e400", Q3N_ERR_CONFIG, "rms_norm_eps (inf)"},
    {"vocab_size", "1e400", Q3N_ERR_CONFIG, "vocab_size (inf) is not an integer"},
    {"rope_parameters.partial_rotary_factor", "0", Q3N_ERR_CONFIG, "partial_rotary_factor (0)"},
    {"rope_parameters.partial_rotary_factor", "1.5", Q3N_ERR_CONFIG, "partial_rotary_factor (1.5)"},
    {"rope_parameters.rope_theta", "-1", Q3N_ERR_CONFIG, "rope_theta (-1)"},
    {"rope_parameters.rope_type", "\"yarn\"", Q3N_ERR_UNSUPPORTED, "rope_parameters.rope_type 'yarn'"},
    {"rope_parameters", "[1]", Q3N_ERR_CONFIG, "rope_parameters is not an object"},
    {"head_dim", "15", Q3N_ERR_CONFIG, "head_dim (15) * partial_rotary_factor"},
    {"model_type", "\"llama\"", Q3N_ERR_UNSUPPORTED, "model_type 'llama'"},
    {"hidden_act", "\"gelu\"", Q3N_ERR_UNSUPPORTED, "hidden_act 'gelu'"},
    {"tie_word_embeddings", "\"yes\"", Q3N_ERR_CONFIG, "tie_word_embeddings is not a boolean"},
    {"num_nextn_predict_layers", "2", Q3N_ERR_UNSUPPORTED, "num_nextn_predict_layers (2)"},
    {"num_nextn_predict_layers", "-1", Q3N_ERR_CONFIG, "num_nextn_predict_layers (-1) is negative"},
    {"linear_conv_kernel_dim", "0", Q3N_ERR_CONFIG, "linear_conv_kernel_dim (0)"},
};

/* Applies one case to the tiny config text and returns the parse status. */
static enum q3n_status parse_mutated(const struct bad_case *bc, struct q3n_error *err)
{
    char *text = slurp(CFG_DIR "tiny_5x.json");
    cJSON *root = cJSON_Parse(text);
    assert_non_null(root);
    free(text);
    char key[64];
    snprintf(key, sizeof key, "%s", bc->field);
    cJSON *obj = root;
    char *dot = strchr(key, '.');
    if (dot) {
        *dot = '\0';
        obj = cJSON_GetObjectItemCaseSensitive(root, key);
        assert_non_null(obj);
        memmove(key, dot + 1, strlen(dot + 1) + 1);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
    if (bc->value) cJSON_AddItemToObject(obj, key, cJSON_CreateRaw(bc->value));
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    struct q3n_config cfg;
    enum q3n_status st = q3n_config_parse(&cfg, json, strlen(json), "bad/config.json", err);
    free(json);
    return st;
}

static void test_every_bad_field_is_refused_by_name(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const struct bad_case *bc = &bad_cases[i];
        struct q3n_error err = {0};
        enum q3n_status st = parse_mutated(bc, &err);
        if (st != bc->status || !strstr(err.msg, bc->names) || !strstr(err.msg, "bad/config.json"))
            fail_msg("%s=%s: got status %s '%s', want %s naming '%s'", bc->field, bc->value ? bc->value : "(deleted)",
                     q3n_status_name(st), err.msg, q3n_status_name(bc->status), bc->names);
    }
}

static void test_absurd_sizes_and_broken_json_are_refused(void **state)
{
    (void)state;
    struct q3n_config cfg;
    struct q3n_error err = {0};
    const char *huge = "{\"vocab_size\": 16777216, \"hidden_size\": 65536, \"num_hidden_layers\": 256,"
                       " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"linear_num_key_heads\": 1,"
                       " \"linear_num_value_heads\": 2, \"linear_key_head_dim\": 4, \"linear_value_head_dim\": 4,"
                       " \"num_experts\": 65536, \"num_experts_per_tok\": 2, \"moe_intermediate_size\": 1048576}";
    assert_int_equal(q3n_config_parse(&cfg, huge, strlen(huge), "huge.json", &err), Q3N_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "parameters"));
    assert_non_null(strstr(err.msg, "huge.json"));
    const char *arr = "[1, 2]";
    assert_int_equal(q3n_config_parse(&cfg, arr, strlen(arr), "arr.json", &err), Q3N_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "arr.json: the top level is not a JSON object"));
    const char *trunc = "{\"vocab_size\": 10, \"hidden";
    assert_int_equal(q3n_config_parse(&cfg, trunc, strlen(trunc), "trunc.json", &err), Q3N_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "trunc.json: not valid JSON"));
    assert_int_equal(q3n_config_load(&cfg, CFG_DIR "no_such.json", &err), Q3N_ERR_IO);
    assert_non_null(strstr(err.msg, "no_such.json"));
}

/* Found by the config fuzzer: a raw newline inside a JSON string must not reach the message. */
static void test_quoted_input_text_never_breaks_the_message_line(void **state)
{
    (void)state;
    struct q3n_config cfg;
    struct q3n_error err = {0};
    assert_int_equal(q3n_config_load(&cfg, "harness/testdata/bad/config_message_newline_from_input.json", &err),
                     Q3N_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "layer_types[1]"));
    const char *bin = "{\"model_type\": \"ll\\u0001ama\\u00e9\"}";
    assert_int_equal(q3n_config_parse(&cfg, bin, strlen(bin), "bin.json", &err), Q3N_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "model_type 'll?ama"));
    struct q3n_error e2 = {0};
    assert_int_equal(q3n_config_load(&cfg, "harness/testdata/bad/config_message_newline_from_input.json", &e2),
                     Q3N_ERR_CONFIG);
    for (const struct q3n_error *e = &err; e; e = e == &err ? &e2 : NULL)
        for (const unsigned char *p = (const unsigned char *)e->msg; *p; p++)
            if (*p < 0x20 || *p >= 0x7f) fail_msg("unprintable byte 0x%02x in '%s'", *p, e->msg);
}

static void test_validate_catches_a_hand_built_config_out_of_range(void **state)
{
    (void)state;
    struct q3n_config cfg;
    struct q3n_error err = {0};
    assert_int_equal(q3n_config_load(&cfg, CFG_DIR "tiny_5x.json", &err), Q3N_OK);
    cfg.rotary_dim = 6;
    assert_int_equal(q3n_config_validate(&cfg, "fuzz", &err), Q3N_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "fuzz: rotary_dim (6)"));
    assert_int_equal(q3n_config_load(&cfg, CFG_DIR "tiny_5x.json", &err), Q3N_OK);
    cfg.layer_type[3] = 7;
    assert_int_equal(q3n_config_validate(&cfg, "fuzz", &err), Q3N_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "layer_types[3]"));
    assert_int_equal(q3n_config_load(&cfg, CFG_DIR "tiny_5x.json", &err), Q3N_OK);
    cfg.num_experts = 0;
    assert_int_equal(q3n_config_validate(&cfg, "fuzz", &err), Q3N_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "num_experts is 0"));
}

static void test_the_writer_round_trips_through_the_parser(void **state)
{
    (void)state;
    struct q3n_config cfg, back;
    struct q3n_error err = {0};
    char *json = NULL;
    const char *files[] = {CFG_DIR "tiny_5x.json", CFG_DIR "qwen3next_80b_457.json"};
    for (int f = 0; f < 2; f++) {
        assert_int_equal(q3n_config_load(&cfg, files[f], &err), Q3N_OK);
        cfg.num_mtp_layers = f; /* also exercise num_nextn_predict_layers */
        cfg.attention_bias = f;
        assert_int_equal(q3n_config_to_json(&cfg, &json, &err), Q3N_OK);
        assert_non_null(strstr(json, "\"model_type\":\t\"qwen3_next\""));
        assert_non_null(strstr(json, "Qwen3NextForCausalLM"));
        assert_int_equal(q3n_config_parse(&back, json, strlen(json), "written.json", &err), Q3N_OK);
        free(json);
        assert_memory_equal(&cfg, &back, sizeof cfg);
    }
    /* a sparse pattern the step cannot express: the writer falls back to step 1 + a list */
    assert_int_equal(q3n_config_load(&cfg, CFG_DIR "tiny_5x.json", &err), Q3N_OK);
    cfg.decoder_sparse_step = 2;
    assert_int_equal(q3n_config_to_json(&cfg, &json, &err), Q3N_OK);
    assert_int_equal(q3n_config_parse(&back, json, strlen(json), "written.json", &err), Q3N_OK);
    free(json);
    assert_memory_equal(back.layer_is_sparse, cfg.layer_is_sparse, Q3N_MAX_LAYERS);
    assert_int_equal(back.decoder_sparse_step, 1);
    /* a float field that is integral still reads back as a float in Python */
    cfg.rope_theta = 1e6;
    assert_int_equal(q3n_config_to_json(&cfg, &json, &err), Q3N_OK);
    assert_non_null(strstr(json, "\"rope_theta\":\t1000000.0"));
    free(json);
    cfg.vocab_size = 0;
    assert_int_equal(q3n_config_to_json(&cfg, &json, &err), Q3N_ERR_CONFIG);
    assert_null(json);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_the_released_457_config_derives_layer_types_and_top_level_rope),
        cmocka_unit_test(test_a_5x_config_takes_rope_parameters_over_top_level_fields),
        cmocka_unit_test(test_defaults_follow_transformers_when_fields_are_absent),
        cmocka_unit_test(test_every_bad_field_is_refused_by_name),
        cmocka_unit_test(test_absurd_sizes_and_broken_json_are_refused),
        cmocka_unit_test(test_quoted_input_text_never_breaks_the_message_line),
        cmocka_unit_test(test_validate_catches_a_hand_built_config_out_of_range),
        cmocka_unit_test(test_the_writer_round_trips_through_the_parser),
    };
    return cmocka_run_group_tests_name("harness_config", tests, NULL, NULL);
}
