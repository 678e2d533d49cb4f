# harness/harness.mk — `make demo`: verify the reference implementation on a committed golden
# and print the report (issue 5). Also run by `make check` (a few seconds).
#   make demo                      text report on the terminal
#   make demo DEMO_ARGS="--format html --out build/demo.html"
DEMO_GOLDEN ?= golden/data/tiny_f32.h5
DEMO_IMPL   ?= ref
DEMO_ARGS   ?=

demo: $(BUILD)/q3n
	$(BUILD)/q3n verify $(DEMO_GOLDEN) --impl $(DEMO_IMPL) $(DEMO_ARGS)

CHECK_EXTRA += demo
