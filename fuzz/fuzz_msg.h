/* fuzz_msg.h — the error-message check shared by the libFuzzer targets.
 *
 * Every failing call must leave a non-empty message (always checked: abort otherwise).
 * With Q3N_FUZZ_STRICT_MSG=1 in the environment the message must also be one printable
 * line: no byte below 0x20. Off by default while a parser still quotes input text verbatim:
 * policy.c puts an unknown key with control characters (ESC) into its message
 * (harness/testdata/bad/policy_message_control_char_key.policy). config.c and safetensors.c
 * did the same (config_message_newline_from_input.json, st_message_binary_tensor_name.safetensors)
 * and were fixed; strict runs of config, safetensors and tokens are clean. Turn it on by default
 * once policy.c escapes what it quotes.
 */
#ifndef Q3N_FUZZ_MSG_H
#define Q3N_FUZZ_MSG_H

#include <stdlib.h>
#include <string.h>

#include "../harness/status.h"

static void fuzz_check_msg(const struct q3n_error *err)
{
    static int strict = -1;
    if (strict < 0) strict = getenv("Q3N_FUZZ_STRICT_MSG") != NULL && strcmp(getenv("Q3N_FUZZ_STRICT_MSG"), "0") != 0;
    if (err->msg[0] == '\0') abort();
    if (strict)
        for (const unsigned char *p = (const unsigned char *)err->msg; *p; p++)
            if (*p < 0x20) abort();
}

#endif
