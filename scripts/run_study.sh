#!/usr/bin/env bash
# The CPU-scale study of H1 and H2 (scripts/cfg/study/cpu.yaml): the A/B on 6 MT30 DMC tasks x 3 seeds,
# then the spec section 9 sweeps on two of those tasks. Resumable: re-run it and finished jobs are skipped,
# interrupted ones resume from their checkpoints. Each stage rebuilds results/study/report.md over every
# run so far and archives the finished runs in results/study/runs (summaries and gzipped metrics, no
# checkpoints or data; commit them): on a fresh checkout they are restored first, so only the rest runs.
#   bash scripts/run_study.sh                      # everything (main grid + sweeps: about 5-6 hours on 2 CPU cores)
#   STAGES=main bash scripts/run_study.sh          # the main A/B only (36 runs: about 2.5 hours, measured)
#   bash scripts/run_study.sh hydra/launcher=slurm hydra.launcher.partition=<p>   # extra args: every stage
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export MUJOCO_GL="${MUJOCO_GL:-egl}"
stages="${STAGES:-main integrate_steps tau_sampling horizon finetune}"
sweep_tasks="${SWEEP_TASKS:-cartpole-swingup,finger-spin}"
mkdir -p results/study
log=results/study/commands.md
[ -f "$log" ] || printf '# Commands that made this study\n\nEach line: when a stage ended, the commit it ran on, its command.\n\n' >"$log"

python=.venv/bin/python
"$python" -m pwm.experiments.archive restore results/study/runs runs/study

stage() {  # stage <name> <ab_compare overrides...>: the main grid's runs (K=4, uniform tau, H=16, frozen WM) are shared
  local name=$1; shift
  local command=("$python" scripts/ab_compare.py -m +study=cpu "$@")
  "${command[@]}"
  "$python" -m pwm.experiments.archive save runs/study results/study/runs
  local commit
  commit=$("$python" -c "from pwm.utils.common import git_commit; print(git_commit('.') or 'unknown')")
  echo "- $(date -u +%Y-%m-%dT%H:%MZ) \`$commit\` $name: \`${command[*]:1}\`" >>"$log"
}

for name in $stages; do
  case $name in
    main) stage main "$@" ;;
    integrate_steps) stage "$name" task="$sweep_tasks" alg=pwm_small_flow flow.integrate_steps=2,8 "$@" ;;
    tau_sampling) stage "$name" task="$sweep_tasks" alg=pwm_small_flow flow.fm_tau_sampling=midpoint "$@" ;;
    horizon) stage "$name" task="$sweep_tasks" +sweep=horizon "$@" ;;
    finetune) stage "$name" task="$sweep_tasks" +sweep=finetune "$@" ;;
    *) echo "unknown stage '$name' (main, integrate_steps, tau_sampling, horizon, finetune)" >&2; exit 2 ;;
  esac
done
