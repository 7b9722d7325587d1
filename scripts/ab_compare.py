"""A/B comparison of flow-matching vs MLP latent dynamics (design spec sections 7-9, 15).

    python scripts/ab_compare.py -m                      # default: both variants x 2 seeds on cartpole-balance
    python scripts/ab_compare.py -m task=walker-walk,cheetah-run seed=0,1,2 alg=pwm_5M,pwm_5M_flow
    python scripts/ab_compare.py -m +sweep=integrate_steps           # spec section 9 presets
    python scripts/ab_compare.py -m hydra/launcher=slurm hydra.launcher.partition=<p>   # on a cluster

Each job is one (task, seed, variant); the report (report.md, PNGs, verdict) is rebuilt over all runs
under general.root when the (multi)run ends. Rebuild it alone with scripts/ab_report.py.
"""

import hydra
from omegaconf import DictConfig

from pwm.experiments.ab import run_ab_job


@hydra.main(config_path="cfg", config_name="ab", version_base="1.3")
def main(cfg: DictConfig) -> float:
    summary = run_ab_job(cfg)
    print(f"{cfg.task} {summary['variant']} seed {cfg.seed}: final reward {summary['final_reward']:.2f}")
    return summary["final_reward"]


if __name__ == "__main__":
    main()
