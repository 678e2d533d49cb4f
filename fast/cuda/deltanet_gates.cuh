/* deltanet_gates.cuh — the gate formulas of the Gated DeltaNet, shared by gates_kernel
 * (deltanet.cu) and the fused prefill prep (deltanet_prep.cu) so both compile the same float
 * operations (internal; not a public header).
 *
 *   g    = -exp(A_log[h]) * softplus(a + dt_bias[h])   float32 (transformers: float32 too)
 *   beta = T(sigmoid(b))                                 rounded to the activation dtype T */
#ifndef Q3N_CUDA_DELTANET_GATES_CUH
#define Q3N_CUDA_DELTANET_GATES_CUH

#include "common.cuh"

__device__ __forceinline__ float softplus_f(float x)
{
    return x > 20.0f ? x : log1pf(expf(x)); /* torch's threshold 20 */
}
__device__ __forceinline__ float dn_gate_g(float a, float A_log, float dt_bias)
{
    return -expf(A_log) * softplus_f(a + dt_bias);
}
template <typename T>
__device__ __forceinline__ float dn_gate_beta(float b, const T *tag)
{
    return rnd(sigmoid_f(b), tag);
}

#endif
