/* report_md.c — Markdown report for a pull-request comment; see report.h. */
#include "report.h"

#include <string.h>

/* Markdown table cells: '|' would end the cell. */
static void md_cell(FILE *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            fputs("\\|", out);
        else if (*s == '\n')
            fputc(' ', out);
        else
            fputc(*s, out);
    }
}

static void md_row(FILE *out, const struct q3n_tensor_result *t, int mark)
{
    char shape[64], l2[24], mx[24], hr[24], where[64], mt[64];
    q3n_shape_str(shape, sizeof shape, t->rank, t->dims);
    q3n_report_num(l2, sizeof l2, t->m.rel_l2);
    q3n_report_num(mx, sizeof mx, t->m.max_abs);
    q3n_report_pct(hr, sizeof hr, t->headroom_pct);
    q3n_report_where(where, sizeof where, t, t->m.max_abs_index);
    q3n_report_min_tol(mt, sizeof mt, t);
    int is_float = t->tol.kind == Q3N_KIND_FLOAT && t->verdict != Q3N_VERDICT_ERROR;
    fprintf(out, "| %s`%s`%s | %s | %s | %s | %s | %s | %s | ", mark ? "**" : "", t->name, mark ? "** (first divergence)" : "",
            shape, is_float ? l2 : "-", is_float ? mx : "-", is_float ? where : "-", is_float ? hr : "-",
            q3n_verdict_is_failure(t->verdict) ? "**FAIL**" : q3n_verdict_name(t->verdict));
    md_cell(out, is_float && q3n_verdict_is_failure(t->verdict) ? mt : "");
    fputs(" | ", out);
    md_cell(out, t->note);
    fputs(" |\n", out);
}

static void md_table_head(FILE *out)
{
    fputs("| tensor | shape | rel_l2 | max_abs | at | use of tol | verdict | would pass at | note |\n"
          "|---|---|---|---|---|---|---|---|---|\n",
          out);
}

enum q3n_status q3n_report_md(FILE *out, const struct q3n_result *r, struct q3n_error *err)
{
    (void)err;
    char line[512];
    q3n_report_summary_line(line, sizeof line, r);
    fprintf(out, "## q3n %s: %s\n\n", r->command, q3n_result_exit_code(r) ? "FAIL" : "PASS");
    fprintf(out, "%s\n\n", line);
    fprintf(out, "| | |\n|---|---|\n");
    if (r->impl[0]) fprintf(out, "| implementation | `%s` |\n", r->impl);
    else fprintf(out, "| candidate | `%s` |\n", r->candidate);
    fprintf(out, "| kernels | `%s` |\n", r->kernels[0] ? r->kernels : "-");
    fprintf(out, "| dtype | %s (%s mode) |\n", r->dtype, r->mode);
    fprintf(out, "| policy | `%s` |\n", r->policy_path);
    fprintf(out, "| reference | `%s` |\n", r->golden_path);
    fprintf(out, "| golden versions | format %lld, %s, transformers %s, torch %s, %s, preset %s, seed %lld |\n\n",
            (long long)r->golden_format_version, r->golden_generator[0] ? r->golden_generator : "-",
            r->golden_transformers[0] ? r->golden_transformers : "-", r->golden_torch[0] ? r->golden_torch : "-",
            r->golden_dtype[0] ? r->golden_dtype : "-", r->golden_preset[0] ? r->golden_preset : "-",
            (long long)r->golden_seed);
    if (r->first_divergence >= 0) {
        const struct q3n_tensor_result *fd = &r->tensors[r->first_divergence];
        fprintf(out, "### First divergence: `%s` (layer %d)\n\n", fd->name, fd->layer);
        int64_t lo, hi, at;
        q3n_report_growth_window(r, 4, 4, &lo, &hi);
        char b[24], a[24];
        q3n_report_num(b, sizeof b, q3n_report_max_rel_l2(r, 0, r->first_divergence, &at));
        q3n_report_num(a, sizeof a, q3n_report_max_rel_l2(r, r->first_divergence + 1, r->n_tensors, &at));
        fprintf(out, "Largest rel_l2 before it: %s; after it: %s. Error growth around it:\n\n", b, a);
        md_table_head(out);
        for (int64_t i = lo; i < hi; i++) md_row(out, &r->tensors[i], i == r->first_divergence);
        fputc('\n', out);
    }
    if (r->nan_origin >= 0) {
        const struct q3n_tensor_result *t = &r->tensors[r->nan_origin];
        char where[64];
        q3n_report_where(where, sizeof where, t, t->m.first_nonfinite_bad_index);
        fprintf(out, "### NaN/Inf origin: `%s` (first non-finite at %s)\n\n", t->name, where);
    }
    if (r->flip_layer_first >= 0) {
        const struct q3n_tensor_result *t = &r->tensors[r->flip_layer_first];
        fprintf(out, "### Router flips\n\nFirst at `%s`, token %lld: ", t->name, (long long)t->topk.first_flip_token);
        md_cell(out, t->note);
        fputs("\n\n", out);
    }
    int any = 0;
    for (int64_t i = 0; i < r->n_tensors; i++) {
        if (!q3n_verdict_is_failure(r->tensors[i].verdict)) continue;
        if (!any) {
            fputs("### Failing tensors\n\n", out);
            md_table_head(out);
        }
        any = 1;
        md_row(out, &r->tensors[i], i == r->first_divergence);
    }
    if (any) fputc('\n', out);
    if (r->n_only_a || r->n_only_b) {
        fputs("### Names on one side only\n\n", out);
        for (int64_t i = 0; i < r->n_only_a; i++) fprintf(out, "- only in candidate: `%s`\n", r->only_a[i]);
        for (int64_t i = 0; i < r->n_only_b; i++) fprintf(out, "- only in reference: `%s`\n", r->only_b[i]);
        fputc('\n', out);
    }
    fprintf(out, "<details><summary>All %lld tensors</summary>\n\n", (long long)r->n_tensors);
    md_table_head(out);
    for (int64_t i = 0; i < r->n_tensors; i++) md_row(out, &r->tensors[i], i == r->first_divergence);
    fputs("\n</details>\n", out);
    return Q3N_OK;
}
