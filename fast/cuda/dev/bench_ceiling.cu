/* bench_ceiling.cu — how fast could any port run a real-4l prefill on this GPU? A ceiling built from
 * what this card measurably does, not from its datasheet.
 *
 * The issue's 1M tok/s target at T = 16384 was set against the block-by-block roofline at the H100
 * datasheet's 989 TFLOP/s (11.57 ms), where the prefill is 98 % compute-bound. No kernel runs at the
 * datasheet rate, so this program asks the question again with measured rates:
 *
 *   1. cuBLAS's rate on one large square bf16 product (S x S x S, float32 accumulation): the fastest
 *      this card multiplies matrices, called P below.
 *   2. Every dense product of one prefill of T tokens (config from the preset), each timed alone
 *      through cuda_linear_forward (the production call: cuBLAS, CUBLAS_COMPUTE_32F, bf16 in and
 *      out) at its own shape, times the number of layers that run it.
 *   3. The routed experts as if all T*K rows of a layer went to one expert: one dense product of
 *      (T*K) x D -> 2I (gate_up) and one of (T*K) x I -> D (down). A grouped GEMM does the same FLOPs
 *      with 512 weight matrices and gathered rows; cuBLAS on one matrix is what it could hope to match.
 *      Where streaming the experts' weights (each expert a layer hits read once) takes longer than
 *      those products, as at T = 4096, the stream's time at the copy rate stands in for them.
 *   4. The FLOPs left (the causal attention's scores and values, the delta rule's state products, the
 *      last row's lm_head: the roofline's count, harness/roofline.c) at P, and the bytes the roofline
 *      says the lm_head and embedding must move at this card's measured copy rate.
 *
 * ceiling = 2 + 3 + 4, with every other kernel (norms, conv, gates, routing, permutation, combine,
 * the delta rule's chunk bookkeeping) free and no gaps between kernels. No port can be faster than
 * this on this card unless it multiplies faster than cuBLAS does; a real one is slower by at least
 * those other kernels.
 *
 * --delta-layer-ms MS adds a second ceiling with the delta rule's state FLOPs at P replaced by MS a
 * linear layer: the time of a delta-rule kernel that exists (run_all.sh's ceiling stage passes the
 * issue's figure for FlashInfer's Hopper kernel at T = 16384, 0.47 ms, the fastest one it names).
 *
 *   bench_ceiling [--preset real-4l] [--T 16384,4096] [--square 8192] [--reps 20] [--delta-layer-ms MS]
 * Each time is the best of reps launches (CUDA events around each one) after 3 warm-up launches;
 * the median is printed beside it. Inputs are hashed values in [-1, 1) (not zeros: the tensor cores
 * draw more power, and clock lower, on real data). */
#include "devkit.cuh"

extern "C" {
#include "../../../harness/roofline.h"
#include "../../../harness/synth.h"
}

/* n bf16 values in [-1, 1) on the device (devkit's splitmix fill), for one operand. */
static void *dev_hashed(int64_t n, uint64_t seed)
{
    void *p = nullptr;
    CK(cudaMalloc(&p, 2 * (size_t)n));
    fill_bf16_hashed<<<1024, 256, 0, g_stream>>>((__nv_bfloat16 *)p, n, 1.0f, seed);
    CK(cudaGetLastError());
    return p;
}

/* out [rows, N] = x [rows, K] W [N, K]^T in bf16 through the production call, timed. */
static event_times time_product(int64_t rows, int64_t N, int64_t K, int reps)
{
    void *x = dev_hashed(rows * K, 1), *W = dev_hashed(N * K, 2), *out = nullptr;
    CK(cudaMalloc(&out, 2 * (size_t)(rows * N)));
    const event_times t = time_events(
        [&] { RUN(cuda_linear_forward(out, x, W, NULL, rows, N, K, Q3N_COMPUTE_BF16, g_blas, g_stream, &g_err)); },
        reps, 3);
    CK(cudaFree(x));
    CK(cudaFree(W));
    CK(cudaFree(out));
    return t;
}

/* One kind of product in the prefill: `count` launches of rows x K -> N. */
struct product {
    const char *name;
    int64_t rows, N, K;
    int count;
};

static double tflops(double flops, double ms) { return flops / (ms * 1e-3) / 1e12; }

/* Every dense product of one prefill of T tokens, routed experts as one matrix each (see the top). */
static std::vector<product> prefill_products(const struct q3n_config *c, int64_t T)
{
    const int64_t D = c->hidden_size, NV = c->linear_num_value_heads, DV = c->linear_value_head_dim;
    const int64_t NH = c->num_attention_heads, NKV = c->num_key_value_heads, HD = c->head_dim;
    int lin = 0, full = 0, sparse = 0, dense = 0;
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        if (c->layer_type[l] == Q3N_LAYER_FULL_ATTENTION) full++;
        else lin++;
        if (c->layer_is_sparse[l]) sparse++;
        else dense++;
    }
    std::vector<product> p = {
        {"linear_attn.in_proj_qkvz", T, q3n_config_qkvz_dim(c), D, lin},
        {"linear_attn.in_proj_ba", T, 2 * NV, D, lin},
        {"linear_attn.out_proj", T, D, NV * DV, lin},
        {"self_attn.q_proj (q and gate)", T, 2 * NH * HD, D, full},
        {"self_attn.k_proj, v_proj", T, NKV * HD, D, 2 * full},
        {"self_attn.o_proj", T, D, NH * HD, full},
        {"mlp.gate_up_proj (dense layers)", T, 2 * c->intermediate_size, D, dense},
        {"mlp.down_proj (dense layers)", T, D, c->intermediate_size, dense},
        {"mlp.gate (router)", T, c->num_experts, D, sparse},
        {"mlp.shared_expert gate_up", T, 2 * c->shared_expert_intermediate_size, D, sparse},
        {"mlp.shared_expert down", T, D, c->shared_expert_intermediate_size, sparse},
        {"mlp.shared_expert_gate", T, 1, D, sparse},
        {"mlp.experts gate_up as one matrix", T * c->num_experts_per_tok, 2 * c->moe_intermediate_size, D, sparse},
        {"mlp.experts down as one matrix", T * c->num_experts_per_tok, D, c->moe_intermediate_size, sparse},
    };
    p.erase(std::remove_if(p.begin(), p.end(), [](const product &q) { return q.count == 0 || q.N == 0; }), p.end());
    return p;
}

/* Read + write bytes per second of one large device-to-device copy: this card's streaming rate. */
static double copy_rate(int reps)
{
    const size_t bytes = (size_t)1 << 30;
    void *a = nullptr, *b = nullptr;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMemsetAsync(a, 1, bytes, g_stream));
    const event_times t = time_events([&] { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, g_stream)); }, reps, 3);
    CK(cudaFree(a));
    CK(cudaFree(b));
    return 2.0 * (double)bytes / (t.best_ms * 1e-3);
}

static void ceiling_at(const struct q3n_config *c, int64_t T, double P, double bw, double delta_layer_ms, int reps)
{
    printf("\nprefill T=%lld\n", (long long)T);
    printf("  %-36s %9s %6s %6s %5s %9s %9s %8s\n", "product", "rows", "K", "N", "count", "best ms", "median", "TFLOP/s");
    double products_ms = 0, products_flops = 0, experts_ms = 0;
    for (const product &q : prefill_products(c, T)) {
        const event_times t = time_product(q.rows, q.N, q.K, reps);
        const double f = 2.0 * (double)q.rows * (double)q.N * (double)q.K;
        printf("  %-36s %9lld %6lld %6lld %5d %9.4f %9.4f %8.1f\n", q.name, (long long)q.rows, (long long)q.K,
               (long long)q.N, q.count, t.best_ms, t.median_ms, tflops(f, t.best_ms));
        products_ms += q.count * t.best_ms;
        products_flops += q.count * f;
        if (strstr(q.name, "experts")) experts_ms += q.count * t.best_ms;
    }
    /* Where the routed experts' weights take longer to stream than the products take (T = 4096: ~80
     * rows per expert), the weights set the experts' time: every expert a layer hits read once, as the
     * roofline counts them, at the copy rate. One matrix does not read 512 matrices' weights. */
    const double E = (double)c->num_experts, K = (double)c->num_experts_per_tok;
    const double hit = E > 0 ? E * (1.0 - pow(1.0 - K / E, (double)T)) : 0.0;
    int sparse = 0;
    for (int64_t l = 0; l < c->num_hidden_layers; l++) sparse += c->layer_is_sparse[l] ? 1 : 0;
    const double stream_ms = sparse * hit * 3.0 * (double)c->moe_intermediate_size * c->hidden_size * 2.0 / bw * 1e3;
    if (stream_ms > experts_ms) {
        printf("  the routed experts' weights (%.0f experts a layer, %.2f GB in all) stream in %.3f ms at the copy rate: "
               "that, not %.3f ms of products, is their time\n",
               hit, sparse * hit * 3.0 * (double)c->moe_intermediate_size * c->hidden_size * 2.0 / 1e9, stream_ms,
               experts_ms);
        products_ms += stream_ms - experts_ms;
        experts_ms = stream_ms;
    }
    /* the roofline's own count of the forward's FLOPs; what the products above do not cover is the
     * attention core, the delta rule's state products and the last row's lm_head */
    struct q3n_roofline r;
    q3n_roofline_prefill(c, T, 2.0, bw, P, &r);
    const double rest_flops = r.flops - products_flops;
    const double rest_ms = rest_flops / P * 1e3;
    const double bytes_ms = ((double)c->vocab_size * c->hidden_size + (double)T * c->hidden_size) * 2.0 / bw * 1e3;
    const double ceiling = products_ms + rest_ms + bytes_ms;
    struct q3n_roofline sheet;
    q3n_roofline_prefill(c, T, 2.0, 3.35e12, 989e12, &sheet);
    printf("  dense products at cuBLAS's rate: %.3f ms (%.2f TFLOP, %.0f TFLOP/s; the routed experts: %.3f ms)\n", products_ms, products_flops / 1e12, tflops(products_flops, products_ms), experts_ms);
    /* the two big parts of those, as harness/roofline.c counts them: the causal scores and values
     * (2 NH HD T(T+1)/2 multiply-adds a full layer), the delta rule's state products (3 NV DK DV a
     * token and linear layer: the recurrent form's minimum; a chunked kernel does more) */
    int full = 0, lin = 0;
    for (int64_t l = 0; l < c->num_hidden_layers; l++) (c->layer_type[l] == Q3N_LAYER_FULL_ATTENTION ? full : lin)++;
    const double attn_flops = full * 2.0 * 2.0 * c->num_attention_heads * c->head_dim * (double)T * (T + 1) / 2;
    const double delta_flops = lin * 2.0 * 3.0 * c->linear_num_value_heads * c->linear_key_head_dim *
                               c->linear_value_head_dim * (double)T;
    printf("  the other FLOPs at P: %.3f TFLOP, %.3f ms (attention scores and values %.3f TFLOP = %.3f ms; delta-rule "
           "state %.3f TFLOP = %.3f ms; the rest %.4f TFLOP)\n",
           rest_flops / 1e12, rest_ms, attn_flops / 1e12, attn_flops / P * 1e3, delta_flops / 1e12,
           delta_flops / P * 1e3, (rest_flops - attn_flops - delta_flops) / 1e12);
    printf("  lm_head weights and embedding rows at the copy rate: %.3f ms\n", bytes_ms);
    printf("  block-by-block roofline: %.3f ms at the datasheet's rates, %.3f ms at P and the copy rate\n",
           sheet.serial_seconds * 1e3, r.serial_seconds * 1e3);
    printf("CEILING T=%lld: %.3f ms = %.0f tok/s (every other kernel free, no gaps); 1M tok/s needs %.3f ms: %s\n",
           (long long)T, ceiling, (double)T / (ceiling * 1e-3), (double)T / 1e6 * 1e3,
           ceiling * 1e-3 < (double)T / 1e6
               ? "reachable only if everything else fits in the difference"
               : "out of reach on this card");
    if (delta_layer_ms > 0 && lin > 0) {
        /* the delta rule as a kernel that exists runs it, in place of its FLOPs at P */
        const double with = ceiling - delta_flops / P * 1e3 + lin * delta_layer_ms;
        printf("CEILING T=%lld with the delta rule at %.3f ms a layer: %.3f ms = %.0f tok/s (everything else as above): %s\n",
               (long long)T, delta_layer_ms, with, (double)T / (with * 1e-3),
               with * 1e-3 < (double)T / 1e6 ? "1M tok/s reachable only if everything else fits in the difference"
                                             : "1M tok/s out of reach on this card");
    }
}

int main(int argc, char **argv)
{
    const char *preset = "real-4l", *Ts = "16384,4096";
    int64_t S = 8192;
    int reps = 20;
    double delta_ms = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--preset") && i + 1 < argc) preset = argv[++i];
        else if (!strcmp(argv[i], "--T") && i + 1 < argc) Ts = argv[++i];
        else if (!strcmp(argv[i], "--square") && i + 1 < argc) S = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--delta-layer-ms") && i + 1 < argc) delta_ms = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_ceiling [--preset real-4l] [--T 16384,4096] [--square 8192] [--reps 20] "
                            "[--delta-layer-ms MS]\n");
            return 2;
        }
    }
    if (reps < 1 || S < 256 || delta_ms < 0) {
        fprintf(stderr, "bench_ceiling: --reps must be >= 1, --square >= 256, --delta-layer-ms >= 0\n");
        return 2;
    }
    struct q3n_config cfg;
    struct q3n_error err = {};
    if (q3n_synth_config(&cfg, preset, &err) != Q3N_OK) {
        fprintf(stderr, "bench_ceiling: %s\n", err.msg);
        return 2;
    }
    CK(cudaStreamCreate(&g_stream));
    if (cublasCreate(&g_blas) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "bench_ceiling: cublasCreate failed\n");
        return 2;
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("bench_ceiling: %s, %d SMs; preset %s\n", prop.name, prop.multiProcessorCount, preset);
    const event_times sq = time_product(S, S, S, reps);
    const double P = 2.0 * (double)S * S * S / (sq.best_ms * 1e-3);
    const double bw = copy_rate(reps);
    printf("P: cuBLAS bf16 %lld^3 best %.3f ms (median %.3f) = %.1f TFLOP/s (%.0f %% of the datasheet's 989)\n",
           (long long)S, sq.best_ms, sq.median_ms, P / 1e12, 100.0 * P / 989e12);
    printf("copy rate: %.0f GB/s read + write (%.0f %% of the datasheet's 3350)\n", bw / 1e9, 100.0 * bw / 3.35e12);
    for (const char *t = Ts; *t;) {
        const int64_t T = atoll(t);
        if (T < 1) {
            fprintf(stderr, "bench_ceiling: bad --T list '%s'\n", Ts);
            return 2;
        }
        ceiling_at(&cfg, T, P, bw, delta_ms, reps);
        t = strchr(t, ',');
        if (!t) break;
        t++;
    }
    cublasDestroy(g_blas);
    CK(cudaStreamDestroy(g_stream));
    return 0;
}
