#!/usr/bin/env bash
# Install tuner and its test tools, torch first.
#
# Where: into the active virtual environment (or conda environment) if there is
# one; otherwise into ./.venv, made here or reused. A system Python (Debian,
# Ubuntu) refuses pip installs ("externally managed"), and a venv keeps tuner
# out of it everywhere else too. When the Python that makes .venv already has
# torch, .venv sees its packages (--system-site-packages) instead of
# downloading torch again. `. scripts/activate.sh` then puts the environment on
# PATH (it does nothing when one was already active).
#
# torch: an installed torch is left alone. Otherwise torch==$TUNER_TORCH_VERSION
# (default 2.13.0) is installed from $TUNER_TORCH_INDEX when set, else from
# PyTorch's CPU index when no NVIDIA GPU is visible (a small CPU-only build),
# else from PyPI (on Linux that is the CUDA build). For another CUDA version:
#   TUNER_TORCH_INDEX=https://download.pytorch.org/whl/cu128 bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ]; then
  echo "setup: installing into the active environment ${VIRTUAL_ENV:-${CONDA_PREFIX:-}}"
else
  if [ ! -x .venv/bin/python ]; then
    shared=""
    note=""
    if "$PY" -c "import torch" 2>/dev/null; then
      shared="--system-site-packages"  # reuse the torch (and friends) this Python has
      note=" (it sees the packages of $PY, which has torch)"
      # ... and its pip, rather than installing another copy into .venv.
      if "$PY" -c "import pip" 2>/dev/null; then shared="$shared --without-pip"; fi
    fi
    echo "setup: making a virtual environment in .venv$note"
    if ! "$PY" -m venv $shared .venv; then
      rm -rf .venv
      echo "setup: $PY cannot make a virtual environment; on Debian/Ubuntu: sudo apt install python3-venv" >&2
      exit 1
    fi
  else
    echo "setup: reusing the virtual environment in .venv"
  fi
  PY=.venv/bin/python
fi

if "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: torch $("$PY" -c 'import torch; print(torch.__version__)') is installed; leaving it alone"
else
  version=${TUNER_TORCH_VERSION:-2.13.0}
  index=${TUNER_TORCH_INDEX:-}
  if [ -z "$index" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    index=https://download.pytorch.org/whl/cpu
  fi
  if [ -n "$index" ]; then
    echo "setup: installing torch $version from $index (set TUNER_TORCH_INDEX to choose another build)"
    "$PY" -m pip install --quiet --disable-pip-version-check "torch==$version" --index-url "$index"
  else
    echo "setup: installing torch $version from PyPI: the CUDA build on Linux (set TUNER_TORCH_INDEX to choose another)"
    "$PY" -m pip install --quiet --disable-pip-version-check "torch==$version"
  fi
fi
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test]"
# The browser tests of `tuner serve` drive the OS's chromium through Playwright (never a downloaded
# browser). Install it where we can: as root on a Debian-like system (CI is one). Elsewhere those
# tests skip, saying why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "setup.sh: could not install chromium; the tuner serve browser tests will skip (under CI they fail)" >&2
fi
if [ "$PY" = .venv/bin/python ]; then
  echo "setup: done; put it on PATH with:  . scripts/activate.sh"
fi
