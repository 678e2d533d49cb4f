/* model.cu — the CUDA session's forward (session.h): decoder layers over the blocks of blocks.cu,
 * the lm_head, the one-token decode step replayed from a CUDA graph, the MTP head, describe(),
 * per-phase profiling, and the harness's "cuda" implementation table. */
#include "session.h"

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

/* out = head and the names of the bits set in bits, joined by '+' ("" when none is set). */
struct bit_name {
    int bit;
    const char *name;
};
static void bit_names(char *out, size_t n, const char *head, int bits, const struct bit_name *tab, size_t k)
{
    out[0] = '\0';
    for (size_t i = 0; i < k; i++)
        if (bits & tab[i].bit)
            snprintf(out + strlen(out), n - strlen(out), "%s%s", out[0] ? "+" : head, tab[i].name);
}

/* Compact (verify stores "<prefill>; decode: <decode>" in 256 bytes). Names: dn = delta rule
 * (the first word of cuda_delta_rule_chunked_kernel_for(): chunk_v4 fp32 SIMT, chunk_tc_v2 bf16 tensor
 * cores, chunk_tc_v3 the same prep with the wgmma scan (sm_90); and of cuda_delta_rule_recurrent_kernel_for(): rec_v1, rec_v2 = the one-token step), attn = first word and version of cuda_attention_kernel() for the prefill and
 * the decode (flash_v3 = flash_mma_bf16_v3, rows_v1 = row/split-K kernel, decode_v3 = its split
 * decode kernel), moe grouped_v1 = grouped bf16 mma GEMM (grouped_v5/l2a: v5 with gate_up's gathered
 * rows read L2 evict_last, cuda_moe_grouped_v5_variant),
 * cublas = per-expert cuBLAS GEMMs, gemv_v1 = decode expert GEMV; gemm = cuBLAS, COMPUTE_32F,
 * default math (no TF32), +gemv1 = one-row bf16 projections by linear.cu's GEMV; decode=graph:
 * the one-token step replayed from its CUDA graph, decode=eager: launched op by op
 * ("(nocapture)": the capture failed, "(off)": graph switched off). */
static void describe_build(struct cuda_session *s)
{
    char dn[48] = "", at[48] = "", moe[48] = "", dec[32] = "", nm[32];
    if (s->ran_chunked) {
        const char *k = s->dn_kernel ? s->dn_kernel : "chunk_v4";
        /* ran_chunked 2: the fused prep (deltanet_prep.cu) fed it (taps off), 1: the tappable chain */
        snprintf(dn, sizeof dn, "%.*s/C%lld%s", (int)strcspn(k, "( "), k, (long long)s->opt.chunk_size,
                 s->ran_chunked < 2 ? "" : s->ran_glue & RAN_GLUE_DN_PREP ? "+dn_prep_v2" : "+dn_prep_v1");
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
    if (s->ran_moe_grouped)
        snprintf(moe, sizeof moe, "grouped_v%d%s", s->ran_moe_grouped,
                 s->ran_moe_grouped == 5 ? cuda_moe_grouped_v5_variant() : "");
    if (s->ran_moe_gemm) snprintf(moe + strlen(moe), sizeof moe - strlen(moe), "%scublas", moe[0] ? "+" : "");
    if (s->ran_moe_gemv)
        snprintf(moe + strlen(moe), sizeof moe - strlen(moe), "%sgemv_v%d", moe[0] ? "+" : "", s->ran_moe_gemv);
    if (s->ran_decode_graph)
        snprintf(dec, sizeof dec, " decode=graph");
    else if (s->ran_decode_eager)
        snprintf(dec, sizeof dec, " decode=eager%s", s->graph_state < 0 ? "(nocapture)" : s->graph_off ? "(off)" : "");
    /* experts=packed: the routed experts were re-laid out at open (experts_layout.cu); when packing was
     * asked for and refused, why */
    char ex[96] = "";
    if (s->experts_packed)
        snprintf(ex, sizeof ex, " experts=packed");
    else if (s->opt.pack_experts && s->pack_why)
        snprintf(ex, sizeof ex, " experts=checkpoint(%s)", s->pack_why);
    /* glue=: the kernels around the GEMMs that ran their v2 (session 9's; absent: all ran v1), and
     * norm_folds where the MoE combine or the embedding did the next norm (session 12) */
    static const struct bit_name glue_names[] = {{RAN_GLUE_GATE, "gate_v2"},         {RAN_GLUE_GATED_NORM, "gated_norm_v2"},
                                                 {RAN_GLUE_SCAN, "scan_v2"},         {RAN_GLUE_SCAN3, "scan_v3"},
                                                 {RAN_GLUE_COMBINE_NORM, "norm_folds"}, {RAN_GLUE_TC_PREP2, "tc_prep_v2"},
                                                 {RAN_GLUE_PERMUTED_X, "permuted_x"}};
    char glue[96] = "";
    if (s->ran_qk_prep) snprintf(glue, sizeof glue, " glue=qk_prep_v%d", s->ran_qk_prep);
    bit_names(glue + strlen(glue), sizeof glue - strlen(glue), glue[0] ? "+" : " glue=", s->ran_glue, glue_names,
              sizeof glue_names / sizeof glue_names[0]);
    /* side=: the prefill GEMMs that ran on the side stream (side_stream.cu) */
    static const struct bit_name side_names[] = {{RAN_SIDE_SHARED, "shared_expert"},
                                                 {RAN_SIDE_BA, "in_proj_ba"},
                                                 {RAN_SIDE_KV, "kv_proj"},
                                                 {RAN_SIDE_TC_SCAN, "delta_scan"}};
    char side[64];
    bit_names(side, sizeof side, " side=", s->ran_side, side_names, sizeof side_names / sizeof side_names[0]);
    snprintf(s->desc, sizeof s->desc, "cuda-%s gemm=cublas32F(noTF32)%s dn=%s attn=%s moe=%s%s%s%s%s",
             s->dt == Q3N_COMPUTE_BF16 ? "bf16" : "f32", s->dt == Q3N_COMPUTE_BF16 ? "+gemv1" : "", dn[0] ? dn : "-",
             at[0] ? at : "-", moe[0] ? moe : "-", glue, side, ex, dec);
}

/* The ran_* flags packed 8 bits each (a captured step's flags are replayed with the graph). */
static uint64_t ran_mask(const struct cuda_session *s)
{
    const int f[8] = {s->ran_chunked, s->ran_recurrent, s->ran_flash,      s->ran_rows,
                      s->ran_moe_gemm, s->ran_moe_gemv,  s->ran_moe_grouped, s->ran_glue};
    uint64_t m = 0;
    for (int i = 0; i < 8; i++) m |= (uint64_t)(f[i] & 0xff) << (8 * i);
    return m;
}

static void ran_set(struct cuda_session *s, uint64_t m)
{
    int *f[8] = {&s->ran_chunked, &s->ran_recurrent, &s->ran_flash,      &s->ran_rows,
                 &s->ran_moe_gemm, &s->ran_moe_gemv,  &s->ran_moe_grouped, &s->ran_glue};
    for (int i = 0; i < 8; i++) *f[i] = (int)(m >> (8 * i) & 0xff);
}

/* The flags of a and b together: each version the larger (the versions are ordered); ran_glue's
 * bits (byte 7) or'ed. */
static uint64_t ran_or(uint64_t a, uint64_t b)
{
    uint64_t m = 0;
    for (int i = 0; i < 7; i++) {
        const uint64_t x = a >> (8 * i) & 0xff, y = b >> (8 * i) & 0xff;
        m |= (x > y ? x : y) << (8 * i);
    }
    return m | ((a | b) & (uint64_t)0xff << 56);
}

/* How a forward runs its layers: T tokens from position pos0; dpos = that position on the
 * device (a decode token) or NULL; prof = per-phase events; fuse = each residual add folded
 * into the next norm (taps off only: no tap may see h between the add and the norm). */
struct pass {
    int64_t T, pos0;
    const int64_t *dpos;
    int prof, fuse;
};

/* What the layer before left for this layer's input norm. */
enum carry {
    CARRY_NONE,    /* h is final: xn = rmsnorm(h) */
    CARRY_PENDING, /* h += y is still to do: the input norm does it (h = T(h + y), xn = rmsnorm(h): one
                    * launch, the same roundings as add then norm) */
    CARRY_NORMED   /* the previous MoE block's combine did the add and this norm (next_norm below), or for
                    * layer 0 the embedding kernel did the norm */
};

/* One decoder layer on w.h (in place), taps under prefix p ("model.layers.3", "mtp.layers.0").
 * With ps->fuse this layer's own h += y is left pending in w.y, or, where the MoE combine can fold
 * them, done there together with the norm of weight next_norm (then *normed = 1). */
static enum q3n_status decoder_layer(struct cuda_session *s, int64_t l, const char *p, const struct pass *ps,
                                     enum carry carry, const float *next_norm, int *normed,
                                     const struct q3n_tap_sink *taps, struct q3n_error *err)
{
    const struct q3n_config *c = &s->cfg;
    struct work *w = &s->w;
    const enum q3n_compute_dtype dt = s->dt;
    const int64_t D = c->hidden_size, T = ps->T, pos0 = ps->pos0;
    const int prof = ps->prof;
    struct dev_layer *L = &s->layers[l];
    TAPA2(w->h, T, D, "%s.in", p);
    if (carry != CARRY_NORMED)
        Q3N_TRY(cuda_add_rmsnorm_forward(w->xn, w->h, carry == CARRY_PENDING ? w->y : NULL, L->in_norm, T, D,
                                         c->rms_norm_eps, dt, s->stream, err));
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
    Q3N_TRY(mlp_block(s, l, p, T, pos0, ps->fuse ? next_norm : NULL, normed, taps, err));
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
    enum carry carry = CARRY_NONE;
    if (ps->fuse && c->num_hidden_layers > 0 && cuda_embed_norm_ok(D, s->dt)) {
        /* taps off: the embedding with layer 0's input norm (bitwise the two launches) */
        Q3N_TRY(cuda_embed_norm_forward(w->h, w->xn, d_tokens, s->embed, s->layers[0].in_norm, c->rms_norm_eps, T, D,
                                        s->dt, s->stream, err));
        s->ran_glue |= RAN_GLUE_COMBINE_NORM;
        carry = CARRY_NORMED;
    } else
        Q3N_TRY(cuda_embed_forward(w->h, d_tokens, s->embed, T, D, s->dt, s->stream, err));
    TAPA2(w->h, T, D, "model.embed_tokens.out");
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        char p[48];
        snprintf(p, sizeof p, "model.layers.%d", (int)l);
        const float *next_norm = l + 1 < c->num_hidden_layers ? s->layers[l + 1].in_norm : s->final_norm;
        int normed = 0;
        Q3N_TRY(decoder_layer(s, l, p, ps, carry, next_norm, &normed, taps, err));
        carry = normed ? CARRY_NORMED : ps->fuse ? CARRY_PENDING : CARRY_NONE;
    }
    if (carry != CARRY_NORMED)
        Q3N_TRY(cuda_add_rmsnorm_forward(w->xn, w->h, carry == CARRY_PENDING ? w->y : NULL, s->final_norm, T, D,
                                         c->rms_norm_eps, s->dt, s->stream, err));
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

/* Rows [*r0, *r0 + *n) of block i of the decode lm_head's nb blocks: sizes halve from block to
 * block (8:4:2:1 of V for nb = 4), multiples of 8 rows (16-byte aligned blocks of W), the last block
 * takes the rest (*n may be 0 for a tiny V). The host copies block i out of logits_pin while the
 * GEMVs of the later blocks run (host memcpy ~0.5 ns per logit, GEMV ~1.5 ns per row), so after the
 * replay only the smallest block (V/15) is left to copy. */
static void lm_block(int64_t V, int nb, int i, int64_t *r0, int64_t *n)
{
    const int64_t tot = ((int64_t)1 << nb) - 1;
    int64_t a = 0;
    for (int k = 0; k < i; k++) a += V * ((int64_t)1 << (nb - 1 - k)) / tot / 8 * 8;
    *r0 = a;
    *n = i == nb - 1 ? V - a : V * ((int64_t)1 << (nb - 1 - i)) / tot / 8 * 8;
}
static int lm_blocks(const struct cuda_session *s) { return s->dt == Q3N_COMPUTE_BF16 ? LM_SPLIT : 1; }

/* logits_pin [V] = float32 logits of w.xn row 0, in lm_blocks() blocks of lm_head rows: block i's
 * conversion and copy to the (pinned) host run on cstream while block i+1's GEMV runs on the
 * session's stream, which waits for the last copy at the end; hev[i] (an external event node in the
 * graph) tells the host that block i is in logits_pin. The one-row GEMV's sums do not depend on the
 * block split, so the logits are bitwise those of lm_head_rows (f32 mode, where cuBLAS might choose
 * by shape, keeps one block). */
static enum q3n_status lm_head_to_host(struct cuda_session *s, struct q3n_error *err)
{
    const int64_t D = s->cfg.hidden_size, V = s->cfg.vocab_size;
    const int nb = lm_blocks(s);
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    CU_CHECK(cudaStreamIsCapturing(s->stream, &cs));
    for (int i = 0; i < nb; i++) {
        int64_t r0, n;
        lm_block(V, nb, i, &r0, &n);
        if (n <= 0) continue;
        Q3N_TRY(cuda_linear_forward(ACT(s->w.lbuf, r0), s->w.xn, ACT(s->lm_head, r0 * D), NULL, 1, n, D, s->dt, s->blas,
                                    s->stream, err));
        CU_CHECK(cudaEventRecord(s->lev[i], s->stream));
        CU_CHECK(cudaStreamWaitEvent(s->cstream, s->lev[i], 0));
        Q3N_TRY(cuda_to_f32(s->w.lbuf32 + r0, ACT(s->w.lbuf, r0), 1, n, n, s->dt, s->cstream, err));
        CU_CHECK(cudaMemcpyAsync(s->logits_pin + r0, s->w.lbuf32 + r0, sizeof(float) * (size_t)n,
                                 cudaMemcpyDeviceToHost, s->cstream));
        if (cs == cudaStreamCaptureStatusActive)
            CU_CHECK(cudaEventRecordWithFlags(s->hev[i], s->cstream, cudaEventRecordExternal));
        else
            CU_CHECK(cudaEventRecord(s->hev[i], s->cstream));
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
 * replay (its last nodes copy the logits to pinned memory block by block), copy each block to the
 * caller as soon as its event fires (all but the last while the device still runs the lm_head). */
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
    const int nb = lm_blocks(s);
    int64_t r0, n;
    for (int i = 0; i < nb - 1; i++) {
        lm_block(V, nb, i, &r0, &n);
        if (n <= 0) continue;
        CU_CHECK(cudaEventSynchronize(s->hev[i]));
        memcpy(logits + r0, s->logits_pin + r0, sizeof(float) * (size_t)n);
    }
    CU_CHECK(cudaStreamSynchronize(s->stream));
    const double t0 = host_ms(); /* the copy left after the replay: the last block */
    lm_block(V, nb, nb - 1, &r0, &n);
    if (n > 0) memcpy(logits + r0, s->logits_pin + r0, sizeof(float) * (size_t)n);
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
    int normed = 0;
    Q3N_TRY(decoder_layer(s, Lm, "mtp.layers.0", &ps, CARRY_NONE, NULL, &normed, taps, err));
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

void cuda_close(void *session)
{
    struct cuda_session *s = (struct cuda_session *)session;
    if (!s) return;
    if (s->stream) cudaStreamSynchronize(s->stream);
    side_stream_destroy(s); /* waits for its stream too: a failed block may have left it running */
    if (s->tpipe.stream) {
        cudaStreamSynchronize(s->tpipe.stream);
        cudaStreamDestroy(s->tpipe.stream);
    }
    if (s->tpipe.fork) cudaEventDestroy(s->tpipe.fork);
    if (s->tpipe.join) cudaEventDestroy(s->tpipe.join);
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
    for (int i = 0; i < LM_SPLIT; i++)
        if (s->hev[i]) cudaEventDestroy(s->hev[i]);
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
