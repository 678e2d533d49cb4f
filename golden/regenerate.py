#!/usr/bin/env python3
"""Regenerates the committed goldens (golden/data/) into a folder: `make golden` writes golden/data,
`make golden-check` a temporary folder that it then compares with golden/data through q3n compare.

    golden/.venv/bin/python golden/regenerate.py --out-dir golden/data [--only tiny_f32]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate  # noqa: E402

# name -> generate.py arguments (--out is added). Checkpoints: tiny/ (per-expert keys, untied),
# tiny-bf16w/ (bf16-exact weights), odd/ (fused expert keys, tied embeddings, MTP), long/,
# heads-bf16w/ (the real model's head dims on a small body).
GOLDENS: dict[str, list[str]] = {
    "tiny_f32": ["--preset", "tiny"],
    "tiny_f64": ["--preset", "tiny", "--dtype", "float64"],
    "tiny_bf16": ["--preset", "tiny", "--dtype", "bfloat16"],
    "tiny_decode": ["--preset", "tiny", "--mode", "decode", "--prefill", "5"],
    "odd_f32": ["--preset", "odd", "--fused-experts"],
    "odd_decode": ["--preset", "odd", "--fused-experts", "--mode", "decode", "--seq-len", "12", "--prefill", "2"],
    "long_f32": ["--preset", "long"],
    "heads_bf16": ["--preset", "heads", "--dtype", "bfloat16", "--min-router-margin", "0.05"],
    "delta_rule": ["--mode", "delta-rule"],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--only", action="append", help="regenerate only these goldens (repeatable)")
    p.add_argument("--list", action="store_true", help="print the golden names and exit")
    args = p.parse_args()
    if args.list:
        print("\n".join(GOLDENS))
        return 0
    os.makedirs(args.out_dir, exist_ok=True)
    for name, argv in GOLDENS.items():
        if args.only and name not in args.only:
            continue
        rc = generate.main(argv + ["--out", os.path.join(args.out_dir, name + ".h5")])
        if rc != 0:
            print(f"regenerate.py: {name} failed (exit {rc})", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
