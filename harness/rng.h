/* rng.h — a small seeded generator (splitmix64) for synthetic weights, inputs and fuzzing.
 * Deterministic across machines: the same seed gives the same stream everywhere. */
#ifndef Q3N_RNG_H
#define Q3N_RNG_H

#include <stdint.h>

struct q3n_rng {
    uint64_t state;
};

void q3n_rng_seed(struct q3n_rng *rng, uint64_t seed);
uint64_t q3n_rng_u64(struct q3n_rng *rng);
double q3n_rng_uniform(struct q3n_rng *rng);               /* [0, 1) with 53 random bits */
double q3n_rng_range(struct q3n_rng *rng, double lo, double hi); /* [lo, hi) */
double q3n_rng_normal(struct q3n_rng *rng);                /* standard normal (Box-Muller) */
int64_t q3n_rng_int(struct q3n_rng *rng, int64_t lo, int64_t hi); /* uniform in [lo, hi] */

#endif
