/* synth.h — synthetic in-memory Qwen3-Next models: config presets and random weights.
 *
 * Presets (q3n_synth_config):
 *   "tiny"     D=64, 4 layers (3 linear + 1 full), NK=2 NV=4 DK=DV=16, NH=4 NKV=2 HD=16, E=8 K=2,
 *              V=128: every block, small enough for unit tests.
 *   "odd"      shapes that catch layout bugs: layers full, linear, linear, full; NV=3*NK, DK=24,
 *              DV=40, HD=24 (rotary 12), conv kernel 3, layer 2 dense (mlp_only), tied embeddings,
 *              norm_topk_prob=0, an MTP layer, V=97.
 *   "bench-1k" D=1024, 4 layers, E=32 K=4: the CPU benchmark size (~0.6 GB of floats).
 *   "real-1l"  one linear + one full layer at Qwen3-Next-80B-A3B dims, 16 experts top-10.
 *   "real-4l"  3 linear + 1 full at real dims with 512 experts top-10 (~26 GB of floats:
 *              only create it when asked).
 *
 * Weights (q3n_synth_model_create) are drawn in distribution from a seeded splitmix64 stream:
 * projections N(0, std 1/sqrt(fan_in)), zero-centred norm weights +-U(0.1, 0.5) (away from 0),
 * gated-norm weight 1 +- U(0.05, 0.3) (near 1, never 1), A_log = log(U(1, 16)),
 * dt_bias U(-1, 1), conv weights N(0, 1/sqrt(K)), router N(0, 3/sqrt(D)) so top-k margins are
 * clear, MTP weights when num_mtp_layers > 0. The same (config, seed) gives the same weights on
 * every machine. */
#ifndef Q3N_SYNTH_H
#define Q3N_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "status.h"
#include "weights.h"

/* Fills cfg from a preset name (above), derived fields included, and validates it.
 * Unknown preset: Q3N_ERR_USAGE listing the known ones. */
enum q3n_status q3n_synth_config(struct q3n_config *cfg, const char *preset, struct q3n_error *err);

/* NULL-terminated list of preset names. */
const char *const *q3n_synth_preset_names(void);

/* Builds a model with random weights for cfg (validated first). All weight memory is one
 * allocation owned by the model and freed by q3n_model_close (model->release). *model is
 * NULL on failure. */
enum q3n_status q3n_synth_model_create(struct q3n_model **model, const struct q3n_config *cfg, uint64_t seed,
                                       struct q3n_error *err);

/* Writes a config.json text for cfg (transformers 5.x layout, explicit layer_types and
 * mlp_only_layers) into buf of cap bytes; Q3N_ERR_NOMEM if it does not fit. Used for the
 * /config dataset of dumps of synthetic models. */
enum q3n_status q3n_synth_config_json(char *buf, size_t cap, const struct q3n_config *cfg, struct q3n_error *err);

#endif
