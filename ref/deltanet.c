/* deltanet.c — Gated DeltaNet: projection split, gates, and the gated delta rule in three
 * forms (recurrent, chunked, naive). Shapes: q,k [T,NK,DK]; v,z,o [T,NV,DV]; g,beta,a,b [T,NV];
 * state [NV,DK,DV]. Value head h reads key head h / (NV/NK) (repeat_interleave). */
#include "ops.h"
#include "real.h"
#include "testbug.h"

/* Head-grouped split of in_proj_qkvz [T, NK*(2DK + 2rDV)] and in_proj_ba [T, NK*2r], r = NV/NK,
 * into q,k [T,NK,DK], v,z [T,NV,DV], b,a [T,NV]. Group j of qkvz holds q_j, k_j, then v and z of
 * value heads j*r .. j*r+r-1; group j of ba holds b then a of the same value heads
 * (fix_query_key_value_ordering). Exact: copies. */
void ref_deltanet_split_forward(ref_real *q, ref_real *k, ref_real *v, ref_real *z, ref_real *b, ref_real *a,
                                const ref_real *qkvz, const ref_real *ba, int64_t T, int64_t NK, int64_t NV,
                                int64_t DK, int64_t DV)
{
    Q3N_REQUIRE(T >= 0 && NK > 0 && NV >= NK && NV % NK == 0 && DK > 0 && DV > 0);
    int64_t r = NV / NK, group = 2 * DK + 2 * r * DV, width = NK * group;
    for (int64_t t = 0; t < T; t++) {
        for (int64_t j = 0; j < NK; j++) {
            const ref_real *src = qkvz + t * width + j * group;
            for (int64_t d = 0; d < DK; d++) q[(t * NK + j) * DK + d] = src[d];
            for (int64_t d = 0; d < DK; d++) k[(t * NK + j) * DK + d] = src[DK + d];
            for (int64_t i = 0; i < r * DV; i++) v[(t * NV + j * r) * DV + i] = src[2 * DK + i];
            for (int64_t i = 0; i < r * DV; i++) z[(t * NV + j * r) * DV + i] = src[2 * DK + r * DV + i];
            const ref_real *sba = ba + t * 2 * NV + j * 2 * r;
            for (int64_t i = 0; i < r; i++) b[t * NV + j * r + i] = sba[i];
            for (int64_t i = 0; i < r; i++) a[t * NV + j * r + i] = sba[r + i];
        }
    }
}

/* mixed [T,Cc] = concat(q, k, v) over channels, Cc = 2*NK*DK + NV*DV: the conv input
 * (torch.cat((query, key, value), -1) after flattening heads). Exact. */
void ref_deltanet_conv_concat(ref_real *mixed, const ref_real *q, const ref_real *k, const ref_real *v, int64_t T,
                              int64_t NK, int64_t NV, int64_t DK, int64_t DV)
{
    Q3N_REQUIRE(T >= 0 && NK > 0 && NV > 0 && DK > 0 && DV > 0);
    int64_t kd = NK * DK, vd = NV * DV, cc = 2 * kd + vd;
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < kd; i++) mixed[t * cc + i] = q[t * kd + i];
        for (int64_t i = 0; i < kd; i++) mixed[t * cc + kd + i] = k[t * kd + i];
        for (int64_t i = 0; i < vd; i++) mixed[t * cc + 2 * kd + i] = v[t * vd + i];
    }
}

/* The inverse of ref_deltanet_conv_concat: conv output [T,Cc] -> q,k [T,NK,DK], v [T,NV,DV]
 * (torch.split(mixed_qkv, [key_dim, key_dim, value_dim])). Exact. */
void ref_deltanet_conv_split(ref_real *q, ref_real *k, ref_real *v, const ref_real *mixed, int64_t T, int64_t NK,
                             int64_t NV, int64_t DK, int64_t DV)
{
    Q3N_REQUIRE(T >= 0 && NK > 0 && NV > 0 && DK > 0 && DV > 0);
    int64_t kd = NK * DK, vd = NV * DV, cc = 2 * kd + vd;
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < kd; i++) q[t * kd + i] = mixed[t * cc + i];
        for (int64_t i = 0; i < kd; i++) k[t * kd + i] = mixed[t * cc + kd + i];
        for (int64_t i = 0; i < vd; i++) v[t * vd + i] = mixed[t * cc + 2 * kd + i];
    }
}

/* beta = sigmoid(b);  g = (-exp(A_log)) * softplus(a + dt_bias)   g,beta,a,b [T,NV]; A_log,
 * dt_bias [NV]. Float32 in transformers (A_log.float().exp(), a.float() + dt_bias); softplus
 * with torch's threshold 20. g <= 0 is the per-step log-decay. */
void ref_deltanet_gates_forward(ref_real *g, ref_real *beta, const ref_real *a, const ref_real *b,
                                const float *A_log, const float *dt_bias, int64_t T, int64_t NV)
{
    Q3N_REQUIRE(T >= 0 && NV > 0);
    for (int64_t t = 0; t < T; t++) {
        for (int64_t h = 0; h < NV; h++) {
            int64_t i = t * NV + h;
            beta[i] = ref_sigmoid(b[i]);
            g[i] = -ref_exp((ref_real)A_log[h]) * ref_softplus(a[i] + (ref_real)dt_bias[h]);
        }
    }
}

/* q *= DK^-0.5 (chunked path: `query * scaling`) or q /= sqrt(DK) (recurrent path:
 * `query / DK**0.5`), n elements, after the L2 norm. The two transformers paths round the scale
 * differently; mirroring each keeps q bit-identical to the path that runs. */
void ref_deltanet_q_scale(ref_real *q, int64_t n, int64_t DK, int recurrent)
{
    Q3N_REQUIRE(n >= 0 && DK > 0);
    if (recurrent) {
        ref_real s = (ref_real)sqrt((double)DK);
        for (int64_t i = 0; i < n; i++) q[i] = q[i] / s;
    } else {
        ref_real s = (ref_real)pow((double)DK, -0.5);
        for (int64_t i = 0; i < n; i++) q[i] = q[i] * s;
    }
}

/* Recurrent gated delta rule, per value head h (key head h/r), per token t in order:
 *   S <- exp(g_t) S;  u = beta_t (v_t - S^T k_t);  S <- S + k_t u^T;  o_t = S^T q_t
 * S [DK,DV] starts from state (in/out). Mirrors torch_recurrent_gated_delta_rule (float32;
 * S^T k and S^T q summed over DK in index order). */
void ref_delta_rule_recurrent(ref_real *o, ref_real *state, const ref_real *q, const ref_real *k, const ref_real *v,
                              const ref_real *g, const ref_real *beta, int64_t T, int64_t NK, int64_t NV,
                              int64_t DK, int64_t DV)
{
    Q3N_REQUIRE(T >= 0 && NK > 0 && NV >= NK && NV % NK == 0 && DK > 0 && DV > 0);
    int64_t r = NV / NK;
    for (int64_t h = 0; h < NV; h++) {
        ref_real *S = state + h * DK * DV;
        for (int64_t t = 0; t < T; t++) {
            const ref_real *qt = q + (t * NK + h / r) * DK, *kt = k + (t * NK + h / r) * DK;
            const ref_real *vt = v + (t * NV + h) * DV;
            ref_real *ot = o + (t * NV + h) * DV;
            ref_real decay = ref_exp(g[t * NV + h]), bt = beta[t * NV + h];
            for (int64_t i = 0; i < DK * DV; i++) S[i] *= decay;
            for (int64_t e = 0; e < DV; e++) {
                ref_real mem = 0;
                for (int64_t d = 0; d < DK; d++) mem += S[d * DV + e] * kt[d];
                ref_real u = (vt[e] - mem) * bt;
                for (int64_t d = 0; d < DK; d++) S[d * DV + e] += kt[d] * u;
            }
            for (int64_t e = 0; e < DV; e++) {
                ref_real acc = 0;
                for (int64_t d = 0; d < DK; d++) acc += S[d * DV + e] * qt[d];
                ot[e] = acc;
            }
        }
    }
}

int64_t ref_delta_rule_chunked_scratch(int64_t C, int64_t DK, int64_t DV)
{
    return 3 * C + 2 * C * C + 2 * C * DV + C * DK;
}

/* One chunk-form pass; drop_last (test_bug "chunk_off_by_one") leaves each chunk's last token
 * out of the state update. */
static void chunked_impl(ref_real *o, ref_real *state, const ref_real *q, const ref_real *k, const ref_real *v,
                         const ref_real *g, const ref_real *beta, ref_real *scratch, int64_t T, int64_t NK,
                         int64_t NV, int64_t DK, int64_t DV, int64_t C, int drop_last)
{
    Q3N_REQUIRE(T >= 0 && NK > 0 && NV >= NK && NV % NK == 0 && DK > 0 && DV > 0 && C > 0);
    int64_t r = NV / NK;
    ref_real *G = scratch;          /* [C]   cumulative log-decay in the chunk */
    ref_real *L = G + C;            /* [C,C] (beta K K^T o D), strictly lower used */
    ref_real *A = L + C * C;        /* [C,C] (Q K^T o D), lower incl. diagonal */
    ref_real *U = A + C * C;        /* [C,DV] new values */
    ref_real *W = U + C * DV;       /* [C,DK] k_cumdecay */
    ref_real *VN = W + C * DK;      /* [C,DV] v_new */
    ref_real *EG = VN + C * DV;     /* [C] exp(G_i) */
    ref_real *KD = EG + C;          /* [C] exp(G_last - G_i) */
    for (int64_t h = 0; h < NV; h++) {
        ref_real *S = state + h * DK * DV;
        int64_t kh = h / r;
        for (int64_t s0 = 0; s0 < T; s0 += C) {
            int64_t n = T - s0 < C ? T - s0 : C; /* real rows; padded rows are exact zeros */
#define QR(i) (q + ((s0 + (i)) * NK + kh) * DK)
#define KR(i) (k + ((s0 + (i)) * NK + kh) * DK)
#define VR(i) (v + ((s0 + (i)) * NV + h) * DV)
#define GB(i) ((s0 + (i)) * NV + h)
            ref_real acc = 0;
            for (int64_t i = 0; i < n; i++) {
                acc += g[GB(i)];
                G[i] = acc;
            }
            for (int64_t i = 0; i < n; i++) {
                EG[i] = ref_exp(G[i]);
                KD[i] = ref_exp(G[n - 1] - G[i]);
            }
            for (int64_t i = 0; i < n; i++) {
                ref_real bi = beta[GB(i)];
                for (int64_t j = 0; j <= i; j++) {
                    ref_real dec = ref_exp(G[i] - G[j]);
                    ref_real kk = 0, qk = 0;
                    for (int64_t d = 0; d < DK; d++) kk += (KR(i)[d] * bi) * KR(j)[d];
                    for (int64_t d = 0; d < DK; d++) qk += QR(i)[d] * KR(j)[d];
                    L[i * C + j] = kk * dec;
                    A[i * C + j] = qk * dec;
                }
            }
            /* Unit lower-triangular solves (torch.linalg.solve_triangular, unitriangular):
             * U = L^-1 (beta V),  W = L^-1 (beta K exp(G)), by forward substitution. */
            for (int64_t i = 0; i < n; i++) {
                ref_real bi = beta[GB(i)], eg = EG[i];
                for (int64_t e = 0; e < DV; e++) {
                    ref_real x = VR(i)[e] * bi;
                    for (int64_t j = 0; j < i; j++) x -= L[i * C + j] * U[j * DV + e];
                    U[i * DV + e] = x;
                }
                for (int64_t d = 0; d < DK; d++) {
                    ref_real x = (KR(i)[d] * bi) * eg;
                    for (int64_t j = 0; j < i; j++) x -= L[i * C + j] * W[j * DK + d];
                    W[i * DK + d] = x;
                }
            }
            /* v_new = U - W S;  o = (Q exp(G)) S + A v_new */
            for (int64_t i = 0; i < n; i++) {
                for (int64_t e = 0; e < DV; e++) {
                    ref_real ws = 0;
                    for (int64_t d = 0; d < DK; d++) ws += W[i * DK + d] * S[d * DV + e];
                    VN[i * DV + e] = U[i * DV + e] - ws;
                }
            }
            for (int64_t i = 0; i < n; i++) {
                ref_real eg = EG[i];
                ref_real *oi = o + ((s0 + i) * NV + h) * DV;
                for (int64_t e = 0; e < DV; e++) {
                    ref_real inter = 0, intra = 0;
                    for (int64_t d = 0; d < DK; d++) inter += (QR(i)[d] * eg) * S[d * DV + e];
                    for (int64_t j = 0; j <= i; j++) intra += A[i * C + j] * VN[j * DV + e];
                    oi[e] = inter + intra;
                }
            }
            /* S <- exp(G_last) S + (K exp(G_last - G))^T v_new */
            ref_real cdec = ref_exp(G[n - 1]);
            int64_t n_upd = drop_last ? n - 1 : n;
            for (int64_t d = 0; d < DK; d++) {
                for (int64_t e = 0; e < DV; e++) {
                    ref_real upd = 0;
                    for (int64_t i = 0; i < n_upd; i++) upd += (KR(i)[d] * KD[i]) * VN[i * DV + e];
                    S[d * DV + e] = S[d * DV + e] * cdec + upd;
                }
            }
#undef QR
#undef KR
#undef VR
#undef GB
        }
    }
}

/* Chunked (UT/WY) gated delta rule with chunk C, as torch_chunk_gated_delta_rule. Per chunk of C
 * tokens (T padded with zero tokens, g = 0, to a multiple of C; padded rows contribute exact
 * zeros so only real rows are computed), G = cumsum(g) in the chunk, D_ij = exp(G_i - G_j), j<=i:
 *   L = I + strict_lower(beta K K^T o D);  U = L^-1 (beta V);  W = L^-1 (beta K o exp(G))
 *   v_new = U - W S;  O = (Q o exp(G)) S + lower(Q K^T o D) v_new;
 *   S <- exp(G_last) S + (K o exp(G_last - G))^T v_new
 * scratch: ref_delta_rule_chunked_scratch(C,DK,DV) elements. Quirk kept: G is a running sum
 * over the chunk, so exp(G_i - G_j) loses ~eps*|G| relative accuracy for long strong-decay chunks. */
void ref_delta_rule_chunked(ref_real *o, ref_real *state, const ref_real *q, const ref_real *k, const ref_real *v,
                            const ref_real *g, const ref_real *beta, ref_real *scratch, int64_t T, int64_t NK,
                            int64_t NV, int64_t DK, int64_t DV, int64_t C)
{
    chunked_impl(o, state, q, k, v, g, beta, scratch, T, NK, NV, DK, DV, C, 0);
}

/* The planted bug "chunk_off_by_one" (ref/testbug.h): the chunked form with each chunk's last
 * token missing from the state update. Never used unless run_options->test_bug asks. */
void ref_delta_rule_chunked_bug_drop_last(ref_real *o, ref_real *state, const ref_real *q, const ref_real *k,
                                          const ref_real *v, const ref_real *g, const ref_real *beta,
                                          ref_real *scratch, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                                          int64_t DV, int64_t C)
{
    chunked_impl(o, state, q, k, v, g, beta, scratch, T, NK, NV, DK, DV, C, 1);
}

int64_t ref_delta_rule_naive_scratch(int64_t T, int64_t DK, int64_t DV)
{
    (void)DK;
    return T * T + T * DV + T;
}

/* Naive closed form over the whole sequence, per value head: with decay(i,j) =
 * exp(g_{j+1} + ... + g_i) (summed backwards from i, not as a difference of prefix sums, so
 * it stays accurate for any T) and a_i = exp(g_0 + ... + g_i),
 *   u_i = beta_i (v_i - a_i S0^T k_i - sum_{j<i} decay(i,j) (k_i.k_j) u_j)   (forward subst.)
 *   o_i = a_i S0^T q_i + sum_{j<=i} decay(i,j) (q_i.k_j) u_j
 *   S_T = a_{T-1} S0 + sum_j decay(T-1,j) k_j u_j^T
 * A testing oracle for the other two forms (O(T^2) memory: scratch of
 * ref_delta_rule_naive_scratch(T,DK,DV) elements); T = 0 leaves the state unchanged. */
void ref_delta_rule_naive(ref_real *o, ref_real *state, const ref_real *q, const ref_real *k, const ref_real *v,
                          const ref_real *g, const ref_real *beta, ref_real *scratch, int64_t T, int64_t NK,
                          int64_t NV, int64_t DK, int64_t DV)
{
    Q3N_REQUIRE(T >= 0 && NK > 0 && NV >= NK && NV % NK == 0 && DK > 0 && DV > 0);
    if (T == 0) return;
    int64_t r = NV / NK;
    ref_real *Dm = scratch;       /* [T,T] decay(i,j), j <= i */
    ref_real *U = Dm + T * T;     /* [T,DV] */
    ref_real *a = U + T * DV;     /* [T] */
    for (int64_t h = 0; h < NV; h++) {
        ref_real *S = state + h * DK * DV;
        int64_t kh = h / r;
#define QN(i) (q + ((i) * NK + kh) * DK)
#define KN(i) (k + ((i) * NK + kh) * DK)
        ref_real cum = 0;
        for (int64_t i = 0; i < T; i++) {
            cum += g[i * NV + h];
            a[i] = ref_exp(cum);
            ref_real back = 0;
            for (int64_t j = i; j >= 0; j--) {
                Dm[i * T + j] = ref_exp(back);
                back += g[j * NV + h];
            }
        }
        for (int64_t i = 0; i < T; i++) {
            ref_real bi = beta[i * NV + h];
            for (int64_t e = 0; e < DV; e++) {
                ref_real s0k = 0;
                for (int64_t d = 0; d < DK; d++) s0k += S[d * DV + e] * KN(i)[d];
                U[i * DV + e] = v[(i * NV + h) * DV + e] - a[i] * s0k;
            }
            for (int64_t j = 0; j < i; j++) {
                ref_real kk = 0;
                for (int64_t d = 0; d < DK; d++) kk += KN(i)[d] * KN(j)[d];
                ref_real c = Dm[i * T + j] * kk;
                for (int64_t e = 0; e < DV; e++) U[i * DV + e] -= c * U[j * DV + e];
            }
            for (int64_t e = 0; e < DV; e++) U[i * DV + e] *= bi;
        }
        for (int64_t i = 0; i < T; i++) {
            ref_real *oi = o + (i * NV + h) * DV;
            for (int64_t e = 0; e < DV; e++) {
                ref_real s0q = 0;
                for (int64_t d = 0; d < DK; d++) s0q += S[d * DV + e] * QN(i)[d];
                oi[e] = a[i] * s0q;
            }
            for (int64_t j = 0; j <= i; j++) {
                ref_real qk = 0;
                for (int64_t d = 0; d < DK; d++) qk += QN(i)[d] * KN(j)[d];
                ref_real c = Dm[i * T + j] * qk;
                for (int64_t e = 0; e < DV; e++) oi[e] += c * U[j * DV + e];
            }
        }
        for (int64_t d = 0; d < DK; d++) {
            for (int64_t e = 0; e < DV; e++) {
                ref_real acc = a[T - 1] * S[d * DV + e];
                for (int64_t j = 0; j < T; j++) acc += (Dm[(T - 1) * T + j] * KN(j)[d]) * U[j * DV + e];
                S[d * DV + e] = acc;
            }
        }
#undef QN
#undef KN
    }
}
