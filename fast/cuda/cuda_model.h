/* cuda_model.h — the CUDA implementation as the harness sees it (harness/impl.h, "cuda"),
 * plus two entry points for the benchmark programs in fast/cuda/dev/. Plain C, no CUDA
 * headers: harness/impl.c includes it under HAVE_CUDA. */
#ifndef Q3N_CUDA_MODEL_H
#define Q3N_CUDA_MODEL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "../../harness/config.h"
#include "../../harness/impl.h"

extern const struct q3n_impl cuda_impl;

/* A session whose weights are drawn on the device (seeded hash, in distribution like
 * harness/synth.c: projections N(0, 1/sqrt(fan_in)), router N(0, 3/sqrt(D)), norms away from
 * zero), so benchmarks at the real dims need no host copy of ~13 GB of weights. */
enum q3n_status cuda_session_open_random(void **session, const struct q3n_config *cfg, uint64_t seed,
                                         const struct q3n_run_options *opt, struct q3n_error *err);

/* forward() that computes the lm_head on the last token only (logits [V]), as generation does;
 * used by the benchmarks. Taps off. */
enum q3n_status cuda_session_forward_last(void *session, float *logits, const int64_t *tokens, int64_t T,
                                          struct q3n_error *err);

/* Per-phase device time (CUDA events, no extra syncs inside the layers): a call with on != 0 and
 * ms4 == NULL starts recording; a call with ms4 != NULL (or on == 0) stops it, and ms4 receives
 * the milliseconds accumulated since the last call in the deltanet mixers, the attention mixers,
 * the MoE/MLP blocks and everything else (embed, norms, residuals, lm_head not included), then
 * the counters restart. While recording, decode steps run eagerly (events cannot sit inside the
 * CUDA graph). */
enum q3n_status cuda_session_profile(void *session, int on, double *ms4, struct q3n_error *err);

/* Decode steps (one token after a prefill, taps off) replay a CUDA graph captured on the first
 * such step; on == 0 runs them eagerly (the same launches, bitwise the same logits). */
enum q3n_status cuda_session_decode_graph(void *session, int on, struct q3n_error *err);
/* Mean per graph-replayed decode step since the last call: device time of the replay (CUDA events
 * around it; it ends with the logits in pinned host memory) and host time of the copy from there
 * to the caller's buffer; 0 when none ran. */
enum q3n_status cuda_session_decode_times(void *session, double *graph_ms, double *copy_ms, struct q3n_error *err);
/* "captured", "not captured yet", or why the capture failed (the session then stays eager). */
const char *cuda_session_graph_status(void *session);

/* Prefill MoE blocks run the shared expert on a second stream beside the routed experts (on != 0,
 * the default since session 12: SHARED_OVERLAP_DEFAULT; the stream is created on first use) or in
 * order on the session's stream (0); bitwise the same logits either way. dev/bench_model
 * --overlap-shared / --no-overlap-shared. */
enum q3n_status cuda_session_shared_overlap(void *session, int on, struct q3n_error *err);

/* Waits for the session's stream (benchmarks time with host clocks around it). */
enum q3n_status cuda_session_sync(void *session, struct q3n_error *err);

#ifdef __cplusplus
}
#endif

#endif
