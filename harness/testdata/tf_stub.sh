#!/usr/bin/env bash
# harness/testdata/tf_stub.sh — stands in for fast/cpu/bench_transformers.py in ci/test_tools.sh, so that
# the plumbing of `q3n bench --versus-transformers` (files handed over, lines relayed and read, failures and
# clean-up) is checked without torch. Takes the script's arguments; TF_STUB_MODE picks its answer:
# good (agreeing logits), mismatch (logits of another model), fail (exits 3 before any RESULT).
set -u
while [ $# -gt 0 ]; do
    case $1 in
    --checkpoint) ckpt=$2; shift ;; --tokens) tokens=$2; shift ;; --q3n-logits) logits=$2; shift ;;
    --prefill) T=$2; shift ;; --decode) N=$2; shift ;; --threads | --reps) shift ;;
    *) echo "tf_stub: unknown argument $1"; exit 2 ;;
    esac
    shift
done
# what q3n must have written: the checkpoint, T + N int64 token ids, V float32 logits
V=$(grep -o '"vocab_size":[[:space:]]*[0-9]*' "$ckpt/config.json" | grep -o '[0-9]*$')
[ -f "$ckpt/model.safetensors" ] || { echo "tf_stub: no $ckpt/model.safetensors"; exit 2; }
[ "$(stat -c %s "$tokens")" = $((8 * (T + N))) ] || { echo "tf_stub: $tokens is not $((T + N)) int64"; exit 2; }
[ "$(stat -c %s "$logits")" = $((4 * V)) ] || { echo "tf_stub: $logits is not $V float32"; exit 2; }
echo "torch stub transformers stub threads 1"
case ${TF_STUB_MODE:-good} in
fail) echo "Traceback: stub failure"; exit 3 ;;
mismatch) rel=3.0e-01 ;;
*) rel=1.5e-06 ;;
esac
echo "RESULT transformers cpu attn=stub experts=stub prefill T=$T: best 2.0000 s (1.0 tokens/s) over 1"
echo "RESULT transformers cpu logits vs q3n (last prefill token): rel_l2 $rel argmax same"
[ "$N" -gt 0 ] && echo "RESULT transformers cpu attn=stub experts=stub decode: 500.000 ms/token (mean of $N steps after the $T-token prompt)"
exit 0
