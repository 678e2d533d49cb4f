# fast/cpu/cpu.mk — the CPU benchmark (`make bench`, issue 6, not part of `make check`) and the
# cpu golden gate (`make verify-cpu`, in CHECK_EXTRA). docs/benchmarks.md has the figures.
# `make bench`: bench-1k (D=1024, 4 layers, E=32 top-4) with a 1024-token prompt (16 delta-rule
# chunks) on the cpu implementation (best of 3 prefills, 16 decode steps, phase times and the
# bare-cblas_sgemm ratio of the GEMM-bound phases), then the same prompt on ref in the same
# process: speedup and logits agreement (exit 1 beyond rel L2 1e-4). ref takes ~1 min here.
# BENCH_ARGS adds flags (e.g. BENCH_ARGS="--threads 1").
# OpenBLAS 0.3.21 does not know Zen 4/5 (nor some newer Xeons) and falls back to its AVX2 (Haswell)
# or even SSE3 kernels there (and the dev machine's environment pins OPENBLAS_CORETYPE=Haswell);
# on a CPU with AVX-512 its SkylakeX kernels ran 1.4x (dev, Zen 5) to 2-3x (xeon) faster
# (docs/benchmarks.md). So the bench runs with OPENBLAS_CORETYPE=SkylakeX when /proc/cpuinfo
# lists avx512f, overriding the environment; BENCH_CORETYPE=Haswell (or any OpenBLAS core name)
# picks another, BENCH_CORETYPE= (empty) leaves the environment alone. The kernel that ran is
# printed as `blas=openblas-<core>`.
BENCH_ARGS ?=
BENCH_CORETYPE ?= $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null && echo SkylakeX)

bench: $(BUILD)/q3n
	$(if $(BENCH_CORETYPE),OPENBLAS_CORETYPE=$(BENCH_CORETYPE) )$(BUILD)/q3n bench --impl cpu --preset bench-1k --tokens 1024 --decode 16 --repeat 3 --versus ref $(BENCH_ARGS)

# `make bench-tf`: the same bench, then transformers on the CPU on the same model and prompt in the
# same run (harness/cmd_bench_tf.c; its Python from `make golden-deps`): transformers' default CPU
# kernels, same thread count, logits of every position as q3n computes them; q3n's speed-up over
# it, and the two logits must agree (rel L2 <= 1e-4: the same model).
.PHONY: bench-tf
bench-tf: $(BUILD)/q3n
	@test -x golden/.venv/bin/python || { echo "bench-tf: golden/.venv is missing; run 'make golden-deps' first" >&2; exit 2; }
	$(if $(BENCH_CORETYPE),OPENBLAS_CORETYPE=$(BENCH_CORETYPE) )$(BUILD)/q3n bench --impl cpu --preset bench-1k --tokens 1024 --decode 16 --repeat 3 --versus-transformers --python golden/.venv/bin/python $(BENCH_ARGS)

# `make verify-cpu` (in CHECK_EXTRA, ~1 s): `q3n verify --impl cpu` on every committed model golden
# under the default policy, prefill + decode + MTP where the golden has them; bfloat16 goldens
# (a bf16 run of transformers) are judged in --oracle mode against their float64 oracle.
# VERIFY_CPU_BF16= (empty) judges the bf16 goldens directly, which fails: a way to see the gate fail.
VERIFY_CPU_BF16 ?= --oracle
.PHONY: verify-cpu
verify-cpu: $(BUILD)/q3n
	@fail=0; for g in $(filter-out %/delta_rule.h5,$(wildcard golden/data/*.h5)); do \
	  case $$g in *bf16*) o=$(VERIFY_CPU_BF16);; *) o=;; esac; \
	  echo "$(BUILD)/q3n verify $$g --impl cpu $$o"; \
	  out=$$($(BUILD)/q3n verify $$g --impl cpu $$o --quiet 2>&1); rc=$$?; \
	  echo "$$out" | tail -n 1; \
	  if [ $$rc -ne 0 ]; then echo "verify-cpu: FAILED (exit $$rc): $$g"; fail=1; fi; \
	done; test $$fail -eq 0
CHECK_EXTRA += verify-cpu
