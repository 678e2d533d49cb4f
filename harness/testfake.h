/* testfake.h — a tiny fake implementation and an in-memory golden, for the tests of the
 * intervention tools (test_intervene.c, test_blame.c, test_bisect.c). Test-only: include it
 * from one test file per binary (it defines static functions).
 *
 * The fake model mirrors the shape of a Qwen3-Next forward with live taps, in a few lines:
 *   x = embed(tokens)                                   model.embed_tokens.out      (live)
 *   per layer l:  n = rmsnorm(x)                        model.layers.l.input_layernorm.out (live)
 *                 a = tanh(W_l n)                       model.layers.l.linear_attn.out     (live)
 *                 x += a                                model.layers.l.post_attention_layernorm.in (live)
 *                 p = softmax(R_l x)                    model.layers.l.mlp.gate.probs      (live)
 *                 idx, w = top-2(p), renormalised       model.layers.l.mlp.gate.topk_idx / topk_weight (live)
 *                 m = sum_j w_j tanh(c_{idx_j} x)       model.layers.l.mlp.out             (live)
 *                 x += m                                model.layers.l.out                 (live)
 *   logits = x Wv^T  (not a tap)
 * Planted bugs (run_options.test_bug): "fake_mixer_layer1" scales layer 1's linear_attn.out
 * by 1.02; "fake_flip_layer0" swaps the second chosen expert of token 0 in layer 0 for the
 * best unchosen one (a routing flip, nothing else wrong). run_options.forced_routing is honoured. Taps may be emitted with
 * q3n_tap_emit (no writable) instead, with "fake_not_live". Determinism bugs below. Bugs
 * combine: test_bug is searched for each name ("fake_flip_layer0,fake_not_live"). */
#ifndef Q3N_TESTFAKE_H
#define Q3N_TESTFAKE_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "impl.h"
#include "intervene.h"

#define FK_D 8
#define FK_L 3
#define FK_E 4
#define FK_K 2
#define FK_V 16
#define FK_TMAX 16

struct fake_session {
    const char *bug;
    const struct q3n_forced_routing *fr; /* run_options.forced_routing (rows = tokens) */
};

/* "fake_nondeterministic": layer 2's mlp.out gets a small wobble that changes from run
 * to run (like an atomic reduction); "fake_tap_side_effect": emitting taps changes the
 * result (layer 0's output is only rounded when a sink is on). */
static unsigned fake_run_counter;

static float fk_w(int l, int i, int j, float s)
{
    return s * sinf(0.7f * (float)(l + 1) + 1.3f * (float)i + 0.37f * (float)(j * (i + 2)));
}

static enum q3n_status fk_open(void **session, const struct q3n_model *model, const struct q3n_run_options *opt,
                               struct q3n_error *err)
{
    (void)model;
    struct fake_session *s = calloc(1, sizeof *s);
    if (!s) return q3n_error_set(err, Q3N_ERR_NOMEM, "fake: oom");
    s->bug = opt && opt->test_bug ? opt->test_bug : "";
    s->fr = opt ? opt->forced_routing : NULL;
    *session = s;
    return Q3N_OK;
}

static void fk_close(void *session)
{
    free(session);
}

static const char *fk_describe(void *session)
{
    (void)session;
    return "fake";
}

static enum q3n_status fk_emit(const struct q3n_tap_sink *taps, int live, enum q3n_dtype dt, void *data, int rank,
                               const int64_t *dims, struct q3n_error *err, const char *name)
{
    if (live) return q3n_tap_emit_live(taps, dt, data, rank, dims, err, "%s", name);
    return q3n_tap_emit(taps, dt, data, rank, dims, err, "%s", name);
}

static enum q3n_status fk_forward(void *session, float *logits, const int64_t *tokens, int64_t T,
                                  const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    struct fake_session *s = session;
    if (T > FK_TMAX) return q3n_error_set(err, Q3N_ERR_USAGE, "fake: T too large");
    int live = strstr(s->bug, "fake_not_live") == NULL;
    /* "fake_live_on_request": live buffers only for an intervening sink, as a device impl does */
    if (strstr(s->bug, "fake_live_on_request")) live = taps && taps->intervene;
    float x[FK_TMAX][FK_D], n[FK_TMAX][FK_D], a[FK_TMAX][FK_D], p[FK_TMAX][FK_E], wt[FK_TMAX][FK_K];
    int64_t idx[FK_TMAX][FK_K];
    int64_t dTD[2] = {T, FK_D}, dTE[2] = {T, FK_E}, dTK[2] = {T, FK_K};
    char name[Q3N_TAP_NAME_MAX];
    enum q3n_status st;
    for (int64_t t = 0; t < T; t++)
        for (int d = 0; d < FK_D; d++) x[t][d] = sinf(0.37f * (float)tokens[t] + 0.91f * (float)d + 0.1f);
    if ((st = fk_emit(taps, live, Q3N_DTYPE_F32, x, 2, dTD, err, "model.embed_tokens.out"))) return st;
    for (int l = 0; l < FK_L; l++) {
        for (int64_t t = 0; t < T; t++) {
            float ss = 0;
            for (int d = 0; d < FK_D; d++) ss += x[t][d] * x[t][d];
            float r = 1.0f / sqrtf(ss / FK_D + 1e-6f);
            for (int d = 0; d < FK_D; d++) n[t][d] = x[t][d] * r;
        }
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.out", l);
        if ((st = fk_emit(taps, live, Q3N_DTYPE_F32, n, 2, dTD, err, name))) return st;
        for (int64_t t = 0; t < T; t++)
            for (int i = 0; i < FK_D; i++) {
                float acc = 0;
                for (int j = 0; j < FK_D; j++) acc += fk_w(l, i, j, 0.5f) * n[t][j];
                a[t][i] = tanhf(acc);
                if (l == 1 && strstr(s->bug, "fake_mixer_layer1") != NULL) a[t][i] *= 1.02f;
            }
        snprintf(name, sizeof name, "model.layers.%d.linear_attn.out", l);
        if ((st = fk_emit(taps, live, Q3N_DTYPE_F32, a, 2, dTD, err, name))) return st;
        for (int64_t t = 0; t < T; t++)
            for (int d = 0; d < FK_D; d++) x[t][d] += a[t][d];
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.in", l);
        if ((st = fk_emit(taps, live, Q3N_DTYPE_F32, x, 2, dTD, err, name))) return st;
        for (int64_t t = 0; t < T; t++) {
            float mx = -INFINITY, sum = 0;
            for (int e = 0; e < FK_E; e++) {
                float acc = 0;
                for (int j = 0; j < FK_D; j++) acc += fk_w(l + 7, e, j, 1.0f) * x[t][j];
                p[t][e] = acc;
                if (acc > mx) mx = acc;
            }
            for (int e = 0; e < FK_E; e++) sum += p[t][e] = expf(p[t][e] - mx);
            for (int e = 0; e < FK_E; e++) p[t][e] /= sum;
        }
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.probs", l);
        if ((st = fk_emit(taps, live, Q3N_DTYPE_F32, p, 2, dTE, err, name))) return st;
        for (int64_t t = 0; t < T; t++) {
            int used[FK_E] = {0};
            for (int j = 0; j < FK_K; j++) {
                int best = -1;
                for (int e = 0; e < FK_E; e++)
                    if (!used[e] && (best < 0 || p[t][e] > p[t][best])) best = e;
                used[best] = 1;
                idx[t][j] = best;
            }
            if (l == 0 && t == 0 && strstr(s->bug, "fake_flip_layer0") != NULL) {
                int best = -1;
                for (int e = 0; e < FK_E; e++)
                    if (!used[e] && (best < 0 || p[t][e] > p[t][best])) best = e;
                idx[t][1] = best;
            }
            float ws = 0;
            for (int j = 0; j < FK_K; j++) ws += wt[t][j] = p[t][idx[t][j]];
            for (int j = 0; j < FK_K; j++) wt[t][j] /= ws;
            if (s->fr && s->fr->topk_idx[l] && t < s->fr->tokens)
                for (int j = 0; j < FK_K; j++) {
                    idx[t][j] = s->fr->topk_idx[l][t * FK_K + j];
                    wt[t][j] = s->fr->topk_weight[l][t * FK_K + j];
                }
        }
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.topk_idx", l);
        if ((st = fk_emit(taps, live, Q3N_DTYPE_I64, idx, 2, dTK, err, name))) return st;
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.topk_weight", l);
        if ((st = fk_emit(taps, live, Q3N_DTYPE_F32, wt, 2, dTK, err, name))) return st;
        for (int64_t t = 0; t < T; t++)
            for (int d = 0; d < FK_D; d++) {
                float m = 0;
                for (int j = 0; j < FK_K; j++)
                    m += wt[t][j] * tanhf((0.3f + 0.4f * (float)idx[t][j]) * x[t][d] + 0.1f * (float)d);
                a[t][d] = m;
            }
        if (l == 2 && strstr(s->bug, "fake_nondeterministic") != NULL) {
            fake_run_counter++;
            a[0][0] += (fake_run_counter & 1) ? 1e-4f : -1e-4f;
        }
        snprintf(name, sizeof name, "model.layers.%d.mlp.out", l);
        if ((st = fk_emit(taps, live, Q3N_DTYPE_F32, a, 2, dTD, err, name))) return st;
        for (int64_t t = 0; t < T; t++)
            for (int d = 0; d < FK_D; d++) x[t][d] += a[t][d];
        if (l == 0 && taps && taps->fn && strstr(s->bug, "fake_tap_side_effect") != NULL)
            x[0][0] = nextafterf(x[0][0], INFINITY);
        snprintf(name, sizeof name, "model.layers.%d.out", l);
        if ((st = fk_emit(taps, live, Q3N_DTYPE_F32, x, 2, dTD, err, name))) return st;
    }
    for (int64_t t = 0; t < T; t++)
        for (int v = 0; v < FK_V; v++) {
            float acc = 0;
            for (int d = 0; d < FK_D; d++) acc += fk_w(11, v, d, 1.0f) * x[t][d];
            logits[t * FK_V + v] = acc;
        }
    return Q3N_OK;
}

static const struct q3n_impl fake_impl = {
    .name = "fake", .open = fk_open, .forward = fk_forward, .describe = fk_describe, .close = fk_close};

/* ---- in-memory golden: every tap of one run, by name ---------------------------------- */

struct fake_golden_tap {
    char name[Q3N_TAP_NAME_MAX];
    enum q3n_dtype dtype;
    int64_t numel;
    void *data;
};

struct fake_golden {
    struct fake_golden_tap taps[128];
    int n;
    float logits[FK_TMAX * FK_V];
};

static enum q3n_status fg_record(void *user, const struct q3n_tap *tap, struct q3n_error *err)
{
    struct fake_golden *g = user;
    if (g->n == 128) return q3n_error_set(err, Q3N_ERR_NOMEM, "fake golden full");
    struct fake_golden_tap *r = &g->taps[g->n++];
    snprintf(r->name, sizeof r->name, "%s", tap->name);
    r->dtype = tap->dtype;
    r->numel = q3n_tap_numel(tap);
    size_t bytes = (size_t)r->numel * q3n_dtype_size(tap->dtype);
    r->data = malloc(bytes);
    if (!r->data) return q3n_error_set(err, Q3N_ERR_NOMEM, "fake golden oom");
    memcpy(r->data, tap->data, bytes);
    return Q3N_OK;
}

static const struct fake_golden_tap *fg_find(struct fake_golden *g, const char *name)
{
    for (int i = 0; i < g->n; i++)
        if (strcmp(g->taps[i].name, name) == 0) return &g->taps[i];
    return NULL;
}

static int64_t fg_numel(void *user, const char *name)
{
    const struct fake_golden_tap *r = fg_find(user, name);
    return r ? r->numel : -1;
}

static enum q3n_status fg_read(void *user, const char *name, enum q3n_dtype as, void *out, int64_t numel,
                               struct q3n_error *err)
{
    const struct fake_golden_tap *r = fg_find(user, name);
    if (!r || r->numel != numel) return q3n_error_set(err, Q3N_ERR_FORMAT, "fake golden: no %s", name);
    for (int64_t i = 0; i < numel; i++) {
        double v = r->dtype == Q3N_DTYPE_I64 ? (double)((int64_t *)r->data)[i]
                   : r->dtype == Q3N_DTYPE_F64 ? ((double *)r->data)[i]
                                              : (double)((float *)r->data)[i];
        if (as == Q3N_DTYPE_F32) ((float *)out)[i] = (float)v;
        else if (as == Q3N_DTYPE_F64) ((double *)out)[i] = v;
        else ((int64_t *)out)[i] = (int64_t)v;
    }
    return Q3N_OK;
}

/* Runs the bug-free fake on tokens and keeps every tap and the logits. */
static enum q3n_status fake_golden_make(struct fake_golden *g, const int64_t *tokens, int64_t T,
                                        struct q3n_error *err)
{
    memset(g, 0, sizeof *g);
    struct q3n_tap_sink sink = {.fn = fg_record, .user = g};
    struct q3n_run_options opt;
    memset(&opt, 0, sizeof opt);
    void *s = NULL;
    enum q3n_status st = fake_impl.open(&s, NULL, &opt, err);
    if (st == Q3N_OK) st = fake_impl.forward(s, g->logits, tokens, T, &sink, err);
    fake_impl.close(s);
    return st;
}

static void fake_golden_free(struct fake_golden *g)
{
    for (int i = 0; i < g->n; i++) free(g->taps[i].data);
    g->n = 0;
}

static struct q3n_golden_src fake_golden_src(struct fake_golden *g)
{
    struct q3n_golden_src src = {.user = g, .numel = fg_numel, .read = fg_read};
    return src;
}

static const int64_t fake_tokens[6] = {3, 14, 1, 5, 9, 2};

#endif
