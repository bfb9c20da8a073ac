# recalign training image: torch + TorchRec + fbgemm kernels + Ray, the project installed.
# Runs the Ray head, the CPU training workers, and every stage but the LLM ones.
#
# Build from the repository root (the context must be the repository):
#   docker build -f infra/docker/train.Dockerfile -t REGISTRY/recalign-train:$(git rev-parse --short HEAD) .
#   # CUDA training workers:
#   docker build -f infra/docker/train.Dockerfile --build-arg VARIANT=cuda \
#     --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-cu128 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#     -t REGISTRY/recalign-train:$(git rev-parse --short HEAD)-cuda .
#
# Build args:
#   BASE_IMAGE       a Ray image with Python 3.11 and the same Ray as infra/constraints.txt
#                    (every node of one cluster must run the same Ray and Python versions,
#                    including the LLM image)
#   VARIANT          cpu (fbgemm-gpu-cpu) or cuda (fbgemm-gpu built for TORCH_INDEX_URL's CUDA)
#   TORCH_INDEX_URL  PyTorch wheel index of the variant (.../whl/cpu or .../whl/cu128)
#   TORCH_VERSION, FBGEMM_VERSION, TORCHREC_VERSION
#                    must move together: each fbgemm release is tied to one torch minor
#                    (1.8 <-> 2.13) and its wheels do not declare it, so a mismatch only shows
#                    as an undefined C++ symbol at import (STACK.md)
#
# Tag images with the commit: the RayJobs' entrypoints run the code installed here, and the
# submitted working dir (configs) should come from the same commit.
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-cpu
FROM ${BASE_IMAGE}

ARG VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG FBGEMM_VERSION=1.8.0
ARG TORCHREC_VERSION=1.8.0

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    RECALIGN_CACHE=/opt/recalign/cache

WORKDIR /opt/recalign/app
COPY --chown=ray:users infra/constraints.txt infra/requirements-llm.txt infra/
# the lock without the local-file pins of the CPU vLLM build (not installed in this image)
RUN grep -v ' @ file://' infra/constraints.txt > /tmp/constraints.txt \
 && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users platform/ platform/
COPY --chown=ray:users operators/ operators/
COPY --chown=ray:users jobs/ jobs/
COPY --chown=ray:users infra/configs/ infra/configs/
COPY --chown=ray:users infra/submit.sh infra/runtime_env.yaml infra/
# The project (not editable) with the CPU-side LLM-stage needs (transformers engine, MiniLM
# embeddings, FAISS export: the nightly driver and CPU workers run them); no vLLM here. Its
# metadata pins fbgemm-gpu-cpu; the CUDA variant swaps it for fbgemm-gpu. torchrec goes in
# --no-deps: its metadata asks for fbgemm-gpu and would pull a build for another torch.
RUN pip install -c /tmp/constraints.txt . -r infra/requirements-llm.txt \
 && if [ "${VARIANT}" = "cuda" ]; then \
      pip uninstall -y fbgemm-gpu-cpu \
      && pip install --no-deps --index-url "${TORCH_INDEX_URL}" "fbgemm-gpu==${FBGEMM_VERSION}"; \
    fi \
 && pip install --no-deps "torchrec==${TORCHREC_VERSION}" \
 && python -c "import torch, fbgemm_gpu, torchrec, ray, recalign.jobs.cli; print('recalign train image ok: torch', torch.__version__, 'cuda', torch.version.cuda, 'ray', ray.__version__)"
