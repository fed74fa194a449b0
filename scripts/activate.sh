# Source me after scripts/setup.sh:  . scripts/activate.sh
# Activates ./.venv when setup made one and no environment is active; otherwise does nothing.
if [ -z "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && [ -f .venv/bin/activate ]; then
  . .venv/bin/activate
fi
