/* intervene.c — intervening tap sinks; see intervene.h. */
#include "intervene.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- patterns ------------------------------------------------------------------------- */

int q3n_glob_match(const char *p, const char *s)
{
    /* Iterative glob with one backtrack point (the last '*'): linear in practice. */
    const char *star = NULL, *resume = NULL;
    while (*s) {
        if (*p == '*') {
            star = p++;
            resume = s;
        } else if (*p == '?' || *p == *s) {
            p++;
            s++;
        } else if (star) {
            p = star + 1;
            s = ++resume;
        } else {
            return 0;
        }
    }
    while (*p == '*') p++;
    return *p == '\0';
}

static int is_sep(char c)
{
    return c == ',' || c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

int q3n_patterns_match(const char *patterns, const char *name)
{
    if (!patterns) return 0;
    const char *p = patterns;
    char glob[Q3N_TAP_NAME_MAX * 2];
    while (*p) {
        if (*p == '#') {
            while (*p && *p != '\n') p++;
            continue;
        }
        if (is_sep(*p)) {
            p++;
            continue;
        }
        size_t n = 0;
        while (p[n] && !is_sep(p[n]) && p[n] != '#') n++;
        if (n < sizeof glob) {
            memcpy(glob, p, n);
            glob[n] = '\0';
            if (q3n_glob_match(glob, name)) return 1;
        }
        p += n;
    }
    return 0;
}

enum q3n_status q3n_patterns_load(char **out, const char *path, struct q3n_error *err)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return q3n_error_set(err, Q3N_ERR_IO, "%s: cannot open pattern file: %s", path, strerror(errno));
    enum q3n_status st = Q3N_OK;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            size_t ncap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory reading patterns", path);
                goto done;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + len, 1, 4096, f);
        len += got;
        if (got < 4096) break;
    }
    if (ferror(f)) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: read error", path);
        goto done;
    }
    buf[len] = '\0';
    *out = buf;
    buf = NULL;
done:
    free(buf);
    fclose(f);
    return st;
}

/* ---- rounding ------------------------------------------------------------------------- */

float q3n_round_mantissa_f32(float x, int mant_bits)
{
    if (isnan(x) || isinf(x) || mant_bits >= 23) return x;
    uint32_t u;
    memcpy(&u, &x, 4);
    int shift = 23 - (mant_bits < 0 ? 0 : mant_bits);
    uint32_t lsb = (u >> shift) & 1u;
    uint32_t half = (1u << (shift - 1)) - 1u;
    u += half + lsb; /* a carry into the exponent rounds up a binade; past the max it is Inf */
    u &= ~((1u << shift) - 1u);
    float y;
    memcpy(&y, &u, 4);
    return y;
}

double q3n_round_mantissa_f64(double x, int mant_bits)
{
    if (isnan(x) || isinf(x) || mant_bits >= 52) return x;
    if (fabs(x) < 0x1p-126) {
        /* float's subnormal range: a fixed quantum 2^(-126-m); scaling by a power of two is
         * exact and nearbyint rounds to nearest even in the default rounding mode */
        double q = ldexp(1.0, -126 - (mant_bits < 0 ? 0 : mant_bits));
        return nearbyint(x / q) * q;
    }
    uint64_t u;
    memcpy(&u, &x, 8);
    int shift = 52 - (mant_bits < 0 ? 0 : mant_bits);
    uint64_t lsb = (u >> shift) & 1u;
    uint64_t half = (UINT64_C(1) << (shift - 1)) - 1u;
    u += half + lsb;
    u &= ~((UINT64_C(1) << shift) - 1u);
    double y;
    memcpy(&y, &u, 8);
    /* float's exponent range: anything rounded past the largest float of this precision is Inf */
    if (fabs(y) > 3.4028234663852886e38) y = y > 0 ? INFINITY : -INFINITY;
    return y;
}

/* ---- metrics -------------------------------------------------------------------------- */

double q3n_rel_l2_f32(const float *a, const float *b, int64_t n)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    if (isnan(num) || isnan(den)) return NAN;
    if (den == 0.0) return num == 0.0 ? 0.0 : INFINITY;
    return sqrt(num / den);
}

int q3n_bitwise_equal(const void *a, const void *b, size_t bytes)
{
    return memcmp(a, b, bytes) == 0;
}

uint64_t q3n_fnv1a(const void *data, size_t bytes)
{
    const unsigned char *p = data;
    uint64_t h = UINT64_C(1469598103934665603);
    for (size_t i = 0; i < bytes; i++) {
        h ^= p[i];
        h *= UINT64_C(1099511628211);
    }
    return h;
}

int q3n_tap_layer_index(const char *name)
{
    static const char pre[] = "model.layers.";
    if (strncmp(name, pre, sizeof pre - 1) != 0) return -1;
    const char *p = name + sizeof pre - 1;
    if (*p < '0' || *p > '9') return -1;
    long v = 0;
    while (*p >= '0' && *p <= '9' && v < 1000000) v = v * 10 + (*p++ - '0');
    if (*p != '.' && *p != '\0') return -1;
    return (int)v;
}

/* ---- sink ----------------------------------------------------------------------------- */

void q3n_intervene_init(struct q3n_intervene *iv, const struct q3n_intervene_opts *opts)
{
    memset(iv, 0, sizeof *iv);
    iv->opt = *opts;
    if (iv->opt.weak_bits <= 0) iv->opt.weak_bits = 4;
}

void q3n_intervene_clear(struct q3n_intervene *iv)
{
    iv->n_records = 0;
    iv->n_flips = 0;
    iv->n_replaced = 0;
    iv->n_rounded = 0;
}

void q3n_intervene_free(struct q3n_intervene *iv)
{
    if (!iv) return;
    free(iv->records);
    free(iv->flips);
    free(iv->scratch);
    free(iv->scratch2);
    memset(iv, 0, sizeof *iv);
}

const struct q3n_tap_record *q3n_intervene_find(const struct q3n_intervene *iv, const char *name)
{
    for (size_t i = 0; i < iv->n_records; i++)
        if (strcmp(iv->records[i].name, name) == 0) return &iv->records[i];
    return NULL;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static enum q3n_status grow(void **buf, size_t *have, size_t need, const char *what, struct q3n_error *err)
{
    if (need <= *have) return Q3N_OK;
    void *nb = realloc(*buf, need);
    if (!nb) return q3n_error_set(err, Q3N_ERR_NOMEM, "intervene: out of memory for %s (%zu bytes)", what, need);
    *buf = nb;
    *have = need;
    return Q3N_OK;
}

static double value_at(const void *p, enum q3n_dtype dt, int64_t i)
{
    switch (dt) {
    case Q3N_DTYPE_F32: return ((const float *)p)[i];
    case Q3N_DTYPE_F64: return ((const double *)p)[i];
    case Q3N_DTYPE_I64: return (double)((const int64_t *)p)[i];
    default: return NAN;
    }
}

static void tap_error(double *rel_l2, double *max_abs, double *max_rel, double small, const void *x, const void *g,
                      enum q3n_dtype dt, int64_t n)
{
    double num = 0.0, den = 0.0, mx = 0.0, mr = 0.0;
    *max_rel = NAN;
    if (dt == Q3N_DTYPE_I64) {
        int64_t differ = 0;
        for (int64_t i = 0; i < n; i++) differ += ((const int64_t *)x)[i] != ((const int64_t *)g)[i];
        *rel_l2 = n ? (double)differ / (double)n : 0.0;
        *max_abs = (double)differ;
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        double a = value_at(x, dt, i), b = value_at(g, dt, i);
        double d = a - b;
        num += d * d;
        den += b * b;
        if (isnan(d)) mx = NAN;
        else if (!isnan(mx) && fabs(d) > mx) mx = fabs(d);
        double r = fabs(d) / (fabs(b) > small ? fabs(b) : small);
        if (isnan(r)) mr = NAN;
        else if (!isnan(mr) && r > mr) mr = r;
    }
    *max_abs = mx;
    *max_rel = mr;
    if (isnan(num) || isnan(den)) *rel_l2 = NAN;
    else if (den == 0.0) *rel_l2 = num == 0.0 ? 0.0 : INFINITY;
    else *rel_l2 = sqrt(num / den);
}

static int is_routing_tap(const char *name)
{
    return ends_with(name, ".mlp.gate.topk_idx") || ends_with(name, ".mlp.gate.topk_weight");
}

/* prefix of "<prefix>.mlp.gate.<point>" into out */
static void routing_prefix(char *out, size_t cap, const char *name)
{
    const char *m = strstr(name, ".mlp.gate.");
    size_t n = m ? (size_t)(m - name) : strlen(name);
    if (n >= cap) n = cap - 1;
    memcpy(out, name, n);
    out[n] = '\0';
}

/* Golden probs margin for row t: smallest chosen prob minus the largest unchosen one. */
static double golden_margin(const double *probs, int64_t E, const int64_t *gidx, int64_t K)
{
    double kth = INFINITY, best_out = -INFINITY;
    for (int64_t j = 0; j < K; j++)
        if (gidx[j] >= 0 && gidx[j] < E && probs[gidx[j]] < kth) kth = probs[gidx[j]];
    for (int64_t e = 0; e < E; e++) {
        int chosen = 0;
        for (int64_t j = 0; j < K; j++) chosen |= gidx[j] == e;
        if (!chosen && probs[e] > best_out) best_out = probs[e];
    }
    return kth - best_out;
}

static enum q3n_status detect_flips(struct q3n_intervene *iv, const struct q3n_tap *tap, const int64_t *gidx,
                                    struct q3n_error *err)
{
    if (tap->rank != 2) return Q3N_OK;
    int64_t T = tap->dims[0], K = tap->dims[1];
    const int64_t *idx = tap->data;
    char prefix[Q3N_TAP_NAME_MAX], probs_name[Q3N_TAP_NAME_MAX + 32];
    routing_prefix(prefix, sizeof prefix, tap->name);
    snprintf(probs_name, sizeof probs_name, "%s.mlp.gate.probs", prefix);
    int64_t pn = iv->opt.golden->numel(iv->opt.golden->user, probs_name);
    int have_probs = pn > 0 && T > 0 && pn % T == 0;
    int probs_read = 0;
    int64_t E = have_probs ? pn / T : 0;
    for (int64_t t = 0; t < T; t++) {
        int missing = 0;
        for (int64_t j = 0; j < K; j++) {
            int found = 0;
            for (int64_t m = 0; m < K; m++) found |= idx[t * K + m] == gidx[t * K + j];
            missing += !found;
        }
        if (!missing) continue;
        if (have_probs && !probs_read) {
            enum q3n_status st = grow(&iv->scratch2, &iv->scratch2_bytes, (size_t)pn * sizeof(double), "probs", err);
            if (st != Q3N_OK) return st;
            st = iv->opt.golden->read(iv->opt.golden->user, probs_name, Q3N_DTYPE_F64, iv->scratch2, pn, err);
            if (st != Q3N_OK) return st;
            probs_read = 1;
        }
        if (iv->n_flips == iv->cap_flips) {
            size_t ncap = iv->cap_flips ? iv->cap_flips * 2 : 16;
            struct q3n_flip *nf = realloc(iv->flips, ncap * sizeof *nf);
            if (!nf) return q3n_error_set(err, Q3N_ERR_NOMEM, "intervene: out of memory for flips");
            iv->flips = nf;
            iv->cap_flips = ncap;
        }
        struct q3n_flip *f = &iv->flips[iv->n_flips++];
        memset(f, 0, sizeof *f);
        snprintf(f->prefix, sizeof f->prefix, "%s", prefix);
        f->layer = q3n_tap_layer_index(tap->name);
        f->token = t;
        f->n_differ = missing;
        f->margin = have_probs ? golden_margin((const double *)iv->scratch2 + t * E, E, gidx + t * K, K) : -1.0;
    }
    return Q3N_OK;
}

static enum q3n_status iv_tap(void *user, const struct q3n_tap *tap, struct q3n_error *err)
{
    struct q3n_intervene *iv = user;
    const struct q3n_intervene_opts *o = &iv->opt;
    enum q3n_status st = Q3N_OK;
    int64_t n = q3n_tap_numel(tap);
    int is_float = tap->dtype == Q3N_DTYPE_F32 || tap->dtype == Q3N_DTYPE_F64;
    int readable = is_float || tap->dtype == Q3N_DTYPE_I64;
    size_t esz = q3n_dtype_size(tap->dtype);
    int rounded = 0;

    /* 1. round: what a low-precision implementation would have stored */
    if (tap->writable && is_float) {
        int bits = -1;
        int keep = o->emulate_bf16 && q3n_patterns_match(o->fp32, tap->name); /* forced to fp32 */
        if (keep) bits = -1;
        else if (o->weak_op && q3n_patterns_match(o->weak_op, tap->name)) bits = o->weak_bits;
        else if (o->emulate_bf16) bits = Q3N_BF16_MANT_BITS;
        if (bits >= 0) {
            if (tap->dtype == Q3N_DTYPE_F32) {
                float *x = tap->writable;
                for (int64_t i = 0; i < n; i++) x[i] = q3n_round_mantissa_f32(x[i], bits);
            } else {
                double *x = tap->writable;
                for (int64_t i = 0; i < n; i++) x[i] = q3n_round_mantissa_f64(x[i], bits);
            }
            rounded = 1;
            iv->n_rounded++;
        }
    }

    /* 2. observe */
    int routing = o->force_routing && is_routing_tap(tap->name);
    if (routing && o->force_prefix) {
        char prefix[Q3N_TAP_NAME_MAX];
        routing_prefix(prefix, sizeof prefix, tap->name);
        routing = strcmp(prefix, o->force_prefix) == 0;
    }
    int want_replace = tap->writable && (o->isolate || routing || q3n_patterns_match(o->replace, tap->name));
    int flips = o->detect_flips && tap->dtype == Q3N_DTYPE_I64 && ends_with(tap->name, ".mlp.gate.topk_idx");
    int in_golden = 0;
    if (o->golden && readable && (o->record || want_replace || flips)) {
        int64_t gn = o->golden->numel(o->golden->user, tap->name);
        if (gn >= 0 && gn != n)
            return q3n_error_set(err, Q3N_ERR_SHAPE, "intervene: tap %s has %lld elements, the golden %lld",
                                 tap->name, (long long)n, (long long)gn);
        if (gn == n) {
            st = grow(&iv->scratch, &iv->scratch_bytes, (size_t)n * esz + 8, "golden tap", err);
            if (st != Q3N_OK) return st;
            st = o->golden->read(o->golden->user, tap->name, tap->dtype, iv->scratch, n, err);
            if (st != Q3N_OK) return st;
            in_golden = 1;
        }
    }
    if (o->record) {
        if (iv->n_records == iv->cap_records) {
            size_t ncap = iv->cap_records ? iv->cap_records * 2 : 256;
            struct q3n_tap_record *nr = realloc(iv->records, ncap * sizeof *nr);
            if (!nr) return q3n_error_set(err, Q3N_ERR_NOMEM, "intervene: out of memory for tap records");
            iv->records = nr;
            iv->cap_records = ncap;
        }
        struct q3n_tap_record *r = &iv->records[iv->n_records++];
        memset(r, 0, sizeof *r);
        snprintf(r->name, sizeof r->name, "%s", tap->name);
        r->dtype = tap->dtype;
        r->numel = n;
        r->live = tap->writable != NULL;
        r->in_golden = in_golden;
        r->rounded = rounded;
        r->rel_l2 = NAN;
        r->max_abs = NAN;
        r->max_rel = NAN;
        if (in_golden)
            tap_error(&r->rel_l2, &r->max_abs, &r->max_rel, o->rel_small > 0 ? o->rel_small : 0.1, tap->data,
                      iv->scratch, tap->dtype, n);
        r->hash = q3n_fnv1a(tap->data, (size_t)n * esz);
        r->replaced = want_replace && in_golden;
    }
    if (flips && in_golden) {
        st = detect_flips(iv, tap, iv->scratch, err);
        if (st != Q3N_OK) return st;
    }
    if (o->inner && o->inner->fn) {
        st = o->inner->fn(o->inner->user, tap, err);
        if (st != Q3N_OK) return st;
    }

    /* 3. replace */
    if (want_replace && in_golden) {
        if (routing && o->force_single_token) {
            if (tap->rank < 1 || o->force_token >= tap->dims[0]) return Q3N_OK;
            size_t row = (size_t)(n / tap->dims[0]) * esz;
            memcpy((char *)tap->writable + (size_t)o->force_token * row,
                   (const char *)iv->scratch + (size_t)o->force_token * row, row);
        } else {
            memcpy(tap->writable, iv->scratch, (size_t)n * esz);
        }
        iv->n_replaced++;
    }
    return Q3N_OK;
}

struct q3n_tap_sink q3n_intervene_sink(struct q3n_intervene *iv)
{
    /* only a sink that may write asks for live buffers: a device implementation then copies each
     * tap back, which an observing sink (determinism, records) must not make it do */
    const struct q3n_intervene_opts *o = &iv->opt;
    int writes = o->isolate || o->replace || o->force_routing || o->emulate_bf16 || o->weak_op || o->ask_live ||
                 (o->inner && o->inner->intervene);
    struct q3n_tap_sink s = {.fn = iv_tap, .user = iv, .intervene = writes};
    return s;
}

/* ---- one intervened forward ------------------------------------------------------------ */

enum q3n_status q3n_tool_forward(const struct q3n_tool_run *r, const struct q3n_intervene_opts *o,
                                 struct q3n_intervene *iv, int taps_off, float *logits, double *logits_rel_l2,
                                 struct q3n_error *err)
{
    struct q3n_intervene_opts m;
    if (o) m = *o;
    else memset(&m, 0, sizeof m);
    if (!m.golden) m.golden = r->golden;
    if (!m.emulate_bf16) m.emulate_bf16 = r->emulate_bf16;
    if (!m.fp32) m.fp32 = r->fp32;
    if (!m.weak_op) m.weak_op = r->weak_op;
    if (!m.weak_bits) m.weak_bits = r->weak_bits;
    struct q3n_intervene local;
    struct q3n_intervene *use = iv ? iv : &local;
    q3n_intervene_init(use, &m);
    struct q3n_tap_sink sink = q3n_intervene_sink(use);
    struct q3n_tap_sink off = {.fn = NULL, .user = NULL, .intervene = 0};
    void *session = NULL;
    if (logits_rel_l2) *logits_rel_l2 = NAN;
    enum q3n_status st = r->impl->open(&session, r->model, &r->opt, err);
    if (st == Q3N_OK) st = r->impl->forward(session, logits, r->tokens, r->T, taps_off ? &off : &sink, err);
    if (session) r->impl->close(session);
    if (st == Q3N_OK && logits_rel_l2 && r->golden_logits)
        *logits_rel_l2 = q3n_rel_l2_f32(logits, r->golden_logits, r->T * r->V);
    if (!iv) q3n_intervene_free(&local);
    return st;
}
