#!/usr/bin/env python3
"""The `ab` stage of run_all.sh in one table: each binary's prefill and decode times over the
alternated runs (best, median of the runs' bests), and the change against the first binary; then
whether each binary's last-token logits (bench_model's fnv, where it prints one) are bitwise those of
the first binary at every prefill length, in every run.

Reads the stage's log: runs headed "== ab WHO run I (time)", each with bench_model's RESULT lines.
Lines it cannot read are left out, not guessed; the raw log stays the record.

    python3 fast/cuda/dev/ab_summary.py OUT/ab.log
"""
import re
import statistics
import sys

HEAD = re.compile(r"^== ab (\S+) run (\d+) \(")
PREFILL = re.compile(r"^RESULT cuda prefill T=(\d+) dtype=\S+: best ([\d.]+) ms.*kernels: (.*)$")
FNV = re.compile(r"^RESULT cuda prefill T=(\d+) .*fnv=([0-9a-f]+);")
DECODE = re.compile(r"^RESULT cuda decode \(graph\) .*?: ([\d.]+) ms/token")
EXIT = re.compile(r"^exit (\d+)$")


def parse(lines):
    """{who: {metric: [values]}}, in the order the binaries first appear, their kernel lines and
    {who: {T: set of logits hashes}}."""
    table, kernels, hashes, who = {}, {}, {}, None
    for line in lines:
        line = line.rstrip("\n")
        m = HEAD.match(line)
        if m:
            who = m.group(1)
            table.setdefault(who, {})
            continue
        if who is None:
            continue
        m = FNV.match(line)
        if m:
            hashes.setdefault(who, {}).setdefault("T=" + m.group(1), set()).add(m.group(2))
        m = PREFILL.match(line)
        if m:
            table[who].setdefault("T=" + m.group(1), []).append(float(m.group(2)))
            kernels.setdefault(who, {})["T=" + m.group(1)] = m.group(3)
            continue
        m = DECODE.match(line)
        if m:
            table[who].setdefault("decode", []).append(float(m.group(1)))
            continue
        m = EXIT.match(line)
        if m and m.group(1) != "0":
            table[who].setdefault("failed runs", []).append(1)
    return table, kernels, hashes


def main(path):
    with open(path) as f:
        table, kernels, hashes = parse(f)
    if not table:
        print("ab_summary: no runs in", path)
        return 1
    metrics = [m for m in ("T=4096", "T=16384", "decode") if any(m in t for t in table.values())]
    ref = next(iter(table))
    print("| binary | " + " | ".join(f"{m} best / median (ms)" for m in metrics) + " | failed runs |")
    print("|---" * (len(metrics) + 2) + "|")
    for who, t in table.items():
        cells = []
        for m in metrics:
            v = t.get(m)
            if not v:
                cells.append("-")
                continue
            cell = f"{min(v):.3f} / {statistics.median(v):.3f}"
            base = table[ref].get(m)
            if who != ref and base:
                cell += f" ({100 * (statistics.median(v) / statistics.median(base) - 1):+.1f} %)"
            cells.append(cell)
        print(f"| {who} | " + " | ".join(cells) + f" | {len(t.get('failed runs', []))} |")
    for who, h in hashes.items():
        for m, got in h.items():
            want = hashes.get(ref, {}).get(m, set())
            same = len(got) == 1 and got == want
            print(f"logits {who} {m}: fnv {' '.join(sorted(got))}"
                  + ("" if who == ref else " (bitwise the first binary's)" if same else " (NOT the first binary's)"))
    for who, k in kernels.items():
        for m, line in k.items():
            print(f"{who} {m}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]) if len(sys.argv) == 2 else 2)
