"""ncu_prefill_sum.py CSV — sums `ncu --metrics gpu__time_duration.sum --csv --page raw` over one
bench_model prefill, kernel by kernel. bench_model draws its weights, runs a warm-up prefill and then
the timed one; each prefill starts with embed_kernel (embed_norm_kernel since session 12), so the timed prefill is every launch from the
second embed_kernel up to the third (or the end of the capture)."""
import csv
import sys
from collections import defaultdict


def main(path):
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(line for line in f if line.startswith('"'))]
    head = rows[0]
    name_col, time_col = head.index("Kernel Name"), head.index("gpu__time_duration.sum")
    scales = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}
    body, scale = rows[1:], 1e-3  # without a units row ncu reports nanoseconds
    if body and body[0][time_col] in scales:  # the units row
        scale, body = scales[body[0][time_col]], body[1:]
    kernels = [(r[name_col], float(r[time_col].replace(",", "")) * scale) for r in body if r[time_col]]
    # embed_kernel, or since session 12 embed_norm_kernel (the embedding with layer 0's input norm)
    starts = [i for i, (n, _) in enumerate(kernels) if n.startswith(("void embed_kernel", "embed_kernel",
                                                                     "void embed_norm_kernel", "embed_norm_kernel"))]
    if len(starts) < 2:
        sys.exit(f"{path}: fewer than two prefills captured ({len(starts)} embed_kernel launches)")
    end = starts[2] if len(starts) > 2 else len(kernels)
    sums, counts = defaultdict(float), defaultdict(int)
    for n, us in kernels[starts[1]:end]:
        sums[n] += us
        counts[n] += 1
    total = sum(sums.values())
    for n in sorted(sums, key=sums.get, reverse=True):
        print(f"{sums[n]:9.1f} us {counts[n]:3d}x  {n[:110]}")
    grouped = sum(v for n, v in sums.items() if "grouped_gemm" in n)
    print(f"total {total:.1f} us over {end - starts[1]} launches; grouped expert GEMMs {grouped:.1f} us = "
          f"{100 * grouped / total:.1f} %")


if __name__ == "__main__":
    main(sys.argv[1])
