/* fuzz_msg.h — the error-message check shared by the libFuzzer targets.
 *
 * Every failing call must leave a non-empty message that is one printable line: no byte below
 * 0x20 and no DEL (abort otherwise, so libFuzzer keeps the input). The parsers quoted input text
 * verbatim at first (harness/testdata/bad/config_message_newline_from_input.json,
 * st_message_binary_tensor_name.safetensors, policy_message_control_char_key.policy); since
 * 382ed9d q3n_error_set turns control characters into '?' for every message, and
 * harness/test_policy.c checks the policy one. Q3N_FUZZ_STRICT_MSG=0 in the environment relaxes
 * the check to "non-empty" (to look for other findings past a message one).
 */
#ifndef Q3N_FUZZ_MSG_H
#define Q3N_FUZZ_MSG_H

#include <stdlib.h>
#include <string.h>

#include "../harness/status.h"

static void fuzz_check_msg(const struct q3n_error *err)
{
    static int strict = -1;
    if (strict < 0) strict = getenv("Q3N_FUZZ_STRICT_MSG") == NULL || strcmp(getenv("Q3N_FUZZ_STRICT_MSG"), "0") != 0;
    if (err->msg[0] == '\0') abort();
    if (strict)
        for (const unsigned char *p = (const unsigned char *)err->msg; *p; p++)
            if (*p < 0x20 || *p == 0x7f) abort();
}

#endif
