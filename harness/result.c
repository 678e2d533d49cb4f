/* result.c — the in-memory result model and its JSON form; see result.h. */
#include "outfile.h"
#include "result.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

const char *q3n_verdict_name(enum q3n_verdict v)
{
    switch (v) {
    case Q3N_VERDICT_PASS: return "pass";
    case Q3N_VERDICT_FAIL: return "FAIL";
    case Q3N_VERDICT_EXPLAINED: return "explained";
    case Q3N_VERDICT_REPORTED: return "reported";
    case Q3N_VERDICT_SKIPPED: return "skipped";
    case Q3N_VERDICT_ERROR: return "ERROR";
    }
    return "unknown";
}

int q3n_verdict_parse(const char *s, enum q3n_verdict *v)
{
    for (int i = 0; i <= Q3N_VERDICT_ERROR; i++)
        if (strcmp(s, q3n_verdict_name((enum q3n_verdict)i)) == 0) {
            *v = (enum q3n_verdict)i;
            return 1;
        }
    return 0;
}

int q3n_verdict_is_failure(enum q3n_verdict v)
{
    return v == Q3N_VERDICT_FAIL || v == Q3N_VERDICT_ERROR;
}

enum q3n_status q3n_result_create(struct q3n_result **r, struct q3n_error *err)
{
    *r = calloc(1, sizeof **r);
    if (!*r) return q3n_error_set(err, Q3N_ERR_NOMEM, "result: out of memory");
    (*r)->schema_version = Q3N_RESULT_SCHEMA_VERSION;
    (*r)->first_divergence = -1;
    (*r)->nan_origin = -1;
    (*r)->flip_layer_first = -1;
    (*r)->golden_format_version = -1;
    (*r)->golden_seed = -1;
    snprintf((*r)->mode, sizeof (*r)->mode, "tolerance");
    return Q3N_OK;
}

void q3n_result_free(struct q3n_result *r)
{
    if (!r) return;
    for (int64_t i = 0; i < r->n_only_a; i++) free(r->only_a[i]);
    for (int64_t i = 0; i < r->n_only_b; i++) free(r->only_b[i]);
    free(r->only_a);
    free(r->only_b);
    free(r->tensors);
    free(r);
}

int q3n_tap_layer(const char *name)
{
    if (strncmp(name, "mtp.", 4) == 0) return -2;
    const char *p = "model.layers.";
    size_t n = strlen(p);
    if (strncmp(name, p, n) != 0) return -1;
    char *end;
    long v = strtol(name + n, &end, 10);
    if (end == name + n || *end != '.' || v < 0 || v > 1000000) return -1;
    return (int)v;
}

enum q3n_status q3n_result_add(struct q3n_result *r, const char *name, struct q3n_tensor_result **out,
                               struct q3n_error *err)
{
    if (r->n_tensors == r->cap_tensors) {
        int64_t cap = r->cap_tensors ? 2 * r->cap_tensors : 64;
        struct q3n_tensor_result *t = realloc(r->tensors, (size_t)cap * sizeof *t);
        if (!t) return q3n_error_set(err, Q3N_ERR_NOMEM, "result: out of memory at tensor %s", name);
        r->tensors = t;
        r->cap_tensors = cap;
    }
    struct q3n_tensor_result *t = &r->tensors[r->n_tensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->layer = q3n_tap_layer(name);
    t->marked_from_token = -1;
    t->noise_rel_l2 = NAN;
    t->headroom_pct = NAN;
    q3n_topk_init(&t->topk, 0);
    *out = t;
    return Q3N_OK;
}

enum q3n_status q3n_result_add_only(struct q3n_result *r, int side_a, const char *name, struct q3n_error *err)
{
    char ***list = side_a ? &r->only_a : &r->only_b;
    int64_t *n = side_a ? &r->n_only_a : &r->n_only_b;
    char **l = realloc(*list, (size_t)(*n + 1) * sizeof *l);
    if (!l) return q3n_error_set(err, Q3N_ERR_NOMEM, "result: out of memory at %s", name);
    *list = l;
    l[*n] = strdup(name);
    if (!l[*n]) return q3n_error_set(err, Q3N_ERR_NOMEM, "result: out of memory at %s", name);
    (*n)++;
    return Q3N_OK;
}

void q3n_result_finalize(struct q3n_result *r)
{
    r->first_divergence = r->nan_origin = r->flip_layer_first = -1;
    for (int64_t i = 0; i < r->n_tensors; i++) {
        const struct q3n_tensor_result *t = &r->tensors[i];
        if (r->first_divergence < 0 && q3n_verdict_is_failure(t->verdict)) r->first_divergence = i;
        if (r->nan_origin < 0 && t->m.nonfinite_bad > 0) r->nan_origin = i;
        if (r->flip_layer_first < 0 && t->tol.kind == Q3N_KIND_TOPK && t->topk.flipped_tokens > 0)
            r->flip_layer_first = i;
    }
}

void q3n_result_counts(const struct q3n_result *r, int64_t counts[6])
{
    for (int i = 0; i < 6; i++) counts[i] = 0;
    for (int64_t i = 0; i < r->n_tensors; i++) counts[r->tensors[i].verdict]++;
}

int q3n_result_exit_code(const struct q3n_result *r)
{
    for (int64_t i = 0; i < r->n_tensors; i++)
        if (q3n_verdict_is_failure(r->tensors[i].verdict)) return 1;
    return 0;
}

void q3n_shape_str(char *buf, size_t cap, int rank, const int64_t *dims)
{
    size_t pos = 0;
    int n = snprintf(buf, cap, "[");
    pos = n > 0 ? (size_t)n : 0;
    for (int i = 0; i < rank && pos < cap; i++) {
        n = snprintf(buf + pos, cap - pos, "%s%lld", i ? "," : "", (long long)dims[i]);
        if (n > 0) pos += (size_t)n;
    }
    if (pos < cap) snprintf(buf + pos, cap - pos, "]");
}

/* --- JSON ---------------------------------------------------------------------------------- */

enum field_type { F_DBL, F_I64, F_ULP };
struct field {
    const char *key;
    enum field_type type;
    size_t off;
};

#define MF(k, t) {#k, t, offsetof(struct q3n_metrics, k)}
static const struct field metric_fields[] = {
    MF(numel, F_I64), MF(finite_pairs, F_I64), MF(nan_a, F_I64), MF(inf_a, F_I64), MF(nan_b, F_I64),
    MF(inf_b, F_I64), MF(nonfinite_bad, F_I64), MF(first_nonfinite_bad_index, F_I64), MF(max_abs, F_DBL),
    MF(max_abs_index, F_I64), MF(a_at_max, F_DBL), MF(b_at_max, F_DBL), MF(max_rel, F_DBL),
    MF(max_rel_index, F_I64), MF(mean_abs, F_DBL), MF(rmse, F_DBL), MF(rel_l2, F_DBL), MF(cosine, F_DBL),
    MF(norm_b, F_DBL), MF(ulp_kind, F_ULP), MF(ulp_max, F_DBL), MF(ulp_p99, F_DBL), MF(outside, F_I64),
    MF(frac_outside, F_DBL), MF(bound_ratio, F_DBL), MF(bound_ratio_index, F_I64), MF(min_rtol, F_DBL),
};
#undef MF
#define TF(k, t) {#k, t, offsetof(struct q3n_topk_stats, k)}
static const struct field topk_fields[] = {
    TF(tokens, F_I64), TF(k, F_I64), TF(flipped_tokens, F_I64), TF(swapped, F_I64), TF(near_tie_tokens, F_I64),
    TF(hard_tokens, F_I64), TF(first_flip_token, F_I64), TF(first_hard_token, F_I64),
    TF(max_near_tie_margin, F_DBL), TF(min_hard_margin, F_DBL), TF(invalid, F_I64),
};
#undef TF
#define OF(k) {#k, F_DBL, offsetof(struct q3n_tolerance, k)}
static const struct field tol_fields[] = {OF(rtol), OF(atol), OF(small), OF(rel_l2), OF(margin), OF(oracle_k),
                                          OF(oracle_floor)};
#undef OF

static int add_num(cJSON *obj, const char *key, double v)
{
    cJSON *item;
    if (isnan(v))
        item = cJSON_CreateString("nan");
    else if (isinf(v))
        item = cJSON_CreateString(v > 0 ? "inf" : "-inf");
    else
        item = cJSON_CreateNumber(v);
    if (!item) return 0;
    cJSON_AddItemToObject(obj, key, item);
    return 1;
}

static double get_num(const cJSON *obj, const char *key, double dflt)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsNumber(it)) return it->valuedouble;
    if (cJSON_IsString(it)) {
        if (strcmp(it->valuestring, "nan") == 0) return NAN;
        if (strcmp(it->valuestring, "inf") == 0) return INFINITY;
        if (strcmp(it->valuestring, "-inf") == 0) return -INFINITY;
    }
    return dflt;
}

static void get_str(const cJSON *obj, const char *key, char *out, size_t cap)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsString(it)) snprintf(out, cap, "%s", it->valuestring);
}

static int add_fields(cJSON *obj, const void *base, const struct field *f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const char *p = (const char *)base + f[i].off;
        if (f[i].type == F_DBL) {
            double v;
            memcpy(&v, p, sizeof v);
            if (!add_num(obj, f[i].key, v)) return 0;
        } else if (f[i].type == F_I64) {
            int64_t v;
            memcpy(&v, p, sizeof v);
            if (!cJSON_AddNumberToObject(obj, f[i].key, (double)v)) return 0;
        } else {
            enum q3n_ulp_kind v;
            memcpy(&v, p, sizeof v);
            if (!cJSON_AddStringToObject(obj, f[i].key, q3n_ulp_kind_name(v))) return 0;
        }
    }
    return 1;
}

static void get_fields(const cJSON *obj, void *base, const struct field *f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char *p = (char *)base + f[i].off;
        if (f[i].type == F_DBL) {
            double v = get_num(obj, f[i].key, NAN);
            memcpy(p, &v, sizeof v);
        } else if (f[i].type == F_I64) {
            int64_t v = (int64_t)get_num(obj, f[i].key, -1);
            memcpy(p, &v, sizeof v);
        } else {
            char s[16] = "none";
            get_str(obj, f[i].key, s, sizeof s);
            enum q3n_ulp_kind v = strcmp(s, "float32") == 0 ? Q3N_ULP_F32
                                  : strcmp(s, "bfloat16") == 0 ? Q3N_ULP_BF16
                                                                : Q3N_ULP_NONE;
            memcpy(p, &v, sizeof v);
        }
    }
}

#define NFIELDS(a) (sizeof a / sizeof a[0])

static cJSON *tensor_json(const struct q3n_tensor_result *t)
{
    cJSON *o = cJSON_CreateObject(), *shape = NULL, *sub = NULL;
    if (!o) return NULL;
    int ok = cJSON_AddStringToObject(o, "name", t->name) != NULL;
    shape = cJSON_AddArrayToObject(o, "shape");
    ok = ok && shape;
    for (int i = 0; ok && i < t->rank; i++) {
        cJSON *d = cJSON_CreateNumber((double)t->dims[i]);
        ok = d != NULL;
        if (d) cJSON_AddItemToArray(shape, d);
    }
    ok = ok && cJSON_AddStringToObject(o, "dtype_a", t->dtype_a) && cJSON_AddStringToObject(o, "dtype_b", t->dtype_b);
    ok = ok && cJSON_AddStringToObject(o, "verdict", q3n_verdict_name(t->verdict));
    ok = ok && cJSON_AddNumberToObject(o, "layer", t->layer);
    ok = ok && cJSON_AddStringToObject(o, "kind", q3n_tensor_kind_name(t->tol.kind));
    ok = ok && add_num(o, "headroom_pct", t->headroom_pct) && add_num(o, "noise_rel_l2", t->noise_rel_l2);
    ok = ok && add_num(o, "oracle_budget", t->oracle_budget);
    ok = ok && cJSON_AddNumberToObject(o, "marked_from_token", (double)t->marked_from_token);
    ok = ok && cJSON_AddStringToObject(o, "note", t->note);
    if (ok) {
        sub = cJSON_AddObjectToObject(o, "tolerance");
        ok = sub && add_fields(sub, &t->tol, tol_fields, NFIELDS(tol_fields)) &&
             cJSON_AddBoolToObject(sub, "near_tie_report", t->tol.near_tie_report) &&
             cJSON_AddNumberToObject(sub, "policy_line", t->tol.line) &&
             cJSON_AddStringToObject(sub, "reason", t->tol.reason);
    }
    if (ok) {
        sub = cJSON_AddObjectToObject(o, "metrics");
        ok = sub && add_fields(sub, &t->m, metric_fields, NFIELDS(metric_fields));
    }
    if (ok && t->has_clean) {
        sub = cJSON_AddObjectToObject(o, "metrics_unmarked");
        ok = sub && add_fields(sub, &t->clean, metric_fields, NFIELDS(metric_fields));
    }
    if (ok && t->tol.kind == Q3N_KIND_TOPK) {
        sub = cJSON_AddObjectToObject(o, "topk");
        ok = sub && add_fields(sub, &t->topk, topk_fields, NFIELDS(topk_fields));
    }
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *result_json(const struct q3n_result *r)
{
    cJSON *root = cJSON_CreateObject(), *sub, *arr;
    int ok = root != NULL;
    int64_t counts[6];
    q3n_result_counts(r, counts);
    ok = ok && cJSON_AddStringToObject(root, "schema", "q3n-result");
    ok = ok && cJSON_AddNumberToObject(root, "schema_version", r->schema_version);
    ok = ok && cJSON_AddStringToObject(root, "command", r->command);
    ok = ok && cJSON_AddStringToObject(root, "mode", r->mode);
    ok = ok && cJSON_AddStringToObject(root, "verdict", q3n_result_exit_code(r) ? "fail" : "pass");
    ok = ok && cJSON_AddNumberToObject(root, "exit_code", q3n_result_exit_code(r));
    if (ok) {
        sub = cJSON_AddObjectToObject(root, "golden");
        ok = sub && cJSON_AddStringToObject(sub, "path", r->golden_path) &&
             cJSON_AddNumberToObject(sub, "format_version", (double)r->golden_format_version) &&
             cJSON_AddStringToObject(sub, "generator", r->golden_generator) &&
             cJSON_AddStringToObject(sub, "transformers_version", r->golden_transformers) &&
             cJSON_AddStringToObject(sub, "torch_version", r->golden_torch) &&
             cJSON_AddStringToObject(sub, "dtype", r->golden_dtype) &&
             cJSON_AddStringToObject(sub, "preset", r->golden_preset) &&
             cJSON_AddNumberToObject(sub, "seed", (double)r->golden_seed);
    }
    if (ok) {
        sub = cJSON_AddObjectToObject(root, "candidate");
        ok = sub && cJSON_AddStringToObject(sub, "name", r->candidate) &&
             cJSON_AddStringToObject(sub, "impl", r->impl) && cJSON_AddStringToObject(sub, "kernels", r->kernels) &&
             cJSON_AddStringToObject(sub, "dtype", r->dtype);
    }
    ok = ok && cJSON_AddStringToObject(root, "policy", r->policy_path);
    if (ok) {
        sub = cJSON_AddObjectToObject(root, "summary");
        ok = sub != NULL;
        for (int i = 0; ok && i < 6; i++)
            ok = cJSON_AddNumberToObject(sub, q3n_verdict_name((enum q3n_verdict)i), (double)counts[i]) != NULL;
        ok = ok && cJSON_AddNumberToObject(sub, "tensors", (double)r->n_tensors);
    }
    ok = ok && (r->first_divergence >= 0
                    ? cJSON_AddStringToObject(root, "first_divergence", r->tensors[r->first_divergence].name) != NULL
                    : cJSON_AddNullToObject(root, "first_divergence") != NULL);
    ok = ok && (r->nan_origin >= 0 ? cJSON_AddStringToObject(root, "nan_origin", r->tensors[r->nan_origin].name) != NULL
                                   : cJSON_AddNullToObject(root, "nan_origin") != NULL);
    for (int side = 0; ok && side < 2; side++) {
        arr = cJSON_AddArrayToObject(root, side ? "only_in_reference" : "only_in_candidate");
        ok = arr != NULL;
        int64_t n = side ? r->n_only_b : r->n_only_a;
        char **l = side ? r->only_b : r->only_a;
        for (int64_t i = 0; ok && i < n; i++) {
            cJSON *s = cJSON_CreateString(l[i]);
            ok = s != NULL;
            if (s) cJSON_AddItemToArray(arr, s);
        }
    }
    if (ok) {
        arr = cJSON_AddArrayToObject(root, "tensors");
        ok = arr != NULL;
        for (int64_t i = 0; ok && i < r->n_tensors; i++) {
            cJSON *t = tensor_json(&r->tensors[i]);
            ok = t != NULL;
            if (t) cJSON_AddItemToArray(arr, t);
        }
    }
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

enum q3n_status q3n_result_write_json(FILE *out, const struct q3n_result *r, struct q3n_error *err)
{
    cJSON *root = result_json(r);
    if (!root) return q3n_error_set(err, Q3N_ERR_NOMEM, "result: out of memory building JSON");
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return q3n_error_set(err, Q3N_ERR_NOMEM, "result: out of memory printing JSON");
    int bad = fputs(text, out) == EOF || fputc('\n', out) == EOF;
    free(text);
    if (bad) return q3n_error_set(err, Q3N_ERR_IO, "result: write failed");
    return Q3N_OK;
}

enum q3n_status q3n_result_save(const struct q3n_result *r, const char *path, struct q3n_error *err)
{
    struct q3n_outfile o;
    enum q3n_status st = q3n_outfile_open(&o, path, err);
    if (st != Q3N_OK) return st;
    st = q3n_result_write_json(o.f, r, err);
    if (st != Q3N_OK && err) { /* the writer's messages do not name the file */
        char msg[Q3N_ERROR_MSG_MAX];
        snprintf(msg, sizeof msg, "%s", err->msg);
        q3n_error_set(err, st, "%s: %s", path, msg);
    }
    return q3n_outfile_finish(&o, st, err);
}

static enum q3n_status parse_tensor(struct q3n_result *r, const cJSON *o, const char *source, int64_t idx,
                                    struct q3n_error *err)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(o, "shape");
    if (!cJSON_IsString(name) || !cJSON_IsArray(shape) || cJSON_GetArraySize(shape) > Q3N_MAX_RANK)
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensors[%lld]: missing name or bad shape", source,
                             (long long)idx);
    struct q3n_tensor_result *t;
    enum q3n_status st = q3n_result_add(r, name->valuestring, &t, err);
    if (st != Q3N_OK) return st;
    t->rank = cJSON_GetArraySize(shape);
    for (int i = 0; i < t->rank; i++) t->dims[i] = (int64_t)cJSON_GetArrayItem(shape, i)->valuedouble;
    get_str(o, "dtype_a", t->dtype_a, sizeof t->dtype_a);
    get_str(o, "dtype_b", t->dtype_b, sizeof t->dtype_b);
    char v[16] = "";
    get_str(o, "verdict", v, sizeof v);
    if (!q3n_verdict_parse(v, &t->verdict))
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensor %s: unknown verdict '%s'", source, t->name, v);
    t->layer = (int)get_num(o, "layer", -1);
    char kind[16] = "float";
    get_str(o, "kind", kind, sizeof kind);
    t->tol.kind = strcmp(kind, "topk") == 0    ? Q3N_KIND_TOPK
                  : strcmp(kind, "exact") == 0 ? Q3N_KIND_EXACT
                  : strcmp(kind, "skip") == 0  ? Q3N_KIND_SKIP
                                               : Q3N_KIND_FLOAT;
    t->headroom_pct = get_num(o, "headroom_pct", NAN);
    t->noise_rel_l2 = get_num(o, "noise_rel_l2", NAN);
    t->oracle_budget = get_num(o, "oracle_budget", 0);
    t->marked_from_token = (int64_t)get_num(o, "marked_from_token", -1);
    get_str(o, "note", t->note, sizeof t->note);
    const cJSON *sub = cJSON_GetObjectItemCaseSensitive(o, "tolerance");
    if (cJSON_IsObject(sub)) {
        get_fields(sub, &t->tol, tol_fields, NFIELDS(tol_fields));
        t->tol.near_tie_report = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sub, "near_tie_report"));
        t->tol.line = (int)get_num(sub, "policy_line", 0);
        get_str(sub, "reason", t->tol.reason, sizeof t->tol.reason);
    }
    sub = cJSON_GetObjectItemCaseSensitive(o, "metrics");
    if (!cJSON_IsObject(sub))
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensor %s: missing metrics", source, t->name);
    get_fields(sub, &t->m, metric_fields, NFIELDS(metric_fields));
    sub = cJSON_GetObjectItemCaseSensitive(o, "metrics_unmarked");
    if (cJSON_IsObject(sub)) {
        t->has_clean = 1;
        get_fields(sub, &t->clean, metric_fields, NFIELDS(metric_fields));
    }
    sub = cJSON_GetObjectItemCaseSensitive(o, "topk");
    if (cJSON_IsObject(sub)) get_fields(sub, &t->topk, topk_fields, NFIELDS(topk_fields));
    return Q3N_OK;
}

enum q3n_status q3n_result_parse_json(struct q3n_result **out, const char *text, const char *source,
                                      struct q3n_error *err)
{
    struct q3n_result *r = NULL;
    enum q3n_status st;
    *out = NULL;
    cJSON *root = cJSON_Parse(text);
    if (!root) return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: not valid JSON", source);
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(root, "schema");
    if (!cJSON_IsString(schema) || strcmp(schema->valuestring, "q3n-result") != 0) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: not a q3n result (schema is not \"q3n-result\")", source);
        goto done;
    }
    double ver = get_num(root, "schema_version", -1);
    if (ver != Q3N_RESULT_SCHEMA_VERSION) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: schema_version %g, this q3n reads %d", source, ver,
                           Q3N_RESULT_SCHEMA_VERSION);
        goto done;
    }
    st = q3n_result_create(&r, err);
    if (st != Q3N_OK) goto done;
    get_str(root, "command", r->command, sizeof r->command);
    get_str(root, "mode", r->mode, sizeof r->mode);
    get_str(root, "policy", r->policy_path, sizeof r->policy_path);
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(root, "golden");
    get_str(g, "path", r->golden_path, sizeof r->golden_path);
    get_str(g, "generator", r->golden_generator, sizeof r->golden_generator);
    get_str(g, "transformers_version", r->golden_transformers, sizeof r->golden_transformers);
    get_str(g, "torch_version", r->golden_torch, sizeof r->golden_torch);
    get_str(g, "dtype", r->golden_dtype, sizeof r->golden_dtype);
    get_str(g, "preset", r->golden_preset, sizeof r->golden_preset);
    r->golden_format_version = (int64_t)get_num(g, "format_version", -1);
    r->golden_seed = (int64_t)get_num(g, "seed", -1);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "candidate");
    get_str(c, "name", r->candidate, sizeof r->candidate);
    get_str(c, "impl", r->impl, sizeof r->impl);
    get_str(c, "kernels", r->kernels, sizeof r->kernels);
    get_str(c, "dtype", r->dtype, sizeof r->dtype);
    for (int side = 0; side < 2; side++) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, side ? "only_in_reference" : "only_in_candidate");
        const cJSON *it;
        cJSON_ArrayForEach(it, arr)
        {
            if (!cJSON_IsString(it)) continue;
            st = q3n_result_add_only(r, !side, it->valuestring, err);
            if (st != Q3N_OK) goto done;
        }
    }
    const cJSON *tensors = cJSON_GetObjectItemCaseSensitive(root, "tensors");
    if (!cJSON_IsArray(tensors)) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: missing tensors array", source);
        goto done;
    }
    const cJSON *it;
    int64_t idx = 0;
    cJSON_ArrayForEach(it, tensors)
    {
        st = parse_tensor(r, it, source, idx++, err);
        if (st != Q3N_OK) goto done;
    }
    q3n_result_finalize(r);
    *out = r;
    r = NULL;
done:
    q3n_result_free(r);
    cJSON_Delete(root);
    return st;
}

enum q3n_status q3n_result_load(struct q3n_result **r, const char *path, struct q3n_error *err)
{
    enum q3n_status st;
    char *text = NULL;
    *r = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return q3n_error_set(err, Q3N_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size < 0 || size > (1L << 30)) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: size out of range", path);
        goto done;
    }
    rewind(f);
    text = malloc((size_t)size + 1);
    if (!text) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    if (fread(text, 1, (size_t)size, f) != (size_t)size) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: short read", path);
        goto done;
    }
    text[size] = '\0';
    st = q3n_result_parse_json(r, text, path, err);
done:
    free(text);
    fclose(f);
    return st;
}
