/* ops.h — the OpenBLAS implementation's ops: cpu_ twins of every ref/ops.h op.
 *
 * Each cpu_<stem> takes the same arguments as ref_<stem> with ref_real replaced by float, so
 * a test calls both on the same inputs. Where a fast op needs more scratch than its twin
 * (blocked attention, the chunked delta rule, grouped MoE) a cpu_<stem>_scratch() gives the
 * size in floats. Ops do not allocate and may call cblas_sgemm (OpenBLAS threads: the
 * session sets their count; results are deterministic for a fixed count). Every change of
 * summation order against ref is noted at the op with its expected cost.
 * docs/ops.md maps each op to its formula and to its ref/cpu/cuda functions. */
#ifndef Q3N_CPU_OPS_H
#define Q3N_CPU_OPS_H

#include <stdint.h>

#include "../../harness/weights.h"

/* ---- par.c ---- */
/* Runs fn(ctx, begin, end, worker) over a static split of [0, n) on up to CPU_MAX_WORKERS
 * threads (OpenBLAS's thread count), OpenBLAS single-threaded meanwhile; see par.c. Scratch
 * of the ops that use it is sized per worker, for CPU_MAX_WORKERS workers. */
#define CPU_MAX_WORKERS 64
#define CPU_PAR_MIN_COST 2.0e6 /* about this many flops per worker at least (else fewer workers) */
typedef void (*cpu_par_fn)(void *ctx, int64_t begin, int64_t end, int worker);
void cpu_parallel_for(int64_t n, double cost, cpu_par_fn fn, void *ctx);
int cpu_parallel_workers(void);

/* ---- linear.c ---- */
/* out[t,0:N] (row stride ldo) = x[t,0:K] (row stride ldx) W^T, W [N,K]: column blocks of one
 * single-threaded sgemm each, spread over cpu_parallel_for workers (sgemv for T = 1). */
void cpu_gemm_nt(float *out, int64_t ldo, const float *x, int64_t ldx, const float *W, int64_t T, int64_t N,
                 int64_t K);
void cpu_embed_forward(float *out, const int64_t *tokens, const float *embed, int64_t T, int64_t D);
/* out = x W^T (+ bias) through cpu_gemm_nt.  out [T,N], x [T,Kin], W [N,Kin]. */
void cpu_linear_forward(float *out, const float *x, const float *W, const float *bias, int64_t T, int64_t N,
                        int64_t Kin);
void cpu_add_inplace(float *x, const float *y, int64_t n);
float cpu_silu(float x);
float cpu_sigmoid(float x);
float cpu_softplus(float x);

/* ---- norm.c ---- */
void cpu_rmsnorm_forward(float *out, const float *x, const float *w, int64_t rows, int64_t n, double eps);
void cpu_rmsnorm_gated_forward(float *out, const float *x, const float *z, const float *w, int64_t rows, int64_t n,
                               double eps);
void cpu_l2norm_forward(float *out, const float *x, int64_t rows, int64_t n, double eps);

/* ---- conv.c ---- */
void cpu_conv1d_causal_forward(float *out, const float *x, const float *w, const float *state, int64_t T,
                               int64_t Cc, int64_t K);
void cpu_conv1d_state_update(float *state, const float *x, int64_t T, int64_t Cc, int64_t K);

/* ---- deltanet.c ---- */
void cpu_deltanet_split_forward(float *q, float *k, float *v, float *z, float *b, float *a, const float *qkvz,
                                const float *ba, int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV);
void cpu_deltanet_conv_concat(float *mixed, const float *q, const float *k, const float *v, int64_t T, int64_t NK,
                              int64_t NV, int64_t DK, int64_t DV);
void cpu_deltanet_conv_split(float *q, float *k, float *v, const float *mixed, int64_t T, int64_t NK, int64_t NV,
                             int64_t DK, int64_t DV);
void cpu_deltanet_q_scale(float *q, int64_t n, int64_t DK, int recurrent);
void cpu_deltanet_gates_forward(float *g, float *beta, const float *a, const float *b, const float *A_log,
                                const float *dt_bias, int64_t T, int64_t NV);
void cpu_delta_rule_recurrent(float *o, float *state, const float *q, const float *k, const float *v,
                              const float *g, const float *beta, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                              int64_t DV);
/* Chunked WY/UT form as blocked matrix products per chunk (see deltanet.c), value heads
 * spread over cpu_parallel_for workers; the scratch holds one chunk workspace per worker. */
int64_t cpu_delta_rule_chunked_scratch(int64_t C, int64_t DK, int64_t DV);
void cpu_delta_rule_chunked(float *o, float *state, const float *q, const float *k, const float *v, const float *g,
                            const float *beta, float *scratch, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                            int64_t DV, int64_t C);
/* The planted bug "chunk_off_by_one" (test_bug): each chunk's last token left out of the
 * state update, as ref_delta_rule_chunked_bug_drop_last. */
void cpu_delta_rule_chunked_bug_drop_last(float *o, float *state, const float *q, const float *k, const float *v,
                                          const float *g, const float *beta, float *scratch, int64_t T, int64_t NK,
                                          int64_t NV, int64_t DK, int64_t DV, int64_t C);
/* (ref_delta_rule_naive, a testing oracle, has no cpu twin.) */

/* ---- attention.c ---- */
void cpu_attn_split_qgate(float *q, float *gate, const float *qg, int64_t T, int64_t NH, int64_t HD);
void cpu_rope_forward(float *x, int64_t T, int64_t N, int64_t HD, int64_t rot, int64_t pos0, double theta);
/* Blocked causal GQA attention with an online softmax over key blocks (flash-style), query
 * heads spread over cpu_parallel_for workers; the scratch holds one block workspace per worker. */
int64_t cpu_attention_scratch(int64_t T, int64_t pos0, int64_t NH, int64_t NKV, int64_t HD);
void cpu_attention_forward(float *out, const float *q, const float *kc, const float *vc, float *scratch, int64_t T,
                           int64_t pos0, int64_t NH, int64_t NKV, int64_t HD);
void cpu_sigmoid_gate_forward(float *out, const float *x, const float *gate, int64_t n);

/* ---- moe.c ---- */
void cpu_softmax_forward(float *out, const float *logits, int64_t rows, int64_t E);
void cpu_topk_forward(int64_t *idx, float *weight, const float *probs, int64_t T, int64_t E, int64_t K,
                      int norm_topk_prob);
/* SwiGLU MLP through three GEMMs.  scratch [T, 2W] (as ref). */
void cpu_mlp_forward(float *out, const float *x, const struct q3n_mlp_weights *w, float *scratch, int64_t T,
                     int64_t D, int64_t W);
/* Routed experts as grouped work: the (token, slot) pairs sorted by expert, tokens gathered,
 * one GEMM chain per active expert, results summed per token in ascending expert order (as ref). */
int64_t cpu_moe_experts_scratch(int64_t T, int64_t D, int64_t Iw, int64_t K);
void cpu_moe_experts_forward(float *out, const float *x, const int64_t *idx, const float *weight,
                             const struct q3n_mlp_weights *experts, float *scratch, int64_t T, int64_t D, int64_t Iw,
                             int64_t K);
/* out = experts_out + sigmoid(shared_gate_logit) * shared_out; shared_out NULL: experts_out. */
void cpu_moe_combine_forward(float *out, const float *experts_out, const float *shared_out,
                             const float *shared_gate_logit, int64_t T, int64_t D);

#endif
