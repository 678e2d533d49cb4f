/* report_text.c — the terminal report, the format dispatcher and helpers shared by every
 * writer; see report.h. */
#include "outfile.h"
#include "report.h"

#include <math.h>
#include <string.h>

int q3n_report_format_parse(const char *s, enum q3n_report_format *fmt)
{
    static const char *names[] = {"text", "md", "html", "junit", "json"};
    for (int i = 0; i < 5; i++)
        if (strcmp(s, names[i]) == 0) {
            *fmt = (enum q3n_report_format)i;
            return 1;
        }
    return 0;
}

enum q3n_status q3n_report_write(FILE *out, const struct q3n_result *r, enum q3n_report_format fmt,
                                 const struct q3n_report_options *opt, struct q3n_error *err)
{
    enum q3n_status st;
    switch (fmt) {
    case Q3N_REPORT_TEXT: st = q3n_report_text(out, r, opt, err); break;
    case Q3N_REPORT_MD: st = q3n_report_md(out, r, err); break;
    case Q3N_REPORT_HTML: st = q3n_report_html(out, r, err); break;
    case Q3N_REPORT_JUNIT: st = q3n_report_junit(out, r, err); break;
    case Q3N_REPORT_JSON: st = q3n_report_json(out, r, err); break;
    default: return q3n_error_set(err, Q3N_ERR_USAGE, "report: unknown format %d", (int)fmt);
    }
    if (st == Q3N_OK && ferror(out)) st = q3n_error_set(err, Q3N_ERR_IO, "report: write failed");
    return st;
}

int q3n_report_parse_arg(struct q3n_report_output *o, int argc, char **argv, int *i, struct q3n_error *err)
{
    const char *a = argv[*i];
    const char **slot = NULL;
    if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0) {
        o->quiet = 1;
        (*i)++;
        return 1;
    }
    if (strcmp(a, "--format") == 0) {
        if (*i + 1 >= argc) {
            q3n_error_set(err, Q3N_ERR_USAGE, "--format needs one of text, md, html, junit, json");
            return -1;
        }
        if (!q3n_report_format_parse(argv[*i + 1], &o->format)) {
            q3n_error_set(err, Q3N_ERR_USAGE, "--format: unknown '%s' (text, md, html, junit, json)", argv[*i + 1]);
            return -1;
        }
        *i += 2;
        return 1;
    }
    if (strcmp(a, "--out") == 0) slot = &o->out_path;
    if (strcmp(a, "--json") == 0) slot = &o->json_path;
    if (!slot) return 0;
    if (*i + 1 >= argc) {
        q3n_error_set(err, Q3N_ERR_USAGE, "%s needs a file name", a);
        return -1;
    }
    *slot = argv[*i + 1];
    *i += 2;
    return 1;
}

enum q3n_status q3n_report_emit(const struct q3n_result *r, const struct q3n_report_output *o, FILE *stream,
                                int stream_is_tty, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    struct q3n_report_options ro = {.quiet = o->quiet, .color = 0};
    if (o->json_path) {
        st = q3n_result_save(r, o->json_path, err);
        if (st != Q3N_OK) return st;
    }
    if (o->out_path) {
        struct q3n_outfile f;
        st = q3n_outfile_open(&f, o->out_path, err);
        if (st != Q3N_OK) return st;
        return q3n_outfile_finish(&f, q3n_report_write(f.f, r, o->format, &ro, err), err);
    }
    ro.color = stream_is_tty && o->format == Q3N_REPORT_TEXT;
    return q3n_report_write(stream, r, o->format, &ro, err);
}

enum q3n_status q3n_report_json(FILE *out, const struct q3n_result *r, struct q3n_error *err)
{
    return q3n_result_write_json(out, r, err);
}

void q3n_report_num(char *buf, size_t cap, double v)
{
    if (isnan(v))
        snprintf(buf, cap, "nan");
    else if (isinf(v))
        snprintf(buf, cap, v > 0 ? "inf" : "-inf");
    else if (v == 0)
        snprintf(buf, cap, "0");
    else
        snprintf(buf, cap, "%.2e", v);
}

void q3n_report_pct(char *buf, size_t cap, double pct)
{
    if (isnan(pct))
        snprintf(buf, cap, "nan");
    else if (isinf(pct))
        snprintf(buf, cap, "inf");
    else
        snprintf(buf, cap, "%.3g%%", pct);
}

void q3n_report_where(char *buf, size_t cap, const struct q3n_tensor_result *t, int64_t flat)
{
    if (flat < 0 || t->rank == 0) {
        snprintf(buf, cap, "-");
        return;
    }
    int64_t c[Q3N_MAX_RANK];
    q3n_index_decode(flat, t->rank, t->dims, c);
    int per_token = strstr(t->name, "state") == NULL && strstr(t->name, "cache") == NULL;
    if (per_token && t->rank == 1)
        snprintf(buf, cap, "t=%lld", (long long)c[0]);
    else if (per_token && t->rank == 2)
        snprintf(buf, cap, "t=%lld c=%lld", (long long)c[0], (long long)c[1]);
    else if (per_token && t->rank == 3)
        snprintf(buf, cap, "t=%lld h=%lld c=%lld", (long long)c[0], (long long)c[1], (long long)c[2]);
    else {
        size_t pos = 0;
        buf[0] = '\0';
        for (int i = 0; i < t->rank && pos + 1 < cap; i++) {
            int n = snprintf(buf + pos, cap - pos, "%s%lld", i ? "," : "[", (long long)c[i]);
            if (n > 0) pos += (size_t)n;
        }
        if (pos + 1 < cap) snprintf(buf + pos, cap - pos, "]");
    }
}

void q3n_report_metrics_line(char *buf, size_t cap, const struct q3n_tensor_result *t)
{
    char l2[24], mx[24], hr[24], where[64], u1[24], u2[24];
    if (t->tol.kind == Q3N_KIND_TOPK) {
        char m1[24], m2[24];
        q3n_report_num(m1, sizeof m1, t->topk.max_near_tie_margin);
        q3n_report_num(m2, sizeof m2, t->topk.min_hard_margin);
        if (t->topk.flipped_tokens == 0)
            snprintf(buf, cap, "flipped_tokens=0 of %lld", (long long)t->topk.tokens);
        else
            snprintf(buf, cap, "flipped_tokens=%lld of %lld: near-tie %lld (largest margin %s), hard %lld "
                     "(smallest margin %s), threshold %.3g",
                     (long long)t->topk.flipped_tokens, (long long)t->topk.tokens, (long long)t->topk.near_tie_tokens,
                     m1, (long long)t->topk.hard_tokens, m2, t->tol.margin);
        return;
    }
    if (t->tol.kind == Q3N_KIND_SKIP || t->verdict == Q3N_VERDICT_ERROR) {
        snprintf(buf, cap, "-");
        return;
    }
    q3n_report_num(l2, sizeof l2, t->m.rel_l2);
    q3n_report_num(mx, sizeof mx, t->m.max_abs);
    q3n_report_pct(hr, sizeof hr, t->headroom_pct);
    q3n_report_where(where, sizeof where, t, t->m.max_abs_index);
    int n = snprintf(buf, cap, "rel_l2=%s max_abs=%s @%s", l2, mx, where);
    if (n < 0 || (size_t)n >= cap) return;
    size_t pos = (size_t)n;
    if (t->m.ulp_kind != Q3N_ULP_NONE) {
        snprintf(u1, sizeof u1, "%.3g", t->m.ulp_max);
        snprintf(u2, sizeof u2, "%.3g", t->m.ulp_p99);
        n = snprintf(buf + pos, cap - pos, " ulp max %s p99 %s", u1, u2);
        if (n < 0 || (size_t)n >= cap - pos) return;
        pos += (size_t)n;
    }
    if (t->m.nan_a || t->m.inf_a || t->m.nan_b || t->m.inf_b) {
        n = snprintf(buf + pos, cap - pos, " nan=%lld/%lld inf=%lld/%lld", (long long)t->m.nan_a,
                     (long long)t->m.nan_b, (long long)t->m.inf_a, (long long)t->m.inf_b);
        if (n < 0 || (size_t)n >= cap - pos) return;
        pos += (size_t)n;
    }
    snprintf(buf + pos, cap - pos, " tol use %s", hr);
}

void q3n_report_min_tol(char *buf, size_t cap, const struct q3n_tensor_result *t)
{
    char l2[24], rt[24];
    if (t->tol.kind != Q3N_KIND_FLOAT) {
        snprintf(buf, cap, "-");
        return;
    }
    q3n_report_num(l2, sizeof l2, t->m.rel_l2);
    q3n_report_num(rt, sizeof rt, t->m.min_rtol);
    if (t->oracle_budget > 0)
        snprintf(buf, cap, "rel_l2>=%s", l2);
    else
        snprintf(buf, cap, "rel_l2>=%s rtol>=%s", l2, rt);
}

int q3n_report_growth_window(const struct q3n_result *r, int before, int after, int64_t *lo, int64_t *hi)
{
    if (r->first_divergence < 0) return 0;
    *lo = r->first_divergence - before;
    if (*lo < 0) *lo = 0;
    *hi = r->first_divergence + after + 1;
    if (*hi > r->n_tensors) *hi = r->n_tensors;
    return 1;
}

double q3n_report_max_rel_l2(const struct q3n_result *r, int64_t lo, int64_t hi, int64_t *at)
{
    double best = NAN;
    *at = -1;
    for (int64_t i = lo; i < hi; i++) {
        const struct q3n_tensor_result *t = &r->tensors[i];
        if (t->tol.kind != Q3N_KIND_FLOAT || t->verdict == Q3N_VERDICT_ERROR || t->verdict == Q3N_VERDICT_SKIPPED)
            continue;
        if (*at < 0 || t->m.rel_l2 > best || isnan(t->m.rel_l2)) {
            best = t->m.rel_l2;
            *at = i;
        }
    }
    return best;
}

void q3n_report_summary_line(char *buf, size_t cap, const struct q3n_result *r)
{
    int64_t c[6];
    q3n_result_counts(r, c);
    int64_t failed = c[Q3N_VERDICT_FAIL] + c[Q3N_VERDICT_ERROR];
    snprintf(buf, cap,
             "%s: %lld of %lld tensors failed (%lld pass, %lld explained by router flips, %lld reported, "
             "%lld skipped, %lld errors); %lld only in candidate, %lld only in reference",
             failed ? "FAIL" : "PASS", (long long)failed, (long long)r->n_tensors, (long long)c[Q3N_VERDICT_PASS],
             (long long)c[Q3N_VERDICT_EXPLAINED], (long long)c[Q3N_VERDICT_REPORTED],
             (long long)c[Q3N_VERDICT_SKIPPED], (long long)c[Q3N_VERDICT_ERROR], (long long)r->n_only_a,
             (long long)r->n_only_b);
}

void q3n_report_xml_escape(FILE *out, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", out); break;
        case '>': fputs("&gt;", out); break;
        case '&': fputs("&amp;", out); break;
        case '"': fputs("&quot;", out); break;
        case '\'': fputs("&#39;", out); break;
        default:
            if ((unsigned char)*s < 0x20 && *s != '\n' && *s != '\t')
                fputc('?', out);
            else
                fputc(*s, out);
        }
    }
}

/* --- text ----------------------------------------------------------------------------------- */

#define C_RED "\033[31m"
#define C_GREEN "\033[32m"
#define C_YELLOW "\033[33m"
#define C_BOLD "\033[1m"
#define C_OFF "\033[0m"

static const char *verdict_color(enum q3n_verdict v)
{
    switch (v) {
    case Q3N_VERDICT_PASS: return C_GREEN;
    case Q3N_VERDICT_FAIL:
    case Q3N_VERDICT_ERROR: return C_RED;
    default: return C_YELLOW;
    }
}

static void text_tensor_line(FILE *out, const struct q3n_tensor_result *t, int color)
{
    char shape[64], metrics[400];
    q3n_shape_str(shape, sizeof shape, t->rank, t->dims);
    q3n_report_metrics_line(metrics, sizeof metrics, t);
    fprintf(out, "%s%-9s%s %-52s %-16s %s", color ? verdict_color(t->verdict) : "", q3n_verdict_name(t->verdict),
            color ? C_OFF : "", t->name, shape, metrics);
    if (t->note[0]) fprintf(out, "  -- %s", t->note);
    fputc('\n', out);
}

static void text_header(FILE *out, const struct q3n_result *r)
{
    fprintf(out, "q3n %s (%s mode)\n", r->command, r->mode);
    if (r->impl[0])
        fprintf(out, "  implementation: %s   kernels: %s\n", r->impl, r->kernels[0] ? r->kernels : "-");
    else
        fprintf(out, "  candidate: %s   kernels: %s\n", r->candidate, r->kernels[0] ? r->kernels : "-");
    fprintf(out, "  dtype: %s   policy: %s\n", r->dtype, r->policy_path);
    fprintf(out, "  reference: %s\n", r->golden_path);
    fprintf(out, "    format %lld, generator %s, transformers %s, torch %s, dtype %s, preset %s, seed %lld\n",
            (long long)r->golden_format_version, r->golden_generator[0] ? r->golden_generator : "-",
            r->golden_transformers[0] ? r->golden_transformers : "-", r->golden_torch[0] ? r->golden_torch : "-",
            r->golden_dtype[0] ? r->golden_dtype : "-", r->golden_preset[0] ? r->golden_preset : "-",
            (long long)r->golden_seed);
}

static void text_growth(FILE *out, const struct q3n_result *r)
{
    int64_t lo, hi, at;
    if (!q3n_report_growth_window(r, 4, 4, &lo, &hi)) return;
    const struct q3n_tensor_result *fd = &r->tensors[r->first_divergence];
    char mt[24], l2[24], hr[24];
    fprintf(out, "first divergence: %s (layer %d)\n", fd->name, fd->layer);
    double before = q3n_report_max_rel_l2(r, 0, r->first_divergence, &at);
    q3n_report_num(mt, sizeof mt, before);
    if (at >= 0) fprintf(out, "  largest rel_l2 before it: %s at %s\n", mt, r->tensors[at].name);
    double after = q3n_report_max_rel_l2(r, r->first_divergence + 1, r->n_tensors, &at);
    q3n_report_num(mt, sizeof mt, after);
    if (at >= 0) fprintf(out, "  largest rel_l2 after it:  %s at %s\n", mt, r->tensors[at].name);
    fprintf(out, "  error growth around it (rel_l2, tolerance use):\n");
    for (int64_t i = lo; i < hi; i++) {
        const struct q3n_tensor_result *t = &r->tensors[i];
        q3n_report_num(l2, sizeof l2, t->m.rel_l2);
        q3n_report_pct(hr, sizeof hr, t->headroom_pct);
        fprintf(out, "   %s %-52s rel_l2=%-9s tol use %-8s %s\n", i == r->first_divergence ? ">>" : "  ", t->name,
                t->tol.kind == Q3N_KIND_FLOAT ? l2 : "-", hr, q3n_verdict_name(t->verdict));
    }
}

enum q3n_status q3n_report_text(FILE *out, const struct q3n_result *r, const struct q3n_report_options *opt,
                                struct q3n_error *err)
{
    (void)err;
    int color = opt && opt->color, quiet = opt && opt->quiet;
    char line[512];
    if (!quiet) {
        text_header(out, r);
        fputc('\n', out);
        for (int64_t i = 0; i < r->n_tensors; i++) text_tensor_line(out, &r->tensors[i], color);
        fputc('\n', out);
    }
    for (int side = 0; side < 2 && !quiet; side++) {
        int64_t n = side ? r->n_only_b : r->n_only_a;
        char **l = side ? r->only_b : r->only_a;
        const char *what = side ? "reference" : "candidate";
        for (int64_t i = 0; i < n && i < 8; i++) fprintf(out, "only in %s: %s\n", what, l[i]);
        if (n > 8) fprintf(out, "only in %s: ... and %lld more (all of them in --format json or md)\n", what,
                           (long long)(n - 8));
    }
    int64_t worst = -1;
    double worst_h = -1;
    for (int64_t i = 0; i < r->n_tensors; i++) {
        const struct q3n_tensor_result *t = &r->tensors[i];
        if (t->tol.kind == Q3N_KIND_FLOAT && t->verdict == Q3N_VERDICT_PASS && t->headroom_pct > worst_h) {
            worst_h = t->headroom_pct;
            worst = i;
        }
    }
    if (worst >= 0) {
        char hr[24], mt[64];
        q3n_report_pct(hr, sizeof hr, worst_h);
        q3n_report_min_tol(mt, sizeof mt, &r->tensors[worst]);
        fprintf(out, "least headroom among passing tensors: %s at %s of its tolerance (would pass at %s)\n",
                r->tensors[worst].name, hr, mt);
    }
    if (r->flip_layer_first >= 0) {
        const struct q3n_tensor_result *t = &r->tensors[r->flip_layer_first];
        fprintf(out, "router flips: first at %s, token %lld (%s)\n", t->name, (long long)t->topk.first_flip_token,
                t->note);
    }
    if (r->nan_origin >= 0) {
        const struct q3n_tensor_result *t = &r->tensors[r->nan_origin];
        char where[64];
        q3n_report_where(where, sizeof where, t, t->m.first_nonfinite_bad_index);
        fprintf(out, "%sNaN/Inf origin: %s%s (first non-finite at %s; every earlier tensor finite)\n",
                color ? C_RED C_BOLD : "", t->name, color ? C_OFF : "", where);
    }
    int any_fail = 0;
    for (int64_t i = 0; !quiet && i < r->n_tensors; i++) {
        const struct q3n_tensor_result *t = &r->tensors[i];
        if (!q3n_verdict_is_failure(t->verdict)) continue;
        if (!any_fail) fprintf(out, "failing tensors:\n");
        any_fail = 1;
        char mt[64];
        q3n_report_min_tol(mt, sizeof mt, t);
        fputs("  ", out);
        text_tensor_line(out, t, color);
        if (t->tol.kind == Q3N_KIND_FLOAT) fprintf(out, "      would pass at %s\n", mt);
    }
    if (quiet && r->first_divergence >= 0)
        fprintf(out, "first divergence: %s (layer %d)\n", r->tensors[r->first_divergence].name,
                r->tensors[r->first_divergence].layer);
    else
        text_growth(out, r);
    q3n_report_summary_line(line, sizeof line, r);
    if (color) fputs(q3n_result_exit_code(r) ? C_RED C_BOLD : C_GREEN C_BOLD, out);
    fputs(line, out);
    if (color) fputs(C_OFF, out);
    fputc('\n', out);
    return Q3N_OK;
}
