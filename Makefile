# icot_hf: the common runs. `make reproduce` and `make test` install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
TASK ?= 4x4_mult
PRESET ?= cpu
METHODS ?=
TEST_FILE ?= $(firstword $(wildcard ../shared/data/icot_original/$(subst x,_by_,$(subst _mult,,$(TASK)))_mult/test_bigbench.txt))
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: help install install-deepspeed reproduce test test-fast proofs mutants bench bench-train bench-precision bench-coconut bench-codi clean

## This list of targets
help:
	@awk '/^## /{doc = doc (doc ? " " : "") substr($$0, 4); next} /^[a-z-]+:/{if (doc) printf "  make %-18s %s\n", substr($$1, 1, length($$1) - 1), doc; doc = ""; next} {doc = ""}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh
	touch $@

## Create .venv with the library and its test dependencies (the CPU torch wheel where the machine has one)
install: $(VENV)/.installed

## install, plus DeepSpeed
install-deepspeed: install
	EXTRAS=dev,deepspeed bash scripts/install.sh

## Whole pipeline on the CPU preset (TASK=4x4_mult; PRESET=paper on a GPU; METHODS=kd or stepwise for one method); results in results/$(TASK)/
reproduce: install
	TASK=$(TASK) PRESET=$(PRESET) METHODS="$(METHODS)" TEST_FILE=$(TEST_FILE) bash scripts/reproduce.sh

## The linter (ruff), then unit tests, parity proofs and small learning checks (offline; ~35 min on 2 cores)
test: install
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not proof" tests

## The long end-to-end proofs: the odd-input sweep, the fast planted mistakes, scripts/gpu_check.sh on its CPU path (~15 min)
proofs: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m proof tests

## The tests not marked slow
test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" tests

## Plant each mistake of tests/mutants.yaml in a scratch copy and require the tests to catch it (all entries, ~30 min)
mutants: install
	HF_HUB_OFFLINE=1 $(PY) scripts/mutants.py --report results/mutants.json

BENCH_TASKS ?= $(foreach t,4x4 5x5,$(if $(wildcard outputs/$(t)_mult/coupled/training_complete.json),$(t)))
BENCH_FILES = $(foreach t,$(BENCH_TASKS),$(wildcard ../shared/data/icot_original/$(subst x,_by_,$(t))_mult/test_bigbench.txt))
## Speed benchmarks on the trained 4x4 (and 5x5, when trained) models: results/bench.json + .md
bench: install
	@[ -n "$(BENCH_TASKS)" ] || { echo "make bench: no trained models in outputs/4x4_mult (run make reproduce first)"; exit 2; }
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench.py --output_dir results \
		--task_dirs $(foreach t,$(BENCH_TASKS),outputs/$(t)_mult) \
		$(if $(filter $(words $(BENCH_FILES)),$(words $(BENCH_TASKS))),--test_files $(BENCH_FILES))
	$(MAKE) bench-train
	$(if $(and $(COCONUT_SRC),$(REFERENCE_PYTHON)),$(MAKE) bench-coconut)
	$(if $(and $(CODI_SRC),$(CODI_REFERENCE_PYTHON)),$(MAKE) bench-codi)

COCONUT_SRC ?=
REFERENCE_PYTHON ?=
CODI_SRC ?=
CODI_REFERENCE_PYTHON ?=
## Coconut against its released code (training examples/s, batched vs batch-1 generation): results/coconut_speed.{json,md}.
## Needs COCONUT_SRC (a checkout of facebookresearch/coconut) and REFERENCE_PYTHON (a Python with transformers==4.46.2).
bench-coconut: install
	@[ -n "$(COCONUT_SRC)" ] && [ -n "$(REFERENCE_PYTHON)" ] || { echo "make bench-coconut: set COCONUT_SRC=<coconut checkout> REFERENCE_PYTHON=<python with transformers==4.46.2>"; exit 2; }
	HF_HUB_OFFLINE=1 $(PY) benchmarks/coconut_speed.py --coconut_src $(COCONUT_SRC) --reference_python $(REFERENCE_PYTHON) --output_dir results

## CODI's training step and generation against the released code on the same model and data: results/codi_speed.json + .md
bench-codi: install
	@[ -n "$(CODI_SRC)" ] && [ -n "$(CODI_REFERENCE_PYTHON)" ] || { echo "make bench-codi: set CODI_SRC=<zhenyi4/codi checkout> CODI_REFERENCE_PYTHON=<python with transformers==4.52.4, peft==0.15.2>"; exit 2; }
	HF_HUB_OFFLINE=1 $(PY) benchmarks/codi_speed.py --codi_src $(CODI_SRC) --reference_python $(CODI_REFERENCE_PYTHON) --output_dir results

## Training throughput per stage at GPT-2's vocabulary, label-position logits on and off (no trained models needed):
## results/train_throughput.json + .md. Run on an idle machine.
bench-train: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/train_throughput.py --output_dir results

## Training speed of every CPU-preset stage in fp32 and bf16, on 1 and 2 threads: results/stage_precision.json + .md.
## Run on an idle machine (about 15 minutes).
bench-precision: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/stage_precision.py --output_dir results --threads 1 2

## Remove what runs wrote and git does not track: outputs/, logs/, stage times (never data/ or committed results)
clean:
	rm -rf outputs logs results/*/stage_seconds.txt
