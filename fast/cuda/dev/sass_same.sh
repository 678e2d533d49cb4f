#!/bin/bash
# fast/cuda/dev/sass_same.sh — whether two builds of a CUDA object hold the same machine code, per
# architecture (sm_90a, sm_80): the check that a source change which should not change code (a
# refactor, a comment, a default flipped to what a tested variant built with a flag) did not.
#   bash fast/cuda/dev/sass_same.sh A.o B.o [FUNCTION_REGEX]
# prints, per architecture, SAME or DIFF (with the count of differing instruction lines) over every
# function, or over the functions whose mangled name matches FUNCTION_REGEX; exit 0 when all SAME,
# 1 when any DIFF, 2 on a usage or tool error or when an architecture has no matching code.
# Compared: each instruction as cuobjdump prints it, less its encoding comment (/* 0x... */) and its
# address, so code that only moved by a few bytes still differs where an instruction does. Device
# code only: a change of the host code that picks which kernel runs (a dispatch condition) is not
# seen, so name the kernel instances that should run (FUNCTION_REGEX) and check the dispatch by eye.
# cuobjdump is not in the CUDA toolkit this machine has; triton's wheel carries one
# (`golden/.venv/lib/python3.*/site-packages/triton/backends/nvidia/bin/cuobjdump`, or unzip it from
# `pip download --no-deps triton`); set CUOBJDUMP or put it on PATH.
set -u
[ $# -ge 2 ] && [ $# -le 3 ] || { echo "usage: sass_same.sh A.o B.o [FUNCTION_REGEX]" >&2; exit 2; }
a=$1 b=$2 fun=${3:-.}
for f in "$a" "$b"; do [ -r "$f" ] || { echo "sass_same.sh: $f: cannot read" >&2; exit 2; }; done
cuobjdump=${CUOBJDUMP:-$(command -v cuobjdump || ls golden/.venv/lib/python3.*/site-packages/triton/backends/nvidia/bin/cuobjdump 2>/dev/null | head -1)}
[ -n "$cuobjdump" ] && [ -x "$cuobjdump" ] || { echo "sass_same.sh: no cuobjdump (set CUOBJDUMP; see the header)" >&2; exit 2; }

# the instructions of the matching functions, one per line, without encodings and addresses
listing() {
    "$cuobjdump" -arch "$2" -sass "$1" 2>/dev/null |
        awk -v re="$fun" '/Function : /{keep = ($0 ~ re)} keep' |
        sed -E 's#/\* 0x[0-9a-f]+ \*/##; s#^[[:space:]]*/\*[0-9a-f]+\*/[[:space:]]*##; s#[[:space:]]+$##' |
        grep -v '^[[:space:]]*$'
}

status=0
for arch in sm_90a sm_80; do
    la=$(listing "$a" $arch) lb=$(listing "$b" $arch)
    if [ -z "$la" ] && [ -z "$lb" ]; then echo "$arch: no code matching '$fun' in either" >&2; status=2; continue; fi
    if [ "$la" = "$lb" ]; then
        echo "$arch: SAME ($(printf '%s\n' "$la" | wc -l) lines)"
    else
        n=$(diff <(printf '%s\n' "$la") <(printf '%s\n' "$lb") | grep -c '^[<>]')
        echo "$arch: DIFF ($n differing lines of $(printf '%s\n' "$la" | wc -l))"
        [ $status -eq 0 ] && status=1
    fi
done
exit $status
