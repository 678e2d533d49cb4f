/* session.h — the CUDA session (harness/impl.h "cuda"): weights and caches on the device, the
 * Qwen3-Next forward as a list of cuda_ op launches on one stream, taps copied to the host only
 * when a sink is on.
 *
 * dtype f32: float32 weights and activations, cuBLAS in true FP32 (no TF32). dtype bf16: matrix
 * weights and activations in bfloat16 with float32 accumulation; norms, router softmax, the decay
 * g, beta, the delta rule (q, k, v, state) and the conv state stay float32. Prefill (T > 1 or
 * no previous state) runs the chunked delta rule, decode the recurrent step. A decode step
 * (T*K <= 64 MoE rows, taps off) launches every layer without waiting on the host; prefill waits
 * once per MoE layer for the per-expert row counts that size its GEMMs.
 *
 * Decode (one token after a prefill) reads its token id and position from the device (step_dev,
 * filled by one copy from pinned host memory), so the step is the same launch list at every
 * position: with taps off, no forced routing and no profile it is captured once per session as
 * a CUDA graph (embed .. final norm .. lm_head .. float32 logits) and replayed per token. The
 * eager T == 1 path runs the very same launches, so both give bitwise the same logits.
 *
 * Internal to fast/cuda; the session's code is in three files:
 *   session.cu  device buffers, weight upload (and device-drawn random weights), caches, open
 *   blocks.cu   taps and the layer blocks: linear attention, gated attention, MoE / dense MLP
 *   model.cu    the forward (prefill, decode step and its CUDA graph), the MTP head, describe,
 *               profiling and the impl vtable
 * and experts_layout.cu packs the routed experts at open when run_options.pack_experts asks,
 * side_stream.cu holds the prefill MoE block's second stream (cuda_session_shared_overlap). */
#ifndef Q3N_CUDA_SESSION_H
#define Q3N_CUDA_SESSION_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.cuh"
#include "cuda_model.h"

#define MAX_ALLOCS 8192
/* ran_glue bits: the v2 (v3) of these kernels ran (sessions 9, 12 and 13; describe names them); bits
 * 1 and 128 were the q/k prep's v2 and v3 until session 13 (now ran_qk_prep) */
#define RAN_GLUE_TC_PREP2 1 /* the delta rule's prep v2 (both value heads of a key head in one block) */
#define RAN_GLUE_GATE 2
#define RAN_GLUE_DN_PREP 4
#define RAN_GLUE_GATED_NORM 8
#define RAN_GLUE_SCAN 16
#define RAN_GLUE_COMBINE_NORM 32 /* norm folds: the MoE combine or the embedding with the next norm */
#define RAN_GLUE_SCAN3 64         /* the permutation's scan v3 (over blocks of experts) */
#define RAN_GLUE_PERMUTED_X 128   /* gate_up read x's rows written once in expert order (blocks.cu) */
/* ran_side bits (side_stream.cu) */
#define RAN_SIDE_SHARED 1 /* the MoE block's shared expert and its gate */
#define RAN_SIDE_BA 2     /* the linear-attention layer's in_proj_ba */
#define RAN_SIDE_KV 4     /* the attention layer's k_proj and v_proj */
#define RAN_SIDE_TC_SCAN 8 /* the delta rule's scan beside its prep (cuda_delta_rule_chunked_tc_bf16_piped) */
#define LM_CHUNK 256
#define GEMV_MAX_ROWS 64
#define BLAS_WS_BYTES ((size_t)32 << 20)
#ifndef TC_PIPE_DEFAULT /* EXTRA_NVCCFLAGS=-DTC_PIPE_DEFAULT=0: the delta rule's prep, then its scan */
#define TC_PIPE_DEFAULT 1 /* session 12 */
#endif
#ifndef SHARED_OVERLAP_DEFAULT /* EXTRA_NVCCFLAGS=-DSHARED_OVERLAP_DEFAULT=0: one stream */
#define SHARED_OVERLAP_DEFAULT 1 /* session 12: measured, side_stream.cu */
#endif
#define LM_SPLIT 4 /* row blocks of the decode lm_head (sizes 8:4:2:1): block i's logits go to the host, and
                    * from there to the caller, during the later blocks */

struct dev_mlp {
    void *gate_up; /* [2W, D]: gate rows then up rows */
    void *down;    /* [D, W] */
    int64_t W;
};

struct dev_layer {
    float *in_norm, *post_norm;
    /* linear attention */
    void *qkvz, *ba, *out_proj;
    float *conv_w, *dt_bias, *A_log, *gnorm;
    /* full attention */
    void *q_proj, *k_proj, *v_proj, *o_proj;
    float *q_norm, *k_norm, *q_bias, *k_bias, *v_bias, *o_bias;
    /* MoE */
    void *router;     /* [E, D] */
    void *experts_gu; /* [E, 2I, D] */
    void *experts_dn; /* [E, D, I] */
    struct dev_mlp shared;
    void *shared_gate; /* [1, D] */
    struct dev_mlp mlp; /* dense layers */
    /* caches */
    float *conv_state; /* [Cc, Kc] */
    float *rec_state;  /* [NV, DK, DV] */
    void *kc, *vc;     /* [max_tokens, NKV, HD] */
};

struct work {
    void *h, *xn, *y, *big, *ba, *mixed, *conv, *z, *core, *gn;
    float *b, *a, *g, *beta, *qf, *kf, *vf, *drs;
    void *q, *qn, *kn, *attn, *gated;
    float *ascratch;
    void *rlogits, *eo, *sout, *sg, *smid;
    float *probs, *topw;
    int32_t *topi, *perm, *pos, *counts, *offsets, *tiles;
    int32_t *permscr; /* cuda_moe_permute_v2 scratch */
    void *xperm, *gu, *hmid, *ey;
    void *lbuf, *cat;
    float *lbuf32;
    int64_t *tokens;
};

struct cuda_session {
    struct q3n_config cfg;
    struct q3n_run_options opt;
    enum q3n_compute_dtype dt;
    size_t as; /* activation bytes */
    cudaStream_t stream;
    cublasHandle_t blas;
    void *allocs[MAX_ALLOCS];
    int nallocs;
    void *embed, *lm_head;
    float *final_norm;
    struct dev_layer *layers;
    struct work w;
    int64_t Tmax, cache_len;
    /* routed experts packed (experts_layout.cu) or, with pack_why saying why not, in the checkpoint layout */
    int experts_packed;
    const char *pack_why;
    int64_t big_elems; /* capacity of w.big in elements */
    int has_prev;
    /* MTP: the MTP layer is layers[num_hidden_layers] (cfg.layer_type/layer_is_sparse set for it) */
    int has_mtp;
    float *mtp_norm_e, *mtp_norm_h, *mtp_norm;
    void *mtp_fc;      /* [D, 2D] */
    void *last_hidden; /* [max_tokens, D] final-normed hidden of every position seen */
    int64_t last_T, last_pos0, mtp_len;
    /* tap staging */
    float *tap_host;
    float *tap_dev;
    int64_t tap_cap;
    int32_t *host_i32;
    int64_t host_i32_cap;
    int32_t *host_counts, *host_offsets;
    /* what ran since the last reset */
    int ran_chunked, ran_recurrent, ran_flash, ran_rows, ran_moe_gemm, ran_moe_gemv, ran_moe_grouped;
    int ran_decode_graph, ran_decode_eager;
    int ran_glue; /* RAN_GLUE_* bits: which of the kernels around the GEMMs ran their v2 */
    int ran_side; /* RAN_SIDE_* bits: which prefill GEMMs ran on the side stream (prefill only: not in
                   * the decode graph's replayed flags) */
    int ran_qk_prep; /* the attention q/k prep's version where a prefill ran v2 or later (prefill only, as
                      * ran_side) */
    const char *dn_kernel, *rec_kernel, *attn_prefill_kernel, *attn_decode_kernel; /* names from the launchers */
    char desc[512];
    /* decode step: [token id, position] on the device and its pinned host staging; the captured
     * graph (graph_state 0 = not tried, 1 = ready, -1 = capture failed: eager, graph_why says why);
     * graph_ran = the ran_* flags the captured step sets, replayed with it; graph_off forces eager */
    int64_t *step_dev, *step_host;
    void *blas_ws;
    cudaGraph_t graph;
    cudaGraphExec_t graph_exec;
    int graph_state, graph_off;
    uint64_t graph_ran;
    char graph_why[96];
    /* device time of the replays and host time of the logits copy left after them (the last block)
     * since the last cuda_session_decode_times */
    cudaEvent_t gev[3];
    double gms[2];
    int64_t gsteps;
    /* the decode lm_head's copy stream, its fork/join events, the pinned logits and hev[i]: block i
     * of them is in logits_pin (an external event node of the graph; the host waits on it) */
    cudaStream_t cstream;
    struct cuda_tc_pipe tpipe; /* the delta rule's scan beside its prep (TC_PIPE_DEFAULT; deltanet_tc.cu) */
    cudaEvent_t lev[LM_SPLIT + 1], hev[LM_SPLIT];
    float *logits_pin;
    /* prefill MoE: the shared expert on a side stream with its own cuBLAS handle (side_stream.cu) */
    int shared_overlap; /* SHARED_OVERLAP_DEFAULT at open; cuda_session_shared_overlap changes it */
    cudaStream_t sstream;
    cublasHandle_t sblas;
    void *sblas_ws;
    cudaEvent_t fork_ev, join_ev;
    /* optional per-phase timing (cuda_session_profile): events around each block */
    int profile;
    cudaEvent_t ev[2 * 4 * 64 + 2];
    double prof_ms[4]; /* deltanet mixer, attention mixer, MoE/MLP, everything else */
};

/* Taps of device tensors (no-ops when taps is NULL or off): A = activation dtype, F = float32,
 * S = strided rows; ACT(p, off) = the activation element off of p. */
#define TAPA2(d, a, b, ...)                                                                                       \
    do {                                                                                                          \
        const int64_t dims_[2] = {(a), (b)};                                                                      \
        Q3N_TRY(tap_dev(s, taps, 1, (void *)(d), 0, 0, 2, dims_, err, __VA_ARGS__));                                  \
    } while (0)
#define TAPA3(d, a, b, c_, ...)                                                                                   \
    do {                                                                                                          \
        const int64_t dims_[3] = {(a), (b), (c_)};                                                                \
        Q3N_TRY(tap_dev(s, taps, 1, (void *)(d), 0, 0, 3, dims_, err, __VA_ARGS__));                                  \
    } while (0)
#define TAPF2(d, a, b, ...)                                                                                       \
    do {                                                                                                          \
        const int64_t dims_[2] = {(a), (b)};                                                                      \
        Q3N_TRY(tap_dev(s, taps, 0, (void *)(d), 0, 0, 2, dims_, err, __VA_ARGS__));                                  \
    } while (0)
#define TAPF3(d, a, b, c_, ...)                                                                                   \
    do {                                                                                                          \
        const int64_t dims_[3] = {(a), (b), (c_)};                                                                \
        Q3N_TRY(tap_dev(s, taps, 0, (void *)(d), 0, 0, 3, dims_, err, __VA_ARGS__));                                  \
    } while (0)
/* A strided slice: rows of `rc` elements, `ldr` apart, shaped [a, b, c_]. */
#define TAPS3(d, ldr, rc, a, b, c_, ...)                                                                          \
    do {                                                                                                          \
        const int64_t dims_[3] = {(a), (b), (c_)};                                                                \
        Q3N_TRY(tap_dev(s, taps, 1, (void *)(d), (ldr), (rc), 3, dims_, err, __VA_ARGS__));                        \
    } while (0)

#define ACT(p, off) ((void *)((char *)(p) + s->as * (size_t)(off)))

/* ---- shared between session.cu, blocks.cu and model.cu ---------------------------------- */

/* session.cu */
enum q3n_status cuda_open(void **session, const struct q3n_model *model, const struct q3n_run_options *opt,
                          struct q3n_error *err);
/* a and b (rows of D) adjacent in memory, a first: one GEMV may read both. */
int stacked(const struct cuda_session *s, const void *a, int64_t a_rows, const void *b, int64_t D);
/* Zeroes the conv and recurrent states, forgets the cached positions and what ran (reset(), open). */
enum q3n_status reset_caches(struct cuda_session *s, struct q3n_error *err);

/* blocks.cu */
/* Copies a device tensor (activation dtype when isact, else float32) to the host: contiguous when
 * ldr == 0, else numel/rcols rows of rcols elements, ldr elements apart; hands it to the sink as
 * float32. Contiguous taps are live: an intervening sink's changes are copied back to the device. */
enum q3n_status tap_dev(struct cuda_session *s, const struct q3n_tap_sink *taps, int isact, void *d,
                        int64_t ldr, int64_t rcols, int rank, const int64_t *dims, struct q3n_error *err,
                        const char *fmt, ...) __attribute__((format(printf, 10, 11)));
enum q3n_status linear_attn_block(struct cuda_session *s, int64_t l, const char *p, int64_t T,
                                  const struct q3n_tap_sink *taps, struct q3n_error *err);
enum q3n_status attn_block(struct cuda_session *s, int64_t l, const char *p, int64_t T, int64_t pos0,
                           const int64_t *dpos, const struct q3n_tap_sink *taps, struct q3n_error *err);
/* fold_norm (or NULL): the weight of the RMSNorm that follows this block's residual add; where the
 * MoE combine can take them (cuda_moe_combine_norm: prefill, taps off), mlp_block does h += y and
 * xn = rmsnorm(h) itself and sets *folded (else *folded = 0 and y holds the block's output). */
enum q3n_status mlp_block(struct cuda_session *s, int64_t l, const char *p, int64_t T, int64_t pos0,
                          const float *fold_norm, int *folded, const struct q3n_tap_sink *taps,
                          struct q3n_error *err);

/* model.cu */
void cuda_close(void *session);

/* experts_layout.cu: after the weights are up, packs every MoE layer's experts when the options ask
 * and the session can (sets experts_packed, or pack_why); called before the first forward. */
enum q3n_status pack_session_experts(struct cuda_session *s, struct q3n_error *err);

/* side_stream.cu: frees the side stream, its handle, workspace and events (cuda_close). */
void side_stream_destroy(struct cuda_session *s);

#endif
