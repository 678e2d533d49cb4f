#!/usr/bin/env python3
"""Writes the config.json fixtures under harness/testdata/config/ with transformers
(run once with golden/.venv/bin/python; the outputs are committed, the C tests never run
Python), and param_counts.txt: parameter counts of each config's Qwen3NextForCausalLM as
transformers builds it (on the meta device, so the 80B config costs nothing).

Columns of param_counts.txt: file, total parameters, active parameters per token
(total minus the (E - K) unused routed experts of every sparse layer, from the model's own
expert tensors). transformers has no MTP head: these configs carry no MTP field."""
import argparse
import json
import pathlib

import torch
import transformers
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM


def counts(cfg: Qwen3NextConfig) -> tuple[int, int]:
    with torch.device("meta"):
        model = Qwen3NextForCausalLM(cfg)
    total = sum(p.numel() for p in model.parameters())
    unused = 0
    for layer in model.model.layers:
        experts = getattr(layer.mlp, "experts", None)
        if experts is None:
            continue
        per_expert = sum(p.numel() for p in experts.parameters()) // cfg.num_experts
        unused += (cfg.num_experts - cfg.num_experts_per_tok) * per_expert
    return total, total - unused


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "config"))
    out = pathlib.Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# transformers {transformers.__version__}, torch {torch.__version__}: file total active"]

    tiny = Qwen3NextConfig(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=5,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=12,
        linear_conv_kernel_dim=4, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=20,
        shared_expert_intermediate_size=24, mlp_only_layers=[2], decoder_sparse_step=1,
        layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention", "full_attention"],
        rope_parameters={"rope_type": "default", "rope_theta": 50000.0, "partial_rotary_factor": 0.5},
        tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=4096,
    )
    big = Qwen3NextConfig(
        intermediate_size=5120, max_position_embeddings=262144,
        rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
    )
    for name, cfg in [("tiny_5x.json", tiny), ("qwen3next_80b_5x.json", big)]:
        cfg.save_pretrained(out)
        (out / "config.json").rename(out / name)
        lines.append("%s %d %d" % ((name,) + counts(Qwen3NextConfig.from_pretrained(out / name))))
    # The released 80B-A3B config.json as transformers 4.57 wrote it (rope at top level,
    # no layer_types: derived from full_attention_interval).
    released = {
        "architectures": ["Qwen3NextForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "full_attention_interval": 4,
        "head_dim": 256, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
        "intermediate_size": 5120, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
        "linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_value_head_dim": 128,
        "max_position_embeddings": 262144, "mlp_only_layers": [], "model_type": "qwen3_next",
        "moe_intermediate_size": 512, "norm_topk_prob": True, "num_attention_heads": 16, "num_experts": 512,
        "num_experts_per_tok": 10, "num_hidden_layers": 48, "num_key_value_heads": 2,
        "output_router_logits": False, "partial_rotary_factor": 0.25, "rms_norm_eps": 1e-06, "rope_scaling": None,
        "rope_theta": 10000000, "router_aux_loss_coef": 0.001, "shared_expert_intermediate_size": 512,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.57.0.dev0",
        "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    }
    (out / "qwen3next_80b_457.json").write_text(json.dumps(released, indent=2) + "\n")
    lines.append("qwen3next_80b_457.json %d %d" % counts(Qwen3NextConfig.from_pretrained(out / "qwen3next_80b_457.json")))
    (out / "param_counts.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
