/* compare.c — streaming tensor metrics and top-k set comparison; see compare.h. */
#include "compare.h"

#include <math.h>
#include <string.h>

const char *q3n_ulp_kind_name(enum q3n_ulp_kind kind)
{
    switch (kind) {
    case Q3N_ULP_NONE: return "none";
    case Q3N_ULP_F32: return "float32";
    case Q3N_ULP_BF16: return "bfloat16";
    }
    return "unknown";
}

/* Maps a float's bits onto an unsigned line where adjacent floats differ by 1 and -0 = +0. */
static uint32_t f32_ordered(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (u & 0x80000000u) ? 0x80000000u - (u & 0x7fffffffu) : 0x80000000u + u;
}

double q3n_ulp_distance(double a, double b, enum q3n_ulp_kind kind)
{
    if (kind == Q3N_ULP_NONE) return NAN;
    uint32_t ka = f32_ordered((float)a), kb = f32_ordered((float)b);
    double d = (double)(ka > kb ? ka - kb : kb - ka);
    return kind == Q3N_ULP_BF16 ? d / 65536.0 : d;
}

/* Histogram bin of a distance d > 0: the binary exponent e of d (d in [2^e, 2^(e+1))) and the top
 * three mantissa bits m select [2^e (1 + m/8), 2^e (1 + (m+1)/8)), read straight from the bits. */
static int ulp_bin(double d)
{
    if (d == 0.0) return 0;
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    int e = (int)((u >> 52) & 0x7ff) - 1023;
    int m = (int)((u >> 49) & 7);
    if (e < Q3N_ULP_MIN_EXP) return 1;
    if (e >= Q3N_ULP_MIN_EXP + Q3N_ULP_OCTAVES) return Q3N_ULP_BINS - 1;
    return 1 + (e - Q3N_ULP_MIN_EXP) * Q3N_ULP_SUB + m;
}

/* Upper edge of a histogram bin. */
static double ulp_bin_upper(int bin)
{
    if (bin == 0) return 0.0;
    if (bin == Q3N_ULP_BINS - 1) return INFINITY;
    int e = (bin - 1) / Q3N_ULP_SUB + Q3N_ULP_MIN_EXP, m = (bin - 1) % Q3N_ULP_SUB;
    return ldexp(1.0 + (double)(m + 1) / Q3N_ULP_SUB, e);
}

void q3n_cmp_init(struct q3n_cmp_acc *acc, const struct q3n_tolerance *tol, enum q3n_ulp_kind ulp_kind)
{
    memset(acc, 0, sizeof *acc);
    acc->rtol = tol->rtol;
    acc->atol = tol->atol;
    acc->small = tol->small;
    acc->ulp_kind = ulp_kind;
    acc->m.first_nonfinite_bad_index = -1;
    acc->m.max_abs_index = -1;
    acc->m.max_rel_index = -1;
    acc->m.bound_ratio_index = -1;
}

void q3n_cmp_feed(struct q3n_cmp_acc *acc, const double *a, const double *b, int64_t n, int64_t index0)
{
    struct q3n_metrics *m = &acc->m;
    for (int64_t i = 0; i < n; i++) {
        double x = a[i], y = b[i];
        int64_t idx = index0 + i;
        m->numel++;
        if (!isfinite(x) || !isfinite(y)) {
            m->nan_a += isnan(x) != 0;
            m->inf_a += isinf(x) != 0;
            m->nan_b += isnan(y) != 0;
            m->inf_b += isinf(y) != 0;
            int agree = (isnan(x) && isnan(y)) || (isinf(x) && isinf(y) && x == y);
            if (!agree) {
                if (m->nonfinite_bad == 0) m->first_nonfinite_bad_index = idx;
                m->nonfinite_bad++;
            }
            continue;
        }
        m->finite_pairs++;
        double d = x - y, err = fabs(d), mag = fabs(y);
        double denom = mag > acc->small ? mag : acc->small;
        double bound = acc->atol + acc->rtol * denom;
        acc->sum_abs += err;
        acc->sum_sq_err += d * d;
        acc->sum_sq_a += x * x;
        acc->sum_sq_b += y * y;
        acc->sum_ab += x * y;
        if (m->max_abs_index < 0 || err > m->max_abs) {
            m->max_abs = err;
            m->max_abs_index = idx;
            m->a_at_max = x;
            m->b_at_max = y;
        }
        /* Divisions only for candidates: x/y > M  <=>  x > M*y for y > 0 (an infinite M is never
         * exceeded; y == 0 gives 0 or +inf). */
        if (m->max_rel_index < 0 || err > m->max_rel * denom) {
            double rel = denom > 0 ? err / denom : (err > 0 ? INFINITY : 0.0);
            if (m->max_rel_index < 0 || rel > m->max_rel) {
                m->max_rel = rel;
                m->max_rel_index = idx;
            }
        }
        if (m->bound_ratio_index < 0 || err > m->bound_ratio * bound) {
            double ratio = bound > 0 ? err / bound : (err > 0 ? INFINITY : 0.0);
            if (m->bound_ratio_index < 0 || ratio > m->bound_ratio) {
                m->bound_ratio = ratio;
                m->bound_ratio_index = idx;
            }
        }
        if (!(err <= bound)) m->outside++;
        double need = err - acc->atol;
        if (need > 0 && need > m->min_rtol * denom) {
            double r = denom > 0 ? need / denom : INFINITY;
            if (r > m->min_rtol) m->min_rtol = r;
        }
        if (acc->ulp_kind != Q3N_ULP_NONE) {
            double u = q3n_ulp_distance(x, y, acc->ulp_kind);
            if (u > m->ulp_max) m->ulp_max = u;
            acc->hist[ulp_bin(u)]++;
        }
    }
}

void q3n_cmp_finish(const struct q3n_cmp_acc *acc, struct q3n_metrics *m)
{
    *m = acc->m;
    m->ulp_kind = acc->ulp_kind;
    int64_t n = m->finite_pairs;
    if (n == 0) {
        m->mean_abs = m->rmse = m->rel_l2 = 0.0;
        m->cosine = 1.0;
        m->norm_b = 0.0;
        m->frac_outside = 0.0;
        m->ulp_max = m->ulp_p99 = acc->ulp_kind == Q3N_ULP_NONE ? NAN : 0.0;
        return;
    }
    m->mean_abs = acc->sum_abs / (double)n;
    m->rmse = sqrt(acc->sum_sq_err / (double)n);
    m->norm_b = sqrt(acc->sum_sq_b);
    if (acc->sum_sq_b > 0)
        m->rel_l2 = sqrt(acc->sum_sq_err) / m->norm_b;
    else
        m->rel_l2 = acc->sum_sq_err > 0 ? INFINITY : 0.0;
    if (acc->sum_sq_a == 0 && acc->sum_sq_b == 0)
        m->cosine = 1.0;
    else if (acc->sum_sq_a == 0 || acc->sum_sq_b == 0)
        m->cosine = 0.0;
    else
        m->cosine = acc->sum_ab / (sqrt(acc->sum_sq_a) * sqrt(acc->sum_sq_b));
    m->frac_outside = (double)m->outside / (double)n;
    if (acc->ulp_kind == Q3N_ULP_NONE) {
        m->ulp_max = m->ulp_p99 = NAN;
    } else {
        int64_t want = (int64_t)ceil(0.99 * (double)n), cum = 0;
        m->ulp_p99 = m->ulp_max;
        for (int bin = 0; bin < Q3N_ULP_BINS; bin++) {
            cum += acc->hist[bin];
            if (cum >= want) {
                double up = ulp_bin_upper(bin);
                m->ulp_p99 = up < m->ulp_max ? up : m->ulp_max;
                break;
            }
        }
    }
}

void q3n_compare_f64(struct q3n_metrics *m, const double *a, const double *b, int64_t n,
                     const struct q3n_tolerance *tol, enum q3n_ulp_kind ulp_kind)
{
    struct q3n_cmp_acc acc;
    q3n_cmp_init(&acc, tol, ulp_kind);
    q3n_cmp_feed(&acc, a, b, n, 0);
    q3n_cmp_finish(&acc, m);
}

int q3n_judge_metrics(const struct q3n_metrics *m, const struct q3n_tolerance *tol, double oracle_budget,
                      double *headroom_pct)
{
    double use;
    int pass;
    if (oracle_budget > 0) {
        use = m->rel_l2 / oracle_budget;
        pass = m->nonfinite_bad == 0 && m->rel_l2 <= oracle_budget;
    } else {
        double l2_use = tol->rel_l2 > 0 ? m->rel_l2 / tol->rel_l2 : (m->rel_l2 > 0 ? INFINITY : 0.0);
        use = m->bound_ratio > l2_use ? m->bound_ratio : l2_use;
        if (isnan(m->rel_l2) || isnan(m->bound_ratio)) use = NAN;
        pass = m->nonfinite_bad == 0 && m->outside == 0 && m->rel_l2 <= tol->rel_l2;
    }
    if (m->nonfinite_bad > 0) use = INFINITY;
    if (headroom_pct) *headroom_pct = 100.0 * use;
    return pass;
}

void q3n_index_decode(int64_t flat, int rank, const int64_t *dims, int64_t *coords)
{
    for (int i = rank - 1; i >= 0; i--) {
        int64_t d = dims[i] > 0 ? dims[i] : 1;
        coords[i] = flat % d;
        flat /= d;
    }
}

static double bf16_to_f64(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static double f16_to_f64(uint16_t h)
{
    int sign = h >> 15, e = (h >> 10) & 0x1f, frac = h & 0x3ff;
    double v;
    if (e == 0)
        v = ldexp((double)frac, -24);
    else if (e == 31)
        v = frac ? NAN : INFINITY;
    else
        v = ldexp((double)(frac | 0x400), e - 25);
    return sign ? -v : v;
}

void q3n_to_f64(double *out, const void *data, enum q3n_dtype dtype, int64_t n)
{
    switch (dtype) {
    case Q3N_DTYPE_F32: {
        const float *p = data;
        for (int64_t i = 0; i < n; i++) out[i] = p[i];
        break;
    }
    case Q3N_DTYPE_F64: memcpy(out, data, (size_t)n * sizeof *out); break;
    case Q3N_DTYPE_I64: {
        const int64_t *p = data;
        for (int64_t i = 0; i < n; i++) out[i] = (double)p[i];
        break;
    }
    case Q3N_DTYPE_BF16: {
        const uint16_t *p = data;
        for (int64_t i = 0; i < n; i++) out[i] = bf16_to_f64(p[i]);
        break;
    }
    case Q3N_DTYPE_F16: {
        const uint16_t *p = data;
        for (int64_t i = 0; i < n; i++) out[i] = f16_to_f64(p[i]);
        break;
    }
    case Q3N_DTYPE_U8: {
        const uint8_t *p = data;
        for (int64_t i = 0; i < n; i++) out[i] = p[i];
        break;
    }
    }
}

/* --- top-k sets ------------------------------------------------------------------------- */

void q3n_topk_init(struct q3n_topk_stats *s, int64_t k)
{
    memset(s, 0, sizeof *s);
    s->k = k;
    s->first_flip_token = -1;
    s->first_hard_token = -1;
    s->max_near_tie_margin = NAN;
    s->min_hard_margin = NAN;
}

static int contains(const int64_t *set, int64_t K, int64_t e)
{
    for (int64_t j = 0; j < K; j++)
        if (set[j] == e) return 1;
    return 0;
}

void q3n_topk_feed(struct q3n_topk_stats *s, const int64_t *a_idx, const int64_t *b_idx, const double *b_probs,
                   int64_t row0, int64_t nrows, int64_t E, double margin, uint8_t *flipped)
{
    int64_t K = s->k;
    for (int64_t r = 0; r < nrows; r++) {
        const int64_t *a = a_idx + r * K, *b = b_idx + r * K;
        const double *p = b_probs ? b_probs + r * E : NULL;
        int64_t t = row0 + r;
        s->tokens++;
        int bad = 0;
        for (int64_t j = 0; j < K; j++) {
            if (a[j] < 0 || a[j] >= E || b[j] < 0 || b[j] >= E) bad = 1;
        }
        if (bad) s->invalid++;
        int64_t swapped = 0;
        double hi_out = -INFINITY, lo_in = INFINITY;
        for (int64_t j = 0; j < K; j++) {
            if (!contains(a, K, b[j])) {
                swapped++;
                if (p && b[j] >= 0 && b[j] < E && p[b[j]] > hi_out) hi_out = p[b[j]];
            }
            if (!contains(b, K, a[j]) && p && a[j] >= 0 && a[j] < E && p[a[j]] < lo_in) lo_in = p[a[j]];
        }
        if (flipped) flipped[r] = (uint8_t)(swapped > 0 || bad);
        if (swapped == 0 && !bad) continue;
        s->flipped_tokens++;
        s->swapped += swapped;
        if (s->first_flip_token < 0) s->first_flip_token = t;
        double mg = (p && !bad) ? hi_out - lo_in : INFINITY;
        if (mg <= margin) {
            s->near_tie_tokens++;
            if (isnan(s->max_near_tie_margin) || mg > s->max_near_tie_margin) s->max_near_tie_margin = mg;
        } else {
            s->hard_tokens++;
            if (s->first_hard_token < 0) s->first_hard_token = t;
            if (isnan(s->min_hard_margin) || mg < s->min_hard_margin) s->min_hard_margin = mg;
        }
    }
}

int q3n_topk_align_weights(double *out_a, const int64_t *a_idx, const double *a_w, const int64_t *b_idx,
                           int64_t K)
{
    for (int64_t j = 0; j < K; j++) {
        int64_t found = -1;
        for (int64_t i = 0; i < K; i++)
            if (a_idx[i] == b_idx[j]) found = i;
        if (found < 0) return 0;
        out_a[j] = a_w[found];
    }
    return 1;
}
