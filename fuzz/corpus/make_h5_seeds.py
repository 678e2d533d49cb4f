"""Writes the seed corpus of the tensorfile fuzzer: small HDF5 files in the golden schema
(docs/golden-format.md) with the variations the reader must handle. Run once with
golden/.venv/bin/python fuzz/corpus/make_h5_seeds.py; the outputs are committed."""
import argparse
import pathlib

import h5py
import numpy as np


def golden(path: pathlib.Path, track: bool, dtype: str, bf16: bool, libver: str) -> None:
    rng = np.random.default_rng(0)
    kw = {"track_order": True} if track else {}
    with h5py.File(path, "w", libver=libver, **kw) as f:
        f.attrs["format_version"] = 1
        f.attrs["generator"] = "fuzz seed"
        f.attrs["dtype"] = dtype
        f.attrs["seed"] = 1
        f.attrs["audit_decode_vs_full_rel_l2"] = 1e-6
        f["config"] = '{"hidden_size": 4}'
        f.create_dataset("inputs/input_ids", data=np.array([1, 2, 3], dtype=np.int64))
        f.create_dataset("logits", data=rng.standard_normal((3, 5)).astype(np.float32))
        t = f.create_group("tensors", **kw)
        ft = np.float64 if dtype == "float64" else np.float32
        t.create_dataset("model.embed_tokens.out", data=rng.standard_normal((3, 4)).astype(ft))
        t.create_dataset("model.layers.0.mlp.gate.topk_idx", data=np.array([[0, 1]] * 3, dtype=np.int64))
        d = t.create_dataset("model.layers.0.linear_attn.g", data=-rng.random((3, 2)).astype(ft))
        d.attrs["noise_rel_l2"] = 1e-7
        if bf16:
            x = (rng.standard_normal((3, 4)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
            b = t.create_dataset("model.layers.0.out", data=x)
            b.attrs["dtype"] = "bfloat16"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="fuzz/corpus/tensorfile")
    out = pathlib.Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    golden(out / "f32_tracked.h5", True, "float32", False, "latest")
    golden(out / "f64_untracked.h5", False, "float64", False, "earliest")
    golden(out / "bf16_tracked.h5", True, "bfloat16", True, "latest")


if __name__ == "__main__":
    main()
