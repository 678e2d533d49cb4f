/* cuda_ops.h — host launchers of the CUDA kernels (fast/cuda/<block>.cu), one per op.
 *
 * Each mirrors a ref_ op of ref/ops.h (same stem, `cuda_` prefix) so one grep finds the
 * formula, the reference and this twin. Order: outputs, inputs, weights, scratch, dims,
 * scalars, dtype, stream (and cuBLAS handle), error. Every pointer named d_* is device memory.
 * Activations ("void *" below) are float when dt == Q3N_COMPUTE_F32 and bfloat16 when
 * dt == Q3N_COMPUTE_BF16; arguments typed float * are float32 in both modes (norm weights,
 * router probabilities, the decay g, beta, the delta-rule q/k/v/state, caches of the conv).
 * Matrix weights follow the activation dtype. Launchers are asynchronous on `stream`; each
 * checks its launch with cudaGetLastError and returns Q3N_ERR_DEVICE with the file, line and
 * CUDA message on failure. Shape contracts are Q3N_REQUIREd on the host. */
#ifndef Q3N_CUDA_OPS_H
#define Q3N_CUDA_OPS_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "../../harness/impl.h"
#include "../../harness/status.h"

/* Bytes of one activation element for dt (4 or 2). */
size_t cuda_act_size(enum q3n_compute_dtype dt);

/* ---- embed.cu ---- */
/* out[t,:] = embed[tokens[t],:]; out [T,D], embed [V,D] (activation dtype). */
enum q3n_status cuda_embed_forward(void *d_out, const int64_t *d_tokens, const void *d_embed, int64_t T, int64_t D,
                                   enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err);
/* The embedding and the RMSNorm after it in one kernel (prefill with taps off): h = embed[tokens],
 * xn = rmsnorm(h) with weight d_norm_w; bitwise cuda_embed_forward then cuda_rmsnorm_forward.
 * Where cuda_embed_norm_ok (bf16, D % 8 == 0, D <= 4096) with 16-byte aligned buffers;
 * Q3N_ERR_USAGE otherwise. */
int cuda_embed_norm_ok(int64_t D, enum q3n_compute_dtype dt);
enum q3n_status cuda_embed_norm_forward(void *d_h, void *d_xn, const int64_t *d_tokens, const void *d_embed,
                                       const float *d_norm_w, double eps, int64_t T, int64_t D,
                                       enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err);
/* out[r, c] = float(x[r*ld + c]) for r < rows, c < cols: a strided slice to float32. */
enum q3n_status cuda_to_f32(float *d_out, const void *d_x, int64_t rows, int64_t cols, int64_t ld,
                            enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err);
/* out[i] = (T) x[i]: float32 back to the activation dtype (rounded to nearest even). */
enum q3n_status cuda_from_f32(void *d_out, const float *d_x, int64_t n, enum q3n_compute_dtype dt,
                              cudaStream_t stream, struct q3n_error *err);

/* ---- linear.cu ---- */
/* out[t,n] = sum_k x[t,k] W[n,k] (+ bias[n]); out [T,N], x [T,Kin], W [N,Kin]. cuBLAS GEMM with
 * CUBLAS_COMPUTE_32F and CUBLAS_DEFAULT_MATH (no TF32) in both modes; bf16 inputs/outputs in
 * bf16 mode with float32 accumulation. The handle is bound to `stream`. */
enum q3n_status cuda_linear_forward(void *d_out, const void *d_x, const void *d_W, const float *d_bias, int64_t T,
                                    int64_t N, int64_t Kin, enum q3n_compute_dtype dt, cublasHandle_t blas,
                                    cudaStream_t stream, struct q3n_error *err);
/* x[i] += y[i] over n elements (rounded to the activation dtype). */
enum q3n_status cuda_add_inplace(void *d_x, const void *d_y, int64_t n, enum q3n_compute_dtype dt,
                                 cudaStream_t stream, struct q3n_error *err);

/* ---- norm.cu ---- */
/* Zero-centred RMSNorm, float32 inside: out = x * rsqrt(mean(x^2) + eps) * (1 + w); rows of n. */
enum q3n_status cuda_rmsnorm_forward(void *d_out, const void *d_x, const float *d_w, int64_t rows, int64_t n,
                                     double eps, enum q3n_compute_dtype dt, cudaStream_t stream,
                                     struct q3n_error *err);
/* Fused residual + norm: h = h + y (skipped when d_y is NULL), then out = rmsnorm(h). */
enum q3n_status cuda_add_rmsnorm_forward(void *d_out, void *d_h, const void *d_y, const float *d_w, int64_t rows,
                                         int64_t n, double eps, enum q3n_compute_dtype dt, cudaStream_t stream,
                                         struct q3n_error *err);
/* Dev/test twin: ver 1 = 2-byte loads, the thread's elements in registers (any dtype, any n), 2 =
 * 16-byte loads with the row in shared memory (bf16, n % 8 == 0, n <= 16 norm_threads(n), 16-byte
 * aligned buffers: Q3N_ERR_USAGE otherwise), 0 = 2 where it runs, else 1. Bitwise equal (the same
 * sums in the same order: dev/test_moe2). */
enum q3n_status cuda_add_rmsnorm_forward_ver(void *d_out, void *d_h, const void *d_y, const float *d_w, int64_t rows,
                                             int64_t n, double eps, int ver, enum q3n_compute_dtype dt,
                                             cudaStream_t stream, struct q3n_error *err);
/* Gated RMSNorm: out = w * T(x * rsqrt(mean(x^2) + eps)) * silu(z), w not zero-centred. */
enum q3n_status cuda_rmsnorm_gated_forward(void *d_out, const void *d_x, const void *d_z, const float *d_w,
                                           int64_t rows, int64_t n, double eps, enum q3n_compute_dtype dt,
                                           cudaStream_t stream, struct q3n_error *err);
/* L2 norm to float32: out[t,h,:] = (x[t*ld + h*n + :] * rsqrt(sum(x^2) + eps)) * scale, or
 * / scale when divide; out [T,H,n]; x rows of a [T, ld] activation matrix (ld >= H*n). */
enum q3n_status cuda_l2norm_forward(float *d_out, const void *d_x, int64_t T, int64_t H, int64_t n, int64_t ld,
                                    double eps, float scale, int divide, enum q3n_compute_dtype dt,
                                    cudaStream_t stream, struct q3n_error *err);

/* ---- conv.cu ---- */
/* Causal depthwise conv1d + SiLU continuing from state (see ref_conv1d_causal_forward):
 * out,x [T,Cc] activations; w [Cc,K] and state [Cc,K] float32 (state NULL = zeros). */
enum q3n_status cuda_conv1d_causal_forward(void *d_out, const void *d_x, const float *d_w, const float *d_state,
                                           int64_t T, int64_t Cc, int64_t K, enum q3n_compute_dtype dt,
                                           cudaStream_t stream, struct q3n_error *err);
/* state <- the last K columns of [state; x] (float32 [Cc,K]). */
enum q3n_status cuda_conv1d_state_update(float *d_state, const void *d_x, int64_t T, int64_t Cc, int64_t K,
                                         enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err);
/* Decode step (T = 1), one launch, bitwise the same as cuda_conv1d_causal_forward +
 * cuda_conv1d_state_update + cuda_l2norm_forward (q: scale qscale, divide qdivide; k: scale 1) +
 * cuda_to_f32 (v) on x [Cc = 2*NK*DK + NV*DV] = q|k|v: q [NK,DK], k [NK,DK], v [NV*DV] float32;
 * state [Cc,K] updated in place. DK <= 256. */
enum q3n_status cuda_conv1d_decode_qkv(float *d_q, float *d_k, float *d_v, float *d_state, const void *d_x,
                                       const float *d_w, int64_t NK, int64_t DK, int64_t NV, int64_t DV, int64_t K,
                                       double eps, float qscale, int qdivide, enum q3n_compute_dtype dt,
                                       cudaStream_t stream, struct q3n_error *err);

/* ---- deltanet.cu ---- */
/* Head-grouped split (see ref_deltanet_split_forward) into mixed [T,Cc] = q|k|v (the conv's
 * input order), z [T,NV,DV] (activations) and b, a [T,NV] (float32 copies of activations). */
enum q3n_status cuda_deltanet_split_forward(void *d_mixed, void *d_z, float *d_b, float *d_a, const void *d_qkvz,
                                            const void *d_ba, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                                            int64_t DV, enum q3n_compute_dtype dt, cudaStream_t stream,
                                            struct q3n_error *err);
/* beta = T(sigmoid(b)) (rounded to the activation dtype as transformers does), g in float32. */
enum q3n_status cuda_deltanet_gates_forward(float *d_g, float *d_beta, const float *d_a, const float *d_b,
                                            const float *d_A_log, const float *d_dt_bias, int64_t T, int64_t NV,
                                            enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err);
/* Recurrent gated delta rule over T tokens (one launch per token): o [T,NV,DV] activations,
 * state [NV,DK,DV] float32 in/out, q (scaled), k [T,NK,DK], v [T,NV,DV], g, beta [T,NV] float32. */
enum q3n_status cuda_delta_rule_recurrent(void *d_o, float *d_state, const float *d_q, const float *d_k,
                                          const float *d_v, const float *d_g, const float *d_beta, int64_t T,
                                          int64_t NK, int64_t NV, int64_t DK, int64_t DV,
                                          enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err);
/* Kernel of the recurrent form for these dims and dtype: rec_v2 (bf16, DK <= 256, DV % 4 == 0;
 * float4 rows in flight) or rec_v1 (f32 mode: unchanged). */
const char *cuda_delta_rule_recurrent_kernel_for(int64_t DK, int64_t DV, enum q3n_compute_dtype dt);
/* Chunked (WY/UT) form, chunk C <= 64, any T; the state is carried across chunks in float32.
 * Arguments as the recurrent form plus scratch of cuda_delta_rule_chunked_scratch floats. */
int64_t cuda_delta_rule_chunked_scratch(int64_t T, int64_t NV, int64_t DK, int64_t DV, int64_t C);
enum q3n_status cuda_delta_rule_chunked(void *d_o, float *d_state, const float *d_q, const float *d_k,
                                        const float *d_v, const float *d_g, const float *d_beta, float *d_scratch,
                                        int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV, int64_t C,
                                        enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err);
/* Kernel version string of the chunked form: names both paths (bf16 tensor cores, fp32 SIMT);
 * _for names the one that runs for these dims and dtype. */
const char *cuda_delta_rule_chunked_kernel(void);
const char *cuda_delta_rule_chunked_kernel_for(int64_t DK, int64_t DV, int64_t C, enum q3n_compute_dtype dt);
/* The two paths cuda_delta_rule_chunked dispatches to (same arguments and scratch):
 * _simt = chunk_v4, fp32 SIMT, any dims (the f32 mode's path; bf16 mode for other dims);
 * _tc = bf16 tensor cores (deltanet_tc.cu), bf16 o only, DK = DV = 128, C = 64 and a device with
 * ~163 KB of opt-in shared memory per block only (_tc_supported); scan_warps picks the scan:
 * Q3N_TC_SCAN_V3 (wgmma, compute capability 9.0), or 2, 4, 8 warps per v2 scan block, a pair per
 * 16 value columns (the three v2 shapes give the same bits); 0 = v3 where it runs, else v2 with 4
 * warps; -1: the prep kernel alone, for timing. */
#define Q3N_TC_SCAN_V3 100
int cuda_delta_rule_chunked_tc_has_v3(void); /* this device runs scan v3 (and picks it by default) */
enum q3n_status cuda_delta_rule_chunked_simt(void *d_o, float *d_state, const float *d_q, const float *d_k,
                                             const float *d_v, const float *d_g, const float *d_beta, float *d_scratch,
                                             int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV, int64_t C,
                                             enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err);
int cuda_delta_rule_chunked_tc_supported(int64_t DK, int64_t DV, int64_t C);
int64_t cuda_delta_rule_chunked_tc_scratch(int64_t T, int64_t NV, int64_t DK, int64_t DV, int64_t C);
enum q3n_status cuda_delta_rule_chunked_tc(void *d_o, float *d_state, const float *d_q, const float *d_k,
                                           const float *d_v, const float *d_g, const float *d_beta, float *d_scratch,
                                           int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV, int64_t C,
                                           int scan_warps, cudaStream_t stream, struct q3n_error *err);
/* As _tc with q, k, v in bfloat16 (8-byte aligned): the tc path rounds float32 q, k, v to bf16
 * before any use, so bf16(q), bf16(k), bf16(v) give the same bits as q, k, v. */
enum q3n_status cuda_delta_rule_chunked_tc_bf16(void *d_o, float *d_state, const void *d_q, const void *d_k,
                                                const void *d_v, const float *d_g, const float *d_beta,
                                                float *d_scratch, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                                                int64_t DV, int64_t C, int scan_warps, cudaStream_t stream,
                                                struct q3n_error *err);
/* The same with the two phases pipelined where cuda_delta_rule_chunked_tc_pipes(NV) (scan v3 runs:
 * compute capability 9.0, and the device has more SMs than the scan has blocks, 2 NV, so that the
 * prep always finds an SM) and scan_warps is 0 or Q3N_TC_SCAN_V3; elsewhere, or with pipe NULL, as
 * above. The scan runs on pipe->stream beside
 * the prep, which sets a flag in the scratch per (chunk, key head) written; the scan waits for a
 * chunk's flag before it copies the chunk. The prep's blocks go chunk by chunk, so the scan (half
 * the SMs at NV = 32) follows the prep's front on the SMs it leaves. The same kernels and
 * arithmetic: bitwise the sequential run (dev/test_delta_tc). pipe->stream should have a higher
 * priority than stream (the scan's blocks then take SMs as the prep's first wave ends); its events
 * fork (after the flags are cleared on stream) and join (stream waits for the scan). */
int cuda_delta_rule_chunked_tc_pipes(int64_t NV);
struct cuda_tc_pipe {
    cudaStream_t stream;
    cudaEvent_t fork, join;
};
enum q3n_status cuda_delta_rule_chunked_tc_bf16_piped(void *d_o, float *d_state, const void *d_q, const void *d_k,
                                                      const void *d_v, const float *d_g, const float *d_beta,
                                                      float *d_scratch, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                                                      int64_t DV, int64_t C, int scan_warps, cudaStream_t stream,
                                                      const struct cuda_tc_pipe *pipe, struct q3n_error *err);
/* As _piped with the prep chosen: prep_ver 0 the default (cuda_delta_rule_tc_prep_ver_for, given
 * 16-byte aligned q, k, v; else v1), 1 one value head at a time, 2 both value heads of a key head in
 * one block (NV == 2 NK and 16-byte aligned q, k, v; else an error). v1 and v2 write the same scratch
 * bits (dev/test_delta_tc). */
enum q3n_status cuda_delta_rule_chunked_tc_bf16_ver(void *d_o, float *d_state, const void *d_q, const void *d_k,
                                                    const void *d_v, const float *d_g, const float *d_beta,
                                                    float *d_scratch, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                                                    int64_t DV, int64_t C, int scan_warps, int prep_ver,
                                                    cudaStream_t stream, const struct cuda_tc_pipe *pipe,
                                                    struct q3n_error *err);
int cuda_delta_rule_tc_prep_ver_for(int64_t NK, int64_t NV, int piped);
const char *cuda_delta_rule_chunked_simt_kernel(void);
const char *cuda_delta_rule_chunked_tc_kernel(void);

/* ---- deltanet_prep.cu: the prefill passes around the delta rule, fused (taps off) ---- */
/* Prep, bitwise the same as cuda_deltanet_split_forward + cuda_conv1d_causal_forward +
 * cuda_conv1d_state_update + cuda_l2norm_forward (q: eps, qscale, qdivide; k: eps, scale 1) +
 * cuda_to_f32 (v) + cuda_deltanet_gates_forward, without the intermediate mixed / conv / z / a / b:
 * reads qkvz [T, NK*(2*DK + 2*(NV/NK)*DV)] and ba [T, 2*NV] (activations, head-grouped as
 * in_proj_qkvz / in_proj_ba write them; see cuda_deltanet_split_forward), w [Cc,K], A_log,
 * dt_bias [NV]; writes q, k [T,NK,DK], v [T,NV,DV] in float32, or in bfloat16 rounded to nearest
 * when qkv_bf16 (bf16 mode only; what cuda_delta_rule_chunked_tc_bf16 takes), g, beta [T,NV]
 * float32, and updates state [Cc,K] (float32, not NULL) in place. Two launches. Needs
 * cuda_deltanet_prep_supported (NV % NK == 0, DK, DV <= 256, K <= 8). */
int cuda_deltanet_prep_supported(int64_t NK, int64_t NV, int64_t DK, int64_t DV, int64_t K);
enum q3n_status cuda_deltanet_prep_forward(void *d_q, void *d_k, void *d_v, float *d_g, float *d_beta,
                                           float *d_state, const void *d_qkvz, const void *d_ba, const float *d_w,
                                           const float *d_A_log, const float *d_dt_bias, int64_t T, int64_t NK,
                                           int64_t NV, int64_t DK, int64_t DV, int64_t K, double eps, float qscale,
                                           int qdivide, int qkv_bf16, enum q3n_compute_dtype dt,
                                           cudaStream_t stream, struct q3n_error *err);
/* ver 0: the default (PREP_DEFAULT_VER), 1: a token per warp at a time, 2: two (n <= 128, K <= 4
 * only; elsewhere 1 runs). Bitwise equal. */
enum q3n_status cuda_deltanet_prep_forward_ver(void *d_q, void *d_k, void *d_v, float *d_g, float *d_beta,
                                               float *d_state, const void *d_qkvz, const void *d_ba, const float *d_w,
                                               const float *d_A_log, const float *d_dt_bias, int64_t T, int64_t NK,
                                               int64_t NV, int64_t DK, int64_t DV, int64_t K, double eps,
                                               float qscale, int qdivide, int qkv_bf16, int ver,
                                               enum q3n_compute_dtype dt, cudaStream_t stream,
                                               struct q3n_error *err);
/* Gated RMSNorm of the delta rule's output x [T,NV,DV] with z read in place from the in_proj_qkvz
 * output qkvz (layout above): bitwise cuda_deltanet_split_forward's z + cuda_rmsnorm_gated_forward
 * (rows T*NV, n = DV). DV <= 256. */
enum q3n_status cuda_deltanet_gated_norm_forward(void *d_out, const void *d_x, const void *d_qkvz, const float *d_w,
                                                 int64_t T, int64_t NK, int64_t NV, int64_t DK, int64_t DV,
                                                 double eps, enum q3n_compute_dtype dt, cudaStream_t stream,
                                                 struct q3n_error *err);
/* The version ver 0 runs for these dimensions (1 or 2), for the session's report. */
int cuda_deltanet_prep_ver_for(int64_t DK, int64_t DV, int64_t K);
int cuda_deltanet_gated_norm_ver_for(enum q3n_compute_dtype dt);
/* ver 0: the default (cuda_deltanet_gated_norm_ver_for: v2 in bf16, v1 in f32), 1: a row per
 * warp, 2: two rows per warp (bitwise 1). */
enum q3n_status cuda_deltanet_gated_norm_forward_ver(void *d_out, const void *d_x, const void *d_qkvz,
                                                     const float *d_w, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                                                     int64_t DV, double eps, int ver, enum q3n_compute_dtype dt,
                                                     cudaStream_t stream, struct q3n_error *err);

/* ---- attention.cu ---- */
/* The versions the default q/k prep (1-4, given 16-byte aligned buffers) and output gate (1 or 2)
 * run for these arguments, for the session's report. */
int cuda_attn_qk_prep_ver_for(int64_t T, int64_t HD, enum q3n_compute_dtype dt);
int cuda_sigmoid_gate_ver_for(const void *d_out, const void *d_x, const void *d_gate, int64_t T, int64_t NH,
                              int64_t HD, int64_t ldg, enum q3n_compute_dtype dt);
/* Splits q_proj output qg [T, NH*2*HD] (per head: HD query, HD gate), applies q_norm (1+w) per
 * head and partial RoPE at positions pos0.., writes q [T,NH,HD]; k_norm + RoPE of k [T,NKV*HD]
 * into kc[pos0+t] and v into vc[pos0+t] (caches [S,NKV,HD]). qn/kn (may be NULL) receive the
 * normed, pre-RoPE q and k for taps. */
enum q3n_status cuda_attn_qk_prep(void *d_q, void *d_qn, void *d_kc, void *d_vc, void *d_kn, const void *d_qg,
                                  const void *d_k, const void *d_v, const float *d_qnorm_w, const float *d_knorm_w,
                                  int64_t T, int64_t pos0, int64_t NH, int64_t NKV, int64_t HD, int64_t rot,
                                  double theta, double eps, enum q3n_compute_dtype dt, cudaStream_t stream,
                                  struct q3n_error *err);
/* As cuda_attn_qk_prep with the kernel chosen: ver 0 the default (attention.cu's
 * QK_PREP_DEFAULT_VER where v2 / v3 / v4 apply: bf16, HD <= 256, T > 1, v4 also HD % 8 == 0 and
 * 16-byte aligned buffers; else v1), 1 a 128-thread block per (token, head), 2 a warp per (token,
 * head), 3 a block per token with its RoPE (cos, sin) computed once, 4 v3 with 16-byte rows (an error
 * where they do not apply). v1 to v4 are bitwise equal. */
enum q3n_status cuda_attn_qk_prep_ver(void *d_q, void *d_qn, void *d_kc, void *d_vc, void *d_kn, const void *d_qg,
                                      const void *d_k, const void *d_v, const float *d_qnorm_w,
                                      const float *d_knorm_w, int64_t T, int64_t pos0, int64_t NH, int64_t NKV,
                                      int64_t HD, int64_t rot, double theta, double eps, int ver,
                                      enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err);
/* Causal GQA attention of T queries at positions pos0.. against S = pos0+T cached keys
 * (see ref_attention_forward); softmax in float32. out,q [T,NH,HD]; kc,vc [S,NKV,HD].
 * scratch: cuda_attention_scratch(T, NH, HD, S) floats (split-K decode partials). */
int64_t cuda_attention_scratch(int64_t T, int64_t NH, int64_t HD, int64_t S);
enum q3n_status cuda_attention_forward(void *d_out, const void *d_q, const void *d_kc, const void *d_vc,
                                       float *d_scratch, int64_t T, int64_t pos0, int64_t NH, int64_t NKV,
                                       int64_t HD, enum q3n_compute_dtype dt, cudaStream_t stream,
                                       struct q3n_error *err);
/* Dev/test twin: old = 0 runs what cuda_attention_forward runs; old = 1 the first kernel of that
 * path (flash_mma_bf16_v2 for bf16 prefill, rows_v1 for decode), old = 2 flash_mma_bf16_v3 for bf16
 * prefill (the default before flash_wgmma_bf16_v4), old = 3 flash_wgmma_bf16_v4 (compute capability
 * 9.0; the default before v5), old = 4 flash_wgmma_bf16_v5, old = 5 / 6 flash_wgmma_bf16_v6 / v7
 * (9.0; producer warpgroup / the warpgroups taking turns, both slower than v5), old = 7
 * flash_wgmma_bf16_v8 (9.0; v5 with P V overlapping the next tile's softmax), kept for comparison
 * and timing. */
enum q3n_status cuda_attention_forward_ver(void *d_out, const void *d_q, const void *d_kc, const void *d_vc,
                                           float *d_scratch, int64_t T, int64_t pos0, int64_t NH, int64_t NKV,
                                           int64_t HD, int old, enum q3n_compute_dtype dt, cudaStream_t stream,
                                           struct q3n_error *err);
/* Names the attention kernel cuda_attention_forward picks for these arguments. */
const char *cuda_attention_kernel(int64_t T, int64_t HD, enum q3n_compute_dtype dt);
/* CUDA-graph decode twins (one captured graph serves every step): as cuda_attn_qk_prep with T = 1
 * and cuda_attention_forward with T = 1, but the position pos0 = *d_pos is read on the device.
 * qk_prep_dpos writes q, and k/v into the caches at row *d_pos. attention_decode_dpos attends one
 * query against keys 0..*d_pos; S_max (the cache capacity, > *d_pos) sizes the split count and
 * splits past *d_pos do nothing; scratch: cuda_attention_scratch(1, NH, HD, S_max) floats.
 * Results are bitwise those of the pos0 launchers at pos0 = *d_pos. */
enum q3n_status cuda_attn_qk_prep_dpos(void *d_q, void *d_qn, void *d_kc, void *d_vc, void *d_kn, const void *d_qg,
                                       const void *d_k, const void *d_v, const float *d_qnorm_w,
                                       const float *d_knorm_w, const int64_t *d_pos, int64_t NH, int64_t NKV,
                                       int64_t HD, int64_t rot, double theta, double eps, enum q3n_compute_dtype dt,
                                       cudaStream_t stream, struct q3n_error *err);
enum q3n_status cuda_attention_decode_dpos(void *d_out, const void *d_q, const void *d_kc, const void *d_vc,
                                           float *d_scratch, const int64_t *d_pos, int64_t S_max, int64_t NH,
                                           int64_t NKV, int64_t HD, enum q3n_compute_dtype dt, cudaStream_t stream,
                                           struct q3n_error *err);
/* Dev/test twin of the bf16 split-K decode (HD 128 or 256): ver 4 = decode_split_bf16_v4 (64-key
 * splits; the default of cuda_attention_forward T = 1 and cuda_attention_decode_dpos), ver 3 =
 * decode_split_bf16_v3 (128-key splits), 0 = the default. Position pos0 (d_pos NULL, then S > pos0)
 * or *d_pos; S sizes the split count; scratch as cuda_attention_decode_dpos. decode_kernel names the
 * kernel a version runs ("rows_v1(split-K decode)" where neither applies). */
enum q3n_status cuda_attention_decode_ver(void *d_out, const void *d_q, const void *d_kc, const void *d_vc,
                                          float *d_scratch, int64_t pos0, const int64_t *d_pos, int64_t S, int64_t NH,
                                          int64_t NKV, int64_t HD, int ver, enum q3n_compute_dtype dt,
                                          cudaStream_t stream, struct q3n_error *err);
const char *cuda_attention_decode_kernel(int64_t NH, int64_t NKV, int64_t HD, enum q3n_compute_dtype dt, int ver);
/* out[t, h*HD + d] = x[t,h,d] * sigmoid(gate[t*NH*ldg... ]): gate row t, head h at
 * d_gate + (t*NH + h)*ldg (ldg = 2*HD when the gate sits inside q_proj's output). */
enum q3n_status cuda_sigmoid_gate_forward(void *d_out, const void *d_x, const void *d_gate, int64_t T, int64_t NH,
                                          int64_t HD, int64_t ldg, enum q3n_compute_dtype dt, cudaStream_t stream,
                                          struct q3n_error *err);
/* ver 0: the default (attention.cu's SIGMOID_GATE_DEFAULT_VER where v2 applies: bf16, T > 1, HD
 * and ldg multiples of 8, 16-byte aligned buffers; else v1), 1: one element per thread, 2: eight per
 * thread (an error where it does not apply). v1 and v2 are bitwise equal. */
enum q3n_status cuda_sigmoid_gate_forward_ver(void *d_out, const void *d_x, const void *d_gate, int64_t T,
                                              int64_t NH, int64_t HD, int64_t ldg, int ver,
                                              enum q3n_compute_dtype dt, cudaStream_t stream,
                                              struct q3n_error *err);

/* ---- moe_router.cu, moe.cu ---- */
/* Router: probs = softmax(logits) in float32 (d_probs may be NULL), top-k in torch.topk order
 * (descending, ties to the lower index), weights renormalised when norm_topk_prob and then
 * rounded to the activation dtype (transformers casts them to the logits' dtype).
 * idx [T,K] int32, weight [T,K] float32. E <= 4096. */
enum q3n_status cuda_router_topk_forward(float *d_probs, int32_t *d_idx, float *d_weight, const void *d_logits,
                                         int64_t T, int64_t E, int64_t K, int norm_topk_prob,
                                         enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err);
/* Dev/test twin: ver 3 = block per token (E <= 1024; the default for T <= 64), 4 = warp per token
 * with a threshold (E <= 1024, K <= 32, K ceil(E / 32) <= 640; the default above), 2 = warp per
 * token, K argmax rounds (E <= 1024; the default above where v4 does not run), 1 = block argmax
 * rounds (E > 1024), 0 = the default. v2, v3 and v4 give bitwise the same probs, idx and weights
 * on finite logits. router_topk_kernel names what ver runs. */
enum q3n_status cuda_router_topk_forward_ver(float *d_probs, int32_t *d_idx, float *d_weight, const void *d_logits,
                                             int64_t T, int64_t E, int64_t K, int norm_topk_prob, int ver,
                                             enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err);
const char *cuda_router_topk_kernel(int64_t T, int64_t E, int64_t K, int ver);
/* Token permutation, deterministic: the T*K assignments grouped by expert, tokens ascending
 * inside each group. perm_row[p] = t*K + j of slot p; pos[t*K + j] = p; counts, offsets [E]. */
enum q3n_status cuda_moe_permute(int32_t *d_perm_row, int32_t *d_pos, int32_t *d_counts, int32_t *d_offsets,
                                 const int32_t *d_idx, int64_t T, int64_t E, int64_t K, cudaStream_t stream,
                                 struct q3n_error *err);
/* The same permutation by a counting sort over chunks of 256 assignments (three launches that read
 * idx twice instead of one block per expert scanning all of it): bitwise the output of
 * cuda_moe_permute. Usable when cuda_moe_permute_v2_ok(E) (E <= 8192); scratch of
 * cuda_moe_permute_scratch(T, E, K) int32. */
int cuda_moe_permute_v2_ok(int64_t E);
/* The chunk scan cuda_moe_permute_v2 runs for E experts (1, 2 or 3), for the session's report. */
int cuda_moe_permute_scan_ver_for(int64_t E);
int64_t cuda_moe_permute_scratch(int64_t T, int64_t E, int64_t K);
enum q3n_status cuda_moe_permute_v2(int32_t *d_perm_row, int32_t *d_pos, int32_t *d_counts, int32_t *d_offsets,
                                    int32_t *d_scratch, const int32_t *d_idx, int64_t T, int64_t E, int64_t K,
                                    cudaStream_t stream, struct q3n_error *err);
/* As cuda_moe_permute_v2 with the chunk scan's version chosen: 0 the default (moe.cu's
 * PERMUTE_SCAN_DEFAULT_VER), 1 one block, a load in flight per thread, 2 one block, eight loads;
 * 3 chunks of 128 assignments, the scan over blocks of 32 experts, offsets scanned by the place
 * kernel (where 4 E (warps + 1) bytes fit in 47 KB: Q3N_ERR_USAGE otherwise). Bitwise equal. */
enum q3n_status cuda_moe_permute_v2_ver(int32_t *d_perm_row, int32_t *d_pos, int32_t *d_counts, int32_t *d_offsets,
                                        int32_t *d_scratch, const int32_t *d_idx, int64_t T, int64_t E, int64_t K,
                                        int scan_ver, cudaStream_t stream, struct q3n_error *err);
/* out[p,:] = x[rows[p] / div, :]  (p < n; rows = perm_row, div = K gathers token rows). */
enum q3n_status cuda_gather_rows(void *d_out, const void *d_x, const int32_t *d_rows, int64_t n, int64_t div,
                                 int64_t D, enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err);
/* SwiGLU: out[r,i] = silu(gu[r,i]) * gu[r,W+i]; gu [rows, 2W] (gate half first), out [rows, W]. */
enum q3n_status cuda_swiglu_forward(void *d_out, const void *d_gu, int64_t rows, int64_t W,
                                    enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err);
/* Dev/test twin: ver 1 = a thread per output (any dtype, any W), 2 = a thread per 8 outputs with
 * 16-byte loads (bf16, W % 8 == 0, 16-byte aligned buffers: Q3N_ERR_USAGE otherwise), 0 = 2 where it
 * runs, else 1. The same operations per element: bitwise equal (dev/test_moe2). */
enum q3n_status cuda_swiglu_forward_ver(void *d_out, const void *d_gu, int64_t rows, int64_t W, int ver,
                                        enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err);
/* Expert GEMV for few rows (decode; no host round trip): out[r,n] = sum_k W[e_r][n,k] x[r/div, k]
 * with e_r = idx[r]; W [E, N, Kin] stacked. out [rows, N]. */
enum q3n_status cuda_moe_experts_gemv(void *d_out, const void *d_x, const int32_t *d_idx, const void *d_W,
                                      int64_t rows, int64_t div, int64_t N, int64_t Kin, enum q3n_compute_dtype dt,
                                      cudaStream_t stream, struct q3n_error *err);
/* Grouped expert GEMM on bf16 tensor cores over the permuted rows, all experts in one launch,
 * counts/offsets read on the device (no host round trip): out[p,:] = x[p,:] W[e]^T for the rows
 * p of expert e; x [rows, Kin], W [E, N, Kin], out [rows, N]. Usable when
 * cuda_moe_grouped_gemm_ok(N, Kin, dt) (bf16, N % 128 == 0, Kin % 32 == 0). tiles: scratch of
 * cuda_moe_grouped_tiles(rows, E) int32. */
int cuda_moe_grouped_gemm_ok(int64_t N, int64_t Kin, enum q3n_compute_dtype dt);
int64_t cuda_moe_grouped_tiles(int64_t rows, int64_t E);
enum q3n_status cuda_moe_grouped_gemm(void *d_out, const void *d_x, const void *d_W, const int32_t *d_counts,
                                      const int32_t *d_offsets, int32_t *d_tiles, int64_t rows, int64_t E, int64_t N,
                                      int64_t Kin, enum q3n_compute_dtype dt, cudaStream_t stream,
                                      struct q3n_error *err);

/* Grouped expert GEMM v3 (bf16; 128x128x64 tiles, 3-stage cp.async pipeline, ldmatrix, mma.sync):
 * as cuda_moe_grouped_gemm, but A row p is x[rows[p] / div] when d_rows is given (gather fused;
 * NULL: x is already permuted, [rows, Kin]), and with swiglu W is [E, N = 2W', Kin] (gate rows
 * then up rows) and out [rows, W'] = T(T(silu(T(gate))) * T(up)) (cuda_swiglu_forward's
 * rounding). Usable when cuda_moe_grouped_v3_ok (bf16, N % 8 == 0 (% 16 with swiglu),
 * Kin % 8 == 0; other tails handled). Tile table: cuda_moe_grouped_tiles_v3 into scratch of
 * cuda_moe_grouped_tiles(rows, E) int32, once per counts/offsets (both GEMMs of a layer share it). */
int cuda_moe_grouped_v3_ok(int64_t N, int64_t Kin, int swiglu, enum q3n_compute_dtype dt);
enum q3n_status cuda_moe_grouped_tiles_v3(int32_t *d_tiles, const int32_t *d_counts, const int32_t *d_offsets,
                                          int64_t rows, int64_t E, cudaStream_t stream, struct q3n_error *err);
enum q3n_status cuda_moe_grouped_gemm_v3(void *d_out, const void *d_x, const int32_t *d_rows, int64_t div,
                                         const void *d_W, const int32_t *d_counts, const int32_t *d_offsets,
                                         const int32_t *d_tiles, int64_t rows, int64_t E, int64_t N, int64_t Kin,
                                         int swiglu, enum q3n_compute_dtype dt, cudaStream_t stream,
                                         struct q3n_error *err);
/* The same with the k-tile depth chosen (bk 32: 4-stage pipeline; 64: 3 stages), for dev tests. */
enum q3n_status cuda_moe_grouped_gemm_v3_bk(void *d_out, const void *d_x, const int32_t *d_rows, int64_t div,
                                            const void *d_W, const int32_t *d_counts, const int32_t *d_offsets,
                                            const int32_t *d_tiles, int64_t rows, int64_t E, int64_t N, int64_t Kin,
                                            int swiglu, int bk, enum q3n_compute_dtype dt, cudaStream_t stream,
                                            struct q3n_error *err);
/* Grouped expert GEMM v4: v3's contract, tile table and roundings on Hopper wgmma (moe_wgmma.cu):
 * usable when cuda_moe_grouped_v3_ok and cuda_moe_grouped_v4_supported (compute capability 9.0,
 * whose sm_90a code is in the build). Agrees with v3 to float32 rounding before the bf16 store
 * (not promised by the hardware's documentation; bitwise equal on an H100 on every shape
 * dev/test_moe_prefill tries); deterministic. _st picks the pipeline depth (3: two blocks per SM, 4: one). */
int cuda_moe_grouped_v4_supported(void);
/* Whether v4 beats v3 for this many permuted rows over E experts (measured on an H100). */
int cuda_moe_grouped_v4_pays(int64_t rows, int64_t E);
enum q3n_status cuda_moe_grouped_gemm_v4(void *d_out, const void *d_x, const int32_t *d_rows, int64_t div,
                                         const void *d_W, const int32_t *d_counts, const int32_t *d_offsets,
                                         const int32_t *d_tiles, int64_t rows, int64_t E, int64_t N, int64_t Kin,
                                         int swiglu, enum q3n_compute_dtype dt, cudaStream_t stream,
                                         struct q3n_error *err);
enum q3n_status cuda_moe_grouped_gemm_v4_st(void *d_out, const void *d_x, const int32_t *d_rows, int64_t div,
                                            const void *d_W, const int32_t *d_counts, const int32_t *d_offsets,
                                            const int32_t *d_tiles, int64_t rows, int64_t E, int64_t N, int64_t Kin,
                                            int swiglu, int stages, enum q3n_compute_dtype dt, cudaStream_t stream,
                                            struct q3n_error *err);
/* Grouped expert GEMM v5: v4's contract, tile table and roundings (moe_wgmma5.cu), warp-specialised:
 * a cp.async producer warpgroup and two wgmma consumer warpgroups meeting at mbarriers, 128 x 256
 * tiles, 1 block per SM on a persistent grid (down: 3 stages, output staged through shared memory
 * for 16-byte stores). Usable when cuda_moe_grouped_v3_ok and
 * cuda_moe_grouped_v4_supported (the same sm_90a requirement); expected bitwise v3/v4 (same k
 * order; dev/test_moe_prefill requires it); deterministic. _cfg is the dev/test twin: bn 128 or 256
 * outputs per tile, persistent 1 (grid = SMs, blocks loop over the tiles) or 0 (a block per tile),
 * stages = ring depth (0: the default, 4 for bn 256, 6 for bn 128), epilogue 0 (fragments stored
 * from registers, 4-byte stores), 1 (through shared memory, 16-byte coalesced stores) or 2 (through
 * shared memory, bulk async copies overlapping the next tile). Instantiated: bn 256 with stages
 * 2..4 and epilogue 0, or stages 3 and epilogue 1 or 2; bn 128 with the default only. half_tiles 1
 * computes a tile with <= 64 valid rows with the two consumer warpgroups splitting its outputs
 * instead of its rows (slower on the production configurations; off in the production entry), 0
 * as a full tile. tma 1 copies the weight tiles by TMA tensor copies (the production choice;
 * only for bn 256 with stages 4 and epilogue 0, or stages 3 and epilogue 1); tma 2 the same from
 * d_W packed by cuda_moe_pack_v5 (one contiguous 32 KB copy per k-tile). early_release 1 frees
 * each stage as soon as its own products retire (all stages refill while a consumer waits; aimed at
 * T = 4096, where the weight stream sets the time), 0 after the next k-tile's products are issued
 * (the production entry: G5_EARLY_RELEASE). a_cluster (tma 1 only) reads A by one TMA box per row
 * instead of cp.async: 1 per block, 2 or 4 multicast to a cluster of that many blocks working on
 * neighbouring output blocks of the same tile (one L2 read of each A row per cluster instead of one
 * per block); 0 = cp.async (the production entry: G5_A_CLUSTER_GATE_UP / _DOWN). b_pair 1 (tma 1,
 * a_cluster 0, no weights evict_first) runs clusters of 2 blocks on the same output block of two
 * neighbouring tiles of the table: where both tiles are of one expert each block reads half of the
 * weight tile and multicasts it to both (one L2 read per pair instead of two); the production
 * entry's choice: G5_B_PAIR_GATE_UP / _DOWN from the rows per expert, both off (slower: see
 * moe_wgmma5.cu). l2_hints: L2
 * eviction hints of the copies, bit 0 = the weights evict_first, bit 1 = the A rows evict_last, -1 =
 * the production entry's choice from the shape (moe_wgmma5.cu's g5_l2_auto). With bit 1 the launch
 * is followed by a pass putting X's lines back to the normal priority. All give the same bits.
 * cuda_moe_grouped_v5_variant names the production entries' options that are on, for the run's
 * report ("/l2a": gate_up's gathered rows evict_last, then reset, "+down": down's A too; "/bpair":
 * weight pairs; "/early(gate_up)": early release for gate_up at large T; "": none).
 * _packed is the production entry's configuration with tma 2, for sessions that packed their
 * experts (run_options.pack_experts, fast/cuda/experts_layout.cu). */
const char *cuda_moe_grouped_v5_variant(void);
enum q3n_status cuda_moe_grouped_gemm_v5(void *d_out, const void *d_x, const int32_t *d_rows, int64_t div,
                                         const void *d_W, const int32_t *d_counts, const int32_t *d_offsets,
                                         const int32_t *d_tiles, int64_t rows, int64_t E, int64_t N, int64_t Kin,
                                         int swiglu, enum q3n_compute_dtype dt, cudaStream_t stream,
                                         struct q3n_error *err);
enum q3n_status cuda_moe_grouped_gemm_v5_packed(void *d_out, const void *d_x, const int32_t *d_rows, int64_t div,
                                                const void *d_W, const int32_t *d_counts, const int32_t *d_offsets,
                                                const int32_t *d_tiles, int64_t rows, int64_t E, int64_t N,
                                                int64_t Kin, int swiglu, enum q3n_compute_dtype dt,
                                                cudaStream_t stream, struct q3n_error *err);
enum q3n_status cuda_moe_grouped_gemm_v5_cfg(void *d_out, const void *d_x, const int32_t *d_rows, int64_t div,
                                             const void *d_W, const int32_t *d_counts, const int32_t *d_offsets,
                                             const int32_t *d_tiles, int64_t rows, int64_t E, int64_t N,
                                             int64_t Kin, int swiglu, int bn, int persistent, int stages,
                                             int epilogue, int half_tiles, int tma, int early_release,
                                             int a_cluster, int b_pair, int l2_hints, enum q3n_compute_dtype dt,
                                             cudaStream_t stream, struct q3n_error *err);
/* Expert weights W [E][N][Kin] re-laid out for v5's tma 2 and the packed GEMV (moe_pack.cu; the
 * layout is moe_pack.h's): k-tile kt of v5's item xb (256 outputs; SwiGLU: h columns 128 xb .., its
 * 128 gate rows then its 128 up rows) of expert e is the contiguous 256 x 64 block
 * (e (N / 256) + xb) (Kin / 64) + kt. Same size as W, out of place. Packable when N % 256 == 0
 * (SwiGLU: (N / 2) % 128 == 0) and Kin % 64 == 0; bf16 only. */
int cuda_moe_v5_packable(int64_t N, int64_t Kin, int swiglu);
enum q3n_status cuda_moe_pack_v5(void *d_packed, const void *d_W, int64_t E, int64_t N, int64_t Kin, int swiglu,
                                 enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err);
/* Decode MoE (expert GEMV v2, no host round trip), routed experts and shared expert together:
 * gate_up: h[t*K+j] = SwiGLU(Wgu[idx[t*K+j]] x[t]) [T*K, I]; hs[t] = SwiGLU(Wsgu x[t]) [T, Ws]
 * (Wsgu NULL: none); rounding as gate_up GEMV + cuda_swiglu_forward; with Wsg [1, D] also the
 * shared-expert gate logit sg[t] = T(x[t] . Wsg) (Wsg NULL: none).
 * down_combine: y_j = T(Wdn[idx] h_j), then as cuda_moe_combine (d_pos NULL) with the shared
 * expert s = T(Wsdn hs[t]): eo [T,D] (may be NULL), mout [T,D], sout [T,D] = s (may be NULL).
 * Usable when cuda_moe_gemv2_ok(D, I, Ws, K) (dims % 8 == 0, K <= 64). */
int cuda_moe_gemv2_ok(int64_t D, int64_t I, int64_t Ws, int64_t K);
enum q3n_status cuda_moe_gemv2_gate_up(void *d_h, void *d_hs, void *d_sg, const void *d_x, const int32_t *d_idx,
                                       const void *d_Wgu, const void *d_Wsgu, const void *d_Wsg, int64_t T, int64_t K,
                                       int64_t D, int64_t I, int64_t Ws, enum q3n_compute_dtype dt,
                                       cudaStream_t stream, struct q3n_error *err);
enum q3n_status cuda_moe_gemv2_down_combine(void *d_eo, void *d_mout, void *d_sout, const void *d_h, const void *d_hs,
                                            const int32_t *d_idx, const float *d_weight, const void *d_Wdn,
                                            const void *d_Wsdn, const void *d_sg, int64_t T, int64_t K, int64_t D,
                                            int64_t I, int64_t Ws, enum q3n_compute_dtype dt, cudaStream_t stream,
                                            struct q3n_error *err);
/* Dev/test twin: ver 3 = block per (token, 8 outputs), 2 chunks of each of 4 weight rows in flight
 * per lane (the default), ver 4 = the same with whole rows (4 chunks) in flight, ver 2 = block per
 * output; 0 = the default. All give bitwise the same outputs. down_kernel names what ver runs. */
enum q3n_status cuda_moe_gemv2_down_combine_ver(void *d_eo, void *d_mout, void *d_sout, const void *d_h,
                                                const void *d_hs, const int32_t *d_idx, const float *d_weight,
                                                const void *d_Wdn, const void *d_Wsdn, const void *d_sg, int64_t T,
                                                int64_t K, int64_t D, int64_t I, int64_t Ws, int ver,
                                                enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err);
const char *cuda_moe_gemv2_down_kernel(int ver);
/* The same two launches with the routed experts packed by cuda_moe_pack_v5 (moe_pack.h; bf16, and
 * q3n_pack_fits for [2I][D] SwiGLU and [D][I]); the shared expert in its checkpoint layout. Each
 * weight chunk is read from its packed place and used in the same order: bitwise the outputs of the
 * checkpoint-layout launches (down: the default ver 3). */
enum q3n_status cuda_moe_gemv2_gate_up_packed(void *d_h, void *d_hs, void *d_sg, const void *d_x,
                                              const int32_t *d_idx, const void *d_Wgu, const void *d_Wsgu,
                                              const void *d_Wsg, int64_t T, int64_t K, int64_t D, int64_t I,
                                              int64_t Ws, enum q3n_compute_dtype dt, cudaStream_t stream,
                                              struct q3n_error *err);
enum q3n_status cuda_moe_gemv2_down_combine_packed(void *d_eo, void *d_mout, void *d_sout, const void *d_h,
                                                   const void *d_hs, const int32_t *d_idx, const float *d_weight,
                                                   const void *d_Wdn, const void *d_Wsdn, const void *d_sg,
                                                   int64_t T, int64_t K, int64_t D, int64_t I, int64_t Ws,
                                                   enum q3n_compute_dtype dt, cudaStream_t stream,
                                                   struct q3n_error *err);

/* Weighted un-permute and shared-expert combine, per token t (d_pos NULL = identity):
 * experts_out[t] = T(sum_j weight[t,j] * y[pos[t*K+j]]) (j ascending, float32),
 * mlp_out[t] = T(experts_out[t] + T(T(sigmoid(sg[t])) * shared[t])) (shared NULL: = experts_out). */
enum q3n_status cuda_moe_combine(void *d_experts_out, void *d_mlp_out, const void *d_y, const int32_t *d_pos,
                                 const float *d_weight, const void *d_shared, const void *d_sg, int64_t T,
                                 int64_t D, int64_t K, enum q3n_compute_dtype dt, cudaStream_t stream,
                                 struct q3n_error *err);
/* Dev/test twin: ver 1 = block per token, 2-byte loads one slot at a time (any dtype, any D);
 * ver 2 = thread per 8 outputs, 16-byte loads of all K slots in flight before the sums (bf16,
 * D % 8 == 0, every buffer 16-byte aligned: Q3N_ERR_USAGE otherwise); 0 = the default (v2 where
 * usable, else v1). Both do the same float32 operations in the same order: bitwise equal
 * (dev/test_moe2). combine_kernel names what ver runs. */
enum q3n_status cuda_moe_combine_ver(void *d_experts_out, void *d_mlp_out, const void *d_y, const int32_t *d_pos,
                                     const float *d_weight, const void *d_shared, const void *d_sg, int64_t T,
                                     int64_t D, int64_t K, int ver, enum q3n_compute_dtype dt, cudaStream_t stream,
                                     struct q3n_error *err);
const char *cuda_moe_combine_kernel(int64_t D, enum q3n_compute_dtype dt, int ver);
/* The combine, the residual add and the RMSNorm after it in one kernel (prefill with taps off):
 * m = mlp_out[t] of cuda_moe_combine (not stored), h[t] = T(h[t] + T(m)), xn[t] = rmsnorm(h[t]) with
 * weight d_norm_w (zero-centred: x r (1 + w)); bitwise cuda_moe_combine followed by
 * cuda_add_rmsnorm_forward. Supported where cuda_moe_combine_norm_ok (bf16, D % 8 == 0,
 * D <= 4096), every buffer 16-byte aligned; Q3N_ERR_USAGE otherwise. */
int cuda_moe_combine_norm_ok(int64_t D, enum q3n_compute_dtype dt);
enum q3n_status cuda_moe_combine_norm(void *d_h, void *d_xn, const void *d_y, const int32_t *d_pos,
                                      const float *d_weight, const void *d_shared, const void *d_sg,
                                      const float *d_norm_w, double eps, int64_t T, int64_t D, int64_t K,
                                      enum q3n_compute_dtype dt, cudaStream_t stream, struct q3n_error *err);

#ifdef __cplusplus
}
#endif

#endif
