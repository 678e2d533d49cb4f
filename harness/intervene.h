/* intervene.h — intervening tap sinks: isolate, replace-layer, force-routing, emulate-bf16.
 *
 * Built on the intervention contract of tap.h: a tap emitted with q3n_tap_emit_live carries
 * `writable`, the live buffer the implementation reads downstream, and a sink with
 * `intervene = 1` may overwrite it. Every tool here is therefore implementation-agnostic:
 *   - isolate:        compare each tap with the golden, then overwrite it with the golden's
 *                     value, so every operation runs on golden inputs (`verify --isolated`);
 *   - replace:        overwrite only the taps matching a pattern list (blame replaces
 *                     `model.layers.{i}.out`, one layer per run);
 *   - force routing:  overwrite `*.mlp.gate.topk_idx` / `.topk_weight` with the golden's,
 *                     for every token or for one (prefix, token) pair, and record flips;
 *   - emulate bf16:   round every live floating tap to bfloat16 (round to nearest even)
 *                     unless its name matches an fp32 pattern list (precision bisection
 *                     without a GPU); a test-only "weak op" rounds one op to few mantissa bits.
 * Per sink call the order is: round (emulate / weak op), observe (record errors and hashes,
 * then the inner sink, e.g. verify's compare tap), replace (isolate / replace / routing).
 *
 * Golden values come through struct q3n_golden_src, a by-name reader (harness/goldenrun.h
 * adapts a golden HDF5 file; tests use in-memory tables), so the sinks do not depend on files.
 * The sink owns growable logs; q3n_intervene_free releases them. Not thread-safe: one sink
 * per forward. */
#ifndef Q3N_INTERVENE_H
#define Q3N_INTERVENE_H

#include <stddef.h>
#include <stdint.h>

#include "impl.h"
#include "status.h"
#include "tap.h"

/* ---- golden source ------------------------------------------------------------------ */

struct q3n_golden_src {
    void *user;
    /* Element count of tap `name` in the golden, -1 when it has no such tap. */
    int64_t (*numel)(void *user, const char *name);
    /* Reads tap `name` converted to `as` (F32, F64 or I64) into out (numel elements). */
    enum q3n_status (*read)(void *user, const char *name, enum q3n_dtype as, void *out, int64_t numel,
                            struct q3n_error *err);
};

/* ---- patterns ------------------------------------------------------------------------- */

/* Shell-style glob: '*' matches any run of characters (dots included), '?' one character.
 * "model.layers.*.mlp*" matches "model.layers.3.mlp.gate.logits". */
int q3n_glob_match(const char *pattern, const char *name);

/* A pattern list: globs separated by commas, spaces or newlines; '#' starts a comment to the
 * end of the line. Returns 1 if any glob matches `name`. NULL or empty list matches nothing. */
int q3n_patterns_match(const char *patterns, const char *name);

/* Reads a pattern-list file into a malloc'd string (free with free()). */
enum q3n_status q3n_patterns_load(char **out, const char *path, struct q3n_error *err);

/* ---- rounding ------------------------------------------------------------------------- */

/* Rounds to `mant_bits` explicit mantissa bits (bfloat16: 7) with round-to-nearest-even;
 * NaN and Inf pass through, overflow goes to Inf. For f64 the exponent range is the same
 * as float's only when the value is in float range (values here always are). */
float q3n_round_mantissa_f32(float x, int mant_bits);
double q3n_round_mantissa_f64(double x, int mant_bits);

#define Q3N_BF16_MANT_BITS 7

/* ---- error log ------------------------------------------------------------------------ */

/* One observed tap: its error against the golden before any replacement (the isolated error
 * in isolate mode, the chained one otherwise) and the FNV-1a hash of its bytes. */
struct q3n_tap_record {
    char name[Q3N_TAP_NAME_MAX];
    enum q3n_dtype dtype;
    int64_t numel;
    int live;           /* emitted with a writable buffer */
    int in_golden;      /* the golden had it, so rel_l2/max_abs are meaningful */
    int replaced;       /* this sink overwrote it */
    int rounded;        /* emulate-bf16 or weak-op rounded it */
    double rel_l2;      /* ||x - g|| / ||g||; for int64 taps the fraction of differing elements */
    double max_abs;
    double max_rel;     /* max |x - g| / max(|g|, rel_small): the smallest rtol that passes at atol 0 */
    uint64_t hash;      /* FNV-1a 64 over the tap's bytes as observed */
};

/* A routing flip: token t of the layer `prefix` chose a different expert set than the golden. */
struct q3n_flip {
    char prefix[Q3N_TAP_NAME_MAX]; /* "model.layers.5" or "mtp.layers.0" */
    int layer;                     /* the layer index, -1 for mtp layers */
    int64_t token;
    double margin;   /* golden probs: K-th chosen minus best unchosen (-1 when probs are absent) */
    int n_differ;    /* experts in the golden's set missing from the impl's */
};

/* ---- the sink ------------------------------------------------------------------------ */

struct q3n_intervene_opts {
    const struct q3n_golden_src *golden; /* needed by record-with-errors, isolate, replace, routing */
    int record;                 /* keep a q3n_tap_record per tap */
    int isolate;                /* replace every live tap that the golden holds */
    const char *replace;        /* pattern list of live taps to replace with the golden's */
    int force_routing;          /* replace *.mlp.gate.topk_idx / topk_weight with the golden's */
    const char *force_prefix;   /* only this layer prefix ("model.layers.3"); NULL all */
    int force_single_token;     /* 1: only row force_token of the matching layers */
    int64_t force_token;
    int detect_flips;           /* compare topk_idx sets with the golden's, log flips */
    int emulate_bf16;           /* round live float taps to bf16 unless they match fp32 */
    const char *fp32;           /* pattern list kept in full precision under emulate_bf16 */
    const char *weak_op;        /* test-only: ops rounded to weak_bits mantissa bits instead of
                                   bf16's 7 (unless they match fp32 under emulate_bf16) */
    int weak_bits;              /* default 4 when 0 */
    const struct q3n_tap_sink *inner; /* observes the (rounded) taps before replacement; may be NULL */
    double rel_small;           /* the |g| floor of q3n_tap_record.max_rel (0: 0.1, the policy's default small) */
    int ask_live;               /* ask for live buffers even without writing (which taps are live?) */
};

struct q3n_intervene {
    struct q3n_intervene_opts opt;
    struct q3n_tap_record *records;
    size_t n_records, cap_records;
    struct q3n_flip *flips;
    size_t n_flips, cap_flips;
    int64_t n_replaced;         /* taps overwritten */
    int64_t n_rounded;          /* taps rounded */
    void *scratch;              /* golden read buffer */
    size_t scratch_bytes;
    void *scratch2;
    size_t scratch2_bytes;
};

/* Initialises the state (copies opts; the strings must outlive it). */
void q3n_intervene_init(struct q3n_intervene *iv, const struct q3n_intervene_opts *opts);
/* Forgets logs between runs, keeps options and buffers. */
void q3n_intervene_clear(struct q3n_intervene *iv);
void q3n_intervene_free(struct q3n_intervene *iv); /* accepts NULL */

/* The sink to pass to forward(): fn/user bound to iv; intervene = 1 only when the options can
 * write (isolate, replace, force_routing, emulate_bf16, weak_op, an intervening inner sink) or ask_live,
 * so a record-only sink observes the implementation exactly as verify's sink does. */
struct q3n_tap_sink q3n_intervene_sink(struct q3n_intervene *iv);

/* The record for tap `name`, or NULL. */
const struct q3n_tap_record *q3n_intervene_find(const struct q3n_intervene *iv, const char *name);

/* ---- metrics shared by the tools ----------------------------------------------------------- */

/* ||a - b|| / ||b|| over n floats, in double; 0 when both are zero, +inf when b is zero and a
 * is not, NaN when either holds a NaN (fail-closed callers test !(x <= tol)). */
double q3n_rel_l2_f32(const float *a, const float *b, int64_t n);
/* 1 if the two buffers are bitwise equal. */
int q3n_bitwise_equal(const void *a, const void *b, size_t bytes);
uint64_t q3n_fnv1a(const void *data, size_t bytes);

/* Parses "<prefix>.mlp.gate.topk_idx"-style names: the layer index of "model.layers.{i}.*"
 * (-1 for anything else, e.g. "mtp.layers.0.*"). */
int q3n_tap_layer_index(const char *name);

/* ---- one intervened forward: what every tool repeats ------------------------------------ */

/* A run set-up shared by blame, bisection, routing analysis and the determinism ledger. */
struct q3n_tool_run {
    const struct q3n_impl *impl;
    const struct q3n_model *model;
    struct q3n_run_options opt;
    const int64_t *tokens;
    int64_t T;
    int64_t V;                           /* logits width */
    const float *golden_logits;          /* [T,V], NULL: logits_rel_l2 is NaN */
    const struct q3n_golden_src *golden; /* NULL: no tap-level golden */
    int emulate_bf16;                    /* applied to every run (cpu/ref bf16 emulation) */
    const char *fp32;                    /* fp32 patterns under emulate_bf16 */
    const char *weak_op;                 /* test-only weak op (see q3n_intervene_opts) */
    int weak_bits;
    /* the golden's routing as run_options.forced_routing, used by the routing analysis for
     * implementations whose top-k taps are not live (NULL: none) */
    const struct q3n_forced_routing *golden_routing;
};

/* Opens a fresh session of r->impl, forwards r->tokens once with an intervening sink
 * configured by `o` (r's golden, emulate_bf16, fp32, weak_op, weak_bits fill the fields `o`
 * leaves unset; o NULL = only those), writes logits [T,V] and, when r->golden_logits is set,
 * *logits_rel_l2 = rel_l2(logits, golden logits) (may be NULL). `taps_off` 1 passes a sink
 * with fn NULL instead (no tap work at all). When iv is non-NULL it is initialised here and
 * keeps the records and flips (the caller frees it); otherwise a local sink is used. */
enum q3n_status q3n_tool_forward(const struct q3n_tool_run *r, const struct q3n_intervene_opts *o,
                                 struct q3n_intervene *iv, int taps_off, float *logits, double *logits_rel_l2,
                                 struct q3n_error *err);

#endif
