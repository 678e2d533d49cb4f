/* baseline.h — slow-drift check between two saved results (`q3n compare --baseline`, issue 10).
 *
 * Two q3n result files (result.h JSON) of the same golden, an old one (the baseline) and a new
 * one, are matched tensor by tensor by name. A tensor drifts when its error grew by more than
 * a factor even though it may still be inside its absolute tolerance:
 *     growth = rel_l2_new / max(rel_l2_old, floor)   fails when !(growth <= max_growth)
 * where floor = max(--floor, the golden's recorded float32 noise for that tensor), so errors at
 * the noise floor do not raise alarms by doubling from 1e-8 to 2e-8. A tensor whose verdict went
 * from pass to a failure, or that disappeared from the new result, also fails. */
#ifndef Q3N_BASELINE_H
#define Q3N_BASELINE_H

#include <stdio.h>

#include "result.h"

struct q3n_drift {
    char name[Q3N_TAP_NAME_MAX];
    double old_rel_l2, new_rel_l2, floor, growth;
    enum q3n_verdict old_verdict, new_verdict;
    int missing;  /* in the baseline, not in the new result */
    int fail;
};

struct q3n_drift_report {
    double max_growth, floor;
    size_t n;
    struct q3n_drift *items; /* baseline order */
    size_t n_fail, n_new_only;
    int worst;               /* index of the largest growth, -1 if none */
};

enum q3n_status q3n_baseline_compare(struct q3n_drift_report *rep, const struct q3n_result *old_r,
                                     const struct q3n_result *new_r, double max_growth, double floor,
                                     struct q3n_error *err);
void q3n_drift_report_free(struct q3n_drift_report *rep); /* accepts NULL */
/* Writes the failing tensors (all with verbose) and a summary line. */
void q3n_drift_report_write(FILE *out, const struct q3n_drift_report *rep, int verbose);

#endif
