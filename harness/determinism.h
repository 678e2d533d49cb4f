/* determinism.h — the determinism ledger (issue 9).
 *
 * For one implementation on one input:
 *   1. taps must not change the result: the logits of a run with every tap observed and of a
 *      run with taps off (sink fn NULL) must be bitwise equal;
 *   2. over `runs` (>= 2) runs with taps on, each tap is recorded as bitwise reproducible or
 *      not (FNV-1a of its bytes per run), and so are the logits;
 *   3. a previous ledger (`expect`) holds the taps it recorded as reproducible to bitwise
 *      equality: such a tap that now differs between runs is a regression (a new atomic or
 *      split-K reduction), while taps it lists as non-reproducible may keep differing.
 * The report names the non-reproducible taps with the kernels the implementation says ran
 * (impl->describe), since those are where atomics or split-K reductions live.
 * Ledger file (JSON): {"impl", "kernels", "runs", "taps_neutral", "logits_reproducible",
 * "taps": [{"name", "reproducible"}...]}. */
#ifndef Q3N_DETERMINISM_H
#define Q3N_DETERMINISM_H

#include <stdio.h>

#include "intervene.h"

struct q3n_det_tap {
    char name[Q3N_TAP_NAME_MAX];
    int reproducible;   /* same bytes in every run */
    int expected;       /* -1 unknown, else the expect ledger's verdict */
};

struct q3n_det_ledger {
    char impl[32];
    char kernels[512];
    int runs;
    int taps_neutral;          /* logits with taps on == taps off, bitwise */
    int logits_reproducible;
    size_t n;
    struct q3n_det_tap *taps;
    size_t n_nonrepro;
    size_t n_regressed;        /* expected reproducible, now not */
    size_t n_missing;          /* taps whose emission count/order changed between runs */
};

/* Runs r->impl runs+1 times (runs with taps on, one with taps off). `expect` may be NULL or
 * a ledger read by q3n_det_ledger_read. */
enum q3n_status q3n_determinism_run(struct q3n_det_ledger *led, const struct q3n_tool_run *r, int runs,
                                    const struct q3n_det_ledger *expect, struct q3n_error *err);
void q3n_det_ledger_free(struct q3n_det_ledger *led); /* accepts NULL */

/* 1 when the ledger passes: taps neutral and no regressed tap. */
int q3n_det_ledger_ok(const struct q3n_det_ledger *led);

enum q3n_status q3n_det_ledger_write_json(const struct q3n_det_ledger *led, const char *path, struct q3n_error *err);
enum q3n_status q3n_det_ledger_read(struct q3n_det_ledger *led, const char *path, struct q3n_error *err);
void q3n_det_ledger_write_text(FILE *out, const struct q3n_det_ledger *led);

#endif
