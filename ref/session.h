/* session.h — a ref session: options, caches and scratch, all in one allocation sized by a
 * sizes table (ref/impl.c); the forward that uses them is ref/model.c. Private to ref/. */
#ifndef Q3N_REF_SESSION_H
#define Q3N_REF_SESSION_H

#include "model.h"

/* Activation buffers for up to Tm = max_tokens new tokens (letters as in ops.h). */
struct ref_scratch {
    ref_real *h, *xn, *mix, *hfin;         /* [Tm,D]: residual, normed, block output, final norm */
    /* Gated DeltaNet */
    ref_real *qkvz, *ba;                   /* [Tm,2NK*DK+2NV*DV], [Tm,2NV] */
    ref_real *q, *k, *v, *z, *b, *a;       /* split, pre-conv */
    ref_real *mixed, *conv_out;            /* [Tm,Cc] */
    ref_real *cq, *ck, *cv;                /* post-conv q,k [Tm,NK,DK], v [Tm,NV,DV] */
    ref_real *g, *beta;                    /* [Tm,NV] */
    ref_real *core, *normed;               /* [Tm,NV,DV] */
    ref_real *delta;                       /* chunked delta-rule scratch */
    /* gated attention */
    ref_real *qg, *aq, *gate, *kp, *vp, *attn, *gated, *scores;
    /* MoE / MLP */
    ref_real *router_logits, *probs, *topk_weight; /* [Tm,E], [Tm,E], [Tm,K] */
    int64_t *topk_idx;                     /* [Tm,K] */
    ref_real *experts_out, *shared_out, *shared_gate; /* [Tm,D], [Tm,D], [Tm,1] */
    ref_real *mlp;                         /* [Tm*2*Wmax + 2I + D] */
    /* MTP */
    ref_real *mtp_e, *mtp_h, *mtp_cat;     /* [Tm,D], [Tm,D], [Tm,2D] */
    ref_real *logits_row;                  /* [V] */
    /* planted bugs */
    float *bug_w;                          /* [max(D, DV)] modified norm weight */
    int64_t *bug_idx;                      /* [K+1] */
    ref_real *bug_weight;                  /* [K+1] */
};

struct ref_session {
    const struct q3n_model *model;
    const struct q3n_config *cfg;
    struct q3n_run_options opt;
    char test_bug[64];                     /* "" when none */
    struct ref_cache cache;
    struct ref_scratch s;
    int64_t last_T, last_pos0;             /* the last forward, for forward_mtp */
    int broken;                            /* a forward failed half-way: caches need a reset */
    char describe[256];
    void *block;                           /* the one allocation */
};

/* model.c */
enum q3n_status ref_model_forward(struct ref_session *s, float *logits, const int64_t *tokens, int64_t T,
                                  const struct q3n_tap_sink *taps, struct q3n_error *err);
enum q3n_status ref_model_forward_mtp(struct ref_session *s, float *mtp_logits, const int64_t *tokens, int64_t T,
                                      const struct q3n_tap_sink *taps, struct q3n_error *err);

#endif
