/* tokens.c — see tokens.h. */
#include "tokens.h"

#include <stdlib.h>
#include <string.h>

static int is_blank(char c)
{
    return c == ' ' || c == '\t';
}

enum q3n_status q3n_parse_tokens(const char *text, int64_t **out, int64_t *n, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    int64_t *ids = NULL;
    *out = NULL;
    *n = 0;
    if (!text || !text[0]) return q3n_error_set(err, Q3N_ERR_USAGE, "--tokens: empty token list");

    size_t len = strlen(text), items = 1;
    for (size_t i = 0; i < len; i++) items += text[i] == ',';
    ids = malloc(items * sizeof *ids);
    if (!ids) return q3n_error_set(err, Q3N_ERR_NOMEM, "--tokens: out of memory for %zu ids", items);

    size_t pos = 0, count = 0;
    for (;;) {
        while (is_blank(text[pos])) pos++;
        if (text[pos] < '0' || text[pos] > '9') {
            if (text[pos] == '\0' || text[pos] == ',')
                st = q3n_error_set(err, Q3N_ERR_USAGE, "--tokens: item %zu (offset %zu) is empty", count + 1, pos);
            else
                st = q3n_error_set(err, Q3N_ERR_USAGE,
                                   "--tokens: item %zu (offset %zu): '%c' is not a digit (ids are non-negative "
                                   "decimal integers)",
                                   count + 1, pos, (text[pos] >= 32 && text[pos] < 127) ? text[pos] : '?');
            goto cleanup;
        }
        int64_t v = 0;
        while (text[pos] >= '0' && text[pos] <= '9') {
            int d = text[pos] - '0';
            if (v > (INT64_MAX - d) / 10) {
                st = q3n_error_set(err, Q3N_ERR_USAGE, "--tokens: item %zu (offset %zu) overflows int64", count + 1,
                                   pos);
                goto cleanup;
            }
            v = v * 10 + d;
            pos++;
        }
        while (is_blank(text[pos])) pos++;
        ids[count++] = v;
        if (text[pos] == '\0') break;
        if (text[pos] != ',') {
            st = q3n_error_set(err, Q3N_ERR_USAGE, "--tokens: item %zu (offset %zu): expected ',' or the end, got '%c'",
                               count, pos, (text[pos] >= 32 && text[pos] < 127) ? text[pos] : '?');
            goto cleanup;
        }
        pos++;
    }
    *out = ids;
    *n = (int64_t)count;
    ids = NULL;

cleanup:
    free(ids);
    return st;
}
