/* side_stream.cu — a second stream for independent prefill GEMMs (on by default since session 12,
 * SHARED_OVERLAP_DEFAULT in session.h; cuda_session_shared_overlap switches it): the MoE block's
 * shared expert (below), the linear-attention layer's in_proj_ba beside in_proj_qkvz and the
 * attention layer's k_proj and v_proj beside q_proj (blocks.cu: side_fork / side_done / side_join).
 *
 * In a prefill MoE block the shared expert (gate_up GEMM, SwiGLU, down GEMM) and its gate logit
 * depend only on the normed input xn, and only the combine reads them. The routed chain before the
 * combine (router GEMM of E outputs, top-k, permutation, tile table) is a run of small launches that
 * leave most SMs idle, and the expert GEMMs at T = 4096 are bound by the weight stream; the shared
 * expert's ~26 GFLOP per layer can run beside them. So the block forks: an event on the session's
 * stream after xn, the side stream waits on it and runs the shared expert with its own cuBLAS handle
 * and workspace (a handle's workspace must not be shared by two streams at once), records a join
 * event, and the session's stream waits on that before the combine. The kernels are the same and
 * read and write the same buffers (w->big, smid, sout, sg: no routed kernel touches them), so the
 * logits are bitwise those of the one-stream order; dev/bench_model --overlap-shared --default-check
 * checks that. Taps keep the one-stream order (they copy on the session's stream mid-block).
 * Measured on an H100 (session 12, bench_model, alternated three times with --overlap-shared, logits
 * bitwise the one-stream run's): prefill T = 4096 9.23 -> 9.14 ms, T = 16384 28.45 -> 28.13 ms; and
 * decode 0.583 -> 0.599 ms/token, although a decode step never takes the side stream (session 8
 * saw the same +3 %): not explained; still 1.69x the decode floor. Session 8, with the routed chain
 * before v4 / scan v3: -0.4 % at T = 4096. */
#include "session.h"

extern "C" enum q3n_status cuda_session_shared_overlap(void *session, int on, struct q3n_error *err)
{
    struct cuda_session *s = (struct cuda_session *)session;
    if (on && !s->sstream) {
        CU_CHECK(cudaStreamCreateWithFlags(&s->sstream, cudaStreamNonBlocking));
        CUBLAS_CHECK(cublasCreate(&s->sblas));
        CUBLAS_CHECK(cublasSetMathMode(s->sblas, CUBLAS_DEFAULT_MATH)); /* no TF32, as s->blas */
        CUBLAS_CHECK(cublasSetStream(s->sblas, s->sstream));
        CU_CHECK(cudaMalloc(&s->sblas_ws, BLAS_WS_BYTES));
        CUBLAS_CHECK(cublasSetWorkspace(s->sblas, s->sblas_ws, BLAS_WS_BYTES));
        CU_CHECK(cudaEventCreateWithFlags(&s->fork_ev, cudaEventDisableTiming));
        CU_CHECK(cudaEventCreateWithFlags(&s->join_ev, cudaEventDisableTiming));
    }
    s->shared_overlap = on != 0;
    return Q3N_OK;
}

void side_stream_destroy(struct cuda_session *s)
{
    if (s->sstream) cudaStreamSynchronize(s->sstream);
    if (s->fork_ev) cudaEventDestroy(s->fork_ev);
    if (s->join_ev) cudaEventDestroy(s->join_ev);
    if (s->sblas) cublasDestroy(s->sblas);
    if (s->sblas_ws) cudaFree(s->sblas_ws);
    if (s->sstream) cudaStreamDestroy(s->sstream);
}
