#!/usr/bin/env bash
# planted-bug.sh BUILD OUTDIR — the fuzzer must find a planted bug within its CI budget.
# For each bug, runs `q3n fuzz` on the CI seed with the bug switched on in the cpu
# implementation and requires: exit status 1 (a numerical failure, not a usage error), a FAIL
# line with a repro command, and a shrunk regression pair (golden.h5, candidate.h5, case.txt)
# under OUTDIR. Exits non-zero, saying which, when any bug is missed.
set -u
build=${1:?usage: planted-bug.sh BUILD OUTDIR}
out=${2:?usage: planted-bug.sh BUILD OUTDIR}
cd "$(dirname "$0")/.."
status=0
for bug in chunk_off_by_one rope_wrong_half; do
    rm -rf "$out/$bug"
    log=$(mktemp)
    start=$(date +%s)
    "$build/q3n" fuzz --seed 1 --cases 40 --time 120 --impl cpu --test-bug "$bug" --out "$out/$bug" >"$log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    repro=$(find "$out/$bug" -name case.txt 2>/dev/null | head -n 1)
    if [ $rc -eq 1 ] && grep -q '^FAIL case' "$log" && grep -q 'repro: q3n fuzz --case-seed' "$log" &&
        [ -n "$repro" ] && [ -f "$(dirname "$repro")/golden.h5" ] && [ -f "$(dirname "$repro")/candidate.h5" ]; then
        echo "planted bug $bug: found in ${secs} s, shrunk repro $(dirname "$repro")"
        grep -E '^FAIL|shrunk in' "$log" | sed 's/^/  /'
    else
        echo "planted bug $bug: NOT FOUND (exit $rc, ${secs} s); q3n fuzz said:"
        tail -n 20 "$log"
        status=1
    fi
    rm -f "$log"
done
exit $status
