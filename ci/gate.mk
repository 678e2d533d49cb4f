# ci/gate.mk — the gate (ci/gate.sh, docs/ci.md) and the bisection self-test (issue 10).
#   make gate              the whole gate: build, unit tests, every golden x implementation, the
#                          determinism ledger, the fuzz budget; JUnit + Markdown in $(GATE_OUT)
#   make gate-check        (in CHECK_EXTRA) the gate's verification part only: every committed
#                          golden with every implementation available, the determinism ledger,
#                          junit.xml and summary.md (the build, unit tests and fuzz-ci run as their
#                          own `make check` steps); a few seconds
#   make tools-check       (in CHECK_EXTRA) ci/test_tools.sh: isolate, blame, forced routing,
#                          bisect-precision, calibrate and determinism on committed goldens with
#                          planted bugs, through the q3n binary (~2 s)
#   make bisect-run-test   (in CHECK_EXTRA) ci/test_bisect_run.sh: `git bisect run ci/bisect-run.sh`
#                          must land on a planted regression in a throw-away history (~15 s when
#                          $(BUILD) is a CUDA=0 build it can seed from, else one full build more)
GATE_OUT  ?= $(BUILD)/gate
GATE_ARGS ?=

.PHONY: gate gate-check tools-check bisect-run-test
gate:
	bash ci/gate.sh --build $(BUILD) --out $(GATE_OUT) $(GATE_ARGS)
gate-check: $(BUILD)/q3n
	bash ci/gate.sh --no-build --no-unit --no-fuzz --build $(BUILD) --out $(GATE_OUT) $(GATE_ARGS)
tools-check: $(BUILD)/q3n
	bash ci/test_tools.sh $(BUILD)
bisect-run-test: $(BUILD)/q3n
	bash ci/test_bisect_run.sh $(BUILD)

CHECK_EXTRA += gate-check tools-check bisect-run-test
