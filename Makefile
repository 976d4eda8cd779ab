# The two commands a newcomer needs: `make run` (a working service) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODELS ?= models
HOST ?= 127.0.0.1
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002

.PHONY: run test lint format proto models clean load-test bench

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[train,load,dev]'
	touch $@

$(MODELS)/.built: | $(STAMP)
	$(BIN)/cnnserve train xo --out $(MODELS)
	$(BIN)/cnnserve train mnist_net --out $(MODELS)
	touch $@

models: $(MODELS)/.built

run: $(STAMP) $(MODELS)/.built
	@echo "Serving $(MODELS) on $(HOST):$(GRPC_PORT) (metrics on :$(METRICS_PORT)). Try, in another shell:"
	@echo "  $(BIN)/cnnserve classify --server $(HOST):$(GRPC_PORT) --model mnist_net path/to/digit.png"
	$(BIN)/cnnserve serve --model-repository $(MODELS) --host $(HOST) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

proto: $(STAMP)
	$(PY) proto/generate.py

test: $(STAMP) lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# Locust, headless and bounded, against a server it starts on loopback; CSV + HTML in load_tests/results/locust.
load-test: $(STAMP)
	$(PY) load_tests/run_locust.py --output load_tests/results/locust $(LOAD_TEST_ARGS)

# Server vs bare ONNX Runtime (docs/benchmarks.md); BENCH_ARGS=--quick for the one-minute version.
bench: $(STAMP)
	$(BIN)/cnnserve bench $(BENCH_ARGS)
