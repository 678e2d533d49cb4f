# ref/ref.mk — the `q3n run --dump` path end to end (issue 4), in CHECK_EXTRA (~1 s):
# `make run-dump-check` runs the reference through the CLI on the tokens of each committed
# float32 model golden, writes the golden schema with --dump and judges it with `q3n compare`
# against the golden (taps, /logits and /mtp_logits); then plants norm_no_offset with --test-bug
# and requires the same compare to fail (exit 1). A prefill + decode run must reproduce the
# full run's argmax tokens.
RUN_DUMP_DIR := $(BUILD)/run-dump-check
.PHONY: run-dump-check
run-dump-check: $(BUILD)/q3n
	@rm -rf $(RUN_DUMP_DIR) && mkdir -p $(RUN_DUMP_DIR)
	@fail=0; for g in golden/data/tiny_f32.h5 golden/data/odd_f32.h5 golden/data/long_f32.h5; do \
	  n=$$(basename $$g .h5); ck=golden/data/$${n%_f32}; tok="--tokens-from $$g"; \
	  $(BUILD)/q3n run --model $$ck $$tok --dump $(RUN_DUMP_DIR)/$$n.h5 > $(RUN_DUMP_DIR)/$$n.txt || fail=1; \
	  $(BUILD)/q3n compare $(RUN_DUMP_DIR)/$$n.h5 $$g --quiet | tail -n 1 || fail=1; \
	  $(BUILD)/q3n run --model $$ck $$tok --prefill 5 > $(RUN_DUMP_DIR)/$$n-decode.txt || fail=1; \
	  if [ "$$(grep argmax $(RUN_DUMP_DIR)/$$n.txt)" != "$$(grep argmax $(RUN_DUMP_DIR)/$$n-decode.txt)" ]; then \
	    echo "run-dump-check: prefill 5 + decode argmax differs from the full run on $$g"; fail=1; fi; \
	  $(BUILD)/q3n run --model $$ck $$tok --test-bug norm_no_offset --dump $(RUN_DUMP_DIR)/$$n-bug.h5 >/dev/null || fail=1; \
	  $(BUILD)/q3n compare $(RUN_DUMP_DIR)/$$n-bug.h5 $$g --quiet >/dev/null 2>&1; rc=$$?; \
	  if [ $$rc -ne 1 ]; then echo "run-dump-check: planted norm_no_offset not caught on $$g (exit $$rc)"; fail=1; fi; \
	done; \
	if [ $$fail -ne 0 ]; then echo "run-dump-check: FAILED"; exit 1; fi; echo "run-dump-check: OK"
CHECK_EXTRA += run-dump-check

# The float64 build runs the same unit tests (issue 4: `make ref64` passes the same tests, tighter
# where a test says so): ~1 min on 2 cores, in CHECK_EXTRA.
CHECK_EXTRA += test-ref64
