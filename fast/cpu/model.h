/* model.h — the OpenBLAS implementation as the harness sees it (harness/impl.h, "cpu").
 * fast/cpu/model.c holds the session; fast/cpu/ops.h the cpu_ twins of ref/ops.h. */
#ifndef Q3N_CPU_MODEL_H
#define Q3N_CPU_MODEL_H

#include "../../harness/impl.h"

extern const struct q3n_impl cpu_impl;

#endif
