"""Writes the seed corpus of the safetensors fuzzer (fuzz/fuzz_safetensors.c) from the
committed tiny checkpoint: its small tensors (real Qwen3-Next names and shapes) as F32 and
BF16 single files (mode byte 0x00), and index files (mode byte 0x01) naming the fixed shard
the target writes. Run: golden/.venv/bin/python fuzz/corpus/make_st_seeds.py"""
import json
import pathlib

import torch
from safetensors.torch import load_file, save


def main() -> None:
    out = pathlib.Path("fuzz/corpus/safetensors")
    out.mkdir(parents=True, exist_ok=True)
    tensors = load_file("golden/data/tiny/model.safetensors")
    small = {k: v for k, v in sorted(tensors.items()) if v.numel() <= 128}
    picked = dict(list(small.items())[:12])
    (out / "tiny_small_f32.st").write_bytes(b"\x00" + save({k: v.float() for k, v in picked.items()}))
    (out / "tiny_small_bf16.st").write_bytes(b"\x00" + save({k: v.to(torch.bfloat16) for k, v in picked.items()},
                                                            metadata={"format": "pt"}))
    one = dict(list(picked.items())[:1])
    (out / "one_tensor.st").write_bytes(b"\x00" + save(one))
    shard = "model-00001-of-00001.safetensors"
    good = {"metadata": {"total_size": 20}, "weight_map": {"a": shard, "b": shard}}
    (out / "index_good.json").write_bytes(b"\x01" + json.dumps(good).encode())
    missing = {"metadata": {}, "weight_map": {"a": shard}}
    (out / "index_missing_b.json").write_bytes(b"\x01" + json.dumps(missing).encode())


if __name__ == "__main__":
    main()
