# One entry point for setup, demo and tests. Each target creates .venv when it is missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup demo demo-real test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/posttrain demo

demo-real: $(STAMP)
	$(VENV)/bin/posttrain demo model=smollm2-135m-instruct output_dir=runs/demo-real

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) benchmarks/sft_throughput.py
	$(PY) benchmarks/dpo_throughput.py
	$(PY) benchmarks/generation.py

clean:
	rm -rf runs .pytest_cache
