/* model.cu — the CUDA session (harness/impl.h "cuda"): weights and caches on the device, the
 * Qwen3-Next forward as a list of cuda_ op launches on one stream, taps copied to the host only
 * when a sink is on.
 *
 * dtype f32: float32 weights and activations, cuBLAS in true FP32 (no TF32). dtype bf16: matrix
 * weights and activations in bfloat16 with float32 accumulation; norms, router softmax, the decay
 * g, beta, the delta rule (q, k, v, state) and the conv state stay float32. Prefill (T > 1 or
 * no previous state) runs the chunked delta rule, decode the recurrent step. A decode step
 * (T*K <= 64 MoE rows, taps off) launches every layer without waiting on the host; prefill waits
 * once per MoE layer for the per-expert row counts that size its GEMMs.
 *
 * Decode (one token after a prefill) reads its token id and position from the device (step_dev,
 * filled by one copy from pinned host memory), so the step is the same launch list at every
 * position: with taps off, no forced routing and no profile it is captured once per session as
 * a CUDA graph (embed .. final norm .. lm_head .. float32 logits) and replayed per token. The
 * eager T == 1 path runs the very same launches, so both give bitwise the same logits. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.cuh"
#include "cuda_model.h"

#define MAX_ALLOCS 8192
#define LM_CHUNK 256
#define GEMV_MAX_ROWS 64
#define BLAS_WS_BYTES ((size_t)32 << 20)
#define LM_SPLIT 4 /* row blocks of the decode lm_head: block i's logits go to the host during block i+1 */

struct dev_mlp {
    void *gate_up; /* [2W, D]: gate rows then up rows */
    void *down;    /* [D, W] */
    int64_t W;
};

struct dev_layer {
    float *in_norm, *post_norm;
    /* linear attention */
    void *qkvz, *ba, *out_proj;
    float *conv_w, *dt_bias, *A_log, *gnorm;
    /* full attention */
    void *q_proj, *k_proj, *v_proj, *o_proj;
    float *q_norm, *k_norm, *q_bias, *k_bias, *v_bias, *o_bias;
    /* MoE */
    void *router;     /* [E, D] */
    void *experts_gu; /* [E, 2I, D] */
    void *experts_dn; /* [E, D, I] */
    struct dev_mlp shared;
    void *shared_gate; /* [1, D] */
    struct dev_mlp mlp; /* dense layers */
    /* caches */
    float *conv_state; /* [Cc, Kc] */
    float *rec_state;  /* [NV, DK, DV] */
    void *kc, *vc;     /* [max_tokens, NKV, HD] */
};

struct work {
    void *h, *xn, *y, *big, *ba, *mixed, *conv, *z, *core, *gn;
    float *b, *a, *g, *beta, *qf, *kf, *vf, *drs;
    void *q, *qn, *kn, *attn, *gated;
    float *ascratch;
    void *rlogits, *eo, *sout, *sg, *smid;
    float *probs, *topw;
    int32_t *topi, *perm, *pos, *counts, *offsets, *tiles;
    void *xperm, *gu, *hmid, *ey;
    void *lbuf, *cat;
    float *lbuf32;
    int64_t *tokens;
};

struct cuda_session {
    struct q3n_config cfg;
    struct q3n_run_options opt;
    enum q3n_compute_dtype dt;
    size_t as; /* activation bytes */
    cudaStream_t stream;
    cublasHandle_t blas;
    void *allocs[MAX_ALLOCS];
    int nallocs;
    void *embed, *lm_head;
    float *final_norm;
    struct dev_layer *layers;
    struct work w;
    int64_t Tmax, cache_len;
    int64_t big_elems; /* capacity of w.big in elements */
    int has_prev;
    /* MTP: the MTP layer is layers[num_hidden_layers] (cfg.layer_type/layer_is_sparse set for it) */
    int has_mtp;
    float *mtp_norm_e, *mtp_norm_h, *mtp_norm;
    void *mtp_fc;      /* [D, 2D] */
    void *last_hidden; /* [max_tokens, D] final-normed hidden of every position seen */
    int64_t last_T, last_pos0, mtp_len;
    /* tap staging */
    float *tap_host;
    float *tap_dev;
    int64_t tap_cap;
    int32_t *host_i32;
    int64_t host_i32_cap;
    int32_t *host_counts, *host_offsets;
    /* what ran since the last reset */
    int ran_chunked, ran_recurrent, ran_flash, ran_rows, ran_moe_gemm, ran_moe_gemv, ran_moe_grouped;
    int ran_decode_graph, ran_decode_eager;
    const char *dn_kernel, *rec_kernel, *attn_prefill_kernel, *attn_decode_kernel; /* names from the launchers */
    char desc[512];
    /* decode step: [token id, position] on the device and its pinned host staging; the captured
     * graph (graph_state 0 = not tried, 1 = ready, -1 = capture failed: eager, graph_why says why);
     * graph_ran = the ran_* flags the captured step sets, replayed with it; graph_off forces eager */
    int64_t *step_dev, *step_host;
    void *blas_ws;
    cudaGraph_t graph;
    cudaGraphExec_t graph_exec;
    int graph_state, graph_off;
    uint64_t graph_ran;
    char graph_why[96];
    /* device time of the replays and of the logits copies since the last cuda_session_decode_times */
    cudaEvent_t gev[3];
    double gms[2];
    int64_t gsteps;
    /* the decode lm_head's copy stream, its fork/join events and the pinned logits */
    cudaStream_t cstream;
    cudaEvent_t lev[LM_SPLIT + 1];
    float *logits_pin;
    /* optional per-phase timing (cuda_session_profile): events around each block */
    int profile;
    cudaEvent_t ev[2 * 4 * 64 + 2];
    double prof_ms[4]; /* deltanet mixer, attention mixer, MoE/MLP, everything else */
};

/* ---- allocation ---------------------------------------------------------------------- */

static enum q3n_status dalloc(struct cuda_session *s, void **p, size_t bytes, struct q3n_error *err)
{
    *p = NULL;
    if (bytes == 0) bytes = 16;
    if (s->nallocs >= MAX_ALLOCS) return q3n_error_set(err, Q3N_ERR_NOMEM, "cuda: more than %d device buffers", MAX_ALLOCS);
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess)
        return q3n_error_set(err, Q3N_ERR_DEVICE, "cuda: cudaMalloc of %zu bytes: %s", bytes, cudaGetErrorString(e));
    s->allocs[s->nallocs++] = *p;
    return Q3N_OK;
}
#define DALLOC(ptr, bytes) Q3N_TRY(dalloc(s, (void **)&(ptr), (size_t)(bytes), err))

static uint16_t f32_to_bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Copies n host floats to dst (already allocated) as the activation dtype. */
static enum q3n_status upload_act(struct cuda_session *s, void *dst, const float *src, int64_t n, struct q3n_error *err)
{
    if (s->dt != Q3N_COMPUTE_BF16) {
        CU_CHECK(cudaMemcpy(dst, src, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice));
        return Q3N_OK;
    }
    const int64_t chunk = 1 << 22;
    uint16_t *tmp = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)(n < chunk ? n : chunk));
    if (!tmp) return q3n_error_set(err, Q3N_ERR_NOMEM, "cuda: host staging for bf16 upload");
    for (int64_t o = 0; o < n; o += chunk) {
        const int64_t m = n - o < chunk ? n - o : chunk;
        for (int64_t i = 0; i < m; i++) tmp[i] = f32_to_bf16_bits(src[o + i]);
        cudaError_t e = cudaMemcpy((char *)dst + 2 * o, tmp, 2 * (size_t)m, cudaMemcpyHostToDevice);
        if (e != cudaSuccess) {
            free(tmp);
            return q3n_error_set(err, Q3N_ERR_DEVICE, "cuda: upload: %s", cudaGetErrorString(e));
        }
    }
    free(tmp);
    return Q3N_OK;
}

static enum q3n_status new_mat(struct cuda_session *s, void **dst, const float *src, int64_t n, struct q3n_error *err)
{
    *dst = NULL;
    if (!src) return Q3N_OK;
    Q3N_TRY(dalloc(s, dst, s->as * (size_t)n, err));
    return upload_act(s, *dst, src, n, err);
}

static enum q3n_status new_vec(struct cuda_session *s, float **dst, const float *src, int64_t n, struct q3n_error *err)
{
    *dst = NULL;
    if (!src) return Q3N_OK;
    Q3N_TRY(dalloc(s, (void **)dst, sizeof(float) * (size_t)n, err));
    CU_CHECK(cudaMemcpy(*dst, src, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice));
    return Q3N_OK;
}

/* Matrices that read the same input row, stacked in one buffer (in_proj_qkvz | in_proj_ba,
 * q_proj | k_proj | v_proj): a decode token's one GEMV then covers them all (stacked()). Each
 * dst[i] points at its own rows; when a src[i] is missing, each goes up on its own (new_mat). */
static enum q3n_status new_stacked(struct cuda_session *s, void **dst[], const float *const src[], const int64_t n[],
                                   int cnt, struct q3n_error *err)
{
    int64_t total = 0;
    for (int i = 0; i < cnt; i++) {
        if (src[i]) {
            total += n[i];
            continue;
        }
        for (int j = 0; j < cnt; j++) Q3N_TRY(new_mat(s, dst[j], src[j], n[j], err));
        return Q3N_OK;
    }
    void *base = NULL;
    Q3N_TRY(dalloc(s, &base, s->as * (size_t)total, err));
    int64_t off = 0;
    for (int i = 0; i < cnt; i++) {
        *dst[i] = (char *)base + s->as * (size_t)off;
        Q3N_TRY(upload_act(s, *dst[i], src[i], n[i], err));
        off += n[i];
    }
    return Q3N_OK;
}

/* a and b (rows of D) adjacent in memory, a first: one GEMV may read both. */
static int stacked(const struct cuda_session *s, const void *a, int64_t a_rows, const void *b, int64_t D)
{
    return a && b && (const char *)b == (const char *)a + s->as * (size_t)(a_rows * D);
}

/* Stacks gate and up [W, D] into [2W, D] at dst. */
static enum q3n_status upload_gate_up(struct cuda_session *s, void *dst, const struct q3n_mlp_weights *m, int64_t W,
                                      int64_t D, struct q3n_error *err)
{
    Q3N_TRY(upload_act(s, dst, m->gate_proj, W * D, err));
    return upload_act(s, (char *)dst + s->as * (size_t)(W * D), m->up_proj, W * D, err);
}

static enum q3n_status new_mlp(struct cuda_session *s, struct dev_mlp *d, const struct q3n_mlp_weights *m, int64_t W,
                               int64_t D, struct q3n_error *err)
{
    d->W = W;
    Q3N_TRY(dalloc(s, &d->gate_up, s->as * (size_t)(2 * W * D), err));
    Q3N_TRY(upload_gate_up(s, d->gate_up, m, W, D, err));
    return new_mat(s, &d->down, m->down_proj, D * W, err);
}

/* ---- device-side random weights (benchmarks) ------------------------------------------ */

__device__ __forceinline__ uint64_t splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* mode 0: N(0, a); mode 1: U(a, b); mode 2: +-U(a, b) (random sign). */
template <typename T>
__global__ void fill_kernel(T *p, int64_t n, uint64_t seed, int mode, float a, float b)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const uint64_t r = splitmix(seed ^ (uint64_t)i * 0xd1b54a32d192ed03ull);
        const float u1 = ((float)(r >> 40) + 0.5f) * (1.0f / 16777216.0f);
        const float u2 = (float)((r >> 16) & 0xffffff) * (1.0f / 16777216.0f);
        float v;
        if (mode == 0)
            v = a * sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
        else if (mode == 1)
            v = a + (b - a) * u2;
        else
            v = (u1 < 0.5f ? -1.0f : 1.0f) * (a + (b - a) * u2);
        st(p + i, v);
    }
}

static enum q3n_status rnd_fill(struct cuda_session *s, void *p, int64_t n, int isact, uint64_t *seed, int mode,
                                float a, float b, struct q3n_error *err)
{
    const unsigned grid = (unsigned)(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536);
    *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
    if (isact && s->dt == Q3N_COMPUTE_BF16)
        fill_kernel<<<grid, 256, 0, s->stream>>>((bf16 *)p, n, *seed, mode, a, b);
    else
        fill_kernel<<<grid, 256, 0, s->stream>>>((float *)p, n, *seed, mode, a, b);
    CU_LAUNCHED("fill_kernel");
    return Q3N_OK;
}

/* ---- session setup --------------------------------------------------------------------- */

static void cuda_close(void *session);

static enum q3n_status check_config(const struct q3n_config *c, const struct q3n_run_options *opt,
                                    struct q3n_error *err)
{
    if (opt->dtype != Q3N_COMPUTE_F32 && opt->dtype != Q3N_COMPUTE_BF16)
        return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "cuda: dtype must be f32 or bf16");
    if (c->linear_key_head_dim > 256 || c->linear_value_head_dim > 256)
        return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "cuda: linear head dims above 256 (DK=%lld DV=%lld)",
                             (long long)c->linear_key_head_dim, (long long)c->linear_value_head_dim);
    if (c->head_dim > 512)
        return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "cuda: head_dim %lld above 512", (long long)c->head_dim);
    if (c->num_experts > 4096 || c->num_experts_per_tok > 64)
        return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "cuda: E=%lld K=%lld above 4096/64",
                             (long long)c->num_experts, (long long)c->num_experts_per_tok);
    if (c->linear_conv_kernel_dim > 16)
        return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "cuda: conv kernel %lld above 16",
                             (long long)c->linear_conv_kernel_dim);
    if (opt->chunk_size < 1 || opt->chunk_size > 64)
        return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "cuda: chunk_size %lld outside 1..64",
                             (long long)opt->chunk_size);
    if (opt->max_tokens < 1) return q3n_error_set(err, Q3N_ERR_USAGE, "cuda: max_tokens must be >= 1");
    /* Refused rather than ignored: a run that silently dropped them would look like a result. */
    if (opt->fp32_patterns && *opt->fp32_patterns)
        return q3n_error_set(err, Q3N_ERR_UNSUPPORTED,
                             "cuda: run_options.fp32_patterns is not supported (bf16 runs every op in bf16); "
                             "bisect precision with --impl cpu, which emulates bf16 op by op");
    if (opt->test_bug && *opt->test_bug)
        return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "cuda: no planted test bugs (test_bug '%s'); use --impl cpu",
                             opt->test_bug);
    return Q3N_OK;
}

static int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

/* Work buffers for up to Tm tokens per forward, caches for max_tokens. */
static enum q3n_status alloc_work(struct cuda_session *s, struct q3n_error *err)
{
    const struct q3n_config *c = &s->cfg;
    struct work *w = &s->w;
    const int64_t Tm = s->Tmax, D = c->hidden_size, as = (int64_t)s->as;
    const int64_t NK = c->linear_num_key_heads, NV = c->linear_num_value_heads, DK = c->linear_key_head_dim,
                  DV = c->linear_value_head_dim;
    const int64_t NH = c->num_attention_heads, NKV = c->num_key_value_heads, HD = c->head_dim;
    const int64_t E = imax(c->num_experts, 1), K = imax(c->num_experts_per_tok, 1), I = c->moe_intermediate_size;
    const int64_t Cc = q3n_config_conv_dim(c), Q = q3n_config_qkvz_dim(c);
    const int64_t Ws = imax(c->shared_expert_intermediate_size, 1), Wd = imax(c->intermediate_size, 1);
    const int64_t big = imax(imax(Q, NH * 2 * HD), imax(2 * Ws, 2 * Wd));
    DALLOC(w->h, Tm * D * as);
    DALLOC(w->xn, Tm * D * as);
    DALLOC(w->y, Tm * D * as);
    DALLOC(w->big, Tm * big * as);
    s->big_elems = Tm * big;
    DALLOC(w->ba, Tm * 2 * NV * as);
    DALLOC(w->mixed, Tm * Cc * as);
    DALLOC(w->conv, Tm * Cc * as);
    DALLOC(w->z, Tm * NV * DV * as);
    DALLOC(w->core, Tm * NV * DV * as);
    DALLOC(w->gn, Tm * NV * DV * as);
    DALLOC(w->b, Tm * NV * 4);
    DALLOC(w->a, Tm * NV * 4);
    DALLOC(w->g, Tm * NV * 4);
    DALLOC(w->beta, Tm * NV * 4);
    DALLOC(w->qf, Tm * NK * DK * 4);
    DALLOC(w->kf, Tm * NK * DK * 4);
    DALLOC(w->vf, Tm * NV * DV * 4);
    DALLOC(w->drs, cuda_delta_rule_chunked_scratch(Tm, NV, DK, DV, s->opt.chunk_size) * 4);
    DALLOC(w->q, Tm * NH * HD * as);
    DALLOC(w->qn, Tm * NH * HD * as);
    DALLOC(w->kn, Tm * NKV * HD * as);
    DALLOC(w->attn, Tm * NH * HD * as);
    DALLOC(w->gated, Tm * NH * HD * as);
    DALLOC(w->ascratch, cuda_attention_scratch(1, NH, HD, s->opt.max_tokens) * 4);
    DALLOC(w->rlogits, Tm * E * as);
    DALLOC(w->probs, Tm * E * 4);
    DALLOC(w->topw, Tm * K * 4);
    DALLOC(w->topi, Tm * K * 4);
    DALLOC(w->perm, Tm * K * 4);
    DALLOC(w->pos, Tm * K * 4);
    DALLOC(w->counts, E * 4);
    DALLOC(w->offsets, E * 4);
    DALLOC(w->tiles, cuda_moe_grouped_tiles(Tm * K, E) * 4);
    DALLOC(w->eo, Tm * D * as);
    DALLOC(w->sout, Tm * D * as);
    DALLOC(w->sg, Tm * as);
    DALLOC(w->smid, Tm * imax(Ws, Wd) * as);
    DALLOC(w->xperm, Tm * K * D * as);
    DALLOC(w->gu, Tm * K * 2 * imax(I, 1) * as);
    DALLOC(w->hmid, Tm * K * imax(I, 1) * as);
    DALLOC(w->ey, Tm * K * D * as);
    DALLOC(w->lbuf, LM_CHUNK * c->vocab_size * as);
    DALLOC(w->lbuf32, LM_CHUNK * c->vocab_size * 4);
    DALLOC(w->tokens, Tm * 8);
    DALLOC(s->step_dev, 2 * sizeof(int64_t));
    /* cuBLAS must not allocate while a graph is being captured: a fixed workspace */
    DALLOC(s->blas_ws, BLAS_WS_BYTES);
    CUBLAS_CHECK(cublasSetWorkspace(s->blas, s->blas_ws, BLAS_WS_BYTES));
    if (s->has_mtp) {
        DALLOC(s->last_hidden, s->opt.max_tokens * D * as);
        DALLOC(w->cat, Tm * 2 * D * as);
    }
    for (int64_t l = 0; l < c->num_hidden_layers + (s->has_mtp ? 1 : 0); l++) {
        struct dev_layer *L = &s->layers[l];
        if (c->layer_type[l] == Q3N_LAYER_LINEAR_ATTENTION) {
            DALLOC(L->conv_state, Cc * c->linear_conv_kernel_dim * 4);
            DALLOC(L->rec_state, NV * DK * DV * 4);
        } else {
            DALLOC(L->kc, s->opt.max_tokens * NKV * HD * as);
            DALLOC(L->vc, s->opt.max_tokens * NKV * HD * as);
        }
    }
    s->host_counts = (int32_t *)malloc(sizeof(int32_t) * (size_t)E * 2);
    if (!s->host_counts) return q3n_error_set(err, Q3N_ERR_NOMEM, "cuda: host counts");
    s->host_offsets = s->host_counts + E;
    return Q3N_OK;
}

static enum q3n_status reset_caches(struct cuda_session *s, struct q3n_error *err)
{
    const struct q3n_config *c = &s->cfg;
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        struct dev_layer *L = &s->layers[l];
        if (L->conv_state)
            CU_CHECK(cudaMemsetAsync(L->conv_state, 0,
                                     4 * (size_t)(q3n_config_conv_dim(c) * c->linear_conv_kernel_dim), s->stream));
        if (L->rec_state)
            CU_CHECK(cudaMemsetAsync(L->rec_state, 0,
                                     4 * (size_t)(c->linear_num_value_heads * c->linear_key_head_dim *
                                                  c->linear_value_head_dim),
                                     s->stream));
    }
    s->cache_len = 0;
    s->has_prev = 0;
    s->last_T = s->last_pos0 = s->mtp_len = 0;
    s->ran_chunked = s->ran_recurrent = s->ran_flash = s->ran_rows = s->ran_moe_gemm = s->ran_moe_gemv = s->ran_moe_grouped = 0;
    s->ran_decode_graph = s->ran_decode_eager = 0;
    return Q3N_OK;
}

static enum q3n_status session_new(struct cuda_session **out, const struct q3n_config *cfg,
                                   const struct q3n_run_options *opt, struct q3n_error *err)
{
    struct q3n_run_options o;
    if (opt)
        o = *opt;
    else
        q3n_run_options_default(&o);
    Q3N_TRY(check_config(cfg, &o, err));
    struct cuda_session *s = (struct cuda_session *)calloc(1, sizeof *s);
    if (!s) return q3n_error_set(err, Q3N_ERR_NOMEM, "cuda: session");
    *out = s;
    s->cfg = *cfg;
    s->opt = o;
    s->dt = o.dtype;
    s->as = cuda_act_size(s->dt);
    s->Tmax = o.max_tokens;
    s->layers = (struct dev_layer *)calloc((size_t)cfg->num_hidden_layers + 1, sizeof(struct dev_layer));
    if (!s->layers) return q3n_error_set(err, Q3N_ERR_NOMEM, "cuda: layers");
    CU_CHECK(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&s->blas));
    CUBLAS_CHECK(cublasSetMathMode(s->blas, CUBLAS_DEFAULT_MATH)); /* no TF32 */
    CUBLAS_CHECK(cublasSetStream(s->blas, s->stream));
    CU_CHECK(cudaMallocHost((void **)&s->step_host, 2 * sizeof(int64_t)));
    CU_CHECK(cudaStreamCreateWithFlags(&s->cstream, cudaStreamNonBlocking));
    for (int i = 0; i <= LM_SPLIT; i++) CU_CHECK(cudaEventCreateWithFlags(&s->lev[i], cudaEventDisableTiming));
    CU_CHECK(cudaMallocHost((void **)&s->logits_pin, sizeof(float) * (size_t)cfg->vocab_size));
    return Q3N_OK;
}

static enum q3n_status upload_layer(struct cuda_session *s, int64_t l, const struct q3n_layer_weights *lw,
                                    struct q3n_error *err)
{
    const struct q3n_config *c = &s->cfg;
    struct dev_layer *L = &s->layers[l];
    const int64_t D = c->hidden_size, NV = c->linear_num_value_heads, DV = c->linear_value_head_dim;
    const int64_t NH = c->num_attention_heads, NKV = c->num_key_value_heads, HD = c->head_dim;
    const int64_t E = c->num_experts, I = c->moe_intermediate_size;
    Q3N_TRY(new_vec(s, &L->in_norm, lw->input_layernorm, D, err));
    Q3N_TRY(new_vec(s, &L->post_norm, lw->post_attention_layernorm, D, err));
    if (c->layer_type[l] == Q3N_LAYER_LINEAR_ATTENTION) {
        const struct q3n_linear_attn_weights *a = &lw->linear_attn;
        void **dst[2] = {&L->qkvz, &L->ba};
        const float *const src[2] = {a->in_proj_qkvz, a->in_proj_ba};
        const int64_t n[2] = {q3n_config_qkvz_dim(c) * D, 2 * NV * D};
        Q3N_TRY(new_stacked(s, dst, src, n, 2, err));
        Q3N_TRY(new_mat(s, &L->out_proj, a->out_proj, D * NV * DV, err));
        Q3N_TRY(new_vec(s, &L->conv_w, a->conv1d, q3n_config_conv_dim(c) * c->linear_conv_kernel_dim, err));
        Q3N_TRY(new_vec(s, &L->dt_bias, a->dt_bias, NV, err));
        Q3N_TRY(new_vec(s, &L->A_log, a->A_log, NV, err));
        Q3N_TRY(new_vec(s, &L->gnorm, a->norm, DV, err));
    } else {
        const struct q3n_attn_weights *a = &lw->self_attn;
        void **dst[3] = {&L->q_proj, &L->k_proj, &L->v_proj};
        const float *const src[3] = {a->q_proj, a->k_proj, a->v_proj};
        const int64_t n[3] = {NH * 2 * HD * D, NKV * HD * D, NKV * HD * D};
        Q3N_TRY(new_stacked(s, dst, src, n, 3, err));
        Q3N_TRY(new_mat(s, &L->o_proj, a->o_proj, D * NH * HD, err));
        Q3N_TRY(new_vec(s, &L->q_norm, a->q_norm, HD, err));
        Q3N_TRY(new_vec(s, &L->k_norm, a->k_norm, HD, err));
        Q3N_TRY(new_vec(s, &L->q_bias, a->q_bias, NH * 2 * HD, err));
        Q3N_TRY(new_vec(s, &L->k_bias, a->k_bias, NKV * HD, err));
        Q3N_TRY(new_vec(s, &L->v_bias, a->v_bias, NKV * HD, err));
        Q3N_TRY(new_vec(s, &L->o_bias, a->o_bias, D, err));
    }
    if (c->layer_is_sparse[l]) {
        const struct q3n_moe_weights *m = &lw->moe;
        Q3N_TRY(new_mat(s, &L->router, m->router, E * D, err));
        DALLOC(L->experts_gu, s->as * (size_t)(E * 2 * I * D));
        DALLOC(L->experts_dn, s->as * (size_t)(E * D * I));
        for (int64_t e = 0; e < E; e++) {
            Q3N_TRY(upload_gate_up(s, (char *)L->experts_gu + s->as * (size_t)(e * 2 * I * D), &m->experts[e], I, D,
                                   err));
            Q3N_TRY(upload_act(s, (char *)L->experts_dn + s->as * (size_t)(e * D * I), m->experts[e].down_proj, D * I,
                               err));
        }
        if (m->shared_expert.gate_proj) {
            Q3N_TRY(new_mlp(s, &L->shared, &m->shared_expert, c->shared_expert_intermediate_size, D, err));
            Q3N_TRY(new_mat(s, &L->shared_gate, m->shared_expert_gate, D, err));
        }
    } else {
        Q3N_TRY(new_mlp(s, &L->mlp, &lw->mlp, c->intermediate_size, D, err));
    }
    return Q3N_OK;
}

static enum q3n_status cuda_open(void **session, const struct q3n_model *model, const struct q3n_run_options *opt,
                                 struct q3n_error *err)
{
    *session = NULL;
    struct cuda_session *s = NULL;
    enum q3n_status st = session_new(&s, &model->config, opt, err);
    const struct q3n_config *c = &model->config;
    if (st != Q3N_OK) goto fail;
    st = new_mat(s, &s->embed, model->weights.embed_tokens, c->vocab_size * c->hidden_size, err);
    if (st != Q3N_OK) goto fail;
    if (model->weights.lm_head == model->weights.embed_tokens)
        s->lm_head = s->embed;
    else if ((st = new_mat(s, &s->lm_head, model->weights.lm_head, c->vocab_size * c->hidden_size, err)) != Q3N_OK)
        goto fail;
    st = new_vec(s, &s->final_norm, model->weights.norm, c->hidden_size, err);
    for (int64_t l = 0; st == Q3N_OK && l < c->num_hidden_layers; l++)
        st = upload_layer(s, l, &model->weights.layers[l], err);
    if (st == Q3N_OK && c->num_mtp_layers > 0 && c->num_hidden_layers < Q3N_MAX_LAYERS) {
        const struct q3n_mtp_weights *mw = &model->weights.mtp;
        const int64_t Lm = c->num_hidden_layers, D = c->hidden_size;
        s->has_mtp = 1;
        s->cfg.layer_type[Lm] = Q3N_LAYER_FULL_ATTENTION;
        s->cfg.layer_is_sparse[Lm] = (uint8_t)(mw->layer_is_sparse ? 1 : 0);
        st = upload_layer(s, Lm, &mw->layer, err);
        if (st == Q3N_OK) st = new_vec(s, &s->mtp_norm_e, mw->pre_fc_norm_embedding, D, err);
        if (st == Q3N_OK) st = new_vec(s, &s->mtp_norm_h, mw->pre_fc_norm_hidden, D, err);
        if (st == Q3N_OK) st = new_vec(s, &s->mtp_norm, mw->norm, D, err);
        if (st == Q3N_OK) st = new_mat(s, &s->mtp_fc, mw->fc, D * 2 * D, err);
    }
    if (st == Q3N_OK) st = alloc_work(s, err);
    if (st == Q3N_OK) st = reset_caches(s, err);
    /* weights went up with cudaMemcpy on the legacy stream; the session's stream does not order
     * against it, so wait for every copy before the first launch */
    if (st == Q3N_OK && cudaDeviceSynchronize() != cudaSuccess)
        st = q3n_error_set(err, Q3N_ERR_DEVICE, "cuda: weight upload: %s", cudaGetErrorString(cudaGetLastError()));
    if (st != Q3N_OK) goto fail;
    *session = s;
    return Q3N_OK;
fail:
    cuda_close(s);
    return st;
}

#define RFILL(p, n, isact, mode, a, b) Q3N_TRY(rnd_fill(s, (p), (n), (isact), &seed, (mode), (a), (b), err))
#define RMAT(p, n, fan_in)                                                                                        \
    do {                                                                                                          \
        DALLOC(p, s->as * (size_t)(n));                                                                           \
        RFILL(p, n, 1, 0, 1.0f / sqrtf((float)(fan_in)), 0.0f);                                                   \
    } while (0)
#define RVEC(p, n, mode, a, b)                                                                                    \
    do {                                                                                                          \
        DALLOC(p, 4 * (size_t)(n));                                                                               \
        RFILL(p, n, 0, mode, a, b);                                                                               \
    } while (0)

static enum q3n_status open_random(struct cuda_session *s, uint64_t seed, struct q3n_error *err)
{
    const struct q3n_config *c = &s->cfg;
    const int64_t D = c->hidden_size, V = c->vocab_size, NV = c->linear_num_value_heads, DV = c->linear_value_head_dim;
    const int64_t NH = c->num_attention_heads, NKV = c->num_key_value_heads, HD = c->head_dim;
    const int64_t E = c->num_experts, I = c->moe_intermediate_size, Kc = c->linear_conv_kernel_dim;
    RMAT(s->embed, V * D, 1);
    RMAT(s->lm_head, V * D, D);
    RVEC(s->final_norm, D, 2, 0.1f, 0.5f);
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        struct dev_layer *L = &s->layers[l];
        RVEC(L->in_norm, D, 2, 0.1f, 0.5f);
        RVEC(L->post_norm, D, 2, 0.1f, 0.5f);
        if (c->layer_type[l] == Q3N_LAYER_LINEAR_ATTENTION) {
            const int64_t nq = q3n_config_qkvz_dim(c) * D;
            RMAT(L->qkvz, nq + 2 * NV * D, D); /* stacked: qkvz | ba */
            L->ba = (char *)L->qkvz + s->as * (size_t)nq;
            RMAT(L->out_proj, D * NV * DV, NV * DV);
            DALLOC(L->conv_w, 4 * (size_t)(q3n_config_conv_dim(c) * Kc));
            RFILL(L->conv_w, q3n_config_conv_dim(c) * Kc, 0, 0, 1.0f / sqrtf((float)Kc), 0.0f);
            RVEC(L->dt_bias, NV, 1, -1.0f, 1.0f);
            RVEC(L->A_log, NV, 1, 0.0f, 2.77f); /* log(1) .. log(16) */
            RVEC(L->gnorm, DV, 1, 0.7f, 1.3f);
        } else {
            const int64_t nq = NH * 2 * HD * D, nk = NKV * HD * D;
            RMAT(L->q_proj, nq + 2 * nk, D); /* stacked: q | k | v */
            L->k_proj = (char *)L->q_proj + s->as * (size_t)nq;
            L->v_proj = (char *)L->q_proj + s->as * (size_t)(nq + nk);
            RMAT(L->o_proj, D * NH * HD, NH * HD);
            RVEC(L->q_norm, HD, 2, 0.1f, 0.5f);
            RVEC(L->k_norm, HD, 2, 0.1f, 0.5f);
        }
        if (c->layer_is_sparse[l]) {
            DALLOC(L->router, s->as * (size_t)(E * D));
            RFILL(L->router, E * D, 1, 0, 3.0f / sqrtf((float)D), 0.0f);
            RMAT(L->experts_gu, E * 2 * I * D, D);
            RMAT(L->experts_dn, E * D * I, I);
            if (c->shared_expert_intermediate_size > 0) {
                const int64_t Ws = c->shared_expert_intermediate_size;
                L->shared.W = Ws;
                RMAT(L->shared.gate_up, 2 * Ws * D, D);
                RMAT(L->shared.down, D * Ws, Ws);
                RMAT(L->shared_gate, D, D);
            }
        } else {
            const int64_t Wd = c->intermediate_size;
            L->mlp.W = Wd;
            RMAT(L->mlp.gate_up, 2 * Wd * D, D);
            RMAT(L->mlp.down, D * Wd, Wd);
        }
    }
    CU_CHECK(cudaStreamSynchronize(s->stream));
    return Q3N_OK;
}

extern "C" enum q3n_status cuda_session_open_random(void **session, const struct q3n_config *cfg, uint64_t seed,
                                                    const struct q3n_run_options *opt, struct q3n_error *err)
{
    *session = NULL;
    struct cuda_session *s = NULL;
    enum q3n_status st = session_new(&s, cfg, opt, err);
    if (st == Q3N_OK) st = open_random(s, seed, err);
    if (st == Q3N_OK) st = alloc_work(s, err);
    if (st == Q3N_OK) st = reset_caches(s, err);
    if (st != Q3N_OK) {
        cuda_close(s);
        return st;
    }
    *session = s;
    return Q3N_OK;
}

/* ---- taps ------------------------------------------------------------------------------- */

/* Copies a device tensor (activation dtype when isact, else float32) to the host: contiguous when
 * ldr == 0, else numel/rcols rows of rcols elements, ldr elements apart. Then as float32 and hands it to the sink. Contiguous taps are live: an
 * intervening sink's changes are copied back to the device. */
static enum q3n_status tap_dev(struct cuda_session *s, const struct q3n_tap_sink *taps, int isact, void *d,
                               int64_t ldr, int64_t rcols, int rank, const int64_t *dims, struct q3n_error *err,
                               const char *fmt, ...)
    __attribute__((format(printf, 10, 11)));
static enum q3n_status tap_dev(struct cuda_session *s, const struct q3n_tap_sink *taps, int isact, void *d,
                               int64_t ldr, int64_t rcols, int rank, const int64_t *dims, struct q3n_error *err,
                               const char *fmt, ...)
{
    if (!taps || !taps->fn) return Q3N_OK;
    char name[Q3N_TAP_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int64_t n = 1;
    for (int i = 0; i < rank; i++) n *= dims[i];
    const int64_t cols = ldr ? rcols : (dims[0] ? n / dims[0] : 0), rows = cols ? n / cols : 0;
    const int contiguous = ldr == 0 || ldr == cols;
    if (n > s->tap_cap) {
        free(s->tap_host);
        if (s->tap_dev) cudaFree(s->tap_dev);
        s->tap_dev = NULL;
        s->tap_cap = 0;
        s->tap_host = (float *)malloc(sizeof(float) * (size_t)n);
        if (!s->tap_host) return q3n_error_set(err, Q3N_ERR_NOMEM, "cuda: tap buffer for %s", name);
        CU_CHECK(cudaMalloc(&s->tap_dev, sizeof(float) * (size_t)n));
        s->tap_cap = n;
    }
    if (n > 0) {
        if (!isact && contiguous) {
            CU_CHECK(cudaMemcpyAsync(s->tap_host, d, sizeof(float) * (size_t)n, cudaMemcpyDeviceToHost, s->stream));
        } else {
            Q3N_TRY(cuda_to_f32(s->tap_dev, d, rows, cols, contiguous ? cols : ldr, isact ? s->dt : Q3N_COMPUTE_F32,
                                s->stream, err));
            CU_CHECK(cudaMemcpyAsync(s->tap_host, s->tap_dev, sizeof(float) * (size_t)n, cudaMemcpyDeviceToHost,
                                     s->stream));
        }
        CU_CHECK(cudaStreamSynchronize(s->stream));
    }
    if (!(contiguous && taps->intervene))
        return q3n_tap_emit(taps, Q3N_DTYPE_F32, s->tap_host, rank, dims, err, "%s", name);
    Q3N_TRY(q3n_tap_emit_live(taps, Q3N_DTYPE_F32, s->tap_host, rank, dims, err, "%s", name));
    if (n == 0) return Q3N_OK;
    if (isact) {
        CU_CHECK(cudaMemcpyAsync(s->tap_dev, s->tap_host, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice,
                                 s->stream));
        Q3N_TRY(cuda_from_f32(d, s->tap_dev, n, s->dt, s->stream, err));
    } else {
        CU_CHECK(cudaMemcpyAsync(d, s->tap_host, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice, s->stream));
    }
    CU_CHECK(cudaStreamSynchronize(s->stream));
    return Q3N_OK;
}

#define TAPA2(d, a, b, ...)                                                                                       \
    do {                                                                                                          \
        const int64_t dims_[2] = {(a), (b)};                                                                      \
        Q3N_TRY(tap_dev(s, taps, 1, (void *)(d), 0, 0, 2, dims_, err, __VA_ARGS__));                                  \
    } while (0)
#define TAPA3(d, a, b, c_, ...)                                                                                   \
    do {                                                                                                          \
        const int64_t dims_[3] = {(a), (b), (c_)};                                                                \
        Q3N_TRY(tap_dev(s, taps, 1, (void *)(d), 0, 0, 3, dims_, err, __VA_ARGS__));                                  \
    } while (0)
#define TAPF2(d, a, b, ...)                                                                                       \
    do {                                                                                                          \
        const int64_t dims_[2] = {(a), (b)};                                                                      \
        Q3N_TRY(tap_dev(s, taps, 0, (void *)(d), 0, 0, 2, dims_, err, __VA_ARGS__));                                  \
    } while (0)
#define TAPF3(d, a, b, c_, ...)                                                                                   \
    do {                                                                                                          \
        const int64_t dims_[3] = {(a), (b), (c_)};                                                                \
        Q3N_TRY(tap_dev(s, taps, 0, (void *)(d), 0, 0, 3, dims_, err, __VA_ARGS__));                                  \
    } while (0)
/* A strided slice: rows of `rc` elements, `ldr` apart, shaped [a, b, c_]. */
#define TAPS3(d, ldr, rc, a, b, c_, ...)                                                                          \
    do {                                                                                                          \
        const int64_t dims_[3] = {(a), (b), (c_)};                                                                \
        Q3N_TRY(tap_dev(s, taps, 1, (void *)(d), (ldr), (rc), 3, dims_, err, __VA_ARGS__));                        \
    } while (0)

#define ACT(p, off) ((void *)((char *)(p) + s->as * (size_t)(off)))

/* ---- blocks ------------------------------------------------------------------------------ */

static enum q3n_status linear_attn_block(struct cuda_session *s, int64_t l, const char *p, int64_t T,
                                         const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    const struct q3n_config *c = &s->cfg;
    struct dev_layer *L = &s->layers[l];
    struct work *w = &s->w;
    const enum q3n_compute_dtype dt = s->dt;
    const int64_t D = c->hidden_size, NK = c->linear_num_key_heads, NV = c->linear_num_value_heads;
    const int64_t DK = c->linear_key_head_dim, DV = c->linear_value_head_dim, Kc = c->linear_conv_kernel_dim;
    const int64_t Cc = q3n_config_conv_dim(c), Q = q3n_config_qkvz_dim(c);
    const int chunked = T > 1 || !s->has_prev;

    void *ba = w->ba;
    if (T == 1 && dt == Q3N_COMPUTE_BF16 && stacked(s, L->qkvz, Q, L->ba, D) && Q + 2 * NV <= s->big_elems) {
        /* one token, stacked weights: qkvz | ba by one GEMV (per-row sums, as two launches give) */
        Q3N_TRY(cuda_linear_forward(w->big, w->xn, L->qkvz, NULL, 1, Q + 2 * NV, D, dt, s->blas, s->stream, err));
        ba = ACT(w->big, Q);
    } else {
        Q3N_TRY(cuda_linear_forward(w->big, w->xn, L->qkvz, NULL, T, Q, D, dt, s->blas, s->stream, err));
        Q3N_TRY(cuda_linear_forward(w->ba, w->xn, L->ba, NULL, T, 2 * NV, D, dt, s->blas, s->stream, err));
    }
    TAPA2(w->big, T, Q, "%s.linear_attn.in_proj_qkvz.out", p);
    TAPA2(ba, T, 2 * NV, "%s.linear_attn.in_proj_ba.out", p);
    Q3N_TRY(cuda_deltanet_split_forward(w->mixed, w->z, w->b, w->a, w->big, ba, T, NK, NV, DK, DV, dt, s->stream,
                                        err));
    TAPS3(w->mixed, Cc, NK * DK, T, NK, DK, "%s.linear_attn.q", p);
    TAPS3(ACT(w->mixed, NK * DK), Cc, NK * DK, T, NK, DK, "%s.linear_attn.k", p);
    TAPS3(ACT(w->mixed, 2 * NK * DK), Cc, NV * DV, T, NV, DV, "%s.linear_attn.v", p);
    TAPA3(w->z, T, NV, DV, "%s.linear_attn.z", p);
    TAPF2(w->b, T, NV, "%s.linear_attn.b", p);
    TAPF2(w->a, T, NV, "%s.linear_attn.a", p);

    const float qscale = chunked ? (float)pow((double)DK, -0.5) : (float)sqrt((double)DK);
    if (!chunked && !(taps && taps->fn) && DK <= 256) {
        /* decode: conv, its state, the q/k norms and v to float32 in one launch (bitwise the same) */
        Q3N_TRY(cuda_conv1d_decode_qkv(w->qf, w->kf, w->vf, L->conv_state, w->mixed, L->conv_w, NK, DK, NV, DV, Kc,
                                       1e-6, qscale, 1, dt, s->stream, err));
    } else {
        Q3N_TRY(cuda_conv1d_causal_forward(w->conv, w->mixed, L->conv_w, L->conv_state, T, Cc, Kc, dt, s->stream, err));
        Q3N_TRY(cuda_conv1d_state_update(L->conv_state, w->mixed, T, Cc, Kc, dt, s->stream, err));
        TAPA2(w->conv, T, Cc, "%s.linear_attn.conv1d.out", p);
        if (taps && taps->fn) {
            Q3N_TRY(cuda_l2norm_forward(w->qf, w->conv, T, NK, DK, Cc, 1e-6, 1.0f, 0, dt, s->stream, err));
            TAPF3(w->qf, T, NK, DK, "%s.linear_attn.q_l2", p);
        }
        Q3N_TRY(cuda_l2norm_forward(w->qf, w->conv, T, NK, DK, Cc, 1e-6, qscale, !chunked, dt, s->stream, err));
        Q3N_TRY(cuda_l2norm_forward(w->kf, ACT(w->conv, NK * DK), T, NK, DK, Cc, 1e-6, 1.0f, 0, dt, s->stream, err));
        TAPF3(w->kf, T, NK, DK, "%s.linear_attn.k_l2", p);
        Q3N_TRY(cuda_to_f32(w->vf, ACT(w->conv, 2 * NK * DK), T, NV * DV, Cc, dt, s->stream, err));
    }

    Q3N_TRY(cuda_deltanet_gates_forward(w->g, w->beta, w->a, w->b, L->A_log, L->dt_bias, T, NV, dt, s->stream, err));
    TAPF2(w->g, T, NV, "%s.linear_attn.g", p);
    TAPF2(w->beta, T, NV, "%s.linear_attn.beta", p);

    if (chunked) {
        s->dn_kernel = cuda_delta_rule_chunked_kernel_for(DK, DV, s->opt.chunk_size, dt);
        Q3N_TRY(cuda_delta_rule_chunked(w->core, L->rec_state, w->qf, w->kf, w->vf, w->g, w->beta, w->drs, T, NK, NV,
                                        DK, DV, s->opt.chunk_size, dt, s->stream, err));
        s->ran_chunked = 1;
    } else {
        s->rec_kernel = cuda_delta_rule_recurrent_kernel_for(DK, DV, dt);
        Q3N_TRY(cuda_delta_rule_recurrent(w->core, L->rec_state, w->qf, w->kf, w->vf, w->g, w->beta, T, NK, NV, DK,
                                          DV, dt, s->stream, err));
        s->ran_recurrent = 1;
    }
    TAPA3(w->core, T, NV, DV, "%s.linear_attn.core_out", p);
    TAPF3(L->rec_state, NV, DK, DV, "%s.linear_attn.final_state", p);
    Q3N_TRY(cuda_rmsnorm_gated_forward(w->gn, w->core, w->z, L->gnorm, T * NV, DV, c->rms_norm_eps, dt, s->stream,
                                       err));
    TAPA3(w->gn, T, NV, DV, "%s.linear_attn.norm.out", p);
    Q3N_TRY(cuda_linear_forward(w->y, w->gn, L->out_proj, NULL, T, D, NV * DV, dt, s->blas, s->stream, err));
    TAPA2(w->y, T, D, "%s.linear_attn.out", p);
    return Q3N_OK;
}

/* dpos != NULL (one decode token): the position is read on the device (*dpos == pos0). */
static enum q3n_status attn_block(struct cuda_session *s, int64_t l, const char *p, int64_t T, int64_t pos0,
                                  const int64_t *dpos, const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    const struct q3n_config *c = &s->cfg;
    struct dev_layer *L = &s->layers[l];
    struct work *w = &s->w;
    const enum q3n_compute_dtype dt = s->dt;
    const int64_t D = c->hidden_size, NH = c->num_attention_heads, NKV = c->num_key_value_heads, HD = c->head_dim;
    void *qg = w->big, *kp = w->mixed, *vp = w->conv; /* reuse: [T, NH*2*HD], [T, NKV*HD] x2 */
    if (NKV * HD > q3n_config_conv_dim(c)) {
        kp = w->xperm;
        vp = w->ey;
    }

    const int64_t NQ = NH * 2 * HD, NKH = NKV * HD;
    if (T == 1 && dt == Q3N_COMPUTE_BF16 && !L->q_bias && !L->k_bias && !L->v_bias &&
        stacked(s, L->q_proj, NQ, L->k_proj, D) && stacked(s, L->k_proj, NKH, L->v_proj, D) &&
        NQ + 2 * NKH <= s->big_elems) {
        /* one token, stacked weights: q | k | v by one GEMV */
        Q3N_TRY(cuda_linear_forward(qg, w->xn, L->q_proj, NULL, 1, NQ + 2 * NKH, D, dt, s->blas, s->stream, err));
        kp = ACT(qg, NQ);
        vp = ACT(qg, NQ + NKH);
    } else {
        Q3N_TRY(cuda_linear_forward(qg, w->xn, L->q_proj, L->q_bias, T, NQ, D, dt, s->blas, s->stream, err));
        Q3N_TRY(cuda_linear_forward(kp, w->xn, L->k_proj, L->k_bias, T, NKH, D, dt, s->blas, s->stream, err));
        Q3N_TRY(cuda_linear_forward(vp, w->xn, L->v_proj, L->v_bias, T, NKH, D, dt, s->blas, s->stream, err));
    }
    TAPA2(qg, T, NQ, "%s.self_attn.q_proj.out", p);
    TAPA2(kp, T, NKH, "%s.self_attn.k_proj.out", p);
    TAPA2(vp, T, NKH, "%s.self_attn.v_proj.out", p);
    {
        const int64_t dims[3] = {T, NH, HD};
        Q3N_TRY(tap_dev(s, taps, 1, ACT(qg, HD), 2 * HD, HD, 3, dims, err, "%s.self_attn.gate", p));
    }
    const int tapping = taps && taps->fn;
    void *qn = tapping ? w->qn : NULL, *kn = tapping ? w->kn : NULL;
    if (dpos)
        Q3N_TRY(cuda_attn_qk_prep_dpos(w->q, qn, L->kc, L->vc, kn, qg, kp, vp, L->q_norm, L->k_norm, dpos, NH, NKV, HD,
                                       c->rotary_dim, c->rope_theta, c->rms_norm_eps, dt, s->stream, err));
    else
        Q3N_TRY(cuda_attn_qk_prep(w->q, qn, L->kc, L->vc, kn, qg, kp, vp, L->q_norm, L->k_norm, T, pos0, NH, NKV, HD,
                                  c->rotary_dim, c->rope_theta, c->rms_norm_eps, dt, s->stream, err));
    TAPA3(w->qn, T, NH, HD, "%s.self_attn.q_norm.out", p);
    TAPA3(w->kn, T, NKV, HD, "%s.self_attn.k_norm.out", p);
    TAPA3(w->q, T, NH, HD, "%s.self_attn.q_rope", p);
    TAPA3(ACT(L->kc, pos0 * NKV * HD), T, NKV, HD, "%s.self_attn.k_rope", p);
    if (dpos)
        Q3N_TRY(cuda_attention_decode_dpos(w->attn, w->q, L->kc, L->vc, w->ascratch, dpos, s->opt.max_tokens, NH, NKV,
                                           HD, dt, s->stream, err));
    else
        Q3N_TRY(cuda_attention_forward(w->attn, w->q, L->kc, L->vc, w->ascratch, T, pos0, NH, NKV, HD, dt, s->stream,
                                       err));
    if (T > 1 && strncmp(cuda_attention_kernel(T, HD, dt), "flash", 5) == 0) {
        s->ran_flash = 1;
        s->attn_prefill_kernel = cuda_attention_kernel(T, HD, dt);
    } else {
        s->ran_rows = 1;
        s->attn_decode_kernel = cuda_attention_kernel(T, HD, dt);
    }
    TAPA3(w->attn, T, NH, HD, "%s.self_attn.attn_out", p);
    Q3N_TRY(cuda_sigmoid_gate_forward(w->gated, w->attn, ACT(qg, HD), T, NH, HD, 2 * HD, dt, s->stream, err));
    TAPA2(w->gated, T, NH * HD, "%s.self_attn.gated_out", p);
    Q3N_TRY(cuda_linear_forward(w->y, w->gated, L->o_proj, L->o_bias, T, D, NH * HD, dt, s->blas, s->stream, err));
    TAPA2(w->y, T, D, "%s.self_attn.out", p);
    return Q3N_OK;
}

/* Routed experts over the permuted rows: one GEMM pair per expert that received rows. */
static enum q3n_status experts_gemm(struct cuda_session *s, struct dev_layer *L, int64_t T, struct q3n_error *err)
{
    const struct q3n_config *c = &s->cfg;
    struct work *w = &s->w;
    const enum q3n_compute_dtype dt = s->dt;
    const int64_t D = c->hidden_size, E = c->num_experts, K = c->num_experts_per_tok, I = c->moe_intermediate_size;
    Q3N_TRY(cuda_moe_permute(w->perm, w->pos, w->counts, w->offsets, w->topi, T, E, K, s->stream, err));
    /* v3: gather fused into gate_up's A load, SwiGLU into its epilogue; one tile table for both */
    if (cuda_moe_grouped_v3_ok(2 * I, D, 1, dt) && cuda_moe_grouped_v3_ok(D, I, 0, dt) && T * K / 128 + E + 1 <= 65535) {
        Q3N_TRY(cuda_moe_grouped_tiles_v3(w->tiles, w->counts, w->offsets, T * K, E, s->stream, err));
        Q3N_TRY(cuda_moe_grouped_gemm_v3(w->hmid, w->xn, w->perm, K, L->experts_gu, w->counts, w->offsets, w->tiles,
                                         T * K, E, 2 * I, D, 1, dt, s->stream, err));
        Q3N_TRY(cuda_moe_grouped_gemm_v3(w->ey, w->hmid, NULL, 1, L->experts_dn, w->counts, w->offsets, w->tiles,
                                         T * K, E, D, I, 0, dt, s->stream, err));
        s->ran_moe_grouped = 3; /* describe: grouped_v3 */
        return Q3N_OK;
    }
    Q3N_TRY(cuda_gather_rows(w->xperm, w->xn, w->perm, T * K, K, D, dt, s->stream, err));
    if (cuda_moe_grouped_gemm_ok(2 * I, D, dt) && cuda_moe_grouped_gemm_ok(D, I, dt) &&
        T * K / 64 + E + 1 <= 65535) {
        Q3N_TRY(cuda_moe_grouped_gemm(w->gu, w->xperm, L->experts_gu, w->counts, w->offsets, w->tiles, T * K, E,
                                      2 * I, D, dt, s->stream, err));
        Q3N_TRY(cuda_swiglu_forward(w->hmid, w->gu, T * K, I, dt, s->stream, err));
        Q3N_TRY(cuda_moe_grouped_gemm(w->ey, w->hmid, L->experts_dn, w->counts, w->offsets, w->tiles, T * K, E, D,
                                      I, dt, s->stream, err));
        s->ran_moe_grouped = 1;
        return Q3N_OK;
    }
    CU_CHECK(cudaMemcpyAsync(s->host_counts, w->counts, sizeof(int32_t) * (size_t)E, cudaMemcpyDeviceToHost,
                             s->stream));
    CU_CHECK(cudaMemcpyAsync(s->host_offsets, w->offsets, sizeof(int32_t) * (size_t)E, cudaMemcpyDeviceToHost,
                             s->stream));
    CU_CHECK(cudaStreamSynchronize(s->stream));
    for (int64_t e = 0; e < E; e++) {
        const int64_t n = s->host_counts[e], off = s->host_offsets[e];
        if (n == 0) continue;
        Q3N_TRY(cuda_linear_forward(ACT(w->gu, off * 2 * I), ACT(w->xperm, off * D),
                                    ACT(L->experts_gu, e * 2 * I * D), NULL, n, 2 * I, D, dt, s->blas, s->stream,
                                    err));
    }
    Q3N_TRY(cuda_swiglu_forward(w->hmid, w->gu, T * K, I, dt, s->stream, err));
    for (int64_t e = 0; e < E; e++) {
        const int64_t n = s->host_counts[e], off = s->host_offsets[e];
        if (n == 0) continue;
        Q3N_TRY(cuda_linear_forward(ACT(w->ey, off * D), ACT(w->hmid, off * I), ACT(L->experts_dn, e * D * I), NULL,
                                    n, D, I, dt, s->blas, s->stream, err));
    }
    s->ran_moe_gemm = 1;
    return Q3N_OK;
}

static enum q3n_status dense_mlp(struct cuda_session *s, void *out, void *mid, const struct dev_mlp *m, int64_t T,
                                 struct q3n_error *err)
{
    const int64_t D = s->cfg.hidden_size;
    Q3N_TRY(cuda_linear_forward(s->w.big, s->w.xn, m->gate_up, NULL, T, 2 * m->W, D, s->dt, s->blas, s->stream, err));
    Q3N_TRY(cuda_swiglu_forward(mid, s->w.big, T, m->W, s->dt, s->stream, err));
    return cuda_linear_forward(out, mid, m->down, NULL, T, D, m->W, s->dt, s->blas, s->stream, err);
}

static enum q3n_status apply_forced_routing(struct cuda_session *s, int64_t l, int64_t T, int64_t pos0,
                                            struct q3n_error *err)
{
    const struct q3n_forced_routing *fr = s->opt.forced_routing;
    if (!fr || l >= s->cfg.num_hidden_layers || !fr->topk_idx || !fr->topk_idx[l] || !fr->topk_weight || !fr->topk_weight[l]) return Q3N_OK;
    const int64_t K = s->cfg.num_experts_per_tok, E = s->cfg.num_experts, n = T * K;
    int32_t *hi = (int32_t *)malloc(sizeof(int32_t) * (size_t)n);
    float *hw = (float *)malloc(sizeof(float) * (size_t)n);
    enum q3n_status st = Q3N_OK;
    if (!hi || !hw) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "cuda: forced routing buffers");
        goto done;
    }
    if (cudaMemcpyAsync(hi, s->w.topi, sizeof(int32_t) * (size_t)n, cudaMemcpyDeviceToHost, s->stream) != cudaSuccess ||
        cudaMemcpyAsync(hw, s->w.topw, sizeof(float) * (size_t)n, cudaMemcpyDeviceToHost, s->stream) != cudaSuccess ||
        cudaStreamSynchronize(s->stream) != cudaSuccess) {
        st = q3n_error_set(err, Q3N_ERR_DEVICE, "cuda: forced routing copy: %s", cudaGetErrorString(cudaGetLastError()));
        goto done;
    }
    for (int64_t t = 0; t < T && pos0 + t < fr->tokens; t++)
        for (int64_t j = 0; j < K; j++) {
            const int64_t e = fr->topk_idx[l][(pos0 + t) * K + j];
            if (e < 0 || e >= E) {
                st = q3n_error_set(err, Q3N_ERR_USAGE, "cuda: forced topk_idx layer %lld row %lld = %lld (E = %lld)",
                                   (long long)l, (long long)(pos0 + t), (long long)e, (long long)E);
                goto done;
            }
            hi[t * K + j] = (int32_t)e;
            hw[t * K + j] = fr->topk_weight[l][(pos0 + t) * K + j];
        }
    /* on the session's (non-blocking) stream, and waited for before hi/hw are freed */
    if (cudaMemcpyAsync(s->w.topi, hi, sizeof(int32_t) * (size_t)n, cudaMemcpyHostToDevice, s->stream) != cudaSuccess ||
        cudaMemcpyAsync(s->w.topw, hw, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice, s->stream) != cudaSuccess ||
        cudaStreamSynchronize(s->stream) != cudaSuccess)
        st = q3n_error_set(err, Q3N_ERR_DEVICE, "cuda: forced routing upload: %s", cudaGetErrorString(cudaGetLastError()));
done:
    free(hi);
    free(hw);
    return st;
}

static enum q3n_status mlp_block(struct cuda_session *s, int64_t l, const char *p, int64_t T, int64_t pos0,
                                 const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    const struct q3n_config *c = &s->cfg;
    struct dev_layer *L = &s->layers[l];
    struct work *w = &s->w;
    const enum q3n_compute_dtype dt = s->dt;
    const int64_t D = c->hidden_size;
    if (!c->layer_is_sparse[l]) {
        Q3N_TRY(dense_mlp(s, w->y, w->smid, &L->mlp, T, err));
        TAPA2(w->y, T, D, "%s.mlp.out", p);
        return Q3N_OK;
    }
    const int64_t E = c->num_experts, K = c->num_experts_per_tok, I = c->moe_intermediate_size;
    Q3N_TRY(cuda_linear_forward(w->rlogits, w->xn, L->router, NULL, T, E, D, dt, s->blas, s->stream, err));
    TAPA2(w->rlogits, T, E, "%s.mlp.gate.logits", p);
    const int tapping = taps && taps->fn;
    Q3N_TRY(cuda_router_topk_forward(tapping ? w->probs : NULL, w->topi, w->topw, w->rlogits, T, E, K,
                                     c->norm_topk_prob, dt, s->stream, err));
    TAPF2(w->probs, T, E, "%s.mlp.gate.probs", p);
    Q3N_TRY(apply_forced_routing(s, l, T, pos0, err));
    if (tapping) {
        const int64_t n = T * K;
        if (n > s->host_i32_cap) {
            free(s->host_i32);
            s->host_i32 = (int32_t *)malloc(sizeof(int32_t) * (size_t)n + sizeof(int64_t) * (size_t)n);
            if (!s->host_i32) return q3n_error_set(err, Q3N_ERR_NOMEM, "cuda: topk tap buffer");
            s->host_i32_cap = n;
        }
        int64_t *i64 = (int64_t *)(s->host_i32 + ((n + 1) & ~(int64_t)1));
        CU_CHECK(cudaMemcpyAsync(s->host_i32, w->topi, sizeof(int32_t) * (size_t)n, cudaMemcpyDeviceToHost,
                                 s->stream));
        CU_CHECK(cudaStreamSynchronize(s->stream));
        for (int64_t i = 0; i < n; i++) i64[i] = s->host_i32[i];
        const int64_t dims[2] = {T, K};
        Q3N_TRY(q3n_tap_emit(taps, Q3N_DTYPE_I64, i64, 2, dims, err, "%s.mlp.gate.topk_idx", p));
    }
    TAPF2(w->topw, T, K, "%s.mlp.gate.topk_weight", p);
    const int32_t *pos = NULL;
    const int64_t Ws = L->shared.gate_up ? L->shared.W : 0;
    if (T * K <= GEMV_MAX_ROWS && cuda_moe_gemv2_ok(D, I, Ws, K)) {
        /* gemv_v2: two launches for routed + shared experts, the combine fused into the down GEMV */
        Q3N_TRY(cuda_moe_gemv2_gate_up(w->hmid, w->smid, w->sg, w->xn, w->topi, L->experts_gu,
                                       Ws ? L->shared.gate_up : NULL, Ws ? L->shared_gate : NULL, T, K, D, I, Ws, dt,
                                       s->stream, err));
        Q3N_TRY(cuda_moe_gemv2_down_combine(w->eo, w->y, w->sout, w->hmid, w->smid, w->topi, w->topw, L->experts_dn,
                                            Ws ? L->shared.down : NULL, w->sg, T, K, D, I, Ws, dt, s->stream, err));
        s->ran_moe_gemv = 2; /* describe: gemv_v2 */
        if (Ws) {
            TAPA2(w->sout, T, D, "%s.mlp.shared_expert.out", p);
            TAPA2(w->sg, T, 1, "%s.mlp.shared_expert_gate.out", p);
        }
        TAPA2(w->eo, T, D, "%s.mlp.experts.out", p);
        TAPA2(w->y, T, D, "%s.mlp.out", p);
        return Q3N_OK;
    }
    if (T * K <= GEMV_MAX_ROWS) {
        Q3N_TRY(cuda_moe_experts_gemv(w->gu, w->xn, w->topi, L->experts_gu, T * K, K, 2 * I, D, dt, s->stream, err));
        Q3N_TRY(cuda_swiglu_forward(w->hmid, w->gu, T * K, I, dt, s->stream, err));
        Q3N_TRY(cuda_moe_experts_gemv(w->ey, w->hmid, w->topi, L->experts_dn, T * K, 1, D, I, dt, s->stream, err));
        s->ran_moe_gemv = 1;
    } else {
        Q3N_TRY(experts_gemm(s, L, T, err));
        pos = w->pos;
    }
    const void *shared = NULL, *sg = NULL;
    if (L->shared.gate_up) {
        Q3N_TRY(dense_mlp(s, w->sout, w->smid, &L->shared, T, err));
        TAPA2(w->sout, T, D, "%s.mlp.shared_expert.out", p);
        Q3N_TRY(cuda_linear_forward(w->sg, w->xn, L->shared_gate, NULL, T, 1, D, dt, s->blas, s->stream, err));
        TAPA2(w->sg, T, 1, "%s.mlp.shared_expert_gate.out", p);
        shared = w->sout;
        sg = w->sg;
    }
    Q3N_TRY(cuda_moe_combine(w->eo, w->y, w->ey, pos, w->topw, shared, sg, T, D, K, dt, s->stream, err));
    TAPA2(w->eo, T, D, "%s.mlp.experts.out", p);
    TAPA2(w->y, T, D, "%s.mlp.out", p);
    return Q3N_OK;
}

/* ---- forward ------------------------------------------------------------------------------ */

/* "flash_mma_bf16_v3" -> "flash_v3", "rows_v1(split-K decode)" -> "rows_v1": the first word and
 * the version of a launcher's kernel name. */
static void short_name(char *out, size_t n, const char *name, const char *fallback)
{
    if (!name) name = fallback;
    const size_t w = strcspn(name, "_( ");
    const char *v = name;
    while ((v = strstr(v, "_v")) && !(v[2] >= '0' && v[2] <= '9')) v += 2;
    const size_t vl = v ? strspn(v + 2, "0123456789") + 1 : 0;
    snprintf(out, n, "%.*s%s%.*s", (int)w, name, v ? "_" : "", (int)vl, v ? v + 1 : "");
}

/* Compact (verify stores "<prefill>; decode: <decode>" in 256 bytes). Names: dn = delta rule
 * (the first word of cuda_delta_rule_chunked_kernel_for(): chunk_v4 fp32 SIMT, chunk_tc_v2 bf16 tensor
 * cores; and of cuda_delta_rule_recurrent_kernel_for(): rec_v1, rec_v2 = the one-token step), attn = first word and version of cuda_attention_kernel() for the prefill and
 * the decode (flash_v3 = flash_mma_bf16_v3, rows_v1 = row/split-K kernel, decode_v3 = its split
 * decode kernel), moe grouped_v1 = grouped bf16 mma GEMM,
 * cublas = per-expert cuBLAS GEMMs, gemv_v1 = decode expert GEMV; gemm = cuBLAS, COMPUTE_32F,
 * default math (no TF32), +gemv1 = one-row bf16 projections by linear.cu's GEMV; decode=graph:
 * the one-token step replayed from its CUDA graph, decode=eager: launched op by op
 * ("(nocapture)": the capture failed, "(off)": graph switched off). */
static void describe_build(struct cuda_session *s)
{
    char dn[48] = "", at[48] = "", moe[48] = "", dec[32] = "", nm[32];
    if (s->ran_chunked) {
        const char *k = s->dn_kernel ? s->dn_kernel : "chunk_v4";
        snprintf(dn, sizeof dn, "%.*s/C%lld", (int)strcspn(k, "( "), k, (long long)s->opt.chunk_size);
    }
    if (s->ran_recurrent) {
        const char *r = s->rec_kernel ? s->rec_kernel : "rec_v1";
        snprintf(dn + strlen(dn), sizeof dn - strlen(dn), "%s%.*s", dn[0] ? "+" : "", (int)strcspn(r, "( "), r);
    }
    if (s->ran_flash) short_name(at, sizeof at, s->attn_prefill_kernel, "flash_v2");
    if (s->ran_rows) {
        short_name(nm, sizeof nm, s->attn_decode_kernel, "rows_v1");
        snprintf(at + strlen(at), sizeof at - strlen(at), "%s%s", at[0] ? "+" : "", nm);
    }
    /* ran_moe_grouped / ran_moe_gemv hold the version that ran (1, 2, 3 ..) */
    if (s->ran_moe_grouped) snprintf(moe, sizeof moe, "grouped_v%d", s->ran_moe_grouped);
    if (s->ran_moe_gemm) snprintf(moe + strlen(moe), sizeof moe - strlen(moe), "%scublas", moe[0] ? "+" : "");
    if (s->ran_moe_gemv)
        snprintf(moe + strlen(moe), sizeof moe - strlen(moe), "%sgemv_v%d", moe[0] ? "+" : "", s->ran_moe_gemv);
    if (s->ran_decode_graph)
        snprintf(dec, sizeof dec, " decode=graph");
    else if (s->ran_decode_eager)
        snprintf(dec, sizeof dec, " decode=eager%s", s->graph_state < 0 ? "(nocapture)" : s->graph_off ? "(off)" : "");
    snprintf(s->desc, sizeof s->desc, "cuda-%s gemm=cublas32F(noTF32)%s dn=%s attn=%s moe=%s%s",
             s->dt == Q3N_COMPUTE_BF16 ? "bf16" : "f32", s->dt == Q3N_COMPUTE_BF16 ? "+gemv1" : "", dn[0] ? dn : "-",
             at[0] ? at : "-", moe[0] ? moe : "-", dec);
}

/* The ran_* flags packed 8 bits each (a captured step's flags are replayed with the graph). */
static uint64_t ran_mask(const struct cuda_session *s)
{
    const int f[7] = {s->ran_chunked, s->ran_recurrent, s->ran_flash, s->ran_rows, s->ran_moe_gemm, s->ran_moe_gemv,
                      s->ran_moe_grouped};
    uint64_t m = 0;
    for (int i = 0; i < 7; i++) m |= (uint64_t)(f[i] & 0xff) << (8 * i);
    return m;
}

static void ran_set(struct cuda_session *s, uint64_t m)
{
    int *f[7] = {&s->ran_chunked, &s->ran_recurrent, &s->ran_flash, &s->ran_rows, &s->ran_moe_gemm, &s->ran_moe_gemv,
                 &s->ran_moe_grouped};
    for (int i = 0; i < 7; i++) *f[i] = (int)(m >> (8 * i) & 0xff);
}

/* The flags of a and b together, each the larger (the versions are ordered). */
static uint64_t ran_or(uint64_t a, uint64_t b)
{
    uint64_t m = 0;
    for (int i = 0; i < 7; i++) {
        const uint64_t x = a >> (8 * i) & 0xff, y = b >> (8 * i) & 0xff;
        m |= (x > y ? x : y) << (8 * i);
    }
    return m;
}

/* How a forward runs its layers: T tokens from position pos0; dpos = that position on the
 * device (a decode token) or NULL; prof = per-phase events; fuse = each residual add folded
 * into the next norm (taps off only: no tap may see h between the add and the norm). */
struct pass {
    int64_t T, pos0;
    const int64_t *dpos;
    int prof, fuse;
};

/* One decoder layer on w.h (in place), taps under prefix p ("model.layers.3", "mtp.layers.0").
 * pending: the previous layer's h += y is still to do; it is done by this layer's input norm
 * (h = T(h + y), xn = rmsnorm(h): one launch, the same roundings as add then norm). With
 * ps->fuse this layer's own h += y is left pending in w.y. */
static enum q3n_status decoder_layer(struct cuda_session *s, int64_t l, const char *p, const struct pass *ps,
                                     int pending, const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    const struct q3n_config *c = &s->cfg;
    struct work *w = &s->w;
    const enum q3n_compute_dtype dt = s->dt;
    const int64_t D = c->hidden_size, T = ps->T, pos0 = ps->pos0;
    const int prof = ps->prof;
    struct dev_layer *L = &s->layers[l];
    TAPA2(w->h, T, D, "%s.in", p);
    Q3N_TRY(cuda_add_rmsnorm_forward(w->xn, w->h, pending ? w->y : NULL, L->in_norm, T, D, c->rms_norm_eps, dt,
                                     s->stream, err));
    TAPA2(w->xn, T, D, "%s.input_layernorm.out", p);
    if (prof) CU_CHECK(cudaEventRecord(s->ev[8 * l + 0], s->stream));
    if (c->layer_type[l] == Q3N_LAYER_FULL_ATTENTION)
        Q3N_TRY(attn_block(s, l, p, T, pos0, ps->dpos, taps, err));
    else
        Q3N_TRY(linear_attn_block(s, l, p, T, taps, err));
    if (prof) CU_CHECK(cudaEventRecord(s->ev[8 * l + 1], s->stream));
    Q3N_TRY(cuda_add_rmsnorm_forward(w->xn, w->h, w->y, L->post_norm, T, D, c->rms_norm_eps, dt, s->stream, err));
    TAPA2(w->h, T, D, "%s.post_attention_layernorm.in", p);
    TAPA2(w->xn, T, D, "%s.post_attention_layernorm.out", p);
    if (prof) CU_CHECK(cudaEventRecord(s->ev[8 * l + 2], s->stream));
    Q3N_TRY(mlp_block(s, l, p, T, pos0, taps, err));
    if (prof) CU_CHECK(cudaEventRecord(s->ev[8 * l + 3], s->stream));
    if (!ps->fuse) Q3N_TRY(cuda_add_inplace(w->h, w->y, T * D, dt, s->stream, err));
    TAPA2(w->h, T, D, "%s.out", p);
    return Q3N_OK;
}

/* Device work of a forward: embed the tokens at d_tokens, every layer, the final norm into w.xn. */
static enum q3n_status forward_layers(struct cuda_session *s, const int64_t *d_tokens, const struct pass *ps,
                                      const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    const struct q3n_config *c = &s->cfg;
    struct work *w = &s->w;
    const int64_t D = c->hidden_size, T = ps->T;
    Q3N_TRY(cuda_embed_forward(w->h, d_tokens, s->embed, T, D, s->dt, s->stream, err));
    TAPA2(w->h, T, D, "model.embed_tokens.out");
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        char p[48];
        snprintf(p, sizeof p, "model.layers.%d", (int)l);
        Q3N_TRY(decoder_layer(s, l, p, ps, ps->fuse && l > 0, taps, err));
    }
    const void *pending = ps->fuse && c->num_hidden_layers > 0 ? w->y : NULL;
    Q3N_TRY(cuda_add_rmsnorm_forward(w->xn, w->h, pending, s->final_norm, T, D, c->rms_norm_eps, s->dt, s->stream,
                                     err));
    TAPA2(w->xn, T, D, "model.norm.out");
    return Q3N_OK;
}

static enum q3n_status check_tokens(const struct cuda_session *s, const int64_t *tokens, int64_t T,
                                    struct q3n_error *err)
{
    const struct q3n_config *c = &s->cfg;
    const int64_t pos0 = s->cache_len;
    if (T < 1) return q3n_error_set(err, Q3N_ERR_USAGE, "cuda: forward of %lld tokens", (long long)T);
    if (T > s->Tmax || pos0 + T > s->opt.max_tokens)
        return q3n_error_set(err, Q3N_ERR_USAGE, "cuda: %lld + %lld tokens exceed max_tokens %lld", (long long)pos0,
                             (long long)T, (long long)s->opt.max_tokens);
    for (int64_t t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= c->vocab_size)
            return q3n_error_set(err, Q3N_ERR_USAGE, "cuda: token %lld at %lld outside vocab %lld",
                                 (long long)tokens[t], (long long)t, (long long)c->vocab_size);
    return Q3N_OK;
}

/* A decode step (one token after a prefill) reads its token and position from step_dev. */
static int is_decode_step(const struct cuda_session *s, int64_t T) { return T == 1 && s->has_prev; }

static enum q3n_status upload_step(struct cuda_session *s, int64_t token, struct q3n_error *err)
{
    /* step_host is free again: every forward ends with a stream synchronisation */
    s->step_host[0] = token;
    s->step_host[1] = s->cache_len;
    CU_CHECK(cudaMemcpyAsync(s->step_dev, s->step_host, 2 * sizeof(int64_t), cudaMemcpyHostToDevice, s->stream));
    return Q3N_OK;
}

/* After the device work of T tokens at pos0: the MTP's copy of the final hidden, positions. */
static enum q3n_status forward_done(struct cuda_session *s, int64_t T, int64_t pos0, struct q3n_error *err)
{
    const int64_t D = s->cfg.hidden_size;
    if (s->last_hidden)
        CU_CHECK(cudaMemcpyAsync(ACT(s->last_hidden, pos0 * D), s->w.xn, s->as * (size_t)(T * D),
                                 cudaMemcpyDeviceToDevice, s->stream));
    s->last_T = T;
    s->last_pos0 = pos0;
    s->cache_len += T;
    s->has_prev = 1;
    return Q3N_OK;
}

/* Runs the T tokens through every layer; leaves the final-normed hidden state in w.xn. */
static enum q3n_status forward_body(struct cuda_session *s, const int64_t *tokens, int64_t T,
                                    const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    const struct q3n_config *c = &s->cfg;
    struct work *w = &s->w;
    const int64_t pos0 = s->cache_len;
    Q3N_TRY(check_tokens(s, tokens, T, err));
    const int decode = is_decode_step(s, T);
    if (decode) {
        Q3N_TRY(upload_step(s, tokens[0], err));
        s->ran_decode_eager = 1;
    } else {
        CU_CHECK(cudaMemcpyAsync(w->tokens, tokens, sizeof(int64_t) * (size_t)T, cudaMemcpyHostToDevice, s->stream));
    }
    const int prof = s->profile && c->num_hidden_layers <= 64;
    const struct pass ps = {T, pos0, decode ? s->step_dev + 1 : NULL, prof, !(taps && taps->fn)};
    if (prof) CU_CHECK(cudaEventRecord(s->ev[2 * 4 * 64], s->stream));
    Q3N_TRY(forward_layers(s, decode ? s->step_dev : w->tokens, &ps, taps, err));
    if (prof) {
        CU_CHECK(cudaEventRecord(s->ev[2 * 4 * 64 + 1], s->stream));
        CU_CHECK(cudaEventSynchronize(s->ev[2 * 4 * 64 + 1]));
        float total = 0, ms = 0;
        CU_CHECK(cudaEventElapsedTime(&total, s->ev[2 * 4 * 64], s->ev[2 * 4 * 64 + 1]));
        double parts = 0;
        for (int64_t l = 0; l < c->num_hidden_layers; l++) {
            CU_CHECK(cudaEventElapsedTime(&ms, s->ev[8 * l], s->ev[8 * l + 1]));
            s->prof_ms[c->layer_type[l] == Q3N_LAYER_FULL_ATTENTION ? 1 : 0] += ms;
            parts += ms;
            CU_CHECK(cudaEventElapsedTime(&ms, s->ev[8 * l + 2], s->ev[8 * l + 3]));
            s->prof_ms[2] += ms;
            parts += ms;
        }
        s->prof_ms[3] += total - parts;
    }
    Q3N_TRY(forward_done(s, T, pos0, err));
    describe_build(s);
    return Q3N_OK;
}

/* lbuf32 [n, V] = float32(lm_head(rows r0..r0+n-1 of w.xn)), n <= LM_CHUNK (n == 1: the GEMV). */
static enum q3n_status lm_head_chunk(struct cuda_session *s, int64_t r0, int64_t n, struct q3n_error *err)
{
    const int64_t D = s->cfg.hidden_size, V = s->cfg.vocab_size;
    Q3N_TRY(cuda_linear_forward(s->w.lbuf, ACT(s->w.xn, r0 * D), s->lm_head, NULL, n, V, D, s->dt, s->blas, s->stream,
                                err));
    return cuda_to_f32(s->w.lbuf32, s->w.lbuf, n, V, V, s->dt, s->stream, err);
}

/* logits [rows, V] float32 on the host for rows r0.. of w.xn. */
static enum q3n_status lm_head_rows(struct cuda_session *s, float *logits, int64_t r0, int64_t rows,
                                    struct q3n_error *err)
{
    const int64_t V = s->cfg.vocab_size;
    for (int64_t r = 0; r < rows; r += LM_CHUNK) {
        const int64_t n = rows - r < LM_CHUNK ? rows - r : LM_CHUNK;
        Q3N_TRY(lm_head_chunk(s, r0 + r, n, err));
        CU_CHECK(cudaMemcpyAsync(logits + r * V, s->w.lbuf32, sizeof(float) * (size_t)(n * V), cudaMemcpyDeviceToHost,
                                 s->stream));
    }
    CU_CHECK(cudaStreamSynchronize(s->stream));
    return Q3N_OK;
}

/* ---- the decode step as a CUDA graph ---- */

/* The graph serves a decode step with taps off, no forced routing and no profile (its events
 * cannot sit inside a graph), unless switched off or its capture failed. */
static int graph_eligible(const struct cuda_session *s, int64_t T, const struct q3n_tap_sink *taps)
{
    return is_decode_step(s, T) && !s->graph_off && s->graph_state >= 0 && !(taps && taps->fn) &&
           !s->opt.forced_routing && !s->profile;
}

/* logits_pin [V] = float32 logits of w.xn row 0, in LM_SPLIT blocks of lm_head rows: block i's
 * conversion and copy to the (pinned) host run on cstream while block i+1's GEMV runs on the
 * session's stream, which waits for the last copy at the end. The one-row GEMV's sums do not
 * depend on the block split, so the logits are bitwise those of lm_head_rows (f32 mode, where
 * cuBLAS might choose by shape, keeps one block). */
static enum q3n_status lm_head_to_host(struct cuda_session *s, struct q3n_error *err)
{
    const int64_t D = s->cfg.hidden_size, V = s->cfg.vocab_size;
    const int nb = s->dt == Q3N_COMPUTE_BF16 ? LM_SPLIT : 1;
    const int64_t rows = (V / nb + 7) / 8 * 8; /* 16-byte aligned blocks of W */
    for (int i = 0; i < nb; i++) {
        const int64_t r0 = i * rows, n = i == nb - 1 || rows > V - r0 ? V - r0 : rows;
        if (n <= 0) break;
        Q3N_TRY(cuda_linear_forward(ACT(s->w.lbuf, r0), s->w.xn, ACT(s->lm_head, r0 * D), NULL, 1, n, D, s->dt, s->blas,
                                    s->stream, err));
        CU_CHECK(cudaEventRecord(s->lev[i], s->stream));
        CU_CHECK(cudaStreamWaitEvent(s->cstream, s->lev[i], 0));
        Q3N_TRY(cuda_to_f32(s->w.lbuf32 + r0, ACT(s->w.lbuf, r0), 1, n, n, s->dt, s->cstream, err));
        CU_CHECK(cudaMemcpyAsync(s->logits_pin + r0, s->w.lbuf32 + r0, sizeof(float) * (size_t)n,
                                 cudaMemcpyDeviceToHost, s->cstream));
    }
    CU_CHECK(cudaEventRecord(s->lev[LM_SPLIT], s->cstream));
    CU_CHECK(cudaStreamWaitEvent(s->stream, s->lev[LM_SPLIT], 0));
    return Q3N_OK;
}

/* The device work of one decode step, token and position read from step_dev: the launches of
 * the eager T == 1 forward (forward_body), then the lm_head with its copy to logits_pin. */
static enum q3n_status step_device(struct cuda_session *s, struct q3n_error *err)
{
    const struct pass ps = {1, s->cache_len, s->step_dev + 1, 0, 1};
    Q3N_TRY(forward_layers(s, s->step_dev, &ps, NULL, err));
    return lm_head_to_host(s, err);
}

/* Captures step_device once (graph_state 1); on failure notes why in graph_why and sets
 * graph_state -1, so the session stays eager. Nothing of a capture runs on the device. */
static void capture_step(struct cuda_session *s)
{
    struct q3n_error e = {};
    const uint64_t saved = ran_mask(s);
    ran_set(s, 0);
    cudaGraph_t g = NULL;
    enum q3n_status st = Q3N_OK;
    cudaError_t ce = cudaStreamBeginCapture(s->stream, cudaStreamCaptureModeThreadLocal);
    if (ce == cudaSuccess) {
        st = step_device(s, &e);
        ce = cudaStreamEndCapture(s->stream, &g); /* always ends the capture */
    }
    s->graph_ran = ran_mask(s);
    ran_set(s, saved);
    if (ce == cudaSuccess && st == Q3N_OK) ce = cudaGraphInstantiate(&s->graph_exec, g, 0);
    if (ce == cudaSuccess && st == Q3N_OK) {
        s->graph = g;
        s->graph_state = 1;
        return;
    }
    snprintf(s->graph_why, sizeof s->graph_why, "%.90s", st != Q3N_OK ? e.msg : cudaGetErrorString(ce));
    (void)cudaGetLastError();
    if (g) cudaGraphDestroy(g);
    s->graph_exec = NULL;
    s->graph_state = -1;
}

static double host_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
}

/* One decode step through the graph (captured on first use): copy the token and position in,
 * replay (its last nodes copy the logits to pinned memory), copy them to the caller. */
static enum q3n_status graph_step(struct cuda_session *s, float *logits, const int64_t *tokens, struct q3n_error *err)
{
    const int64_t pos0 = s->cache_len, V = s->cfg.vocab_size;
    Q3N_TRY(check_tokens(s, tokens, 1, err));
    Q3N_TRY(upload_step(s, tokens[0], err));
    if (s->graph_state == 0) capture_step(s);
    if (s->graph_state == 1) {
        for (int i = 0; i < 3; i++)
            if (!s->gev[i]) CU_CHECK(cudaEventCreate(&s->gev[i]));
        CU_CHECK(cudaEventRecord(s->gev[0], s->stream));
        CU_CHECK(cudaGraphLaunch(s->graph_exec, s->stream));
        CU_CHECK(cudaEventRecord(s->gev[1], s->stream));
        ran_set(s, ran_or(ran_mask(s), s->graph_ran));
        s->ran_decode_graph = 1;
    } else {
        Q3N_TRY(step_device(s, err));
        s->ran_decode_eager = 1;
    }
    Q3N_TRY(forward_done(s, 1, pos0, err));
    CU_CHECK(cudaStreamSynchronize(s->stream));
    const double t0 = host_ms();
    memcpy(logits, s->logits_pin, sizeof(float) * (size_t)V);
    if (s->graph_state == 1) {
        float a = 0;
        CU_CHECK(cudaEventElapsedTime(&a, s->gev[0], s->gev[1]));
        s->gms[0] += a;
        s->gms[1] += host_ms() - t0;
        s->gsteps++;
    }
    describe_build(s);
    return Q3N_OK;
}

static enum q3n_status cuda_forward(void *session, float *logits, const int64_t *tokens, int64_t T,
                                    const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    struct cuda_session *s = (struct cuda_session *)session;
    if (graph_eligible(s, T, taps)) return graph_step(s, logits, tokens, err);
    Q3N_TRY(forward_body(s, tokens, T, taps, err));
    return lm_head_rows(s, logits, 0, T, err);
}

extern "C" enum q3n_status cuda_session_forward_last(void *session, float *logits, const int64_t *tokens, int64_t T,
                                                     struct q3n_error *err)
{
    struct cuda_session *s = (struct cuda_session *)session;
    if (graph_eligible(s, T, NULL)) return graph_step(s, logits, tokens, err);
    Q3N_TRY(forward_body(s, tokens, T, NULL, err));
    return lm_head_rows(s, logits, T - 1, 1, err);
}

extern "C" enum q3n_status cuda_session_decode_graph(void *session, int on, struct q3n_error *err)
{
    struct cuda_session *s = (struct cuda_session *)session;
    (void)err;
    s->graph_off = !on;
    return Q3N_OK;
}

extern "C" enum q3n_status cuda_session_decode_times(void *session, double *graph_ms, double *copy_ms,
                                                     struct q3n_error *err)
{
    struct cuda_session *s = (struct cuda_session *)session;
    (void)err;
    const double n = s->gsteps ? (double)s->gsteps : 1.0;
    if (graph_ms) *graph_ms = s->gms[0] / n;
    if (copy_ms) *copy_ms = s->gms[1] / n;
    s->gms[0] = s->gms[1] = 0;
    s->gsteps = 0;
    return Q3N_OK;
}

extern "C" const char *cuda_session_graph_status(void *session)
{
    struct cuda_session *s = (struct cuda_session *)session;
    return s->graph_state > 0 ? "captured" : s->graph_state < 0 ? s->graph_why : "not captured yet";
}

extern "C" enum q3n_status cuda_session_profile(void *session, int on, double *ms4, struct q3n_error *err)
{
    struct cuda_session *s = (struct cuda_session *)session;
    if (on && !ms4 && !s->profile) {
        for (size_t i = 0; i < sizeof s->ev / sizeof s->ev[0]; i++)
            if (!s->ev[i]) CU_CHECK(cudaEventCreate(&s->ev[i]));
        s->profile = 1;
    }
    if (!on || ms4) s->profile = 0;
    if (ms4)
        for (int i = 0; i < 4; i++) ms4[i] = s->prof_ms[i];
    for (int i = 0; i < 4; i++) s->prof_ms[i] = 0;
    return Q3N_OK;
}

extern "C" enum q3n_status cuda_session_sync(void *session, struct q3n_error *err)
{
    struct cuda_session *s = (struct cuda_session *)session;
    CU_CHECK(cudaStreamSynchronize(s->stream));
    return Q3N_OK;
}

/* MTP head on the last forward's positions pos0 .. pos0+T-2 (as fast/cpu and ref): row t joins
 * norm_e(embed(tokens[t+1])) and norm_h(final hidden of pos0+t), fc, the MTP decoder layer at RoPE
 * positions pos0+t with its own KV cache, norm, lm_head. mtp_logits [T-1, V]. */
static enum q3n_status cuda_forward_mtp(void *session, float *mtp_logits, const int64_t *tokens, int64_t T,
                                        const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    struct cuda_session *s = (struct cuda_session *)session;
    const struct q3n_config *c = &s->cfg;
    struct work *w = &s->w;
    const enum q3n_compute_dtype dt = s->dt;
    const int64_t D = c->hidden_size, Lm = c->num_hidden_layers;
    if (!s->has_mtp) return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "cuda: the model has no MTP layer");
    if (s->last_T < 1 || T != s->last_T)
        return q3n_error_set(err, Q3N_ERR_USAGE, "cuda: forward_mtp needs the %lld tokens of the last forward (got %lld)",
                             (long long)s->last_T, (long long)T);
    if (s->mtp_len != s->last_pos0)
        return q3n_error_set(err, Q3N_ERR_USAGE, "cuda: the MTP cache holds %lld positions, the last forward began at %lld",
                             (long long)s->mtp_len, (long long)s->last_pos0);
    for (int64_t t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= c->vocab_size)
            return q3n_error_set(err, Q3N_ERR_USAGE, "cuda: token %lld at %lld outside vocab %lld",
                                 (long long)tokens[t], (long long)t, (long long)c->vocab_size);
    if (T == 1) return Q3N_OK;
    const int64_t n = T - 1, pos0 = s->last_pos0;
    CU_CHECK(cudaMemcpyAsync(w->tokens, tokens + 1, sizeof(int64_t) * (size_t)n, cudaMemcpyHostToDevice, s->stream));
    Q3N_TRY(cuda_embed_forward(w->y, w->tokens, s->embed, n, D, dt, s->stream, err));
    Q3N_TRY(cuda_rmsnorm_forward(w->xn, w->y, s->mtp_norm_e, n, D, c->rms_norm_eps, dt, s->stream, err));
    TAPA2(w->xn, n, D, "mtp.pre_fc_norm_embedding.out");
    Q3N_TRY(cuda_rmsnorm_forward(w->eo, ACT(s->last_hidden, pos0 * D), s->mtp_norm_h, n, D, c->rms_norm_eps, dt,
                                 s->stream, err));
    TAPA2(w->eo, n, D, "mtp.pre_fc_norm_hidden.out");
    /* cat [n, 2D] = [embedding | hidden] */
    CU_CHECK(cudaMemcpy2DAsync(w->cat, 2 * D * s->as, w->xn, D * s->as, D * s->as, (size_t)n,
                               cudaMemcpyDeviceToDevice, s->stream));
    CU_CHECK(cudaMemcpy2DAsync(ACT(w->cat, D), 2 * D * s->as, w->eo, D * s->as, D * s->as, (size_t)n,
                               cudaMemcpyDeviceToDevice, s->stream));
    Q3N_TRY(cuda_linear_forward(w->h, w->cat, s->mtp_fc, NULL, n, D, 2 * D, dt, s->blas, s->stream, err));
    TAPA2(w->h, n, D, "mtp.fc.out");
    const struct pass ps = {n, pos0, NULL, 0, 0};
    Q3N_TRY(decoder_layer(s, Lm, "mtp.layers.0", &ps, 0, taps, err));
    s->mtp_len += n;
    Q3N_TRY(cuda_rmsnorm_forward(w->xn, w->h, s->mtp_norm, n, D, c->rms_norm_eps, dt, s->stream, err));
    TAPA2(w->xn, n, D, "mtp.norm.out");
    return lm_head_rows(s, mtp_logits, 0, n, err);
}

static void cuda_reset(void *session)
{
    struct cuda_session *s = (struct cuda_session *)session;
    struct q3n_error e;
    if (s) (void)reset_caches(s, &e);
}

static const char *cuda_describe(void *session)
{
    struct cuda_session *s = (struct cuda_session *)session;
    if (!s->desc[0]) describe_build(s);
    return s->desc;
}

static void cuda_close(void *session)
{
    struct cuda_session *s = (struct cuda_session *)session;
    if (!s) return;
    if (s->stream) cudaStreamSynchronize(s->stream);
    for (int i = 0; i < s->nallocs; i++) cudaFree(s->allocs[i]);
    if (s->tap_dev) cudaFree(s->tap_dev);
    for (size_t i = 0; i < sizeof s->ev / sizeof s->ev[0]; i++)
        if (s->ev[i]) cudaEventDestroy(s->ev[i]);
    for (int i = 0; i < 3; i++)
        if (s->gev[i]) cudaEventDestroy(s->gev[i]);
    if (s->graph_exec) cudaGraphExecDestroy(s->graph_exec);
    if (s->graph) cudaGraphDestroy(s->graph);
    if (s->step_host) cudaFreeHost(s->step_host);
    if (s->logits_pin) cudaFreeHost(s->logits_pin);
    for (int i = 0; i <= LM_SPLIT; i++)
        if (s->lev[i]) cudaEventDestroy(s->lev[i]);
    if (s->cstream) cudaStreamDestroy(s->cstream);
    if (s->blas) cublasDestroy(s->blas);
    if (s->stream) cudaStreamDestroy(s->stream);
    free(s->tap_host);
    free(s->host_i32);
    free(s->host_counts);
    free(s->layers);
    free(s);
}

extern "C" const struct q3n_impl cuda_impl = {
    "cuda", cuda_open, cuda_forward, cuda_forward_mtp, cuda_reset, cuda_describe, cuda_close,
};
