/* report.h — renders a struct q3n_result (result.h) in the formats of docs/reports.md.
 *
 * Every format carries the header (implementation, kernel path, dtype, policy, golden and its
 * versions), one entry per tensor with its verdict and headroom, the first divergence with the
 * error growth around it, the NaN/Inf origin and the router flips. Writers write to a
 * caller-owned FILE (a file, stdout, or open_memstream in tests); they print nothing else. */
#ifndef Q3N_REPORT_H
#define Q3N_REPORT_H

#include <stddef.h>
#include <stdio.h>

#include "result.h"
#include "status.h"

enum q3n_report_format {
    Q3N_REPORT_TEXT = 0,
    Q3N_REPORT_MD,
    Q3N_REPORT_HTML,
    Q3N_REPORT_JUNIT,
    Q3N_REPORT_JSON
};

struct q3n_report_options {
    int color; /* text: ANSI colours (the CLI sets it when stdout is a TTY) */
    int quiet; /* text: the summary only */
};

/* "text", "md", "html", "junit", "json" -> format; returns 0 if unknown. */
int q3n_report_format_parse(const char *s, enum q3n_report_format *fmt);

enum q3n_status q3n_report_write(FILE *out, const struct q3n_result *r, enum q3n_report_format fmt,
                                 const struct q3n_report_options *opt, struct q3n_error *err);

enum q3n_status q3n_report_text(FILE *out, const struct q3n_result *r, const struct q3n_report_options *opt,
                                struct q3n_error *err);
enum q3n_status q3n_report_md(FILE *out, const struct q3n_result *r, struct q3n_error *err);
enum q3n_status q3n_report_html(FILE *out, const struct q3n_result *r, struct q3n_error *err);
enum q3n_status q3n_report_junit(FILE *out, const struct q3n_result *r, struct q3n_error *err);
enum q3n_status q3n_report_json(FILE *out, const struct q3n_result *r, struct q3n_error *err);

/* --- the output options every command shares (report_text.c) ----------------------------- */

/* --format F, --out FILE, --json FILE, --quiet as parsed from a command line. */
struct q3n_report_output {
    enum q3n_report_format format;
    const char *out_path;  /* NULL: the stream given to q3n_report_emit */
    const char *json_path; /* also save the result as JSON here (NULL: no) */
    int quiet;
};

/* If argv[*i] is one of the options above, consumes it (and its value), advances *i past it
 * and returns 1; returns 0 if it is not one of them; returns -1 with err set on a bad value
 * or a missing argument. */
int q3n_report_parse_arg(struct q3n_report_output *o, int argc, char **argv, int *i, struct q3n_error *err);

/* Writes the report to o->out_path (or `stream`, with colour when `stream_is_tty` and the format
 * is text), and the JSON result to o->json_path when set. */
enum q3n_status q3n_report_emit(const struct q3n_result *r, const struct q3n_report_output *o, FILE *stream,
                                int stream_is_tty, struct q3n_error *err);

/* --- helpers shared by the writers (report_text.c) --------------------------------------- */

/* A number as "1.23e-05", "0", "nan", "inf". */
void q3n_report_num(char *buf, size_t cap, double v);

/* A percentage as "12.3%", "inf", "nan". */
void q3n_report_pct(char *buf, size_t cap, double pct);

/* Where the worst element is: "t=3 h=1 c=7" for per-token taps ([T,..]), "[2,5,9]" for states
 * and caches; "-" when there is none. */
void q3n_report_where(char *buf, size_t cap, const struct q3n_tensor_result *t, int64_t flat);

/* The key metrics of a tensor on one line (rel_l2, max_abs at where, ulp, headroom). */
void q3n_report_metrics_line(char *buf, size_t cap, const struct q3n_tensor_result *t);

/* The smallest tolerance that would have passed: "rel_l2>=3.1e-07 rtol>=1.2e-06". */
void q3n_report_min_tol(char *buf, size_t cap, const struct q3n_tensor_result *t);

/* The error-growth window around the first divergence: tensors [*lo, *hi). Returns 0 if the
 * result has no first divergence. `before`/`after` bound the window's size. */
int q3n_report_growth_window(const struct q3n_result *r, int before, int after, int64_t *lo, int64_t *hi);

/* The largest rel_l2 among float tensors in [lo, hi) (NaN if none) and its index. */
double q3n_report_max_rel_l2(const struct q3n_result *r, int64_t lo, int64_t hi, int64_t *at);

/* One summary line: "FAIL: 3 of 120 tensors failed (2 explained by router flips, ...)". */
void q3n_report_summary_line(char *buf, size_t cap, const struct q3n_result *r);

/* Writes s escaped for XML/HTML. */
void q3n_report_xml_escape(FILE *out, const char *s);

#endif
