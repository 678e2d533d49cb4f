/* shrink.h — shrinking a failing fuzz case to the smallest one that still fails, and writing
 * it out as a regression pair (issue 8; docs/fuzzing.md).
 *
 * Shrinking is greedy: each round tries, in order, dropping a layer, shortening T, turning off
 * MTP / the shared expert, fewer experts and top-k, fewer heads, smaller head dims, hidden
 * size and vocabulary, a smaller conv kernel; a candidate is kept when q3n_config_validate
 * accepts it and `still_fails` says it still fails. Rounds repeat until none of them helps or
 * the try budget is spent. Weights are redrawn for each candidate shape from the same seed. */
#ifndef Q3N_SHRINK_H
#define Q3N_SHRINK_H

#include "fuzz_cases.h"
#include "status.h"

/* Returns 1 if the case still fails, 0 if it passes; -1 on an error that is not a finding
 * (the candidate is then skipped). */
typedef int (*q3n_shrink_pred)(void *user, const struct q3n_fuzz_case *c);

/* Shrinks `c` in place. *tries receives the number of candidates run. */
void q3n_shrink_case(struct q3n_fuzz_case *c, q3n_shrink_pred still_fails, void *user, int max_tries, int *tries);

/* The size measure shrinking decreases (parameter count plus T x width); for reports. */
int64_t q3n_shrink_size(const struct q3n_fuzz_case *c);

/* Writes the case as a committed-regression pair under `dir` (created if missing; must be empty):
 *   config.json, model.safetensors   the checkpoint (harness/checkpoint.h, F32, one file)
 *   golden.h5                        the ref run in the golden schema (checkpoint ".")
 *   candidate.h5                     the run of `impl` (with `test_bug`), same schema
 *   case.txt                         the case description, its seeds and the repro commands
 * so `q3n verify DIR/golden.h5 --impl IMPL` replays it. */
enum q3n_status q3n_shrink_write_repro(const char *dir, const struct q3n_fuzz_case *c, const char *impl,
                                       const char *test_bug, const char *repro_cmd, struct q3n_error *err);

#endif
