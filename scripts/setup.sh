#!/usr/bin/env bash
# Install tuner and its test tools into the current Python, torch first.
#
# torch comes first so that the project's unpinned `torch>=2.4` is already met:
# on a CPU machine that keeps pip from pulling several GB of CUDA wheels. On a
# GPU machine, install the torch build for your CUDA before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install --quiet "torch==${TUNER_TORCH_VERSION:-2.13.0}"
fi
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test]"
