/* fuzz_config.c — libFuzzer target: config.json parsing and validation (harness/config.c).
 *
 * Any input must give Q3N_OK or an error with a message (fuzz_msg.h), never a crash,
 * a sanitizer report or a hang; an accepted config must pass q3n_config_validate again and
 * have derived sizes that are positive. Built by fuzz/fuzz.mk (`make fuzz-parsers`). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../harness/config.h"
#include "fuzz_msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct q3n_config cfg;
    struct q3n_error err;
    q3n_error_clear(&err);
    enum q3n_status st = q3n_config_parse(&cfg, (const char *)data, size, "fuzz/config.json", &err);
    if (st != Q3N_OK) {
        fuzz_check_msg(&err);
        return 0;
    }
    if (q3n_config_validate(&cfg, "fuzz/config.json", &err) != Q3N_OK) abort(); /* parse accepted, validate refused */
    if (q3n_config_conv_dim(&cfg) <= 0 || q3n_config_qkvz_dim(&cfg) <= 0) abort();
    if (q3n_config_param_count(&cfg) <= 0) abort();
    return 0;
}
