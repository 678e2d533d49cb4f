#!/usr/bin/env python3
"""transformers on the CPU, on the checkpoint `q3n bench --impl cpu --versus-transformers` wrote.

This is what a CPU user runs without q3n. The script loads the safetensors folder in float32 with
transformers' default kernels, which on a CPU are the torch fallbacks (no flash-linear-attention,
no causal-conv1d). It times:
- prefill: one forward of the prompt from an empty cache with the logits of every position (what
  q3n's forward returns, so both do the same work, lm_head included), best of --reps;
- decode: --decode one-token forwards with the cache after the prompt, mean ms/token.

torch runs on --threads threads. The last-token prefill logits are compared with q3n's
(--q3n-logits: V float32), so a reader can check that both ran the same model.

Prints RESULT lines that q3n bench relays and reads (harness/cmd_bench_tf.c).
"""
import argparse
import math
import time

import numpy as np
import torch
import transformers
from transformers import Qwen3NextForCausalLM


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--tokens", required=True, help="int64 token ids, prompt then decode tokens")
    ap.add_argument("--prefill", type=int, required=True)
    ap.add_argument("--decode", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="0: torch's default")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--q3n-logits", required=True, help="q3n's last-token prefill logits, V float32")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__} transformers {transformers.__version__} threads {torch.get_num_threads()}",
          flush=True)
    ids = torch.from_numpy(np.fromfile(a.tokens, dtype=np.int64)).unsqueeze(0)
    T, N = a.prefill, a.decode
    if ids.shape[1] < T + N:
        raise SystemExit(f"{a.tokens}: {ids.shape[1]} token ids, need {T + N}")
    t0 = time.perf_counter()
    model = Qwen3NextForCausalLM.from_pretrained(a.checkpoint, dtype=torch.float32).eval()
    tag = (f"attn={model.config._attn_implementation} "
           f"experts={getattr(model.config, '_experts_implementation', 'n/a')}")
    print(f"loaded in {time.perf_counter() - t0:.1f} s: {tag}", flush=True)
    with torch.inference_mode():
        best, last = math.inf, None
        for _ in range(a.reps):
            t = time.perf_counter()
            out = model(ids[:, :T], use_cache=False)
            best = min(best, time.perf_counter() - t)
            last = out.logits[0, -1].float().numpy()
        print(f"RESULT transformers cpu {tag} prefill T={T}: best {best:.4f} s ({T / best:.1f} tokens/s) "
              f"over {a.reps}", flush=True)
        q = np.fromfile(a.q3n_logits, dtype=np.float32)
        if q.shape != last.shape:
            raise SystemExit(f"{a.q3n_logits}: {q.size} logits, transformers has {last.size}")
        rel = float(np.linalg.norm(last.astype(np.float64) - q) / max(np.linalg.norm(q.astype(np.float64)), 1e-30))
        same = int(np.argmax(last)) == int(np.argmax(q))
        print(f"RESULT transformers cpu logits vs q3n (last prefill token): rel_l2 {rel:.3e} "
              f"argmax {'same' if same else 'different'}", flush=True)
        if N > 0:
            out = model(ids[:, :T], use_cache=True, logits_to_keep=1)
            past = out.past_key_values
            t = time.perf_counter()
            for i in range(N):
                out = model(ids[:, T + i:T + i + 1], past_key_values=past, use_cache=True)
                past = out.past_key_values
            ms = (time.perf_counter() - t) / N * 1e3
            print(f"RESULT transformers cpu {tag} decode: {ms:.3f} ms/token (mean of {N} steps after the "
                  f"{T}-token prompt)", flush=True)


if __name__ == "__main__":
    main()
