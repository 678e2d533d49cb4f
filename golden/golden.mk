# golden/golden.mk — Python goldens from transformers (issue 3). Not part of `make check`:
# CI has no Python; it uses the committed files in golden/data/.
#   make golden-deps    create golden/.venv and install golden/requirements.txt (PyPI)
#   make golden         regenerate golden/data/ (checkpoints + .h5 goldens)
#   make golden-check   regenerate into $(BUILD)/golden-check and compare each file with the
#                       committed one through `$(Q3N) compare` (Q3N defaults to $(BUILD)/q3n;
#                       needs `make` first)

GOLDEN_VENV   ?= golden/.venv
GOLDEN_PY     := $(GOLDEN_VENV)/bin/python
GOLDEN_DATA   := golden/data
GOLDEN_TMP    := $(BUILD)/golden-check
GOLDEN_PYTHON_SYS ?= python3
Q3N           ?= $(BUILD)/q3n

golden-deps:
	$(GOLDEN_PYTHON_SYS) -m venv $(GOLDEN_VENV)
	$(GOLDEN_VENV)/bin/pip install -r golden/requirements.txt

$(GOLDEN_PY):
	@echo "golden: $(GOLDEN_PY) missing; run 'make golden-deps' first" >&2; exit 2

golden: $(GOLDEN_PY)
	$(GOLDEN_PY) golden/regenerate.py --out-dir $(GOLDEN_DATA)

golden-check: $(GOLDEN_PY)
	@test -x $(Q3N) || { echo "golden-check: $(Q3N) is not built; run 'make' first" >&2; exit 2; }
	@rm -rf $(GOLDEN_TMP) && mkdir -p $(GOLDEN_TMP)
	$(GOLDEN_PY) golden/regenerate.py --out-dir $(GOLDEN_TMP)
	@fail=0; for f in $$($(GOLDEN_PY) golden/regenerate.py --list --out-dir $(GOLDEN_TMP)); do \
	  if cmp -s $(GOLDEN_DATA)/$$f.h5 $(GOLDEN_TMP)/$$f.h5; then same=byte-identical; else same="bytes differ"; fi; \
	  echo "golden-check: $$f.h5 ($$same); $(Q3N) compare $(GOLDEN_DATA)/$$f.h5 $(GOLDEN_TMP)/$$f.h5"; \
	  $(Q3N) compare $(GOLDEN_DATA)/$$f.h5 $(GOLDEN_TMP)/$$f.h5 || fail=1; \
	done; \
	if [ $$fail -ne 0 ]; then echo "golden-check: FAILED (regenerated goldens differ, or q3n compare is not built yet)" >&2; exit 1; fi; \
	echo "golden-check: all regenerated goldens match golden/data"
