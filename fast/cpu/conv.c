/* conv.c — causal depthwise conv1d + SiLU and the conv-state update. Twins of ref/conv.c.
 * Same summation order as ref (taps j = 0..K-1); the loop runs over channels innermost so
 * it vectorises, and may contract into FMA (<= 1 ULP per tap). */
#include <string.h>

#include "ops.h"

#include "../../harness/status.h"

/* out[t,c] = silu(sum_{j<K} w[c,j] * xx[t+j+1,c]), xx = [state; x]   out,x [T,Cc], w,state [Cc,K]. */
void cpu_conv1d_causal_forward(float *out, const float *x, const float *w, const float *state, int64_t T,
                               int64_t Cc, int64_t K)
{
    Q3N_REQUIRE(T >= 0 && Cc > 0 && K > 0);
    for (int64_t t = 0; t < T; t++) {
        float *o = out + t * Cc;
        for (int64_t c = 0; c < Cc; c++) o[c] = 0.0f;
        for (int64_t j = 0; j < K; j++) {
            int64_t row = t + j + 1; /* index into xx = [state (K rows); x] */
            if (row < K) {
                if (!state) continue;
                for (int64_t c = 0; c < Cc; c++) o[c] += w[c * K + j] * state[c * K + row];
            } else {
                const float *xr = x + (row - K) * Cc;
                for (int64_t c = 0; c < Cc; c++) o[c] += w[c * K + j] * xr[c];
            }
        }
        for (int64_t c = 0; c < Cc; c++) o[c] = cpu_silu(o[c]);
    }
}

/* state <- the last K columns of [state; x] (state [Cc,K], x [T,Cc]). */
void cpu_conv1d_state_update(float *state, const float *x, int64_t T, int64_t Cc, int64_t K)
{
    Q3N_REQUIRE(T >= 0 && Cc > 0 && K > 0);
    for (int64_t c = 0; c < Cc; c++) {
        float *s = state + c * K;
        for (int64_t j = 0; j < K; j++) {
            int64_t src = T + j; /* column j of the new state is column T+j of [state; x] */
            s[j] = src < K ? s[src] : x[(src - K) * Cc + c];
        }
    }
}
