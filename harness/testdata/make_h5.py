#!/usr/bin/env python3
"""Writes the small HDF5 fixtures under harness/testdata/h5/ with h5py (run once with
golden/.venv/bin/python; the files are committed, the tests never need Python).

untracked.h5: groups WITHOUT creation-order tracking (h5py's default), so q3n must list
  them in natural order; h5py's own variable- and fixed-size string attributes, int64
  attribute, float16 dataset and scalar string dataset.
The bad/*.h5 files are golden files with the wrong schema (see harness/testdata/bad/README)."""
import argparse
import pathlib

import h5py
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent))
    out = pathlib.Path(ap.parse_args().out)
    (out / "h5").mkdir(parents=True, exist_ok=True)
    (out / "bad").mkdir(parents=True, exist_ok=True)
    with h5py.File(out / "h5" / "untracked.h5", "w", track_order=False) as f:
        f.attrs["generator"] = "h5py"
        f.attrs["fixed"] = np.bytes_(b"fixed-size")
        f.attrs["format_version"] = np.int64(1)
        f["config"] = "{}"
        f["half"] = np.array([0.5, -1024.0], dtype=np.float16)
        g = f.create_group("tensors", track_order=False)
        for name in ["model.norm.out", "model.layers.10.out", "model.layers.2.out", "model.layers.1.out"]:
            g[name] = np.zeros((2, 3), dtype=np.float32)
    # a tap name holding a newline: listing /tensors must refuse it (names reach one-line messages)
    with h5py.File(out / "bad" / "h5_control_char_name.h5", "w") as f:
        f["tensors/model.norm.out"] = np.zeros(2, dtype=np.float32)
        f["tensors/model.layers.0.out\nFAKE: injected line"] = np.zeros(2, dtype=np.float32)
    # wrong schema: logits stored as int32, a 3-D input_ids, a float32 tap marked bfloat16,
    # /config as a float dataset.
    with h5py.File(out / "bad" / "h5_wrong_schema.h5", "w") as f:
        f.attrs["format_version"] = np.int64(1)
        f["config"] = np.zeros(3, dtype=np.float64)
        f["inputs/input_ids"] = np.zeros((1, 2, 3), dtype=np.int64)
        f["logits"] = np.zeros((2, 4), dtype=np.int32)
        d = f.create_dataset("tensors/model.embed_tokens.out", data=np.zeros((2, 4), dtype=np.float32))
        d.attrs["dtype"] = "bfloat16"


if __name__ == "__main__":
    main()
