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
"${PIP[@]}" install -q -c infra/constraints.txt -e ".[dev]"
"${PIP[@]}" install -q --no-deps -c infra/constraints.txt torchrec==1.8.0
.venv/bin/python -c "import torch, fbgemm_gpu, torchrec, ray, pyarrow, s3fs; print('recalign stack ok: torch', torch.__version__, '| torchrec', torchrec.__version__, '| ray', ray.__version__)"
