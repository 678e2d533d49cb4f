/* impl.c — the registry of implementations built into this binary; see impl.h.
 * Each implementation adds one line to the table below (cuda only under HAVE_CUDA). */
#include "impl.h"

#include <string.h>

#include "../ref/model.h"
#include "../fast/cpu/model.h"
#ifdef HAVE_CUDA
#include "../fast/cuda/cuda_model.h"
#endif

static const struct q3n_impl *const impls[] = {
    &ref_impl,
    &cpu_impl,
#ifdef HAVE_CUDA
    &cuda_impl,
#endif
};

static const char *const impl_names[] = {
#ifdef Q3N_REF64
    "ref64",
#else
    "ref",
#endif
    "cpu",
#ifdef HAVE_CUDA
    "cuda",
#endif
    NULL,
};

void q3n_run_options_default(struct q3n_run_options *opt)
{
    memset(opt, 0, sizeof *opt);
#ifdef Q3N_REF64
    opt->dtype = Q3N_COMPUTE_F64;
#else
    opt->dtype = Q3N_COMPUTE_F32;
#endif
    opt->chunk_size = 64;
    opt->max_tokens = 4096;
}

const struct q3n_impl *q3n_impl_find(const char *name)
{
    for (size_t i = 0; i < sizeof impls / sizeof impls[0]; i++)
        if (strcmp(impls[i]->name, name) == 0) return impls[i];
    return NULL;
}

const char *const *q3n_impl_names(void)
{
    return impl_names;
}
