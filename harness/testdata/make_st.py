#!/usr/bin/env python3
"""Writes harness/testdata/st/python.safetensors with the reference safetensors library and
torch (run once with golden/.venv/bin/python; the file is committed). Each converted dtype
comes with torch's own float32 conversion ("<name>_as_f32"), and round_src comes with
torch's bf16/f16 roundings, so the C test checks q3n's conversions against torch's."""
import argparse
import pathlib

import torch
from safetensors.torch import save_file


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "st" / "python.safetensors"))
    out = pathlib.Path(ap.parse_args().out)
    g = torch.Generator().manual_seed(7)
    f32 = torch.randn(3, 5, generator=g)
    bf16 = (torch.randn(4, 4, generator=g) * 100).to(torch.bfloat16)
    f16 = torch.cat([torch.randn(12, generator=g) * 1e-5, torch.tensor([65504.0, -0.0, float("inf"), 6e-8])])
    f16 = f16.to(torch.float16)
    f64 = torch.randn(7, generator=g).to(torch.float64)  # float32 values upcast: exact
    src = torch.cat([torch.randn(4000, generator=g) * 10.0 ** torch.randint(-8, 8, (4000,), generator=g),
                     torch.tensor([1.00390625, 1.01171875, 3.4e38, -3.4e38, 1e-40, float("inf"), 65519.0, 65520.0])])
    tensors = {
        "f32": f32,
        "bf16": bf16, "bf16_as_f32": bf16.float(),
        "f16": f16, "f16_as_f32": f16.float(),
        "f64_exact": f64, "f64_exact_as_f32": f64.float(),
        "f64_inexact": torch.tensor([0.5, 0.1], dtype=torch.float64),
        "round_src": src, "round_bf16": src.to(torch.bfloat16), "round_f16": src.to(torch.float16),
        "i64": torch.tensor([3, -4], dtype=torch.int64),
        "fp8": torch.tensor([0.5, 1.0, -2.0, 448.0]).to(torch.float8_e4m3fn),
        "empty": torch.zeros(0, 3),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"format": "pt"})
    print(out, out.stat().st_size)


if __name__ == "__main__":
    main()
