/* fuzz_tokens.c — libFuzzer target: the --tokens argument parser (harness/tokens.c).
 *
 * The input, NUL-terminated, is parsed as a token list. It must either give n >= 1 ids with
 * a malloc'd array, or fail with *out == NULL, n == 0 and a message (fuzz_msg.h);
 * never a crash, a read past the terminator or a sanitizer report. An accepted list is
 * printed back ("1,2,3") and parsed again: the same ids must come back (round trip).
 * Built by fuzz/fuzz.mk (`make fuzz-parsers`). */
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../harness/tokens.h"
#include "fuzz_msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct q3n_error err;
    int64_t *ids = NULL, *again = NULL, n = -1, n2 = -1;
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    q3n_error_clear(&err);
    if (q3n_parse_tokens(text, &ids, &n, &err) != Q3N_OK) {
        if (ids != NULL || n != 0) abort();
        fuzz_check_msg(&err);
        free(text);
        return 0;
    }
    if (!ids || n < 1) abort();
    size_t cap = (size_t)n * 21 + 1;
    char *printed = malloc(cap);
    if (!printed) abort();
    size_t used = 0;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0) abort(); /* no signs accepted */
        used += (size_t)snprintf(printed + used, cap - used, "%s%" PRId64, i ? "," : "", ids[i]);
    }
    if (q3n_parse_tokens(printed, &again, &n2, &err) != Q3N_OK || n2 != n) abort();
    if (memcmp(ids, again, (size_t)n * sizeof *ids) != 0) abort();
    free(again);
    free(printed);
    free(ids);
    free(text);
    return 0;
}
