/* fuzz_msg.h — the error-message check shared by the libFuzzer targets.
 *
 * Every failing call must leave a non-empty message (always checked: abort otherwise).
 * With Q3N_FUZZ_STRICT_MSG=1 in the environment the message must also be one printable
 * line: no byte below 0x20. Off by default because config.c and safetensors.c quote input
 * text (JSON keys, tensor names) into messages verbatim, so a name holding a newline or
 * binary yields a multi-line message; the inputs are kept in harness/testdata/bad/
 * (config_message_newline_from_input.json, st_message_binary_tensor_name.safetensors) for
 * their owner. Turn it on once those messages escape what they quote. */
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
