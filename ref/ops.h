/* ops.h — every operation of the scalar reference, one function each.
 *
 * Conventions (STYLE.md): outputs first, then inputs, weights, scratch, dims, scalars.
 * Shapes use the fixed letters (T tokens, D hidden, ...), row-major. Activations are
 * ref_real, weights are float. Ops do not allocate; shape contracts are checked with
 * Q3N_REQUIRE. fast/cpu/ops.h declares the cpu_ twins with the same arguments (float),
 * and fast/cuda/ the cuda_ launchers. docs/ops.md maps each op to its formula. */
#ifndef Q3N_REF_OPS_H
#define Q3N_REF_OPS_H

#include <stdint.h>

#include "model.h"

/* ---- embed.c ---- */
/* out[t,:] = embed[tokens[t],:]   out [T,D], embed [V,D]; tokens already range-checked. */
void ref_embed_forward(ref_real *out, const int64_t *tokens, const float *embed, int64_t T, int64_t D);

/* ---- linear.c ---- */
/* out[t,n] = sum_k x[t,k] W[n,k] (+ bias[n])   out [T,N], x [T,Kin], W [N,Kin] (nn.Linear). */
void ref_linear_forward(ref_real *out, const ref_real *x, const float *W, const float *bias, int64_t T, int64_t N,
                        int64_t Kin);
/* x[i] += y[i] over n elements (residual add). */
void ref_add_inplace(ref_real *x, const ref_real *y, int64_t n);

/* ---- norm.c ---- */
/* Zero-centred RMSNorm over rows of width n: out = x / sqrt(mean(x^2) + eps) * (1 + w).
 * out,x [rows, n], w [n]. (Qwen3NextRMSNorm; float32 inside in transformers.) */
void ref_rmsnorm_forward(ref_real *out, const ref_real *x, const float *w, int64_t rows, int64_t n, double eps);
/* Gated RMSNorm: out = w * (x / sqrt(mean(x^2) + eps)) * silu(z), rows of width n,
 * w NOT zero-centred. (Qwen3NextRMSNormGated.) */
void ref_rmsnorm_gated_forward(ref_real *out, const ref_real *x, const ref_real *z, const float *w, int64_t rows,
                               int64_t n, double eps);
/* L2 norm over rows: out = x * rsqrt(sum(x^2) + eps) (fla's l2norm, eps 1e-6). */
void ref_l2norm_forward(ref_real *out, const ref_real *x, int64_t rows, int64_t n, double eps);

/* ---- conv.c ---- */
/* Causal depthwise conv1d + SiLU over T new columns, continuing from `state` (the last K
 * pre-conv columns seen, zeros when fresh):
 *   out[t,c] = silu( sum_{j<K} w[c,j] * xx[t+j+1, c] ),  xx = [state; x] (K + T rows)
 * out,x [T,Cc], w [Cc,K], state [Cc,K] (transformers' conv_state layout, NULL = zeros). */
void ref_conv1d_causal_forward(ref_real *out, const ref_real *x, const float *w, const ref_real *state, int64_t T,
                               int64_t Cc, int64_t K);
/* state <- the last K columns of [state; x] (zero-padded on the left when fewer exist). */
void ref_conv1d_state_update(ref_real *state, const ref_real *x, int64_t T, int64_t Cc, int64_t K);

/* ---- deltanet.c ---- */
/* Head-grouped split of in_proj_qkvz [T, NK*(2DK + 2rDV)] and in_proj_ba [T, NK*2r]
 * (r = NV/NK) into q,k [T,NK,DK], v,z [T,NV,DV], b,a [T,NV]. */
void ref_deltanet_split_forward(ref_real *q, ref_real *k, ref_real *v, ref_real *z, ref_real *b, ref_real *a,
                                const ref_real *qkvz, const ref_real *ba, int64_t T, int64_t NK, int64_t NV,
                                int64_t DK, int64_t DV);
/* mixed [T,Cc] = concat(q, k, v) over channels (the conv input), Cc = 2*NK*DK + NV*DV. */
void ref_deltanet_conv_concat(ref_real *mixed, const ref_real *q, const ref_real *k, const ref_real *v, int64_t T,
                              int64_t NK, int64_t NV, int64_t DK, int64_t DV);
/* Inverse of the concat: conv output [T,Cc] -> q,k [T,NK,DK], v [T,NV,DV]. */
void ref_deltanet_conv_split(ref_real *q, ref_real *k, ref_real *v, const ref_real *mixed, int64_t T, int64_t NK,
                             int64_t NV, int64_t DK, int64_t DV);
/* q *= DK^-0.5 (chunked path) or q /= sqrt(DK) (recurrent path), n elements: each transformers
 * path rounds its scale its own way. */
void ref_deltanet_q_scale(ref_real *q, int64_t n, int64_t DK, int recurrent);
/* beta = sigmoid(b);  g = -exp(A_log) * softplus(a + dt_bias)   (float32 in transformers).
 * g,beta,a,b [T,NV], A_log,dt_bias [NV]. softplus uses torch's threshold 20. */
void ref_deltanet_gates_forward(ref_real *g, ref_real *beta, const ref_real *a, const ref_real *b,
                                const float *A_log, const float *dt_bias, int64_t T, int64_t NV);

/* The gated delta rule, value head h using key head h/(NV/NK). q,k are L2-normalised and q
 * already scaled by 1/sqrt(DK). o [T,NV,DV]; state [NV,DK,DV] in/out (initial -> final).
 * Recurrent, per token: S <- exp(g_t) S; u = beta_t (v_t - S^T k_t); S <- S + k_t u^T;
 * o_t = S^T q_t.   (torch_recurrent_gated_delta_rule) */
void ref_delta_rule_recurrent(ref_real *o, ref_real *state, const ref_real *q, const ref_real *k, const ref_real *v,
                              const ref_real *g, const ref_real *beta, int64_t T, int64_t NK, int64_t NV,
                              int64_t DK, int64_t DV);
/* Chunked (WY/UT) form with chunk C, any T (padded to a multiple of C internally), as
 * torch_chunk_gated_delta_rule; scratch holds ref_delta_rule_chunked_scratch(C,DK,DV). */
int64_t ref_delta_rule_chunked_scratch(int64_t C, int64_t DK, int64_t DV);
void ref_delta_rule_chunked(ref_real *o, ref_real *state, const ref_real *q, const ref_real *k, const ref_real *v,
                            const ref_real *g, const ref_real *beta, ref_real *scratch, int64_t T, int64_t NK,
                            int64_t NV, int64_t DK, int64_t DV, int64_t C);
/* Naive quadratic closed form over the whole sequence (one T x T triangular solve), for
 * testing the other two; scratch holds ref_delta_rule_naive_scratch(T,DK,DV). */
int64_t ref_delta_rule_naive_scratch(int64_t T, int64_t DK, int64_t DV);
void ref_delta_rule_naive(ref_real *o, ref_real *state, const ref_real *q, const ref_real *k, const ref_real *v,
                          const ref_real *g, const ref_real *beta, ref_real *scratch, int64_t T, int64_t NK,
                          int64_t NV, int64_t DK, int64_t DV);

/* ---- attention.c ---- */
/* Splits q_proj output [T, NH*2*HD] into query and gate [T,NH,HD] (per head: HD query, HD gate). */
void ref_attn_split_qgate(ref_real *q, ref_real *gate, const ref_real *qg, int64_t T, int64_t NH, int64_t HD);
/* Partial RoPE in place on x [T,N,HD]: rotate-half on the first rot dims at positions
 * pos0..pos0+T-1, inv_freq_i = theta^(-2i/rot); dims >= rot pass through. cos/sin are
 * rounded to ref_real before use (transformers casts them to the activation dtype). */
void ref_rope_forward(ref_real *x, int64_t T, int64_t N, int64_t HD, int64_t rot, int64_t pos0, double theta);
/* Causal GQA softmax attention for T new queries at positions pos0.. against S = pos0+T
 * cached keys: out[t,h,:] = sum_s softmax_s(q.k_s / sqrt(HD)) v_s over s <= pos0+t.
 * out,q [T,NH,HD]; kc,vc [S,NKV,HD]; scratch [S]. */
void ref_attention_forward(ref_real *out, const ref_real *q, const ref_real *kc, const ref_real *vc,
                           ref_real *scratch, int64_t T, int64_t pos0, int64_t NH, int64_t NKV, int64_t HD);
/* out = x * sigmoid(gate), n elements (the attention output gate). */
void ref_sigmoid_gate_forward(ref_real *out, const ref_real *x, const ref_real *gate, int64_t n);

/* ---- moe.c ---- */
/* Softmax over rows of width E (router probabilities, float32 in transformers). */
void ref_softmax_forward(ref_real *out, const ref_real *logits, int64_t rows, int64_t E);
/* Top-k of probs [T,E] in torch.topk order (descending, ties -> lower index first);
 * weight = chosen probs, renormalised to sum 1 when norm_topk_prob. idx,weight [T,K]. */
void ref_topk_forward(int64_t *idx, ref_real *weight, const ref_real *probs, int64_t T, int64_t E, int64_t K,
                      int norm_topk_prob);
/* SwiGLU MLP: out = down(silu(gate(x)) * up(x)).  out,x [T,D]; scratch [T, 2W]. */
void ref_mlp_forward(ref_real *out, const ref_real *x, const struct q3n_mlp_weights *w, ref_real *scratch, int64_t T,
                     int64_t D, int64_t W);
/* Routed experts: out[t] = sum_j weight[t,j] * expert_{idx[t,j]}(x[t]).  scratch [2I + D]. */
void ref_moe_experts_forward(ref_real *out, const ref_real *x, const int64_t *idx, const ref_real *weight,
                             const struct q3n_mlp_weights *experts, ref_real *scratch, int64_t T, int64_t D,
                             int64_t I, int64_t K);

/* MoE output: out = experts_out + sigmoid(shared_gate_logit) * shared_out (shared_out NULL: none).
 * out,experts_out,shared_out [T,D], shared_gate_logit [T,1]. */
void ref_moe_combine_forward(ref_real *out, const ref_real *experts_out, const ref_real *shared_out,
                             const ref_real *shared_gate_logit, int64_t T, int64_t D);

/* ---- activations (linear.c) ---- */
ref_real ref_silu(ref_real x);
ref_real ref_sigmoid(ref_real x);
ref_real ref_softplus(ref_real x); /* torch: x > 20 ? x : log1p(exp(x)) */

#endif
