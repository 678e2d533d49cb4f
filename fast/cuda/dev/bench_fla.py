#!/usr/bin/env python3
"""flash-linear-attention's chunk_gated_delta_rule alone at T=16384, 32 heads, dims 128 (bf16 in, fp32 g),
the reference point for q3n's chunked delta-rule kernel (test_kernels --bench-delta)."""
import argparse

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=16384)
    ap.add_argument("--H", type=int, default=32)
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    import fla
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    torch.manual_seed(0)
    dev, bf = "cuda", torch.bfloat16
    q = torch.randn(1, a.T, a.H, a.D, device=dev, dtype=bf)
    k = torch.randn(1, a.T, a.H, a.D, device=dev, dtype=bf)
    v = torch.randn(1, a.T, a.H, a.D, device=dev, dtype=bf)
    g = F.logsigmoid(torch.randn(1, a.T, a.H, device=dev, dtype=torch.float32))
    beta = torch.rand(1, a.T, a.H, device=dev, dtype=bf)
    s0 = torch.zeros(1, a.H, a.D, a.D, device=dev, dtype=torch.float32)

    def run():
        return chunk_gated_delta_rule(q, k, v, g=g, beta=beta, scale=a.D ** -0.5, initial_state=s0,
                                      output_final_state=True, use_qk_l2norm_in_kernel=True)
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(a.reps):
        run()
    e1.record()
    torch.cuda.synchronize()
    ms = e0.elapsed_time(e1) / a.reps
    print(f"RESULT fla {getattr(fla, '__version__', '?')} chunk_gated_delta_rule T={a.T} H={a.H} K=V={a.D} bf16 "
          f"(l2norm in kernel, state out): {ms:.3f} ms/call (mean of {a.reps})", flush=True)


if __name__ == "__main__":
    main()
