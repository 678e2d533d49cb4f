/* shrink.c — greedy shrinking of a failing fuzz case and writing it out; see shrink.h. */
#include "shrink.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../ref/model.h"
#include "checkpoint.h"
#include "config.h"
#include "synth.h"
#include "weights.h"


int64_t q3n_shrink_size(const struct q3n_fuzz_case *c)
{
    const struct q3n_config *g = &c->cfg;
    int64_t params = q3n_config_param_count(g);
    /* dims that carry no parameters in this case (head_dim with no full-attention layer, ...)
     * still count a little, so the repro a person reads has them small too */
    int64_t dims = g->head_dim + g->linear_key_head_dim + g->linear_value_head_dim + g->moe_intermediate_size +
                   g->shared_expert_intermediate_size + g->intermediate_size + g->num_attention_heads +
                   g->linear_num_value_heads + g->num_experts + g->num_experts_per_tok + g->linear_conv_kernel_dim;
    return params + c->T * (g->hidden_size + g->vocab_size) + dims;
}

/* Keeps layer_is_sparse expressible: dense wherever E = 0 or decoder_sparse_step says so. */
static void normalise(struct q3n_fuzz_case *c)
{
    struct q3n_config *g = &c->cfg;
    if (g->num_experts_per_tok > g->num_experts) g->num_experts_per_tok = g->num_experts;
    for (int64_t l = 0; l < g->num_hidden_layers; l++)
        if (g->num_experts == 0 || (l + 1) % g->decoder_sparse_step != 0) g->layer_is_sparse[l] = 0;
    if (c->T < 1) c->T = 1;
    if (c->prefill > c->T) c->prefill = c->T;
    if (c->prefill < 1) c->prefill = 1;
    if (c->split1 > c->T) c->split1 = c->T;
    if (c->split1 < 1) c->split1 = 1;
    if (c->split2 > c->T - c->split1) c->split2 = c->T - c->split1;
}

static int64_t half(int64_t x, int64_t lo)
{
    return x / 2 >= lo ? x / 2 : lo;
}

/* Candidate `k` of the current case (0, 1, ...); returns 0 when k is past the last one. A
 * candidate equal to the case (nothing to shrink there) is reported as 1 with *same = 1. */
static int candidate(struct q3n_fuzz_case *out, const struct q3n_fuzz_case *c, int k, int *same)
{
    struct q3n_config *g = &out->cfg;
    *out = *c;
    *same = 0;
    const int64_t L = c->cfg.num_hidden_layers;
    if (k < L) { /* drop layer k */
        if (L <= 1) {
            *same = 1;
            return 1;
        }
        for (int64_t l = k; l < L - 1; l++) {
            g->layer_type[l] = g->layer_type[l + 1];
            g->layer_is_sparse[l] = g->layer_is_sparse[l + 1];
        }
        g->num_hidden_layers = L - 1;
        normalise(out);
        return 1;
    }
    k -= (int)L;
    switch (k) {
    case 0: out->T = half(c->T, 1); break;
    case 1: out->T = c->T - 1; break;
    case 2: g->num_mtp_layers = 0; break;
    case 3: g->shared_expert_intermediate_size = 0; break;
    case 4: g->num_experts = half(c->cfg.num_experts, c->cfg.num_experts > 0 ? 1 : 0); break;
    case 5: g->num_experts = c->cfg.num_experts - 1 >= 0 ? c->cfg.num_experts - 1 : 0; break;
    case 6: g->num_experts_per_tok = half(c->cfg.num_experts_per_tok, c->cfg.num_experts > 0 ? 1 : 0); break;
    case 7: g->decoder_sparse_step = 1; break;
    case 8: /* fewer attention heads, same GQA ratio */
        g->num_attention_heads = c->cfg.num_attention_heads / c->cfg.num_key_value_heads;
        g->num_key_value_heads = 1;
        break;
    case 9: g->num_attention_heads = c->cfg.num_key_value_heads; break;
    case 10: /* fewer linear heads, same ratio */
        g->linear_num_value_heads = c->cfg.linear_num_value_heads / c->cfg.linear_num_key_heads;
        g->linear_num_key_heads = 1;
        break;
    case 11: g->linear_num_value_heads = c->cfg.linear_num_key_heads; break;
    case 12:
        g->head_dim = half(c->cfg.head_dim, 2);
        if (!q3n_fuzz_set_rotary(g, c->cfg.partial_rotary_factor) && !q3n_fuzz_set_rotary(g, 1.0)) *same = 1;
        break;
    case 13: g->linear_key_head_dim = half(c->cfg.linear_key_head_dim, 1); break;
    case 14: g->linear_value_head_dim = half(c->cfg.linear_value_head_dim, 1); break;
    case 15: g->hidden_size = half(c->cfg.hidden_size, 2); break;
    case 16: g->vocab_size = half(c->cfg.vocab_size, 2); break;
    case 17: g->moe_intermediate_size = half(c->cfg.moe_intermediate_size, 1); break;
    case 18: g->intermediate_size = half(c->cfg.intermediate_size, 1); break;
    case 19: g->shared_expert_intermediate_size = half(c->cfg.shared_expert_intermediate_size, 0); break;
    case 20: g->linear_conv_kernel_dim = c->cfg.linear_conv_kernel_dim > 2 ? c->cfg.linear_conv_kernel_dim - 1 : 2;
        break;
    default: return 0;
    }
    normalise(out);
    if (memcmp(out, c, sizeof *out) == 0) *same = 1;
    return 1;
}

void q3n_shrink_case(struct q3n_fuzz_case *c, q3n_shrink_pred still_fails, void *user, int max_tries, int *tries)
{
    struct q3n_fuzz_case cand;
    struct q3n_error err;
    int progress = 1;
    *tries = 0;
    while (progress && *tries < max_tries) {
        progress = 0;
        for (int k = 0; *tries < max_tries; k++) {
            int same;
            if (!candidate(&cand, c, k, &same)) break;
            if (same || q3n_config_validate(&cand.cfg, "shrink", &err) != Q3N_OK) continue;
            if (q3n_shrink_size(&cand) >= q3n_shrink_size(c)) continue;
            (*tries)++;
            if (still_fails(user, &cand) == 1) {
                *c = cand;
                progress = 1;
                break; /* restart from the first candidate of the smaller case */
            }
        }
    }
}

static enum q3n_status make_dir(const char *dir, struct q3n_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return q3n_error_set(err, Q3N_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        *p = '/';
    }
    if (mkdir(path, 0777) != 0 && errno != EEXIST)
        return q3n_error_set(err, Q3N_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    return Q3N_OK;
}

enum q3n_status q3n_shrink_write_repro(const char *dir, const struct q3n_fuzz_case *c, const char *impl,
                                       const char *test_bug, const char *repro_cmd, struct q3n_error *err)
{
    struct q3n_model *model = NULL;
    char path[4096], desc[1024];
    FILE *f = NULL;
    enum q3n_status st;
    if ((st = make_dir(dir, err)) != Q3N_OK) return st;
    if ((st = q3n_fuzz_model_build(&model, c, err)) != Q3N_OK) return st;
    /* the checkpoint first: it wants an empty folder, and writes config.json itself */
    struct q3n_checkpoint_layout layout = {.dtype = Q3N_ST_F32, .fused_experts = 0, .shards = 1};
    if ((st = q3n_checkpoint_write(dir, model, &layout, err)) != Q3N_OK) goto cleanup;
    snprintf(path, sizeof path, "%s/golden.h5", dir);
    if ((st = q3n_fuzz_write_dump(path, model, c, ref_impl.name, NULL, err)) != Q3N_OK) goto cleanup;
    snprintf(path, sizeof path, "%s/candidate.h5", dir);
    if ((st = q3n_fuzz_write_dump(path, model, c, impl, test_bug, err)) != Q3N_OK) goto cleanup;
    q3n_fuzz_case_describe(c, desc, sizeof desc);
    snprintf(path, sizeof path, "%s/case.txt", dir);
    f = fopen(path, "w");
    if (!f) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
        goto cleanup;
    }
    fprintf(f, "case: %s\ncase seed: 0x%016llx\nweight seed: 0x%016llx (harness/synth.h)\nimpl: %s\ntest_bug: %s\n",
            desc, (unsigned long long)c->seed, (unsigned long long)c->weight_seed, impl,
            test_bug ? test_bug : "(none)");
    fprintf(f, "original case: %s\ncompare: q3n compare %s/candidate.h5 %s/golden.h5 --policy fuzz/fuzz.policy\n",
            repro_cmd, dir, dir);
    fprintf(f, "replay:  q3n verify %s/golden.h5 --impl %s%s\n", dir, impl,
            test_bug ? "   (the planted bug is not reachable from verify: use the compare line)" : "");
    if (fclose(f) != 0) st = q3n_error_set(err, Q3N_ERR_IO, "%s: cannot write", path);
    f = NULL;
cleanup:
    if (f) fclose(f);
    q3n_model_close(model);
    return st;
}
