/* checkpoint.c — open a Hugging Face Qwen3-Next checkpoint folder into a q3n_model, and
 * write one; see checkpoint.h and weights.h.
 *
 * Both directions walk the same naming plan (plan_model): one entry per tensor with its
 * key, expected shape and the weights-struct slot it fills (or, for fused expert tensors,
 * the expert table it feeds). Opening matches the plan against the safetensors set and
 * reports every missing, extra and mis-shaped tensor in one message before touching any
 * data; then F32 tensors that are 4-byte aligned are used in place and the rest are
 * converted once into a single buffer owned by the model. */
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "config.h"

#define NAME_MAX_LEN 192
#define LIST_BUDGET 150 /* characters per category in the mismatch report */

/* ---- the naming plan ------------------------------------------------------------------------------ */

enum entry_kind { ENTRY_PLAIN = 0, ENTRY_FUSED_GATE_UP, ENTRY_FUSED_DOWN };

struct entry {
    char name[NAME_MAX_LEN];
    int rank;
    int64_t dims[3];
    enum entry_kind kind;
    const float **slot;              /* ENTRY_PLAIN */
    struct q3n_mlp_weights *experts; /* ENTRY_FUSED_*: E entries to point into the tensor */
    const struct q3n_st_tensor *t;   /* opening: the file's tensor */
};

struct plan {
    struct entry *e;
    int64_t n, cap;
    int nomem;
    const struct q3n_config *cfg;
};

static struct entry *plan_add(struct plan *p, const float **slot, int rank, int64_t d0, int64_t d1, int64_t d2,
                              const char *fmt, ...) __attribute__((format(printf, 7, 8)));

static struct entry *plan_add(struct plan *p, const float **slot, int rank, int64_t d0, int64_t d1, int64_t d2,
                              const char *fmt, ...)
{
    if (p->nomem) return NULL;
    if (p->n == p->cap) {
        int64_t cap = p->cap ? p->cap * 2 : 512;
        struct entry *grown = realloc(p->e, (size_t)cap * sizeof *grown);
        if (!grown) {
            p->nomem = 1;
            return NULL;
        }
        p->e = grown;
        p->cap = cap;
    }
    struct entry *e = &p->e[p->n++];
    memset(e, 0, sizeof *e);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->name, sizeof e->name, fmt, ap);
    va_end(ap);
    e->rank = rank;
    e->dims[0] = d0;
    e->dims[1] = d1;
    e->dims[2] = d2;
    e->slot = slot;
    return e;
}

static void plan_mlp(struct plan *p, struct q3n_mlp_weights *m, int64_t W, const char *prefix)
{
    int64_t D = p->cfg->hidden_size;
    plan_add(p, &m->gate_proj, 2, W, D, 0, "%s.gate_proj.weight", prefix);
    plan_add(p, &m->up_proj, 2, W, D, 0, "%s.up_proj.weight", prefix);
    plan_add(p, &m->down_proj, 2, D, W, 0, "%s.down_proj.weight", prefix);
}

/* One decoder layer under `prefix` ("model.layers.3", "mtp.layers.0"). */
static void plan_layer(struct plan *p, struct q3n_layer_weights *lw, const char *prefix, int full, int sparse,
                       int fused)
{
    const struct q3n_config *c = p->cfg;
    int64_t D = c->hidden_size, NV = c->linear_num_value_heads, DV = c->linear_value_head_dim;
    int64_t NH = c->num_attention_heads, NKV = c->num_key_value_heads, HD = c->head_dim;
    int64_t E = c->num_experts, I = c->moe_intermediate_size, S = c->shared_expert_intermediate_size;
    char sub[NAME_MAX_LEN];
    plan_add(p, &lw->input_layernorm, 1, D, 0, 0, "%s.input_layernorm.weight", prefix);
    if (full) {
        struct q3n_attn_weights *a = &lw->self_attn;
        plan_add(p, &a->q_proj, 2, NH * 2 * HD, D, 0, "%s.self_attn.q_proj.weight", prefix);
        plan_add(p, &a->k_proj, 2, NKV * HD, D, 0, "%s.self_attn.k_proj.weight", prefix);
        plan_add(p, &a->v_proj, 2, NKV * HD, D, 0, "%s.self_attn.v_proj.weight", prefix);
        plan_add(p, &a->o_proj, 2, D, NH * HD, 0, "%s.self_attn.o_proj.weight", prefix);
        if (c->attention_bias) {
            plan_add(p, &a->q_bias, 1, NH * 2 * HD, 0, 0, "%s.self_attn.q_proj.bias", prefix);
            plan_add(p, &a->k_bias, 1, NKV * HD, 0, 0, "%s.self_attn.k_proj.bias", prefix);
            plan_add(p, &a->v_bias, 1, NKV * HD, 0, 0, "%s.self_attn.v_proj.bias", prefix);
            plan_add(p, &a->o_bias, 1, D, 0, 0, "%s.self_attn.o_proj.bias", prefix);
        }
        plan_add(p, &a->q_norm, 1, HD, 0, 0, "%s.self_attn.q_norm.weight", prefix);
        plan_add(p, &a->k_norm, 1, HD, 0, 0, "%s.self_attn.k_norm.weight", prefix);
    } else {
        struct q3n_linear_attn_weights *la = &lw->linear_attn;
        plan_add(p, &la->in_proj_qkvz, 2, q3n_config_qkvz_dim(c), D, 0, "%s.linear_attn.in_proj_qkvz.weight",
                 prefix);
        plan_add(p, &la->in_proj_ba, 2, 2 * NV, D, 0, "%s.linear_attn.in_proj_ba.weight", prefix);
        plan_add(p, &la->conv1d, 3, q3n_config_conv_dim(c), 1, c->linear_conv_kernel_dim,
                 "%s.linear_attn.conv1d.weight", prefix);
        plan_add(p, &la->dt_bias, 1, NV, 0, 0, "%s.linear_attn.dt_bias", prefix);
        plan_add(p, &la->A_log, 1, NV, 0, 0, "%s.linear_attn.A_log", prefix);
        plan_add(p, &la->norm, 1, DV, 0, 0, "%s.linear_attn.norm.weight", prefix);
        plan_add(p, &la->out_proj, 2, D, NV * DV, 0, "%s.linear_attn.out_proj.weight", prefix);
    }
    plan_add(p, &lw->post_attention_layernorm, 1, D, 0, 0, "%s.post_attention_layernorm.weight", prefix);
    if (sparse) {
        struct q3n_moe_weights *m = &lw->moe;
        plan_add(p, &m->router, 2, E, D, 0, "%s.mlp.gate.weight", prefix);
        if (fused) {
            struct entry *gu = plan_add(p, NULL, 3, E, 2 * I, D, "%s.mlp.experts.gate_up_proj", prefix);
            struct entry *dn = plan_add(p, NULL, 3, E, D, I, "%s.mlp.experts.down_proj", prefix);
            if (gu && dn) {
                gu->kind = ENTRY_FUSED_GATE_UP;
                gu->experts = m->experts;
                dn->kind = ENTRY_FUSED_DOWN;
                dn->experts = m->experts;
            }
        } else {
            for (int64_t e = 0; e < E; e++) {
                snprintf(sub, sizeof sub, "%s.mlp.experts.%lld", prefix, (long long)e);
                plan_mlp(p, &m->experts[e], I, sub);
            }
        }
        if (S > 0) {
            snprintf(sub, sizeof sub, "%s.mlp.shared_expert", prefix);
            plan_mlp(p, &m->shared_expert, S, sub);
            plan_add(p, &m->shared_expert_gate, 2, 1, D, 0, "%s.mlp.shared_expert_gate.weight", prefix);
        }
    } else {
        snprintf(sub, sizeof sub, "%s.mlp", prefix);
        plan_mlp(p, &lw->mlp, c->intermediate_size, sub);
    }
}

/* The whole model. fused[i] (i < L) says layer i stores fused experts; fused[L] the MTP layer. */
static void plan_model(struct plan *p, struct q3n_weights *w, const uint8_t *fused, int mtp_sparse)
{
    const struct q3n_config *c = p->cfg;
    int64_t V = c->vocab_size, D = c->hidden_size, L = c->num_hidden_layers;
    char prefix[64];
    plan_add(p, &w->embed_tokens, 2, V, D, 0, "model.embed_tokens.weight");
    for (int64_t i = 0; i < L; i++) {
        snprintf(prefix, sizeof prefix, "model.layers.%lld", (long long)i);
        plan_layer(p, &w->layers[i], prefix, c->layer_type[i] == Q3N_LAYER_FULL_ATTENTION, c->layer_is_sparse[i],
                   fused[i]);
    }
    plan_add(p, &w->norm, 1, D, 0, 0, "model.norm.weight");
    if (!c->tie_word_embeddings) plan_add(p, &w->lm_head, 2, V, D, 0, "lm_head.weight");
    if (c->num_mtp_layers > 0) {
        struct q3n_mtp_weights *m = &w->mtp;
        plan_add(p, &m->fc, 2, D, 2 * D, 0, "mtp.fc.weight");
        plan_add(p, &m->pre_fc_norm_embedding, 1, D, 0, 0, "mtp.pre_fc_norm_embedding.weight");
        plan_add(p, &m->pre_fc_norm_hidden, 1, D, 0, 0, "mtp.pre_fc_norm_hidden.weight");
        plan_layer(p, &m->layer, "mtp.layers.0", 1, mtp_sparse, fused[L]);
        plan_add(p, &m->norm, 1, D, 0, 0, "mtp.norm.weight");
    }
}

static int64_t entry_numel(const struct entry *e)
{
    int64_t n = 1;
    for (int i = 0; i < e->rank; i++) n *= e->dims[i];
    return n;
}

/* ---- the opened model ------------------------------------------------------------------------------- */

struct owner {
    struct q3n_safetensors *st;
    float *converted;
    struct q3n_mlp_weights *expert_tables;
};

static void checkpoint_release(struct q3n_model *model)
{
    struct owner *o = model->owner;
    if (o) {
        q3n_safetensors_close(o->st);
        free(o->converted);
        free(o->expert_tables);
        free(o);
    }
    free(model->weights.layers);
    model->owner = NULL;
    model->weights.layers = NULL;
}

void q3n_model_close(struct q3n_model *model)
{
    if (!model) return;
    if (model->release) model->release(model);
    free(model);
}

static enum q3n_status open_checkpoint(struct q3n_model **out, const char *dir, int convert, struct q3n_error *err);

enum q3n_status q3n_model_open(struct q3n_model **out, const char *dir, struct q3n_error *err)
{
    return open_checkpoint(out, dir, 1, err);
}

enum q3n_status q3n_checkpoint_check(struct q3n_model **out, const char *dir, struct q3n_error *err)
{
    return open_checkpoint(out, dir, 0, err);
}

const struct q3n_safetensors *q3n_model_tensors(const struct q3n_model *model)
{
    if (!model || model->release != checkpoint_release || !model->owner) return NULL;
    return ((const struct owner *)model->owner)->st;
}

/* A bounded, comma-separated list for one category of the mismatch report. */
struct name_list {
    char text[LIST_BUDGET + 64];
    size_t len;
    int64_t count, shown;
};

static void list_add(struct name_list *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void list_add(struct name_list *l, const char *fmt, ...)
{
    char item[NAME_MAX_LEN + 96];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(item, sizeof item, fmt, ap);
    va_end(ap);
    l->count++;
    if (l->shown == l->count - 1 && l->len + strlen(item) + 2 <= LIST_BUDGET) {
        l->len += (size_t)snprintf(l->text + l->len, sizeof l->text - l->len, "%s%s", l->shown ? ", " : "", item);
        l->shown++;
    }
}

static void list_finish(char *out, size_t cap, const char *what, const struct name_list *l)
{
    if (!l->count) {
        out[0] = '\0';
        return;
    }
    if (l->shown < l->count)
        snprintf(out, cap, "; %lld %s: %s, ... (+%lld more)", (long long)l->count, what, l->text,
                 (long long)(l->count - l->shown));
    else
        snprintf(out, cap, "; %lld %s: %s", (long long)l->count, what, l->text);
}

static void format_dims(char *buf, size_t cap, int rank, const int64_t *dims)
{
    size_t off = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < rank && off < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%lld", i ? "," : "", (long long)dims[i]);
    if (off < cap) snprintf(buf + off, cap - off, "]");
}

static int is_float_dtype(enum q3n_st_dtype d)
{
    return d == Q3N_ST_F32 || d == Q3N_ST_BF16 || d == Q3N_ST_F16 || d == Q3N_ST_F64;
}

static int has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Matches the plan against the file; fills e->t and reports all mismatches at once. */
static enum q3n_status match_plan(struct plan *p, const struct q3n_safetensors *st, const char *dir,
                                  struct q3n_error *err)
{
    int64_t n = q3n_safetensors_count(st);
    uint8_t *used = calloc((size_t)(n ? n : 1), 1);
    if (!used) return q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", dir);
    const struct q3n_st_tensor *base = q3n_safetensors_at(st, 0);
    struct name_list missing = {0}, bad = {0}, extra = {0};
    for (int64_t i = 0; i < p->n; i++) {
        struct entry *e = &p->e[i];
        const struct q3n_st_tensor *t = q3n_safetensors_find(st, e->name);
        if (!t) {
            list_add(&missing, "%s", e->name);
            continue;
        }
        used[t - base] = 1;
        int same = t->rank == e->rank;
        for (int d = 0; same && d < e->rank; d++) same = t->dims[d] == e->dims[d];
        char got[96], want[96];
        if (!same) {
            format_dims(got, sizeof got, t->rank, t->dims);
            format_dims(want, sizeof want, e->rank, e->dims);
            list_add(&bad, "%s %s (want %s)", e->name, got, want);
        } else if (!is_float_dtype(t->dtype)) {
            list_add(&bad, "%s dtype %s", e->name, q3n_st_dtype_name(t->dtype));
        } else {
            e->t = t;
        }
    }
    for (int64_t i = 0; i < n; i++) {
        const struct q3n_st_tensor *t = q3n_safetensors_at(st, i);
        if (!used[i] && !has_suffix(t->name, "rotary_emb.inv_freq")) list_add(&extra, "%s", t->name);
    }
    free(used);
    if (!missing.count && !bad.count && !extra.count) return Q3N_OK;
    char a[LIST_BUDGET + 128], b[LIST_BUDGET + 128], c[LIST_BUDGET + 128];
    list_finish(a, sizeof a, "missing", &missing);
    list_finish(b, sizeof b, "mis-shaped", &bad);
    list_finish(c, sizeof c, "extra", &extra);
    return q3n_error_set(err, Q3N_ERR_SHAPE, "%s: tensors do not match config.json%s%s%s", dir, a, b, c);
}

/* Refuses FP8 checkpoints (FP8 dtypes or block-scale tensors) before anything else. */
static enum q3n_status refuse_quantized(const struct q3n_safetensors *st, const char *dir, struct q3n_error *err)
{
    for (int64_t i = 0; i < q3n_safetensors_count(st); i++) {
        const struct q3n_st_tensor *t = q3n_safetensors_at(st, i);
        if (t->dtype == Q3N_ST_F8_E4M3 || t->dtype == Q3N_ST_F8_E5M2 || has_suffix(t->name, "weight_scale_inv") ||
            has_suffix(t->name, "weight_scale"))
            return q3n_error_set(err, Q3N_ERR_UNSUPPORTED,
                                 "%s: tensor %s (%s): FP8 block-quantized checkpoints (weight_scale_inv) are not "
                                 "supported yet; use the BF16 release", dir, t->name, q3n_st_dtype_name(t->dtype));
    }
    return Q3N_OK;
}

static int has_tensor(const struct q3n_safetensors *st, const char *fmt, int64_t i)
{
    char name[NAME_MAX_LEN];
    snprintf(name, sizeof name, fmt, (long long)i);
    return q3n_safetensors_find(st, name) != NULL;
}

/* Every F64 tensor must hold float32 values exactly (checked without converting anything). */
static enum q3n_status check_f64_exact(const struct plan *p, const struct q3n_safetensors *st, struct q3n_error *err)
{
    for (int64_t i = 0; i < p->n; i++) {
        const struct q3n_st_tensor *t = p->e[i].t;
        if (t->dtype != Q3N_ST_F64) continue;
        const unsigned char *b = t->data;
        for (int64_t k = 0; k < t->numel; k++) {
            double d;
            memcpy(&d, b + 8 * k, sizeof d);
            if ((double)(float)d != d && d == d)
                return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "%s: tensor %s: F64 value %.17g at index %lld is not "
                                     "exactly a float32; q3n will not narrow weights silently",
                                     q3n_safetensors_shard_path(st, t->shard), t->name, d, (long long)k);
        }
    }
    return Q3N_OK;
}

/* Opens and checks a checkpoint; converts the weights only when `convert`. */
static enum q3n_status open_checkpoint(struct q3n_model **out, const char *dir, int convert, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    struct plan plan = {0};
    uint8_t *fused = NULL;
    *out = NULL;
    struct q3n_model *model = calloc(1, sizeof *model);
    struct owner *o = calloc(1, sizeof *o);
    if (!model || !o) {
        free(model);
        free(o);
        return q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", dir);
    }
    model->owner = o;
    model->release = checkpoint_release;
    if (snprintf(model->dir, sizeof model->dir, "%s", dir) >= (int)sizeof model->dir) {
        st = q3n_error_set(err, Q3N_ERR_USAGE, "%s: path too long", dir);
        goto cleanup;
    }
    char path[sizeof model->dir + 16];
    snprintf(path, sizeof path, "%s/config.json", dir);
    struct q3n_config *cfg = &model->config;
    st = q3n_config_load(cfg, path, err);
    if (st != Q3N_OK) goto cleanup;
    st = q3n_safetensors_open_dir(&o->st, dir, err);
    if (st != Q3N_OK) goto cleanup;
    st = refuse_quantized(o->st, dir, err);
    if (st != Q3N_OK) goto cleanup;

    /* MTP: released configs carry no MTP field; the tensors decide (as vLLM assumes one layer). */
    int64_t L = cfg->num_hidden_layers, E = cfg->num_experts;
    if (cfg->num_mtp_layers == 0) {
        for (int64_t i = 0; i < q3n_safetensors_count(o->st); i++)
            if (strncmp(q3n_safetensors_at(o->st, i)->name, "mtp.", 4) == 0) {
                cfg->num_mtp_layers = 1;
                break;
            }
    }
    int mtp_sparse = q3n_config_mtp_layer_is_sparse(cfg);
    if (cfg->num_mtp_layers > 0) {
        if (q3n_safetensors_find(o->st, "mtp.layers.0.mlp.gate.weight"))
            mtp_sparse = E > 0;
        else if (q3n_safetensors_find(o->st, "mtp.layers.0.mlp.gate_proj.weight"))
            mtp_sparse = 0;
    }
    model->weights.mtp.layer_is_sparse = mtp_sparse;
    model->weights.layers = calloc((size_t)L, sizeof *model->weights.layers);
    o->expert_tables = calloc((size_t)((L + 1) * (E ? E : 1)), sizeof *o->expert_tables);
    fused = calloc((size_t)L + 1, 1);
    if (!model->weights.layers || !o->expert_tables || !fused) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", dir);
        goto cleanup;
    }
    for (int64_t i = 0; i < L; i++) {
        model->weights.layers[i].moe.experts = o->expert_tables + i * E;
        fused[i] = (uint8_t)has_tensor(o->st, "model.layers.%lld.mlp.experts.gate_up_proj", i);
    }
    model->weights.mtp.layer.moe.experts = o->expert_tables + L * E;
    fused[L] = q3n_safetensors_find(o->st, "mtp.layers.0.mlp.experts.gate_up_proj") != NULL;

    plan.cfg = cfg;
    plan_model(&plan, &model->weights, fused, mtp_sparse);
    if (plan.nomem) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory for the tensor plan", dir);
        goto cleanup;
    }
    st = match_plan(&plan, o->st, dir, err);
    if (st != Q3N_OK) goto cleanup;
    if (!convert) {
        st = check_f64_exact(&plan, o->st, err);
        if (st != Q3N_OK) goto cleanup;
        /* no weight is valid: leave every pointer NULL rather than half-filled */
        free(model->weights.layers);
        model->weights.layers = NULL;
        memset(&model->weights.mtp, 0, sizeof model->weights.mtp);
        model->weights.mtp.layer_is_sparse = mtp_sparse;
        goto cleanup;
    }

    /* Convert what cannot be used in place, into one buffer. */
    size_t total = 0;
    for (int64_t i = 0; i < plan.n; i++) {
        const struct q3n_st_tensor *t = plan.e[i].t;
        if (t->dtype == Q3N_ST_F32 && (uintptr_t)t->data % sizeof(float) == 0) continue;
        if (!q3n_add_size(&total, total, (size_t)t->numel)) {
            st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: converted size overflows", dir);
            goto cleanup;
        }
    }
    size_t bytes;
    if (!q3n_mul_size(&bytes, total, sizeof(float))) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: converted size overflows", dir);
        goto cleanup;
    }
    o->converted = malloc(bytes ? bytes : 1);
    if (!o->converted) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: cannot allocate %zu bytes for converted weights", dir, bytes);
        goto cleanup;
    }
    float *next = o->converted;
    for (int64_t i = 0; i < plan.n; i++) {
        struct entry *e = &plan.e[i];
        const struct q3n_st_tensor *t = e->t;
        const float *ptr;
        if (t->dtype == Q3N_ST_F32 && (uintptr_t)t->data % sizeof(float) == 0) {
            ptr = t->data;
        } else {
            st = q3n_safetensors_to_f32(o->st, t, next, err);
            if (st != Q3N_OK) goto cleanup;
            ptr = next;
            next += t->numel;
        }
        int64_t I = cfg->moe_intermediate_size, D = cfg->hidden_size;
        if (e->kind == ENTRY_PLAIN) {
            *e->slot = ptr;
        } else if (e->kind == ENTRY_FUSED_GATE_UP) {
            for (int64_t x = 0; x < E; x++) {
                e->experts[x].gate_proj = ptr + x * 2 * I * D;
                e->experts[x].up_proj = ptr + x * 2 * I * D + I * D;
            }
        } else {
            for (int64_t x = 0; x < E; x++) e->experts[x].down_proj = ptr + x * D * I;
        }
    }
    if (cfg->tie_word_embeddings) model->weights.lm_head = model->weights.embed_tokens;
cleanup:
    free(plan.e);
    free(fused);
    if (st != Q3N_OK) {
        q3n_model_close(model);
        return st;
    }
    *out = model;
    return Q3N_OK;
}

/* ---- the writer -------------------------------------------------------------------------------------- */

/* Removes a folder this writer created (plain files only). */
static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        char path[4600];
        for (struct dirent *e = readdir(d); e; e = readdir(d)) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

static enum q3n_status write_text(const char *path, const char *text, struct q3n_error *err)
{
    FILE *f = fopen(path, "wb");
    if (!f) return q3n_error_set(err, Q3N_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n && fputc('\n', f) != EOF;
    if (fclose(f) != 0) ok = 0;
    return ok ? Q3N_OK : q3n_error_set(err, Q3N_ERR_IO, "%s: write failed", path);
}

/* Fills a write record for plan entry e; fused entries are assembled into *scratch. */
static enum q3n_status writer_source(const struct plan *p, const struct entry *e, enum q3n_st_dtype dtype,
                                     struct q3n_st_write_tensor *w, float **scratch, struct q3n_error *err)
{
    memset(w, 0, sizeof *w);
    w->name = e->name;
    w->dtype = dtype;
    w->rank = e->rank;
    for (int i = 0; i < e->rank; i++) w->dims[i] = e->dims[i];
    *scratch = NULL;
    if (e->kind == ENTRY_PLAIN) {
        w->data = *e->slot;
        if (!w->data) return q3n_error_set(err, Q3N_ERR_USAGE, "checkpoint writer: the model has no %s", e->name);
        return Q3N_OK;
    }
    const struct q3n_config *c = p->cfg;
    int64_t E = c->num_experts, I = c->moe_intermediate_size, D = c->hidden_size;
    size_t n = (size_t)entry_numel(e);
    float *buf = malloc(n * sizeof *buf);
    if (!buf) return q3n_error_set(err, Q3N_ERR_NOMEM, "checkpoint writer: out of memory for %s", e->name);
    for (int64_t x = 0; x < E; x++) {
        const struct q3n_mlp_weights *m = &e->experts[x];
        if (!m->gate_proj || !m->up_proj || !m->down_proj) {
            free(buf);
            return q3n_error_set(err, Q3N_ERR_USAGE, "checkpoint writer: the model has no expert %lld for %s",
                                 (long long)x, e->name);
        }
        if (e->kind == ENTRY_FUSED_GATE_UP) {
            memcpy(buf + x * 2 * I * D, m->gate_proj, (size_t)(I * D) * sizeof *buf);
            memcpy(buf + x * 2 * I * D + I * D, m->up_proj, (size_t)(I * D) * sizeof *buf);
        } else {
            memcpy(buf + x * D * I, m->down_proj, (size_t)(D * I) * sizeof *buf);
        }
    }
    w->data = buf;
    *scratch = buf;
    return Q3N_OK;
}

/* Writes entries [first, last) of the plan into one safetensors file. */
static enum q3n_status write_shard(const struct plan *p, int64_t first, int64_t last, enum q3n_st_dtype dtype,
                                   const char *path, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    int64_t n = last - first;
    struct q3n_st_write_tensor *w = calloc((size_t)(n ? n : 1), sizeof *w);
    float **scratch = calloc((size_t)(n ? n : 1), sizeof *scratch);
    if (!w || !scratch) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", path);
        goto cleanup;
    }
    for (int64_t i = 0; i < n; i++) {
        st = writer_source(p, &p->e[first + i], dtype, &w[i], &scratch[i], err);
        if (st != Q3N_OK) goto cleanup;
    }
    st = q3n_safetensors_write(path, w, n, err);
cleanup:
    for (int64_t i = 0; scratch && i < n; i++) free(scratch[i]);
    free(scratch);
    free(w);
    return st;
}

enum q3n_status q3n_checkpoint_write(const char *dir, const struct q3n_model *model,
                                     const struct q3n_checkpoint_layout *layout, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    struct plan plan = {0};
    uint8_t *fused = NULL;
    char *json = NULL, *index_text = NULL;
    cJSON *index = NULL;
    int64_t *shard_end = NULL;
    char tmp[4200], path[4300];
    tmp[0] = '\0';
    const struct q3n_config *cfg = &model->config;
    if (layout->dtype != Q3N_ST_F32 && layout->dtype != Q3N_ST_BF16 && layout->dtype != Q3N_ST_F16)
        return q3n_error_set(err, Q3N_ERR_USAGE, "%s: checkpoint dtype must be F32, BF16 or F16", dir);
    if (layout->shards < 1 || layout->shards > 99999)
        return q3n_error_set(err, Q3N_ERR_USAGE, "%s: shards (%d) outside 1..99999", dir, layout->shards);
    if (!model->weights.layers) return q3n_error_set(err, Q3N_ERR_USAGE, "%s: the model has no layers", dir);
    st = q3n_config_to_json(cfg, &json, err);
    if (st != Q3N_OK) return st;
    int64_t L = cfg->num_hidden_layers;
    fused = malloc((size_t)L + 1);
    if (!fused) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", dir);
        goto cleanup;
    }
    memset(fused, layout->fused_experts ? 1 : 0, (size_t)L + 1);
    plan.cfg = cfg;
    /* The plan records slot addresses; the writer only reads through them. */
    plan_model(&plan, (struct q3n_weights *)&model->weights, fused, model->weights.mtp.layer_is_sparse);
    if (plan.nomem) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory for the tensor plan", dir);
        goto cleanup;
    }
    if (layout->shards > plan.n) {
        st = q3n_error_set(err, Q3N_ERR_USAGE, "%s: %d shards for %lld tensors", dir, layout->shards,
                           (long long)plan.n);
        goto cleanup;
    }

    if (snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", dir) >= (int)sizeof tmp || !mkdtemp(tmp)) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: cannot create a temporary folder beside it: %s", dir,
                           strerror(errno));
        tmp[0] = '\0';
        goto cleanup;
    }
    snprintf(path, sizeof path, "%s/config.json", tmp);
    st = write_text(path, json, err);
    if (st != Q3N_OK) goto cleanup;

    /* Shard boundaries: fill each shard to about total/shards bytes, keeping the order. */
    size_t esize = q3n_st_dtype_size(layout->dtype);
    double total = 0;
    for (int64_t i = 0; i < plan.n; i++) total += (double)entry_numel(&plan.e[i]) * (double)esize;
    int S = layout->shards;
    shard_end = calloc((size_t)S, sizeof *shard_end);
    if (!shard_end) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", dir);
        goto cleanup;
    }
    double acc = 0;
    int s = 0;
    for (int64_t i = 0; i < plan.n; i++) {
        acc += (double)entry_numel(&plan.e[i]) * (double)esize;
        /* close shard s once it reaches its share, leaving at least one tensor per later shard */
        if (s < S - 1 && (acc >= total * (s + 1) / S || plan.n - (i + 1) == S - 1 - s)) shard_end[s++] = i + 1;
    }
    shard_end[S - 1] = plan.n;
    if (S == 1) {
        snprintf(path, sizeof path, "%s/model.safetensors", tmp);
        st = write_shard(&plan, 0, plan.n, layout->dtype, path, err);
        if (st != Q3N_OK) goto cleanup;
    } else {
        index = cJSON_CreateObject();
        cJSON *meta = cJSON_AddObjectToObject(index, "metadata");
        cJSON *map = cJSON_AddObjectToObject(index, "weight_map");
        if (!index || !meta || !map || !cJSON_AddNumberToObject(meta, "total_size", total)) {
            st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", dir);
            goto cleanup;
        }
        int64_t first = 0;
        for (int k = 0; k < S; k++) {
            char fname[64];
            snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", k + 1, S);
            snprintf(path, sizeof path, "%s/%s", tmp, fname);
            st = write_shard(&plan, first, shard_end[k], layout->dtype, path, err);
            if (st != Q3N_OK) goto cleanup;
            for (int64_t i = first; i < shard_end[k]; i++)
                if (!cJSON_AddStringToObject(map, plan.e[i].name, fname)) {
                    st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", dir);
                    goto cleanup;
                }
            first = shard_end[k];
        }
        index_text = cJSON_Print(index);
        if (!index_text) {
            st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", dir);
            goto cleanup;
        }
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", tmp);
        st = write_text(path, index_text, err);
        if (st != Q3N_OK) goto cleanup;
    }
    if (rename(tmp, dir) != 0) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: cannot move the written checkpoint into place: %s", dir,
                           strerror(errno));
        goto cleanup;
    }
    tmp[0] = '\0';
cleanup:
    if (tmp[0]) remove_tree(tmp);
    cJSON_Delete(index);
    free(index_text);
    free(shard_end);
    free(json);
    free(fused);
    free(plan.e);
    return st;
}
