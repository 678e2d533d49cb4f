/* conv.c — the Gated DeltaNet's causal depthwise conv1d (+ SiLU) and its decode state. */
#include "ops.h"

/* Causal depthwise conv1d + SiLU over T new columns, continuing from `state`:
 *   out[t,c] = silu( sum_{j<K} w[c,j] * xx[t+j+1, c] ),  xx = [state; x]  (K + T rows)
 * out,x [T,Cc] (channels last, as mixed_qkv after its transpose), w [Cc,K], state [Cc,K] (the
 * last K pre-conv columns, transformers' conv_states layout; NULL = zeros = a fresh prompt).
 * Mirrors causal_conv1d_fn (padding K-1, no bias) and causal_conv1d_update alike: both equal
 * this sum; taps j run in index order (torch's conv1d also sums the K taps in order). */
void ref_conv1d_causal_forward(ref_real *out, const ref_real *x, const float *w, const ref_real *state, int64_t T,
                               int64_t Cc, int64_t K)
{
    Q3N_REQUIRE(T >= 0 && Cc > 0 && K > 0);
    Q3N_REQUIRE(out != x);
    for (int64_t t = 0; t < T; t++) {
        for (int64_t c = 0; c < Cc; c++) {
            ref_real acc = 0;
            for (int64_t j = 0; j < K; j++) {
                int64_t row = t + j + 1; /* row in xx = [state (K rows); x (T rows)] */
                ref_real v;
                if (row < K)
                    v = state ? state[c * K + row] : (ref_real)0;
                else
                    v = x[(row - K) * Cc + c];
                acc += (ref_real)w[c * K + j] * v;
            }
            out[t * Cc + c] = ref_silu(acc);
        }
    }
}

/* state <- the last K columns of [state; x]: state [Cc,K], x [T,Cc]. With a fresh (zero) state
 * this is the prompt's last K columns left-padded with zeros, as transformers' update_conv_state
 * pads a short prompt. */
void ref_conv1d_state_update(ref_real *state, const ref_real *x, int64_t T, int64_t Cc, int64_t K)
{
    Q3N_REQUIRE(T >= 0 && Cc > 0 && K > 0);
    for (int64_t c = 0; c < Cc; c++) {
        ref_real *s = state + c * K;
        /* new column j is old xx row T + j, where xx = [s (K); x (T)] */
        if (T >= K) {
            for (int64_t j = 0; j < K; j++) s[j] = x[(T - K + j) * Cc + c];
        } else {
            for (int64_t j = 0; j < K - T; j++) s[j] = s[j + T];
            for (int64_t j = K - T; j < K; j++) s[j] = x[(j - (K - T)) * Cc + c];
        }
    }
}
