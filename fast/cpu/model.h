/* model.h — the OpenBLAS implementation as the harness sees it (harness/impl.h, "cpu").
 * fast/cpu/model.c holds the session; fast/cpu/ops.h the cpu_ twins of ref/ops.h. */
#ifndef Q3N_CPU_MODEL_H
#define Q3N_CPU_MODEL_H

#include <stdint.h>

#include "../../harness/impl.h"

extern const struct q3n_impl cpu_impl;

/* Optional phase profile of a cpu session, for `q3n bench`: wall seconds per phase summed over
 * forwards, and the (M, N, K) of every GEMM the GEMM-bound phases issued (x [M,K] times
 * W [N,K]^T; M = 1 runs as sgemv), so the bench can time a bare cblas_sgemm of the same shapes.
 * The caller owns the struct and the shapes array (capacity cap); a full array sets overflow. */
enum cpu_phase {
    CPU_PHASE_PROJ = 0, /* dense projections: in/out projections, router, lm_head, MTP fc */
    CPU_PHASE_MOE,      /* routed experts (gather, 3 GEMMs per active expert, scatter), shared and dense MLPs */
    CPU_PHASE_DELTA,    /* the delta rule (chunked or recurrent) */
    CPU_PHASE_ATTN,     /* softmax attention core */
    CPU_PHASE_COUNT
};

struct cpu_gemm_shape {
    int64_t M, N, K;
};

struct cpu_profile {
    double seconds[CPU_PHASE_COUNT];
    struct cpu_gemm_shape *shapes; /* caller-owned, cap entries */
    int64_t n_shapes, cap;
    int overflow;
};

/* Attaches prof to a cpu session (NULL detaches); forwards then add to it. */
void cpu_session_set_profile(void *session, struct cpu_profile *prof);

#endif
