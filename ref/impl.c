/* impl.c — placeholder for the reference implementation's session (issue 4 replaces it). */
#include "model.h"

static enum q3n_status ref_open(void **session, const struct q3n_model *model, const struct q3n_run_options *opt,
                                struct q3n_error *err)
{
    (void)session;
    (void)model;
    (void)opt;
    return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "ref: not built yet");
}

static void ref_close(void *session)
{
    (void)session;
}

const struct q3n_impl ref_impl = {.name = "ref", .open = ref_open, .close = ref_close};
