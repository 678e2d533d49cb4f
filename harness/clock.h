/* clock.h — the one wall clock q3n times with (benchmarks, fuzz budgets, CPU phase profiles). */
#ifndef Q3N_CLOCK_H
#define Q3N_CLOCK_H

/* Seconds on CLOCK_MONOTONIC (only differences mean anything). */
double q3n_now_s(void);

#endif
