# The two commands a newcomer needs: `make run` (a working service) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
MODELS ?= models
HOST ?= 127.0.0.1
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
# PyPI's torch is the CUDA build on Linux (several GB). On a machine without a GPU, the CPU-only build is enough:
#   make run TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))

.PHONY: run test lint format proto models clean load-test bench check-python

# What a fresh Debian lacks for these commands, said before anything fails halfway.
check-python:
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found; install Python 3.11 or newer (Debian: apt-get install python3 python3-venv)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "make: $$($(PYTHON) --version) is too old; cnnserve needs Python 3.11 or newer (PYTHON=python3.11 make ...)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { echo "make: the venv module is missing; on Debian or Ubuntu: apt-get install python3-venv"; exit 1; }

$(VENV)/.created: | check-python
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	# The checkout's own tools (load_tests: `cnnserve bench`, Locust, soak) are importable in this venv only.
	$(PY) -c 'import pathlib, site; pathlib.Path(site.getsitepackages()[0], "cnnserve-checkout.pth").write_text("$(CURDIR)\n")'
	touch $@

# `make run` installs what serving and training need; `make test` adds the load, lint and test tools.
$(RUN_STAMP): pyproject.toml $(VENV)/.created
	$(PIP_INSTALL) -e '.[train]'
	touch $@

$(DEV_STAMP): pyproject.toml $(VENV)/.created
	$(PIP_INSTALL) -e '.[train,load,dev]'
	touch $@ $(RUN_STAMP)

$(MODELS)/.built: | $(RUN_STAMP)
	$(BIN)/cnnserve train xo --out $(MODELS)
	$(BIN)/cnnserve train mnist_net --out $(MODELS)
	touch $@

models: $(MODELS)/.built

run: $(RUN_STAMP) $(MODELS)/.built
	@echo "Serving $(MODELS) on $(HOST):$(GRPC_PORT) (metrics on :$(METRICS_PORT)). Try, in another shell:"
	@echo "  $(BIN)/cnnserve classify --server $(HOST):$(GRPC_PORT) --model mnist_net path/to/digit.png"
	$(BIN)/cnnserve serve --model-repository $(MODELS) --host $(HOST) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(DEV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

proto: $(DEV_STAMP)
	$(PY) proto/generate.py

test: $(DEV_STAMP) lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# Locust, headless and bounded, against a server it starts on loopback; CSV + HTML in load_tests/results/locust.
load-test: $(DEV_STAMP)
	$(PY) load_tests/run_locust.py --output load_tests/results/locust $(LOAD_TEST_ARGS)

# Server vs bare ONNX Runtime (docs/benchmarks.md); BENCH_ARGS=--quick for the one-minute version.
bench: $(DEV_STAMP)
	$(BIN)/cnnserve bench $(BENCH_ARGS)

# Real Fashion-MNIST (Debian: apt-get install dataset-fashion-mnist) on mnist_convnet with its seed recipe, into
# $(MODELS) as `fashion` (so `make run` serves it); the test accuracy, curves and confusion matrix go to
# docs/fashion-mnist.md and docs/fashion-mnist/.
FASHION_DATA ?= /usr/share/datasets/fashion-mnist
FASHION_EPOCHS ?= 12
FASHION_TRAIN := cnnserve train mnist_convnet --data-dir $(FASHION_DATA) --labels export/labels/fashion-mnist.txt \
	--name fashion --epochs $(FASHION_EPOCHS) --out $(MODELS) --run-dir runs/fashion
FASHION_INTRO := The 70,000 real Fashion-MNIST images of Debian's dataset-fashion-mnist: the 60,000 train images, of \
	which a seeded sixth is held out for validation, and the 10,000 t10k images as the test set, in ten classes named \
	by [export/labels/fashion-mnist.txt](../export/labels/fashion-mnist.txt). The network trains with its seed recipe \
	(RMSprop, lr 0.001, batch 64) for at most $(FASHION_EPOCHS) epochs, and the exported model is the epoch with the \
	lowest validation loss.
.PHONY: fashion
fashion: $(RUN_STAMP)
	@test -f $(FASHION_DATA)/t10k-labels-idx1-ubyte.gz || { echo "make: no Fashion-MNIST in $(FASHION_DATA); on Debian: apt-get install dataset-fashion-mnist"; exit 1; }
	rm -rf runs/fashion
	$(BIN)/$(FASHION_TRAIN)
	$(PY) -m cnnserve.export.run_page runs/fashion docs/fashion-mnist.md --title "Fashion-MNIST: mnist_convnet on real data" \
		--command "make fashion   # runs: $(FASHION_TRAIN)" --intro "$(FASHION_INTRO)"

# The GPU check (docs/gpu.md). `make gpu-wheels` runs here (network, PyTorch): it fills $(GPU_WHEELS) with the
# cnnserve wheel, Python 3.12 wheels of onnxruntime-gpu and every dependency (split into 56 MiB parts) and a model
# repository. `make gpu-check` runs on the GPU host, offline, with its own python3 (no .venv there): it installs
# from $(GPU_WHEELS), checks and measures, and writes gpu_check.json, gpu_check.md and plots to $(OUT).
GPU_WHEELS ?= gpu-wheels
OUT ?= docs/benchmarks/gpu
.PHONY: gpu-wheels gpu-check
gpu-wheels: $(RUN_STAMP)
	$(PY) load_tests/gpu_wheels.py --out $(GPU_WHEELS) --split-mb 56

gpu-check:
	$(PYTHON) load_tests/gpu_check.py --wheels $(GPU_WHEELS) --out $(OUT) $(GPU_CHECK_ARGS)
