/* testbug.h — planted bugs for proving that q3n's checks catch them (run_options->test_bug).
 * Private to ref/; never reached unless a test asks for a bug by name. */
#ifndef Q3N_REF_TESTBUG_H
#define Q3N_REF_TESTBUG_H

#include "model.h"

/* ref_delta_rule_chunked with each chunk's last token left out of the state update. */
void ref_delta_rule_chunked_bug_drop_last(ref_real *o, ref_real *state, const ref_real *q, const ref_real *k,
                                          const ref_real *v, const ref_real *g, const ref_real *beta,
                                          ref_real *scratch, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                                          int64_t DV, int64_t C);

#endif
