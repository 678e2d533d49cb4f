/* blame.c — blame by intervention and routing-flip analysis; see blame.h. */
#include "blame.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void q3n_blame_free(struct q3n_blame_result *res)
{
    if (!res) return;
    free(res->layers);
    free(res->rank);
    free(res->flips);
    memset(res, 0, sizeof *res);
}

static enum q3n_status alloc_logits(float **out, const struct q3n_tool_run *r, struct q3n_error *err)
{
    size_t n;
    if (!q3n_mul_size(&n, (size_t)r->T, (size_t)r->V) || !q3n_mul_size(&n, n, sizeof(float)) || n == 0)
        return q3n_error_set(err, Q3N_ERR_NOMEM, "blame: logits size T=%lld V=%lld overflows", (long long)r->T,
                             (long long)r->V);
    *out = malloc(n);
    if (!*out) return q3n_error_set(err, Q3N_ERR_NOMEM, "blame: out of memory for logits (%zu bytes)", n);
    return Q3N_OK;
}

static void set_names(struct q3n_blame_result *res, const struct q3n_tool_run *r)
{
    snprintf(res->impl, sizeof res->impl, "%s", r->impl->name);
    const char *dt = r->opt.dtype == Q3N_COMPUTE_BF16 ? "bfloat16"
                     : r->opt.dtype == Q3N_COMPUTE_F64 ? "float64"
                                                       : "float32";
    if (r->emulate_bf16) dt = "bfloat16 (emulated)";
    snprintf(res->dtype, sizeof res->dtype, "%s", dt);
}

enum q3n_status q3n_routing_analyze(struct q3n_blame_result *res, const struct q3n_tool_run *r, int max_flip_runs,
                                    struct q3n_error *err)
{
    float *logits = NULL;
    struct q3n_intervene iv;
    memset(&iv, 0, sizeof iv);
    enum q3n_status st = alloc_logits(&logits, r, err);
    if (st != Q3N_OK) goto done;
    set_names(res, r);
    res->routing_checked = 1;
    res->err_forced_all = NAN;
    struct q3n_intervene_opts base = {.detect_flips = 1};
    st = q3n_tool_forward(r, &base, &iv, 0, logits, &res->e0, err);
    if (st != Q3N_OK) goto done;
    free(res->flips);
    res->flips = NULL;
    res->n_flips = iv.n_flips;
    if (iv.n_flips == 0) goto done;
    res->flips = calloc(iv.n_flips, sizeof *res->flips);
    if (!res->flips) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "blame: out of memory for %zu flips", iv.n_flips);
        goto done;
    }
    for (size_t i = 0; i < iv.n_flips; i++) {
        res->flips[i].flip = iv.flips[i];
        res->flips[i].err_forced = NAN;
        res->flips[i].removed = NAN;
    }
    struct q3n_intervene fv;
    struct q3n_intervene_opts all = {.force_routing = 1};
    st = q3n_tool_forward(r, &all, &fv, 0, logits, &res->err_forced_all, err);
    res->forced_applied = (int)fv.n_replaced;
    q3n_intervene_free(&fv);
    if (st != Q3N_OK) goto done;
    if (res->forced_applied == 0 && r->golden_routing && !r->opt.forced_routing) {
        /* the top-k taps are not live (e.g. cuda): force through run_options.forced_routing,
         * the documented switch of every implementation; per-flip runs need live taps */
        struct q3n_tool_run ro = *r;
        ro.opt.forced_routing = r->golden_routing;
        st = q3n_tool_forward(&ro, NULL, NULL, 0, logits, &res->err_forced_all, err);
        if (st != Q3N_OK) goto done;
        res->forced_by_options = 1;
        goto done;
    }
    for (size_t i = 0; i < res->n_flips && (int)i < max_flip_runs; i++) {
        struct q3n_flip_effect *f = &res->flips[i];
        struct q3n_intervene_opts one = {.force_routing = 1, .force_prefix = f->flip.prefix,
                                         .force_single_token = 1, .force_token = f->flip.token};
        st = q3n_tool_forward(r, &one, NULL, 0, logits, &f->err_forced, err);
        if (st != Q3N_OK) goto done;
        f->removed = res->e0 - f->err_forced;
    }
done:
    q3n_intervene_free(&iv);
    free(logits);
    return st;
}

/* a ranks before b: larger own first (NaN last), then lower layer */
static int ranks_before(const struct q3n_blame_layer *a, const struct q3n_blame_layer *b)
{
    double x = isnan(a->own) ? -INFINITY : a->own, y = isnan(b->own) ? -INFINITY : b->own;
    return x > y || (x == y && a->layer < b->layer);
}

enum q3n_status q3n_blame_run(struct q3n_blame_result *res, const struct q3n_tool_run *r, int n_layers, int routing,
                              int max_flip_runs, struct q3n_error *err)
{
    memset(res, 0, sizeof *res);
    if (!r->golden || !r->golden_logits)
        return q3n_error_set(err, Q3N_ERR_USAGE, "blame: a golden with taps and logits is required");
    if (r->model) n_layers = (int)r->model->config.num_hidden_layers;
    if (n_layers <= 0) return q3n_error_set(err, Q3N_ERR_USAGE, "blame: no layers");
    float *logits = NULL;
    enum q3n_status st = alloc_logits(&logits, r, err);
    if (st != Q3N_OK) return st;
    set_names(res, r);
    res->n_layers = n_layers;
    res->err_forced_all = NAN;
    res->layers = calloc((size_t)n_layers, sizeof *res->layers);
    res->rank = calloc((size_t)n_layers, sizeof *res->rank);
    if (!res->layers || !res->rank) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "blame: out of memory for %d layers", n_layers);
        goto done;
    }
    if (routing) {
        st = q3n_routing_analyze(res, r, max_flip_runs, err);
    } else {
        st = q3n_tool_forward(r, NULL, NULL, 0, logits, &res->e0, err);
    }
    if (st != Q3N_OK) goto done;
    double prev = res->e0;
    for (int i = 0; i < n_layers; i++) {
        char pat[64];
        snprintf(pat, sizeof pat, "model.layers.%d.out", i);
        struct q3n_intervene iv;
        struct q3n_intervene_opts o = {.replace = pat};
        struct q3n_blame_layer *L = &res->layers[i];
        L->layer = i;
        st = q3n_tool_forward(r, &o, &iv, 0, logits, &L->err_after, err);
        if (iv.n_replaced != 1) res->replaced_missing++;
        q3n_intervene_free(&iv);
        if (st != Q3N_OK) goto done;
        L->removed = res->e0 - L->err_after;
        L->own = prev - L->err_after;
        L->share = res->e0 > 0 ? L->own / res->e0 : 0.0;
        prev = L->err_after;
        res->rank[i] = i;
    }
    for (int i = 1; i < n_layers; i++) { /* insertion sort: L is at most a few hundred */
        int v = res->rank[i], j = i;
        while (j > 0 && ranks_before(&res->layers[v], &res->layers[res->rank[j - 1]])) {
            res->rank[j] = res->rank[j - 1];
            j--;
        }
        res->rank[j] = v;
    }
done:
    free(logits);
    if (st != Q3N_OK) q3n_blame_free(res);
    return st;
}

/* ---- reports ------------------------------------------------------------------------- */

void q3n_blame_svg(FILE *out, const struct q3n_blame_result *res)
{
    const int bar_h = 18, gap = 4, left = 150, width = 420, top = 24;
    int n = res->n_layers;
    int h = top + n * (bar_h + gap) + 24;
    double mx = 0;
    for (int i = 0; i < n; i++)
        if (res->layers[i].own > mx) mx = res->layers[i].own;
    if (!(mx > 0)) mx = 1;
    fprintf(out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"monospace\" "
            "font-size=\"12\">\n",
            left + width + 120, h);
    fprintf(out, "<text x=\"4\" y=\"16\">share of final logits rel_l2 (%.3g) removed by replacing each layer</text>\n",
            res->e0);
    for (int k = 0; k < n; k++) {
        const struct q3n_blame_layer *L = &res->layers[res->rank[k]];
        int y = top + k * (bar_h + gap);
        double v = L->own > 0 ? L->own : 0;
        int w = (int)(width * v / mx + 0.5);
        fprintf(out, "<text x=\"4\" y=\"%d\">model.layers.%d</text>\n", y + 13, L->layer);
        fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"/>\n", left, y, w, bar_h,
                k == 0 ? "#c0392b" : "#2e86c1");
        fprintf(out, "<text x=\"%d\" y=\"%d\">%.1f%%</text>\n", left + w + 6, y + 13, 100.0 * L->share);
    }
    fprintf(out, "</svg>\n");
}

static void text_bar(FILE *out, double share)
{
    int n = (int)(share * 40 + 0.5);
    if (n < 0) n = 0;
    if (n > 40) n = 40;
    for (int i = 0; i < n; i++) fputc('#', out);
}

static void write_flips(FILE *out, const struct q3n_blame_result *res, int md)
{
    if (!res->routing_checked) return;
    if (md) fprintf(out, "\n## Routing flips\n\n");
    else fprintf(out, "\nrouting flips: %zu\n", res->n_flips);
    if (res->n_flips == 0) {
        fprintf(out, "%sno token chose a different expert set than the golden.\n", md ? "" : "  ");
        return;
    }
    if (res->forced_by_options)
        fprintf(out, "%sthe top-k taps are not live: routing forced through run_options.forced_routing (all layers);"
                     " per-flip effects not measured\n",
                md ? "" : "  ");
    else if (res->forced_applied == 0)
        fprintf(out, "%sWARNING: the routing could not be forced (top-k taps not live, no golden routing)\n",
                md ? "" : "  ");
    fprintf(out,
            "%sforcing the golden's routing everywhere: logits rel_l2 %.4g -> %.4g (%s)\n",
            md ? "" : "  ", res->e0, res->err_forced_all,
            res->err_forced_all <= 0.1 * res->e0
                ? "the flips explain the error: near-tie flips amplified downstream"
                : "most of the error remains: a kernel is wrong, not (only) the routing");
    if (md) fprintf(out, "\n| layer | token | golden margin | experts swapped | rel_l2 with only it forced | error it caused |\n|---|---|---|---|---|---|\n");
    else fprintf(out, "  %-18s %6s %14s %8s %14s %14s\n", "layer", "token", "golden_margin", "swapped", "forced_rel_l2", "caused");
    size_t shown = res->n_flips < 50 ? res->n_flips : 50;
    for (size_t i = 0; i < shown; i++) {
        const struct q3n_flip_effect *f = &res->flips[i];
        if (md)
            fprintf(out, "| %s | %lld | %.4g | %d | %.4g | %.4g |\n", f->flip.prefix, (long long)f->flip.token,
                    f->flip.margin, f->flip.n_differ, f->err_forced, f->removed);
        else
            fprintf(out, "  %-18s %6lld %14.4g %8d %14.4g %14.4g\n", f->flip.prefix, (long long)f->flip.token,
                    f->flip.margin, f->flip.n_differ, f->err_forced, f->removed);
    }
    if (shown < res->n_flips) fprintf(out, "%s... %zu more flips\n", md ? "\n" : "  ", res->n_flips - shown);
    fprintf(out, "%slater flips may be consequences of earlier ones (the chained run feeds each layer its own "
                 "outputs); forcing the first flip alone shows how much it explains\n",
            md ? "\n" : "  ");
}

enum q3n_status q3n_blame_write(FILE *out, const struct q3n_blame_result *res, const char *format,
                                const char *golden_name, struct q3n_error *err)
{
    int md = strcmp(format, "md") == 0, html = strcmp(format, "html") == 0, text = strcmp(format, "text") == 0;
    if (!md && !html && !text)
        return q3n_error_set(err, Q3N_ERR_USAGE, "blame: unknown format '%s' (text, md or html)", format);
    if (html) {
        fprintf(out, "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>q3n blame</title></head><body>\n");
        fprintf(out, "<h1>q3n blame: %s</h1>\n<p>impl %s, dtype %s; baseline logits rel_l2 %.4g</p>\n", golden_name,
                res->impl, res->dtype, res->e0);
        q3n_blame_svg(out, res);
        fprintf(out, "<table border=\"1\" cellpadding=\"3\"><tr><th>rank</th><th>layer</th><th>own share</th>"
                     "<th>own</th><th>rel_l2 with layer replaced</th><th>removed (layers 0..i)</th></tr>\n");
        for (int k = 0; k < res->n_layers; k++) {
            const struct q3n_blame_layer *L = &res->layers[res->rank[k]];
            fprintf(out, "<tr><td>%d</td><td>model.layers.%d</td><td>%.1f%%</td><td>%.4g</td><td>%.4g</td><td>%.4g</td></tr>\n",
                    k + 1, L->layer, 100 * L->share, L->own, L->err_after, L->removed);
        }
        fprintf(out, "</table>\n<pre>\n");
        write_flips(out, res, 0);
        fprintf(out, "</pre>\n</body></html>\n");
    } else {
        if (md) fprintf(out, "# q3n blame: %s\n\nimpl `%s`, dtype %s; baseline logits rel_l2 **%.4g**\n\n", golden_name,
                        res->impl, res->dtype, res->e0);
        else fprintf(out, "q3n blame %s  impl=%s dtype=%s  baseline logits rel_l2=%.4g\n", golden_name, res->impl,
                     res->dtype, res->e0);
        if (md) fprintf(out, "| rank | layer | own share | own | rel_l2 with layer replaced | removed (0..i) | |\n|---|---|---|---|---|---|---|\n");
        else fprintf(out, "  %4s %-18s %9s %12s %14s %14s\n", "rank", "layer", "share", "own", "replaced_rel_l2", "removed_0..i");
        for (int k = 0; k < res->n_layers; k++) {
            const struct q3n_blame_layer *L = &res->layers[res->rank[k]];
            if (md) {
                fprintf(out, "| %d | model.layers.%d | %.1f%% | %.4g | %.4g | %.4g | `", k + 1, L->layer, 100 * L->share,
                        L->own, L->err_after, L->removed);
                text_bar(out, L->share);
                fprintf(out, "` |\n");
            } else {
                fprintf(out, "  %4d model.layers.%-5d %8.1f%% %12.4g %14.4g %14.4g  ", k + 1, L->layer, 100 * L->share,
                        L->own, L->err_after, L->removed);
                text_bar(out, L->share);
                fputc('\n', out);
            }
        }
        if (res->n_layers > 0)
            fprintf(out, "%serror left with the last layer replaced (final norm, lm_head, or noise): %.4g (%.1f%%)\n",
                    md ? "\n" : "  ", res->layers[res->n_layers - 1].err_after,
                    res->e0 > 0 ? 100.0 * res->layers[res->n_layers - 1].err_after / res->e0 : 0.0);
        if (res->replaced_missing)
            fprintf(out, "%swarning: %d layer output(s) could not be replaced (not emitted live or not in the golden)\n",
                    md ? "\n" : "  ", res->replaced_missing);
        write_flips(out, res, md);
        if (md) {
            fprintf(out, "\n<details><summary>bar plot (SVG)</summary>\n\n");
            q3n_blame_svg(out, res);
            fprintf(out, "\n</details>\n");
        }
    }
    if (ferror(out)) return q3n_error_set(err, Q3N_ERR_IO, "blame: write error");
    return Q3N_OK;
}

/* ---- chained vs isolated ------------------------------------------------------------- */

void q3n_isolation_free(struct q3n_isolation *iso)
{
    if (!iso) return;
    free(iso->rows);
    memset(iso, 0, sizeof *iso);
}

enum q3n_status q3n_isolation_run(struct q3n_isolation *iso, const struct q3n_tool_run *r, struct q3n_error *err)
{
    memset(iso, 0, sizeof *iso);
    iso->worst = -1;
    if (!r->golden) return q3n_error_set(err, Q3N_ERR_USAGE, "isolate: a golden with taps is required");
    float *logits = NULL;
    struct q3n_intervene ch, is;
    memset(&ch, 0, sizeof ch);
    memset(&is, 0, sizeof is);
    enum q3n_status st = alloc_logits(&logits, r, err);
    if (st != Q3N_OK) return st;
    struct q3n_intervene_opts oc = {.record = 1}, oi = {.record = 1, .isolate = 1};
    st = q3n_tool_forward(r, &oc, &ch, 0, logits, &iso->logits_chained, err);
    if (st == Q3N_OK) st = q3n_tool_forward(r, &oi, &is, 0, logits, &iso->logits_isolated, err);
    if (st != Q3N_OK) goto done;
    iso->rows = calloc(ch.n_records ? ch.n_records : 1, sizeof *iso->rows);
    if (!iso->rows) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "isolate: out of memory");
        goto done;
    }
    for (size_t i = 0; i < ch.n_records; i++) {
        struct q3n_isolation_row *row = &iso->rows[iso->n++];
        const struct q3n_tap_record *c = &ch.records[i];
        const struct q3n_tap_record *x = q3n_intervene_find(&is, c->name);
        snprintf(row->name, sizeof row->name, "%s", c->name);
        row->chained = c->in_golden ? c->rel_l2 : NAN;
        row->isolated = x && x->in_golden ? x->rel_l2 : NAN;
        row->live = x && x->replaced;
        iso->not_live += !(x && x->live); /* live as the isolated (intervening) run saw it */
        if (!isnan(row->isolated) && (iso->worst < 0 || row->isolated > iso->rows[iso->worst].isolated))
            iso->worst = (long)(iso->n - 1);
    }
done:
    q3n_intervene_free(&ch);
    q3n_intervene_free(&is);
    free(logits);
    if (st != Q3N_OK) q3n_isolation_free(iso);
    return st;
}

static void iso_svg(FILE *out, const struct q3n_isolation *iso)
{
    const int W = 900, H = 320, L = 60, B = 30, T = 20;
    double lo = -9, hi = 0;
    for (size_t i = 0; i < iso->n; i++) {
        double v[2] = {iso->rows[i].chained, iso->rows[i].isolated};
        for (int k = 0; k < 2; k++)
            if (v[k] > 0 && log10(v[k]) > hi) hi = ceil(log10(v[k]));
    }
    fprintf(out, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"monospace\" "
                 "font-size=\"11\">\n",
            W, H);
    for (int e = (int)lo; e <= (int)hi; e++) {
        double y = T + (H - T - B) * (hi - e) / (hi - lo);
        fprintf(out, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"4\" y=\"%.1f\">1e%d</text>\n", L,
                W - 10, y, y, y + 4, e);
    }
    const char *color[2] = {"#2e86c1", "#c0392b"}, *label[2] = {"chained", "isolated"};
    for (int k = 0; k < 2; k++) {
        fprintf(out, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", color[k]);
        for (size_t i = 0; i < iso->n; i++) {
            double v = k == 0 ? iso->rows[i].chained : iso->rows[i].isolated;
            if (isnan(v)) continue;
            double lv = v > 0 ? log10(v) : lo;
            if (lv < lo) lv = lo;
            double x = L + (W - L - 10) * (iso->n > 1 ? (double)i / (double)(iso->n - 1) : 0.5);
            double y = T + (H - T - B) * (hi - lv) / (hi - lo);
            fprintf(out, "%.1f,%.1f ", x, y);
        }
        fprintf(out, "\"/><text x=\"%d\" y=\"%d\" fill=\"%s\">%s</text>\n", L + 10 + 90 * k, H - 8, color[k], label[k]);
    }
    fprintf(out, "<text x=\"%d\" y=\"%d\">rel_l2 per tap, execution order (%zu taps; zero drawn at 1e%d)</text>\n</svg>\n",
            L + 200, H - 8, iso->n, (int)lo);
}

enum q3n_status q3n_isolation_write(FILE *out, const struct q3n_isolation *iso, const char *format, int top,
                                    struct q3n_error *err)
{
    int md = strcmp(format, "md") == 0, html = strcmp(format, "html") == 0, text = strcmp(format, "text") == 0;
    if (!md && !html && !text)
        return q3n_error_set(err, Q3N_ERR_USAGE, "isolate: unknown format '%s' (text, md or html)", format);
    const struct q3n_isolation_row *w = iso->worst >= 0 ? &iso->rows[iso->worst] : NULL;
    if (html) fprintf(out, "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>q3n isolate</title></head><body>\n<h1>chained vs isolated</h1>\n<p>");
    if (md) fprintf(out, "## chained vs isolated\n\n");
    if (w)
        fprintf(out, "largest isolated error (the module to look at first): %s%s%s  isolated rel_l2 %.4g, chained %.4g\n",
                md ? "`" : "", w->name, md ? "`" : "", w->isolated, w->chained);
    fprintf(out, "%slogits: chained rel_l2 %.4g, isolated %.4g\n", html ? "<br>" : md ? "\n" : "", iso->logits_chained,
            iso->logits_isolated);
    if (iso->not_live)
        fprintf(out, "%s%zu taps were not emitted live: their consumers ran on the implementation's values\n",
                html ? "<br>" : md ? "\n" : "", iso->not_live);
    if (html) {
        fprintf(out, "</p>\n");
        iso_svg(out, iso);
        fprintf(out, "<table border=\"1\" cellpadding=\"3\"><tr><th>tap</th><th>chained rel_l2</th><th>isolated rel_l2</th></tr>\n");
    } else if (md) {
        fprintf(out, "\n| tap | chained rel_l2 | isolated rel_l2 |\n|---|---|---|\n");
    } else {
        fprintf(out, "  %-60s %14s %14s\n", "tap", "chained", "isolated");
    }
    size_t shown = 0;
    for (size_t i = 0; i < iso->n; i++) {
        const struct q3n_isolation_row *row = &iso->rows[i];
        if (top > 0 && shown >= (size_t)top && (long)i != iso->worst) continue;
        shown++;
        const char *mark = (long)i == iso->worst ? " <==" : "";
        if (html) fprintf(out, "<tr><td>%s%s</td><td>%.4g</td><td>%.4g</td></tr>\n", row->name, mark, row->chained, row->isolated);
        else if (md) fprintf(out, "| `%s`%s | %.4g | %.4g |\n", row->name, mark, row->chained, row->isolated);
        else fprintf(out, "  %-60s %14.4g %14.4g%s\n", row->name, row->chained, row->isolated, mark);
    }
    if (html) fprintf(out, "</table>\n</body></html>\n");
    if (ferror(out)) return q3n_error_set(err, Q3N_ERR_IO, "isolate: write error");
    return Q3N_OK;
}
