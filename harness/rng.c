/* rng.c — splitmix64 and the distributions built on it; see rng.h. */
#include "rng.h"

#include <math.h>

#include "status.h"

void q3n_rng_seed(struct q3n_rng *rng, uint64_t seed)
{
    rng->state = seed ^ 0x9E3779B97F4A7C15ull;
}

/* splitmix64 (Steele, Lea, Flood 2014): state += golden gamma, then a 64-bit finaliser. */
uint64_t q3n_rng_u64(struct q3n_rng *rng)
{
    uint64_t z = (rng->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double q3n_rng_uniform(struct q3n_rng *rng)
{
    return (double)(q3n_rng_u64(rng) >> 11) * 0x1.0p-53;
}

double q3n_rng_range(struct q3n_rng *rng, double lo, double hi)
{
    return lo + (hi - lo) * q3n_rng_uniform(rng);
}

/* Box-Muller: sqrt(-2 ln u1) cos(2 pi u2), u1 in (0, 1]. */
double q3n_rng_normal(struct q3n_rng *rng)
{
    double u1 = 1.0 - q3n_rng_uniform(rng);
    double u2 = q3n_rng_uniform(rng);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

int64_t q3n_rng_int(struct q3n_rng *rng, int64_t lo, int64_t hi)
{
    Q3N_REQUIRE(lo <= hi);
    uint64_t span = (uint64_t)(hi - lo) + 1u;
    if (span == 0) return (int64_t)q3n_rng_u64(rng); /* full 64-bit range */
    return lo + (int64_t)(q3n_rng_u64(rng) % span);
}
