/* goldenrun.c — a golden file opened for the intervention tools; see goldenrun.h. */
#include "goldenrun.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "verify.h"

static int64_t tf_numel(void *user, const char *name)
{
    struct q3n_tensorfile *tf = user;
    char ds[Q3N_TAP_NAME_MAX + 16];
    snprintf(ds, sizeof ds, "/tensors/%s", name);
    if (!q3n_tensorfile_exists(tf, ds)) return -1;
    struct q3n_tensor_info info;
    struct q3n_error e;
    if (q3n_tensorfile_info(tf, ds, &info, &e) != Q3N_OK) return -1;
    return info.numel;
}

static enum q3n_status tf_read(void *user, const char *name, enum q3n_dtype as, void *out, int64_t numel,
                               struct q3n_error *err)
{
    char ds[Q3N_TAP_NAME_MAX + 16];
    snprintf(ds, sizeof ds, "/tensors/%s", name);
    return q3n_tensorfile_read(user, ds, as, out, numel, NULL, err);
}

void q3n_golden_src_tensorfile(struct q3n_golden_src *src, struct q3n_tensorfile *tf)
{
    src->user = tf;
    src->numel = tf_numel;
    src->read = tf_read;
}

void q3n_golden_run_close(struct q3n_golden_run *g)
{
    if (!g) return;
    q3n_tensorfile_close(g->tf);
    q3n_model_close(g->model);
    free(g->tokens);
    free(g->logits);
    for (int i = 0; i < Q3N_MAX_LAYERS; i++) {
        free(g->routing_idx[i]);
        free(g->routing_w[i]);
    }
    free(g);
}

enum q3n_status q3n_golden_run_open(struct q3n_golden_run **out, const char *golden_path, const char *model_dir,
                                    struct q3n_error *err)
{
    *out = NULL;
    enum q3n_status st;
    struct q3n_golden_run *g = calloc(1, sizeof *g);
    if (!g) return q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", golden_path);
    snprintf(g->path, sizeof g->path, "%s", golden_path);
    char ckpt[4096];
    if (model_dir) {
        snprintf(ckpt, sizeof ckpt, "%s", model_dir);
    } else {
        st = q3n_verify_checkpoint(ckpt, sizeof ckpt, golden_path, err);
        if (st != Q3N_OK) goto fail;
    }
    st = q3n_model_open(&g->model, ckpt, err);
    if (st != Q3N_OK) goto fail;
    st = q3n_tensorfile_open(&g->tf, golden_path, err);
    if (st != Q3N_OK) goto fail;
    struct q3n_error ignore;
    if (q3n_tensorfile_get_attr_str(g->tf, "/", "dtype", g->dtype, sizeof g->dtype, &ignore) != Q3N_OK)
        snprintf(g->dtype, sizeof g->dtype, "float32");
    struct q3n_tensor_info ti, li;
    st = q3n_tensorfile_info(g->tf, "/inputs/input_ids", &ti, err);
    if (st != Q3N_OK) goto fail;
    st = q3n_tensorfile_info(g->tf, "/logits", &li, err);
    if (st != Q3N_OK) goto fail;
    if (ti.rank != 1 || li.rank != 2 || li.dims[0] != ti.dims[0] || ti.dims[0] <= 0) {
        st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: /inputs/input_ids [T] and /logits [T,V] disagree", golden_path);
        goto fail;
    }
    g->T = ti.dims[0];
    g->V = li.dims[1];
    if (g->V != g->model->config.vocab_size) {
        st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: /logits has V=%lld, the checkpoint %lld", golden_path,
                           (long long)g->V, (long long)g->model->config.vocab_size);
        goto fail;
    }
    g->tokens = malloc((size_t)g->T * sizeof *g->tokens);
    g->logits = malloc((size_t)li.numel * sizeof *g->logits);
    if (!g->tokens || !g->logits) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory for tokens/logits", golden_path);
        goto fail;
    }
    st = q3n_tensorfile_read(g->tf, "/inputs/input_ids", Q3N_DTYPE_I64, g->tokens, g->T, NULL, err);
    if (st != Q3N_OK) goto fail;
    st = q3n_tensorfile_read(g->tf, "/logits", Q3N_DTYPE_F32, g->logits, li.numel, NULL, err);
    if (st != Q3N_OK) goto fail;
    q3n_golden_src_tensorfile(&g->src, g->tf);
    for (int64_t l = 0; l < g->model->config.num_hidden_layers && l < Q3N_MAX_LAYERS; l++) {
        char ni[96], nw[96];
        snprintf(ni, sizeof ni, "model.layers.%lld.mlp.gate.topk_idx", (long long)l);
        snprintf(nw, sizeof nw, "model.layers.%lld.mlp.gate.topk_weight", (long long)l);
        int64_t n = tf_numel(g->tf, ni);
        if (n <= 0 || tf_numel(g->tf, nw) != n) continue;
        g->routing_idx[l] = malloc((size_t)n * sizeof(int64_t));
        g->routing_w[l] = malloc((size_t)n * sizeof(float));
        if (!g->routing_idx[l] || !g->routing_w[l]) {
            st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory for routing", golden_path);
            goto fail;
        }
        st = tf_read(g->tf, ni, Q3N_DTYPE_I64, g->routing_idx[l], n, err);
        if (st == Q3N_OK) st = tf_read(g->tf, nw, Q3N_DTYPE_F32, g->routing_w[l], n, err);
        if (st != Q3N_OK) goto fail;
        g->routing_layers++;
    }
    g->routing.topk_idx = (const int64_t *const *)g->routing_idx;
    g->routing.topk_weight = (const float *const *)g->routing_w;
    g->routing.tokens = g->T;
    *out = g;
    return Q3N_OK;
fail:
    q3n_golden_run_close(g);
    return st;
}

void q3n_golden_run_tool(struct q3n_tool_run *r, const struct q3n_golden_run *g, const struct q3n_impl *impl)
{
    memset(r, 0, sizeof *r);
    r->impl = impl;
    r->model = g->model;
    q3n_run_options_default(&r->opt);
    if (g->T > r->opt.max_tokens) r->opt.max_tokens = g->T;
    r->tokens = g->tokens;
    r->T = g->T;
    r->V = g->V;
    r->golden_logits = g->logits;
    r->golden = &g->src;
    r->golden_routing = g->routing_layers ? &g->routing : NULL;
}

enum q3n_status q3n_golden_run_tool_open(struct q3n_golden_run **g, struct q3n_tool_run *r, const char *golden_path,
                                         const char *model_dir, const char *impl_name, int n_threads,
                                         const char *test_bug, struct q3n_error *err)
{
    *g = NULL;
    const struct q3n_impl *impl = q3n_impl_find(impl_name);
    if (!impl) return q3n_error_set(err, Q3N_ERR_USAGE, "no implementation '%s' in this build", impl_name);
    enum q3n_status st = q3n_golden_run_open(g, golden_path, model_dir, err);
    if (st != Q3N_OK) return st;
    q3n_golden_run_tool(r, *g, impl);
    r->opt.n_threads = n_threads;
    r->opt.test_bug = test_bug;
    return Q3N_OK;
}
