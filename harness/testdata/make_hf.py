#!/usr/bin/env python3
"""Writes harness/testdata/hf_tiny_bf16/: a tiny Qwen3-Next (config/tiny_5x.json: tied, one dense
layer, explicit layer_types) saved by transformers itself in bfloat16, sharded into 12 files, so
q3n is tested on the hub's exact layout and key names. Also expect.safetensors (outside the
folder, beside it): torch's float32 conversion of a few tensors, to compare q3n's against.
Run once with golden/.venv/bin/python; the files are committed."""
import argparse
import pathlib
import shutil

import torch
from safetensors.torch import save_file
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

HERE = pathlib.Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE / "hf_tiny_bf16"))
    out = pathlib.Path(ap.parse_args().out)
    cfg = Qwen3NextConfig.from_pretrained(HERE / "config" / "tiny_5x.json")
    torch.manual_seed(0)
    model = Qwen3NextForCausalLM(cfg).to(torch.bfloat16)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True, max_shard_size="20KB")
    (out / "generation_config.json").unlink(missing_ok=True)
    sd = model.state_dict()
    names = ["model.embed_tokens.weight", "model.layers.0.mlp.experts.5.up_proj.weight",
             "model.layers.0.linear_attn.conv1d.weight", "model.layers.2.mlp.down_proj.weight",
             "model.layers.4.self_attn.q_proj.weight"]
    expect = {}
    for n in names:
        if n in sd:
            expect[n] = sd[n].float().contiguous()
    experts = model.model.layers[0].mlp.experts  # fused in memory: [E, 2I, D], gate rows first
    inter = experts.gate_up_proj.shape[1] // 2
    expect["model.layers.0.mlp.experts.5.up_proj.weight"] = experts.gate_up_proj[5, inter:].float().contiguous()
    save_file(expect, str(out.parent / "hf_tiny_bf16_expect.safetensors"))
    print(sorted(p.name for p in out.iterdir()))


if __name__ == "__main__":
    main()
