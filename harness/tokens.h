/* tokens.h — parsing a token list from the command line ("1,2,3"). */
#ifndef Q3N_TOKENS_H
#define Q3N_TOKENS_H

#include <stdint.h>

#include "status.h"

/* Parses comma-separated decimal token ids ("15, 2,3"): each item is optional blanks, digits,
 * optional blanks; ids must fit in int64 (vocabulary range is checked later, by the model).
 * On success *out is a malloc'd array of *n >= 1 ids the caller frees. On failure (NULL or empty
 * text, an empty item, a sign, a non-digit, overflow) returns Q3N_ERR_USAGE with a message naming
 * the item and character offset, and sets *out = NULL, *n = 0. */
enum q3n_status q3n_parse_tokens(const char *text, int64_t **out, int64_t *n, struct q3n_error *err);

#endif
