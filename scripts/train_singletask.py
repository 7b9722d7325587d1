"""Single-task online PWM on a real MuJoCo task.

    python scripts/train_singletask.py env=walker-walk alg=pwm_5M        # baseline dynamics
    python scripts/train_singletask.py env=hopper alg=pwm_5M_flow        # flow dynamics

Logs to <run_dir>/metrics.csv and TensorBoard; re-running the same command resumes.
"""

import hydra
from omegaconf import DictConfig

from pwm.training.pipelines import run_singletask


@hydra.main(config_path="cfg", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    summary = run_singletask(cfg)
    print(f"final eval reward {summary['final_reward']:.2f} (best {summary['best_reward']:.2f}); "
          f"run dir {cfg.general.run_dir}")
    return summary["final_reward"]


if __name__ == "__main__":
    main()
