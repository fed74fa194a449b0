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
# The browser tests of `tuner serve` drive the OS's chromium through Playwright (never a downloaded
# browser). Install it where we can: as root on a Debian-like system (CI is one). Elsewhere those
# tests skip, saying why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "setup.sh: could not install chromium; the tuner serve browser tests will skip (under CI they fail)" >&2
fi
