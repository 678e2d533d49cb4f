/* args.h — strict parsers for command-line option values, shared by the q3n subcommands.
 * Each returns 1 and stores the value when the whole string is a valid value, else 0 and leaves
 * the output alone (the caller prints the one-line "bad argument" error). */
#ifndef Q3N_ARGS_H
#define Q3N_ARGS_H

#include <stdint.h>

/* a decimal integer >= lo */
int q3n_arg_ll(const char *s, long long lo, long long *out);
/* a finite number > 0 (strtod syntax: 3.35e12) */
int q3n_arg_pos_double(const char *s, double *out);
/* "4096,16384": 1..cap comma-separated integers, each >= lo; *n gets how many */
int q3n_arg_i64_list(const char *s, int64_t lo, int64_t *out, int cap, int *n);

#endif
