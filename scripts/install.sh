#!/usr/bin/env bash
# Create ./.venv if it is missing and install pwm-flow with its exact pins (CPU torch 2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
log=.venv/install.log
if ! .venv/bin/python -m pip install --disable-pip-version-check -e ".[dev]" >"$log" 2>&1; then
  grep -v "^WARNING: Location 'file:" "$log" | tail -40
  echo "install failed; full log in $log" >&2
  exit 1
fi
.venv/bin/python -c "import pwm, torch; print(f'pwm-flow {pwm.__version__} installed (torch {torch.__version__})')"
