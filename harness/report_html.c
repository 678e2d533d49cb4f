/* report_html.c — a self-contained HTML page (inline CSS and SVG, no scripts, nothing fetched)
 * with a plot of relative L2 error per tap in execution order across layers: log scale, the
 * tolerance drawn as a line, the golden's float32-vs-float64 noise as grey dots, the first
 * divergence and the NaN origin marked; then the tables. See report.h. */
#include "report.h"

#include <math.h>
#include <string.h>

#define W 1300.0
#define H 480.0
#define ML 70.0
#define MR 20.0
#define MT 30.0
#define MB 80.0

static int plotted(const struct q3n_tensor_result *t)
{
    return t->tol.kind == Q3N_KIND_FLOAT && t->verdict != Q3N_VERDICT_ERROR && t->verdict != Q3N_VERDICT_SKIPPED;
}

static double allowed(const struct q3n_tensor_result *t)
{
    return t->oracle_budget > 0 ? t->oracle_budget : t->tol.rel_l2;
}

struct axis {
    double lo, hi; /* log10 range */
    int64_t n;
};

static double xpos(const struct axis *a, int64_t i)
{
    double span = a->n > 1 ? (double)(a->n - 1) : 1.0;
    return ML + (W - ML - MR) * ((double)i + 0.5) / (span + 1.0);
}

static double ypos(const struct axis *a, double v)
{
    double l = v > 0 ? log10(v) : a->lo;
    if (!isfinite(l) || l > a->hi) l = a->hi;
    if (l < a->lo) l = a->lo;
    return MT + (H - MT - MB) * (a->hi - l) / (a->hi - a->lo);
}

static void grow(double *lo, double *hi, double v)
{
    if (!(v > 0) || !isfinite(v)) return;
    double l = log10(v);
    if (l < *lo) *lo = l;
    if (l > *hi) *hi = l;
}

static void svg_plot(FILE *out, const struct q3n_result *r)
{
    struct axis a = {.lo = INFINITY, .hi = -INFINITY, .n = r->n_tensors};
    for (int64_t i = 0; i < r->n_tensors; i++) {
        const struct q3n_tensor_result *t = &r->tensors[i];
        if (!plotted(t)) continue;
        grow(&a.lo, &a.hi, t->m.rel_l2);
        grow(&a.lo, &a.hi, allowed(t));
        grow(&a.lo, &a.hi, t->noise_rel_l2);
    }
    if (!isfinite(a.lo)) {
        a.lo = -8;
        a.hi = 0;
    }
    a.lo = floor(a.lo) - 1;
    a.hi = ceil(a.hi) + 1;
    if (a.lo < -18) a.lo = -18;
    if (a.hi > 6) a.hi = 6;
    if (a.hi <= a.lo) a.hi = a.lo + 1;

    fprintf(out, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" viewBox=\"0 0 %g %g\" "
                 "font-family=\"sans-serif\" font-size=\"11\">\n",
            W, H, W, H);
    fprintf(out, "<rect x=\"0\" y=\"0\" width=\"%g\" height=\"%g\" fill=\"#fff\"/>\n", W, H);
    /* layer bands */
    int64_t start = 0;
    int band = 0;
    for (int64_t i = 1; i <= r->n_tensors; i++) {
        if (i < r->n_tensors && r->tensors[i].layer == r->tensors[start].layer) continue;
        double x0 = xpos(&a, start) - 0.5 * (xpos(&a, 1) - xpos(&a, 0)), x1 = xpos(&a, i - 1) + 0.5 * (xpos(&a, 1) - xpos(&a, 0));
        if (r->n_tensors == 1) {
            x0 = ML;
            x1 = W - MR;
        }
        int layer = r->tensors[start].layer;
        fprintf(out, "<rect x=\"%.1f\" y=\"%g\" width=\"%.1f\" height=\"%g\" fill=\"%s\"/>\n", x0, MT, x1 - x0,
                H - MT - MB, band % 2 ? "#f3f5fa" : "#fbfcfe");
        char label[32];
        if (layer >= 0)
            snprintf(label, sizeof label, "L%d", layer);
        else
            snprintf(label, sizeof label, "%s", layer == -2 ? "MTP" : "model");
        fprintf(out, "<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\" fill=\"#555\">%s</text>\n", 0.5 * (x0 + x1),
                H - MB + 16, label);
        band++;
        start = i;
    }
    /* decade grid */
    for (double d = a.lo; d <= a.hi + 1e-9; d += 1) {
        double y = MT + (H - MT - MB) * (a.hi - d) / (a.hi - a.lo);
        fprintf(out, "<line x1=\"%g\" y1=\"%.1f\" x2=\"%g\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", ML, y, W - MR, y);
        fprintf(out, "<text x=\"%g\" y=\"%.1f\" text-anchor=\"end\" fill=\"#333\">1e%d</text>\n", ML - 6, y + 4, (int)d);
    }
    fprintf(out, "<text x=\"16\" y=\"%g\" transform=\"rotate(-90 16 %g)\" text-anchor=\"middle\" fill=\"#333\">"
                 "relative L2 error (log)</text>\n",
            0.5 * (MT + H - MB), 0.5 * (MT + H - MB));
    fprintf(out, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\" fill=\"#333\">taps in execution order (bands: "
                 "layers)</text>\n",
            0.5 * (ML + W - MR), H - MB + 34);
    /* tolerance line */
    fputs("<polyline fill=\"none\" stroke=\"#e08a00\" stroke-width=\"1.5\" stroke-dasharray=\"5,3\" points=\"", out);
    for (int64_t i = 0; i < r->n_tensors; i++)
        if (plotted(&r->tensors[i]))
            fprintf(out, "%.1f,%.1f ", xpos(&a, i), ypos(&a, allowed(&r->tensors[i])));
    fputs("\"/>\n", out);
    /* noise floor */
    for (int64_t i = 0; i < r->n_tensors; i++) {
        const struct q3n_tensor_result *t = &r->tensors[i];
        if (plotted(t) && t->noise_rel_l2 > 0)
            fprintf(out, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2\" fill=\"#aaa\"/>\n", xpos(&a, i),
                    ypos(&a, t->noise_rel_l2));
    }
    /* error line and points */
    fputs("<polyline fill=\"none\" stroke=\"#3b6fd8\" stroke-width=\"1\" points=\"", out);
    for (int64_t i = 0; i < r->n_tensors; i++)
        if (plotted(&r->tensors[i])) fprintf(out, "%.1f,%.1f ", xpos(&a, i), ypos(&a, r->tensors[i].m.rel_l2));
    fputs("\"/>\n", out);
    for (int64_t i = 0; i < r->n_tensors; i++) {
        const struct q3n_tensor_result *t = &r->tensors[i];
        if (!plotted(t)) continue;
        const char *fill = t->verdict == Q3N_VERDICT_PASS ? "#3b6fd8" : t->verdict == Q3N_VERDICT_FAIL ? "#d62728" : "#c9a000";
        char l2[24], hr[24];
        q3n_report_num(l2, sizeof l2, t->m.rel_l2);
        q3n_report_pct(hr, sizeof hr, t->headroom_pct);
        fprintf(out, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.2\" fill=\"%s\"><title>", xpos(&a, i),
                ypos(&a, t->m.rel_l2), fill);
        q3n_report_xml_escape(out, t->name);
        fprintf(out, ": rel_l2 %s, %s of tolerance, %s</title></circle>\n", l2, hr, q3n_verdict_name(t->verdict));
    }
    /* markers */
    if (r->first_divergence >= 0) {
        double x = xpos(&a, r->first_divergence);
        fprintf(out, "<line x1=\"%.1f\" y1=\"%g\" x2=\"%.1f\" y2=\"%g\" stroke=\"#d62728\" stroke-width=\"2\"/>\n", x,
                MT, x, H - MB);
        fprintf(out, "<text x=\"%.1f\" y=\"%g\" fill=\"#d62728\" font-weight=\"bold\" text-anchor=\"%s\">first "
                     "divergence: ",
                x + (x > W / 2 ? -4 : 4), MT - 8, x > W / 2 ? "end" : "start");
        q3n_report_xml_escape(out, r->tensors[r->first_divergence].name);
        fputs("</text>\n", out);
    }
    if (r->nan_origin >= 0 && r->nan_origin != r->first_divergence) {
        double x = xpos(&a, r->nan_origin);
        fprintf(out, "<line x1=\"%.1f\" y1=\"%g\" x2=\"%.1f\" y2=\"%g\" stroke=\"#8b0000\" stroke-dasharray=\"2,2\"/>\n",
                x, MT, x, H - MB);
    }
    /* legend, in one row under the axis title */
    double ly = H - 14, lx = ML;
    fprintf(out, "<circle cx=\"%g\" cy=\"%g\" r=\"3.2\" fill=\"#3b6fd8\"/><text x=\"%g\" y=\"%g\">rel_l2 "
                 "(red: FAIL, yellow: explained by a router flip or reported)</text>\n",
            lx + 4, ly - 4, lx + 12, ly);
    lx += 400;
    fprintf(out, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"#e08a00\" stroke-width=\"1.5\" "
                 "stroke-dasharray=\"5,3\"/><text x=\"%g\" y=\"%g\">tolerance (rel_l2 allowed)</text>\n",
            lx, ly - 4, lx + 16, ly - 4, lx + 20, ly);
    lx += 200;
    fprintf(out, "<circle cx=\"%g\" cy=\"%g\" r=\"2\" fill=\"#aaa\"/><text x=\"%g\" y=\"%g\">golden noise floor "
                 "(transformers float32 vs float64)</text>\n",
            lx + 4, ly - 4, lx + 12, ly);
    lx += 290;
    fprintf(out, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"#d62728\" stroke-width=\"2\"/>"
                 "<text x=\"%g\" y=\"%g\">first divergence</text>\n",
            lx + 4, ly - 10, lx + 4, ly + 2, lx + 10, ly);
    fputs("</svg>\n", out);
}

static void html_row(FILE *out, const struct q3n_tensor_result *t, int fd)
{
    char shape[64], metrics[400], mt[64];
    q3n_shape_str(shape, sizeof shape, t->rank, t->dims);
    q3n_report_metrics_line(metrics, sizeof metrics, t);
    q3n_report_min_tol(mt, sizeof mt, t);
    const char *cls = t->verdict == Q3N_VERDICT_PASS ? "pass" : q3n_verdict_is_failure(t->verdict) ? "fail" : "warn";
    fprintf(out, "<tr class=\"%s\"><td>%s", cls, fd ? "&#9654; " : "");
    q3n_report_xml_escape(out, t->name);
    fprintf(out, "</td><td>%s</td><td>%s</td><td>", shape, q3n_verdict_name(t->verdict));
    q3n_report_xml_escape(out, metrics);
    fputs("</td><td>", out);
    q3n_report_xml_escape(out, q3n_verdict_is_failure(t->verdict) ? mt : "");
    fputs("</td><td>", out);
    q3n_report_xml_escape(out, t->note);
    fputs("</td></tr>\n", out);
}

static void table_head(FILE *out)
{
    fputs("<table><tr><th>tensor</th><th>shape</th><th>verdict</th><th>metrics</th><th>would pass at</th>"
          "<th>note</th></tr>\n",
          out);
}

enum q3n_status q3n_report_html(FILE *out, const struct q3n_result *r, struct q3n_error *err)
{
    (void)err;
    char line[512];
    int failed = q3n_result_exit_code(r);
    fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>q3n ", out);
    q3n_report_xml_escape(out, r->command);
    fputs("</title>\n<style>\nbody{font-family:sans-serif;margin:20px;color:#222}\n"
          "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}\n"
          "tr.fail td{background:#fde2e2}tr.warn td{background:#fff5cc}.verdict-fail{color:#c00}"
          ".verdict-pass{color:#080}\ncode{background:#f4f4f4;padding:1px 3px}\n</style></head><body>\n",
          out);
    fprintf(out, "<h1>q3n %s: <span class=\"verdict-%s\">%s</span></h1>\n", r->command, failed ? "fail" : "pass",
            failed ? "FAIL" : "PASS");
    q3n_report_summary_line(line, sizeof line, r);
    fputs("<p>", out);
    q3n_report_xml_escape(out, line);
    fputs("</p>\n<table>\n", out);
    const char *rows[][2] = {
        {r->impl[0] ? "implementation" : "candidate", r->impl[0] ? r->impl : r->candidate},
        {"kernels", r->kernels},
        {"dtype", r->dtype},
        {"mode", r->mode},
        {"policy", r->policy_path},
        {"reference", r->golden_path},
        {"generator", r->golden_generator},
        {"transformers", r->golden_transformers},
        {"torch", r->golden_torch},
        {"golden dtype", r->golden_dtype},
        {"preset", r->golden_preset},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        fprintf(out, "<tr><th>%s</th><td><code>", rows[i][0]);
        q3n_report_xml_escape(out, rows[i][1][0] ? rows[i][1] : "-");
        fputs("</code></td></tr>\n", out);
    }
    fputs("</table>\n<h2>Relative error per tap</h2>\n", out);
    svg_plot(out, r);
    if (r->first_divergence >= 0) {
        const struct q3n_tensor_result *fd = &r->tensors[r->first_divergence];
        fputs("<h2>First divergence: <code>", out);
        q3n_report_xml_escape(out, fd->name);
        fprintf(out, "</code> (layer %d)</h2>\n<p>Error growth around it:</p>\n", fd->layer);
        int64_t lo, hi;
        q3n_report_growth_window(r, 4, 4, &lo, &hi);
        table_head(out);
        for (int64_t i = lo; i < hi; i++) html_row(out, &r->tensors[i], i == r->first_divergence);
        fputs("</table>\n", out);
    }
    if (r->nan_origin >= 0) {
        fputs("<h2>NaN/Inf origin: <code>", out);
        q3n_report_xml_escape(out, r->tensors[r->nan_origin].name);
        fputs("</code></h2>\n", out);
    }
    if (r->flip_layer_first >= 0) {
        const struct q3n_tensor_result *t = &r->tensors[r->flip_layer_first];
        fputs("<h2>Router flips</h2>\n<p>First at <code>", out);
        q3n_report_xml_escape(out, t->name);
        fprintf(out, "</code>, token %lld: ", (long long)t->topk.first_flip_token);
        q3n_report_xml_escape(out, t->note);
        fputs("</p>\n", out);
    }
    if (r->n_only_a || r->n_only_b) {
        fputs("<h2>Names on one side only</h2>\n<ul>\n", out);
        for (int64_t i = 0; i < r->n_only_a; i++) {
            fputs("<li>only in candidate: <code>", out);
            q3n_report_xml_escape(out, r->only_a[i]);
            fputs("</code></li>\n", out);
        }
        for (int64_t i = 0; i < r->n_only_b; i++) {
            fputs("<li>only in reference: <code>", out);
            q3n_report_xml_escape(out, r->only_b[i]);
            fputs("</code></li>\n", out);
        }
        fputs("</ul>\n", out);
    }
    fprintf(out, "<h2>All %lld tensors</h2>\n", (long long)r->n_tensors);
    table_head(out);
    for (int64_t i = 0; i < r->n_tensors; i++) html_row(out, &r->tensors[i], i == r->first_divergence);
    fputs("</table>\n</body></html>\n", out);
    return Q3N_OK;
}
