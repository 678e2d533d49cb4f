#!/usr/bin/env bash
# ci/test_tools.sh — the root-cause tools on committed goldens with planted bugs (the issue 9/10
# "done when" list, docs/debugging.md), checked end to end through the q3n binary:
#   isolate           names model.layers.1.linear_attn.norm.out for the planted weak gated norm
#   blame             ranks model.layers.1 first for the same bug
#   forced routing    removes the error of the planted near-tie router flip (layer 0, token 0)
#   bisect-precision  names the deliberately weak op of an emulated bf16 run
#   calibrate         reproduces the committed default policy within its margin
#   determinism       ref and cpu: taps neutral, every tap reproducible
#   bench --impl cuda bad arguments refused (exit 2, one line) before any GPU work
#   roofline          both floors, their consistency, bad arguments and configs refused
#   bench --versus-transformers (cpu): files handed over, speed-ups read, a disagreeing or failing
#                     transformers run fails the bench, nothing left in TMPDIR (a stub stands in for torch)
# Usage: ci/test_tools.sh [BUILD]  (default build). About a second. Exit 0 pass, 1 fail.
set -u
cd "$(dirname "$0")/.."
Q=${1:-build}/q3n
fails=0
check() { # name, command output, grep pattern
    if echo "$2" | grep -qE -- "$3"; then echo "test_tools: ok   $1"
    else echo "test_tools: FAIL $1: no match for /$3/ in:"; echo "$2" | head -n 12; fails=$((fails + 1)); fi
}
[ -x "$Q" ] || { echo "test_tools: $Q is not built"; exit 1; }
G=golden/data/odd_f32.h5
T=golden/data/tiny_f32.h5
for impl in ref cpu; do
    out=$("$Q" isolate "$G" --impl $impl --test-bug weak_gated_norm_layer1 --top 1 2>&1)
    check "isolate $impl names the planted module" "$out" '^largest isolated error .*: model\.layers\.1\.linear_attn\.norm\.out '
    out=$("$Q" blame "$G" --impl $impl --test-bug weak_gated_norm_layer1 --no-routing 2>&1)
    check "blame $impl ranks the planted layer first" "$out" '^ +1 model\.layers\.1 '
    out=$("$Q" blame "$G" --impl $impl --test-bug router_flip_layer0 --max-flip-runs 1 2>&1)
    check "forced routing $impl explains the planted flip" "$out" 'the flips explain the error'
    check "the planted flip $impl is listed first" "$out" '^ +model\.layers\.0 +0 '
    out=$("$Q" bisect-precision "$T" --impl $impl --max 0.01 --test-weak-op model.layers.0.linear_attn.norm.out 2>&1)
    check "bisect-precision $impl names the weak op" "$out" '^fp32 patterns:$'
    check "bisect-precision $impl keeps only the weak op" "$out" 'smallest set kept in float32: 1 op\(s\)'
    check "bisect-precision $impl kept set" "$(echo "$out" | sed -n '/^fp32 patterns:/{n;p}')" '^model\.layers\.0\.linear_attn\.norm\.out$'
    out=$("$Q" determinism "$T" --impl $impl --runs 2 2>&1)
    check "determinism $impl: taps neutral" "$out" 'taps on vs off, logits bitwise equal: yes'
done
# q3n bench --impl cuda refuses bad arguments before it touches a GPU: exit 2, one line naming the argument
for bad in "--tokens 0" "--tokens 4096,x" "--dtype f16" "--decode 1" "--peak-bw -3" "--preset tiny --versus-transformers"; do
    out=$("$Q" bench --impl cuda $bad 2>&1 >/dev/null | head -n 1); rc=$("$Q" bench --impl cuda $bad >/dev/null 2>&1; echo $?)
    check "bench --impl cuda $bad: exit 2 ($rc)" "$rc $out" '^2 q3n bench: (bad argument|--versus-transformers builds)'
done
# q3n bench --impl cpu --versus-transformers, with harness/testdata/tf_stub.sh standing in for the transformers
# script: exit 0 and both speed-ups when the logits agree, exit 1 naming the cause when they do not or when the
# script fails, and the temporary checkpoint removed every time
for mode in good mismatch fail; do
    tmp=$(mktemp -d)
    out=$(TMPDIR=$tmp TF_STUB_MODE=$mode "$Q" bench --impl cpu --preset tiny --tokens 16 --decode 2 --repeat 1 \
          --versus-transformers --python bash --tf-script harness/testdata/tf_stub.sh 2>&1); rc=$?
    case $mode in
    good) want='^0 .*q3n \([0-9.]+ s\) is [0-9.]+x faster than this.*q3n decode \([0-9.]+ ms/token\) is [0-9.]+x faster.*same model: logits rel L2 1.50e-06' ;;
    mismatch) want="^1 .*rel L2 3.000e-01 > 1e-04: not the same model" ;;
    fail) want="^1 .*the transformers run failed \(status [0-9]+; last line: Traceback: stub failure\)" ;;
    esac
    check "bench --versus-transformers, stub $mode: exit and message" "$rc $(echo "$out" | tr '\n' ' ')" "$want"
    check "bench --versus-transformers, stub $mode: TMPDIR left empty" "$(ls -A "$tmp" | wc -l)" '^0$'
    rm -rf "$tmp"
done
out=$("$Q" bench --impl cpu --preset tiny --tokens 4 --decode 0 --repeat 1 --versus-transformers --python "it's" 2>&1); rc=$?
check "bench --versus-transformers refuses a quote in --python" "$rc $out" "^2 .*must not contain a single quote"

# q3n roofline (no GPU): both floors per prefill length and for decode, the block-by-block one never below the
# overlapped one, the phases adding up to it; with an unbounded FLOP rate every block is bandwidth-bound and the
# two floors meet; bad arguments and configs refused with exit 2 and a line naming them
out=$("$Q" roofline --tokens 4096,16384 --decode-prompt 4096 2>&1)
check "roofline: a line per prefill length" "$(echo "$out" | grep -c '^prefill T=[0-9]*: .* ms block by block = ')" '^2$'
check "roofline: decode line" "$out" '^decode after 4096 tokens: .* ms/token block by block'
sane=$(echo "$out" | awk '/block by block/ {sub(/^[^:]*: /, ""); b = $1 + 0} /by phase:/ {s = $5 + $9 + $12 + $17} /overlapped:/ {
    if (!(b >= $2 * (1 - 1e-3) && s > b * (1 - 2e-3) && s < b * (1 + 2e-3))) bad++; n++ } END {print n, bad + 0}')
check "roofline: block by block >= overlapped, phases add up (3 floors)" "$sane" '^3 0$'
out=$("$Q" roofline --tokens 4096 --decode-prompt 0 --peak-flops 1e30 2>&1)
check "roofline: no FLOP limit, every block bandwidth-bound" "$out" '\(100 % of it in bandwidth-bound blocks\)'
check "roofline: --decode-prompt 0 prints no decode" "$(echo "$out" | grep -c '^decode')" '^0$'
for bad in "--tokens 0" "--tokens 4096," "--dtype fp8" "--peak-bw -1" "--preset nope" "--config /nonexistent/config.json" \
           "--config harness/testdata/bad/config_topk_above_experts/config.json"; do
    out=$("$Q" roofline $bad 2>&1 >/dev/null | head -n 1); rc=$("$Q" roofline $bad >/dev/null 2>&1; echo $?)
    check "roofline $bad: exit 2 ($rc)" "$rc $out" "^2 q3n roofline: (bad argument '--[a-z-]+'|synth: unknown preset 'nope'|/nonexistent/config.json: cannot open|harness/testdata/bad/config_topk_above_experts/config.json: num_experts_per_tok)"
done
# verify warns when a source file under ref/ or fast/ changed after the policy's checked commit, not for notes
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
g() { git -C "$tmp" -c user.name=t -c user.email=t@t "$@" >/dev/null 2>&1; }
mkdir -p "$tmp/ref" "$tmp/fast/cuda" && echo 'int x;' >"$tmp/ref/a.c" && g init -q && g add -A && g commit -qm base
{ echo "# checked: q3n=$(git -C "$tmp" rev-parse --short HEAD)"; grep -v "q3n=" harness/policy/default.policy; } >"$tmp/p.policy"
echo note >"$tmp/fast/cuda/NOTES.md" && g add -A && g commit -qm notes
out=$("$Q" verify "$T" --impl ref --policy "$tmp/p.policy" --quiet 2>&1)
check "verify: no stale-policy warning after a notes-only commit" "$out" '^PASS' 
if echo "$out" | grep -q 'warning: policy'; then echo "test_tools: FAIL notes-only commit warned"; fails=$((fails + 1)); fi
echo 'int y;' >>"$tmp/ref/a.c" && g commit -qam code
out=$("$Q" verify "$T" --impl ref --policy "$tmp/p.policy" --quiet 2>&1)
check "verify: stale-policy warning after a ref/ source commit" "$out" 'warning: policy .* 1 later commit\(s\) changed'
out=$("$Q" calibrate --seeds 1 --check harness/policy/default.policy 2>&1)
check "calibrate reproduces the committed policy" "$out" '^REPRODUCED'
if [ $fails -ne 0 ]; then echo "test_tools: $fails check(s) failed"; exit 1; fi
echo "test_tools: all checks passed"
