/* blocks.cu — the layer blocks of the CUDA session (session.h) as lists of cuda_ launches: the
 * Gated DeltaNet mixer, the gated attention mixer, the MoE / dense MLP block, and the taps that copy
 * their tensors to the host when a sink is on. */
#include "session.h"

/* ---- taps ------------------------------------------------------------------------------- */

/* tap_dev: see session.h */
enum q3n_status tap_dev(struct cuda_session *s, const struct q3n_tap_sink *taps, int isact, void *d,
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


/* ---- blocks ------------------------------------------------------------------------------ */
/* ---- the side stream (side_stream.cu): independent prefill GEMMs of a block beside each other ---- */

/* On for prefills (T > 1) with taps off, where the session has the side stream. */
static int side_on(const struct cuda_session *s, int tapping, int64_t T)
{
    return s->shared_overlap && s->sstream && !tapping && T > 1;
}
/* The side stream waits for everything queued so far on the session's stream. */
static enum q3n_status side_fork(struct cuda_session *s, struct q3n_error *err)
{
    CU_CHECK(cudaEventRecord(s->fork_ev, s->stream));
    CU_CHECK(cudaStreamWaitEvent(s->sstream, s->fork_ev, 0));
    return Q3N_OK;
}
/* What the side stream was given since side_fork is marked done (side_done); the session's stream
 * waits for it before its first reader (side_join). */
static enum q3n_status side_done(struct cuda_session *s, struct q3n_error *err)
{
    CU_CHECK(cudaEventRecord(s->join_ev, s->sstream));
    return Q3N_OK;
}
static enum q3n_status side_join(struct cuda_session *s, struct q3n_error *err)
{
    CU_CHECK(cudaStreamWaitEvent(s->stream, s->join_ev, 0));
    return Q3N_OK;
}


enum q3n_status linear_attn_block(struct cuda_session *s, int64_t l, const char *p, int64_t T,
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
    } else if (side_on(s, taps && taps->fn, T)) {
        /* prefill: in_proj_ba (a few dozen columns, a fraction of a wave) beside in_proj_qkvz */
        Q3N_TRY(side_fork(s, err));
        Q3N_TRY(cuda_linear_forward(w->ba, w->xn, L->ba, NULL, T, 2 * NV, D, dt, s->sblas, s->sstream, err));
        Q3N_TRY(side_done(s, err));
        Q3N_TRY(cuda_linear_forward(w->big, w->xn, L->qkvz, NULL, T, Q, D, dt, s->blas, s->stream, err));
        Q3N_TRY(side_join(s, err));
        s->ran_side |= RAN_SIDE_BA;
    } else {
        Q3N_TRY(cuda_linear_forward(w->big, w->xn, L->qkvz, NULL, T, Q, D, dt, s->blas, s->stream, err));
        Q3N_TRY(cuda_linear_forward(w->ba, w->xn, L->ba, NULL, T, 2 * NV, D, dt, s->blas, s->stream, err));
    }
    TAPA2(w->big, T, Q, "%s.linear_attn.in_proj_qkvz.out", p);
    TAPA2(ba, T, 2 * NV, "%s.linear_attn.in_proj_ba.out", p);
    if (T > 1 && !(taps && taps->fn) && cuda_deltanet_prep_supported(NK, NV, DK, DV, Kc)) {
        /* prefill, taps off: split + conv + state + q/k l2 norms + v + gates in one pass over the
         * in_proj outputs, q/k/v in bf16 for the tensor-core delta rule, z read in place by the
         * gated norm; bitwise the launches below (fast/cuda/dev/test_dn_prep) */
        const int64_t C = s->opt.chunk_size;
        const int qkv_bf16 = dt == Q3N_COMPUTE_BF16 && cuda_delta_rule_chunked_tc_supported(DK, DV, C);
        Q3N_TRY(cuda_deltanet_prep_forward(w->qf, w->kf, w->vf, w->g, w->beta, L->conv_state, w->big, ba, L->conv_w,
                                           L->A_log, L->dt_bias, T, NK, NV, DK, DV, Kc, 1e-6,
                                           (float)pow((double)DK, -0.5), 0, qkv_bf16, dt, s->stream, err));
        s->dn_kernel = cuda_delta_rule_chunked_kernel_for(DK, DV, C, dt);
        /* the scan beside the prep where the session made their stream (TC_PIPE_DEFAULT) */
        const int piped = qkv_bf16 && s->tpipe.stream && cuda_delta_rule_chunked_tc_pipes(NV);
        if (qkv_bf16)
            Q3N_TRY(cuda_delta_rule_chunked_tc_bf16_piped(w->core, L->rec_state, w->qf, w->kf, w->vf, w->g, w->beta,
                                                          w->drs, T, NK, NV, DK, DV, C, 0, s->stream,
                                                          s->tpipe.stream ? &s->tpipe : NULL, err));
        else
            Q3N_TRY(cuda_delta_rule_chunked(w->core, L->rec_state, w->qf, w->kf, w->vf, w->g, w->beta, w->drs, T, NK,
                                            NV, DK, DV, C, dt, s->stream, err));
        s->ran_chunked = 2; /* describe: +dn_prep_v1 or v2 */
        if (piped) s->ran_side |= RAN_SIDE_TC_SCAN;
        if (qkv_bf16 && cuda_delta_rule_tc_prep_ver_for(NK, NV, piped) == 2) s->ran_glue |= RAN_GLUE_TC_PREP2;
        if (cuda_deltanet_prep_ver_for(DK, DV, Kc) == 2) s->ran_glue |= RAN_GLUE_DN_PREP;
        Q3N_TRY(cuda_deltanet_gated_norm_forward(w->gn, w->core, w->big, L->gnorm, T, NK, NV, DK, DV, c->rms_norm_eps,
                                                 dt, s->stream, err));
        if (cuda_deltanet_gated_norm_ver_for(dt) == 2) s->ran_glue |= RAN_GLUE_GATED_NORM;
        return cuda_linear_forward(w->y, w->gn, L->out_proj, NULL, T, D, NV * DV, dt, s->blas, s->stream, err);
    }
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
enum q3n_status attn_block(struct cuda_session *s, int64_t l, const char *p, int64_t T, int64_t pos0,
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
        /* prefill with the side stream: k_proj and v_proj (GQA: NKV heads) beside q_proj */
        const int side = side_on(s, taps && taps->fn, T);
        cublasHandle_t kvb = side ? s->sblas : s->blas;
        cudaStream_t kvs = side ? s->sstream : s->stream;
        if (side) Q3N_TRY(side_fork(s, err));
        Q3N_TRY(cuda_linear_forward(kp, w->xn, L->k_proj, L->k_bias, T, NKH, D, dt, kvb, kvs, err));
        Q3N_TRY(cuda_linear_forward(vp, w->xn, L->v_proj, L->v_bias, T, NKH, D, dt, kvb, kvs, err));
        if (side) Q3N_TRY(side_done(s, err));
        Q3N_TRY(cuda_linear_forward(qg, w->xn, L->q_proj, L->q_bias, T, NQ, D, dt, s->blas, s->stream, err));
        if (side) {
            Q3N_TRY(side_join(s, err));
            s->ran_side |= RAN_SIDE_KV;
        }
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
    const int qkv = cuda_attn_qk_prep_ver_for(T, HD, dt);
    if (qkv >= 2 && qkv > s->ran_qk_prep) s->ran_qk_prep = qkv;
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
        s->attn_decode_kernel =
            T == 1 ? cuda_attention_decode_kernel(NH, NKV, HD, dt, 0) : cuda_attention_kernel(T, HD, dt);
    }
    TAPA3(w->attn, T, NH, HD, "%s.self_attn.attn_out", p);
    Q3N_TRY(cuda_sigmoid_gate_forward(w->gated, w->attn, ACT(qg, HD), T, NH, HD, 2 * HD, dt, s->stream, err));
    if (cuda_sigmoid_gate_ver_for(w->gated, w->attn, ACT(qg, HD), T, NH, HD, 2 * HD, dt) == 2)
        s->ran_glue |= RAN_GLUE_GATE;
    TAPA2(w->gated, T, NH * HD, "%s.self_attn.gated_out", p);
    Q3N_TRY(cuda_linear_forward(w->y, w->gated, L->o_proj, L->o_bias, T, D, NH * HD, dt, s->blas, s->stream, err));
    TAPA2(w->y, T, D, "%s.self_attn.out", p);
    return Q3N_OK;
}

/* Grouped v5's gate_up reads its A rows gathered from x (row p = x[perm[p] / K]) by default. With
 * MOE_PERMUTED_X_MIN_ROWS > 0, once the experts get at least that many rows each on average, x's rows
 * are first written once in expert order (cuda_gather_rows into xperm: T K rows, 671 MB at T = 16384)
 * and gate_up reads them as whole contiguous tiles instead: the same values in the same order, so
 * the same bits. The idea (session 18's ncu): at T = 16384 gate_up's consumers wait on the gathered
 * rows, x does not fit in L2 and each row comes from DRAM again for most of its 10 experts.
 * Measured on an H100 in session 19, and off (0): gate_up on the permuted rows takes 1.39 / 1.43 ms
 * at T = 16384, the same as on the gathered rows (1.39 / 1.42 in the same passes; test_moe_prefill
 * --only l2a, "permuted x"), so the gather is not what holds gate_up back; the permutation itself
 * costs 0.74-0.76 ms a layer. bench_model T = 16384 with 160: 26.00 -> 28.39 ms (+9.2 %), logits
 * bitwise the same (logs/session19_c2_ab_summary.md). */
#ifndef MOE_PERMUTED_X_MIN_ROWS
#define MOE_PERMUTED_X_MIN_ROWS 0
#endif

/* Routed experts over the permuted rows: one GEMM pair per expert that received rows. */
static enum q3n_status experts_gemm(struct cuda_session *s, struct dev_layer *L, int64_t T, struct q3n_error *err)
{
    const struct q3n_config *c = &s->cfg;
    struct work *w = &s->w;
    const enum q3n_compute_dtype dt = s->dt;
    const int64_t D = c->hidden_size, E = c->num_experts, K = c->num_experts_per_tok, I = c->moe_intermediate_size;
    if (cuda_moe_permute_v2_ok(E)) {
        Q3N_TRY(cuda_moe_permute_v2(w->perm, w->pos, w->counts, w->offsets, w->permscr, w->topi, T, E, K, s->stream,
                                    err));
        const int scan = cuda_moe_permute_scan_ver_for(E);
        s->ran_glue |= scan == 3 ? RAN_GLUE_SCAN3 : scan == 2 ? RAN_GLUE_SCAN : 0;
    } else
        Q3N_TRY(cuda_moe_permute(w->perm, w->pos, w->counts, w->offsets, w->topi, T, E, K, s->stream, err));
    /* v3/v4: gather fused into gate_up's A load, SwiGLU into its epilogue; one tile table for both.
     * Packed experts (experts_layout.cu made sure these conditions hold): v5 from the packed layout. */
    if (s->experts_packed ||
        (cuda_moe_grouped_v3_ok(2 * I, D, 1, dt) && cuda_moe_grouped_v3_ok(D, I, 0, dt) && T * K / 128 + E + 1 <= 65535)) {
        Q3N_TRY(cuda_moe_grouped_tiles_v3(w->tiles, w->counts, w->offsets, T * K, E, s->stream, err));
        /* v5 (warp-specialised wgmma) on Hopper once experts get more than a tile of rows, else v3
         * (mma.sync): at ~80 rows per expert both stream the weights and v3 is as fast */
        const int v5 = s->experts_packed || (cuda_moe_grouped_v4_supported() && cuda_moe_grouped_v4_pays(T * K, E));
        typedef enum q3n_status (*grouped_fn)(void *, const void *, const int32_t *, int64_t, const void *,
                                              const int32_t *, const int32_t *, const int32_t *, int64_t, int64_t,
                                              int64_t, int64_t, int, enum q3n_compute_dtype, cudaStream_t,
                                              struct q3n_error *);
        const grouped_fn gemm = s->experts_packed ? cuda_moe_grouped_gemm_v5_packed
                                : v5              ? cuda_moe_grouped_gemm_v5
                                                  : cuda_moe_grouped_gemm_v3;
        const void *gu_x = w->xn;
        const int32_t *gu_rows = w->perm;
        int64_t gu_div = K;
        if (v5 && !s->experts_packed && MOE_PERMUTED_X_MIN_ROWS > 0 && T * K >= (int64_t)MOE_PERMUTED_X_MIN_ROWS * E) {
            Q3N_TRY(cuda_gather_rows(w->xperm, w->xn, w->perm, T * K, K, D, dt, s->stream, err));
            gu_x = w->xperm, gu_rows = NULL, gu_div = 1;
            s->ran_glue |= RAN_GLUE_PERMUTED_X;
        }
        Q3N_TRY(gemm(w->hmid, gu_x, gu_rows, gu_div, L->experts_gu, w->counts, w->offsets, w->tiles, T * K, E, 2 * I,
                     D, 1, dt, s->stream, err));
        Q3N_TRY(gemm(w->ey, w->hmid, NULL, 1, L->experts_dn, w->counts, w->offsets, w->tiles, T * K, E, D, I, 0, dt,
                     s->stream, err));
        s->ran_moe_grouped = v5 ? 5 : 3; /* describe: grouped_v5 / grouped_v3 (+ experts=packed) */
        return Q3N_OK;
    }
    /* from here on every reader takes the checkpoint layout; experts_layout.cu packs only where the
     * branch above is always taken */
    if (s->experts_packed)
        return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "cuda: packed experts reached the checkpoint-layout MoE path");
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

/* out = down(SwiGLU(gate_up xn)) on the given stream and cuBLAS handle (the session's, or the side
 * stream's: side_stream.cu). */
static enum q3n_status dense_mlp_on(struct cuda_session *s, void *out, void *mid, const struct dev_mlp *m, int64_t T,
                                    cublasHandle_t blas, cudaStream_t stream, struct q3n_error *err)
{
    const int64_t D = s->cfg.hidden_size;
    Q3N_TRY(cuda_linear_forward(s->w.big, s->w.xn, m->gate_up, NULL, T, 2 * m->W, D, s->dt, blas, stream, err));
    Q3N_TRY(cuda_swiglu_forward(mid, s->w.big, T, m->W, s->dt, stream, err));
    return cuda_linear_forward(out, mid, m->down, NULL, T, D, m->W, s->dt, blas, stream, err);
}

static enum q3n_status dense_mlp(struct cuda_session *s, void *out, void *mid, const struct dev_mlp *m, int64_t T,
                                 struct q3n_error *err)
{
    return dense_mlp_on(s, out, mid, m, T, s->blas, s->stream, err);
}

/* The shared expert and its gate logit of a prefill MoE block, forked onto the side stream after
 * xn and joined before the combine (side_stream.cu says why it is bitwise the in-order result). */
static enum q3n_status shared_expert_fork(struct cuda_session *s, const struct dev_layer *L, int64_t T,
                                          struct q3n_error *err)
{
    Q3N_TRY(side_fork(s, err));
    Q3N_TRY(dense_mlp_on(s, s->w.sout, s->w.smid, &L->shared, T, s->sblas, s->sstream, err));
    Q3N_TRY(cuda_linear_forward(s->w.sg, s->w.xn, L->shared_gate, NULL, T, 1, s->cfg.hidden_size, s->dt, s->sblas,
                                s->sstream, err));
    return side_done(s, err);
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

enum q3n_status mlp_block(struct cuda_session *s, int64_t l, const char *p, int64_t T, int64_t pos0,
                          const float *fold_norm, int *folded, const struct q3n_tap_sink *taps,
                          struct q3n_error *err)
{
    *folded = 0;
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
    const int tapping = taps && taps->fn;
    /* prefill with the side stream on: the shared expert starts now, beside the routed chain */
    const int side = side_on(s, tapping, T) && L->shared.gate_up && T * K > GEMV_MAX_ROWS;
    if (side) {
        Q3N_TRY(shared_expert_fork(s, L, T, err));
        s->ran_side |= RAN_SIDE_SHARED;
    }
    Q3N_TRY(cuda_linear_forward(w->rlogits, w->xn, L->router, NULL, T, E, D, dt, s->blas, s->stream, err));
    TAPA2(w->rlogits, T, E, "%s.mlp.gate.logits", p);
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
        /* gemv_v2: two launches for routed + shared experts, the combine fused into the down GEMV
         * (reading the routed experts packed when the session packed them) */
        Q3N_TRY((s->experts_packed ? cuda_moe_gemv2_gate_up_packed : cuda_moe_gemv2_gate_up)(
            w->hmid, w->smid, w->sg, w->xn, w->topi, L->experts_gu, Ws ? L->shared.gate_up : NULL,
            Ws ? L->shared_gate : NULL, T, K, D, I, Ws, dt, s->stream, err));
        Q3N_TRY((s->experts_packed ? cuda_moe_gemv2_down_combine_packed : cuda_moe_gemv2_down_combine)(
            w->eo, w->y, w->sout, w->hmid, w->smid, w->topi, w->topw, L->experts_dn, Ws ? L->shared.down : NULL,
            w->sg, T, K, D, I, Ws, dt, s->stream, err));
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
        if (s->experts_packed) /* unreachable: packing requires cuda_moe_gemv2_ok */
            return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "cuda: packed experts reached the GEMV v1 path");
        Q3N_TRY(cuda_moe_experts_gemv(w->gu, w->xn, w->topi, L->experts_gu, T * K, K, 2 * I, D, dt, s->stream, err));
        Q3N_TRY(cuda_swiglu_forward(w->hmid, w->gu, T * K, I, dt, s->stream, err));
        Q3N_TRY(cuda_moe_experts_gemv(w->ey, w->hmid, w->topi, L->experts_dn, T * K, 1, D, I, dt, s->stream, err));
        s->ran_moe_gemv = 1;
    } else {
        Q3N_TRY(experts_gemm(s, L, T, err));
        pos = w->pos;
    }
    const void *shared = NULL, *sg = NULL;
    if (side) {
        Q3N_TRY(side_join(s, err));
        shared = w->sout;
        sg = w->sg;
    } else if (L->shared.gate_up) {
        Q3N_TRY(dense_mlp(s, w->sout, w->smid, &L->shared, T, err));
        TAPA2(w->sout, T, D, "%s.mlp.shared_expert.out", p);
        Q3N_TRY(cuda_linear_forward(w->sg, w->xn, L->shared_gate, NULL, T, 1, D, dt, s->blas, s->stream, err));
        TAPA2(w->sg, T, 1, "%s.mlp.shared_expert_gate.out", p);
        shared = w->sout;
        sg = w->sg;
    }
    if (fold_norm && !tapping && cuda_moe_combine_norm_ok(D, dt)) {
        Q3N_TRY(cuda_moe_combine_norm(w->h, w->xn, w->ey, pos, w->topw, shared, sg, fold_norm, c->rms_norm_eps, T,
                                      D, K, dt, s->stream, err));
        s->ran_glue |= RAN_GLUE_COMBINE_NORM;
        *folded = 1;
        return Q3N_OK;
    }
    Q3N_TRY(cuda_moe_combine(w->eo, w->y, w->ey, pos, w->topw, shared, sg, T, D, K, dt, s->stream, err));
    TAPA2(w->eo, T, D, "%s.mlp.experts.out", p);
    TAPA2(w->y, T, D, "%s.mlp.out", p);
    return Q3N_OK;
}
