"""Golden presets: Qwen3-Next configs (as config.json dicts) plus a default token count.

tiny     the shape of transformers' own test config for qwen3_next (tests/models/qwen3_next/
         test_modeling_qwen3_next.py: CausalLMModelTester defaults + Qwen3NextModelTester overrides):
         V=99 D=32, layers [linear, full], NH=NKV=2 HD=16, NK=4 NV=8 DK=DV=16, conv kernel 2,
         E=8 K=2 I=12, shared expert 36, dense width 37.
odd      shapes that break lazy code: T=77 (not a multiple of 64, two chunks), NV = 3*NK, DK=24,
         DV=40, HD=24 (rotary 12 of 24), conv kernel 3, norm_topk_prob=false, a dense-MLP layer
         (mlp_only_layers=[2]), tied embeddings, layer_types [full, linear, linear, full] (no
         full_attention_interval gives it; layer 0 is full attention), one MTP layer.
long     several delta-rule chunks: T=250 (3 full chunks of 64 + 58), weak-decay heads.
heads    the real model's head shapes on a small body: linear heads 1 key / 2 value of dim 128
         (GQA 2), attention 2/1 heads of 256 (rotary 64), D=64; layer 0 sparse (8 experts top-2 of
         width 32), layer 1 dense. T=80: two delta-rule chunks (64 + 16) and 160 routed rows, so a
         port's real-dims kernels (tensor-core delta rule, flash attention at head_dim 256, grouped
         expert GEMMs) run at the model level, not only the small-head fallbacks.
real-1l  one linear + one full layer at Qwen3-Next-80B-A3B dims (V=151936, D=2048, 16/32 linear
         heads of 128, 16/2 attention heads of 256) with 16 experts top-10; on demand only.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "seq_len": 12,
        "config": {
            "vocab_size": 99,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "layer_types": ["linear_attention", "full_attention"],
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "partial_rotary_factor": 0.25,
            "rope_theta": 10000.0,
            "linear_num_key_heads": 4,
            "linear_num_value_heads": 8,
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "linear_conv_kernel_dim": 2,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 12,
            "shared_expert_intermediate_size": 36,
            "norm_topk_prob": True,
            "mlp_only_layers": [],
            "tie_word_embeddings": False,
            "max_position_embeddings": 512,
        },
    },
    "odd": {
        "seq_len": 77,
        "config": {
            "vocab_size": 97,
            "hidden_size": 48,
            "intermediate_size": 72,
            "num_hidden_layers": 4,
            "layer_types": ["full_attention", "linear_attention", "linear_attention", "full_attention"],
            "num_attention_heads": 6,
            "num_key_value_heads": 2,
            "head_dim": 24,
            "partial_rotary_factor": 0.5,
            "rope_theta": 1000000.0,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 6,
            "linear_key_head_dim": 24,
            "linear_value_head_dim": 40,
            "linear_conv_kernel_dim": 3,
            "num_experts": 6,
            "num_experts_per_tok": 3,
            "moe_intermediate_size": 20,
            "shared_expert_intermediate_size": 28,
            "norm_topk_prob": False,
            "mlp_only_layers": [2],
            "tie_word_embeddings": True,
            "max_position_embeddings": 1024,
            "num_nextn_predict_layers": 1,
        },
    },
    "long": {
        "seq_len": 250,
        "config": {
            "vocab_size": 64,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 3,
            "layer_types": ["linear_attention", "linear_attention", "full_attention"],
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "partial_rotary_factor": 0.25,
            "rope_theta": 10000.0,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "linear_conv_kernel_dim": 4,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 16,
            "norm_topk_prob": True,
            "mlp_only_layers": [],
            "tie_word_embeddings": False,
            "max_position_embeddings": 1024,
        },
    },
    "heads": {
        "seq_len": 80,
        "config": {
            "vocab_size": 128,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "layer_types": ["linear_attention", "full_attention"],
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 256,
            "partial_rotary_factor": 0.25,
            "rope_theta": 10000000.0,
            "linear_num_key_heads": 1,
            "linear_num_value_heads": 2,
            "linear_key_head_dim": 128,
            "linear_value_head_dim": 128,
            "linear_conv_kernel_dim": 4,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 32,
            "norm_topk_prob": True,
            "mlp_only_layers": [1],
            "tie_word_embeddings": False,
            "max_position_embeddings": 1024,
        },
    },
    "real-1l": {
        "seq_len": 16,
        "config": {
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 5120,
            "num_hidden_layers": 2,
            "layer_types": ["linear_attention", "full_attention"],
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "head_dim": 256,
            "partial_rotary_factor": 0.25,
            "rope_theta": 10000000.0,
            "linear_num_key_heads": 16,
            "linear_num_value_heads": 32,
            "linear_key_head_dim": 128,
            "linear_value_head_dim": 128,
            "linear_conv_kernel_dim": 4,
            "num_experts": 16,
            "num_experts_per_tok": 10,
            "moe_intermediate_size": 512,
            "shared_expert_intermediate_size": 512,
            "norm_topk_prob": True,
            "mlp_only_layers": [],
            "tie_word_embeddings": False,
            "max_position_embeddings": 262144,
        },
    },
}

# Fields every preset shares (transformers' defaults for the released model).
COMMON: dict[str, Any] = {
    "architectures": ["Qwen3NextForCausalLM"],
    "model_type": "qwen3_next",
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "decoder_sparse_step": 1,
    "initializer_range": 0.02,
    "use_cache": True,
}


def preset_config(name: str) -> tuple[dict[str, Any], int]:
    """Returns (config dict, default sequence length) for a preset name."""
    if name not in PRESETS:
        raise SystemExit(f"generate.py: unknown preset '{name}' (known: {', '.join(PRESETS)})")
    cfg = dict(COMMON)
    cfg.update(PRESETS[name]["config"])
    return cfg, int(PRESETS[name]["seq_len"])
