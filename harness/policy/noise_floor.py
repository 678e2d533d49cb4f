#!/usr/bin/env python3
"""Measures the evidence behind harness/policy/default.policy: the goldens' recorded noise floors.

Every golden stores, on each /tensors/<tap>, `noise_rel_l2` and `noise_max_abs` (transformers'
float32 run against its own float64 run) and, in bf16 goldens, `lowp_rel_l2` (the bf16 run against
/oracle/<tap>); the logits' float32-vs-float64 noise is the root attribute
`audit_f32_vs_f64_logits_rel_l2`. This script groups taps by kind (the name with the layer index
replaced by {i}) and prints, per kind, the largest value over all files given, and the file and tap
it came from. docs/tolerances.md explains how the policy numbers follow from this table.

    golden/.venv/bin/python harness/policy/noise_floor.py golden/data/*.h5 [more goldens ...]
    golden/.venv/bin/python harness/policy/noise_floor.py --attr lowp_rel_l2 golden/data/tiny_bf16.h5
    golden/.venv/bin/python harness/policy/noise_floor.py --pairs golden/data/tiny_f32.h5:golden/data/tiny_f64.h5
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict

import h5py


def kind_of(name: str) -> str:
    return re.sub(r"\.(\d+)\.", ".{i}.", name)


def pairs(specs: list[str], smalls: list[float]) -> int:
    """Element level: for float32:float64 golden pairs of the same seed, the smallest rtol (at atol 0)
    that every element of each tap kind meets under the bound rtol*max(|b|, small), per small."""
    import numpy as np

    need: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(smalls))
    mags: dict[str, float] = defaultdict(float)
    for spec in specs:
        lowp, ref = spec.split(":") if ":" in spec else (spec, spec)
        with h5py.File(lowp, "r") as a, h5py.File(ref, "r") as b:
            if lowp == ref:  # a bf16 golden: /tensors/<tap> against /oracle/<tap>
                items = [(f"tensors/{n}", f"oracle/{n}", n) for n in a["tensors"] if f"oracle/{n}" in a]
            else:
                items = [(f"tensors/{n}", f"tensors/{n}", n) for n in a["tensors"]] + [("logits", "logits", "logits")]
            for path, ref_path, name in items:
                x, y = a[path][()], b[ref_path][()]
                if a[path].attrs.get("dtype", b"") in (b"bfloat16", "bfloat16"):
                    x = (x.astype(np.uint32) << 16).view(np.float32)
                if x.dtype.kind != "f":
                    continue
                err = np.abs(x.astype(np.float64) - y)
                k = kind_of(name)
                mags[k] = max(mags[k], float(np.sqrt(np.mean(y * y))))
                for i, sm in enumerate(smalls):
                    need[k][i] = max(need[k][i], float(np.max(err / np.maximum(np.abs(y), sm))))
    print(f"# smallest passing rtol (atol 0) over {len(specs)} low-precision:float64 pairs, per small")
    print(f"# {'kind':<58} {'rms|b|':>9} " + " ".join(f"{'small=' + format(s, 'g'):>12}" for s in smalls))
    for k in sorted(need, key=lambda k: -need[k][-1]):
        print(f"{k:<60} {mags[k]:>9.3g} " + " ".join(f"{v:>12.3e}" for v in need[k]))
    print("# overall " + " ".join(f"small={s:g}: {max(v[i] for v in need.values()):.3e}" for i, s in enumerate(smalls)))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("goldens", nargs="*")
    p.add_argument("--attr", default="noise_rel_l2", help="noise_rel_l2 (default), noise_max_abs or lowp_rel_l2")
    p.add_argument("--pairs", nargs="+", metavar="F32.h5:F64.h5",
                   help="element level instead: float32 and float64 goldens of the same preset and seed, "
                   "or one bf16 golden (its /tensors against its /oracle)")
    p.add_argument("--small", default="1e-3,1e-2,1e-1", help="small-value thresholds for --pairs")
    args = p.parse_args()
    if args.pairs:
        return pairs(args.pairs, [float(v) for v in args.small.split(",")])
    worst: dict[str, tuple[float, str, str]] = {}
    count: dict[str, int] = defaultdict(int)
    files = 0
    for path in args.goldens:
        with h5py.File(path, "r") as f:
            if "tensors" not in f:
                continue
            files += 1
            items = [(n, f["tensors"][n].attrs) for n in f["tensors"]]
            if "logits" in f:
                a = dict(f["logits"].attrs)
                if args.attr == "noise_rel_l2" and "audit_f32_vs_f64_logits_rel_l2" in f.attrs:
                    a["noise_rel_l2"] = f.attrs["audit_f32_vs_f64_logits_rel_l2"]
                items.append(("logits", a))
            for name, attrs in items:
                if args.attr not in attrs:
                    continue
                v = float(attrs[args.attr])
                k = kind_of(name)
                count[k] += 1
                if k not in worst or v > worst[k][0]:
                    worst[k] = (v, path, name)
    if not worst:
        print(f"noise_floor.py: no {args.attr} attributes in the files given", file=sys.stderr)
        return 2
    print(f"# {args.attr}: largest per tap kind over {files} goldens")
    print(f"# {'kind':<58} {'n':>4} {'max':>10}  where")
    for k in sorted(worst, key=lambda k: -worst[k][0]):
        v, path, name = worst[k]
        print(f"{k:<60} {count[k]:>4} {v:>10.3e}  {path}:{name}")
    overall = max(worst.values())
    print(f"# overall max {overall[0]:.3e} at {overall[1]}:{overall[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
