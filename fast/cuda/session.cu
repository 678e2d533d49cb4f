/* session.cu — the CUDA session's device state (session.h): buffers, weights uploaded from a
 * q3n_model or drawn on the device, caches and the work area sized for max_tokens, and open. */
#include "session.h"

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
int stacked(const struct cuda_session *s, const void *a, int64_t a_rows, const void *b, int64_t D)
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
    DALLOC(w->permscr, cuda_moe_permute_scratch(Tm, E, K) * 4);
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

enum q3n_status reset_caches(struct cuda_session *s, struct q3n_error *err)
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
    s->ran_decode_graph = s->ran_decode_eager = s->ran_glue = s->ran_side = s->ran_qk_prep = 0;
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
    for (int i = 0; i < LM_SPLIT; i++) CU_CHECK(cudaEventCreateWithFlags(&s->hev[i], cudaEventDisableTiming));
    CU_CHECK(cudaMallocHost((void **)&s->logits_pin, sizeof(float) * (size_t)cfg->vocab_size));
    if (TC_PIPE_DEFAULT) { /* the delta rule's scan on a stream of the highest priority (cuda_ops.h) */
        int least = 0, greatest = 0;
        CU_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
        CU_CHECK(cudaStreamCreateWithPriority(&s->tpipe.stream, cudaStreamNonBlocking, greatest));
        CU_CHECK(cudaEventCreateWithFlags(&s->tpipe.fork, cudaEventDisableTiming));
        CU_CHECK(cudaEventCreateWithFlags(&s->tpipe.join, cudaEventDisableTiming));
    }
    /* the prefill MoE blocks' shared expert on a second stream (side_stream.cu says why) */
    return cuda_session_shared_overlap(s, SHARED_OVERLAP_DEFAULT, err);
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

enum q3n_status cuda_open(void **session, const struct q3n_model *model, const struct q3n_run_options *opt,
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
    if (st == Q3N_OK) st = pack_session_experts(s, err);
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
    if (st == Q3N_OK) st = pack_session_experts(s, err);
    if (st == Q3N_OK) st = alloc_work(s, err);
    if (st == Q3N_OK) st = reset_caches(s, err);
    if (st != Q3N_OK) {
        cuda_close(s);
        return st;
    }
    *session = s;
    return Q3N_OK;
}
