/* test_checkpoint.c — checkpoint folders: write synthetic models in every layout (F32/BF16,
 * single/sharded, per-expert/fused experts, tied/untied, with MTP), open them and compare
 * every weight; mismatch reports listing missing/mis-shaped/extra tensors at once; MTP
 * detection from mtp.* keys; atomic writes; the bad-input corpus (harness/testdata/bad,
 * cases.tsv) through q3n_model_open and through `q3n inspect` (exit 2, one line on stderr). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoint.h"
#include "config.h"
#include "safetensors.h"
#include "synth.h"
#include "weights.h"

static char q3n_binary[4096]; /* build/<dir>/q3n, from argv[0] = build/<dir>/tests/<name> */

struct fixture {
    char dir[64];
};

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    if (!fx) return -1;
    snprintf(fx->dir, sizeof fx->dir, "/tmp/q3n_test_ckpt_XXXXXX");
    if (!mkdtemp(fx->dir)) return -1;
    *state = fx;
    return 0;
}

static void remove_dir(const char *dir)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    remove_dir(fx->dir);
    free(fx);
    return 0;
}

static struct q3n_model *synth(const char *preset, uint64_t seed)
{
    struct q3n_config cfg;
    struct q3n_error err = {0};
    struct q3n_model *m = NULL;
    if (q3n_synth_config(&cfg, preset, &err) != Q3N_OK) fail_msg("%s", err.msg);
    if (q3n_synth_model_create(&m, &cfg, seed, &err) != Q3N_OK) fail_msg("%s", err.msg);
    return m;
}

/* ---- comparing two weight sets ------------------------------------------------------------------ */

struct cmp_ctx {
    int bf16;      /* the written copy went through bf16 */
    int64_t count; /* tensors compared */
};

static void cmp(struct cmp_ctx *c, const char *name, const float *want, const float *got, int64_t n)
{
    if (!want || !got) fail_msg("%s: missing (%p vs %p)", name, (const void *)want, (const void *)got);
    for (int64_t i = 0; i < n; i++) {
        float w = c->bf16 ? q3n_bf16_to_f32(q3n_f32_to_bf16(want[i])) : want[i];
        if (memcmp(&w, &got[i], sizeof w) != 0)
            fail_msg("%s[%lld]: wrote %.9g, read %.9g", name, (long long)i, (double)w, (double)got[i]);
    }
    c->count++;
}

static void cmp_mlp(struct cmp_ctx *c, const char *name, const struct q3n_mlp_weights *a,
                    const struct q3n_mlp_weights *b, int64_t W, int64_t D)
{
    cmp(c, name, a->gate_proj, b->gate_proj, W * D);
    cmp(c, name, a->up_proj, b->up_proj, W * D);
    cmp(c, name, a->down_proj, b->down_proj, D * W);
}

static void cmp_layer(struct cmp_ctx *c, const struct q3n_config *k, const struct q3n_layer_weights *a,
                      const struct q3n_layer_weights *b, int full, int sparse)
{
    int64_t D = k->hidden_size, NV = k->linear_num_value_heads, DV = k->linear_value_head_dim;
    int64_t NH = k->num_attention_heads, NKV = k->num_key_value_heads, HD = k->head_dim;
    int64_t E = k->num_experts, I = k->moe_intermediate_size, S = k->shared_expert_intermediate_size;
    cmp(c, "input_layernorm", a->input_layernorm, b->input_layernorm, D);
    cmp(c, "post_attention_layernorm", a->post_attention_layernorm, b->post_attention_layernorm, D);
    if (full) {
        cmp(c, "q_proj", a->self_attn.q_proj, b->self_attn.q_proj, NH * 2 * HD * D);
        cmp(c, "k_proj", a->self_attn.k_proj, b->self_attn.k_proj, NKV * HD * D);
        cmp(c, "v_proj", a->self_attn.v_proj, b->self_attn.v_proj, NKV * HD * D);
        cmp(c, "o_proj", a->self_attn.o_proj, b->self_attn.o_proj, D * NH * HD);
        cmp(c, "q_norm", a->self_attn.q_norm, b->self_attn.q_norm, HD);
        cmp(c, "k_norm", a->self_attn.k_norm, b->self_attn.k_norm, HD);
    } else {
        cmp(c, "in_proj_qkvz", a->linear_attn.in_proj_qkvz, b->linear_attn.in_proj_qkvz, q3n_config_qkvz_dim(k) * D);
        cmp(c, "in_proj_ba", a->linear_attn.in_proj_ba, b->linear_attn.in_proj_ba, 2 * NV * D);
        cmp(c, "conv1d", a->linear_attn.conv1d, b->linear_attn.conv1d,
            q3n_config_conv_dim(k) * k->linear_conv_kernel_dim);
        cmp(c, "dt_bias", a->linear_attn.dt_bias, b->linear_attn.dt_bias, NV);
        cmp(c, "A_log", a->linear_attn.A_log, b->linear_attn.A_log, NV);
        cmp(c, "norm", a->linear_attn.norm, b->linear_attn.norm, DV);
        cmp(c, "out_proj", a->linear_attn.out_proj, b->linear_attn.out_proj, D * NV * DV);
    }
    if (sparse) {
        cmp(c, "router", a->moe.router, b->moe.router, E * D);
        for (int64_t e = 0; e < E; e++) cmp_mlp(c, "expert", &a->moe.experts[e], &b->moe.experts[e], I, D);
        if (S > 0) {
            cmp_mlp(c, "shared_expert", &a->moe.shared_expert, &b->moe.shared_expert, S, D);
            cmp(c, "shared_expert_gate", a->moe.shared_expert_gate, b->moe.shared_expert_gate, D);
        }
    } else {
        cmp_mlp(c, "mlp", &a->mlp, &b->mlp, k->intermediate_size, D);
    }
}

static int64_t cmp_models(const struct q3n_model *a, const struct q3n_model *b, int bf16)
{
    struct cmp_ctx c = {.bf16 = bf16};
    const struct q3n_config *k = &a->config;
    int64_t V = k->vocab_size, D = k->hidden_size;
    assert_memory_equal(&a->config, &b->config, sizeof a->config);
    cmp(&c, "embed_tokens", a->weights.embed_tokens, b->weights.embed_tokens, V * D);
    cmp(&c, "lm_head", a->weights.lm_head, b->weights.lm_head, V * D);
    if (k->tie_word_embeddings) assert_ptr_equal(b->weights.lm_head, b->weights.embed_tokens);
    cmp(&c, "norm", a->weights.norm, b->weights.norm, D);
    for (int64_t i = 0; i < k->num_hidden_layers; i++)
        cmp_layer(&c, k, &a->weights.layers[i], &b->weights.layers[i], k->layer_type[i] == Q3N_LAYER_FULL_ATTENTION,
                  k->layer_is_sparse[i]);
    if (k->num_mtp_layers > 0) {
        const struct q3n_mtp_weights *x = &a->weights.mtp, *y = &b->weights.mtp;
        assert_int_equal(x->layer_is_sparse, y->layer_is_sparse);
        cmp(&c, "mtp.fc", x->fc, y->fc, 2 * D * D);
        cmp(&c, "mtp.pre_fc_norm_embedding", x->pre_fc_norm_embedding, y->pre_fc_norm_embedding, D);
        cmp(&c, "mtp.pre_fc_norm_hidden", x->pre_fc_norm_hidden, y->pre_fc_norm_hidden, D);
        cmp(&c, "mtp.norm", x->norm, y->norm, D);
        cmp_layer(&c, k, &x->layer, &y->layer, 1, x->layer_is_sparse);
    }
    return c.count;
}

/* ---- round trips ------------------------------------------------------------------------------------ */

static void round_trip(const char *preset, const char *dir, struct q3n_checkpoint_layout layout)
{
    struct q3n_model *m = synth(preset, 1234), *back = NULL;
    struct q3n_error err = {0};
    if (q3n_checkpoint_write(dir, m, &layout, &err) != Q3N_OK) fail_msg("%s", err.msg);
    if (q3n_model_open(&back, dir, &err) != Q3N_OK) fail_msg("%s", err.msg);
    assert_string_equal(back->dir, dir);
    int64_t n = cmp_models(m, back, layout.dtype == Q3N_ST_BF16);
    assert_true(n > 20);
    const struct q3n_safetensors *st = q3n_model_tensors(back);
    assert_non_null(st);
    assert_int_equal(q3n_safetensors_shard_count(st), layout.shards);
    assert_int_equal(q3n_safetensors_count(st) > 0, 1);
    const struct q3n_st_tensor *norm = q3n_safetensors_find(st, "model.norm.weight");
    assert_non_null(norm);
    if (layout.dtype == Q3N_ST_F32) /* aligned F32 weights are used in place, not copied */
        assert_ptr_equal(back->weights.norm, norm->data);
    assert_int_equal(q3n_safetensors_find(st, "model.layers.0.mlp.experts.gate_up_proj") != NULL,
                     layout.fused_experts && m->config.layer_is_sparse[0]);
    assert_int_equal(q3n_safetensors_find(st, "lm_head.weight") == NULL, m->config.tie_word_embeddings);
    /* the file's element count is the config's parameter count */
    int64_t total = 0;
    for (int64_t i = 0; i < q3n_safetensors_count(st); i++) total += q3n_safetensors_at(st, i)->numel;
    assert_int_equal(total, q3n_config_param_count(&back->config));
    q3n_model_close(back);
    q3n_model_close(m);
}

static void test_every_layout_round_trips_every_weight(void **state)
{
    struct fixture *fx = *state;
    const struct {
        const char *preset;
        struct q3n_checkpoint_layout layout;
    } cases[] = {
        {"tiny", {Q3N_ST_F32, 0, 1}},  {"tiny", {Q3N_ST_F32, 1, 3}},  {"tiny", {Q3N_ST_BF16, 1, 1}},
        {"odd", {Q3N_ST_F32, 0, 2}},   {"odd", {Q3N_ST_BF16, 1, 4}},  {"odd", {Q3N_ST_F32, 1, 1}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dir[128];
        snprintf(dir, sizeof dir, "%s/ck%zu", fx->dir, i);
        round_trip(cases[i].preset, dir, cases[i].layout);
    }
}

/* The odd preset is tied, has MTP and a dense layer: check those took effect. */
static void test_the_odd_preset_exercises_tied_mtp_and_dense_layers(void **state)
{
    (void)state;
    struct q3n_model *m = synth("odd", 1);
    assert_true(m->config.tie_word_embeddings);
    assert_int_equal(m->config.num_mtp_layers, 1);
    int dense = 0;
    for (int64_t i = 0; i < m->config.num_hidden_layers; i++) dense += !m->config.layer_is_sparse[i];
    assert_true(dense > 0);
    q3n_model_close(m);
    q3n_model_close(NULL);
}

static void write_config(const char *dir, const struct q3n_config *cfg)
{
    char *json = NULL, path[256];
    struct q3n_error err = {0};
    if (q3n_config_to_json(cfg, &json, &err) != Q3N_OK) fail_msg("%s", err.msg);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(json, f);
    fclose(f);
    free(json);
}

static void test_mtp_tensors_switch_the_mtp_head_on(void **state)
{
    struct fixture *fx = *state;
    char dir[128];
    snprintf(dir, sizeof dir, "%s/mtp", fx->dir);
    struct q3n_model *m = synth("odd", 99), *back = NULL;
    struct q3n_checkpoint_layout layout = {Q3N_ST_F32, 0, 1};
    struct q3n_error err = {0};
    assert_int_equal(q3n_checkpoint_write(dir, m, &layout, &err), Q3N_OK);
    struct q3n_config cfg = m->config;
    cfg.num_mtp_layers = 0; /* like the released config.json: no MTP field */
    write_config(dir, &cfg);
    if (q3n_model_open(&back, dir, &err) != Q3N_OK) fail_msg("%s", err.msg);
    assert_int_equal(back->config.num_mtp_layers, 1);
    cmp_models(m, back, 0);
    q3n_model_close(back);
    q3n_model_close(m);
}

static void test_mismatches_are_all_listed_in_one_line(void **state)
{
    struct fixture *fx = *state;
    char dir[128];
    snprintf(dir, sizeof dir, "%s/mis", fx->dir);
    struct q3n_model *m = synth("tiny", 5), *back = NULL;
    struct q3n_checkpoint_layout layout = {Q3N_ST_F32, 0, 1};
    struct q3n_error err = {0};
    assert_int_equal(q3n_checkpoint_write(dir, m, &layout, &err), Q3N_OK);
    struct q3n_config cfg = m->config;
    cfg.num_hidden_layers += 1; /* the file lacks a whole layer: missing */
    cfg.layer_type[cfg.num_hidden_layers - 1] = Q3N_LAYER_LINEAR_ATTENTION;
    cfg.layer_is_sparse[cfg.num_hidden_layers - 1] = 1;
    cfg.moe_intermediate_size += 2; /* every expert: mis-shaped */
    cfg.tie_word_embeddings = 1;    /* lm_head.weight: extra */
    write_config(dir, &cfg);
    assert_int_equal(q3n_model_open(&back, dir, &err), Q3N_ERR_SHAPE);
    assert_null(back);
    const char *want[] = {dir, "missing: model.layers.4.input_layernorm.weight", "mis-shaped: ",
                          "model.layers.0.mlp.experts.0.gate_proj.weight [", "more)", "1 extra: lm_head.weight"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(err.msg, want[i])) fail_msg("message lacks '%s': %s", want[i], err.msg);
    assert_null(strchr(err.msg, '\n'));
    assert_true(strlen(err.msg) < Q3N_ERROR_MSG_MAX - 1); /* not cut by the message buffer */
    q3n_model_close(m);
}

static void test_a_failed_write_leaves_nothing_behind(void **state)
{
    struct fixture *fx = *state;
    char dir[128];
    snprintf(dir, sizeof dir, "%s/fail", fx->dir);
    struct q3n_model *m = synth("tiny", 5);
    struct q3n_checkpoint_layout layout = {Q3N_ST_F32, 0, 2};
    struct q3n_error err = {0};
    const float *saved = m->weights.layers[3].post_attention_layernorm;
    m->weights.layers[3].post_attention_layernorm = NULL; /* fails in the second shard */
    assert_int_equal(q3n_checkpoint_write(dir, m, &layout, &err), Q3N_ERR_USAGE);
    assert_non_null(strstr(err.msg, "model.layers.3.post_attention_layernorm.weight"));
    m->weights.layers[3].post_attention_layernorm = saved;
    DIR *d = opendir(fx->dir);
    assert_non_null(d);
    int entries = 0;
    for (struct dirent *e = readdir(d); e; e = readdir(d))
        if (e->d_name[0] != '.') entries++;
    closedir(d);
    assert_int_equal(entries, 0);
    /* and an existing non-empty folder is never overwritten */
    assert_int_equal(q3n_checkpoint_write(dir, m, &layout, &err), Q3N_OK);
    assert_int_equal(q3n_checkpoint_write(dir, m, &layout, &err), Q3N_ERR_IO);
    assert_non_null(strstr(err.msg, dir));
    layout.shards = 0;
    assert_int_equal(q3n_checkpoint_write(dir, m, &layout, &err), Q3N_ERR_USAGE);
    q3n_model_close(m);
}

/* Rewrites DIR/model.safetensors with model.norm.weight stored as F64 (its float values, and
 * 0.1 at index 1 when `inexact`), every other tensor copied as it is; `misalign` pads the
 * header so the data area starts 2 bytes off a 4-byte boundary. */
static void rewrite_norm_as_f64(const char *dir, int inexact, int misalign)
{
    char path[256], tmp[256];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    snprintf(tmp, sizeof tmp, "%s/new.safetensors", dir);
    struct q3n_safetensors *st = NULL;
    struct q3n_error err = {0};
    assert_int_equal(q3n_safetensors_open(&st, path, &err), Q3N_OK);
    int64_t n = q3n_safetensors_count(st);
    /* header: every tensor in file order, norm as F64 */
    char *hdr = malloc(1 << 20);
    assert_non_null(hdr);
    size_t len = (size_t)snprintf(hdr, 1 << 20, "{");
    uint64_t off = 0;
    for (int64_t i = 0; i < n; i++) {
        const struct q3n_st_tensor *t = q3n_safetensors_at(st, i);
        int is_norm = strcmp(t->name, "model.norm.weight") == 0;
        uint64_t bytes = is_norm ? (uint64_t)t->numel * 8 : t->nbytes;
        len += (size_t)snprintf(hdr + len, (1 << 20) - len, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "",
                                t->name, is_norm ? "F64" : q3n_st_dtype_name(t->dtype));
        for (int d = 0; d < t->rank; d++)
            len += (size_t)snprintf(hdr + len, (1 << 20) - len, "%s%lld", d ? "," : "", (long long)t->dims[d]);
        len += (size_t)snprintf(hdr + len, (1 << 20) - len, "],\"data_offsets\":[%llu,%llu]}",
                                (unsigned long long)off, (unsigned long long)(off + bytes));
        off += bytes;
    }
    len += (size_t)snprintf(hdr + len, (1 << 20) - len, "}");
    while (len % 8) hdr[len++] = ' ';
    if (misalign) {
        hdr[len++] = ' ';
        hdr[len++] = ' ';
    }
    FILE *f = fopen(tmp, "wb");
    assert_non_null(f);
    uint64_t hl = len;
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(hl >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(hdr, 1, len, f);
    for (int64_t i = 0; i < n; i++) {
        const struct q3n_st_tensor *t = q3n_safetensors_at(st, i);
        if (strcmp(t->name, "model.norm.weight") != 0) {
            fwrite(t->data, 1, t->nbytes, f);
            continue;
        }
        for (int64_t k = 0; k < t->numel; k++) { /* the norm may be F64 already from an earlier rewrite */
            double d;
            if (t->dtype == Q3N_ST_F64)
                memcpy(&d, (const char *)t->data + 8 * k, sizeof d);
            else
                d = (double)((const float *)t->data)[k];
            if (inexact && k == 1) d = 0.1;
            fwrite(&d, sizeof d, 1, f);
        }
    }
    fclose(f);
    free(hdr);
    q3n_safetensors_close(st);
    assert_int_equal(rename(tmp, path), 0);
}

static void test_f64_and_misaligned_weights_load_only_when_exact(void **state)
{
    struct fixture *fx = *state;
    char dir[128];
    snprintf(dir, sizeof dir, "%s/f64", fx->dir);
    struct q3n_model *m = synth("tiny", 8), *back = NULL;
    struct q3n_checkpoint_layout layout = {Q3N_ST_F32, 0, 1};
    struct q3n_error err = {0};
    assert_int_equal(q3n_checkpoint_write(dir, m, &layout, &err), Q3N_OK);
    rewrite_norm_as_f64(dir, 0, 0);
    if (q3n_model_open(&back, dir, &err) != Q3N_OK) fail_msg("%s", err.msg);
    cmp_models(m, back, 0); /* exact float values survive the F64 detour */
    const struct q3n_st_tensor *emb = q3n_safetensors_find(q3n_model_tensors(back), "model.embed_tokens.weight");
    assert_ptr_equal(back->weights.embed_tokens, emb->data); /* aligned F32: used in place */
    q3n_model_close(back);
    rewrite_norm_as_f64(dir, 0, 1); /* every F32 tensor now 2 bytes off alignment: copied */
    if (q3n_model_open(&back, dir, &err) != Q3N_OK) fail_msg("%s", err.msg);
    cmp_models(m, back, 0);
    emb = q3n_safetensors_find(q3n_model_tensors(back), "model.embed_tokens.weight");
    assert_true((uintptr_t)emb->data % 4 == 2);
    assert_true(back->weights.embed_tokens != emb->data);
    q3n_model_close(back);
    rewrite_norm_as_f64(dir, 1, 0);
    for (int check_only = 0; check_only < 2; check_only++) {
        enum q3n_status st = check_only ? q3n_checkpoint_check(&back, dir, &err) : q3n_model_open(&back, dir, &err);
        assert_int_equal(st, Q3N_ERR_UNSUPPORTED);
        assert_null(back);
        assert_non_null(strstr(err.msg, "model.norm.weight: F64 value 0.10000000000000001 at index 1"));
    }
    q3n_model_close(m);
}

static void test_checking_a_checkpoint_converts_nothing(void **state)
{
    struct fixture *fx = *state;
    char dir[128];
    snprintf(dir, sizeof dir, "%s/chk", fx->dir);
    struct q3n_model *m = synth("odd", 8), *back = NULL;
    struct q3n_checkpoint_layout layout = {Q3N_ST_BF16, 1, 2};
    struct q3n_error err = {0};
    assert_int_equal(q3n_checkpoint_write(dir, m, &layout, &err), Q3N_OK);
    if (q3n_checkpoint_check(&back, dir, &err) != Q3N_OK) fail_msg("%s", err.msg);
    assert_memory_equal(&back->config, &m->config, sizeof m->config);
    assert_null(back->weights.layers);
    assert_null(back->weights.embed_tokens);
    assert_null(back->weights.mtp.fc);
    assert_non_null(q3n_model_tensors(back));
    q3n_model_close(back);
    q3n_model_close(m);
}

/* harness/testdata/hf_tiny_bf16 was saved by transformers 5.17 itself (make_hf.py): the hub's
 * key names, 12 BF16 shards, tied, a dense layer. Weights must equal torch's own float32
 * conversion (hf_tiny_bf16_expect.safetensors; the expert row taken from transformers' fused
 * in-memory gate_up_proj, so the gate-rows-first split is checked too). */
static void test_a_checkpoint_saved_by_transformers_opens_with_torchs_values(void **state)
{
    (void)state;
    struct q3n_model *m = NULL;
    struct q3n_error err = {0};
    if (q3n_model_open(&m, "harness/testdata/hf_tiny_bf16", &err) != Q3N_OK) fail_msg("%s", err.msg);
    const struct q3n_safetensors *st = q3n_model_tensors(m);
    assert_int_equal(q3n_safetensors_shard_count(st), 12);
    int64_t total = 0;
    for (int64_t i = 0; i < q3n_safetensors_count(st); i++) total += q3n_safetensors_at(st, i)->numel;
    assert_int_equal(total, q3n_config_param_count(&m->config));
    assert_ptr_equal(m->weights.lm_head, m->weights.embed_tokens);
    struct q3n_safetensors *want = NULL;
    assert_int_equal(q3n_safetensors_open(&want, "harness/testdata/hf_tiny_bf16_expect.safetensors", &err), Q3N_OK);
    const struct q3n_weights *w = &m->weights;
    const struct {
        const char *name;
        const float *got;
    } pairs[] = {
        {"model.embed_tokens.weight", w->embed_tokens},
        {"model.layers.0.mlp.experts.5.up_proj.weight", w->layers[0].moe.experts[5].up_proj},
        {"model.layers.0.linear_attn.conv1d.weight", w->layers[0].linear_attn.conv1d},
        {"model.layers.2.mlp.down_proj.weight", w->layers[2].mlp.down_proj},
        {"model.layers.4.self_attn.q_proj.weight", w->layers[4].self_attn.q_proj},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        const struct q3n_st_tensor *t = q3n_safetensors_find(want, pairs[i].name);
        if (!t || t->dtype != Q3N_ST_F32) fail_msg("%s not in the expect file", pairs[i].name);
        if (memcmp(pairs[i].got, t->data, t->nbytes) != 0) fail_msg("%s differs from torch's float32", pairs[i].name);
    }
    q3n_safetensors_close(want);
    q3n_model_close(m);
}

/* ---- the bad-input corpus ---------------------------------------------------------------------------- */

#define BAD_DIR "harness/testdata/bad"

struct bad_case {
    char name[64], status[32], fragment[256];
};

static int load_cases(struct bad_case *cases, int cap)
{
    FILE *f = fopen(BAD_DIR "/cases.tsv", "r");
    if (!f) fail_msg("cannot open " BAD_DIR "/cases.tsv (tests run from the repository root)");
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, f) && n < cap) {
        if (line[0] == '#') continue;
        line[strcspn(line, "\n")] = '\0';
        char *a = strtok(line, "\t"), *b = strtok(NULL, "\t"), *c = strtok(NULL, "\t");
        if (!a || !b || !c) fail_msg("bad line in cases.tsv");
        snprintf(cases[n].name, sizeof cases[n].name, "%s", a);
        snprintf(cases[n].status, sizeof cases[n].status, "%s", b);
        snprintf(cases[n].fragment, sizeof cases[n].fragment, "%s", c);
        n++;
    }
    fclose(f);
    return n;
}

static void test_every_bad_checkpoint_is_refused_with_its_status_and_a_named_cause(void **state)
{
    (void)state;
    struct bad_case cases[64];
    int n = load_cases(cases, 64);
    assert_true(n >= 30);
    for (int i = 0; i < n; i++) {
        char dir[128];
        snprintf(dir, sizeof dir, BAD_DIR "/%.63s", cases[i].name);
        struct q3n_model *m = NULL;
        struct q3n_error err = {0};
        enum q3n_status st = q3n_model_open(&m, dir, &err);
        if (strcmp(q3n_status_name(st), cases[i].status) != 0 || !strstr(err.msg, cases[i].fragment) ||
            !strstr(err.msg, dir) || strchr(err.msg, '\n') || m)
            fail_msg("%s: got %s '%s'; want %s naming '%s' and the folder", cases[i].name, q3n_status_name(st),
                     err.msg, cases[i].status, cases[i].fragment);
    }
}

/* Runs `q3n inspect --model dir`; returns the exit code and the number of stderr lines. */
static int run_inspect(const char *dir, int *stderr_lines, char *first_line, size_t cap, const char *out_path)
{
    char errf[] = "/tmp/q3n_test_inspect_XXXXXX";
    int fd = mkstemp(errf);
    assert_true(fd >= 0);
    close(fd);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' inspect --model '%s' >'%s' 2>'%s'", q3n_binary, dir, out_path ? out_path : "/dev/null",
             errf);
    int rc = system(cmd);
    FILE *f = fopen(errf, "r");
    assert_non_null(f);
    char line[1024];
    *stderr_lines = 0;
    first_line[0] = '\0';
    while (fgets(line, sizeof line, f)) {
        if (*stderr_lines == 0) snprintf(first_line, cap, "%s", line);
        (*stderr_lines)++;
    }
    fclose(f);
    unlink(errf);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void test_inspect_exits_2_with_one_line_on_every_bad_checkpoint(void **state)
{
    (void)state;
    if (access(q3n_binary, X_OK) != 0) fail_msg("%s is not built (make builds it before the tests)", q3n_binary);
    struct bad_case cases[64];
    int n = load_cases(cases, 64);
    for (int i = 0; i < n; i++) {
        char dir[128], line[1024];
        int lines;
        snprintf(dir, sizeof dir, BAD_DIR "/%.63s", cases[i].name);
        int rc = run_inspect(dir, &lines, line, sizeof line, NULL);
        if (rc != 2 || lines != 1 || !strstr(line, cases[i].fragment))
            fail_msg("inspect %s: exit %d, %d stderr lines, first '%s'", cases[i].name, rc, lines, line);
    }
}

static void test_inspect_prints_the_summary_and_inventory_of_good_checkpoints(void **state)
{
    struct fixture *fx = *state;
    if (access(q3n_binary, X_OK) != 0) fail_msg("%s is not built (make builds it before the tests)", q3n_binary);
    const struct {
        const char *preset;
        struct q3n_checkpoint_layout layout;
        const char *expect[4];
    } cases[] = {
        {"tiny", {Q3N_ST_F32, 0, 1}, {"model.layers.0.mlp.experts.7.down_proj.weight", "F32", "untied", NULL}},
        {"tiny", {Q3N_ST_BF16, 1, 3}, {"model.layers.3.mlp.experts.gate_up_proj", "model-00003-of-00003", "BF16", NULL}},
        {"odd", {Q3N_ST_F32, 1, 2}, {"mtp.fc.weight", "tied", "MTP layers: 1", NULL}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dir[128], out[160], line[1024];
        snprintf(dir, sizeof dir, "%s/good%zu", fx->dir, i);
        snprintf(out, sizeof out, "%s/inspect%zu.txt", fx->dir, i);
        struct q3n_model *m = synth(cases[i].preset, 3);
        struct q3n_error err = {0};
        assert_int_equal(q3n_checkpoint_write(dir, m, &cases[i].layout, &err), Q3N_OK);
        q3n_model_close(m);
        int lines;
        int rc = run_inspect(dir, &lines, line, sizeof line, out);
        if (rc != 0 || lines != 0) fail_msg("inspect %s: exit %d, stderr '%s'", dir, rc, line);
        FILE *f = fopen(out, "r");
        assert_non_null(f);
        static char text[1 << 20];
        size_t len = fread(text, 1, sizeof text - 1, f);
        text[len] = '\0';
        fclose(f);
        for (int k = 0; cases[i].expect[k]; k++)
            if (!strstr(text, cases[i].expect[k])) fail_msg("inspect %s lacks '%s'", dir, cases[i].expect[k]);
    }
}

int main(int argc, char **argv)
{
    (void)argc;
    char self[4096];
    snprintf(self, sizeof self, "%s", argv[0]);
    snprintf(q3n_binary, sizeof q3n_binary, "%s/../q3n", dirname(self));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_every_layout_round_trips_every_weight, setup, teardown),
        cmocka_unit_test(test_the_odd_preset_exercises_tied_mtp_and_dense_layers),
        cmocka_unit_test_setup_teardown(test_mtp_tensors_switch_the_mtp_head_on, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mismatches_are_all_listed_in_one_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_failed_write_leaves_nothing_behind, setup, teardown),
        cmocka_unit_test_setup_teardown(test_f64_and_misaligned_weights_load_only_when_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checking_a_checkpoint_converts_nothing, setup, teardown),
        cmocka_unit_test(test_a_checkpoint_saved_by_transformers_opens_with_torchs_values),
        cmocka_unit_test(test_every_bad_checkpoint_is_refused_with_its_status_and_a_named_cause),
        cmocka_unit_test(test_inspect_exits_2_with_one_line_on_every_bad_checkpoint),
        cmocka_unit_test_setup_teardown(test_inspect_prints_the_summary_and_inventory_of_good_checkpoints, setup,
                                        teardown),
    };
    return cmocka_run_group_tests_name("harness_checkpoint", tests, NULL, NULL);
}
