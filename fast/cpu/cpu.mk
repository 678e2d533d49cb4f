# fast/cpu/cpu.mk — the CPU benchmarks (issue 6), not part of `make check`.
# `make bench`: bench-1k (D=1024, 4 layers, E=32 top-4) with a 1024-token prompt (16 delta-rule
# chunks) on the cpu implementation (best of 3 prefills, 16 decode steps, phase times and the
# bare-cblas_sgemm ratio of the GEMM-bound phases), then the same prompt on ref in the same
# process: speedup and logits agreement (exit 1 beyond rel L2 1e-4). ref takes ~1 min here.
# BENCH_ARGS adds flags (e.g. BENCH_ARGS="--threads 1").
BENCH_ARGS ?=

bench: $(BUILD)/q3n
	$(BUILD)/q3n bench --impl cpu --preset bench-1k --tokens 1024 --decode 16 --repeat 3 --versus ref $(BENCH_ARGS)
