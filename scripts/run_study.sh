#!/usr/bin/env bash
# The CPU-scale study of H1 and H2 (scripts/cfg/study/cpu_v2.yaml): the A/B on 6 MT30 DMC tasks x 3 seeds,
# then the spec section 9 sweeps on two of those tasks. Resumable: re-run it and finished jobs are skipped,
# interrupted ones resume from their checkpoints. Each stage rebuilds the study's report.md over every
# run so far and archives the finished runs in <report dir>/runs (summaries and gzipped metrics, no
# checkpoints or data; commit them): on a fresh checkout they are restored first, so only the rest runs.
#   bash scripts/run_study.sh                      # everything: main grid + sweeps (time: see study/cpu_v2.yaml)
#   STAGES=main bash scripts/run_study.sh          # the main A/B only (36 runs)
#   STUDY=cpu bash scripts/run_study.sh            # another preset of scripts/cfg/study/ (cpu: the first version)
#   bash scripts/run_study.sh hydra/launcher=slurm hydra.launcher.partition=<p>   # extra args: every stage
#   bash scripts/run_study.sh status               # run nothing: each job's progress and the time left per stage
set -euo pipefail
status_only=false
if [ "${1:-}" = status ]; then status_only=true; shift; fi
cd "$(dirname "$0")/.."
bash scripts/install.sh
export MUJOCO_GL="${MUJOCO_GL:-egl}"
study="${STUDY:-cpu_v2}"
stages="${STAGES:-main integrate_steps tau_sampling horizon finetune}"
python=.venv/bin/python

# the preset is the one source of the study's folders, sweep tasks and seeds, flow variant and convergence tolerance
read -r root report_dir sweep_tasks sweep_seeds flow_alg tolerance < <("$python" - "$study" <<'EOF'
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

with initialize_config_dir(config_dir=str(Path("scripts/cfg").resolve()), version_base=None):
    cfg = compose("ab", overrides=[f"+study={sys.argv[1]}"], return_hydra_config=True)
flow_alg = next(alg for alg in str(cfg.hydra.sweeper.params.alg).split(",") if alg.endswith("_flow"))
print(cfg.general.root, cfg.report.dir, cfg.sweeps.tasks, cfg.sweeps.seeds, flow_alg, cfg.report.half_budget_tolerance)
EOF
)
[ -n "$flow_alg" ] || { echo "run_study.sh: cannot compose scripts/cfg/study/$study.yaml (STUDY=$study)" >&2; exit 2; }
sweep_tasks="${SWEEP_TASKS:-$sweep_tasks}"
mkdir -p "$report_dir"
log="$report_dir/commands.md"
[ -f "$log" ] || printf '# Commands that made this study\n\nEach line: when a stage ended, the commit it ran on, its command.\n\n' >"$log"
"$python" -m pwm.experiments.archive restore "$report_dir/runs" "$root"

stage() {  # stage <name> <ab_compare overrides...>: the main grid's runs (K=4, uniform tau, H=16, frozen WM) are shared
  local name=$1; shift
  local command=("$python" scripts/ab_compare.py -m "+study=$study" "$@")
  if $status_only; then  # the same jobs, read, not run: no hydra folders or logs, no archive or commands.md line
    local scratch
    scratch=$(mktemp -d)
    echo "== stage $name"
    "${command[@]}" status_only=true hydra/launcher=basic hydra/hydra_logging=disabled hydra/job_logging=disabled \
      hydra.output_subdir=null "hydra.sweep.dir=$scratch"
    rm -rf "$scratch"
    return
  fi
  "${command[@]}"
  "$python" -m pwm.experiments.archive save "$root" "$report_dir/runs"
  "$python" -m pwm.experiments.budget "$report_dir" --tolerance "$tolerance"  # every cap tried: budget.png
  local commit
  commit=$("$python" -c "from pwm.utils.common import git_commit; print(git_commit('.') or 'unknown')")
  echo "- $(date -u +%Y-%m-%dT%H:%MZ) \`$commit\` $name: \`${command[*]:1}\`" >>"$log"
}

sweep=(seed="$sweep_seeds" task="$sweep_tasks")
for name in $stages; do
  case $name in
    main) stage main "$@" ;;
    integrate_steps) stage "$name" "${sweep[@]}" alg="$flow_alg" flow.integrate_steps=2,8 "$@" ;;
    tau_sampling) stage "$name" "${sweep[@]}" alg="$flow_alg" flow.fm_tau_sampling=midpoint "$@" ;;
    horizon) stage "$name" "${sweep[@]}" +sweep=horizon "$@" ;;
    finetune) stage "$name" "${sweep[@]}" +sweep=finetune "$@" ;;
    *) echo "unknown stage '$name' (main, integrate_steps, tau_sampling, horizon, finetune)" >&2; exit 2 ;;
  esac
done
