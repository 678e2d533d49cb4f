"""Seeded, in-distribution random weights for a Qwen3-Next checkpoint, and the checkpoint writer.

Every tensor is drawn from its own numpy PCG64 stream keyed by (seed, crc32 of its hub name), in
float64, then rounded to float32: the values depend on seed, name and shape only, bit for bit
on the same numpy version. Distributions (chosen so every part of the model matters):

  projections [out, in]          N(0, 1/in)               unit-scale outputs, residual grows ~sqrt(layers)
  experts gate/up [I, D], down   N(0, 1/D), N(0, 1/I)
  router mlp.gate [E, D]         N(0, (2/sqrt(D))^2)      logits of spread ~2: clear top-k margins
  shared_expert_gate [1, D]      N(0, 1/D)                sigmoid spread over (0.2, 0.8)
  zero-centred RMSNorm weights   +-U(0.1, 0.5)            forgetting the `1 +` is a 2x-10x error
  gated RMSNorm weight           1 +- U(0.05, 0.3)        near 1, never 1 (a stray `1 +` is caught)
  A_log                          U(log 0.02, log 8)       with dt_bias: g spans ~[-12, -3e-4]
  dt_bias                        U(-4, 1)                 weak-decay heads carry state across chunks
  conv1d [C, 1, Kc]              N(0, 1/Kc)
  embed_tokens                   N(0, 1)                  (tied: N(0, (2/sqrt(D))^2), it is also lm_head)
  lm_head                        N(0, (2/sqrt(D))^2)      logits of spread ~2
  mtp.fc [D, 2D]                 N(0, 1/(2D))
"""

from __future__ import annotations

import json
import math
import os
import zlib
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file

ZERO_CENTRED_NORMS = (
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "q_norm.weight",
    "k_norm.weight",
    "pre_fc_norm_embedding.weight",
    "pre_fc_norm_hidden.weight",
)


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([seed, zlib.crc32(name.encode())]))


def _signed_uniform(rng: np.random.Generator, shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
    mag = rng.uniform(lo, hi, size=shape)
    sign = np.where(rng.integers(0, 2, size=shape) == 1, 1.0, -1.0)
    return mag * sign


def draw(name: str, shape: tuple[int, ...], seed: int, tied: bool) -> np.ndarray:
    """One weight, by its hub (checkpoint) name; returns float32."""
    rng = _rng(seed, name)
    hidden = shape[-1] if len(shape) >= 1 else 1
    if name.endswith(ZERO_CENTRED_NORMS) or name in ("model.norm.weight", "mtp.norm.weight"):
        v = _signed_uniform(rng, shape, 0.1, 0.5)
    elif name.endswith("linear_attn.norm.weight"):
        v = 1.0 + _signed_uniform(rng, shape, 0.05, 0.3)
    elif name.endswith("linear_attn.A_log"):
        v = rng.uniform(math.log(0.02), math.log(8.0), size=shape)
    elif name.endswith("linear_attn.dt_bias"):
        v = rng.uniform(-4.0, 1.0, size=shape)
    elif name.endswith("conv1d.weight"):
        v = rng.normal(0.0, 1.0 / math.sqrt(shape[-1]), size=shape)
    elif name == "model.embed_tokens.weight":
        v = rng.normal(0.0, 2.0 / math.sqrt(hidden) if tied else 1.0, size=shape)
    elif name == "lm_head.weight":
        v = rng.normal(0.0, 2.0 / math.sqrt(hidden), size=shape)
    elif name.endswith("mlp.gate.weight"):
        v = rng.normal(0.0, 2.0 / math.sqrt(hidden), size=shape)
    elif len(shape) == 2:
        v = rng.normal(0.0, 1.0 / math.sqrt(shape[1]), size=shape)
    else:
        raise SystemExit(f"generate.py: no distribution for weight {name} {shape}")
    return v.astype(np.float32)


def hub_shapes(model: torch.nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Hub checkpoint names and shapes for a module's parameters: fused experts
    (mlp.experts.gate_up_proj [E, 2I, D], down_proj [E, D, I]) are listed per expert as
    mlp.experts.{e}.{gate,up,down}_proj.weight, the layout of the released checkpoints."""
    out: dict[str, tuple[int, ...]] = {}
    for name, p in model.state_dict().items():
        full = prefix + name
        if full.endswith("mlp.experts.gate_up_proj"):
            n_exp, two_i, d = p.shape
            base = full[: -len("gate_up_proj")]
            for e in range(n_exp):
                out[f"{base}{e}.gate_proj.weight"] = (two_i // 2, d)
                out[f"{base}{e}.up_proj.weight"] = (two_i // 2, d)
        elif full.endswith("mlp.experts.down_proj"):
            n_exp, d, i = p.shape
            base = full[: -len("down_proj")]
            for e in range(n_exp):
                out[f"{base}{e}.down_proj.weight"] = (d, i)
        else:
            out[full] = tuple(p.shape)
    return out


def random_hub_weights(shapes: dict[str, tuple[int, ...]], seed: int, tied: bool) -> dict[str, np.ndarray]:
    return {name: draw(name, shape, seed, tied) for name, shape in shapes.items() if not (tied and name == "lm_head.weight")}


def to_module_state(hub: dict[str, np.ndarray], module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Hub-layout arrays -> the module's state_dict (fusing per-expert weights, gate rows first)."""
    state: dict[str, torch.Tensor] = {}
    for name, p in module.state_dict().items():
        full = prefix + name
        if full.endswith("mlp.experts.gate_up_proj") or full.endswith("mlp.experts.down_proj"):
            fused = full.endswith("gate_up_proj")
            base = full[: -len("gate_up_proj")] if fused else full[: -len("down_proj")]
            if full in hub:  # already fused in the checkpoint
                state[name] = torch.from_numpy(np.ascontiguousarray(hub[full]))
                continue
            mats = []
            for e in range(p.shape[0]):
                if fused:
                    mats.append(np.concatenate([hub[f"{base}{e}.gate_proj.weight"], hub[f"{base}{e}.up_proj.weight"]], 0))
                else:
                    mats.append(hub[f"{base}{e}.down_proj.weight"])
            state[name] = torch.from_numpy(np.stack(mats, 0))
        elif full == "lm_head.weight" and full not in hub:
            state[name] = torch.from_numpy(hub["model.embed_tokens.weight"].copy())
        else:
            state[name] = torch.from_numpy(np.ascontiguousarray(hub[full]))
    return state


def fuse_experts(hub: dict[str, np.ndarray], n_experts: int) -> dict[str, np.ndarray]:
    """Rewrites per-expert keys into transformers' fused layout (mlp.experts.gate_up_proj
    [E, 2I, D] with gate rows first, mlp.experts.down_proj [E, D, I])."""
    out: dict[str, np.ndarray] = {}
    bases: list[str] = []
    for name, arr in hub.items():
        marker = ".mlp.experts."
        if marker in name and name.endswith(".0.gate_proj.weight"):
            bases.append(name[: name.index(marker) + len(marker)])
        if marker in name and name[name.index(marker) + len(marker) :].split(".")[0].isdigit():
            continue
        out[name] = arr
    for base in bases:
        out[base + "gate_up_proj"] = np.stack(
            [np.concatenate([hub[f"{base}{e}.gate_proj.weight"], hub[f"{base}{e}.up_proj.weight"]], 0) for e in range(n_experts)], 0
        )
        out[base + "down_proj"] = np.stack([hub[f"{base}{e}.down_proj.weight"] for e in range(n_experts)], 0)
    return dict(sorted(out.items()))


def write_checkpoint(folder: str, config_json: dict[str, Any], hub: dict[str, np.ndarray], fused: bool, n_experts: int) -> None:
    """config.json + model.safetensors (float32), hub key names; fused=True writes the fused
    expert layout instead of per-expert keys."""
    os.makedirs(folder, exist_ok=True)
    tensors = fuse_experts(hub, n_experts) if fused else dict(sorted(hub.items()))
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    path = os.path.join(folder, "model.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    os.chmod(path, 0o644)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config_json, f, indent=2, sort_keys=True)
        f.write("\n")
