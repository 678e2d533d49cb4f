/* fuzz_delta.c — the delta-rule equivalence fuzzer: recurrent ≡ chunked (every chunk size)
 * ≡ naive ≡ a double-precision oracle, on outputs and final state, with inputs drawn in
 * distribution; see fuzz_cases.h and docs/fuzzing.md. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../ref/ops.h"
#include "fuzz_cases.h"
#include "rng.h"

#define GUARD 16
#define SENTINEL ((ref_real)-12345.6789)

/* ---- drawing ------------------------------------------------------------------------ */

static int64_t pick(struct q3n_rng *r, const int64_t *v, int64_t n)
{
    return v[q3n_rng_int(r, 0, n - 1)];
}

void q3n_fuzz_delta_case_draw(struct q3n_fuzz_delta_case *c, uint64_t seed)
{
    static const int64_t dims[] = {1, 2, 3, 4, 7, 8, 16, 24, 32, 60, 64, 100, 128};
    static const int64_t fixed_T[] = {1, 2, 63, 64, 65, 75, 127, 128, 129};
    static const double decay[][2] = {{1e-4, 1e-2}, {1e-2, 1.0}, {1.0, 20.0}, {1e-4, 20.0}};
    struct q3n_rng r;
    memset(c, 0, sizeof *c);
    c->seed = seed;
    q3n_rng_seed(&r, seed ^ 0x64656c7461ull);

    c->NK = q3n_rng_int(&r, 1, 3);
    c->NV = c->NK * q3n_rng_int(&r, 1, 4);
    c->DK = q3n_rng_uniform(&r) < 0.7 ? pick(&r, dims, 13) : q3n_rng_int(&r, 1, 64);
    c->DV = q3n_rng_uniform(&r) < 0.7 ? pick(&r, dims, 13) : q3n_rng_int(&r, 1, 64);
    /* keep a case under ~4 M state elements x tokens so 200 cases run in about a minute */
    while (c->NV * c->DK * c->DV > 32768 && c->NV > 1) c->NV = c->NV > c->NK ? c->NV - c->NK : c->NV / 2;
    if (c->NV % c->NK != 0) c->NK = 1;

    c->chunks[c->n_chunks++] = 64;
    int64_t extra = q3n_rng_int(&r, 1, 3);
    for (int64_t i = 0; i < extra; i++) {
        int64_t C = q3n_rng_uniform(&r) < 0.3 ? q3n_rng_int(&r, 1, 8) : q3n_rng_int(&r, 1, 128);
        int dup = 0;
        for (int j = 0; j < c->n_chunks; j++) dup |= c->chunks[j] == C;
        if (!dup) c->chunks[c->n_chunks++] = C;
    }
    int64_t C = c->chunks[q3n_rng_int(&r, 0, c->n_chunks - 1)];
    switch (q3n_rng_int(&r, 0, 5)) {
    case 0:
    case 1: c->T = pick(&r, fixed_T, 9); break;
    case 2: c->T = C + q3n_rng_int(&r, -1, 1); break;
    case 3: c->T = 2 * C + q3n_rng_int(&r, -1, 1); break;
    default: c->T = q3n_rng_int(&r, 1, 200); break;
    }
    if (c->T < 1) c->T = 1;
    if (c->T > 260) c->T = q3n_rng_int(&r, 1, 260);
    if (c->T * c->NV * c->DK * c->DV > 4000000) c->T = 4000000 / (c->NV * c->DK * c->DV) + 1;
    /* the chunk equal to T and one past it when room is left */
    if (c->n_chunks < 6 && q3n_rng_uniform(&r) < 0.3) {
        int dup = 0;
        for (int j = 0; j < c->n_chunks; j++) dup |= c->chunks[j] == c->T;
        if (!dup) c->chunks[c->n_chunks++] = c->T;
    }

    int mode = (int)q3n_rng_int(&r, 0, 3);
    c->g_min_mag = decay[mode][0];
    c->g_max_mag = decay[mode][1];
    c->beta_mode = (enum q3n_fuzz_beta)q3n_rng_int(&r, 0, Q3N_FUZZ_BETA_COUNT - 1);
    c->zero_gates = q3n_rng_uniform(&r) < 0.25;
    c->initial_state = q3n_rng_uniform(&r) < 0.3;
}

void q3n_fuzz_delta_case_describe(const struct q3n_fuzz_delta_case *c, char *buf, size_t cap)
{
    static const char *const beta_names[] = {"mid", "near0", "near1", "mixed"};
    char chunks[64] = "";
    size_t used = 0;
    for (int i = 0; i < c->n_chunks && used < sizeof chunks; i++)
        used += (size_t)snprintf(chunks + used, sizeof chunks - used, "%s%lld", i ? "," : "",
                                 (long long)c->chunks[i]);
    snprintf(buf, cap, "delta T=%lld NK=%lld NV=%lld DK=%lld DV=%lld C={%s} |g| in [%g,%g] beta=%s zero_gates=%d "
             "state0=%d",
             (long long)c->T, (long long)c->NK, (long long)c->NV, (long long)c->DK, (long long)c->DV, chunks,
             c->g_min_mag, c->g_max_mag, beta_names[c->beta_mode], c->zero_gates, c->initial_state);
}

static double sigmoid(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

static double softplus(double x)
{
    return x > 20.0 ? x : log1p(exp(x));
}

static void l2_normalise(double *x, int64_t n, double scale)
{
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    double inv = scale / sqrt(ss + 1e-6);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

static double draw_b(struct q3n_rng *r, enum q3n_fuzz_beta mode)
{
    if (mode == Q3N_FUZZ_BETA_MIXED) mode = (enum q3n_fuzz_beta)q3n_rng_int(r, 0, 2);
    switch (mode) {
    case Q3N_FUZZ_BETA_NEAR0: return q3n_rng_range(r, -12.0, -6.0);
    case Q3N_FUZZ_BETA_NEAR1: return q3n_rng_range(r, 6.0, 12.0);
    default: return q3n_rng_normal(r);
    }
}

void q3n_fuzz_delta_inputs(const struct q3n_fuzz_delta_case *c, double *q, double *k, double *v, double *g,
                           double *beta, double *state0)
{
    const int64_t T = c->T, NK = c->NK, NV = c->NV, DK = c->DK, DV = c->DV;
    struct q3n_rng r;
    q3n_rng_seed(&r, c->seed ^ 0x696e70757473ull);
    for (int64_t i = 0; i < T * NK * DK; i++) q[i] = q3n_rng_normal(&r);
    for (int64_t i = 0; i < T * NK * DK; i++) k[i] = q3n_rng_normal(&r);
    for (int64_t i = 0; i < T * NK; i++) {
        l2_normalise(q + i * DK, DK, 1.0 / sqrt((double)DK));
        l2_normalise(k + i * DK, DK, 1.0);
    }
    for (int64_t i = 0; i < T * NV * DV; i++) v[i] = q3n_rng_normal(&r);
    /* g = -exp(A_log) * softplus(a + dt_bias): exp(A_log) = m / ln 2 puts the median |g| at m,
     * m log-uniform per head in the case's range. */
    double A[64];
    double lo = log(c->g_min_mag), hi = log(c->g_max_mag);
    for (int64_t h = 0; h < NV && h < 64; h++) A[h] = exp(q3n_rng_range(&r, lo, hi)) / log(2.0);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < NV; h++) {
            double a = q3n_rng_normal(&r), dt_bias = q3n_rng_range(&r, -0.5, 0.5);
            g[t * NV + h] = -A[h % 64] * softplus(a + dt_bias);
            beta[t * NV + h] = sigmoid(draw_b(&r, c->beta_mode));
            if (c->zero_gates) {
                double u = q3n_rng_uniform(&r);
                if (u < 0.1) g[t * NV + h] = 0.0;
                else if (u < 0.2) beta[t * NV + h] = 0.0;
                else if (u < 0.25) g[t * NV + h] = beta[t * NV + h] = 0.0;
            }
        }
    for (int64_t i = 0; i < NV * DK * DV; i++) state0[i] = c->initial_state ? 0.5 * q3n_rng_normal(&r) : 0.0;
}

void q3n_fuzz_delta_oracle(double *o, double *state, const double *q, const double *k, const double *v,
                           const double *g, const double *beta, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                           int64_t DV)
{
    const int64_t r = NV / NK;
    double u[1024];
    Q3N_REQUIRE(NV % NK == 0 && DV <= 1024);
    for (int64_t h = 0; h < NV; h++) {
        double *S = state + h * DK * DV; /* [DK, DV] */
        for (int64_t t = 0; t < T; t++) {
            const double *kt = k + (t * NK + h / r) * DK, *qt = q + (t * NK + h / r) * DK;
            const double *vt = v + (t * NV + h) * DV;
            double decay = exp(g[t * NV + h]), b = beta[t * NV + h];
            for (int64_t i = 0; i < DK * DV; i++) S[i] *= decay;
            for (int64_t j = 0; j < DV; j++) {
                double kv = 0.0;
                for (int64_t i = 0; i < DK; i++) kv += S[i * DV + j] * kt[i];
                u[j] = b * (vt[j] - kv);
            }
            for (int64_t i = 0; i < DK; i++)
                for (int64_t j = 0; j < DV; j++) S[i * DV + j] += kt[i] * u[j];
            double *ot = o + (t * NV + h) * DV;
            for (int64_t j = 0; j < DV; j++) {
                double acc = 0.0;
                for (int64_t i = 0; i < DK; i++) acc += S[i * DV + j] * qt[i];
                ot[j] = acc;
            }
        }
    }
}

double q3n_fuzz_delta_conditioning(const double *k, const double *g, const double *beta, int64_t T, int64_t NK,
                                   int64_t NV, int64_t DK, int64_t C)
{
    const int64_t r = NV / NK;
    double worst = 1.0;
    double *A = malloc((size_t)(C * C) * sizeof *A);
    double *X = malloc((size_t)(C * C) * sizeof *X);
    double *G = malloc((size_t)C * sizeof *G);
    if (!A || !X || !G) {
        free(A), free(X), free(G);
        return INFINITY; /* treated as unknown conditioning: the caller's tolerance is then loose */
    }
    for (int64_t h = 0; h < NV; h++)
        for (int64_t c0 = 0; c0 < T; c0 += C) {
            int64_t n = T - c0 < C ? T - c0 : C;
            double acc = 0.0;
            for (int64_t i = 0; i < n; i++) G[i] = acc += g[(c0 + i) * NV + h];
            for (int64_t i = 0; i < n; i++)
                for (int64_t j = 0; j < i; j++) {
                    const double *ki = k + ((c0 + i) * NK + h / r) * DK, *kj = k + ((c0 + j) * NK + h / r) * DK;
                    double d = 0.0;
                    for (int64_t e = 0; e < DK; e++) d += ki[e] * kj[e];
                    A[i * C + j] = beta[(c0 + i) * NV + h] * d * exp(G[i] - G[j]);
                }
            /* X = (I + A)^-1 by forward substitution: X_i = e_i - sum_{j<i} A_ij X_j. */
            for (int64_t i = 0; i < n; i++) {
                for (int64_t m = 0; m < n; m++) X[i * C + m] = i == m ? 1.0 : 0.0;
                for (int64_t j = 0; j < i; j++)
                    for (int64_t m = 0; m <= j; m++) X[i * C + m] -= A[i * C + j] * X[j * C + m];
                double row = 0.0;
                for (int64_t m = 0; m <= i; m++) row += fabs(X[i * C + m]);
                if (!(row <= worst)) worst = row; /* NaN propagates as the worst */
            }
        }
    free(A), free(X), free(G);
    return worst;
}

/* ---- the reference's forms behind void pointers --------------------------------------- */

static void ref_recurrent_v(void *o, void *state, const void *q, const void *k, const void *v, const void *g,
                            const void *beta, int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV)
{
    ref_delta_rule_recurrent(o, state, q, k, v, g, beta, T, NK, NV, DK, DV);
}

static void ref_chunked_v(void *o, void *state, const void *q, const void *k, const void *v, const void *g,
                          const void *beta, void *scratch, int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV,
                          int64_t C)
{
    ref_delta_rule_chunked(o, state, q, k, v, g, beta, scratch, T, NK, NV, DK, DV, C);
}

static void ref_naive_v(void *o, void *state, const void *q, const void *k, const void *v, const void *g,
                        const void *beta, void *scratch, int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV)
{
    ref_delta_rule_naive(o, state, q, k, v, g, beta, scratch, T, NK, NV, DK, DV);
}

void q3n_fuzz_delta_ref_forms(struct q3n_fuzz_delta_forms *forms)
{
    forms->recurrent = ref_recurrent_v;
    forms->chunked = ref_chunked_v;
    forms->naive = ref_naive_v;
}

size_t q3n_fuzz_real_size(void)
{
    return sizeof(ref_real);
}

/* ---- running and checking -------------------------------------------------------------- */

/* A ref_real buffer of n elements followed by GUARD sentinels. */
static ref_real *guarded(int64_t n)
{
    ref_real *x = malloc((size_t)(n + GUARD) * sizeof *x);
    if (x)
        for (int64_t i = 0; i < GUARD; i++) x[n + i] = SENTINEL;
    return x;
}

/* 1 if the guard values after x[n] are intact; re-arms them either way, so the next call is
 * judged on its own writes. */
static int guard_ok(ref_real *x, int64_t n)
{
    int ok = 1;
    for (int64_t i = 0; i < GUARD; i++) {
        if (!(x[n + i] == SENTINEL)) ok = 0;
        x[n + i] = SENTINEL;
    }
    return ok;
}

static void poison(ref_real *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) x[i] = (ref_real)NAN;
}

struct checker {
    struct q3n_fuzz_delta_result *res;
    double tol;
};

/* rel_l2(got, want) <= tol, fail-closed (NaN fails); records the worst ratio. */
static void check(struct checker *ck, const char *what, const ref_real *got, const double *want, int64_t n)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d;
        den += want[i] * want[i];
    }
    double rel = sqrt(num) / (sqrt(den) + 1e-30);
    double ratio = rel / ck->tol;
    ck->res->checks++;
    if (!(rel <= ck->tol)) {
        ck->res->failed = 1;
        if (!(ratio <= ck->res->worst_ratio)) ratio = INFINITY; /* NaN ranks first */
    }
    if (ratio > ck->res->worst_ratio || (ck->res->worst[0] == '\0')) {
        ck->res->worst_ratio = ratio;
        snprintf(ck->res->worst, sizeof ck->res->worst, "%s: rel_l2=%.3g tol=%.3g", what, rel, ck->tol);
    }
}

static void guard_fail(struct checker *ck, const char *what)
{
    ck->res->checks++;
    if (ck->res->failed && ck->res->worst_ratio == INFINITY) return; /* keep the first non-finite failure */
    ck->res->failed = 1;
    ck->res->worst_ratio = INFINITY;
    snprintf(ck->res->worst, sizeof ck->res->worst, "%s: wrote past the end of its buffer", what);
}

static void to_real(ref_real *dst, const double *src, int64_t n)
{
    for (int64_t i = 0; i < n; i++) dst[i] = (ref_real)src[i];
}

static void to_double(double *dst, const ref_real *src, int64_t n)
{
    for (int64_t i = 0; i < n; i++) dst[i] = (double)src[i];
}

enum q3n_status q3n_fuzz_delta_run(const struct q3n_fuzz_delta_case *c, const struct q3n_fuzz_delta_forms *forms,
                                   struct q3n_fuzz_delta_result *res, struct q3n_error *err)
{
    const int64_t T = c->T, NK = c->NK, NV = c->NV, DK = c->DK, DV = c->DV;
    const int64_t nq = T * NK * DK, nv = T * NV * DV, ng = T * NV, ns = NV * DK * DV;
    enum q3n_status st = Q3N_OK;
    int64_t max_c = 1, scratch_n = ref_delta_rule_naive_scratch(T, DK, DV);
    for (int i = 0; i < c->n_chunks; i++) {
        int64_t need = ref_delta_rule_chunked_scratch(c->chunks[i], DK, DV);
        if (need > scratch_n) scratch_n = need;
        if (c->chunks[i] > max_c) max_c = c->chunks[i];
    }
    double *dq = malloc((size_t)nq * sizeof *dq), *dk = malloc((size_t)nq * sizeof *dk);
    double *dv = malloc((size_t)nv * sizeof *dv), *dg = malloc((size_t)ng * sizeof *dg);
    double *db = malloc((size_t)ng * sizeof *db), *ds0 = malloc((size_t)ns * sizeof *ds0);
    double *want_o = malloc((size_t)nv * sizeof *want_o), *want_s = malloc((size_t)ns * sizeof *want_s);
    double *want_sp = malloc((size_t)ns * sizeof *want_sp), *tmp_o = malloc((size_t)nv * sizeof *tmp_o);
    ref_real *q = guarded(nq), *k = guarded(nq), *v = guarded(nv), *g = guarded(ng), *beta = guarded(ng);
    ref_real *s0 = guarded(ns), *o = guarded(nv), *s = guarded(ns), *sp = guarded(ns);
    ref_real *scratch = guarded(scratch_n);
    struct checker ck = {res, 0.0};
    char what[128];

    memset(res, 0, sizeof *res);
    if (!dq || !dk || !dv || !dg || !db || !ds0 || !want_o || !want_s || !want_sp || !tmp_o || !q || !k || !v ||
        !g || !beta || !s0 || !o || !s || !sp || !scratch) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "fuzz delta: out of memory for T=%lld NV=%lld DK=%lld DV=%lld",
                           (long long)T, (long long)NV, (long long)DK, (long long)DV);
        goto done;
    }

    /* Inputs rounded to ref_real; the oracle reads exactly the rounded values. */
    q3n_fuzz_delta_inputs(c, dq, dk, dv, dg, db, ds0);
    to_real(q, dq, nq), to_real(k, dk, nq), to_real(v, dv, nv), to_real(g, dg, ng), to_real(beta, db, ng);
    to_real(s0, ds0, ns);
    to_double(dq, q, nq), to_double(dk, k, nq), to_double(dv, v, nv), to_double(dg, g, ng), to_double(db, beta, ng);
    to_double(ds0, s0, ns);
    memcpy(want_s, ds0, (size_t)ns * sizeof *want_s);
    q3n_fuzz_delta_oracle(want_o, want_s, dq, dk, dv, dg, db, T, NK, NV, DK, DV);

    res->cond = q3n_fuzz_delta_conditioning(dk, dg, db, T, NK, NV, DK, max_c);
    /* Tolerance: base x the solve's conditioning x sqrt(C/64) for chunks longer than 64 (the
     * within-chunk cumulative decay G grows with C, and exp(G_i - G_j) loses its relative
     * accuracy with |G|). Measured over 3000 drawn cases (docs/fuzzing.md): the worst float
     * case used 47 % of its tolerance (rel_l2 1.05e-5), the worst double one 0.4 %. */
    double base = sizeof(ref_real) == sizeof(double) ? 1e-11 : 2e-5;
    double chunk_factor = max_c > 64 ? sqrt((double)max_c / 64.0) : 1.0;
    ck.tol = base * chunk_factor * (isfinite(res->cond) && res->cond > 1.0 ? res->cond : 1.0);

#define RUN_AND_CHECK(label, call, with_scratch)                                    \
    do {                                                                            \
        poison(o, nv);                                                              \
        if (with_scratch) poison(scratch, scratch_n);                               \
        memcpy(s, s0, (size_t)ns * sizeof *s);                                      \
        call;                                                                       \
        if (!guard_ok(o, nv) || !guard_ok(s, ns) || !guard_ok(scratch, scratch_n)) \
            guard_fail(&ck, label);                                                 \
        snprintf(what, sizeof what, "%s o vs oracle", label);                       \
        check(&ck, what, o, want_o, nv);                                            \
        snprintf(what, sizeof what, "%s state vs oracle", label);                   \
        check(&ck, what, s, want_s, ns);                                            \
    } while (0)

    RUN_AND_CHECK("recurrent", forms->recurrent(o, s, q, k, v, g, beta, T, NK, NV, DK, DV), 0);
    RUN_AND_CHECK("recurrent one token per call",
                  for (int64_t t = 0; t < T; t++) forms->recurrent(o + t * NV * DV, s, q + t * NK * DK,
                                                                   k + t * NK * DK, v + t * NV * DV, g + t * NV,
                                                                   beta + t * NV, 1, NK, NV, DK, DV),
                  0);
    RUN_AND_CHECK("naive", forms->naive(o, s, q, k, v, g, beta, scratch, T, NK, NV, DK, DV), 1);
    for (int i = 0; i < c->n_chunks; i++) {
        int64_t C = c->chunks[i];
        char label[48];
        snprintf(label, sizeof label, "chunked(C=%lld)", (long long)C);
        RUN_AND_CHECK(label, forms->chunked(o, s, q, k, v, g, beta, scratch, T, NK, NV, DK, DV, C), 1);
    }

    /* State after a prefix: p at, or one off, a multiple of the case's first extra chunk. */
    if (T >= 2) {
        int64_t C = c->chunks[c->n_chunks > 1 ? 1 : 0];
        struct q3n_rng r;
        q3n_rng_seed(&r, c->seed ^ 0x707265666978ull);
        int64_t p = C * q3n_rng_int(&r, 1, T / C + 1) + q3n_rng_int(&r, -1, 1);
        if (p < 1 || p >= T) p = q3n_rng_int(&r, 1, T - 1);
        memcpy(want_sp, ds0, (size_t)ns * sizeof *want_sp);
        q3n_fuzz_delta_oracle(tmp_o, want_sp, dq, dk, dv, dg, db, p, NK, NV, DK, DV);
        poison(o, nv);
        poison(scratch, scratch_n);
        memcpy(sp, s0, (size_t)ns * sizeof *sp);
        forms->chunked(o, sp, q, k, v, g, beta, scratch, p, NK, NV, DK, DV, C);
        snprintf(what, sizeof what, "chunked(C=%lld) state after prefix p=%lld vs oracle", (long long)C,
                 (long long)p);
        check(&ck, what, sp, want_sp, ns);
        memcpy(s, sp, (size_t)ns * sizeof *s);
        poison(scratch, scratch_n);
        forms->chunked(o + p * NV * DV, s, q + p * NK * DK, k + p * NK * DK, v + p * NV * DV, g + p * NV,
                       beta + p * NV, scratch, T - p, NK, NV, DK, DV, C);
        if (!guard_ok(o, nv) || !guard_ok(s, ns) || !guard_ok(sp, ns) || !guard_ok(scratch, scratch_n))
            guard_fail(&ck, "chunked prefix split");
        snprintf(what, sizeof what, "chunked(C=%lld) split at p=%lld o vs oracle", (long long)C, (long long)p);
        check(&ck, what, o, want_o, nv);
        snprintf(what, sizeof what, "chunked(C=%lld) split at p=%lld final state vs oracle", (long long)C,
                 (long long)p);
        check(&ck, what, s, want_s, ns);
    }
#undef RUN_AND_CHECK
    if (!guard_ok(q, nq) || !guard_ok(k, nq) || !guard_ok(v, nv) || !guard_ok(g, ng) || !guard_ok(beta, ng) ||
        !guard_ok(s0, ns))
        guard_fail(&ck, "an input");

done:
    free(dq), free(dk), free(dv), free(dg), free(db), free(ds0), free(want_o), free(want_s), free(want_sp);
    free(tmp_o), free(q), free(k), free(v), free(g), free(beta), free(s0), free(o), free(s), free(sp);
    free(scratch);
    return st;
}
