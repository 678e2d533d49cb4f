/* attention.c — gated full attention: q/gate split, partial RoPE, causal GQA softmax attention,
 * the sigmoid output gate. Shapes: q,gate,out [T,NH,HD]; k,v and caches [S,NKV,HD]. */
#include "ops.h"
#include "real.h"

/* q_proj output [T, NH*2*HD] -> query, gate [T,NH,HD]: per head the first HD values are the
 * query, the next HD the gate (view(T, NH, 2HD) then torch.chunk(2, -1)). Exact. */
void ref_attn_split_qgate(ref_real *q, ref_real *gate, const ref_real *qg, int64_t T, int64_t NH, int64_t HD)
{
    Q3N_REQUIRE(T >= 0 && NH > 0 && HD > 0);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < NH; h++)
            for (int64_t d = 0; d < HD; d++) {
                q[(t * NH + h) * HD + d] = qg[(t * NH + h) * 2 * HD + d];
                gate[(t * NH + h) * HD + d] = qg[(t * NH + h) * 2 * HD + HD + d];
            }
}

/* Partial RoPE in place on x [T,N,HD], rotate-half convention on the first rot dims:
 *   y_i = x_i cos_i - x_{i+rot/2} sin_i,  y_{i+rot/2} = x_{i+rot/2} cos_i + x_i sin_i  (i < rot/2)
 * angle_i = p * inv_freq_i, inv_freq_i = 1 / theta^(2i/rot), p = pos0 + t; dims >= rot pass.
 * Mirrors Qwen3NextRotaryEmbedding + apply_rotary_pos_emb: inv_freq, the angle, cos and sin are
 * each rounded to ref_real (float32 in transformers, then cast to the activation dtype), and
 * q*cos + rotate_half(q)*sin is summed in that order. */
void ref_rope_forward(ref_real *x, int64_t T, int64_t N, int64_t HD, int64_t rot, int64_t pos0, double theta)
{
    Q3N_REQUIRE(T >= 0 && N > 0 && HD > 0 && rot >= 0 && rot <= HD && rot % 2 == 0 && pos0 >= 0);
    int64_t half = rot / 2;
    for (int64_t t = 0; t < T; t++) {
        ref_real p = (ref_real)(pos0 + t);
        for (int64_t i = 0; i < half; i++) {
            ref_real expo = (ref_real)(2 * i) / (ref_real)rot;
            ref_real inv_freq = (ref_real)1 / ref_pow((ref_real)theta, expo);
            ref_real ang = inv_freq * p;
            ref_real c = ref_cos(ang), s = ref_sin(ang);
            for (int64_t n = 0; n < N; n++) {
                ref_real *xr = x + (t * N + n) * HD;
                ref_real x1 = xr[i], x2 = xr[i + half];
                xr[i] = x1 * c + (-x2) * s;
                xr[i + half] = x2 * c + x1 * s;
            }
        }
    }
}

/* Causal GQA softmax attention of T new queries (positions pos0 .. pos0+T-1) over the cache of
 * S = pos0 + T keys: query head h uses KV head h / (NH/NKV),
 *   out[t,h,:] = sum_{s <= pos0+t} softmax_s(q.k_s * HD^-0.5) v_s
 * out,q [T,NH,HD]; kc,vc [S,NKV,HD]; scratch [S]. Mirrors eager_attention_forward: the dot
 * product is scaled after the sum, softmax in float32 (max-subtracted, exp, sum, times 1/sum). */
void ref_attention_forward(ref_real *out, const ref_real *q, const ref_real *kc, const ref_real *vc,
                           ref_real *scratch, int64_t T, int64_t pos0, int64_t NH, int64_t NKV, int64_t HD)
{
    Q3N_REQUIRE(T >= 0 && pos0 >= 0 && NH > 0 && NKV > 0 && NH % NKV == 0 && HD > 0);
    int64_t groups = NH / NKV;
    ref_real scale = (ref_real)pow((double)HD, -0.5);
    for (int64_t t = 0; t < T; t++) {
        int64_t n = pos0 + t + 1; /* keys visible to this query */
        for (int64_t h = 0; h < NH; h++) {
            const ref_real *qh = q + (t * NH + h) * HD;
            int64_t kvh = h / groups;
            ref_real mx = 0;
            for (int64_t s = 0; s < n; s++) {
                const ref_real *ks = kc + (s * NKV + kvh) * HD;
                ref_real dot = 0;
                for (int64_t d = 0; d < HD; d++) dot += qh[d] * ks[d];
                scratch[s] = dot * scale;
                if (s == 0 || scratch[s] > mx) mx = scratch[s];
            }
            ref_real sum = 0;
            for (int64_t s = 0; s < n; s++) {
                scratch[s] = ref_exp(scratch[s] - mx);
                sum += scratch[s];
            }
            ref_real inv = (ref_real)1 / sum;
            for (int64_t s = 0; s < n; s++) scratch[s] *= inv;
            ref_real *oh = out + (t * NH + h) * HD;
            for (int64_t d = 0; d < HD; d++) {
                ref_real acc = 0;
                for (int64_t s = 0; s < n; s++) acc += scratch[s] * vc[(s * NKV + kvh) * HD + d];
                oh[d] = acc;
            }
        }
    }
}

/* out = x * sigmoid(gate), n elements (attn_output * torch.sigmoid(gate)). In-place allowed. */
void ref_sigmoid_gate_forward(ref_real *out, const ref_real *x, const ref_real *gate, int64_t n)
{
    Q3N_REQUIRE(n >= 0);
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * ref_sigmoid(gate[i]);
}
