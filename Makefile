# icot_hf: the common runs. `make reproduce` and `make test` install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
TASK ?= 4x4_mult
PRESET ?= cpu
TEST_FILE ?= $(firstword $(wildcard ../shared/data/icot_original/4_by_4_mult/test_bigbench.txt))
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install install-deepspeed reproduce test test-fast bench clean

$(VENV)/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh
	touch $@

install: $(VENV)/.installed

install-deepspeed: install
	EXTRAS=dev,deepspeed bash scripts/install.sh

## Whole pipeline on the CPU preset (TASK=4x4_mult; PRESET=paper on a GPU); results in results/$(TASK)/
reproduce: install
	TASK=$(TASK) PRESET=$(PRESET) TEST_FILE=$(TEST_FILE) bash scripts/reproduce.sh

## Unit tests and small learning checks (offline)
test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" tests

## Speed benchmarks (results/bench.json + results/bench.md)
bench: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench.py --output_dir results

clean:
	rm -rf outputs results/*/stage_seconds.txt logs
