/* linear.c — nn.Linear, the residual add and the scalar activations. */
#include "ops.h"
#include "real.h"

/* out[t,n] = sum_k x[t,k] W[n,k] (+ bias[n])   out [T,N], x [T,Kin], W [N,Kin] (nn.Linear,
 * F.linear). The sum runs over k in index order in ref_real; torch's BLAS sums in blocks, so
 * float results differ from transformers by rounding only (~sqrt(Kin) ulp). Bias added last. */
void ref_linear_forward(ref_real *out, const ref_real *x, const float *W, const float *bias, int64_t T, int64_t N,
                        int64_t Kin)
{
    Q3N_REQUIRE(T >= 0 && N > 0 && Kin > 0);
    Q3N_REQUIRE(out != x);
    for (int64_t t = 0; t < T; t++) {
        const ref_real *xt = x + t * Kin;
        for (int64_t n = 0; n < N; n++) {
            const float *wn = W + n * Kin;
            ref_real acc = 0;
            for (int64_t k = 0; k < Kin; k++) acc += xt[k] * (ref_real)wn[k];
            if (bias) acc += (ref_real)bias[n];
            out[t * N + n] = acc;
        }
    }
}

/* x[i] += y[i] over n elements (the decoder's residual adds). */
void ref_add_inplace(ref_real *x, const ref_real *y, int64_t n)
{
    Q3N_REQUIRE(n >= 0);
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

/* silu(x) = x * sigmoid(x) = x / (1 + exp(-x))  (torch's SiLU computes x / (1 + exp(-x))). */
ref_real ref_silu(ref_real x)
{
    return x / ((ref_real)1 + ref_exp(-x));
}

/* sigmoid(x) = 1 / (1 + exp(-x)). */
ref_real ref_sigmoid(ref_real x)
{
    return (ref_real)1 / ((ref_real)1 + ref_exp(-x));
}

/* softplus(x) = log1p(exp(x)), with torch's default threshold: x itself when x > 20
 * (F.softplus(beta=1, threshold=20)). */
ref_real ref_softplus(ref_real x)
{
    if (x > (ref_real)20) return x;
    return ref_log1p(ref_exp(x));
}
