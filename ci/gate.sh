#!/usr/bin/env bash
# ci/gate.sh — the q3n gate: what a port's CI calls (docs/ci.md).
#
# Builds q3n, runs its unit tests, verifies every committed golden with every implementation
# available on this machine, checks the determinism ledger of each implementation, runs the
# fuzz budget, compares any port dumps given with --compare, and writes into the output folder:
#   junit.xml            every test case in one file: one per unit test, one per tensor of each
#                        verify/compare run, one per gate step
#   junit/*.xml          the same, one file per suite
#   summary.md           a Markdown summary (one line per step, failures first)
#   verify/*.json|.md    each verify/compare result (q3n result JSON and its Markdown report)
#   determinism-*.json   determinism ledgers (held against ci/ledgers/<impl>.json when committed)
#   logs/*.log           the output of every step
# Exit: 0 when every step passed (skipped steps are listed, not failed), 1 on any failure,
# 2 on a usage error.
#
# Options:
#   --out DIR            output folder (default build/gate; what a previous gate wrote there is removed)
# Paths given to --out, --goldens, --compare and --policy are taken relative to the directory the
# gate was called from (it runs from its own checkout, e.g. a submodule); --build is relative to
# the q3n checkout.
#   --build DIR          build folder (default build)
#   --impls "A B"        implementations to verify (default: ref cpu, plus cuda when the build
#                        has CUDA and nvidia-smi sees a GPU)
#   --goldens "F ..."    goldens to verify (default golden/data/*.h5 that hold /logits)
#   --compare DUMP=GOLDEN  also `q3n compare DUMP GOLDEN` (a port's own dump); repeatable
#   --policy FILE        tolerance policy for verify/compare (default: q3n's default policy)
#   --ref64              also build the float64 reference and verify float64 goldens with it
#   --no-build --no-unit --no-verify --no-determinism --no-fuzz   skip a part
#   --jobs N             make -j (default: number of cores)
set -u
caller=$(pwd)
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$caller/$1" ;; esac; }
cd "$(dirname "$0")/.."

out=$PWD/build/gate
build=build
impls=
goldens=
compares=()
policy=
ref64=0
do_build=1 do_unit=1 do_verify=1 do_det=1 do_fuzz=1
jobs=$(nproc 2>/dev/null || echo 2)

usage() { sed -n '2,/^set -u/p' "$0" | sed 's/^# \{0,1\}//;/^set -u/d'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$(abspath "$2"); shift 2 ;;
        --build) build=$2; shift 2 ;;
        --impls) impls=$2; shift 2 ;;
        --goldens) goldens=$(for g in $2; do abspath "$g"; done); shift 2 ;;
        --compare) compares+=("$(abspath "${2%%=*}")=$(abspath "${2#*=}")"); shift 2 ;;
        --policy) policy=$(abspath "$2"); shift 2 ;;
        --ref64) ref64=1; shift ;;
        --no-build) do_build=0; shift ;;
        --no-unit) do_unit=0; shift ;;
        --no-verify) do_verify=0; shift ;;
        --no-determinism) do_det=0; shift ;;
        --no-fuzz) do_fuzz=0; shift ;;
        --jobs) jobs=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gate: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

Q=$build/q3n
# clear only what a previous gate wrote (never the folder itself: --out may be a shared path)
rm -rf "$out/junit" "$out/verify" "$out/logs" "$out/junit.xml" "$out/summary.md" "$out"/determinism-*.json
mkdir -p "$out/junit" "$out/verify" "$out/logs"
cases=$out/logs/cases.tsv # step \t status \t seconds \t message
: >"$cases"
failed=0

xml_escape() { sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g'; }

# record NAME STATUS SECONDS MESSAGE
record() {
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(echo "$4" | tr '\t\n' '  ')" >>"$cases"
    [ "$2" = fail ] && failed=1
    printf 'gate: %-4s %s%s\n' "$2" "$1" "${4:+  ($4)}"
}

# step NAME LOGNAME COMMAND...: runs, records pass/fail with the last output line
step() {
    local name=$1 logname=$2
    shift 2
    local t0 rc last
    t0=$(date +%s)
    "$@" >"$out/logs/$logname.log" 2>&1
    rc=$?
    last=$(grep -v '^\s*$' "$out/logs/$logname.log" | tail -n 1 | cut -c1-300)
    if [ $rc -eq 0 ]; then record "$name" pass $(($(date +%s) - t0)) "$last"
    else record "$name" fail $(($(date +%s) - t0)) "exit $rc: $last"; fi
    return $rc
}

# ---- build ------------------------------------------------------------------------------------
if [ $do_build -eq 1 ]; then
    step "build" build make --no-print-directory BUILD="$build" -j"$jobs" all
    if [ $ref64 -eq 1 ]; then step "build ref64" build-ref64 make --no-print-directory BUILD="$build" -j"$jobs" ref64; fi
fi
if [ ! -x "$Q" ]; then
    record "q3n binary" fail 0 "$Q not built"
fi

# ---- unit tests: one JUnit case per cmocka test --------------------------------------------------
unit_junit() { # binary log rc -> junit/unit-<name>.xml; prints "passed failed"
    local bin=$1 log=$2 rc=$3 name body n f crashed=0
    name=$(basename "$bin")
    # a test's failure message lines come between its RUN and FAILED lines; cmocka lists the
    # failed tests again in its summary, outside any RUN, and those lines are ignored
    body=$(awk -v cls="unit.$name" '
        function esc(s) { gsub(/&/, "\\&amp;", s); gsub(/</, "\\&lt;", s); gsub(/>/, "\\&gt;", s); gsub(/"/, "\\&quot;", s); return s }
        /^\[ RUN +\] / { cur = $NF; msg = ""; next }
        /^\[ +OK +\] [A-Za-z_0-9]+$/ && cur == $NF { printf "    <testcase classname=\"%s\" name=\"%s\"/>\n", cls, $NF; cur = ""; next }
        /^\[ +FAILED +\] [A-Za-z_0-9]+$/ && cur == $NF { printf "    <testcase classname=\"%s\" name=\"%s\"><failure message=\"failed\">%s</failure></testcase>\n", cls, $NF, esc(msg); cur = ""; next }
        cur != "" { msg = msg $0 "\n" }
    ' "$log")
    n=$(printf '%s\n' "$body" | grep -c '<testcase ')
    f=$(printf '%s\n' "$body" | grep -c '<failure ')
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then crashed=1; fi
    {
        echo '<?xml version="1.0" encoding="UTF-8"?>'
        echo '<testsuites>'
        echo "  <testsuite name=\"unit.$name\" tests=\"$((n + crashed))\" failures=\"$((f + crashed))\" errors=\"0\">"
        [ -n "$body" ] && printf '%s\n' "$body"
        if [ $crashed -eq 1 ]; then
            echo "    <testcase classname=\"unit.$name\" name=\"binary_exits_cleanly\"><failure message=\"exit $rc before cmocka's summary\"/></testcase>"
        fi
        echo '  </testsuite>'
        echo '</testsuites>'
    } >"$out/junit/unit-$name.xml"
    echo "$((n - f)) $((f + crashed))"
}

if [ $do_unit -eq 1 ] && [ -d "$build/tests" ]; then
    t0=$(date +%s)
    up=0 uf=0 bad=()
    for bin in "$build"/tests/*; do
        [ -x "$bin" ] || continue
        log=$out/logs/unit-$(basename "$bin").log
        "$bin" >"$log" 2>&1
        rc=$?
        read -r p f < <(unit_junit "$bin" "$log" $rc)
        up=$((up + p))
        uf=$((uf + f))
        if [ $rc -ne 0 ]; then bad+=("$(basename "$bin")"); fi
    done
    if [ $uf -eq 0 ]; then record "unit tests" pass $(($(date +%s) - t0)) "$up passed, 0 failed"
    else record "unit tests" fail $(($(date +%s) - t0)) "$up passed, $uf failed in ${bad[*]}"; fi
fi

# ---- verify every golden with every implementation ------------------------------------------------
golden_dtype() { # the root "dtype" attribute, else from the name
    local d=""
    if command -v h5dump >/dev/null 2>&1; then
        d=$(h5dump -a /dtype "$1" 2>/dev/null | sed -n 's/.*(0): "\(.*\)".*/\1/p' | head -n 1)
    fi
    if [ -z "$d" ]; then
        case "$1" in *bf16*) d=bfloat16 ;; *f64*) d=float64 ;; *) d=float32 ;; esac
    fi
    echo "$d"
}
has_logits() {
    if command -v h5ls >/dev/null 2>&1; then h5ls "$1/logits" >/dev/null 2>&1; else case "$1" in *delta_rule*) return 1 ;; esac; fi
}

if [ -z "$impls" ]; then
    impls="ref cpu"
    if [ -e "$build/libq3n_cuda.a" ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        impls="$impls cuda"
    fi
fi
if [ -z "$goldens" ]; then goldens=$(ls golden/data/*.h5 2>/dev/null); fi
pol=()
if [ -n "$policy" ]; then pol=(--policy "$policy"); fi

# judge BIN KIND(verify|compare) STEM ARGS...: one verify/compare run with junit + json + md
judge() {
    local bin=$1 kind=$2 stem=$3
    shift 3
    local t0 rc last
    t0=$(date +%s)
    "$bin" "$kind" "$@" "${pol[@]}" --format junit --out "$out/junit/$kind-$stem.xml" \
        --json "$out/verify/$stem.json" >"$out/logs/$kind-$stem.log" 2>&1
    rc=$?
    if [ -f "$out/verify/$stem.json" ]; then
        "$bin" report "$out/verify/$stem.json" --format md --out "$out/verify/$stem.md" >/dev/null 2>&1
        last=$("$bin" report "$out/verify/$stem.json" --format text 2>/dev/null | grep -E '^(PASS|FAIL)' | tail -n 1)
    fi
    [ -n "${last:-}" ] || last=$(grep -v '^\s*$' "$out/logs/$kind-$stem.log" | tail -n 1)
    case $rc in
        0) record "$kind $stem" pass $(($(date +%s) - t0)) "$last" ;;
        *) record "$kind $stem" fail $(($(date +%s) - t0)) "exit $rc: $last" ;;
    esac
}

if [ $do_verify -eq 1 ] && [ -x "$Q" ]; then
    for g in $goldens; do
        stem=$(basename "$g" .h5)
        if ! has_logits "$g"; then
            record "verify $stem" skip 0 "no /logits: not a model golden (checked by the unit tests)"
            continue
        fi
        gd=$(golden_dtype "$g")
        for impl in $impls; do
            args=(--impl "$impl")
            case "$gd:$impl" in
                bfloat16:cuda) args+=(--dtype bf16) ;;
                bfloat16:*) args+=(--oracle) ;; # a float32 impl judged against the bf16 golden's float64 oracle
            esac
            judge "$Q" verify "$stem-$impl" "$g" "${args[@]}"
        done
        if [ "$gd" = float64 ] && [ $ref64 -eq 1 ] && [ -x "$build/ref64/q3n" ]; then
            judge "$build/ref64/q3n" verify "$stem-ref64" "$g" --impl ref64 --dtype f64
        fi
    done
fi
for pair in "${compares[@]}"; do
    a=${pair%%=*}
    b=${pair#*=}
    judge "$Q" compare "$(basename "$a" .h5)-vs-$(basename "$b" .h5)" "$a" "$b"
done

# ---- determinism ledger -----------------------------------------------------------------------
if [ $do_det -eq 1 ] && [ -x "$Q" ] && [ -f golden/data/tiny_f32.h5 ]; then
    for impl in $impls; do
        # a committed ledger holds the taps it lists as reproducible to bitwise equality
        expect=()
        if [ -f "ci/ledgers/$impl.json" ]; then expect=(--expect "ci/ledgers/$impl.json"); fi
        step "determinism $impl" "determinism-$impl" "$Q" determinism golden/data/tiny_f32.h5 --impl "$impl" \
            --runs 3 --ledger "$out/determinism-$impl.json" "${expect[@]}"
    done
fi

# ---- fuzz budget ------------------------------------------------------------------------------
if [ $do_fuzz -eq 1 ]; then
    if grep -q '^fuzz-ci:' fuzz/fuzz.mk 2>/dev/null; then
        step "fuzz budget (make fuzz-ci)" fuzz make --no-print-directory BUILD="$build" fuzz-ci
    else
        record "fuzz budget" skip 0 "fuzz/fuzz.mk has no fuzz-ci target"
    fi
fi

# ---- reports ----------------------------------------------------------------------------------
{
    n=$(wc -l <"$cases")
    f=$(awk -F'\t' '$2 == "fail"' "$cases" | wc -l)
    s=$(awk -F'\t' '$2 == "skip"' "$cases" | wc -l)
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo '<testsuites>'
    echo "  <testsuite name=\"q3n.gate\" tests=\"$n\" failures=\"$f\" errors=\"0\" skipped=\"$s\">"
    while IFS=$'\t' read -r name status secs msg; do
        en=$(echo "$name" | xml_escape)
        em=$(echo "$msg" | xml_escape)
        case $status in
            pass) echo "    <testcase classname=\"q3n.gate\" name=\"$en\" time=\"$secs\"><system-out>$em</system-out></testcase>" ;;
            skip) echo "    <testcase classname=\"q3n.gate\" name=\"$en\" time=\"$secs\"><skipped message=\"$em\"/></testcase>" ;;
            *) echo "    <testcase classname=\"q3n.gate\" name=\"$en\" time=\"$secs\"><failure message=\"$em\"/></testcase>" ;;
        esac
    done <"$cases"
    echo '  </testsuite>'
    echo '</testsuites>'
} >"$out/junit/gate.xml"
{
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo '<testsuites>'
    for x in "$out"/junit/*.xml; do
        grep -v -e '^<?xml' -e '^ *<testsuites>' -e '^ *</testsuites>' "$x"
    done
    echo '</testsuites>'
} >"$out/junit.xml"
ntc=$(grep -c '<testcase ' "$out/junit.xml")
{
    echo "# q3n gate: $([ $failed -eq 0 ] && echo PASS || echo FAIL)"
    echo
    echo "commit \`$(git rev-parse --short HEAD 2>/dev/null || echo '?')\` · $(date -u +%Y-%m-%dT%H:%MZ) · $(uname -m) · implementations: $impls · $ntc JUnit test cases in \`junit.xml\`"
    echo
    echo "| step | result | seconds | detail |"
    echo "|---|---|---|---|"
    for want in fail skip pass; do
        while IFS=$'\t' read -r name status secs msg; do
            [ "$status" = "$want" ] || continue
            label=$status
            [ "$status" = fail ] && label='**FAIL**'
            echo "| $name | $label | $secs | $(echo "$msg" | sed 's/|/\\|/g') |"
        done <"$cases"
    done
    echo
    echo "Reports: \`verify/*.md\` (one per golden x implementation), logs in \`logs/\`."
} >"$out/summary.md"
echo "gate: $([ $failed -eq 0 ] && echo PASS || echo FAIL): $(wc -l <"$cases") steps, $ntc JUnit cases; $out/summary.md, $out/junit.xml"
exit $failed
