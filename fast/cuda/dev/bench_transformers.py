#!/usr/bin/env python3
"""Transformers' own speed on the real-4l stack (the same config q3n's bench_model uses), on the GPU.

Builds Qwen3NextForCausalLM with random weights in bfloat16 on the device, 3 linear + 1 full
attention layer at the 80B-A3B dims, and times prefill (one forward of T tokens, logits of the
last token only) and decode (one-token forwards with the cache after a prompt). Runs without
flash-linear-attention or causal-conv1d on the path (the script refuses to run if fla imports),
so these are the torch fallback kernels a transformers user gets without extra packages.
"""
import argparse
import time

import torch
import transformers
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM


def make_config(attn: str, experts: str) -> Qwen3NextConfig:
    cfg = Qwen3NextConfig(
        vocab_size=151936, hidden_size=2048, intermediate_size=5120, num_hidden_layers=4,
        num_attention_heads=16, num_key_value_heads=2, head_dim=256,
        linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128,
        linear_conv_kernel_dim=4, num_experts=512, num_experts_per_tok=10, moe_intermediate_size=512,
        shared_expert_intermediate_size=512, decoder_sparse_step=1, norm_topk_prob=True, mlp_only_layers=[],
        layer_types=["linear_attention"] * 3 + ["full_attention"], rms_norm_eps=1e-6, tie_word_embeddings=False,
        max_position_embeddings=262144,
        rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25})
    cfg._attn_implementation = attn
    cfg._experts_implementation = experts
    return cfg


def sync_time(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefill", default="4096,16384")
    ap.add_argument("--decode-prompt", type=int, default=4096)
    ap.add_argument("--decode-steps", type=int, default=8)
    ap.add_argument("--impls", default="eager/eager,sdpa/grouped_mm", help="attn/experts pairs")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    try:
        import fla  # noqa: F401
        raise SystemExit("flash-linear-attention is importable: this script measures the fallback path")
    except ImportError:
        pass
    print(f"torch {torch.__version__} transformers {transformers.__version__} device {torch.cuda.get_device_name()}",
          flush=True)
    torch.manual_seed(0)
    ids = torch.randint(0, 151936, (1, max(max(int(t) for t in a.prefill.split(",")),
                                           a.decode_prompt + a.decode_steps)), device="cuda")
    for pair in a.impls.split(","):
        attn, experts = pair.split("/")
        torch.set_default_dtype(torch.bfloat16)
        with torch.device("cuda"):
            model = Qwen3NextForCausalLM(make_config(attn, experts)).eval()
        torch.set_default_dtype(torch.float32)
        tag = f"attn={model.config._attn_implementation} experts={model.config._experts_implementation}"
        with torch.no_grad():
            model(ids[:, :512], use_cache=False, logits_to_keep=1)  # warm-up
            for T in (int(t) for t in a.prefill.split(",")):
                try:
                    ts = [sync_time(lambda: model(ids[:, :T], use_cache=False, logits_to_keep=1)) for _ in range(a.reps)]
                    print(f"RESULT transformers {tag} prefill T={T}: best {min(ts)*1e3:.1f} ms "
                          f"({T/min(ts):.0f} tokens/s) over {a.reps}", flush=True)
                except torch.OutOfMemoryError as e:
                    print(f"RESULT transformers {tag} prefill T={T}: out of memory ({str(e)[:120]})", flush=True)
                torch.cuda.empty_cache()
            try:
                P = a.decode_prompt
                out = model(ids[:, :P], use_cache=True, logits_to_keep=1)
                past = out.past_key_values
                out = model(ids[:, P:P + 1], past_key_values=past, use_cache=True)
                past = out.past_key_values
                steps = a.decode_steps

                def run() -> None:
                    nonlocal past
                    for i in range(1, steps):
                        o = model(ids[:, P + i:P + i + 1], past_key_values=past, use_cache=True)
                        past = o.past_key_values
                dt = sync_time(run) / (steps - 1)
                print(f"RESULT transformers {tag} decode after {P}-token prompt: {dt*1e3:.2f} ms/token "
                      f"(mean of {steps-1})", flush=True)
            except torch.OutOfMemoryError as e:
                print(f"RESULT transformers {tag} decode: out of memory ({str(e)[:120]})", flush=True)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
