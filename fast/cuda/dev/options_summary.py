#!/usr/bin/env python3
"""The `options` stage of run_all.sh in one table: each session option against the defaults.

Reads the stage's log (bench_model runs headed "== bench_model FLAGS (time)", then q3n bench runs
headed "== q3n bench --impl cuda FLAG (time)") and prints, per configuration, the prefill times
and MoE-block times at each length, the decode ms/token (graph replay), the change against the
defaults' run in the same log, and the bitwise check's verdict. Lines it cannot read are left
out of the table, not guessed; the raw log stays the record.

    python3 fast/cuda/dev/options_summary.py OUT/options.log
"""
import re
import sys

HEAD = re.compile(r"^== (bench_model|q3n bench --impl cuda)\s*(.*?) \(\d\d:\d\d:\d\d\)$")
BM_PREFILL = re.compile(r"^RESULT cuda prefill T=(\d+) dtype=\S+: best ([\d.]+) ms")
BM_PROFILE = re.compile(r"^PROFILE prefill T=(\d+) .*MoE blocks ([\d.]+) ms")
BM_DECODE = re.compile(r"^RESULT cuda decode \(graph\) .*?: ([\d.]+) ms/token")
BM_CHECK = re.compile(r"^CHECK pack_experts=\d overlap_shared=-?\d \(-1: default\) vs the defaults .*?: (bitwise equal|DIFFERENT) "
                      r"\((\d+) logits differ")
QB_PREFILL = re.compile(r"^prefill T=(\d+): ([\d.]+) ms = ")
QB_DECODE = re.compile(r"^decode after a \d+-token prompt: ([\d.]+) ms/token")
EXIT = re.compile(r"^exit (\d+)$")


def parse(lines):
    runs, cur = [], None
    for line in lines:
        line = line.rstrip("\n")
        m = HEAD.match(line)
        if m:
            cur = {"tool": "bench_model" if m.group(1) == "bench_model" else "q3n bench",
                   "flags": m.group(2).strip() or "(defaults)", "prefill": {}, "moe": {}, "decode": None,
                   "check": None, "exit": None}
            runs.append(cur)
            continue
        if cur is None:
            continue
        for rx, key in ((BM_PREFILL, "prefill"), (QB_PREFILL, "prefill"), (BM_PROFILE, "moe")):
            m = rx.match(line)
            if m:
                cur[key][int(m.group(1))] = float(m.group(2))
        m = BM_DECODE.match(line) or QB_DECODE.match(line)
        if m:
            cur["decode"] = float(m.group(1))
        m = BM_CHECK.match(line)
        if m:
            cur["check"] = "bitwise" if m.group(1) == "bitwise equal" else f"DIFFERENT ({m.group(2)} logits)"
        m = EXIT.match(line)
        if m:
            cur["exit"] = int(m.group(1))
    return runs


def change(v, base):
    if v is None or base is None or base == 0:
        return ""
    return f" ({(v / base - 1) * 100:+.1f} %)"


def table(runs):
    out = []
    for tool in ("bench_model", "q3n bench"):
        rs = [r for r in runs if r["tool"] == tool]
        if not rs:
            continue
        base = next((r for r in rs if r["flags"] == "(defaults)"), None)
        Ts = sorted({T for r in rs for T in r["prefill"]})
        cols = [f"prefill T={T}" for T in Ts] + ([f"MoE blocks T={T}" for T in Ts] if tool == "bench_model" else [])
        out.append(f"{tool}:")
        out.append("| options | " + " | ".join(cols) + " | decode | check | exit |")
        out.append("|---" * (len(cols) + 4) + "|")
        for r in rs:
            cells = []
            for T in Ts:
                v = r["prefill"].get(T)
                cells.append(f"{v:.2f} ms{change(v, base and base['prefill'].get(T))}" if v is not None else "-")
            if tool == "bench_model":
                for T in Ts:
                    v = r["moe"].get(T)
                    cells.append(f"{v:.2f} ms{change(v, base and base['moe'].get(T))}" if v is not None else "-")
            d = r["decode"]
            cells.append(f"{d:.3f} ms{change(d, base and base['decode'])}" if d is not None else "-")
            cells.append(r["check"] or ("-" if r is base or tool != "bench_model" else "MISSING"))
            cells.append("-" if r["exit"] is None else str(r["exit"]))
            out.append(f"| {r['flags']} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
        runs = parse(f)
    if not runs:
        sys.exit(f"{sys.argv[1]}: no bench_model or q3n bench run found")
    print(table(runs))


if __name__ == "__main__":
    main()
