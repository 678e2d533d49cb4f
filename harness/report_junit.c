/* report_junit.c — JUnit XML: one testcase per tensor, so CI systems show failures natively;
 * see report.h. Explained and reported tensors pass with their note in system-out. */
#include "report.h"

#include <string.h>

static void suite_name(char *buf, size_t cap, const struct q3n_result *r)
{
    const char *g = strrchr(r->golden_path, '/');
    g = g ? g + 1 : r->golden_path;
    snprintf(buf, cap, "q3n.%s.%s.%s", r->command, r->impl[0] ? r->impl : "dump", g);
}

enum q3n_status q3n_report_junit(FILE *out, const struct q3n_result *r, struct q3n_error *err)
{
    (void)err;
    int64_t c[6];
    q3n_result_counts(r, c);
    char suite[Q3N_RESULT_STR + 64], line[512];
    suite_name(suite, sizeof suite, r);
    fputs("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n", out);
    fputs("  <testsuite name=\"", out);
    q3n_report_xml_escape(out, suite);
    fprintf(out, "\" tests=\"%lld\" failures=\"%lld\" errors=\"%lld\" skipped=\"%lld\">\n", (long long)r->n_tensors,
            (long long)c[Q3N_VERDICT_FAIL], (long long)c[Q3N_VERDICT_ERROR], (long long)c[Q3N_VERDICT_SKIPPED]);
    fputs("    <properties>\n", out);
    const char *props[][2] = {
        {"impl", r->impl},
        {"candidate", r->candidate},
        {"kernels", r->kernels},
        {"dtype", r->dtype},
        {"mode", r->mode},
        {"policy", r->policy_path},
        {"golden", r->golden_path},
        {"golden.transformers_version", r->golden_transformers},
        {"golden.torch_version", r->golden_torch},
        {"first_divergence", r->first_divergence >= 0 ? r->tensors[r->first_divergence].name : ""},
        {"nan_origin", r->nan_origin >= 0 ? r->tensors[r->nan_origin].name : ""},
    };
    for (size_t i = 0; i < sizeof props / sizeof props[0]; i++) {
        fprintf(out, "      <property name=\"%s\" value=\"", props[i][0]);
        q3n_report_xml_escape(out, props[i][1]);
        fputs("\"/>\n", out);
    }
    fputs("    </properties>\n", out);
    for (int64_t i = 0; i < r->n_tensors; i++) {
        const struct q3n_tensor_result *t = &r->tensors[i];
        char metrics[400], mt[64];
        q3n_report_metrics_line(metrics, sizeof metrics, t);
        q3n_report_min_tol(mt, sizeof mt, t);
        fputs("    <testcase classname=\"", out);
        q3n_report_xml_escape(out, suite);
        fputs("\" name=\"", out);
        q3n_report_xml_escape(out, t->name);
        fputs("\">\n", out);
        if (t->verdict == Q3N_VERDICT_FAIL || t->verdict == Q3N_VERDICT_ERROR) {
            const char *tag = t->verdict == Q3N_VERDICT_FAIL ? "failure" : "error";
            fprintf(out, "      <%s message=\"", tag);
            if (i == r->first_divergence) fputs("FIRST DIVERGENCE: ", out);
            if (i == r->nan_origin) fputs("NaN/Inf ORIGIN: ", out);
            q3n_report_xml_escape(out, t->note[0] ? t->note : metrics);
            fputs("\">", out);
            q3n_report_xml_escape(out, metrics);
            fputs("; would pass at ", out);
            q3n_report_xml_escape(out, mt);
            fprintf(out, "</%s>\n", tag);
        } else if (t->verdict == Q3N_VERDICT_SKIPPED) {
            fputs("      <skipped message=\"policy kind=skip\"/>\n", out);
        }
        fputs("      <system-out>", out);
        q3n_report_xml_escape(out, metrics);
        if (t->note[0]) {
            fputs(" -- ", out);
            q3n_report_xml_escape(out, t->note);
        }
        fputs("</system-out>\n    </testcase>\n", out);
    }
    q3n_report_summary_line(line, sizeof line, r);
    fputs("    <system-out>", out);
    q3n_report_xml_escape(out, line);
    for (int64_t i = 0; i < r->n_only_a; i++) {
        fputs("\nonly in candidate: ", out);
        q3n_report_xml_escape(out, r->only_a[i]);
    }
    for (int64_t i = 0; i < r->n_only_b; i++) {
        fputs("\nonly in reference: ", out);
        q3n_report_xml_escape(out, r->only_b[i]);
    }
    fputs("</system-out>\n  </testsuite>\n</testsuites>\n", out);
    return Q3N_OK;
}
