/* roofline.h — the least a phase of a Qwen3-Next forward must cost on a given machine.
 *
 * For one batch-1 sequence, from the config alone: the fewest bytes a phase must move through
 * device memory (every weight it uses read once, caches read/written once, the hidden state in
 * and out of each block) and the FLOPs it must do (2 per multiply-add of every matrix product,
 * the causal attention scores and values, the delta rule's state products).
 *
 * Two floors from the same counts:
 *  - block by block (serial_seconds): the phase is a chain of blocks (embedding, then per layer
 *    the token mixer and the MLP / MoE block, then the final norm and lm_head), each of which needs
 *    the whole output of the one before it (the mixer of layer l + 1 reads every token's output of
 *    layer l's MoE). Each block costs at least max(its bytes / bandwidth, its flops / peak); the
 *    floor is the sum. A port that runs the blocks in order, as every batch-1 port does, cannot
 *    beat it.
 *  - overlapped (seconds): max(all bytes / bandwidth, all flops / peak), as if one block's weight
 *    stream could hide under another block's products. Splitting the tokens to pipeline blocks
 *    would read the weights once per split, so this is below what any port reaches; it bounds the
 *    phase from below all the same.
 * measured time / floor is how far a port is from its machine. `q3n bench --impl cuda` prints both
 * beside each measured phase (docs/benchmarks.md explains the counts). */
#ifndef Q3N_ROOFLINE_H
#define Q3N_ROOFLINE_H

#include <stdint.h>

#include "config.h"

/* The phases `q3n bench --impl cuda` times with CUDA events, for the block-by-block floor split the
 * same way: each layer's token mixer (delta-rule or attention), its MLP / MoE block, and the rest
 * (embedding, final norm, lm_head). */
enum q3n_roofline_phase { Q3N_PHASE_DELTA_MIXERS, Q3N_PHASE_ATTENTION_MIXERS, Q3N_PHASE_MLP, Q3N_PHASE_OTHER };
#define Q3N_ROOFLINE_PHASES 4

struct q3n_roofline {
    double weight_bytes; /* weights read (experts: those expected to be routed to) */
    double other_bytes;  /* caches, states, hidden states in and out of the blocks */
    double flops;
    double seconds;      /* overlapped: max((weight_bytes + other_bytes) / bw, flops / peak) */
    int bytes_bound;     /* 1 when the bandwidth term is the larger */
    double serial_seconds;     /* block by block: the sum of every block's own max(bytes / bw, flops / peak) */
    double serial_bytes_share; /* the part of serial_seconds spent in bandwidth-bound blocks, 0..1 */
    double phase_seconds[Q3N_ROOFLINE_PHASES]; /* serial_seconds by phase (enum q3n_roofline_phase) */
};

/* Prefill of T tokens from an empty cache, logits of the last token only (as generation does).
 * Experts: the expected number of distinct experts hit by T*K uniformly spread choices,
 * E * (1 - (1 - K/E)^T), each read once. wbytes = bytes per weight (2 for bf16), bw in bytes/s,
 * peak in FLOP/s. */
void q3n_roofline_prefill(const struct q3n_config *c, int64_t T, double wbytes, double bw, double peak,
                          struct q3n_roofline *out);

/* One decode token with S tokens already cached: K experts per sparse layer, the full lm_head,
 * the KV caches of the S + 1 positions, the delta-rule and conv states read and written. */
void q3n_roofline_decode(const struct q3n_config *c, int64_t S, double wbytes, double bw, double peak,
                         struct q3n_roofline *out);

#endif
