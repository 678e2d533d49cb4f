/* test_verify.c — the streaming engine on real HDF5 files (harness/verify.c): a golden-shaped
 * file is written with tensorfile, copied tap by tap into a candidate with one change, and
 * compared. Covers the first divergence in every format, router flips at a near-tie and at a
 * clear margin, the NaN origin, names on one side only, row-block streaming and oracle mode. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "policy.h"
#include "report.h"
#include "result.h"
#include "rng.h"
#include "tensorfile.h"
#include "testkit.h"
#include "../ref/model.h"
#include "verify.h"
#include "weights.h"

enum { T = 8, D = 16, NV = 2, DK = 4, DV = 4, E = 8, K = 2, V = 32, LAYERS = 2 };
#define NEAR_TOKEN 3  /* layer 1: experts k and k+1 within 1e-6 in probability (token 0 too) */
#define CLEAR_TOKEN 5 /* layer 1: a clear margin */

static const char *policy_text =
    "* float32 rtol=1e-3 atol=1e-5 small=1e-2 rel_l2=1e-4 oracle_k=4 oracle_floor=1e-9\n"
    "* float64 rtol=1e-3 atol=1e-5 small=1e-2 rel_l2=1e-4 oracle_k=4 oracle_floor=1e-9\n"
    "*.mlp.gate.topk_idx * kind=topk margin=1e-4 near_tie=report\n";

struct fixture {
    char dir[64];
    char golden[128], cand[128];
    struct q3n_policy *policy;
};

/* The reference's registered name: "ref", or "ref64" in the float64 build. */
#define REF_NAME (ref_impl.name)
#ifdef Q3N_REF64
#define REF_DTYPE Q3N_COMPUTE_F64
#else
#define REF_DTYPE Q3N_COMPUTE_F32
#endif

static void check(enum q3n_status st, const struct q3n_error *err)
{
    if (st != Q3N_OK) fail_msg("%s", err->msg);
}

static void write_tensor(struct q3n_tensorfile *tf, const char *name, enum q3n_dtype dt, int rank,
                         const int64_t *dims, const void *data, double noise)
{
    struct q3n_error err = {0};
    char ds[256];
    snprintf(ds, sizeof ds, "/tensors/%s", name);
    check(q3n_tensorfile_write(tf, ds, dt, rank, dims, data, &err), &err);
    check(q3n_tensorfile_set_attr_f64(tf, ds, "noise_rel_l2", noise, &err), &err);
}

/* Softmax probabilities per token with top-k choices; token NEAR_TOKEN of layer 1 has its
 * k-th and (k+1)-th probabilities 1e-6 apart, every other token a gap of at least 0.02. */
static void router(struct q3n_rng *g, int layer, double *probs, int64_t *idx, double *w)
{
    for (int t = 0; t < T; t++) {
        double *p = probs + t * E;
        /* distinct descending levels, then shuffled onto experts */
        int perm[E];
        for (int e = 0; e < E; e++) perm[e] = e;
        for (int e = E - 1; e > 0; e--) {
            int j = (int)q3n_rng_int(g, 0, e), tmp = perm[e];
            perm[e] = perm[j];
            perm[j] = tmp;
        }
        double sum = 0;
        for (int r = 0; r < E; r++) {
            double level = 1.0 / (1.0 + 0.25 * r);
            if (layer == 1 && (t == NEAR_TOKEN || t == 0) && r == K) level = 1.0 / (1.0 + 0.25 * (K - 1)) - 1e-6;
            p[perm[r]] = level;
            sum += level;
        }
        for (int e = 0; e < E; e++) p[e] /= sum;
        double ws = 0;
        for (int k = 0; k < K; k++) ws += p[perm[k]];
        for (int k = 0; k < K; k++) {
            idx[t * K + k] = perm[k];
            w[t * K + k] = p[perm[k]] / ws;
        }
    }
}

/* The golden: tensors in execution order, as generate.py writes them. `f64`: a float64 golden. */
static void write_golden(const char *path, int f64)
{
    struct q3n_tensorfile *tf;
    struct q3n_error err = {0};
    struct q3n_rng g;
    q3n_rng_seed(&g, 42);
    check(q3n_tensorfile_create(&tf, path, &err), &err);
    check(q3n_tensorfile_set_attr_i64(tf, "/", "format_version", 1, &err), &err);
    check(q3n_tensorfile_set_attr_str(tf, "/", "generator", "test_verify.c", &err), &err);
    check(q3n_tensorfile_set_attr_str(tf, "/", "dtype", f64 ? "float64" : "float32", &err), &err);
    check(q3n_tensorfile_set_attr_i64(tf, "/", "seed", 42, &err), &err);
    int64_t ids[T];
    for (int t = 0; t < T; t++) ids[t] = q3n_rng_int(&g, 0, V - 1);
    int64_t tdim[1] = {T};
    check(q3n_tensorfile_write(tf, "/inputs/input_ids", Q3N_DTYPE_I64, 1, tdim, ids, &err), &err);
    static double buf[T * V * 4];
    int64_t dTD[2] = {T, D}, dCore[3] = {T, NV, DV}, dState[3] = {NV, DK, DV}, dTE[2] = {T, E}, dTK[2] = {T, K},
            dTV[2] = {T, V};
    enum q3n_dtype dt = f64 ? Q3N_DTYPE_F64 : Q3N_DTYPE_F32;
    float fbuf[T * V * 4];
#define RANDOM_TAP(name, rank, dims, n)                                                   \
    do {                                                                                  \
        for (int i = 0; i < (n); i++) buf[i] = q3n_rng_normal(&g);                        \
        for (int i = 0; i < (n); i++) fbuf[i] = (float)buf[i];                            \
        write_tensor(tf, name, dt, rank, dims, f64 ? (void *)buf : (void *)fbuf, 1e-7);   \
    } while (0)
    RANDOM_TAP("model.embed_tokens.out", 2, dTD, T * D);
    char name[128];
    for (int l = 0; l < LAYERS; l++) {
        snprintf(name, sizeof name, "model.layers.%d.in", l);
        RANDOM_TAP(name, 2, dTD, T * D);
        snprintf(name, sizeof name, "model.layers.%d.linear_attn.core_out", l);
        RANDOM_TAP(name, 3, dCore, T * NV * DV);
        snprintf(name, sizeof name, "model.layers.%d.linear_attn.final_state", l);
        RANDOM_TAP(name, 3, dState, NV * DK * DV);
        double probs[T * E], w[T * K];
        int64_t idx[T * K];
        router(&g, l, probs, idx, w);
        float pf[T * E], wf[T * K];
        for (int i = 0; i < T * E; i++) pf[i] = (float)probs[i];
        for (int i = 0; i < T * K; i++) wf[i] = (float)w[i];
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.probs", l);
        write_tensor(tf, name, dt, 2, dTE, f64 ? (void *)probs : (void *)pf, 1e-7);
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.topk_idx", l);
        write_tensor(tf, name, Q3N_DTYPE_I64, 2, dTK, idx, 0);
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.topk_weight", l);
        write_tensor(tf, name, dt, 2, dTK, f64 ? (void *)w : (void *)wf, 1e-7);
        snprintf(name, sizeof name, "model.layers.%d.mlp.out", l);
        RANDOM_TAP(name, 2, dTD, T * D);
        snprintf(name, sizeof name, "model.layers.%d.out", l);
        RANDOM_TAP(name, 2, dTD, T * D);
    }
    RANDOM_TAP("model.norm.out", 2, dTD, T * D);
#undef RANDOM_TAP
    for (int i = 0; i < T * V; i++) fbuf[i] = (float)q3n_rng_normal(&g);
    check(q3n_tensorfile_write(tf, "/logits", Q3N_DTYPE_F32, 2, dTV, fbuf, &err), &err);
    check(q3n_tensorfile_commit(tf, &err), &err);
}

/* A change applied to the candidate's copy of each tap; data is float64 (int64 for indices). */
typedef void (*mutate_fn)(const char *name, int rank, const int64_t *dims, void *data, int is_int);

struct copy_ctx {
    struct q3n_tensorfile *src, *dst;
    mutate_fn mutate;
    const char *drop;  /* a tap left out of the candidate */
    struct q3n_rng g;
};

static enum q3n_status copy_one(void *user, const char *name, struct q3n_error *err)
{
    struct copy_ctx *c = user;
    char ds[256];
    snprintf(ds, sizeof ds, "/tensors/%s", name);
    if (c->drop && strcmp(c->drop, name) == 0) return Q3N_OK;
    struct q3n_tensor_info info;
    enum q3n_status st = q3n_tensorfile_info(c->src, ds, &info, err);
    if (st != Q3N_OK) return st;
    int is_int = info.dtype == Q3N_DTYPE_I64;
    void *data = malloc((size_t)info.numel * 8);
    st = q3n_tensorfile_read(c->src, ds, is_int ? Q3N_DTYPE_I64 : Q3N_DTYPE_F64, data, info.numel, NULL, err);
    if (st == Q3N_OK && !is_int) {
        /* float32 rounding-level noise everywhere, as a correct port would show */
        double *x = data;
        for (int64_t i = 0; i < info.numel; i++) x[i] *= 1 + 1e-7 * q3n_rng_normal(&c->g);
    }
    if (st == Q3N_OK && c->mutate) c->mutate(name, info.rank, info.dims, data, is_int);
    if (st == Q3N_OK) {
        if (is_int) {
            st = q3n_tensorfile_write(c->dst, ds, Q3N_DTYPE_I64, info.rank, info.dims, data, err);
        } else {
            float *f = malloc((size_t)info.numel * sizeof *f);
            for (int64_t i = 0; i < info.numel; i++) f[i] = (float)((double *)data)[i];
            st = q3n_tensorfile_write(c->dst, ds, Q3N_DTYPE_F32, info.rank, info.dims, f, err);
            free(f);
        }
    }
    free(data);
    return st;
}

static void write_candidate(const char *golden, const char *out, mutate_fn mutate, const char *drop,
                            const char *extra)
{
    struct q3n_error err = {0};
    struct copy_ctx c = {.mutate = mutate, .drop = drop};
    q3n_rng_seed(&c.g, 99);
    check(q3n_tensorfile_open(&c.src, golden, &err), &err);
    check(q3n_tensorfile_create(&c.dst, out, &err), &err);
    check(q3n_tensorfile_set_attr_str(c.dst, "/", "dtype", "float32", &err), &err);
    check(q3n_tensorfile_set_attr_str(c.dst, "/", "kernels", "test-kernels", &err), &err);
    check(q3n_tensorfile_list(c.src, "/tensors", copy_one, &c, &err), &err);
    if (extra) {
        float x[2] = {1, 2};
        int64_t d[1] = {2};
        char ds[256];
        snprintf(ds, sizeof ds, "/tensors/%s", extra);
        check(q3n_tensorfile_write(c.dst, ds, Q3N_DTYPE_F32, 1, d, x, &err), &err);
    }
    struct q3n_tensor_info li;
    check(q3n_tensorfile_info(c.src, "/logits", &li, &err), &err);
    float *lg = malloc((size_t)li.numel * sizeof *lg);
    check(q3n_tensorfile_read(c.src, "/logits", Q3N_DTYPE_F32, lg, li.numel, NULL, &err), &err);
    if (mutate) {
        double *ld = malloc((size_t)li.numel * sizeof *ld);
        for (int64_t i = 0; i < li.numel; i++) ld[i] = lg[i];
        mutate("logits", li.rank, li.dims, ld, 0);
        for (int64_t i = 0; i < li.numel; i++) lg[i] = (float)ld[i];
        free(ld);
    }
    check(q3n_tensorfile_write(c.dst, "/logits", Q3N_DTYPE_F32, li.rank, li.dims, lg, &err), &err);
    free(lg);
    q3n_tensorfile_close(c.src);
    check(q3n_tensorfile_commit(c.dst, &err), &err);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/q3n_test_verify_XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    snprintf(f->golden, sizeof f->golden, "%s/golden.h5", f->dir);
    snprintf(f->cand, sizeof f->cand, "%s/cand.h5", f->dir);
    write_golden(f->golden, 0);
    struct q3n_error err = {0};
    if (q3n_policy_parse(&f->policy, policy_text, strlen(policy_text), "test.policy", &err) != Q3N_OK) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    unlink(f->golden);
    unlink(f->cand);
    rmdir(f->dir);
    q3n_policy_free(f->policy);
    free(f);
    return 0;
}

static struct q3n_result *compare(struct fixture *f, int oracle)
{
    struct q3n_compare_options o = {.policy = f->policy, .policy_path = "test.policy", .oracle = oracle};
    struct q3n_result *r = NULL;
    struct q3n_error err = {0};
    check(q3n_compare_files(&r, f->cand, f->golden, &o, &err), &err);
    return r;
}

static const struct q3n_tensor_result *find(const struct q3n_result *r, const char *name)
{
    for (int64_t i = 0; i < r->n_tensors; i++)
        if (strcmp(r->tensors[i].name, name) == 0) return &r->tensors[i];
    fail_msg("no tensor %s in the result", name);
    return NULL;
}

static int layer_at_or_after(const char *name, int layer)
{
    int l = q3n_tap_layer(name);
    return l >= layer || strcmp(name, "model.norm.out") == 0 || strcmp(name, "logits") == 0;
}

/* ---- cases ---- */

static void a_faithful_copy_passes_with_nothing_on_one_side(void **state)
{
    struct fixture *f = *state;
    write_candidate(f->golden, f->cand, NULL, NULL, NULL);
    struct q3n_result *r = compare(f, 0);
    assert_int_equal(q3n_result_exit_code(r), 0);
    assert_int_equal(r->first_divergence, -1);
    assert_int_equal(r->n_only_a + r->n_only_b, 0);
    assert_int_equal(r->n_tensors, 1 + LAYERS * 8 + 1 + 1);
    assert_string_equal(r->kernels, "test-kernels");
    assert_string_equal(r->golden_generator, "test_verify.c");
    /* execution order is kept */
    assert_string_equal(r->tensors[0].name, "model.embed_tokens.out");
    assert_string_equal(r->tensors[r->n_tensors - 1].name, "logits");
    assert_true(r->tensors[0].noise_rel_l2 == 1e-7);
    q3n_result_free(r);
}

static void perturb_core_out(const char *name, int rank, const int64_t *dims, void *data, int is_int)
{
    (void)rank;
    (void)dims;
    if (is_int) return;
    double *x = data;
    if (strcmp(name, "model.layers.1.linear_attn.core_out") == 0) x[2 * NV * DV + 3] += 0.05;
    /* downstream taps inherit the error, as they would in a real run */
    if (layer_at_or_after(name, 1) && !strstr(name, "layers.1.in") && !strstr(name, "mlp.gate") &&
        !strstr(name, "core_out") && !strstr(name, "final_state"))
        for (int i = 0; i < 4; i++) x[i] += 0.1;
}

static void a_perturbed_tap_is_the_first_divergence_in_every_format(void **state)
{
    struct fixture *f = *state;
    write_candidate(f->golden, f->cand, perturb_core_out, NULL, NULL);
    struct q3n_result *r = compare(f, 0);
    assert_int_equal(q3n_result_exit_code(r), 1);
    assert_true(r->first_divergence >= 0);
    const struct q3n_tensor_result *t = &r->tensors[r->first_divergence];
    assert_string_equal(t->name, "model.layers.1.linear_attn.core_out");
    assert_int_equal(t->m.max_abs_index, 2 * NV * DV + 3); /* t=2 h=0 c=3 */
    assert_int_equal(r->nan_origin, -1);
    static const char *const markers[] = {
        "first divergence: model.layers.1.linear_attn.core_out",
        "### First divergence: `model.layers.1.linear_attn.core_out`",
        "first divergence: model.layers.1.linear_attn.core_out",
        "<property name=\"first_divergence\" value=\"model.layers.1.linear_attn.core_out\"/>",
        "\"first_divergence\":\t\"model.layers.1.linear_attn.core_out\"",
    };
    for (int fmt = Q3N_REPORT_TEXT; fmt <= Q3N_REPORT_JSON; fmt++) {
        char *buf = NULL;
        size_t len = 0;
        FILE *out = open_memstream(&buf, &len);
        struct q3n_error err = {0};
        check(q3n_report_write(out, r, (enum q3n_report_format)fmt, NULL, &err), &err);
        fclose(out);
        if (!strstr(buf, markers[fmt])) fail_msg("format %d lacks '%s'", fmt, markers[fmt]);
        if (fmt == Q3N_REPORT_TEXT && !strstr(buf, "max_abs=5.00e-02 @t=2 h=0 c=3")) {
            fputs(buf, stderr);
            fail_msg("the text report lacks the worst element's place");
        }
        free(buf);
    }
    q3n_result_free(r);
}

static void perturb_q_rope(const char *name, int rank, const int64_t *dims, void *data, int is_int)
{
    (void)rank;
    (void)dims;
    if (!is_int && strcmp(name, "model.layers.1.self_attn.q_rope") == 0) ((double *)data)[5] *= 1.01;
}

static void a_copy_of_a_committed_golden_with_one_tap_perturbed_is_named_in_every_format(void **state)
{
    struct fixture *f = *state;
    write_candidate("golden/data/tiny_f32.h5", f->cand, perturb_q_rope, NULL, NULL);
    struct q3n_compare_options o = {.policy = f->policy};
    struct q3n_result *r = NULL;
    struct q3n_error err = {0};
    check(q3n_compare_files(&r, f->cand, "golden/data/tiny_f32.h5", &o, &err), &err);
    assert_int_equal(q3n_result_exit_code(r), 1);
    int64_t c[6];
    q3n_result_counts(r, c);
    assert_int_equal(c[Q3N_VERDICT_FAIL], 1);
    const char *name = "model.layers.1.self_attn.q_rope";
    assert_string_equal(r->tensors[r->first_divergence].name, name);
    for (int fmt = Q3N_REPORT_TEXT; fmt <= Q3N_REPORT_JSON; fmt++) {
        char *buf = NULL;
        size_t len = 0;
        FILE *out = open_memstream(&buf, &len);
        check(q3n_report_write(out, r, (enum q3n_report_format)fmt, NULL, &err), &err);
        fclose(out);
        static const char *const pre[] = {"first divergence: ", "### First divergence: `", "first divergence: ",
                                          "name=\"first_divergence\" value=\"", "\"first_divergence\":\t\""};
        char marker[256];
        snprintf(marker, sizeof marker, "%s%s", pre[fmt], name);
        if (!strstr(buf, marker)) fail_msg("format %d lacks '%s'", fmt, marker);
        free(buf);
    }
    q3n_result_free(r);
}

static int flip_token;
static int64_t flip_expert;

/* The golden's (k+1)-th expert for a token of layer 1: the most probable one not chosen. */
static int64_t next_expert(const char *golden, int token)
{
    struct q3n_tensorfile *tf;
    struct q3n_error err = {0};
    double p[T * E];
    int64_t idx[T * K];
    check(q3n_tensorfile_open(&tf, golden, &err), &err);
    check(q3n_tensorfile_read(tf, "/tensors/model.layers.1.mlp.gate.probs", Q3N_DTYPE_F64, p, T * E, NULL, &err),
          &err);
    check(q3n_tensorfile_read(tf, "/tensors/model.layers.1.mlp.gate.topk_idx", Q3N_DTYPE_I64, idx, T * K, NULL, &err),
          &err);
    q3n_tensorfile_close(tf);
    int64_t best = -1;
    for (int64_t e = 0; e < E; e++) {
        int chosen = 0;
        for (int k = 0; k < K; k++) chosen |= idx[token * K + k] == e;
        if (!chosen && (best < 0 || p[token * E + e] > p[token * E + best])) best = e;
    }
    return best;
}

/* Swaps the k-th chosen expert of token flip_token in layer 1 for the (k+1)-th, and makes
 * every later tap wrong on tokens >= flip_token (what the other expert would do). */
static void flip_router(const char *name, int rank, const int64_t *dims, void *data, int is_int)
{
    (void)rank;
    if (strcmp(name, "model.layers.1.mlp.gate.topk_idx") == 0) {
        ((int64_t *)data)[flip_token * K + K - 1] = flip_expert;
        return;
    }
    if (is_int) return;
    if (strcmp(name, "model.layers.1.mlp.gate.topk_weight") == 0) {
        /* the other expert's weight differs; only aligned tokens may be compared */
        double *w = data;
        w[flip_token * K + K - 1] *= 0.9;
        w[flip_token * K] += 0.1 * w[flip_token * K + K - 1];
        return;
    }
    static const char *const after[] = {"model.layers.1.mlp.out", "model.layers.1.out", "model.norm.out", "logits"};
    int hit = 0;
    for (size_t i = 0; i < sizeof after / sizeof after[0]; i++) hit |= strcmp(name, after[i]) == 0;
    if (!hit) return;
    double *x = data;
    for (int64_t t = flip_token; t < dims[0]; t++)
        for (int64_t c = 0; c < dims[1]; c++) x[t * dims[1] + c] += 0.3;
}

static void a_router_flip_at_a_near_tie_is_reported_and_explains_downstream_errors(void **state)
{
    struct fixture *f = *state;
    flip_token = NEAR_TOKEN;
    flip_expert = next_expert(f->golden, NEAR_TOKEN);
    write_candidate(f->golden, f->cand, flip_router, NULL, NULL);
    struct q3n_result *r = compare(f, 0);
    const struct q3n_tensor_result *t = find(r, "model.layers.1.mlp.gate.topk_idx");
    assert_int_equal(t->verdict, Q3N_VERDICT_REPORTED);
    assert_int_equal(t->topk.flipped_tokens, 1);
    assert_int_equal(t->topk.near_tie_tokens, 1);
    assert_int_equal(t->topk.first_flip_token, NEAR_TOKEN);
    assert_true(t->topk.max_near_tie_margin <= 1e-4);
    char flip[96];
    snprintf(flip, sizeof flip, " -> %lld, margin ", (long long)flip_expert); /* the expert taken instead */
    if (!strstr(t->note, "[t=3: expert ") || !strstr(t->note, flip)) fail_msg("note: %s", t->note);
    assert_true(t->headroom_pct <= 100.0);
    assert_int_equal(find(r, "model.layers.1.mlp.gate.topk_weight")->verdict, Q3N_VERDICT_PASS);
    const struct q3n_tensor_result *mo = find(r, "model.layers.1.mlp.out");
    assert_int_equal(mo->verdict, Q3N_VERDICT_EXPLAINED);
    assert_int_equal(mo->marked_from_token, NEAR_TOKEN);
    assert_non_null(strstr(mo->note, "explained by the router flip at model.layers.1.mlp.gate.topk_idx token 3"));
    assert_int_equal(find(r, "logits")->verdict, Q3N_VERDICT_EXPLAINED);
    assert_int_equal(q3n_result_exit_code(r), 0);
    assert_int_equal(r->first_divergence, -1);
    assert_true(r->flip_layer_first >= 0);
    /* the text report says so */
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    struct q3n_error err = {0};
    check(q3n_report_text(out, r, NULL, &err), &err);
    fclose(out);
    assert_non_null(strstr(buf, "router flips: first at model.layers.1.mlp.gate.topk_idx, token 3"));
    assert_non_null(strstr(buf, "at a near-tie"));
    free(buf);
    q3n_result_free(r);
}

static int break_upstream;

/* flip_router, plus (when break_upstream) a real error in layer 0 before the flip. */
static void flip_router_maybe_broken(const char *name, int rank, const int64_t *dims, void *data, int is_int)
{
    flip_router(name, rank, dims, data, is_int);
    if (break_upstream && !is_int && strcmp(name, "model.layers.0.mlp.out") == 0) ((double *)data)[3] += 0.5;
}

static void a_flip_at_token_0_explains_downstream_only_while_nothing_failed_before(void **state)
{
    struct fixture *f = *state;
    flip_token = 0;
    flip_expert = next_expert(f->golden, 0);
    for (break_upstream = 0; break_upstream <= 1; break_upstream++) {
        write_candidate(f->golden, f->cand, flip_router_maybe_broken, NULL, NULL);
        struct q3n_result *r = compare(f, 0);
        assert_int_equal(find(r, "model.layers.1.mlp.gate.topk_idx")->verdict, Q3N_VERDICT_REPORTED);
        const struct q3n_tensor_result *mo = find(r, "model.layers.1.mlp.out");
        assert_int_equal(mo->clean.numel, 0); /* no token before the flip to check against */
        if (!break_upstream) {
            assert_int_equal(mo->verdict, Q3N_VERDICT_EXPLAINED);
            assert_int_equal(q3n_result_exit_code(r), 0);
        } else {
            assert_int_equal(mo->verdict, Q3N_VERDICT_FAIL);
            assert_non_null(strstr(mo->note, "cannot explain it while earlier tensors fail"));
            assert_string_equal(r->tensors[r->first_divergence].name, "model.layers.0.mlp.out");
        }
        q3n_result_free(r);
    }
}

static void a_router_flip_at_a_clear_margin_fails(void **state)
{
    struct fixture *f = *state;
    flip_token = CLEAR_TOKEN;
    flip_expert = next_expert(f->golden, CLEAR_TOKEN);
    write_candidate(f->golden, f->cand, flip_router, NULL, NULL);
    struct q3n_result *r = compare(f, 0);
    const struct q3n_tensor_result *t = find(r, "model.layers.1.mlp.gate.topk_idx");
    assert_int_equal(t->verdict, Q3N_VERDICT_FAIL);
    assert_int_equal(t->topk.hard_tokens, 1);
    assert_int_equal(t->topk.first_hard_token, CLEAR_TOKEN);
    assert_true(t->headroom_pct > 100.0);
    assert_int_equal(q3n_result_exit_code(r), 1);
    assert_string_equal(r->tensors[r->first_divergence].name, "model.layers.1.mlp.gate.topk_idx");
    q3n_result_free(r);
}

static void nan_into_mlp_out(const char *name, int rank, const int64_t *dims, void *data, int is_int)
{
    if (is_int) return;
    double *x = data;
    int64_t n = 1;
    for (int i = 0; i < rank; i++) n *= dims[i];
    if (strcmp(name, "model.layers.0.mlp.out") == 0) x[D + 5] = NAN;
    /* everything downstream is poisoned too, as in a real run */
    if ((strcmp(name, "model.layers.0.out") == 0 || layer_at_or_after(name, 1)) && n > D + 5) x[D + 5] = NAN;
}

static void nan_injected_into_one_tap_is_named_as_the_origin(void **state)
{
    struct fixture *f = *state;
    write_candidate(f->golden, f->cand, nan_into_mlp_out, NULL, NULL);
    struct q3n_result *r = compare(f, 0);
    assert_true(r->nan_origin >= 0);
    assert_string_equal(r->tensors[r->nan_origin].name, "model.layers.0.mlp.out");
    assert_string_equal(r->tensors[r->first_divergence].name, "model.layers.0.mlp.out");
    assert_int_equal(r->tensors[r->nan_origin].m.first_nonfinite_bad_index, D + 5);
    assert_int_equal(q3n_result_exit_code(r), 1);
    q3n_result_free(r);
}

static void names_on_one_side_are_listed_not_fatal(void **state)
{
    struct fixture *f = *state;
    write_candidate(f->golden, f->cand, NULL, "model.layers.0.linear_attn.final_state", "model.layers.0.extra");
    struct q3n_result *r = compare(f, 0);
    assert_int_equal(r->n_only_a, 1);
    assert_string_equal(r->only_a[0], "model.layers.0.extra");
    assert_int_equal(r->n_only_b, 1);
    assert_string_equal(r->only_b[0], "model.layers.0.linear_attn.final_state");
    assert_int_equal(q3n_result_exit_code(r), 0);
    q3n_result_free(r);
}

static void a_missing_file_is_an_input_error_naming_it(void **state)
{
    struct fixture *f = *state;
    struct q3n_compare_options o = {.policy = f->policy};
    struct q3n_result *r = NULL;
    struct q3n_error err = {0};
    assert_int_not_equal(q3n_compare_files(&r, "/tmp/q3n_no_such_file.h5", f->golden, &o, &err), Q3N_OK);
    assert_non_null(strstr(err.msg, "/tmp/q3n_no_such_file.h5"));
    assert_null(r);
}

static void oracle_mode_judges_against_k_times_the_recorded_low_precision_error(void **state)
{
    struct fixture *f = *state;
    char g64[160];
    snprintf(g64, sizeof g64, "%s/golden64.h5", f->dir);
    write_golden(g64, 1);
    write_candidate(g64, f->cand, NULL, NULL, NULL);
    struct q3n_compare_options o = {.policy = f->policy, .oracle = 1};
    struct q3n_result *r = NULL;
    struct q3n_error err = {0};
    check(q3n_compare_files(&r, f->cand, g64, &o, &err), &err);
    assert_string_equal(r->mode, "oracle");
    /* float32 rounding of a float64 golden plus 1e-7 noise: within 4 x 1e-7 + floor */
    const struct q3n_tensor_result *t = find(r, "model.layers.0.mlp.out");
    assert_true(fabs(t->oracle_budget - (4 * 1e-7 + 1e-9)) < 1e-15);
    assert_int_equal(t->verdict, Q3N_VERDICT_PASS);
    /* logits carry no recorded low-precision error: an error verdict, not a silent pass */
    assert_int_equal(find(r, "logits")->verdict, Q3N_VERDICT_ERROR);
    q3n_result_free(r);
    /* a float32 golden has no float64 reference: refused */
    assert_int_equal(q3n_compare_files(&r, f->cand, f->golden, &o, &err), Q3N_ERR_USAGE);
    assert_non_null(strstr(err.msg, "--oracle needs a float64 golden"));
    unlink(g64);
}

static void tensors_larger_than_a_block_are_streamed_row_by_row(void **state)
{
    struct fixture *f = *state;
    /* 8 x 200003 logits: 1.6M elements, more than one 2^20-element block per side */
    enum { BT = 8, BV = 200003 };
    char ga[160], gb[160];
    snprintf(ga, sizeof ga, "%s/big_a.h5", f->dir);
    snprintf(gb, sizeof gb, "%s/big_b.h5", f->dir);
    float *a = malloc((size_t)BT * BV * sizeof *a), *b = malloc((size_t)BT * BV * sizeof *b);
    double *ad = malloc((size_t)BT * BV * sizeof *ad), *bd = malloc((size_t)BT * BV * sizeof *bd);
    struct q3n_rng g;
    q3n_rng_seed(&g, 5);
    for (int64_t i = 0; i < (int64_t)BT * BV; i++) {
        b[i] = (float)q3n_rng_normal(&g);
        a[i] = b[i] * (1.0f + 1e-7f * (float)q3n_rng_normal(&g));
    }
    int64_t planted = 7 * (int64_t)BV + 12345; /* in the last block */
    a[planted] += 0.25f;
    int64_t dims[2] = {BT, BV};
    struct q3n_error err = {0};
    const char *paths[2] = {ga, gb};
    float *data[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        struct q3n_tensorfile *tf;
        check(q3n_tensorfile_create(&tf, paths[k], &err), &err);
        check(q3n_tensorfile_write(tf, "/logits", Q3N_DTYPE_F32, 2, dims, data[k], &err), &err);
        check(q3n_tensorfile_commit(tf, &err), &err);
    }
    struct q3n_compare_options o = {.policy = f->policy};
    struct q3n_result *r = NULL;
    check(q3n_compare_files(&r, ga, gb, &o, &err), &err);
    assert_int_equal(r->n_tensors, 1);
    const struct q3n_tensor_result *t = &r->tensors[0];
    /* the same metrics as one pass over the whole arrays */
    for (int64_t i = 0; i < (int64_t)BT * BV; i++) {
        ad[i] = a[i];
        bd[i] = b[i];
    }
    struct q3n_metrics whole;
    q3n_compare_f64(&whole, ad, bd, (int64_t)BT * BV, &t->tol, Q3N_ULP_F32);
    assert_int_equal(t->m.numel, (int64_t)BT * BV);
    assert_int_equal(t->m.max_abs_index, planted);
    assert_true(t->m.max_abs == whole.max_abs);
    assert_true(fabs(t->m.rel_l2 - whole.rel_l2) <= 1e-12 * whole.rel_l2);
    assert_true(t->m.ulp_p99 == whole.ulp_p99 && t->m.outside == whole.outside);
    assert_int_equal(t->verdict, Q3N_VERDICT_FAIL);
    q3n_result_free(r);
    free(a);
    free(b);
    free(ad);
    free(bd);
    unlink(ga);
    unlink(gb);
}

/* ---- the committed goldens, with the reference implementation ---- */

static struct q3n_result *verify_golden(const char *golden, const struct q3n_verify_options *opt)
{
    char ckpt[4096];
    struct q3n_model *model = NULL;
    struct q3n_result *r = NULL;
    struct q3n_error err = {0};
    check(q3n_verify_checkpoint(ckpt, sizeof ckpt, golden, &err), &err);
    check(q3n_model_open(&model, ckpt, &err), &err);
    check(q3n_verify_model(&r, golden, model, opt, &err), &err);
    q3n_model_close(model);
    return r;
}

static struct q3n_policy *default_policy(void)
{
    struct q3n_policy *p = NULL;
    struct q3n_error err = {0};
    check(q3n_policy_load(&p, "harness/policy/default.policy", &err), &err);
    return p;
}

static enum q3n_status count_one(void *user, const char *name, struct q3n_error *err)
{
    (void)name;
    (void)err;
    (*(int64_t *)user)++;
    return Q3N_OK;
}

static void verify_ref_passes_on_every_committed_golden(void **state)
{
    (void)state;
    static const struct {
        const char *golden;
        int oracle, extras; /* extras: logits, mtp_logits, decode/logits */
    } cases[] = {
        {"golden/data/tiny_f32.h5", 0, 1},    {"golden/data/tiny_decode.h5", 0, 2},
        {"golden/data/odd_f32.h5", 0, 2},     {"golden/data/odd_decode.h5", 0, 3},
        {"golden/data/long_f32.h5", 0, 1},    {"golden/data/tiny_f64.h5", 0, 1},
        {"golden/data/tiny_bf16.h5", 1, 1},   {"golden/data/tiny_f64.h5", 1, 1},
    };
    struct q3n_policy *p = default_policy();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct q3n_verify_options o = {.impl = REF_NAME, .dtype = REF_DTYPE, .policy = p, .oracle = cases[i].oracle};
        struct q3n_result *r = verify_golden(cases[i].golden, &o);
        struct q3n_tensorfile *tf;
        struct q3n_error err = {0};
        int64_t taps = 0;
        check(q3n_tensorfile_open(&tf, cases[i].golden, &err), &err);
        check(q3n_tensorfile_list(tf, "/tensors", count_one, &taps, &err), &err);
        q3n_tensorfile_close(tf);
        if (q3n_result_exit_code(r) != 0 || r->n_only_a || r->n_only_b || r->n_tensors != taps + cases[i].extras) {
            char *buf = NULL;
            size_t len = 0;
            FILE *out = open_memstream(&buf, &len);
            q3n_report_text(out, r, NULL, &err);
            fclose(out);
            fputs(buf, stderr);
            free(buf);
            fail_msg("%s (oracle %d): exit %d, %lld tensors for %lld taps + %d extras, %lld/%lld on one side",
                     cases[i].golden, cases[i].oracle, q3n_result_exit_code(r), (long long)r->n_tensors,
                     (long long)taps, cases[i].extras, (long long)r->n_only_a, (long long)r->n_only_b);
        }
        assert_string_equal(r->mode, cases[i].oracle ? "oracle" : "tolerance");
        assert_non_null(strstr(r->kernels, "ref"));
        q3n_result_free(r);
    }
    q3n_policy_free(p);
}

static void planted_bugs_are_named_as_the_first_divergence(void **state)
{
    (void)state;
    static const struct {
        const char *bug, *golden, *first;
    } cases[] = {
        {"norm_no_offset", "golden/data/tiny_f32.h5", "model.layers.0.input_layernorm.out"},
        {"rope_wrong_half", "golden/data/tiny_f32.h5", "model.layers.1.self_attn.q_rope"},
        {"chunk_off_by_one", "golden/data/tiny_f32.h5", "model.layers.0.linear_attn.final_state"},
        {"chunk_off_by_one", "golden/data/odd_f32.h5", "model.layers.1.linear_attn.core_out"},
        {"router_flip_layer0", "golden/data/tiny_f32.h5", "model.layers.0.mlp.gate.topk_idx"},
        {"weak_gated_norm_layer1", "golden/data/odd_f32.h5", "model.layers.1.linear_attn.norm.out"},
    };
    struct q3n_policy *p = default_policy();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct q3n_verify_options o = {.impl = REF_NAME, .dtype = REF_DTYPE, .policy = p, .test_bug = cases[i].bug};
        struct q3n_result *r = verify_golden(cases[i].golden, &o);
        if (r->first_divergence < 0 || strcmp(r->tensors[r->first_divergence].name, cases[i].first) != 0)
            fail_msg("%s on %s: first divergence %s, expected %s", cases[i].bug, cases[i].golden,
                     r->first_divergence < 0 ? "none" : r->tensors[r->first_divergence].name, cases[i].first);
        assert_int_equal(q3n_result_exit_code(r), 1);
        q3n_result_free(r);
    }
    q3n_policy_free(p);
}

static int64_t count_failures(const struct q3n_result *r)
{
    int64_t n = 0;
    for (int64_t i = 0; i < r->n_tensors; i++) n += q3n_verdict_is_failure(r->tensors[i].verdict);
    return n;
}

/* Isolated mode (issue 9): with one operation planted wrong, the chained run fails everything
 * downstream of it, while the isolated run, which feeds every operation the golden's inputs,
 * fails that operation alone and passes the logits. */
static void isolated_verify_fails_only_the_planted_operation(void **state)
{
    (void)state;
    struct q3n_policy *p = default_policy();
    struct q3n_verify_options chained = {.impl = REF_NAME, .dtype = REF_DTYPE, .policy = p,
                                         .test_bug = "weak_gated_norm_layer1"};
    struct q3n_verify_options isolated = chained;
    isolated.isolated = 1;
    struct q3n_result *rc = verify_golden("golden/data/odd_f32.h5", &chained);
    struct q3n_result *ri = verify_golden("golden/data/odd_f32.h5", &isolated);
    const char *planted = "model.layers.1.linear_attn.norm.out";
    assert_true(count_failures(rc) > 10);
    if (count_failures(ri) != 1 || ri->first_divergence < 0 ||
        strcmp(ri->tensors[ri->first_divergence].name, planted) != 0)
        fail_msg("isolated: %lld failures, first %s; expected only %s", (long long)count_failures(ri),
                 ri->first_divergence < 0 ? "none" : ri->tensors[ri->first_divergence].name, planted);
    assert_non_null(strstr(ri->kernels, "isolated"));
    q3n_result_free(rc);
    q3n_result_free(ri);
    q3n_policy_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_faithful_copy_passes_with_nothing_on_one_side),
        cmocka_unit_test(a_perturbed_tap_is_the_first_divergence_in_every_format),
        cmocka_unit_test(a_copy_of_a_committed_golden_with_one_tap_perturbed_is_named_in_every_format),
        cmocka_unit_test(a_router_flip_at_a_near_tie_is_reported_and_explains_downstream_errors),
        cmocka_unit_test(a_router_flip_at_a_clear_margin_fails),
        cmocka_unit_test(a_flip_at_token_0_explains_downstream_only_while_nothing_failed_before),
        cmocka_unit_test(nan_injected_into_one_tap_is_named_as_the_origin),
        cmocka_unit_test(names_on_one_side_are_listed_not_fatal),
        cmocka_unit_test(a_missing_file_is_an_input_error_naming_it),
        cmocka_unit_test(oracle_mode_judges_against_k_times_the_recorded_low_precision_error),
        cmocka_unit_test(tensors_larger_than_a_block_are_streamed_row_by_row),
        cmocka_unit_test(verify_ref_passes_on_every_committed_golden),
        cmocka_unit_test(planted_bugs_are_named_as_the_first_divergence),
        cmocka_unit_test(isolated_verify_fails_only_the_planted_operation),
    };
    return cmocka_run_group_tests_name("harness_verify", tests, setup, teardown);
}
