# fast/cuda/cuda.mk — CUDA dev programs and the GPU targets (included by the top Makefile).
#   make check-cuda   build + run every kernel test (test_kernels and the per-kernel programs' cases),
#                     the long-context run and q3n verify --impl cuda
#                     on every committed golden (needs a GPU; CI only compiles)
#   make bench-cuda   q3n bench --impl cuda on the real-dims stack, with transformers in the same run,
#                     and the delta rule alone (needs a GPU with ~40 GB free and torch + transformers)
# The kernels themselves (fast/cuda/*.cu) are compiled by the top Makefile into libq3n_cuda.a.
.PHONY: cuda-dev check-cuda bench-cuda

ifeq ($(CUDA),1)
CUDA_DEV_SRC := $(wildcard fast/cuda/dev/*.cu)
CUDA_DEV_BIN := $(patsubst fast/cuda/dev/%.cu,$(BUILD)/cuda-dev/%,$(CUDA_DEV_SRC))

$(BUILD)/cuda-dev/%: fast/cuda/dev/%.cu $(BUILD)/libq3n.a $(CU_LIB)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -o $@ $< $(BUILD)/libq3n.a $(CU_LIB) $(DEP_LIBS) -lcublas

cuda-dev: $(CUDA_DEV_BIN)

# CI has nvcc but no GPU: `make check` compiles the dev programs (about a minute) so they cannot rot.
CHECK_EXTRA += cuda-dev

check-cuda: $(BUILD)/q3n cuda-dev
	$(BUILD)/cuda-dev/test_kernels
	$(BUILD)/cuda-dev/test_kernels --long 32768
	$(BUILD)/cuda-dev/test_delta_tc --cases
	$(BUILD)/cuda-dev/test_attn2 --quick
	$(BUILD)/cuda-dev/test_moe2 --quick
	$(BUILD)/cuda-dev/test_decode
	$(BUILD)/cuda-dev/test_dn_prep --quick
	$(BUILD)/cuda-dev/test_moe_prefill --quick
	$(BUILD)/q3n determinism golden/data/heads_bf16.h5 --impl cuda --dtype bf16
	$(BUILD)/q3n determinism golden/data/odd_f32.h5 --impl cuda --dtype f32
	@set -e; for g in golden/data/*.h5; do case $$g in *delta_rule*) continue;; esac; \
	  if echo $$g | grep -q bf16; then a="--dtype bf16 --oracle"; else a="--dtype f32"; fi; \
	  echo "$(BUILD)/q3n verify $$g --impl cuda $$a"; $(BUILD)/q3n verify $$g --impl cuda $$a --quiet; done

bench-cuda: cuda-dev $(BUILD)/q3n
	$(BUILD)/q3n bench --impl cuda --tokens 4096,16384 --decode 32 --decode-prompt 4096 --versus-transformers
	$(BUILD)/cuda-dev/test_kernels --bench-delta 16384 16 32 128
else
cuda-dev check-cuda bench-cuda:
	@echo "q3n: CUDA off (no nvcc): $@ skipped"; exit 1
endif
