#!/usr/bin/env bash
# Create ./.venv if it is missing and install pwm-flow with its exact pins (CPU torch 2.13.0).
# pip's own "already satisfied" check costs ~17 s, so an install whose pyproject.toml is unchanged
# since the last successful one is skipped (the package is editable: code changes need no reinstall).
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.installed-pyproject.sha256
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && sha256sum --status -c "$stamp" 2>/dev/null \
    && .venv/bin/python -c "import pwm" 2>/dev/null; then
  echo "pwm-flow already installed in .venv (pyproject.toml unchanged since; delete $stamp to force a reinstall)"
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
log=.venv/install.log
rm -f "$stamp"
if ! .venv/bin/python -m pip install --disable-pip-version-check -e ".[dev]" >"$log" 2>&1; then
  grep -v "^WARNING: Location 'file:" "$log" | tail -40
  echo "install failed; full log in $log" >&2
  exit 1
fi
.venv/bin/python -c "import pwm, torch; print(f'pwm-flow {pwm.__version__} installed (torch {torch.__version__})')"
sha256sum pyproject.toml > "$stamp"
