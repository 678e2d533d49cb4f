#!/usr/bin/env bash
# Runs every cmocka test binary under BUILD/tests from the repository root, sums the
# cases, and ends with the line "N passed, N failed". Exits non-zero on any failure,
# including a binary that crashed before printing its summary.
# Set CMOCKA_MESSAGE_OUTPUT=XML CMOCKA_XML_FILE=build/junit/%g.xml for JUnit files.
set -u
build=${1:-build}
cd "$(dirname "$0")/.."
passed=0
failed=0
bad_bins=()
shopt -s nullglob
for bin in "$build"/tests/*; do
    [ -x "$bin" ] || continue
    log=$(mktemp)
    "$bin" >"$log" 2>&1
    rc=$?
    cat "$log"
    p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -n1)
    f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -n1)
    rm -f "$log"
    passed=$((passed + ${p:-0}))
    if [ -n "$f" ]; then
        failed=$((failed + f))
    fi
    if [ $rc -ne 0 ] && [ -z "$f" ]; then
        failed=$((failed + 1))   # crashed or exited before cmocka's summary
        bad_bins+=("$bin (exit $rc)")
    elif [ $rc -ne 0 ]; then
        bad_bins+=("$bin")
    fi
done
for b in "${bad_bins[@]}"; do echo "failing: $b"; done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ ${#bad_bins[@]} -eq 0 ]
