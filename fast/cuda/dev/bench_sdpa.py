#!/usr/bin/env python3
"""The causal attention of Qwen3-Next's full-attention layer (16 query heads, 2 KV heads, head dim 256,
bf16) through torch's scaled_dot_product_attention as it chooses ("default": what transformers' sdpa
path runs) and through each of its backends at T = 4096 and 16384: what a torch
user gets for the kernel q3n's flash v8 replaces (test_attn2 --bench times that one in the same run),
and the rate the best of them reaches, for bench_ceiling's account of what this card can do.

FLOPs counted as the roofline counts them (harness/roofline.c): 2 * 2 * NH * HD * T(T+1)/2, the causal
half of the scores and of the values. A backend that cannot take the shape says why and is skipped.
Backends without grouped-query support get K and V repeated to 16 heads first (outside the timing)."""
import argparse
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_ms(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1))
    return min(times)


def one(backend, T: int, NH: int, NKV: int, HD: int, reps: int) -> str:
    dev, bf = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(T)
    q = torch.randn(1, NH, T, HD, device=dev, dtype=bf, generator=g)
    k = torch.randn(1, NKV, T, HD, device=dev, dtype=bf, generator=g)
    v = torch.randn(1, NKV, T, HD, device=dev, dtype=bf, generator=g)
    flops = 2 * 2 * NH * HD * T * (T + 1) / 2
    tries = [("gqa", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))]
    kr, vr = k.repeat_interleave(NH // NKV, dim=1), v.repeat_interleave(NH // NKV, dim=1)
    tries.append(("kv repeated", lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=True)))
    why = ""
    for how, fn in tries:
        try:
            if backend is None:  # torch's own choice, as transformers' sdpa path gets it
                ms = time_ms(fn, reps)
            else:
                with sdpa_kernel([backend]):
                    ms = time_ms(fn, reps)
            return f"{ms:8.3f} ms {flops / ms / 1e9:6.0f} TFLOP/s ({how})"
        except Exception as e:  # the backend refuses the shape: say so, try the next form
            why = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
    return f"unsupported: {why}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", default="4096,16384")
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)  # torch explains each refused backend at length
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}; NH=16 NKV=2 HD=256 causal bf16")
    for T in [int(t) for t in a.T.split(",")]:
        for name in ("default", "FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
            backend = getattr(SDPBackend, name, None)
            known = name == "default" or backend is not None
            res = one(backend, T, 16, 2, 256, a.reps) if known else "not in this torch"
            print(f"SDPA T={T} {name:20s} {res}", flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
