# q3n — build, test and gate. `make check` is the one command CI and new users run.
# Every output goes under build/. Sources are found by wildcard, so a new .c file in
# harness/, ref/ or fast/cpu/ joins the library, and a new test_<unit>.c becomes a test.

CC        ?= gcc
BUILD     ?= build
PKGS      := hdf5 cmocka openblas libcjson

# ---- dependencies (pkg-config) ---------------------------------------------
HAVE_PKGS := $(shell pkg-config --exists $(PKGS) 2>/dev/null && echo 1)
DEP_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
DEP_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -lpthread

# ---- CUDA (optional) --------------------------------------------------------
CUDA_HOME ?= /usr/local/cuda
NVCC_FOUND := $(shell command -v nvcc 2>/dev/null || { test -x $(CUDA_HOME)/bin/nvcc && echo $(CUDA_HOME)/bin/nvcc; })
ifeq ($(NVCC_FOUND),)
CUDA ?= 0
else
CUDA ?= 1
endif
NVCC ?= $(NVCC_FOUND)
CUDA_ROOT := $(patsubst %/bin/nvcc,%,$(NVCC))
ifeq ($(CUDA),1)
$(info q3n: CUDA on ($(NVCC)); `make CUDA=0` to skip)
else
$(info q3n: CUDA off (no nvcc on PATH or in CUDA_HOME))
endif

# ---- flags --------------------------------------------------------------------
WARN   := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes
CSTD   := -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE
# ref/ and harness/: no contraction into FMA, no fast-math (isnan must work).
CFLAGS_BASE := $(CSTD) -O2 -g -ffp-contract=off $(WARN) -MMD -MP $(DEP_CFLAGS) $(EXTRA_CFLAGS)
# fast/cpu may use the machine's vector units.
CPU_ARCH ?= -march=native
CFLAGS_FAST := $(CSTD) -O3 -g $(CPU_ARCH) $(WARN) -MMD -MP $(DEP_CFLAGS) $(EXTRA_CFLAGS)
ifeq ($(CUDA),1)
CFLAGS_BASE += -DHAVE_CUDA
CFLAGS_FAST += -DHAVE_CUDA
CUDA_LIBS := -L$(CUDA_ROOT)/lib64 -L$(CUDA_ROOT)/targets/x86_64-linux/lib -lcublas -lcudart -lstdc++ -ldl -lrt
NVCC_ARCH ?= -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_80,code=[sm_80,compute_80]
NVCCFLAGS := -O3 -std=c++17 $(NVCC_ARCH) -Xcompiler -Wall,-Werror -MMD -MP $(EXTRA_NVCCFLAGS)
endif
SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

# ---- sources ------------------------------------------------------------------
LIB_SRC  := $(filter-out %/cli.c harness/cmd_%.c %/testkit.c $(wildcard */test_*.c */*/test_*.c),\
              $(wildcard harness/*.c ref/*.c fast/cpu/*.c))
CLI_SRC  := harness/cli.c $(wildcard harness/cmd_*.c)
TEST_SRC := $(wildcard harness/test_*.c ref/test_*.c fast/cpu/test_*.c fast/cuda/test_*.c fuzz/test_*.c)
TESTKIT  := harness/testkit.c
CU_SRC   := $(wildcard fast/cuda/*.cu)

obj = $(patsubst %.c,$(1)/obj/%.o,$(2))
LIB_OBJ   := $(call obj,$(BUILD),$(LIB_SRC))
CLI_OBJ   := $(call obj,$(BUILD),$(CLI_SRC))
KIT_OBJ   := $(call obj,$(BUILD),$(TESTKIT))
CU_OBJ    := $(patsubst %.cu,$(BUILD)/obj/%.o,$(CU_SRC))
test_bin   = $(foreach t,$(2),$(1)/tests/$(subst /,_,$(patsubst %.c,%,$(t))))
TEST_BIN  := $(call test_bin,$(BUILD),$(TEST_SRC))

ifeq ($(CUDA),1)
CU_LIB := $(BUILD)/libq3n_cuda.a
endif

.PHONY: all ref64 test test-ref64 check asan fuzz fuzz-parsers check-cuda bench demo deps golden golden-deps golden-check clean
.DEFAULT_GOAL := all

all: $(BUILD)/q3n $(BUILD)/libq3n.a $(TEST_BIN)

$(BUILD)/obj/fast/cpu/%.o: fast/cpu/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_FAST) -c $< -o $@
$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) -c $< -o $@
$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/libq3n.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^
$(BUILD)/libq3n_cuda.a: $(CU_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/q3n: $(CLI_OBJ) $(BUILD)/libq3n.a $(CU_LIB)
	$(CC) -o $@ $(CLI_OBJ) $(BUILD)/libq3n.a $(CU_LIB) $(DEP_LIBS) $(CUDA_LIBS)

define test_rule
$(call test_bin,$(BUILD),$(1)): $(call obj,$(BUILD),$(1)) $(KIT_OBJ) $(BUILD)/libq3n.a $(CU_LIB)
	@mkdir -p $$(dir $$@)
	$$(CC) -o $$@ $$^ $$(DEP_LIBS) $$(CUDA_LIBS)
endef
$(foreach t,$(TEST_SRC),$(eval $(call test_rule,$(t))))

# ---- tests --------------------------------------------------------------------
test: all
	@bash ci/run-tests.sh $(BUILD)

# ---- ref64: the whole library and CLI with ref_real = double --------------------
ref64:
	$(MAKE) --no-print-directory BUILD=$(BUILD)/ref64 CUDA=0 EXTRA_CFLAGS="-DQ3N_REF64 $(EXTRA_CFLAGS)" all
test-ref64: ref64
	@bash ci/run-tests.sh $(BUILD)/ref64

# ---- sanitizers -----------------------------------------------------------------
asan:
	$(MAKE) --no-print-directory BUILD=$(BUILD)/asan CUDA=0 CPU_ARCH= EXTRA_CFLAGS="$(SAN) -O1" DEP_LIBS="$(DEP_LIBS) $(SAN)" all
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 bash ci/run-tests.sh $(BUILD)/asan

# ---- everything CI runs -------------------------------------------------------------
# Fragments (golden/golden.mk, fuzz/fuzz.mk, fast/cpu/cpu.mk, fast/cuda/cuda.mk, harness/harness.mk)
# add their own targets and may append targets to CHECK_EXTRA, run by `make check` after the tests.
CHECK_EXTRA :=
-include $(wildcard */*.mk */*/*.mk)

check: deps
	$(MAKE) --no-print-directory all
	$(MAKE) --no-print-directory test
	$(if $(strip $(CHECK_EXTRA)),$(MAKE) --no-print-directory $(CHECK_EXTRA))

deps:
	@bash ci/install-deps.sh

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
