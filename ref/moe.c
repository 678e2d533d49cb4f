/* moe.c — sparse MoE: router softmax, top-k, SwiGLU MLP, routed experts, shared-expert gate. */
#include "ops.h"
#include "real.h"

/* Softmax over rows of width E: out = exp(x - max) * (1 / sum exp(x - max)). out,logits [rows,E]
 * (router probabilities: softmax(router_logits, dtype=float32) in Qwen3NextTopKRouter). */
void ref_softmax_forward(ref_real *out, const ref_real *logits, int64_t rows, int64_t E)
{
    Q3N_REQUIRE(rows >= 0 && E > 0);
    for (int64_t r = 0; r < rows; r++) {
        const ref_real *x = logits + r * E;
        ref_real *y = out + r * E;
        ref_real mx = x[0];
        for (int64_t e = 1; e < E; e++)
            if (x[e] > mx) mx = x[e];
        ref_real sum = 0;
        for (int64_t e = 0; e < E; e++) {
            y[e] = ref_exp(x[e] - mx);
            sum += y[e];
        }
        ref_real inv = (ref_real)1 / sum;
        for (int64_t e = 0; e < E; e++) y[e] *= inv;
    }
}

/* Top-k of probs [T,E], descending; weight = the chosen probs, divided by their sum (taken in
 * top-k order) when norm_topk_prob. idx,weight [T,K]. Exact ties go to the lower expert index
 * first: deterministic, but NOT torch.topk's CPU order, which is unspecified for ties (a partial
 * sort); random float weights make exact ties vanishingly rare, near-ties are real and handled
 * by the comparison policy, not here. */
void ref_topk_forward(int64_t *idx, ref_real *weight, const ref_real *probs, int64_t T, int64_t E, int64_t K,
                      int norm_topk_prob)
{
    Q3N_REQUIRE(T >= 0 && E > 0 && K > 0 && K <= E);
    for (int64_t t = 0; t < T; t++) {
        const ref_real *p = probs + t * E;
        int64_t *it = idx + t * K;
        ref_real *wt = weight + t * K;
        for (int64_t j = 0; j < K; j++) {
            int64_t best = -1;
            for (int64_t e = 0; e < E; e++) {
                int taken = 0;
                for (int64_t m = 0; m < j; m++)
                    if (it[m] == e) taken = 1;
                if (taken) continue;
                if (best < 0 || p[e] > p[best]) best = e; /* strict >: first (lowest) index wins ties */
            }
            it[j] = best;
            wt[j] = p[best];
        }
        if (norm_topk_prob) {
            ref_real sum = 0;
            for (int64_t j = 0; j < K; j++) sum += wt[j];
            for (int64_t j = 0; j < K; j++) wt[j] = wt[j] / sum;
        }
    }
}

/* SwiGLU MLP: out = down(silu(gate(x)) * up(x)).  out,x [T,D]; gate,up [W,D], down [D,W];
 * scratch [T,2W]. Qwen3NextMLP (dense layers and the shared expert). */
void ref_mlp_forward(ref_real *out, const ref_real *x, const struct q3n_mlp_weights *w, ref_real *scratch, int64_t T,
                     int64_t D, int64_t W)
{
    Q3N_REQUIRE(T >= 0 && D > 0 && W > 0);
    ref_real *gt = scratch, *up = scratch + T * W;
    ref_linear_forward(gt, x, w->gate_proj, NULL, T, W, D);
    ref_linear_forward(up, x, w->up_proj, NULL, T, W, D);
    for (int64_t i = 0; i < T * W; i++) gt[i] = ref_silu(gt[i]) * up[i];
    ref_linear_forward(out, gt, w->down_proj, NULL, T, D, W);
}

/* Routed experts: out[t] = sum_j weight[t,j] * expert_{idx[t,j]}(x[t]), expert = SwiGLU of width
 * I. out,x [T,D]; idx,weight [T,K]; scratch [2I + D]. Mirrors the eager Qwen3NextExperts: each
 * expert's output is scaled by its weight, then added into a zeroed output in ascending expert
 * index (the order of its loop over hit experts), not in top-k order. */
void ref_moe_experts_forward(ref_real *out, const ref_real *x, const int64_t *idx, const ref_real *weight,
                             const struct q3n_mlp_weights *experts, ref_real *scratch, int64_t T, int64_t D,
                             int64_t I, int64_t K)
{
    Q3N_REQUIRE(T >= 0 && D > 0 && I > 0 && K > 0);
    ref_real *y = scratch + 2 * I;
    for (int64_t t = 0; t < T; t++) {
        ref_real *ot = out + t * D;
        for (int64_t d = 0; d < D; d++) ot[d] = 0;
        int64_t prev_e = -1, prev_j = -1;
        for (int64_t n = 0; n < K; n++) {
            /* next (expert, slot) pair in ascending order */
            int64_t pick = -1;
            for (int64_t j = 0; j < K; j++) {
                int64_t e = idx[t * K + j];
                int after = e > prev_e || (e == prev_e && j > prev_j);
                if (!after) continue;
                if (pick < 0 || e < idx[t * K + pick]) pick = j;
            }
            Q3N_REQUIRE(pick >= 0);
            prev_e = idx[t * K + pick];
            prev_j = pick;
            ref_mlp_forward(y, x + t * D, &experts[prev_e], scratch, 1, D, I);
            ref_real wj = weight[t * K + pick];
            for (int64_t d = 0; d < D; d++) ot[d] += y[d] * wj;
        }
    }
}

/* MoE block output: out = experts_out + sigmoid(shared_gate_logit) * shared_out, out [T,D],
 * shared_gate_logit [T,1] (Qwen3NextSparseMoeBlock); shared_out NULL (no shared expert): out =
 * experts_out. In-place with experts_out allowed. */
void ref_moe_combine_forward(ref_real *out, const ref_real *experts_out, const ref_real *shared_out,
                             const ref_real *shared_gate_logit, int64_t T, int64_t D)
{
    Q3N_REQUIRE(T >= 0 && D > 0);
    for (int64_t t = 0; t < T; t++) {
        ref_real s = shared_out ? ref_sigmoid(shared_gate_logit[t]) : (ref_real)0;
        for (int64_t d = 0; d < D; d++)
            out[t * D + d] = experts_out[t * D + d] + (shared_out ? s * shared_out[t * D + d] : (ref_real)0);
    }
}
