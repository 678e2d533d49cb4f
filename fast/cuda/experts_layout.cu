/* experts_layout.cu — the routed experts' layout on the device: the checkpoint's [E][N][Kin], or
 * packed (moe_pack.h) when run_options.pack_experts asks for it and every MoE kernel the session
 * may pick can read the packed layout.
 *
 * Packed, the prefill runs grouped GEMM v5 with one tensor copy per k-tile (tma 2) at every T,
 * and the decode step the expert GEMV v2 reading packed rows; the shared expert and the dense
 * MLPs keep the checkpoint layout. Both readers do the same products in the same order as on the
 * checkpoint layout (v5 is bitwise v3/v4 and the GEMV's chunks are the same 8-k runs), so packing
 * changes where bytes are read from, not the logits: dev/test_packed checks that bit for bit.
 * Packing is out of place through one scratch buffer (a layer's gate_up, 2 GB at the 80B-A3B
 * dims), copied back over the weights, so the session keeps one copy of the experts. */
#include "session.h"

/* Why this session keeps the checkpoint layout; NULL when it can pack. The packed layout has no
 * fallback reader (cuBLAS per expert, grouped v2/v3, GEMV v1 read the checkpoint layout), so every
 * condition under which mlp_block would pick one of those refuses packing here. */
static const char *pack_refusal(const struct cuda_session *s)
{
    const struct q3n_config *c = &s->cfg;
    const int64_t D = c->hidden_size, E = c->num_experts, K = c->num_experts_per_tok, I = c->moe_intermediate_size;
    const int64_t Ws = c->shared_expert_intermediate_size;
    int sparse = 0;
    for (int64_t l = 0; l < c->num_hidden_layers + s->has_mtp; l++) sparse |= c->layer_is_sparse[l];
    if (!sparse) return "no MoE layers";
    if (s->dt != Q3N_COMPUTE_BF16) return "f32 (packing is bf16 only)";
    if (!cuda_moe_grouped_v4_supported()) return "not sm_90a (grouped v5 needs Hopper)";
    if (!cuda_moe_v5_packable(2 * I, D, 1) || !cuda_moe_v5_packable(D, I, 0))
        return "expert dims not whole 256 x 64 tiles";
    if (!cuda_moe_grouped_v3_ok(2 * I, D, 1, s->dt) || !cuda_moe_grouped_v3_ok(D, I, 0, s->dt))
        return "expert dims outside grouped v5";
    if (!cuda_moe_gemv2_ok(D, I, Ws, K)) return "expert dims outside the GEMV v2";
    if (s->opt.max_tokens * K / 128 + E + 1 > 65535) return "max_tokens past grouped v5's tile table";
    return NULL;
}

enum q3n_status pack_session_experts(struct cuda_session *s, struct q3n_error *err)
{
    const struct q3n_config *c = &s->cfg;
    const int64_t D = c->hidden_size, E = c->num_experts, I = c->moe_intermediate_size;
    s->experts_packed = 0;
    s->pack_why = NULL;
    if (!s->opt.pack_experts) return Q3N_OK;
    if ((s->pack_why = pack_refusal(s)) != NULL) return Q3N_OK;
    const size_t gu_bytes = s->as * (size_t)(E * 2 * I * D), dn_bytes = s->as * (size_t)(E * D * I);
    void *scratch = NULL;
    cudaError_t e = cudaMalloc(&scratch, gu_bytes > dn_bytes ? gu_bytes : dn_bytes);
    if (e != cudaSuccess)
        return q3n_error_set(err, Q3N_ERR_DEVICE, "cuda: packing the experts needs a %zu-byte scratch buffer: %s",
                             gu_bytes, cudaGetErrorString(e));
    enum q3n_status st = Q3N_OK;
    for (int64_t l = 0; st == Q3N_OK && l < c->num_hidden_layers + s->has_mtp; l++) {
        if (!c->layer_is_sparse[l]) continue;
        struct dev_layer *L = &s->layers[l];
        st = cuda_moe_pack_v5(scratch, L->experts_gu, E, 2 * I, D, 1, s->dt, s->stream, err);
        if (st == Q3N_OK && cudaMemcpyAsync(L->experts_gu, scratch, gu_bytes, cudaMemcpyDeviceToDevice, s->stream) !=
                                cudaSuccess)
            st = q3n_error_set(err, Q3N_ERR_DEVICE, "cuda: packed gate_up copy-back: %s",
                               cudaGetErrorString(cudaGetLastError()));
        if (st == Q3N_OK) st = cuda_moe_pack_v5(scratch, L->experts_dn, E, D, I, 0, s->dt, s->stream, err);
        if (st == Q3N_OK && cudaMemcpyAsync(L->experts_dn, scratch, dn_bytes, cudaMemcpyDeviceToDevice, s->stream) !=
                                cudaSuccess)
            st = q3n_error_set(err, Q3N_ERR_DEVICE, "cuda: packed down copy-back: %s",
                               cudaGetErrorString(cudaGetLastError()));
    }
    /* the scratch is reused layer after layer on one stream; free it once all of them are done */
    e = cudaStreamSynchronize(s->stream);
    if (st == Q3N_OK && e != cudaSuccess)
        st = q3n_error_set(err, Q3N_ERR_DEVICE, "cuda: packing the experts: %s", cudaGetErrorString(e));
    cudaFree(scratch);
    if (st == Q3N_OK) s->experts_packed = 1;
    return st;
}
