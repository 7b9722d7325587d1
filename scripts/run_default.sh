#!/usr/bin/env bash
# The main job on its embedded default: install (if needed), then a 12-16-minute A/B comparison of the
# flow-matching and MLP world models on 2 CPU cores (cartpole-balance, the replay of a SAC agent as
# data, pwm_small models pretrained until their held-out error plateaus, seed 0, 2 parallel jobs).
# Output: runs/ab/report/report.md (+ PNG plots, report.json). Extra arguments go to ab_compare.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export MUJOCO_GL="${MUJOCO_GL:-egl}"
exec .venv/bin/python scripts/ab_compare.py -m "$@"
