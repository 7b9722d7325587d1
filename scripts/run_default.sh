#!/usr/bin/env bash
# The main job on its embedded default: install (if needed), then a few-minute A/B comparison of the
# flow-matching and MLP world models (tiny models, cartpole-balance, 2 seeds, 2 parallel jobs).
# Output: runs/ab/report/report.md (+ PNG plots, report.json). Extra arguments go to ab_compare.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export MUJOCO_GL="${MUJOCO_GL:-egl}"
exec .venv/bin/python scripts/ab_compare.py -m "$@"
