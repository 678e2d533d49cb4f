#!/bin/bash
# fast/cuda/dev/run_all.sh — everything the CUDA work runs on a GPU machine, logs under $OUT.
#   bash fast/cuda/dev/run_all.sh STAGE...   stages: tests sanitize verify long bench basebench qbench tf fla ncu
#                                            ncu4096 ncuglue ncudelta ncuflash stream options ab build gaps sum16k ncugrouped
#                                            ceiling
#   (qbench = `q3n bench --impl cuda --versus-transformers`: q3n and transformers in one run)
# Binaries: built on the dev machine by fast/cuda/dev/bundle.sh (nvcc 13.0, sm_90a + sm_80) and
# carried as .cudadev/bin.tar.xz with the host libraries q3n links (.cudadev/libs.tar.xz), because
# the GPU image has nvcc but not the HDF5/OpenBLAS/cJSON/cmocka development packages; the `build`
# stage rebuilds the kernels and dev programs there from source to show they compile.
set -u
OUT=${OUT:-/tmp/q3n-out}
mkdir -p "$OUT"
B=.cudadev/bin
[ -f .cudadev/bin.tar.xz ] && tar -xJf .cudadev/bin.tar.xz -C .cudadev
[ -f .cudadev/base.tar.xz ] && tar -xJf .cudadev/base.tar.xz -C .cudadev   # bundle.sh BASE=: base/bench_model*
mkdir -p /tmp/q3nlib && tar -xJf .cudadev/libs.tar.xz -C /tmp/q3nlib
export LD_LIBRARY_PATH=/tmp/q3nlib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
log() { echo "== $* ($(date -u +%H:%M:%S))"; }
# ncu_prefill16k NAME REGEX SKIP COUNT: full ncu sections and the per-instruction stall samples (SASS
# source page) of COUNT launches of the kernels matching REGEX, after SKIP of them, in one bench_model
# prefill of T=16384 (whose warm-up prefill, T=1024, comes first): $OUT/NAME.log, $OUT/NAME_src.csv.xz
ncu_prefill16k() {
    local name=$1 regex=$2 skip=$3 count=$4
    log "ncu $regex T=16384" >"$OUT/$name.log"
    timeout 300 ncu --set full --import-source yes -k "regex:$regex" --launch-skip "$skip" --launch-count "$count" \
        -f -o "/tmp/ncu_$name" $B/bench_model --dtype bf16 --prefill 16384 --decode-steps 0 --reps 1 \
        >>"$OUT/$name.log" 2>&1
    ncu -i "/tmp/ncu_$name.ncu-rep" --page details --print-details all >>"$OUT/$name.log" 2>&1
    ncu -i "/tmp/ncu_$name.ncu-rep" --page source --csv --print-source sass >"/tmp/ncu_src_$name.csv" 2>&1
    xz -9 -c "/tmp/ncu_src_$name.csv" >"$OUT/${name}_src.csv.xz"
}
for stage in "$@"; do
    case $stage in
    tests)  # TESTS_ONLY="test_attn2 test_decode ...": only those programs (test_kernels's two runs included only when named)
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >>"$OUT/tests.log" 2>&1
        wanted() { [ -z "${TESTS_ONLY:-}" ] || [[ " $TESTS_ONLY " == *" $1 "* ]]; }
        if wanted test_kernels; then
            log "test_kernels" | tee -a "$OUT/tests.log"
            $B/test_kernels >>"$OUT/tests.log" 2>&1; echo "test_kernels exit $?" >>"$OUT/tests.log"
            log "test_kernels second run (determinism across processes)" >>"$OUT/tests.log"
            $B/test_kernels >"$OUT/tests2.tmp" 2>&1
            grep -v BENCH "$OUT/tests.log" | grep -E "OK$|FAIL$" | sed 's/ (got.*//' >/tmp/a.txt
            grep -E "OK$|FAIL$" "$OUT/tests2.tmp" | sed 's/ (got.*//' >/tmp/b.txt
            if cmp -s /tmp/a.txt /tmp/b.txt; then echo "second process: identical metrics on every case" >>"$OUT/tests.log";
            else echo "second process: metrics DIFFER" >>"$OUT/tests.log"; diff /tmp/a.txt /tmp/b.txt | head >>"$OUT/tests.log"; fi
            rm -f "$OUT/tests2.tmp"
        fi
        for t in $B/test_*; do   # the per-kernel programs next to test_kernels (test_delta_tc, ...)
            [ "$t" = "$B/test_kernels" ] && continue
            wanted "$(basename "$t")" || continue
            log "$(basename $t)" >>"$OUT/tests.log"
            timeout 300 "$t" >>"$OUT/tests.log" 2>&1; rc=$?; echo "$(basename $t) exit $rc" >>"$OUT/tests.log"
        done ;;
    sanitize)
        log "compute-sanitizer" >>"$OUT/tests.log"
        for tool in memcheck racecheck synccheck initcheck; do
            compute-sanitizer --tool $tool --error-exitcode 9 $B/test_kernels --small >"/tmp/san_$tool.log" 2>&1
            echo "compute-sanitizer --tool $tool test_kernels --small: exit $? ($(tail -1 /tmp/san_$tool.log))" >>"$OUT/tests.log"
        done
        # the tensor-core delta rule (test_kernels --small has no DK = DV = 128 case): scan v3's cp.async and stmatrix
        timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 $B/test_delta_tc --cases >/tmp/san_delta.log 2>&1
        echo "compute-sanitizer --tool memcheck test_delta_tc --cases: exit $? ($(tail -1 /tmp/san_delta.log))" >>"$OUT/tests.log" ;;
    verify)
        log "q3n verify --impl cuda" >>"$OUT/verify.log"
        for g in golden/data/*.h5; do
            case $g in *delta_rule*) continue ;; esac
            if [[ $g == *bf16* ]]; then args="--dtype bf16 --oracle"; else args="--dtype f32"; fi
            echo "--- $B/q3n verify $g --impl cuda $args" >>"$OUT/verify.log"
            $B/q3n verify "$g" --impl cuda $args >>"$OUT/verify.log" 2>&1; echo "exit $?" >>"$OUT/verify.log"
        done
        # taps off runs the fused prefill kernels, taps on the tappable chain: logits must agree bit for bit
        for ga in "golden/data/heads_bf16.h5 bf16" "golden/data/tiny_bf16.h5 bf16" "golden/data/odd_f32.h5 f32" \
                  "golden/data/long_f32.h5 f32"; do
            set -- $ga
            echo "--- $B/q3n determinism $1 --impl cuda --dtype $2" >>"$OUT/verify.log"
            $B/q3n determinism "$1" --impl cuda --dtype "$2" >>"$OUT/verify.log" 2>&1; echo "exit $?" >>"$OUT/verify.log"
        done ;;
    long)
        log "long context" >>"$OUT/tests.log"
        $B/test_kernels --long 32768 >>"$OUT/tests.log" 2>&1; echo "exit $?" >>"$OUT/tests.log" ;;
    bench)
        log "bench_model" >>"$OUT/bench.log"
        $B/test_kernels --bench-delta 16384 16 32 128 >>"$OUT/bench.log" 2>&1
        $B/bench_model --dtype bf16 --prefill 4096,16384 --decode-prompt 4096 --decode-steps 32 --graph-check 8 ${LONG:---long 32768} >>"$OUT/bench.log" 2>&1
        echo "exit $?" >>"$OUT/bench.log" ;;
    basebench)   # the same bench with the binary of an earlier commit carried in .cudadev/base (same GPU, same run)
        log "bench_model of .cudadev/base" >>"$OUT/bench_base.log"
        .cudadev/base/bench_model --dtype bf16 --prefill 4096,16384 --decode-prompt 4096 --decode-steps 32 --graph-check 8 \
            >>"$OUT/bench_base.log" 2>&1
        echo "exit $?" >>"$OUT/bench_base.log" ;;
    ab)   # the new bench_model against .cudadev/base/bench_model (bundle.sh BASE=REV) and any other
          # .cudadev/base/bench_model_* carried beside it, alternated AB_RUNS (3) times in one run on one
          # GPU, so that clock and thermal drift fall on all alike
        for i in $(seq 1 "${AB_RUNS:-3}"); do
            for bin in .cudadev/base/bench_model* $B/bench_model; do
                who=$(basename "$bin"); [ "$bin" = $B/bench_model ] && who=new
                log "ab $who run $i" >>"$OUT/ab.log"
                timeout 150 $bin --dtype bf16 --prefill 4096,16384 --decode-prompt 4096 --decode-steps 32 --graph-check 0 \
                    >>"$OUT/ab.log" 2>&1; echo "exit $?" >>"$OUT/ab.log"
            done
        done
        python3 fast/cuda/dev/ab_summary.py "$OUT/ab.log" >"$OUT/ab_summary.md" 2>&1 ;;
    ncu)
        log "ncu kernel durations" >>"$OUT/bench.log"
        timeout 200 ncu --metrics gpu__time_duration.sum -k regex:'chunk|grouped|flash' --launch-skip 2 --launch-count 6 \
            $B/test_kernels --bench-delta 16384 16 32 128 2>&1 | grep -E "chunk_|gpu__time|grouped|flash" >>"$OUT/bench.log"
        timeout 200 ncu --metrics gpu__time_duration.sum -k regex:'grouped|flash|chunk_|recurrent|gemv|router|place' --launch-skip 40 --launch-count 14 \
            $B/bench_model --prefill 4096 --decode-steps 0 --reps 1 2>&1 | grep -E "_kernel|gpu__time" >>"$OUT/bench.log"
        # where the two biggest prefill kernels stall (T=16384): flash (default instance) and grouped v5
        for k in flash_v4_kernel grouped_gemm_v5_kernel; do
            timeout 150 ncu --kernel-name regex:$k --launch-skip 1 --launch-count 1 --section SpeedOfLight \
                --section WarpStateStats --section SchedulerStats --section Occupancy \
                $B/bench_model --dtype bf16 --prefill 16384 --decode-steps 0 --reps 1 >"$OUT/ncu_$k.log" 2>&1
            echo "ncu $k: exit $? ($OUT/ncu_$k.log)" >>"$OUT/bench.log"
        done
        # the delta rule's two kernels alone, T=16384, 32 value heads, bf16 q, k, v (the default scan: v3 on sm_90)
        for k in tc_prep_kernel tc_scan3_kernel; do
            timeout 150 ncu --kernel-name regex:$k --launch-skip 2 --launch-count 1 --section SpeedOfLight \
                --section WarpStateStats --section SchedulerStats --section Occupancy --section MemoryWorkloadAnalysis \
                --section ComputeWorkloadAnalysis --section InstructionStats --section LaunchStats \
                $B/test_delta_tc --bench-one 16384 0 bf16 >"$OUT/ncu_$k.log" 2>&1
            echo "ncu $k: exit $? ($OUT/ncu_$k.log)" >>"$OUT/bench.log"
        done ;;
    ncu4096)   # every kernel of one T=4096 prefill, summed by name: bench_model's warm-up (T=1024) and the
               # weight draw come first, so the prefill is the launches from the second embed_kernel on
        log "ncu: one T=4096 prefill, kernel by kernel" >>"$OUT/ncu4096.log"
        timeout 300 ncu --metrics gpu__time_duration.sum --csv --page raw --launch-count 700 \
            $B/bench_model --dtype bf16 --prefill 4096 --decode-steps 0 --reps 1 >/tmp/ncu4096.csv 2>/dev/null
        python3 fast/cuda/dev/ncu_prefill_sum.py /tmp/ncu4096.csv >>"$OUT/ncu4096.log" 2>&1
        # where the T=4096 expert GEMMs (v5 since 8b8448c, v3 before) spend their time: the first layer's pair
        timeout 200 ncu --kernel-name regex:grouped_gemm --launch-skip 8 --launch-count 2 --section SpeedOfLight \
            --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
            $B/bench_model --dtype bf16 --prefill 4096 --decode-steps 0 --reps 1 >>"$OUT/ncu4096.log" 2>&1
        echo "exit $?" >>"$OUT/ncu4096.log" ;;
    ncuflash)  # the default flash prefill kernel (v8) of one T=16384 prefill (the warm-up prefill, T=1024,
               # makes the first launch)
        ncu_prefill16k ncuflash flash_v8 1 1 ;;
    ncugrouped)  # grouped v5's gate_up and down of layer 0 in one T=16384 prefill (the warm-up prefill
                 # makes the first 8 launches)
        ncu_prefill16k ncugrouped grouped_gemm_v5 8 2 ;;
    ncudelta)  # the delta rule's two kernels at T=4096 (the prep alone, then scan v3), full sections and the
               # per-instruction stall samples (source page) of each; a -lineinfo build of test_delta_tc in
               # .cudadev/li (carried as li.tar.xz) maps them to source lines
        [ -f .cudadev/li.tar.xz ] && tar -xJf .cudadev/li.tar.xz -C .cudadev
        D=$B; [ -x .cudadev/li/test_delta_tc ] && D=.cudadev/li
        for k in tc_prep:-1 tc_scan3:100; do
            name=${k%%:*}; path=${k##*:}
            log "ncu $name" >"$OUT/ncudelta_$name.log"
            timeout 240 ncu --set full --import-source yes -k regex:$name --launch-skip 3 --launch-count 1 -f \
                -o /tmp/ncu_$name $D/test_delta_tc --bench-one 4096 $path bf16 >>"$OUT/ncudelta_$name.log" 2>&1
            ncu -i /tmp/ncu_$name.ncu-rep --page details --print-details all >>"$OUT/ncudelta_$name.log" 2>&1
            ncu -i /tmp/ncu_$name.ncu-rep --page source --csv --print-source sass >/tmp/ncu_src_$name.csv 2>&1 ||
                ncu -i /tmp/ncu_$name.ncu-rep --page source --csv >/tmp/ncu_src_$name.csv 2>&1
            xz -9 -c /tmp/ncu_src_$name.csv >"$OUT/ncudelta_src_$name.csv.xz"
        done ;;
    ncuglue)  # the memory-bound kernels around the T=4096 GEMMs, one T=4096 launch each (the warm-up prefill,
              # T=1024, comes first: skip its launches), with the sections that say why each is off its floor
        # (GLUE="kernel:skip ..." picks a subset)
        for ks in ${GLUE:-dn_prep_kernel:3 dn_gated_norm:3 qk_prep:1 sigmoid_gate:1 router_topk_warp_kernel:4 \
                  chunk_scan_kernel:4 combine_v2_kernel:4 add_rmsnorm_reg_kernel:9}; do
            k=${ks%:*}; skip=${ks#*:}
            timeout 120 ncu --kernel-name regex:$k --launch-skip $skip --launch-count 1 --section SpeedOfLight \
                --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
                --section MemoryWorkloadAnalysis --section InstructionStats \
                $B/bench_model --dtype bf16 --prefill 4096 --decode-steps 0 --reps 1 >"$OUT/ncuglue_$k.log" 2>&1
            echo "ncu $k: exit $?" >>"$OUT/ncuglue.log"
        done ;;
    stream)   # the expert weights' stream into shared memory by route and layout (bench_stream.cu)
        log "bench_stream" >>"$OUT/stream.log"
        $B/bench_stream >>"$OUT/stream.log" 2>&1; echo "exit $?" >>"$OUT/stream.log"
        $B/bench_stream --N 2048 --K 512 >>"$OUT/stream.log" 2>&1; echo "exit $?" >>"$OUT/stream.log" ;;
    options)  # the non-default session options, each against the defaults in one run: routed experts packed
              # at open (run_options.pack_experts), the prefill shared expert in order on the session's
              # stream (the side stream is the default since session 12), both; logits
              # bitwise the defaults' (37, 4096 and 16384-token prefills, 8 decode steps), then the timings
        for flags in "" "--pack-experts" "--no-overlap-shared" "--pack-experts --no-overlap-shared"; do
            log "bench_model $flags" >>"$OUT/options.log"
            check=""; [ -n "$flags" ] && check="--default-check 8"
            timeout 240 $B/bench_model --dtype bf16 --prefill 4096,16384 --decode-prompt 4096 --decode-steps 32 \
                --graph-check 0 $flags $check >>"$OUT/options.log" 2>&1; echo "exit $?" >>"$OUT/options.log"
        done
        for flag in "" --pack-experts; do
            log "q3n bench --impl cuda $flag" >>"$OUT/options.log"
            timeout 240 $B/q3n bench --impl cuda --tokens 4096,16384 --decode 32 --decode-prompt 4096 $flag \
                >>"$OUT/options.log" 2>&1; echo "exit $?" >>"$OUT/options.log"
        done
        python3 fast/cuda/dev/options_summary.py "$OUT/options.log" >"$OUT/options_summary.md" 2>&1 ;;
    gaps)   # what the kernel boundaries cost: bench_pdl's chains (plain / PDL, eager / graph), then every
            # kernel of one T=4096 prefill and 8 decode steps at the clocks the GPU runs at (no ncu clock
            # lock), to set the kernels' sum against bench_model's wall time (same binary, same run)
        log "bench_pdl" >"$OUT/gaps.log"
        $B/bench_pdl >>"$OUT/gaps.log" 2>&1; echo "exit $?" >>"$OUT/gaps.log"
        log "bench_model T=4096 + 8 decode steps, wall" >>"$OUT/gaps.log"
        $B/bench_model --dtype bf16 --prefill 4096 --decode-prompt 4096 --decode-steps 8 --graph-check 0 >>"$OUT/gaps.log" 2>&1
        timeout 300 ncu --clock-control none --metrics gpu__time_duration.sum --csv --page raw --launch-count 1500 \
            $B/bench_model --dtype bf16 --prefill 4096 --decode-prompt 4096 --decode-steps 8 --graph-check 0 --reps 1 \
            >/tmp/gaps.csv 2>/dev/null
        echo "ncu exit $?" >>"$OUT/gaps.log"
        python3 fast/cuda/dev/ncu_prefill_sum.py /tmp/gaps.csv >>"$OUT/gaps.log" 2>&1
        xz -9 -c /tmp/gaps.csv >"$OUT/gaps.csv.xz" ;;
    sum16k) # every kernel of one T=16384 prefill at the clocks the GPU runs at (no ncu clock lock), summed by
            # kernel (ncu_prefill_sum.py), beside bench_model's wall time for the same prefill
        log "bench_model T=16384, wall" >"$OUT/sum16k.log"
        $B/bench_model --dtype bf16 --prefill 16384 --decode-steps 0 --graph-check 0 >>"$OUT/sum16k.log" 2>&1
        timeout 300 ncu --clock-control none --metrics gpu__time_duration.sum --csv --page raw --launch-count 400 \
            $B/bench_model --dtype bf16 --prefill 16384 --decode-steps 0 --graph-check 0 --reps 1 \
            >/tmp/sum16k.csv 2>/dev/null
        echo "ncu exit $?" >>"$OUT/sum16k.log"
        python3 fast/cuda/dev/ncu_prefill_sum.py /tmp/sum16k.csv >>"$OUT/sum16k.log" 2>&1
        xz -9 -c /tmp/sum16k.csv >"$OUT/sum16k.csv.xz" ;;
    ceiling) # what this card measurably does (bench_ceiling: cuBLAS on every product of the prefill, the copy
             # rate), torch's attention backends at the full-attention layer's shape, and q3n's own kernels for
             # the same two jobs in the same run (flash v8; grouped v5's production entry at T=16384)
        log "bench_ceiling" >"$OUT/ceiling.log"
        nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv >>"$OUT/ceiling.log" 2>&1
        # 0.47 ms: FlashInfer's Hopper delta-rule kernel at T=16384, 32 heads of 128, as issue 7 quotes it
        timeout 240 $B/bench_ceiling --T 16384 --delta-layer-ms 0.47 >>"$OUT/ceiling.log" 2>&1; echo "bench_ceiling exit $?" >>"$OUT/ceiling.log"
        timeout 240 $B/bench_ceiling --T 4096 >>"$OUT/ceiling.log" 2>&1; echo "bench_ceiling exit $?" >>"$OUT/ceiling.log"
        log "torch sdpa" >>"$OUT/ceiling.log"
        timeout 180 python3 fast/cuda/dev/bench_sdpa.py >>"$OUT/ceiling.log" 2>&1; echo "bench_sdpa exit $?" >>"$OUT/ceiling.log"
        log "test_attn2 --bench" >>"$OUT/ceiling.log"
        timeout 120 $B/test_attn2 --bench >>"$OUT/ceiling.log" 2>&1; echo "test_attn2 exit $?" >>"$OUT/ceiling.log"
        log "test_moe_prefill --only l2a (timings)" >>"$OUT/ceiling.log"
        timeout 180 $B/test_moe_prefill --only l2a >"/tmp/moe_l2a.log" 2>&1; echo "test_moe_prefill exit $?" >>"$OUT/ceiling.log"
        grep -E "^TIME|FAIL|failed" /tmp/moe_l2a.log >>"$OUT/ceiling.log" ;;
    qbench)
        log "q3n bench --impl cuda --versus-transformers" >>"$OUT/qbench.log"
        timeout 540 $B/q3n bench --impl cuda --tokens 4096,16384 --decode 32 --decode-prompt 4096 --versus-transformers \
            >>"$OUT/qbench.log" 2>&1; echo "exit $?" >>"$OUT/qbench.log" ;;
    tf)
        log "transformers" >>"$OUT/bench.log"
        timeout 420 python3 fast/cuda/dev/bench_transformers.py >>"$OUT/bench.log" 2>&1; echo "exit $?" >>"$OUT/bench.log" ;;
    fla)
        log "fla" >>"$OUT/bench.log"
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >>"$OUT/bench.log" 2>&1
        PYTHONPATH=/tmp/site timeout 240 python3 fast/cuda/dev/bench_fla.py >>"$OUT/bench.log" 2>&1; echo "exit $?" >>"$OUT/bench.log" ;;
    build)
        log "build from source" >>"$OUT/build.log"
        make BUILD=/tmp/b -j16 /tmp/b/libq3n_cuda.a >>"$OUT/build.log" 2>&1; echo "exit $?" >>"$OUT/build.log" ;;
    esac
done
