/* conv.c — causal depthwise conv1d + SiLU and the conv-state update. Twins of ref/conv.c.
 * Same summation order as ref (taps j = 0..K-1); the loop runs over channels innermost so
 * it vectorises, and may contract into FMA (<= 1 ULP per tap). */
#include <string.h>

#include "ops.h"

#include "../../harness/status.h"

struct conv_job {
    float *out;
    const float *x, *w, *state;
    int64_t Cc, K;
};

/* Output rows [t0, t1): each reads only x and the state, so rows run on any worker. */
static void conv_rows(void *ctx, int64_t t0, int64_t t1, int worker)
{
    (void)worker;
    const struct conv_job *jb = ctx;
    int64_t Cc = jb->Cc, K = jb->K;
    const float *w = jb->w, *state = jb->state;
    for (int64_t t = t0; t < t1; t++) {
        float *o = jb->out + t * Cc;
        for (int64_t c = 0; c < Cc; c++) o[c] = 0.0f;
        for (int64_t j = 0; j < K; j++) {
            int64_t row = t + j + 1; /* index into xx = [state (K rows); x] */
            if (row < K) {
                if (!state) continue;
                for (int64_t c = 0; c < Cc; c++) o[c] += w[c * K + j] * state[c * K + row];
            } else {
                const float *xr = jb->x + (row - K) * Cc;
                for (int64_t c = 0; c < Cc; c++) o[c] += w[c * K + j] * xr[c];
            }
        }
        for (int64_t c = 0; c < Cc; c++) o[c] = cpu_silu(o[c]);
    }
}

/* out[t,c] = silu(sum_{j<K} w[c,j] * xx[t+j+1,c]), xx = [state; x]   out,x [T,Cc], w,state [Cc,K].
 * Rows spread over cpu_parallel_for workers. */
void cpu_conv1d_causal_forward(float *out, const float *x, const float *w, const float *state, int64_t T,
                               int64_t Cc, int64_t K)
{
    Q3N_REQUIRE(T >= 0 && Cc > 0 && K > 0);
    Q3N_REQUIRE(out != x);
    struct conv_job jb = {.out = out, .x = x, .w = w, .state = state, .Cc = Cc, .K = K};
    cpu_parallel_for(T, 2.0 * (double)T * (double)Cc * (double)K, conv_rows, &jb);
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
